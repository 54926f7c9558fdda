"""Schedule time math: validate a `Schedule` and list its occurrences (no I/O, no NATS).

Every kind but `interval` and `once` is a cron expression on the wall clock of the schedule's
IANA time zone (`hourly`, `daily` and `weekly` are presets that compile to one). croniter walks
the *wall* times (naive datetimes); this module turns each wall time into real instants and
applies the schedule's daylight-saving policies, so they are explicit and tested rather than
whatever a library does with aware datetimes:

- **Gap** (spring forward, e.g. Europe/Berlin 02:00 -> 03:00): a wall time that does not exist
  fires at the first instant after the gap (`dst_gap="shift"`, the default: `30 2 * * *` fires
  at 03:00 CEST), or not at all (`"skip"`, an occurrence with `skip="dst_gap"`). Several wall
  times in one gap (`*/15 2 * * *`) become one occurrence.
- **Repeat** (fall back, e.g. Europe/Berlin 03:00 -> 02:00): a wall time that happens twice
  fires at its first occurrence (`dst_repeat="once"`, the default; the second is an occurrence
  with `skip="dst_repeat"`) or at both (`"twice"`). A cron whose hour field is `*` (and the
  `hourly` preset) follows elapsed time and fires at both whatever the policy: an hourly job
  keeps running every hour.

`interval` schedules count elapsed seconds from `start` (or 1970-01-01 UTC), so DST never
applies. `start` and `end` bound every kind: nothing fires before `start`; the first occurrence
after `end` is yielded once with `skip="after_end"`, and then nothing more.
"""

import functools
import hashlib
import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import (  # type: ignore[import-untyped]  # croniter ships no type hints
    CroniterBadDateError,
    CroniterError,
    croniter,
)

from contracts.registry import (
    CronSchedule,
    DailySchedule,
    HourlySchedule,
    IntervalSchedule,
    OnceSchedule,
    Schedule,
    WeeklySchedule,
)

SkipReason = Literal["dst_gap", "dst_repeat", "after_end"]

_FIVE_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_SIX_FIELDS = ("second", *_FIVE_FIELDS)
_ALLOWED = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31 or L",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT, and day#n",
}
# Any fixed start works for "does this expression ever fire": croniter looks 50 years ahead.
_PROBE_START = datetime(2001, 1, 1)
# Names the system time zone database resolves differently on every machine.
_MACHINE_DEPENDENT_ZONES = frozenset({"localtime", "posixrules"})
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_JITTER = 3600
"""Largest `jitter` in seconds."""
MAX_INTERVAL = 366 * 86_400
"""Longest interval in seconds (a year)."""


