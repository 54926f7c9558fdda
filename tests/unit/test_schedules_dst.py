"""DST gaps and repeats of wall-clock schedules, checked against zoneinfo by hand (no clock)."""

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from contracts.registry import CronSchedule
from shared.schedules import Occurrence, occurrences, preview


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def walk(schedule: CronSchedule, after: str, count: int) -> list[tuple[str, str | None]]:
    """The next `count` occurrences as (UTC time, skip reason)."""
    return [(utc(o.scheduled_at), o.skip) for o in preview(schedule, at(after), count)]


# --- Gaps: a skipped wall time never hides a real one ---------------------------------------


def test_a_skipped_gap_never_hides_a_real_fire():
    # Berlin, 2026-03-29: 02:00 CET does not exist, the clocks jump to 03:00 CEST (01:00 UTC).
    hourly = CronSchedule(cron="0 * * * *", timezone="Europe/Berlin", dst_gap="skip")
    assert walk(hourly, "2026-03-28T23:30:00Z", 3) == [
        ("2026-03-29T00:00:00Z", None),  # 01:00 CET
        ("2026-03-29T01:00:00Z", None),  # 03:00 CEST: it exists, so it fires
        ("2026-03-29T02:00:00Z", None),  # 04:00 CEST
    ]
    hours = CronSchedule(cron="0 1-3 * * *", timezone="Europe/Berlin", dst_gap="skip")
    found = preview(hours, at("2026-03-28T23:30:00Z"), 3)
    assert [(utc(o.scheduled_at), o.skip) for o in found] == [
        ("2026-03-29T00:00:00Z", None),  # 01:00 CET
        ("2026-03-29T00:59:59Z", "dst_gap"),  # 02:00 is recorded just before the gap ...
        ("2026-03-29T01:00:00Z", None),  # ... because 03:00 CEST keeps its own fire
    ]
    assert found[1].note == "2026-03-29 02:00:00 does not exist (clocks go forward); skipped"


def test_a_skipped_gap_is_one_occurrence_naming_all_its_wall_times():
    schedule = CronSchedule(cron="*/15 2 * * *", timezone="Europe/Berlin", dst_gap="skip")
    found = preview(schedule, at("2026-03-28T23:00:00Z"), 2)
    assert [(utc(o.scheduled_at), o.skip) for o in found] == [
        ("2026-03-29T01:00:00Z", "dst_gap"),  # right after the gap: nothing fires there
        ("2026-03-30T00:00:00Z", None),  # 02:00 CEST the next day
    ]
    assert found[0].note == (
        "2026-03-29 02:00:00, 02:15:00, 02:30:00 and 02:45:00 do not exist (clocks go forward);"
        " skipped"
    )


def test_a_shifted_gap_that_lands_on_a_real_fire_fires_once():
    schedule = CronSchedule(cron="0 1-3 * * *", timezone="Europe/Berlin")
    found = preview(schedule, at("2026-03-28T23:30:00Z"), 3)
    assert [(utc(o.scheduled_at), o.skip) for o in found] == [
        ("2026-03-29T00:00:00Z", None),  # 01:00 CET
        ("2026-03-29T01:00:00Z", None),  # 03:00 CEST, standing for 02:00 too
        ("2026-03-29T23:00:00Z", None),  # 01:00 CEST the next day
    ]
    assert found[1].note.startswith("2026-03-29 02:00:00 does not exist")


def test_a_gap_with_real_fires_on_both_sides_is_not_recorded():
    # Fires at 01:59:59 CET and at 03:00:00 CEST: no second is left to record 02:xx on.
    schedule = CronSchedule(cron="0,59 0,59 1-3 * * *", timezone="Europe/Berlin", dst_gap="skip")
    found = walk(schedule, "2026-03-29T00:59:00Z", 2)
    assert found == [("2026-03-29T00:59:59Z", None), ("2026-03-29T01:00:00Z", None)]


