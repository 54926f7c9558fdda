"""Schedule kinds, options and DST policies: occurrences from fixed datetimes (no clock)."""

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from contracts.registry import (
    CronSchedule,
    DailySchedule,
    HourlySchedule,
    IntervalSchedule,
    OnceSchedule,
    Schedule,
    WeeklySchedule,
)
from shared.schedules import jitter_offset, occurrences, preview, validate


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def points(schedule: Schedule, after: str, count: int) -> list[tuple[str, str, str | None]]:
    """The next `count` occurrences as (UTC time, local wall time with offset, skip reason)."""
    return [
        (utc(o.scheduled_at), o.local.isoformat(), o.skip)
        for o in preview(schedule, at(after), count)
    ]


def fire_times(schedule: Schedule, after: str, count: int) -> list[str]:
    return [utc(o.scheduled_at) for o in preview(schedule, at(after), count) if o.skip is None]


# --- Kinds --------------------------------------------------------------------------------


def test_the_schedule_union_decodes_every_kind_from_its_json_tag():
    decoded = msgspec.json.decode(
        b'[{"kind": "cron", "cron": "* * * * *", "timezone": "Europe/Berlin"},'
        b' {"kind": "hourly", "minute": 15}, {"kind": "daily", "at": "09:30"},'
        b' {"kind": "weekly", "days": ["mon", "fri"], "at": "18:00"},'
        b' {"kind": "interval", "every": 5, "unit": "minutes"},'
        b' {"kind": "once", "at": "2030-01-01T00:00:00Z"}]',
        type=list[Schedule],
    )
    assert [type(schedule) for schedule in decoded] == [
        CronSchedule,
        HourlySchedule,
        DailySchedule,
        WeeklySchedule,
        IntervalSchedule,
        OnceSchedule,
    ]


def test_a_cron_schedule_keeps_its_compact_json_shape():
    schedule = CronSchedule(cron="*/5 * * * *", timezone="Europe/Berlin")
    assert msgspec.json.encode(schedule) == (
        b'{"kind":"cron","timezone":"Europe/Berlin","cron":"*/5 * * * *"}'
    )


def test_the_hourly_preset_fires_at_its_minute_every_hour():
    assert fire_times(HourlySchedule(minute=15), "2026-01-01T10:20:00Z", 3) == [
        "2026-01-01T11:15:00Z",
        "2026-01-01T12:15:00Z",
        "2026-01-01T13:15:00Z",
    ]


def test_the_daily_preset_fires_at_its_wall_time_in_its_zone():
    schedule = DailySchedule(at="09:30", timezone="America/New_York")
    assert points(schedule, "2026-01-01T00:00:00Z", 2) == [
        ("2026-01-01T14:30:00Z", "2026-01-01T09:30:00-05:00", None),
        ("2026-01-02T14:30:00Z", "2026-01-02T09:30:00-05:00", None),
    ]


def test_the_daily_preset_takes_seconds_too():
    assert fire_times(DailySchedule(at="23:59:30"), "2026-01-01T00:00:00Z", 1) == [
        "2026-01-01T23:59:30Z"
    ]


def test_the_weekly_preset_fires_on_its_days_only():
    # 2026-01-01 is a Thursday.
    schedule = WeeklySchedule(days=("fri", "mon"), at="08:00")
    assert fire_times(schedule, "2026-01-01T00:00:00Z", 4) == [
        "2026-01-02T08:00:00Z",
        "2026-01-05T08:00:00Z",
        "2026-01-09T08:00:00Z",
        "2026-01-12T08:00:00Z",
    ]


def test_an_interval_counts_from_the_epoch_without_a_start():
    assert fire_times(IntervalSchedule(every=5, unit="minutes"), "2026-01-01T10:02:10Z", 3) == [
        "2026-01-01T10:05:00Z",
        "2026-01-01T10:10:00Z",
        "2026-01-01T10:15:00Z",
    ]


