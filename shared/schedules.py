"""Schedule time math: validate a `Schedule` and list its occurrences (no I/O, no NATS).

Every kind but `interval` and `once` is a cron expression on the wall clock of the schedule's
IANA time zone (`hourly`, `daily` and `weekly` are presets that compile to one). This module
walks the *wall* times (naive datetimes) the expression matches, turns each into real instants
and applies the schedule's daylight-saving policies, so they are explicit and tested rather
than whatever a library does with aware datetimes. croniter parses the expression and decides
which days of a year match (`L`, `15W`, `MON#2`, `L5`), cached per year; the time of day is
stepped here over the expanded second, minute and hour sets (much cheaper than croniter steps).

Day of month and day of week: when both are restricted (neither is `*` or `?`), a day matches
when *either* does (POSIX, Vixie cron), in every form: `0 9 1 * MON#1` fires on the 1st and on
first Mondays, `0 9 L * FRI` on the last day of the month and on Fridays, `0 0 1,15 * L5` on
the 1st, the 15th and the last Friday. The two halves (day of week `*`, day of month `*`) are
evaluated separately and merged, because croniter ANDs or drops some of these forms.

- **Gap** (spring forward, e.g. Europe/Berlin 02:00 -> 03:00): a wall time that does not exist
  fires at the first instant after the gap (`dst_gap="shift"`, the default: `30 2 * * *` fires
  at 03:00 CEST) or not at all (`"skip"`). All the wall times of one gap that match become one
  occurrence whose note names them (`*/15 2 * * *`: 02:00, 02:15, 02:30 and 02:45). Under
  `shift`, when the schedule also really fires at the first instant after the gap
  (`0 1-3 * * *` at 03:00 CEST), that one fire stands for both. Under `skip` the gap never
  hides a real fire: its occurrence (`skip="dst_gap"`) sits at the first instant after the
  gap, or one second before the gap when a real fire holds that instant (`0 1-3 * * *` fires
  01:00 CET and 03:00 CEST and records 02:00 at 01:59:59 CET); only when real fires hold both
  seconds (a 6-field cron) is the gap left unrecorded, as no instant is free to carry it.
- **Repeat** (fall back, e.g. Europe/Berlin 03:00 -> 02:00): a wall time that happens twice
  fires at its first occurrence (`dst_repeat="once"`, the default; the second is an occurrence
  with `skip="dst_repeat"`) or at both (`"twice"`).
- **Hour field `*`** (and the `hourly` preset): the cron follows elapsed time, as Vixie cron
  and robfig/cron (Kubernetes CronJobs) do. It fires at every wall time that exists and
  matches, at both passes of a repeated hour whatever `dst_repeat` says, and a wall time that
  does not exist is no occurrence at all: no shift and no `dst_gap` record (nothing was
  skipped; that hour's fire is the next existing match). `30 * * * *` in Berlin fires 01:30
  CET then 03:30 CEST, an hour apart. Where clocks move by 30 minutes (Australia/Lord_Howe:
  02:00 -> 02:30 in October, 02:00 -> 01:30 in April) fires keep their wall times, so they are
  an hour apart except across the change: going forward, `15 * * * *` fires 01:15 then 03:15
  (90 minutes) and `45 * * * *` 01:45 then 02:45 (30 minutes); going back, `15 * * * *` fires
  01:15 then 02:15 (90 minutes) and `45 * * * *` 01:45, 01:45 again 30 minutes later, then
  02:45 an hour after that.

`interval` schedules count elapsed seconds from `start` (or 1970-01-01 UTC), so DST never
applies. `start` and `end` bound every kind: nothing fires before `start`; the first occurrence
after `end` is yielded once with `skip="after_end"`, and then nothing more.
"""

