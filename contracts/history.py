"""Run history queries: the history service's request/reply API.

Published by: the ingress (`GET /v1/runs`, `GET /v1/runs/stats`) and anyone else who lists
runs. Consumed by: any history replica, in the `history` queue group (every replica holds its
own full projection of the `runs` bucket, so any one may answer). Requests are NATS
request/reply on `history.v1.*`; every reply is a `contracts.registry.Reply` holding the result
or a `Problem`. Delivery: at most once (a caller that gets no answer asks again).

The projection follows the `runs` bucket, so an answer may lag the bucket: every answer says
by how much (`history_lag_seconds`); a single run read by id from the bucket never lags.
"""

from datetime import datetime
from typing import Annotated

from msgspec import Meta, Struct

from contracts.runs import Run, RunStatus, StartSource

MAX_RUNS_LIMIT = 500
RunsLimit = Annotated[int, Meta(ge=1, le=MAX_RUNS_LIMIT)]
RUNS_CURSOR_PATTERN = r"^[0-9]{1,18}\.[a-z]{2,4}_[0-9a-z]{21}$"
"""A run cursor: `<queued_at in microseconds>.<run id>`, the position of the page's last run."""
DEFAULT_STATS_WINDOW_SECONDS = 24 * 3600.0
MAX_QUERY_LENGTH = 200


class ListRuns(Struct, frozen=True, kw_only=True):
    """The runs of a workspace matching every filter given, newest first (by `queued_at`, then
    id). Subject `history.v1.runs.list`; reply `Reply[RunPage]`."""

    workspace_id: str
    flow_id: str | None = None
    trigger_id: str | None = None
    statuses: list[RunStatus] = []
    """Any of these statuses (none: every status)."""
    source: StartSource | None = None
    since: datetime | None = None
    """Queued at or after this time."""
    until: datetime | None = None
    """Queued before this time."""
    q: Annotated[str, Meta(max_length=MAX_QUERY_LENGTH)] | None = None
    """Matches a run id (or its beginning) or text in the run's error."""
    q_run_id: str | None = None
    """One more run id `q` names: the run an Idempotency-Key equal to `q` started (the
    ingress resolves the key, which the run record does not hold)."""
    limit: RunsLimit = 50
    cursor: Annotated[str, Meta(pattern=RUNS_CURSOR_PATTERN)] | None = None
    """The `next_cursor` of the page before: the page starts after that position."""


class RunPage(Struct, frozen=True, kw_only=True):
    """`GET /v1/runs`: runs newest first; pass `next_cursor` as `cursor` for the next page
    (a position: page 1,000 costs what page 1 costs, and runs recorded meanwhile never shift
    a page)."""

    items: list[Run]
    next_cursor: str | None = None
    history_lag_seconds: float = 0.0
    """How far the run history behind this list is behind the run records (0: caught up). A
    run recorded less than this long ago may be missing or show an older status; read it by
    id (`GET /v1/runs/{id}`) for its latest record."""


class RunStatsQuery(Struct, frozen=True, kw_only=True):
    """Figures of the runs of one flow, one trigger or (neither given) a whole workspace,
    queued in a window. Subject `history.v1.runs.stats`; reply `Reply[RunStats]`."""

    workspace_id: str
    flow_id: str | None = None
    trigger_id: str | None = None
    since: datetime | None = None
    """Default: 24 hours before `until`."""
    until: datetime | None = None
    """Default: now."""


class MinuteCount(Struct, frozen=True, kw_only=True):
    minute: datetime
    """The minute's start (UTC)."""
    runs: int


class RunStats(Struct, frozen=True, kw_only=True):
    """`GET /v1/runs/stats`: what a dashboard draws for a window."""

    flow_id: str | None = None
    trigger_id: str | None = None
    since: datetime
    until: datetime
    total: int
    counts: dict[str, int]
    """Runs by status (statuses without runs are left out)."""
    success_rate: float | None = None
    """Succeeded among the runs that ended (skipped runs left out); None when none ended."""
    duration_p50: float | None = None
    """Seconds, over the runs that ended with a duration; None when there are none."""
    duration_p95: float | None = None
    duration_p99: float | None = None
    per_minute: list[MinuteCount] = []
    """Runs queued in each minute of the window, oldest first (minutes without runs are left
    out)."""
    history_lag_seconds: float = 0.0
    """As in `RunPage`."""