class InvalidSchedule(ValueError):
    """A schedule that `validate` would reject was given to a computation."""


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One point of a schedule: a fire, or a non-fire with the reason (`skip`)."""

    scheduled_at: datetime
    """The instant, aware UTC, whole seconds; strictly increasing along a schedule."""
    local: datetime
    """The wall time in the schedule's zone (aware); for a DST-gap occurrence, the instant
    right after the gap."""
    skip: SkipReason | None = None
    note: str = ""
    """Why the instant is what it is, for people (DST shifts and repeats), or empty."""


# --- Validation ---------------------------------------------------------------------------


def validate(schedule: Schedule, now: datetime | None = None) -> str | None:
    """A precise, human-readable reason why `schedule` cannot be used, or None if it can.

    With `now`, a one-off schedule in the past and an `end` in the past are refused too.
    """
    try:
        zone = _zone(schedule.timezone)
    except InvalidSchedule as error:
        return str(error)
    problem = _validate_recurrence(schedule)
    if problem is not None:
        return problem
    if not 0 <= schedule.jitter <= MAX_JITTER:
        return f"jitter must be between 0 and {MAX_JITTER} seconds, not {schedule.jitter}"
    if schedule.catch_up_window < 0:
        return f"catch_up_window must be 0 or more seconds, not {schedule.catch_up_window}"
    start, end = _bound(schedule.start, zone), _bound(schedule.end, zone)
    if start is not None and end is not None and end <= start:
        return f"end ({schedule.end}) must be after start ({schedule.start})"
    if now is not None:
        if end is not None and end <= now:
            return f"end ({schedule.end}) is in the past"
        if isinstance(schedule, OnceSchedule) and _resolve_once(schedule, zone) <= now:
            return f"the one-off time {schedule.at} is in the past"
    return None


def _validate_recurrence(schedule: Schedule) -> str | None:
    match schedule:
        case CronSchedule(cron=expression):
            return _validate_cron(expression)
        case HourlySchedule(minute=minute):
            if not 0 <= minute <= 59:
                return f"hourly minute must be between 0 and 59, not {minute}"
        case DailySchedule(at=at) | WeeklySchedule(at=at) if not _CLOCK.match(at):
            return f"at {at!r} is not a time of day: use 'HH:MM' or 'HH:MM:SS' (24-hour clock)"
        case WeeklySchedule(days=days) if not days:
            return "a weekly schedule needs at least one day, such as ['mon', 'thu']"
        case IntervalSchedule(every=every, unit=unit):
            seconds = every * _UNIT_SECONDS[unit]
            if every < 1 or seconds > MAX_INTERVAL:
                return f"every must be at least 1 and at most a year, not {every} {unit}"
    return None


def _recurrence_problem(schedule: Schedule) -> str | None:
    """`_validate_recurrence`, with the costly cron check cached per expression (every tick
    lists occurrences, and probing an expression runs croniter)."""
    if isinstance(schedule, CronSchedule):
        return _validate_cron(schedule.cron)
    return _validate_recurrence(schedule)


@functools.lru_cache(maxsize=4096)
def _validate_cron(expression: str) -> str | None:
    fields = expression.split()
    if len(fields) not in (5, 6):
        found = f"{len(fields)} field" + ("" if len(fields) == 1 else "s")
        return (
            f"cron {expression!r} has {found}; expected 5 "
            "(minute hour day-of-month month day-of-week) or 6 (a leading second field, then "
            "those 5)"
        )
    try:
        croniter(" ".join(fields), _PROBE_START, second_at_beginning=len(fields) == 6).get_next(
            datetime
        )
    except CroniterBadDateError:
        return f"cron {expression!r} never fires (no date matches it)"
    except (CroniterError, ValueError, TypeError, KeyError) as error:
        return _explain(expression, fields, error)
    return None


# --- Occurrences --------------------------------------------------------------------------


def occurrences(schedule: Schedule, after: datetime) -> Iterator[Occurrence]:
    """Every occurrence strictly after `after` (aware), fires and non-fires, in time order.

    Ends after a one-off's single occurrence, or after yielding the first occurrence past
    `end` (as `skip="after_end"`); otherwise it never ends, so take what you need.
    """
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("occurrences needs an aware datetime")
    problem = _recurrence_problem(schedule)
    if problem is not None:
        raise InvalidSchedule(problem)
    zone = _zone(schedule.timezone)
    start, end = _bound(schedule.start, zone), _bound(schedule.end, zone)
    after = after.astimezone(UTC)
    if start is not None and start - timedelta(microseconds=1) > after:
        after = start - timedelta(microseconds=1)
    match schedule:
        case IntervalSchedule():
            stream = _interval(schedule, after, start, zone)
        case OnceSchedule():
            moment = _resolve_once(schedule, zone)
            stream = iter([Occurrence(moment, moment.astimezone(zone))] if moment > after else [])
        case _:
            stream = _wall_clock(schedule, after, zone)
    for occurrence in stream:
        if end is not None and occurrence.scheduled_at > end:
            yield Occurrence(
                occurrence.scheduled_at,
                occurrence.local,
                skip="after_end",
                note=f"the schedule ended at {end.isoformat()}",
            )
            return
        yield occurrence


def next_fire(schedule: Schedule, after: datetime, *, limit: int = 10_000) -> datetime:
    """The first instant strictly after `after` at which `schedule` fires (aware UTC).

    Raises `InvalidSchedule` when none comes within `limit` occurrences (or ever).
    """
    for index, occurrence in enumerate(occurrences(schedule, after)):
        if occurrence.skip is None:
            return occurrence.scheduled_at
        if index >= limit:
            break
    raise InvalidSchedule(f"the schedule gives no fire time after {after.isoformat()}")


def preview(schedule: Schedule, after: datetime, count: int) -> list[Occurrence]:
    """The next `count` occurrences after `after`, non-fires included (bounded work)."""
    found: list[Occurrence] = []
    for occurrence in occurrences(schedule, after):
        found.append(occurrence)
        if len(found) >= count:
            break
    return found


def jitter_offset(trigger_id: str, jitter: int) -> timedelta:
    """The fixed delay in 0..`jitter` seconds of one trigger's fires (same on every replica)."""
    if jitter <= 0:
        return timedelta(0)
    digest = int.from_bytes(hashlib.sha256(trigger_id.encode()).digest()[:8], "big")
    return timedelta(seconds=digest % (jitter + 1))