def test_an_interval_counts_from_its_start_and_not_before_it():
    schedule = IntervalSchedule(every=90, unit="seconds", start=at("2026-01-01T10:00:07Z"))
    assert fire_times(schedule, "2026-01-01T00:00:00Z", 3) == [
        "2026-01-01T10:00:07Z",
        "2026-01-01T10:01:37Z",
        "2026-01-01T10:03:07Z",
    ]


def test_an_interval_follows_elapsed_time_across_a_dst_change():
    # Every 30 minutes in Berlin across the spring gap: the UTC spacing never changes.
    schedule = IntervalSchedule(every=30, unit="minutes", timezone="Europe/Berlin")
    assert fire_times(schedule, "2026-03-29T00:15:00Z", 4) == [
        "2026-03-29T00:30:00Z",
        "2026-03-29T01:00:00Z",
        "2026-03-29T01:30:00Z",
        "2026-03-29T02:00:00Z",
    ]


def test_a_one_off_fires_once_and_reads_a_time_without_offset_in_its_zone():
    schedule = OnceSchedule(at=datetime(2026, 7, 1, 12, 0), timezone="Europe/Berlin")
    assert points(schedule, "2026-01-01T00:00:00Z", 5) == [
        ("2026-07-01T10:00:00Z", "2026-07-01T12:00:00+02:00", None)
    ]
    assert points(schedule, "2026-07-01T10:00:00Z", 5) == []


# --- Cron syntax ---------------------------------------------------------------------------


def test_ranges_lists_and_steps_combine():
    schedule = CronSchedule(cron="0,30 9-10 * * *")
    assert fire_times(schedule, "2026-01-01T00:00:00Z", 5) == [
        "2026-01-01T09:00:00Z",
        "2026-01-01T09:30:00Z",
        "2026-01-01T10:00:00Z",
        "2026-01-01T10:30:00Z",
        "2026-01-02T09:00:00Z",
    ]
    assert fire_times(CronSchedule(cron="10-50/20 * * * *"), "2026-01-01T00:00:00Z", 3) == [
        "2026-01-01T00:10:00Z",
        "2026-01-01T00:30:00Z",
        "2026-01-01T00:50:00Z",
    ]


def test_the_last_day_of_the_month_follows_month_lengths_and_leap_years():
    assert fire_times(CronSchedule(cron="0 0 L * *"), "2027-12-31T12:00:00Z", 4) == [
        "2028-01-31T00:00:00Z",
        "2028-02-29T00:00:00Z",  # 2028 is a leap year
        "2028-03-31T00:00:00Z",
        "2028-04-30T00:00:00Z",
    ]
    assert fire_times(CronSchedule(cron="0 0 L 2 *"), "2099-01-01T00:00:00Z", 2) == [
        "2099-02-28T00:00:00Z",
        "2100-02-28T00:00:00Z",  # 2100 is not a leap year
    ]


def test_the_29th_of_february_fires_only_in_leap_years():
    assert fire_times(CronSchedule(cron="0 12 29 2 *"), "2025-01-01T00:00:00Z", 2) == [
        "2028-02-29T12:00:00Z",
        "2032-02-29T12:00:00Z",
    ]


def test_the_31st_skips_the_months_without_one():
    assert fire_times(CronSchedule(cron="0 0 31 * *"), "2026-01-31T12:00:00Z", 3) == [
        "2026-03-31T00:00:00Z",
        "2026-05-31T00:00:00Z",
        "2026-07-31T00:00:00Z",
    ]


def test_the_nth_weekday_of_the_month():
    # The second Monday of each month.
    assert fire_times(CronSchedule(cron="0 9 * * MON#2"), "2026-01-01T00:00:00Z", 3) == [
        "2026-01-12T09:00:00Z",
        "2026-02-09T09:00:00Z",
        "2026-03-09T09:00:00Z",
    ]


def test_the_year_end_rolls_over():
    assert fire_times(CronSchedule(cron="59 23 31 12 *"), "2026-06-01T00:00:00Z", 2) == [
        "2026-12-31T23:59:00Z",
        "2027-12-31T23:59:00Z",
    ]


