"""Cron time math of schedules, with fixed datetimes (no clock, no broker)."""

from datetime import UTC, datetime

import pytest

from contracts.registry import CronSchedule
from shared.schedules import InvalidSchedule, next_fire, occurrences, validate


def at(text: str) -> datetime:
    """An aware datetime from an ISO string such as `2026-01-01T10:00:00Z`."""
    return datetime.fromisoformat(text)


def fires(cron: str, after: str, count: int, timezone: str = "UTC", **options) -> list[str]:
    """The next `count` fire times after `after`, as UTC ISO strings."""
    schedule = CronSchedule(cron=cron, timezone=timezone, **options)
    moment = at(after)
    found = []
    for _ in range(count):
        moment = next_fire(schedule, moment)
        found.append(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return found


def test_every_minute_fires_at_the_next_whole_minute():
    assert fires("* * * * *", "2026-01-01T10:00:30Z", 3) == [
        "2026-01-01T10:01:00Z",
        "2026-01-01T10:02:00Z",
        "2026-01-01T10:03:00Z",
    ]


def test_the_next_fire_is_strictly_after_the_given_time():
    assert fires("* * * * *", "2026-01-01T10:01:00Z", 1) == ["2026-01-01T10:02:00Z"]


def test_a_step_fires_every_quarter_hour_and_rolls_over_the_hour():
    assert fires("*/15 * * * *", "2026-01-01T10:07:00Z", 4) == [
        "2026-01-01T10:15:00Z",
        "2026-01-01T10:30:00Z",
        "2026-01-01T10:45:00Z",
        "2026-01-01T11:00:00Z",
    ]


def test_named_week_days_skip_the_weekend():
    # 2026-01-02 is a Friday.
    assert fires("0 9 * * MON-FRI", "2026-01-02T10:00:00Z", 2) == [
        "2026-01-05T09:00:00Z",
        "2026-01-06T09:00:00Z",
    ]


def test_hour_ranges_and_lists_fire_only_inside_them():
    assert fires("0,30 9-10 * * *", "2026-01-01T10:15:00Z", 4) == [
        "2026-01-01T10:30:00Z",
        "2026-01-02T09:00:00Z",
        "2026-01-02T09:30:00Z",
        "2026-01-02T10:00:00Z",
    ]


def test_six_fields_read_the_leading_field_as_seconds():
    assert fires("*/10 * * * * *", "2026-01-01T10:00:05Z", 3) == [
        "2026-01-01T10:00:10Z",
        "2026-01-01T10:00:20Z",
        "2026-01-01T10:00:30Z",
    ]
    # Second 30 of minute 0 of every hour: the seconds field comes first.
    assert fires("30 0 * * * *", "2026-01-01T10:00:31Z", 1) == ["2026-01-01T11:00:30Z"]


def test_every_second_fires_on_the_next_whole_second():
    schedule = CronSchedule(cron="* * * * * *")
    assert next_fire(schedule, at("2026-01-01T10:00:00.400000+00:00")) == at("2026-01-01T10:00:01Z")


def test_a_schedule_is_computed_on_the_wall_clock_of_its_time_zone():
    # 09:00 in Berlin is 08:00 UTC in winter (CET) and 07:00 UTC in summer (CEST).
    assert fires("0 9 * * *", "2026-01-15T00:00:00Z", 1, "Europe/Berlin") == [
        "2026-01-15T08:00:00Z"
    ]
    assert fires("0 9 * * *", "2026-07-15T00:00:00Z", 1, "Europe/Berlin") == [
        "2026-07-15T07:00:00Z"
    ]
    assert fires("0 9 * * *", "2026-07-15T00:00:00Z", 1, "UTC") == ["2026-07-15T09:00:00Z"]


def test_a_time_skipped_by_the_spring_dst_gap_fires_once_right_after_the_gap():
    # Europe/Berlin jumps from 02:00 CET to 03:00 CEST on 2026-03-29: 02:30 does not exist.
    assert fires("30 2 * * *", "2026-03-28T12:00:00Z", 3, "Europe/Berlin") == [
        "2026-03-29T01:00:00Z",  # 03:00 CEST, the first minute after the gap
        "2026-03-30T00:30:00Z",  # 02:30 CEST
        "2026-03-31T00:30:00Z",
    ]


def test_times_around_the_spring_dst_gap_keep_their_wall_clock_time():
    assert fires("*/30 * * * *", "2026-03-29T00:00:00Z", 4, "Europe/Berlin") == [
        "2026-03-29T00:30:00Z",  # 01:30 CET
        "2026-03-29T01:00:00Z",  # 03:00 CEST
        "2026-03-29T01:30:00Z",  # 03:30 CEST
        "2026-03-29T02:00:00Z",
    ]


def test_a_time_repeated_by_the_autumn_dst_overlap_fires_once_by_default():
    # Europe/Berlin falls back from 03:00 CEST to 02:00 CET on 2026-10-25: 02:30 happens twice.
    assert fires("30 2 * * *", "2026-10-24T12:00:00Z", 2, "Europe/Berlin") == [
        "2026-10-25T00:30:00Z",  # 02:30 CEST, the first one
        "2026-10-26T01:30:00Z",
    ]


def test_a_time_repeated_by_the_autumn_dst_overlap_fires_twice_when_asked():
    assert fires("30 2 * * *", "2026-10-24T12:00:00Z", 3, "Europe/Berlin", dst_repeat="twice") == [
        "2026-10-25T00:30:00Z",  # 02:30 CEST
        "2026-10-25T01:30:00Z",  # 02:30 CET
        "2026-10-26T01:30:00Z",
    ]


def test_inside_the_autumn_overlap_the_next_fire_follows_the_real_instant():
    # 01:40 UTC is 02:40 CET, after both 02:30s of the day.
    assert fires("30 2 * * *", "2026-10-25T01:40:00Z", 1, "Europe/Berlin") == [
        "2026-10-26T01:30:00Z"
    ]
    # 00:40 UTC is 02:40 CEST: the second 02:30 (CET) is still ahead.
    assert fires("30 2 * * *", "2026-10-25T00:40:00Z", 1, "Europe/Berlin", dst_repeat="twice") == [
        "2026-10-25T01:30:00Z"
    ]


def test_the_next_fire_is_an_aware_utc_datetime():
    fire = next_fire(CronSchedule(cron="0 9 * * *", timezone="Asia/Tokyo"), at("2026-01-01T00:00Z"))
    assert fire.tzinfo is UTC
    assert fire == at("2026-01-02T00:00:00Z")  # 09:00 JST on 2026-01-02


def test_a_naive_start_time_is_refused():
    with pytest.raises(ValueError, match="aware"):
        next_fire(CronSchedule(cron="* * * * *"), datetime(2026, 1, 1))


def test_valid_schedules_pass_validation():
    for cron in ("* * * * *", "*/15 9-17 * * MON-FRI", "0 0 1 JAN *", "*/5 * * * * *"):
        assert validate(CronSchedule(cron=cron, timezone="Europe/Berlin")) is None


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("* * * *", "has 4 fields; expected 5"),
        ("* * * * * * *", "has 7 fields; expected 5"),
        ("@daily", "has 1 field; expected 5"),
        ("61 * * * *", "the minute field '61' is not valid (allowed: 0-59"),
        ("0 24 * * *", "the hour field '24' is not valid (allowed: 0-23"),
        ("0 0 0 * *", "the day-of-month field '0' is not valid"),
        ("0 0 * 13 *", "the month field '13' is not valid (allowed: 1-12 or JAN-DEC"),
        ("0 0 * * FUN", "the day-of-week field 'FUN' is not valid (allowed: 0-7 or SUN-SAT"),
        ("*/0 * * * *", "the minute field '*/0' is not valid"),
        ("60 * * * * *", "the second field '60' is not valid"),
        ("H * * * *", "the minute field 'H' uses H, which is not supported"),
        ("0 0 30 2 *", "never fires"),
    ],
)
def test_invalid_expressions_are_explained(cron: str, message: str):
    problem = validate(CronSchedule(cron=cron))
    assert problem is not None
    assert message in problem
    assert repr(cron) in problem


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "Europe", "../etc/passwd", "localtime"])
def test_an_unknown_time_zone_is_named_in_the_error(zone: str):
    assert validate(CronSchedule(cron="* * * * *", timezone=zone)) == (
        f"unknown time zone {zone!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
    )


def test_next_fire_of_an_invalid_schedule_raises_with_the_validation_message():
    with pytest.raises(InvalidSchedule, match="the minute field '61'"):
        next_fire(CronSchedule(cron="61 * * * *"), at("2026-01-01T00:00:00Z"))
    with pytest.raises(InvalidSchedule, match="unknown time zone 'Nowhere/City'"):
        next_fire(CronSchedule(cron="* * * * *", timezone="Nowhere/City"), at("2026-01-01T00:00Z"))


def test_walks_over_the_same_expression_interleaved_stay_independent():
    # The parsed expression is cached and shared; each walk keeps its own position.
    schedule = CronSchedule(cron="*/15 * * * *")
    morning = occurrences(schedule, at("2026-01-01T10:00:00Z"))
    evening = occurrences(schedule, at("2026-01-01T20:00:00Z"))
    steps = [next(morning), next(evening), next(morning), next(evening)]
    assert [step.scheduled_at.strftime("%H:%M") for step in steps] == [
        "10:15",
        "20:15",
        "10:30",
        "20:30",
    ]