def cron_expression(schedule: Schedule) -> str | None:
    """The cron expression a wall-clock schedule compiles to (None for interval and one-off)."""
    match schedule:
        case CronSchedule(cron=expression):
            return " ".join(expression.split())
        case HourlySchedule(minute=minute):
            return f"{minute} * * * *"
        case DailySchedule(at=at):
            hour, minute, second = _clock(at)
            return f"{second} {minute} {hour} * * *"
        case WeeklySchedule(at=at, days=days):
            hour, minute, second = _clock(at)
            numbers = ",".join(str(n) for n in sorted({_WEEKDAYS[day] for day in days}))
            return f"{second} {minute} {hour} * * {numbers}"
    return None


def zone_of(schedule: Schedule) -> ZoneInfo:
    """The schedule's time zone (raises `InvalidSchedule` for an unknown one)."""
    return _zone(schedule.timezone)


# --- Internals ----------------------------------------------------------------------------


def _wall_clock(schedule: Schedule, after: datetime, zone: ZoneInfo) -> Iterator[Occurrence]:
    expression = cron_expression(schedule)
    assert expression is not None
    fields = expression.split()
    six = len(fields) == 6
    follows_elapsed_time = fields[2 if six else 1] == "*"
    twice = schedule.dst_repeat == "twice" or follows_elapsed_time
    local_after = after.astimezone(zone)
    wall = local_after.replace(tzinfo=None)
    repeated = _repeat_length(wall, zone)
    if repeated:
        # `after` lies in a repeated hour: wall times before it may still come (second pass).
        wall -= repeated
    walls = _compiled(expression, six)
    # Instants come out of the wall-time order slightly shuffled around a repeat (02:45 of
    # the first pass is before 02:00 of the second): a small heap puts them back in order.
    # Earliest instants of successive wall times never go backwards, so everything in the heap
    # up to the current one's earliest instant is final.
    pending: list[tuple[datetime, int, Occurrence]] = []
    counter = 0
    last: datetime | None = None
    candidate = wall
    while True:
        try:
            # The compiled expression is shared: each call says where this walk stands.
            candidate = walls.get_next(datetime, start_time=candidate)
        except CroniterBadDateError:
            break
        resolved = _resolve(candidate, zone, schedule.dst_gap, twice)
        for occurrence in resolved:
            counter += 1
            heapq.heappush(pending, (occurrence.scheduled_at, counter, occurrence))
        earliest = min(occurrence.scheduled_at for occurrence in resolved)
        while pending and pending[0][0] <= earliest:
            _, _, occurrence = heapq.heappop(pending)
            if occurrence.scheduled_at <= after:
                continue
            if last is not None and occurrence.scheduled_at <= last:
                continue  # several gap wall times shifted onto one instant: one occurrence
            last = occurrence.scheduled_at
            yield occurrence
    while pending:
        _, _, occurrence = heapq.heappop(pending)
        if occurrence.scheduled_at > after and (last is None or occurrence.scheduled_at > last):
            last = occurrence.scheduled_at
            yield occurrence


@functools.lru_cache(maxsize=4096)
def _compiled(expression: str, six: bool) -> croniter:
    """The parsed expression, shared by every walk over it (parsing costs more than a step)."""
    try:
        return croniter(expression, _PROBE_START, second_at_beginning=six)
    except (CroniterError, ValueError, TypeError, KeyError) as error:
        raise InvalidSchedule(_validate_cron(expression) or str(error)) from error