# --- DST: spring forward (a wall time that does not exist) ----------------------------------

GAPS = [
    # zone, a day before the change (UTC), wall time inside the gap, instant right after it
    ("Europe/Berlin", "2026-03-28T12:00:00Z", "02:30", "2026-03-29T01:00:00Z"),
    ("America/New_York", "2026-03-07T12:00:00Z", "02:30", "2026-03-08T07:00:00Z"),
    # Lord Howe moves its clocks by 30 minutes: 02:00 -> 02:30 (UTC+10:30 -> UTC+11).
    ("Australia/Lord_Howe", "2026-10-03T00:00:00Z", "02:15", "2026-10-03T15:30:00Z"),
]


@pytest.mark.parametrize(("zone", "before", "wall", "after_gap"), GAPS)
def test_a_wall_time_in_the_spring_gap_is_shifted_to_right_after_the_gap_by_default(
    zone: str, before: str, wall: str, after_gap: str
):
    schedule = DailySchedule(at=wall, timezone=zone)
    (occurrence,) = [o for o in preview(schedule, at(before), 3) if "does not exist" in o.note]
    assert utc(occurrence.scheduled_at) == after_gap
    assert occurrence.skip is None
    assert "fired right after the gap" in occurrence.note


@pytest.mark.parametrize(("zone", "before", "wall", "after_gap"), GAPS)
def test_a_wall_time_in_the_spring_gap_is_a_recorded_non_fire_with_the_skip_policy(
    zone: str, before: str, wall: str, after_gap: str
):
    schedule = DailySchedule(at=wall, timezone=zone, dst_gap="skip")
    found = preview(schedule, at(before), 3)
    skipped = [o for o in found if o.skip is not None]
    assert [(utc(o.scheduled_at), o.skip) for o in skipped] == [(after_gap, "dst_gap")]
    # The days before and after fire at their wall time as usual.
    assert all(o.local.strftime("%H:%M") == wall for o in found if o.skip is None)
    assert len(found) == 3


def test_several_wall_times_in_one_gap_become_one_fire():
    schedule = CronSchedule(cron="*/15 2 * * *", timezone="Europe/Berlin")
    found = points(schedule, "2026-03-28T23:00:00Z", 2)
    assert found == [
        ("2026-03-29T01:00:00Z", "2026-03-29T03:00:00+02:00", None),
        ("2026-03-30T00:00:00Z", "2026-03-30T02:00:00+02:00", None),
    ]


def test_times_around_the_gap_keep_their_wall_time_under_both_policies():
    for policy in ("shift", "skip"):
        schedule = CronSchedule(cron="30 1,3 * * *", timezone="Europe/Berlin", dst_gap=policy)
        assert [local for _, local, _ in points(schedule, "2026-03-28T23:00:00Z", 2)] == [
            "2026-03-29T01:30:00+01:00",
            "2026-03-29T03:30:00+02:00",
        ]


# --- DST: fall back (a wall time that happens twice) -------------------------------------

REPEATS = [
    # zone, before the change (UTC), repeated wall time, first and second instant
    (
        "Europe/Berlin",
        "2026-10-24T12:00:00Z",
        "02:30",
        "2026-10-25T00:30:00Z",
        "2026-10-25T01:30:00Z",
    ),
    (
        "America/New_York",
        "2026-10-31T12:00:00Z",
        "01:30",
        "2026-11-01T05:30:00Z",
        "2026-11-01T06:30:00Z",
    ),
    # Lord Howe: 02:00 (UTC+11) -> 01:30 (UTC+10:30), so 01:30-01:59 happen twice, 30 min apart.
    (
        "Australia/Lord_Howe",
        "2026-04-04T00:00:00Z",
        "01:45",
        "2026-04-04T14:45:00Z",
        "2026-04-04T15:15:00Z",
    ),
]