# --- Hour `*`: elapsed time ---------------------------------------------------------------


@pytest.mark.parametrize("policy", ["shift", "skip"])
def test_an_hour_star_cron_follows_elapsed_time_across_a_gap(policy: str):
    schedule = CronSchedule(cron="30 * * * *", timezone="Europe/Berlin", dst_gap=policy)
    assert walk(schedule, "2026-03-29T00:00:00Z", 3) == [
        ("2026-03-29T00:30:00Z", None),  # 01:30 CET
        ("2026-03-29T01:30:00Z", None),  # 03:30 CEST, an hour later: 02:30 is no occurrence
        ("2026-03-29T02:30:00Z", None),
    ]


def test_an_hour_star_cron_keeps_its_wall_times_across_a_half_hour_shift():
    # Lord Howe: 2026-10-04 02:00 (UTC+10:30) -> 02:30 (UTC+11), at 15:30 UTC on 10-03.
    forward = "2026-10-03T14:00:00Z"
    quarter_past = CronSchedule(cron="15 * * * *", timezone="Australia/Lord_Howe")
    assert walk(quarter_past, forward, 2) == [
        ("2026-10-03T14:45:00Z", None),  # 01:15 +10:30
        ("2026-10-03T16:15:00Z", None),  # 03:15 +11 (02:15 does not exist): 90 minutes
    ]
    quarter_to = CronSchedule(cron="45 * * * *", timezone="Australia/Lord_Howe")
    assert walk(quarter_to, forward, 4) == [
        ("2026-10-03T14:15:00Z", None),  # 00:45 +10:30
        ("2026-10-03T15:15:00Z", None),  # 01:45 +10:30
        ("2026-10-03T15:45:00Z", None),  # 02:45 +11 exists: 30 minutes
        ("2026-10-03T16:45:00Z", None),
    ]
    # 2026-04-05 02:00 (UTC+11) -> 01:30 (UTC+10:30), at 15:00 UTC on 04-04: 01:30-01:59 twice.
    back = "2026-04-04T14:00:00Z"
    assert walk(quarter_past, back, 2) == [
        ("2026-04-04T14:15:00Z", None),  # 01:15 +11
        ("2026-04-04T15:45:00Z", None),  # 02:15 +10:30: 90 minutes
    ]
    assert walk(quarter_to, back, 3) == [
        ("2026-04-04T14:45:00Z", None),  # 01:45 +11
        ("2026-04-04T15:15:00Z", None),  # 01:45 +10:30, the second pass: 30 minutes
        ("2026-04-04T16:15:00Z", None),  # 02:45 +10:30
    ]


# --- A year in many zones against a brute-force oracle ------------------------------------

ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Europe/Dublin",  # negative DST in tzdata: winter is the "daylight saving" offset
    "America/Santiago",
    "Africa/Cairo",
    "America/Havana",  # the gap is at midnight
    "Australia/Lord_Howe",  # 30-minute shift
    "Pacific/Chatham",  # UTC+12:45 / +13:45, the gap is 02:45-03:44
    "Antarctica/Troll",  # a 2-hour shift
]
YEAR = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
CRONS: dict[str, Callable[[datetime], bool]] = {
    # The same expressions, written as plain predicates on a wall time.
    "0 * * * *": lambda wall: wall.minute == 0,
    "*/30 * * * *": lambda wall: wall.minute in (0, 30),
    "*/30 0-3 * * *": lambda wall: wall.minute in (0, 30) and wall.hour <= 3,
}