import bisect
import functools
import hashlib
import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
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
    "day-of-week": "0-7 or SUN-SAT, day#n and Lday (L5: the last Friday)",
}
# A day field written like this restricts nothing: it does not make the other one an OR.
_ANY = frozenset({"*", "?"})
# croniter's random values (`R`), as a token of its own (not the R of FRI or MAR).
_RANDOM = re.compile(r"(?<![a-z])r(?![a-z])", re.IGNORECASE)
# How far ahead a walk looks for a matching day before it decides none will ever come.
_HORIZON_YEARS = 100
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
    """`scheduled_at` on the schedule's wall clock (aware); for a DST-gap occurrence, the
    instant right after the gap (or, for a skipped one, possibly the second before it)."""
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
    field, moment = "start", schedule.start
    try:
        start = _bound(moment, zone)
        field, moment = "end", schedule.end
        end = _bound(moment, zone)
        at = None
        if isinstance(schedule, OnceSchedule):
            field, moment = "at", schedule.at
            at = _resolve_once(schedule, zone)
    except OverflowError:  # such as 0001-01-01T01:00:00+19:00: before the year 1 in UTC
        shown = moment.isoformat() if moment is not None else ""
        return f"{field} {shown} is out of range: in UTC it must fall within the years 1-9999"
    if start is not None and end is not None and end <= start:
        return f"end ({schedule.end}) must be after start ({schedule.start})"
    if now is not None:
        if end is not None and end <= now:
            return f"end ({schedule.end}) is in the past"
        if isinstance(schedule, OnceSchedule) and at is not None and at <= now:
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
    names = _SIX_FIELDS if len(fields) == 6 else _FIVE_FIELDS
    for name, value in zip(names, fields, strict=True):
        if _RANDOM.search(value):
            # croniter draws R once per parse: every replica would fire at a different time.
            return f"cron {expression!r}: the {name} field {value!r} uses R, which is not supported"
    try:
        croniter(" ".join(fields), _PROBE_START, second_at_beginning=len(fields) == 6)
        for half in _day_halves(*fields[-3:]):
            try:
                croniter(f"0 0 {half}", _PROBE_START).get_next(datetime)
            except CroniterBadDateError:
                continue
            return None
    except (CroniterError, ValueError, TypeError, KeyError) as error:
        return _explain(expression, fields, error)
    return f"cron {expression!r} never fires (no date matches it)"


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