@pytest.mark.parametrize(("zone", "before", "wall", "first", "second"), REPEATS)
def test_a_repeated_wall_time_fires_once_by_default_and_records_the_second(
    zone: str, before: str, wall: str, first: str, second: str
):
    schedule = DailySchedule(at=wall, timezone=zone)
    found = points(schedule, before, 3)
    assert [(time, skip) for time, _, skip in found[:2]] == [(first, None), (second, "dst_repeat")]
    assert found[2][2] is None  # the next day fires as usual


@pytest.mark.parametrize(("zone", "before", "wall", "first", "second"), REPEATS)
def test_a_repeated_wall_time_fires_twice_with_the_twice_policy(
    zone: str, before: str, wall: str, first: str, second: str
):
    schedule = DailySchedule(at=wall, timezone=zone, dst_repeat="twice")
    assert fire_times(schedule, before, 2) == [first, second]


def test_inside_a_repeat_the_occurrences_follow_real_time_order():
    # Every 20 minutes during Berlin's 02:xx, twice: first pass, then second pass.
    schedule = CronSchedule(cron="*/20 2 * * *", timezone="Europe/Berlin", dst_repeat="twice")
    assert [local for _, local, _ in points(schedule, "2026-10-24T23:00:00Z", 6)] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:20:00+02:00",
        "2026-10-25T02:40:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T02:20:00+01:00",
        "2026-10-25T02:40:00+01:00",
    ]


def test_starting_in_the_second_pass_of_a_repeat_continues_from_the_real_instant():
    schedule = CronSchedule(cron="*/20 2 * * *", timezone="Europe/Berlin", dst_repeat="twice")
    # 01:10 UTC is 02:10 CET, in the second pass.
    assert fire_times(schedule, "2026-10-25T01:10:00Z", 2) == [
        "2026-10-25T01:20:00Z",
        "2026-10-25T01:40:00Z",
    ]


def test_starting_in_the_first_pass_still_reaches_the_second_pass():
    schedule = CronSchedule(cron="*/20 2 * * *", timezone="Europe/Berlin", dst_repeat="twice")
    # 00:45 UTC is 02:45 CEST: next come the second-pass 02:00, 02:20, ...
    assert fire_times(schedule, "2026-10-25T00:45:00Z", 2) == [
        "2026-10-25T01:00:00Z",
        "2026-10-25T01:20:00Z",
    ]


def test_a_cron_with_every_hour_keeps_firing_every_hour_through_a_repeat():
    # Hourly jobs follow elapsed time: both 02:00s fire even with the default `once`.
    assert fire_times(HourlySchedule(timezone="Europe/Berlin"), "2026-10-24T23:30:00Z", 4) == [
        "2026-10-25T00:00:00Z",  # 02:00 CEST
        "2026-10-25T01:00:00Z",  # 02:00 CET
        "2026-10-25T02:00:00Z",
        "2026-10-25T03:00:00Z",
    ]


# --- Start, end, jitter --------------------------------------------------------------------


def test_nothing_fires_before_start():
    schedule = CronSchedule(cron="0 * * * *", start=at("2026-01-01T12:30:00Z"))
    assert fire_times(schedule, "2026-01-01T00:00:00Z", 2) == [
        "2026-01-01T13:00:00Z",
        "2026-01-01T14:00:00Z",
    ]


def test_the_first_occurrence_after_end_is_recorded_and_then_nothing_more():
    schedule = CronSchedule(cron="0 * * * *", end=at("2026-01-01T02:00:00Z"))
    assert points(schedule, "2026-01-01T00:30:00Z", 10) == [
        ("2026-01-01T01:00:00Z", "2026-01-01T01:00:00+00:00", None),
        ("2026-01-01T02:00:00Z", "2026-01-01T02:00:00+00:00", None),
        ("2026-01-01T03:00:00Z", "2026-01-01T03:00:00+00:00", "after_end"),
    ]