@functools.cache
def wall_clock_of(zone_name: str) -> tuple[list[tuple[datetime, datetime]], list[datetime]]:
    """Every UTC minute of the year read on the zone's wall clock, kept when the minute is
    :00 or :30 (all that the crons above can match); and every wall time that does not exist,
    with the instant right after its gap: (missing wall, gap end)."""
    zone = ZoneInfo(zone_name)
    seen: list[tuple[datetime, datetime]] = []
    gaps: list[tuple[datetime, datetime, datetime]] = []  # (first missing wall, end wall, end)
    # `clock` is a UTC reading carrying the zone only so that `fromutc` can convert it.
    clock, end, step = (
        YEAR[0].replace(tzinfo=zone),
        YEAR[1].replace(tzinfo=zone),
        timedelta(minutes=1),
    )
    previous = zone.fromutc(clock) - clock  # same tzinfo: plain wall-clock difference
    while clock < end:
        local = zone.fromutc(clock)
        offset = local - clock
        if offset > previous:  # the clocks jumped forward at this minute
            moment = clock.replace(tzinfo=UTC)
            gaps.append(
                ((clock + previous).replace(tzinfo=None), local.replace(tzinfo=None), moment)
            )
        previous = offset
        if local.minute in (0, 30):
            seen.append((clock.replace(tzinfo=UTC), local.replace(tzinfo=None)))
        clock += step
    return seen, gaps


def year_of(schedule: CronSchedule) -> list[Occurrence]:
    found = []
    for occurrence in occurrences(schedule, YEAR[0] - timedelta(seconds=1)):
        if occurrence.scheduled_at >= YEAR[1]:
            return found
        found.append(occurrence)
    return found


@pytest.mark.parametrize("policy", ["shift", "skip"])
@pytest.mark.parametrize("cron", list(CRONS))
@pytest.mark.parametrize("zone", ZONES)
def test_every_existing_matching_wall_time_fires_exactly_once_in_a_year(
    zone: str, cron: str, policy: str
):
    matches = CRONS[cron]
    seen, gaps = wall_clock_of(zone)
    hour_star = cron.split()[1] == "*"
    passes: dict[datetime, list[datetime]] = {}
    for moment, wall in seen:
        if matches(wall):
            passes.setdefault(wall, []).append(moment)
    assert gaps, "the zone changes its clocks in the year"
    # The wall times that do not exist and match, per gap (walked minute by minute).
    missing: list[tuple[list[datetime], datetime]] = []
    for first_missing, end_wall, end in gaps:
        walls = []
        wall = first_missing
        while wall < end_wall:
            if matches(wall):
                walls.append(wall)
            wall += timedelta(minutes=1)
        if walls:
            missing.append((walls, end))

    found = year_of(CronSchedule(cron=cron, timezone=zone, dst_gap=policy))
    instants = [o.scheduled_at for o in found]
    assert instants == sorted(set(instants)), "occurrences are strictly increasing"
    fires = [o.scheduled_at for o in found if o.skip is None]
    skipped_gaps = [o for o in found if o.skip == "dst_gap"]
    repeats = sorted(o.scheduled_at for o in found if o.skip == "dst_repeat")

    if hour_star:
        # Elapsed time: every instant whose wall time matches fires, both passes of a repeat,
        # and a wall time that does not exist is no occurrence at all.
        expected = sorted(moment for moments in passes.values() for moment in moments)
        assert fires == expected
        assert skipped_gaps == []
        assert repeats == []
        return

    first_passes = {moments[0] for moments in passes.values()}
    assert repeats == sorted(moments[1] for moments in passes.values() if len(moments) == 2)
    assert missing, "the cron matches wall times inside the gaps"
    if policy == "shift":
        assert fires == sorted(first_passes | {end for _, end in missing})
        assert skipped_gaps == []
        return
    assert fires == sorted(first_passes)
    assert len(skipped_gaps) == len(missing)
    for occurrence, (walls, end) in zip(skipped_gaps, missing, strict=True):
        assert occurrence.scheduled_at not in first_passes
        assert occurrence.scheduled_at in (end, end - timedelta(seconds=1))
        assert all(f"{wall:%H:%M:%S}" in occurrence.note for wall in walls), occurrence.note
