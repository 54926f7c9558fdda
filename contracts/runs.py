"""Flow starts, run records, run events and dead letters."""

from datetime import datetime
from typing import Any, Literal

from msgspec import Struct

from contracts.registry import OverlapPolicy

StartSource = Literal["api", "schedule", "manual", "webhook", "external"]
RunStatus = Literal["queued", "running", "succeeded", "failed", "timed_out", "cancelled", "skipped"]
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "failed", "timed_out", "cancelled", "skipped"}
)


class FlowStart(Struct, frozen=True, kw_only=True):
    """A request to run a flow once: the public way to start a flow.

    Subject: `flow.v1.start.<workspace_id>` (`subjects.flow_start`; JetStream stream
    `FLOW_STARTS`, work-queue retention). The subject's workspace must be `workspace_id`: it
    is what a NATS permission scopes an outside publisher to. The unversioned `flow.start` is
    deprecated: still stored and run as before for one more version.
    Published by: the ingress (API triggers, Run now), the scheduler (schedule ticks) and any
    other service that wants a flow run (`source="external"`). Publish it with JetStream and
    the header `Nats-Msg-Id: <run_id>` so a retried publish is stored once.
    Consumed by: the runner, through the durable consumer `runner` shared by all replicas.
    Delivery: at least once; the runner keeps exactly one run record per `run_id`. A message
    that does not decode, names a flow that does not exist in `workspace_id`, or came on
    another workspace's subject is terminated and recorded with its reason under
    `deadletter.<its subject>`.
    """

    run_id: str
    workspace_id: str
    flow_id: str
    input: Any = None
    """The flow's input: any JSON value."""
    source: StartSource = "external"
    trigger_id: str | None = None
    scheduled_at: datetime | None = None
    """For schedule ticks: the fire time this start belongs to."""
    requested_at: datetime | None = None
    overlap: OverlapPolicy = "allow"
    """How this start treats a still-running run of the same trigger (see `OverlapPolicy`);
    the publisher copies it from the trigger unless the caller overrides it."""


AttemptOutcome = Literal[
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "lost",
    "interrupted",
    "superseded",
]
"""How an attempt ended, as far as the record knows.

`superseded`: its runner went silent for the ack wait (died, paused, or cut off from NATS), so
the start went to another runner, which began the attempt named in `superseded_by`; whether
this one ever finished is unknown. A runner that comes back and finishes an attempt that was
taken over writes its real outcome here (`superseded_by` stays) while the run is not final yet,
and otherwise drops its result with a log line. `interrupted`: its runner shut down gracefully
and handed the run back before it finished. `lost`: written by earlier versions for what is now
`superseded`.
"""


class Attempt(Struct, frozen=True, kw_only=True):
    """One execution of a run on one runner."""

    number: int
    runner_id: str = ""
    """The runner that made this attempt."""
    started_at: datetime
    finished_at: datetime | None = None
    outcome: AttemptOutcome = "running"
    error: str | None = None
    superseded_by: int | None = None
    """The number of the attempt that took this one over (see `AttemptOutcome`)."""


class Run(Struct, frozen=True, kw_only=True):
    """One run of a flow as the runner records it (KV bucket `runs`, key `<workspace>.<run>`).

    Exactly one record per run id: created with a KV `create` when a runner first sees the
    start, changed only with compare-and-swap, and final once its status is terminal
    (`TERMINAL_STATUSES`).
    """

    id: str
    workspace_id: str
    flow_id: str
    status: RunStatus
    source: StartSource
    trigger_id: str | None = None
    input: Any = None
    result: Any = None
    error: str | None = None
    attempt: int = 1
    """How many times a runner has started this run (more than 1 after a redelivery)."""
    scheduled_at: datetime | None = None
    requested_at: datetime | None = None
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    """From the first start to the end (terminal runs only; retries' waits included)."""
    attempts: list[Attempt] = []
    """Every attempt, oldest first."""
    retry_at: datetime | None = None
    """When a run waiting to be tried again (status `queued`, an `error` set) will be."""
    overlap: OverlapPolicy = "allow"
    start_sequence: int | None = None
    """Stream sequence of the `FlowStart` message that owns the run: another message with the
    same run id is a duplicate, not a redelivery."""


class RunSlots(Struct, frozen=True, kw_only=True):
    """Admission state (KV bucket `run_slots`; the runner alone writes it, with CAS).

    Key `flow.<workspace>.<flow>`: the runs holding one of the flow's `concurrency` slots.
    Key `trigger.<workspace>.<trigger>`: the runs of the trigger that are going (`active`) and
    the one start waiting for them (`buffered`, overlap policy `buffer_one`).
    """

    active: list[str] = []
    buffered: str | None = None


class CancelRun(Struct, frozen=True, kw_only=True):
    """Cancel a queued or running run. Reply: `Reply[Run]` with the cancelled run.

    Subject: `runner.v1.run.cancel` (request/reply, queue group `runner`). Published by: the
    ingress (`POST /v1/runs/{id}/cancel`). Consumed by: any runner replica, which records the
    run as cancelled and tells the replica running it to stop (`AbortRun`).
    """

    workspace_id: str
    run_id: str
    reason: str = "cancelled on request"


class AbortRun(Struct, frozen=True, kw_only=True):
    """Stop working on a run whose record is already final (cancelled).

    Subject: `runner.v1.run.abort` (core NATS, every runner replica). Published by: the runner
    that recorded a cancellation. Delivery: at most once; a runner that misses it finds the
    final record when it tries to commit, and drops its result.
    """

    workspace_id: str
    run_id: str


class IdempotentStart(Struct, frozen=True, kw_only=True):
    """What an `Idempotency-Key` started (KV bucket `idempotency_keys`, kept 25 hours; the
    ingress alone writes it, with KV `create`). Key: `<workspace>.<sha256 of the key>`."""

    run_id: str
    flow_id: str
    body_digest: str
    created_at: datetime


class RunEvent(Struct, frozen=True, kw_only=True):
    """A run changed status.

    Subject: `run.v1.event.<workspace_id>.<run_id>.<status>` (`subjects.run_event`; stream
    `RUN_EVENTS`, kept one day), `run.status` being the status the run reached: one wildcard
    follows a run (`subjects.run_events`), and a consumer can filter a status on the server.
    Published by: the runner, after the run record is committed and before the start is
    acknowledged, without waiting for JetStream's answer. Consumed by: anyone following runs:
    the ingress for synchronous answers (a core subscription to one run), the scheduler's
    durable consumer `scheduler_ledger` (only `run.v1.event.*.*.skipped`, for its fire
    ledger), dashboards. Delivery: best effort, at most once
    per status change (an event lost to a runner crash or a disconnection is not sent again),
    except that a duplicate start of a finished run publishes its final event again. The run
    record (KV bucket `runs`) is the truth: a reader that misses an event reads the record.
    """

    run: Run


class DeadLetter(Struct, frozen=True, kw_only=True):
    """A message a service refused, kept with the reason so nothing disappears silently.

    Subject: `deadletter.<original subject>` (stream `DEAD_LETTERS`, kept 30 days).
    Published by: whichever service rejected the message. Consumed by: operators.
    """

    subject: str
    reason: str
    payload: str
    """The original body, decoded as UTF-8 with replacement characters where it was not, and
    cut to its first 16,384 characters (`truncated`)."""
    headers: dict[str, str] = {}
    service: str
    rejected_at: datetime
    payload_bytes: int = 0
    """The size of the original body, in bytes."""
    truncated: bool = False
    """Whether `payload` is only the beginning of the body."""
