"""Cron time math: validate a `CronSchedule` and compute its next fire time (no I/O, no NATS).

Semantics are wall-clock cron in the schedule's IANA time zone, computed by croniter from a
zone-aware start. Five fields (`minute hour day-of-month month day-of-week`), or six with a
leading seconds field; croniter's own six-field form puts seconds last, so we ask it to read
them first (`second_at_beginning=True`).

Daylight-saving transitions follow croniter and are pinned by the unit tests:

- **Gap** (spring forward, e.g. Europe/Berlin 02:00 -> 03:00): a wall time that does not exist
  fires once, at the first existing time after the gap (`30 2 * * *` fires at 03:00 CEST that
  day). Times before and after the gap are unaffected.
- **Overlap** (fall back, e.g. Europe/Berlin 03:00 -> 02:00): a wall time that happens twice
  fires twice, once per occurrence (`30 2 * * *` fires at 02:30 CEST and again at 02:30 CET).

A later version adds per-schedule DST policies on top of this; this module stays the one place
that knows the calendar.
"""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from contracts.registry import CronSchedule

_FIVE_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_SIX_FIELDS = ("second", *_FIVE_FIELDS)
_ALLOWED = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT",
}
# Any fixed start works for "does this expression ever fire": croniter looks 50 years ahead.
_PROBE_START = datetime(2001, 1, 1, tzinfo=UTC)
_MAX_DST_RETRIES = 4
# Names the system time zone database resolves differently on every machine.
_MACHINE_DEPENDENT_ZONES = frozenset({"localtime", "posixrules"})


class InvalidSchedule(ValueError):
    """A schedule that `validate` would reject was given to `next_fire`."""


def validate(schedule: CronSchedule) -> str | None:
    """A precise, human-readable reason why `schedule` cannot be used, or None if it can."""
    fields = schedule.cron.split()
    if len(fields) not in (5, 6):
        found = f"{len(fields)} field" + ("" if len(fields) == 1 else "s")
        return (
            f"cron {schedule.cron!r} has {found}; expected 5 "
            "(minute hour day-of-month month day-of-week) or 6 (a leading second field, then "
            "those 5)"
        )
    try:
        _zone(schedule.timezone)
    except InvalidSchedule as error:
        return str(error)
    try:
        croniter(" ".join(fields), _PROBE_START, second_at_beginning=len(fields) == 6).get_next(
            datetime
        )
    except CroniterBadDateError:
        return f"cron {schedule.cron!r} never fires (no date matches it)"
    except (CroniterError, ValueError, TypeError) as error:
        return _explain(schedule.cron, fields, error)
    return None


def next_fire(schedule: CronSchedule, after: datetime) -> datetime:
    """The first fire time strictly after `after`, as an aware UTC datetime (whole seconds).

    `after` must be aware. The match is computed on the wall clock of `schedule.timezone`; see
    the module docstring for what happens at DST gaps and overlaps.
    """
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("next_fire needs an aware datetime")
    fields = schedule.cron.split()
    if len(fields) not in (5, 6):
        raise InvalidSchedule(validate(schedule))
    zone = _zone(schedule.timezone)
    try:
        iterator = croniter(
            " ".join(fields), after.astimezone(zone), second_at_beginning=len(fields) == 6
        )
        fire: datetime = iterator.get_next(datetime)
        # croniter steps on the local wall clock; around a DST overlap make sure the instant
        # really is later than `after` before trusting it.
        for _ in range(_MAX_DST_RETRIES):
            if fire > after:
                break
            fire = iterator.get_next(datetime)
    except (CroniterError, ValueError, TypeError) as error:
        raise InvalidSchedule(validate(schedule) or str(error)) from error
    if fire <= after or fire.tzinfo is None:
        raise InvalidSchedule(f"cron {schedule.cron!r} gave no fire time after {after}")
    fire = fire.astimezone(UTC)
    if fire.microsecond:
        fire = fire.replace(microsecond=0) + timedelta(seconds=1)
    return fire


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
        except (CroniterError, ValueError, TypeError) as field_error:
            if "hash_id" in str(field_error):
                return f"cron {cron!r}: the {name} field {value!r} uses H, which is not supported"
            return (
                f"cron {cron!r}: the {name} field {value!r} is not valid "
                f"(allowed: {_ALLOWED[name]}, with *, lists, ranges and /steps)"
            )
    return f"cron {cron!r} is not valid: {error}"