def _resolve(wall: datetime, zone: ZoneInfo, gap: str, twice: bool) -> list[Occurrence]:
    """The occurrences of one wall time under the DST policies (one, or two in a repeat)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [Occurrence(first, first.astimezone(zone))]
    label = f"{wall:%Y-%m-%d %H:%M:%S}"
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        # A repeat: `first` is the earlier pass (fold=0), `second` the later one.
        later = Occurrence(
            second,
            second.astimezone(zone),
            skip=None if twice else "dst_repeat",
            note=f"{label} happens twice (clocks go back); this is the second time",
        )
        return [Occurrence(first, first.astimezone(zone)), later]
    # A gap: the wall time does not exist; the clocks jump at `after_gap`.
    after_gap = _gap_end(second, first, zone)
    return [
        Occurrence(
            after_gap,
            after_gap.astimezone(zone),
            skip="dst_gap" if gap == "skip" else None,
            note=f"{label} does not exist (clocks go forward)"
            + ("" if gap == "skip" else "; fired right after the gap"),
        )
    ]


def _gap_end(low: datetime, high: datetime, zone: ZoneInfo) -> datetime:
    """The first whole second at or after which the zone uses its post-gap offset."""
    target = high.astimezone(zone).utcoffset()
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, UTC).astimezone(zone).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _repeat_length(wall: datetime, zone: ZoneInfo) -> timedelta:
    """How long the repeated period is if `wall` falls into one, else zero."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    offset_first, offset_second = first.utcoffset(), second.utcoffset()
    if offset_first is None or offset_second is None or offset_first <= offset_second:
        return timedelta(0)
    return offset_first - offset_second


def _interval(
    schedule: IntervalSchedule, after: datetime, start: datetime | None, zone: ZoneInfo
) -> Iterator[Occurrence]:
    period = schedule.every * _UNIT_SECONDS[schedule.unit]
    anchor = int((start or _EPOCH).timestamp())
    elapsed = int(after.timestamp()) - anchor
    # The first whole multiple of the period strictly after `after`.
    steps = max(0, elapsed // period + 1)
    moment = anchor + steps * period
    while True:
        instant = datetime.fromtimestamp(moment, UTC)
        yield Occurrence(instant, instant.astimezone(zone))
        moment += period


def _resolve_once(schedule: OnceSchedule, zone: ZoneInfo) -> datetime:
    if schedule.at.tzinfo is not None and schedule.at.utcoffset() is not None:
        return _whole(schedule.at.astimezone(UTC))
    occurrence = _resolve(schedule.at.replace(microsecond=0), zone, "shift", twice=False)[0]
    return occurrence.scheduled_at


def _bound(moment: datetime | None, zone: ZoneInfo) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def _whole(moment: datetime) -> datetime:
    if moment.microsecond:
        return moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment


def _clock(at: str) -> tuple[int, int, int]:
    found = _CLOCK.match(at)
    if found is None:
        raise InvalidSchedule(f"at {at!r} is not a time of day")
    return int(found[1]), int(found[2]), int(found[3] or 0)


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    try:
        if name in _MACHINE_DEPENDENT_ZONES:
            raise ZoneInfoNotFoundError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        raise InvalidSchedule(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from error


def _explain(cron: str, fields: list[str], error: Exception) -> str:
    """Name the first field that is invalid on its own, or fall back to croniter's reason."""
    names = _SIX_FIELDS if len(fields) == 6 else _FIVE_FIELDS
    for index, (name, value) in enumerate(zip(names, fields, strict=True)):
        alone = ["*"] * len(fields)
        alone[index] = value
        try:
            croniter.expand(" ".join(alone), second_at_beginning=len(fields) == 6)
        except (CroniterError, ValueError, TypeError, KeyError) as field_error:
            if "hash_id" in str(field_error):
                return f"cron {cron!r}: the {name} field {value!r} uses H, which is not supported"
            return (
                f"cron {cron!r}: the {name} field {value!r} is not valid "
                f"(allowed: {_ALLOWED[name]}, with *, lists, ranges and /steps)"
            )
    return f"cron {cron!r} is not valid: {error}"