def fires_per_hour(schedule: Schedule) -> int:
    """The most times `schedule` fires within one hour: its load at its busiest.

    A wall-clock schedule fires at most (seconds matched) x (minutes matched) times in an hour
    of real time (a DST change moves or repeats wall times, never adds any to a real hour);
    an interval at most ceil(3600 / period) times; a one-off once. Used for the per-workspace
    fire-rate quota, so it must never be lower than the truth; `start`, `end` and the day
    fields only make a schedule quieter, and are left out.
    """
    if isinstance(schedule, IntervalSchedule):
        period = schedule.every * _UNIT_SECONDS[schedule.unit]
        return max(1, -(-3600 // max(period, 1)))
    expression = cron_expression(schedule)
    if expression is None:
        return 1
    compiled = _compiled(expression)
    return len(compiled.seconds) * len(compiled.minutes)


def zone_of(schedule: Schedule) -> ZoneInfo:
    """The schedule's time zone (raises `InvalidSchedule` for an unknown one)."""
    return _zone(schedule.timezone)


# --- Internals ----------------------------------------------------------------------------


def _wall_clock(schedule: Schedule, after: datetime, zone: ZoneInfo) -> Iterator[Occurrence]:
    expression = cron_expression(schedule)
    assert expression is not None
    cron = _compiled(expression)
    elapsed = cron.follows_elapsed_time
    twice = schedule.dst_repeat == "twice" or elapsed
    skip_gaps = schedule.dst_gap == "skip"
    start = after.astimezone(zone).replace(tzinfo=None)
    repeated = _repeat_length(start, zone)
    if repeated:
        # `after` lies in a repeated hour: wall times before it may still come (second pass).
        start -= repeated
    wall = start
    # Instants come out of the wall-time order slightly shuffled around a repeat (02:45 of
    # the first pass is before 02:00 of the second): a small heap puts them back in order.
    # Earliest instants of successive wall times never go backwards, so everything in the heap
    # up to the current one's earliest instant is final.
    pending: list[tuple[datetime, int, Occurrence]] = []
    counter = 0
    last: datetime | None = None  # the latest instant yielded
    newest: datetime | None = None  # the latest instant pushed (a gap must not take it)
    gap: _Gap | None = None  # the matching wall times of the gap being walked through
    while (following := cron.next_wall(wall)) is not None:
        wall = following
        aware = wall.replace(tzinfo=zone)
        offset, later_offset = _offsets(aware)
        if offset < later_offset:
            # `wall` does not exist (fold 0 reads it with the offset before the gap).
            if elapsed:
                continue
            if gap is not None and gap.first_wall <= wall < gap.end_wall:
                gap.walls.append(wall)
                continue
            if gap is not None:
                found = _close_gap(gap, None, newest, zone, skip_gaps)
                if found is not None:
                    counter += 1
                    heapq.heappush(pending, (found.scheduled_at, counter, found))
                    newest = found.scheduled_at
            end = _gap_end(wall - later_offset, wall - offset, zone)
            gap = _Gap(end, (end + later_offset).replace(tzinfo=None), wall, [wall])
            continue
        first = (wall - offset).replace(tzinfo=UTC)
        resolved = [Occurrence(first, aware)]
        if offset != later_offset:
            # A repeat: fold 0 is the earlier pass, fold 1 the later one.
            second = (wall - later_offset).replace(tzinfo=UTC)
            resolved.append(
                Occurrence(
                    second,
                    aware.replace(fold=1),
                    skip=None if twice else "dst_repeat",
                    note=f"{wall:%Y-%m-%d %H:%M:%S} happens twice (clocks go back); "
                    "this is the second time",
                )
            )
        if gap is not None:
            found = _close_gap(gap, first, newest, zone, skip_gaps)
            gap = None
            if found is not None and found.scheduled_at == first:
                resolved[0] = found  # the real fire right after the gap stands for the gap too
            elif found is not None:
                counter += 1
                heapq.heappush(pending, (found.scheduled_at, counter, found))
        for occurrence in resolved:
            counter += 1
            heapq.heappush(pending, (occurrence.scheduled_at, counter, occurrence))
        newest = (
            resolved[-1].scheduled_at if newest is None else max(newest, resolved[-1].scheduled_at)
        )
        while pending and pending[0][0] <= first:
            _, _, occurrence = heapq.heappop(pending)
            if occurrence.scheduled_at > after and (last is None or occurrence.scheduled_at > last):
                last = occurrence.scheduled_at
                yield occurrence
    if gap is not None:
        found = _close_gap(gap, None, newest, zone, skip_gaps)
        if found is not None:
            counter += 1
            heapq.heappush(pending, (found.scheduled_at, counter, found))
    while pending:
        _, _, occurrence = heapq.heappop(pending)
        if occurrence.scheduled_at > after and (last is None or occurrence.scheduled_at > last):
            last = occurrence.scheduled_at
            yield occurrence


@dataclass(slots=True)
class _Gap:
    """The wall times a schedule matches inside one DST gap, walked through in order."""

    end: datetime
    """The first instant after the gap (aware UTC)."""
    end_wall: datetime
    """The first wall time after the gap (naive); every earlier one from `first_wall` is in it."""
    first_wall: datetime
    walls: list[datetime]


def _close_gap(
    gap: _Gap, following: datetime | None, newest: datetime | None, zone: ZoneInfo, skip: bool
) -> Occurrence | None:
    """The one occurrence standing for a gap's wall times, or None when no instant can hold it.

    `following` is the instant of the schedule's next existing wall time, `newest` the latest
    instant already taken before the gap.
    """
    times = _describe(gap.walls)
    verb = "does" if len(gap.walls) == 1 else "do"
    note = f"{times} {verb} not exist (clocks go forward)"
    if not skip:
        # When `following` is the gap's end too, the caller merges the two into one fire.
        return Occurrence(
            gap.end, gap.end.astimezone(zone), note=f"{note}; fired right after the gap"
        )
    moment = gap.end
    if following == moment:
        moment -= timedelta(seconds=1)  # the real fire keeps its instant; the record goes before
        if newest is not None and moment <= newest:
            return None
    return Occurrence(moment, moment.astimezone(zone), skip="dst_gap", note=f"{note}; skipped")


def _describe(walls: list[datetime]) -> str:
    """`2026-03-29 02:00:00, 02:15:00 and 02:30:00` (a range when there are many)."""
    first = f"{walls[0]:%Y-%m-%d %H:%M:%S}"
    rest = [
        f"{wall:%H:%M:%S}" if wall.date() == walls[0].date() else f"{wall:%Y-%m-%d %H:%M:%S}"
        for wall in walls[1:]
    ]
    if not rest:
        return first
    if len(rest) > 7:
        return f"the {len(walls)} times from {first} to {rest[-1]}"
    return ", ".join([first, *rest[:-1]]) + f" and {rest[-1]}"


@dataclass(frozen=True, slots=True)
class _Cron:
    """A parsed expression: the time-of-day sets, and the fields that decide the days."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    minute_set: frozenset[int]
    hour_set: frozenset[int]
    days: tuple[str, str, str]
    """Day of month, month and day of week, as written."""
    follows_elapsed_time: bool
    """The hour field is `*`: the cron keeps time with the clock running, not the wall."""

    def next_wall(self, after: datetime) -> datetime | None:
        """The first wall time strictly after `after` (naive) that matches, or None if none
        comes within a century."""
        day = after.date()
        if _day_matches(self.days, day):
            clock = self._next_clock(after.hour, after.minute, after.second)
            if clock is not None:
                return datetime(day.year, day.month, day.day, *clock)
        following = _next_day(self.days, day + timedelta(days=1))
        if following is None:
            return None
        return datetime(
            following.year,
            following.month,
            following.day,
            self.hours[0],
            self.minutes[0],
            self.seconds[0],
        )

    def _next_clock(self, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
        if hour in self.hour_set:
            if minute in self.minute_set:
                index = bisect.bisect_right(self.seconds, second)
                if index < len(self.seconds):
                    return hour, minute, self.seconds[index]
            index = bisect.bisect_right(self.minutes, minute)
            if index < len(self.minutes):
                return hour, self.minutes[index], self.seconds[0]
        index = bisect.bisect_right(self.hours, hour)
        if index < len(self.hours):
            return self.hours[index], self.minutes[0], self.seconds[0]
        return None


@functools.lru_cache(maxsize=4096)
def _compiled(expression: str) -> _Cron:
    """The parsed expression, shared by every walk over it (parsing costs more than a walk)."""
    problem = _validate_cron(expression)
    if problem is not None:
        raise InvalidSchedule(problem)
    fields = expression.split()
    six = len(fields) == 6
    expanded, _ = croniter.expand(expression, second_at_beginning=six)
    # croniter lists the fields minute, hour, day, month, weekday[, second].
    minutes = _values(expanded[0], 60)
    hours = _values(expanded[1], 24)
    seconds = _values(expanded[5], 60) if six else (0,)
    return _Cron(
        seconds=seconds,
        minutes=minutes,
        hours=hours,
        minute_set=frozenset(minutes),
        hour_set=frozenset(hours),
        days=(fields[-3], fields[-2], fields[-1]),
        follows_elapsed_time=fields[-4] == "*",
    )


def _values(expanded: list[int | str], size: int) -> tuple[int, ...]:
    if expanded == ["*"]:
        return tuple(range(size))
    return tuple(sorted({int(value) for value in expanded}))


def _day_halves(day_of_month: str, month: str, day_of_week: str) -> list[str]:
    """The day fields as one or two `day month weekday` expressions whose days are unioned."""
    if day_of_month in _ANY or day_of_week in _ANY:
        return [f"{day_of_month} {month} {day_of_week}"]
    return [f"{day_of_month} {month} *", f"* {month} {day_of_week}"]


def _day_matches(days: tuple[str, str, str], day: date) -> bool:
    return bool(_year_days(days, day.year) >> (day - date(day.year, 1, 1)).days & 1)


def _next_day(days: tuple[str, str, str], day: date) -> date | None:
    """The first matching day on or after `day`, or None if none comes within a century."""
    year, index = day.year, (day - date(day.year, 1, 1)).days
    while year < min(day.year + _HORIZON_YEARS, 9999):
        mask = _year_days(days, year) >> index
        if mask:
            return date(year, 1, 1) + timedelta(days=index + (mask & -mask).bit_length() - 1)
        year, index = year + 1, 0
    return None


@functools.lru_cache(maxsize=4096)
def _year_days(days: tuple[str, str, str], year: int) -> int:
    """The days of `year` that match, as a bit mask (bit 0 is January 1)."""
    mask = 0
    for half in _day_halves(*days):
        mask |= _half_days(half, year)
    return mask


def _half_days(half: str, year: int) -> int:
    (_, _, day_of_month, months, day_of_week), nth = croniter.expand(f"0 0 {half}")
    plain = not nth and "w" not in half.lower() and "l" not in (*day_of_month, *day_of_week)
    first = date(year, 1, 1)
    length = (date(year + 1, 1, 1) - first).days
    mask = 0
    if plain:
        # Plain numbers: cheaper to test every day here than to step croniter through them.
        for index in range(length):
            day = first + timedelta(days=index)
            if (
                (months == ["*"] or day.month in months)
                and (day_of_month == ["*"] or day.day in day_of_month)
                and (day_of_week == ["*"] or (day.weekday() + 1) % 7 in day_of_week)
            ):
                mask |= 1 << index
        return mask
    walk = croniter(f"0 0 {half}", datetime(year - 1, 12, 31, 12))
    try:
        while (found := walk.get_next(datetime)).year == year:
            mask |= 1 << (found.date() - first).days
    except CroniterBadDateError:
        pass  # no further day within croniter's 50 years
    return mask


def _resolve(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant of a wall time: its first pass if repeated, right after the gap if none."""
    offset, later_offset = _offsets(wall.replace(tzinfo=zone))
    if offset < later_offset:
        return _gap_end(wall - later_offset, wall - offset, zone)
    return (wall - offset).replace(tzinfo=UTC)


def _offsets(aware: datetime) -> tuple[timedelta, timedelta]:
    """The UTC offsets of a wall time read at its first and at its second pass (fold 0, 1):
    equal for an ordinary time, first > second in a repeat, first < second in a gap."""
    return aware.utcoffset() or timedelta(0), aware.replace(fold=1).utcoffset() or timedelta(0)


def _gap_end(low: datetime, high: datetime, zone: ZoneInfo) -> datetime:
    """The first whole second at or after which the zone uses its post-gap offset (both naive
    UTC readings of a wall time in the gap: `low` with the later offset, `high` the earlier)."""
    low, high = low.replace(tzinfo=UTC), high.replace(tzinfo=UTC)
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
    return _resolve(schedule.at.replace(microsecond=0), zone)


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