def test_start_and_end_without_an_offset_are_read_in_the_schedule_zone():
    schedule = DailySchedule(
        at="09:00",
        timezone="Europe/Berlin",
        start=datetime(2026, 1, 2, 9, 0),
        end=datetime(2026, 1, 3, 9, 0),
    )
    assert points(schedule, "2026-01-01T00:00:00Z", 5) == [
        ("2026-01-02T08:00:00Z", "2026-01-02T09:00:00+01:00", None),
        ("2026-01-03T08:00:00Z", "2026-01-03T09:00:00+01:00", None),
        ("2026-01-04T08:00:00Z", "2026-01-04T09:00:00+01:00", "after_end"),
    ]


def test_jitter_is_fixed_per_trigger_and_within_bounds():
    offsets = {jitter_offset(f"trg_{n}", 30) for n in range(200)}
    assert all(timedelta(0) <= offset <= timedelta(seconds=30) for offset in offsets)
    assert len(offsets) > 20  # spread, not one value
    assert jitter_offset("trg_1", 30) == jitter_offset("trg_1", 30)
    assert jitter_offset("trg_1", 0) == timedelta(0)


def test_occurrences_need_an_aware_time():
    with pytest.raises(ValueError, match="aware"):
        next(occurrences(HourlySchedule(), datetime(2026, 1, 1)))


# --- Validation ----------------------------------------------------------------------------

NOW = at("2026-01-01T00:00:00Z")


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (HourlySchedule(minute=60), "hourly minute must be between 0 and 59, not 60"),
        (DailySchedule(at="25:00"), "at '25:00' is not a time of day"),
        (DailySchedule(at="9am"), "use 'HH:MM' or 'HH:MM:SS'"),
        (WeeklySchedule(days=(), at="09:00"), "needs at least one day"),
        (IntervalSchedule(every=0), "every must be at least 1"),
        (IntervalSchedule(every=9000, unit="hours"), "at most a year"),
        (HourlySchedule(jitter=-1), "jitter must be between 0 and 3600 seconds"),
        (HourlySchedule(jitter=3601), "jitter must be between 0 and 3600 seconds"),
        (HourlySchedule(catch_up_window=-5), "catch_up_window must be 0 or more"),
        (
            HourlySchedule(start=at("2026-02-01T00:00:00Z"), end=at("2026-01-15T00:00:00Z")),
            "must be after start",
        ),
        (HourlySchedule(end=at("2025-12-31T00:00:00Z")), "is in the past"),
        (OnceSchedule(at=at("2025-12-31T00:00:00Z")), "the one-off time"),
        (DailySchedule(at="09:00", timezone="Mars/Base"), "unknown time zone 'Mars/Base'"),
        (CronSchedule(cron="0 0 * * 5L"), "the day-of-week field '5L' is not valid"),
        (
            HourlySchedule(start=at("0001-01-01T01:00:01+19:08")),  # before the year 1 in UTC
            "start 0001-01-01T01:00:01+19:08 is out of range",
        ),
        (HourlySchedule(end=at("9999-12-31T23:00:00-05:00")), "end 9999-12-31T23:00:00-05:00"),
        (
            OnceSchedule(at=datetime(9999, 12, 31, 23, 59), timezone="America/New_York"),
            "at 9999-12-31T23:59:00 is out of range",
        ),
    ],
)
def test_invalid_options_are_explained(schedule: Schedule, message: str):
    problem = validate(schedule, NOW)
    assert problem is not None
    assert message in problem


def test_valid_schedules_of_every_kind_pass():
    for schedule in (
        HourlySchedule(minute=59, jitter=3600),
        DailySchedule(at="00:00:00", dst_gap="skip", dst_repeat="twice"),
        WeeklySchedule(days=("sun",), at="23:59", misfire="run_all", catch_up_window=0),
        IntervalSchedule(every=1),
        OnceSchedule(at=at("2030-01-01T00:00:00Z")),
        CronSchedule(cron="0 0 L * *", timezone="Australia/Lord_Howe", misfire="skip"),
    ):
        assert validate(schedule, NOW) is None, schedule
