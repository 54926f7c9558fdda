"""The history's decisions, pure: which change of a run record the projection takes, what a
position in a list is, what retention keeps, how far behind a replica is, and the figures of
a window of runs. No SQLite, no NATS here."""

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from contracts.history import DEFAULT_STATS_WINDOW_SECONDS, MinuteCount, RunStats
from contracts.runs import TERMINAL_STATUSES

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
MINUTE_US = 60_000_000


def microseconds(moment: datetime) -> int:
    """`moment` as whole microseconds since the epoch (a naive time is UTC); exact, no float."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // MICROSECOND


def moment(us: int) -> datetime:
    return EPOCH + us * MICROSECOND


class Change(NamedTuple):
    """One change of the `runs` bucket: a run's new record, or its removal (`record` None).

    A tuple, not a dataclass: a rebuild makes a million of them."""

    run_id: str
    revision: int
    """The KV revision, which is the stream sequence: later changes have higher ones."""
    record: bytes | None
    """The record as stored in the bucket (kept as is, answered as is); None: removed."""


def is_newer(incoming: int, stored: int | None) -> bool:
    """A change applies only over an older one: a redelivered or out-of-order change never
    moves a run backwards."""
    return stored is None or incoming > stored


def newest_per_run(changes: Iterable[Change]) -> list[Change]:
    """The newest change of each run in a batch (what the batch leaves behind)."""
    newest: dict[str, Change] = {}
    for change in changes:
        found = newest.get(change.run_id)
        if found is None or is_newer(change.revision, found.revision):
            newest[change.run_id] = change
    return list(newest.values())


def retention_cutoff(now: datetime, retention_days: float) -> datetime:
    """Runs queued before this leave the projection (the bucket drops them too)."""
    return now - timedelta(days=retention_days)


def kept(queued_at_us: int, cutoff_us: int) -> bool:
    """Whether a put is worth storing: one already past retention would only be forgotten."""
    return queued_at_us >= cutoff_us


def must_rebuild(applied_sequence: int, stream_last_sequence: int) -> bool:
    """A stream that ends before what was applied was recreated (its sequences started over):
    the projection of the old one says nothing of it, so it is built again from scratch."""
    return applied_sequence > stream_last_sequence


# --- positions --------------------------------------------------------------------------------


def cursor_of(queued_at_us: int, run_id: str) -> str:
    """The position of a run in a list (newest first, by queued time then id)."""
    return f"{queued_at_us}.{run_id}"


def position_of(cursor: str) -> tuple[int, str]:
    """A cursor's (queued time in microseconds, run id); the contract checks its shape."""
    at, _, run_id = cursor.partition(".")
    return int(at), run_id


# --- lag --------------------------------------------------------------------------------------


def lag_seconds(now: datetime, behind_since: datetime | None) -> float:
    """How far behind the bucket the projection is: 0 when caught up, else the age of the
    oldest change it may not have yet (never negative: clocks differ between machines)."""
    if behind_since is None:
        return 0.0
    return max(0.0, (now - behind_since).total_seconds())


# --- stats ------------------------------------------------------------------------------------


def stats_window(
    since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """The window asked for: until now and 24 hours back unless given."""
    end = until or now
    if since is not None:
        return since, end
    try:
        return end - timedelta(seconds=DEFAULT_STATS_WINDOW_SECONDS), end
    except OverflowError:  # an `until` in year 1: the window starts at the beginning of time
        return datetime.min.replace(tzinfo=UTC), end


def percentile(ordered: Sequence[float], percent: float) -> float | None:
    """Nearest-rank percentile of ascending values; None for no values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(
    rows: Iterable[tuple[str, int, float | None]],
    since: datetime,
    until: datetime,
    *,
    flow_id: str | None = None,
    trigger_id: str | None = None,
    lag: float = 0.0,
) -> RunStats:
    """The figures of a window from its runs' `(status, queued_at_us, duration)`."""
    counts: dict[str, int] = {}
    minutes: dict[int, int] = {}
    durations: list[float] = []
    for status, queued_at_us, duration in rows:
        counts[status] = counts.get(status, 0) + 1
        minute = queued_at_us // MINUTE_US
        minutes[minute] = minutes.get(minute, 0) + 1
        if duration is not None and status in TERMINAL_STATUSES:
            durations.append(duration)
    ended = sum(n for status, n in counts.items() if status in TERMINAL_STATUSES - {"skipped"})
    durations.sort()
    return RunStats(
        flow_id=flow_id,
        trigger_id=trigger_id,
        since=since,
        until=until,
        total=sum(counts.values()),
        counts=counts,
        success_rate=counts.get("succeeded", 0) / ended if ended else None,
        duration_p50=percentile(durations, 50),
        duration_p95=percentile(durations, 95),
        duration_p99=percentile(durations, 99),
        per_minute=[
            MinuteCount(minute=moment(minute * MINUTE_US), runs=n)
            for minute, n in sorted(minutes.items())
        ],
        history_lag_seconds=lag,
    )
