"""The scheduler's timer and tick message, its per-trigger ledger of fires, and their HTTP views."""

from datetime import datetime
from typing import Literal

from msgspec import Struct

TickSkip = Literal["dst_gap", "dst_repeat", "after_end"]
"""Why a parked occurrence is not a fire (see `shared.schedules`)."""


class ScheduleTick(Struct, frozen=True, kw_only=True):
    """A schedule trigger's next occurrence, parked as a NATS `@at` message schedule until due.

    Subject: parked on `schedule.timer.<trigger_id>` (stream `SCHEDULES`, one per trigger, a new
    one replaces the old); the server republishes it to `schedule.tick.<trigger_id>` at
    `due_at` (or `scheduled_at`). Published and consumed by: the scheduler only (durable
    consumer `scheduler` shared by its replicas). A tick whose `trigger_version` is not the
    trigger's current version is stale and never fires.
    """

    trigger_id: str
    trigger_version: int
    scheduled_at: datetime
    """The occurrence's identity: its start's `Nats-Msg-Id` is `<trigger_id>:<scheduled_at>`."""
    due_at: datetime | None = None
    """When the timer goes off: `scheduled_at` plus the trigger's fixed jitter."""
    skip: TickSkip | None = None
    """Set when the occurrence is not a fire: it is only recorded in the ledger."""
    note: str = ""


FireStatus = Literal[
    "started",
    "caught_up",
    "missed",
    "paused",
    "dst_gap",
    "dst_repeat",
    "ended",
    "overlap_skipped",
]
"""What became of one occurrence of a schedule:

- `started`: its `flow.start` was stored, on time.
- `caught_up`: missed while every scheduler was down or the trigger paused, and started late by
  the misfire policy (`run_once` or `run_all`).
- `missed`: missed while every scheduler was down, and not started (misfire policy `skip`,
  superseded by a more recent catch-up, or older than the catch-up window).
- `paused`: due while the trigger was paused, and not started.
- `dst_gap`: its wall time did not exist (spring forward) and the DST policy is `skip`.
- `dst_repeat`: the second occurrence of a repeated wall time (fall back), policy `once`.
- `ended`: the first occurrence after the schedule's `end`; nothing fires after it.
- `overlap_skipped`: started, but the runner skipped the run because an earlier run of the
  trigger was still going (overlap policy); `reason` has the runner's words.
"""


class FireRecord(Struct, frozen=True, kw_only=True):
    """One entry of a trigger's ledger: an occurrence, what became of it, and why.

    Subject: `schedule.fire.<workspace_id>.<trigger_id>` (stream `SCHEDULE_FIRES`, the newest
    1,000 per trigger, kept 30 days). Published by: the scheduler only, with `Nats-Msg-Id`
    `<trigger_id>:<scheduled_at>:decided` (`:overlap_skipped` for the runner's overlap skip),
    so an occurrence has one decision however many replicas or retries decide it. Consumed
    by: the ingress (`GET /v1/triggers/{id}/fires`) and anyone following fires. Delivery: at
    least once.
    """

    trigger_id: str
    workspace_id: str
    flow_id: str
    trigger_version: int
    scheduled_at: datetime
    """The occurrence, UTC."""
    local_time: str
    """The occurrence on the wall clock of `timezone`, ISO 8601 with its offset."""
    timezone: str
    status: FireStatus
    reason: str
    """Why, in words (lateness, policy, DST detail, the runner's overlap message)."""
    run_id: str | None = None
    """The run this fire started (or would have started)."""
    recorded_at: datetime


class PreviewFire(Struct, frozen=True, kw_only=True):
    """One upcoming occurrence of a schedule."""

    scheduled_at: datetime
    """UTC."""
    local_time: str
    """On the wall clock of the schedule's zone, ISO 8601 with its offset."""
    fires_at: datetime
    """When the start is published: `scheduled_at` plus the trigger's fixed jitter (UTC)."""
    fires: bool = True
    """False for an occurrence the policies turn into a non-fire (see `skip`)."""
    skip: TickSkip | None = None
    note: str = ""


class SchedulePreview(Struct, frozen=True, kw_only=True):
    """Body of `GET /v1/triggers/{id}/preview?count=N`."""

    trigger_id: str
    timezone: str
    jitter_seconds: int
    """The trigger's fixed delay in 0..`jitter` seconds."""
    enabled: bool
    fires: list[PreviewFire]


class DraftPreview(Struct, frozen=True, kw_only=True):
    """Body of `POST /v1/schedules/preview?count=N`: the next occurrences of a schedule that no
    trigger has yet (the console previews a form with it). No jitter is applied: a trigger's
    fixed jitter offset comes from its id."""

    timezone: str
    fires: list[PreviewFire]


class FirePage(Struct, frozen=True, kw_only=True):
    """Body of `GET /v1/triggers/{id}/fires`: ledger entries, newest occurrence first."""

    items: list[FireRecord]
    next_cursor: str | None = None
    """Pass as `cursor` for the next (older) page; None on the last page."""
