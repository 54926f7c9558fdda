"""The runner's decisions: what a start, a redelivery or a cancellation does to a run record.

No NATS here: the run store, admission, events and the message being handled are small
Protocols (their NATS and KV implementations are in `adapters.py`), time comes from an
injected clock, and the record's life itself is in `executor.py`.

Exactly one final record per run id, however messages are redelivered or duplicated:
- the record is created with a `create` (the first message to get there owns the run: its
  stream sequence is written into the record); every later change is a compare-and-swap;
- a fresh start that needs no admission runs at once, before any record: its first record is
  `running` once it has run `record_running_after` seconds, or its final record if it ends
  sooner, both written with a `create`, so a duplicate that got there first wins and this
  start's work is dropped (see `runs_unrecorded`);
- a message is acknowledged only once the run's final record is committed; a runner that goes
  silent (dies, is paused, loses NATS) leaves the message unacknowledged, and JetStream hands it
  to another replica after the ack wait, which records the silent attempt `superseded` and
  starts a new one;
- every execution is an attempt of its runner, told truthfully: a runner whose attempt was taken
  over writes how it really ended into its own attempt while the run is not final, never over
  the newer attempt, and otherwise drops its result with a log line; either way it leaves the
  message to the runner that took it over, and starts nothing more for that run (`settle`);
- a write of what an attempt made of the run that fails (NATS down, a leader election) is
  retried with the same compare-and-swap while the message is kept in progress, rather than
  handed back to run again;
- another message for the same run id (a retried publish outside the dedup window) is a
  duplicate: it is acknowledged without doing anything;
- a long run keeps its message alive with in-progress acks, so it is never redelivered while
  its runner lives.
"""

import asyncio
import contextlib
import logging
import random
import re
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import msgspec

from contracts import subjects
from contracts.registry import Flow, OverlapPolicy, Problem
from contracts.runs import TERMINAL_STATUSES, Attempt, FlowStart, Run, RunSlots
from services.runner.executor import (
    Clock,
    HttpCaller,
    begin,
    conclude,
    execute,
    execute_within,
    finish,
    interrupted,
    queued,
    timed_out,
)
from services.runner.flows import FlowRegistry
from shared.broker import START_DUPLICATE_WINDOW
from shared.codec import encode
from shared.ids import is_valid_id, minted_at_ms
from shared.pull import Delivery

log = logging.getLogger(__name__)

ADMISSION_RETRY = 0.3
"""About how many seconds a run waiting for a slot waits before it asks again."""
MAX_WRITE_CONFLICTS = 10
RECORD_RUNNING_AFTER = 0.1
"""Seconds a fresh start runs before its `running` record is written (`runs_unrecorded`)."""
WRITE_RETRY_FOR = 300.0
"""Seconds a runner retries writing what an attempt made of its run while the write fails."""
WRITE_RETRY_FIRST = 0.05
WRITE_RETRY_MAX = 1.0
"""First and longest pause between two tries of such a write, in seconds."""
MAX_RECORD_BYTES = 1024 * 1024 - 4096
"""Bytes of a run record the `runs` bucket takes: NATS's default max payload (1 MiB) less
room for the write's headers. The runner sets it from the server it is connected to."""
RECORD_OVERHEAD = 16 * 1024
"""Bytes a run record adds to its start's input (ids, times, attempts and their errors): a
start whose body leaves less room than this is failed before it runs (see the README's
"Sizes")."""
SWEEP_SLACK = 0.01
"""Seconds a due `running` record may wait for others due soon after it (one timer for all)."""
ARM_TIMEOUT_LATE_MARGIN = 1.0
"""A flow whose timeout is at least this much longer than `record_running_after` has it armed
only when its `running` record is written (a timer of the loop's, `StartRuns._time_out`):
earlier, its time cannot be up. The others are armed as they start (`execute_within`)."""
FRESH_FOR = START_DUPLICATE_WINDOW.total_seconds() / 2
"""A start stored within this many seconds of its run id's making cannot have a stored twin
with the same `Nats-Msg-Id`: JetStream would have dropped it (half the window: clock skew)."""

# Ids become KV keys and subject tokens: no dots, spaces or wildcards.
_ID = re.compile(r"[A-Za-z0-9_-]+")


# --- What the core needs from the outside world -------------------------------------------


class StartMessage(Protocol):
    """The JetStream message of a start, as far as the core acts on it."""

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None:
        """Hand the message back, to be delivered again after `delay` seconds."""

    async def in_progress(self) -> None:
        """Tell JetStream the message is still being worked on (see `KeepAlive`)."""


class KeepAlive(Protocol):
    """Keeps a message from being redelivered while its run goes on (in-progress acks)."""

    def keep(self, msg: StartMessage) -> None: ...

    def release(self, msg: StartMessage) -> None: ...


class RunStore(Protocol):
    """Run records by key, changed only with create and compare-and-swap (bucket `runs`)."""

    async def read(self, key: str) -> tuple[Run, int] | None:
        """The record and its revision; None when there is none."""

    async def create(self, key: str, run: Run, value: bytes | None = None) -> int | None:
        """Create the record (`value`: `run` encoded already); None when it exists already."""

    async def swap(
        self, key: str, run: Run, revision: int, value: bytes | None = None
    ) -> tuple[int | None, Run | None]:
        """Write `run` over `revision`: `(new revision, None)`, or `(None, current record)`
        when someone else changed the record first."""


class RunEvents(Protocol):
    def publish(self, run: Run, value: bytes | None = None) -> None:
        """Publish the event of `run`'s committed record (`value`: the record as written),
        without waiting: the record is the truth, and its event only informs."""


class Admission(Protocol):
    """Slots shared by every replica: per-flow concurrency and per-trigger overlap."""

    async def admit(
        self,
        workspace_id: str,
        run_id: str,
        flow: Flow,
        trigger_id: str | None,
        policy: OverlapPolicy,
    ) -> "Decision": ...

    async def release(
        self, workspace_id: str, run_id: str, flow_id: str, trigger_id: str | None
    ) -> None:
        """Give back every slot `run_id` holds (harmless when it holds none)."""


class Aborts(Protocol):
    async def abort(self, workspace_id: str, run_id: str) -> None:
        """Tell every replica to stop working on a run that was cancelled."""


# --- Pure decisions -----------------------------------------------------------------------


def too_large(record: Run, size: int, limit: int) -> Run:
    """The final record of a run whose record (`size` bytes, its result included) is larger
    than the `limit` the `runs` bucket stores: `failed`, its result dropped, with the reason."""
    reason = (
        f"the result is too large to record: the run's record would be {size} bytes and "
        f"the limit is {limit}"
    )
    attempts = list(record.attempts)
    if attempts:
        attempts[-1] = msgspec.structs.replace(attempts[-1], outcome="failed", error=reason)
    failed = msgspec.structs.replace(
        record, status="failed", result=None, error=reason, attempts=attempts
    )
    if len(encode(failed)) > limit:  # the input is what is too large (a start sent directly)
        failed = msgspec.structs.replace(failed, input=None)
    return failed


def refusal(subject: str, start: FlowStart) -> str:
    """Why a start on `subject` can never be run (empty: it may be)."""
    valid = _ID.fullmatch
    if (
        valid(start.run_id)
        and valid(start.workspace_id)
        and valid(start.flow_id)
        and (start.trigger_id is None or valid(start.trigger_id))
    ):  # the usual case, without building the list below
        return misfiled_start(subject, start)
    invalid = [
        name
        for name in ("run_id", "workspace_id", "flow_id")
        if not _ID.fullmatch(getattr(start, name))
    ]
    if start.trigger_id is not None and not _ID.fullmatch(start.trigger_id):
        invalid.append("trigger_id")
    if invalid:
        return f"{', '.join(invalid)} may only hold letters, digits, '_' and '-'"
    return misfiled_start(subject, start)


def misfiled_start(subject: str, start: FlowStart) -> str:
    """Why a start may not be run from `subject` (empty: it may): a `flow.v1.start.<ws>`
    subject must name the start's own workspace, since a NATS permission on that subject is
    what scopes an outside publisher to its workspace. The deprecated `flow.start` names none."""
    if subject == subjects.FLOW_START_UNVERSIONED:
        return ""
    workspace_id = subjects.flow_start_workspace(subject)
    if workspace_id == start.workspace_id:
        return ""
    return (
        f"the start is for workspace {start.workspace_id!r} but was published to {subject!r}; "
        f"publish it to {subjects.flow_start(start.workspace_id)!r}"
    )


def runs_unrecorded(
    start: FlowStart, seen: Delivery, msg_id: str | None, fresh_for: float = FRESH_FOR
) -> bool:
    """Whether this start (of a run that needs no admission) runs before its record exists.

    Only a first delivery published with `Nats-Msg-Id` (`msg_id`) = its run id (as the
    `FlowStart` contract asks) within `fresh_for` seconds of the run id's making. No earlier
    start of the run carrying the same `Nats-Msg-Id` can be stored (JetStream dropped it, or
    this one), so reading the record first would be a round trip for nothing; a later one
    comes after the duplicate window, is not fresh and reads the record. It finds none only
    while this start is in its first `record_running_after` seconds: then both run the flow,
    and the `create` of the first record keeps exactly one of them. A start of the run
    published with another `Nats-Msg-Id` (against the contract) may run the flow again; it
    still leaves one record. Everything that is not fresh, redeliveries included, reads the
    record first.
    """
    if seen.delivered != 1 or msg_id != start.run_id:
        return False
    minted = minted_at_ms(start.run_id)
    if minted is None:
        return False
    return seen.stored_at - minted / 1000 < fresh_for


def is_duplicate(record: Run, seen: Delivery) -> bool:
    """Whether the message `seen` is another message than the one that owns `record`."""
    if record.start_sequence is not None:
        return record.start_sequence != seen.stream_sequence
    # A record from before start sequences were kept: only a first delivery can be a copy.
    return seen.delivered == 1


Verdict = Literal["admitted", "wait", "skip"]


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    slots: RunSlots
    """The slots to write (unchanged when nothing changes)."""
    reason: str = ""
    cancel: list[str] = field(default_factory=list)
    """Runs to cancel before this one starts (overlap policy `cancel_previous`)."""


def decide_overlap(
    slots: RunSlots, run_id: str, policy: OverlapPolicy, trigger_id: str
) -> Decision:
    """Whether run `run_id` of a trigger may go, given the trigger's runs still going."""
    if run_id in slots.active:
        return Decision("admitted", slots)
    others = [r for r in slots.active if r != run_id]
    if not others:
        if slots.buffered not in (None, run_id):
            # The buffered start goes first; this one came later.
            return _overlap_refusal(slots, run_id, policy, trigger_id, [slots.buffered or ""])
        return Decision("admitted", RunSlots(active=[run_id]))
    return _overlap_refusal(slots, run_id, policy, trigger_id, others)


def _overlap_refusal(
    slots: RunSlots, run_id: str, policy: OverlapPolicy, trigger_id: str, others: list[str]
) -> Decision:
    going = ", ".join(others)
    if policy == "cancel_previous":
        return Decision("admitted", RunSlots(active=[run_id]), cancel=list(slots.active))
    if policy == "buffer_one":
        if slots.buffered in (None, run_id):
            return Decision("wait", RunSlots(active=slots.active, buffered=run_id))
        reason = (
            f"skipped by the overlap policy buffer_one of trigger {trigger_id}: run "
            f"{slots.buffered} is already waiting for run {going} to finish"
        )
        return Decision("skip", slots, reason=reason)
    reason = (
        f"skipped by the overlap policy skip of trigger {trigger_id}: run {going} was still going"
    )
    return Decision("skip", slots, reason=reason)


def decide_concurrency(slots: RunSlots, run_id: str, limit: int) -> Decision:
    """Whether run `run_id` may take one of its flow's `limit` slots."""
    if run_id in slots.active:
        return Decision("admitted", slots)
    if len(slots.active) < limit:
        return Decision("admitted", RunSlots(active=[*slots.active, run_id]))
    return Decision("wait", slots)


def without(slots: RunSlots, run_id: str) -> RunSlots:
    return RunSlots(
        active=[r for r in slots.active if r != run_id],
        buffered=None if slots.buffered == run_id else slots.buffered,
    )


def takes_slots(
    flow: Flow, trigger_id: str | None, policy: OverlapPolicy, workspace_limit: int | None = None
) -> bool:
    """Whether a run of `flow` through `trigger_id` needs admission at all: without a
    concurrency limit (its flow's or its workspace's, `workspace_limit`) and with overlap
    `allow` it holds no slot, so there is nothing to take or give back (and no `run_slots`
    round trip on the hot path)."""
    return (
        flow.concurrency is not None
        or workspace_limit is not None
        or (trigger_id is not None and policy != "allow")
    )


WorkspaceLimit = Callable[[str], int | None]
"""`workspace_id` → the most runs of it that may go at once across replicas (None: any)."""


def no_workspace_limit(workspace_id: str) -> int | None:
    return None


Settled = Literal["committed", "ended", "another_start", "taken_over", "rewrite", "amend"]


def settle(
    mine: Run, ours: Attempt | None, current: Run, sequence: int
) -> tuple[Settled, Run | None]:
    """What the record `current`, found instead of the one this runner expected, means for its
    write `mine` (of its attempt `ours`, None when `mine` ends no attempt of this runner),
    made for the start with stream sequence `sequence`; with the record to write instead, if any.

    - `committed`: `current` is `mine` (written, its answer lost);
    - `ended`: the run is final (cancelled, or ended by the attempt that took ours over): drop;
    - `another_start`: another start of the run owns it (fast path): drop;
    - `rewrite`: `ours` is still the running attempt (our own earlier write, its answer lost,
      or an earlier attempt's runner wrote its outcome): `mine` over `current`'s earlier attempts;
    - `amend`: `ours` was taken over and the run is not final: `current` with the real outcome
      of `ours`, and nothing else changed;
    - `taken_over`: `ours` was taken over and there is nothing (more) to write.
    """
    if current == mine:
        return "committed", None
    if current.start_sequence not in (None, sequence):
        return "another_start", None
    index = _index_of(current.attempts, ours)
    unnamed = index is None and ours is not None
    if unnamed:
        index = _unnamed_attempt(current.attempts, ours)
    mine_index = _index_of(mine.attempts, ours)
    if ours is None or index is None or mine_index is None:
        return ("ended" if current.status in TERMINAL_STATUSES else "taken_over"), None
    recorded, ended = current.attempts[index], mine.attempts[mine_index]
    if current.status in TERMINAL_STATUSES:
        # Final meanwhile (cancelled, or ended by the attempt that took ours over): the run's
        # status and result stay, but its attempts say what ours did (once it is over).
        if ended.outcome == "running" or recorded.outcome not in ("superseded", "lost"):
            return "ended", None
        return "amend", _told(current, index, recorded, ended, unnamed)
    if recorded.outcome == "running" and index == len(current.attempts) - 1:
        attempts = [*current.attempts[:index], *mine.attempts[mine_index:]]
        return "rewrite", msgspec.structs.replace(mine, attempts=attempts)
    if recorded.outcome not in ("superseded", "lost") or ended.outcome == "running":
        return "taken_over", None
    return "amend", _told(current, index, recorded, ended, unnamed)


def _after_write(record: Run, amending: bool) -> Settled:
    """What a stored write means: ours (`committed`), or an amend of another attempt's record,
    which ends this delivery's part if the run is final and leaves the run to it otherwise."""
    if not amending:
        return "committed"
    return "ended" if record.status in TERMINAL_STATUSES else "taken_over"


def _told(current: Run, index: int, recorded: Attempt, ended: Attempt, unnamed: bool) -> Run:
    """`current` with its attempt at `index` saying how this runner's attempt `ended` (and, for
    an attempt the record could not name, which runner made it and when)."""
    told = msgspec.structs.replace(
        recorded,
        outcome=ended.outcome,
        finished_at=ended.finished_at,
        error=ended.error,
        runner_id=ended.runner_id if unnamed else recorded.runner_id,
        started_at=ended.started_at if unnamed else recorded.started_at,
    )
    attempts = list(current.attempts)
    attempts[index] = told
    return msgspec.structs.replace(current, attempts=attempts)


def _unnamed_attempt(attempts: list[Attempt], ours: Attempt | None) -> int | None:
    """Where the record keeps attempt `ours` without knowing who made it: a redelivered start
    found no record, so an earlier delivery's runner may have begun this attempt without
    writing anything (the fast path's first moments); see `unrecorded_attempt`."""
    if ours is None:
        return None
    for index, attempt in enumerate(attempts):
        if attempt.number == ours.number and not attempt.runner_id:
            return index
    return None


def unrecorded_attempt(now: datetime) -> Attempt:
    """What a redelivered start that finds no record knows of the deliveries before it: one of
    them may have begun attempt 1 on its runner's fast path and gone silent before writing a
    record (stopped, paused, cut off from NATS). Attempt 1 names no runner until that runner,
    if it comes back, says what its attempt did; the new attempt is number 2."""
    return Attempt(
        number=1,
        started_at=now,
        finished_at=now,
        outcome="superseded",
        superseded_by=2,
        error=(
            "an earlier delivery of this start left no record: its runner stopped, paused or "
            "lost NATS within its first moments, or handed the start back before running it; "
            "whether it ran is unknown unless its runner comes back and says so here"
        ),
    )


def _index_of(attempts: list[Attempt], ours: Attempt | None) -> int | None:
    """Where attempt `ours` is in `attempts` (its number, runner and start tell it apart)."""
    if ours is None:
        return None
    for index in range(len(attempts) - 1, -1, -1):
        attempt = attempts[index]
        if (attempt.number, attempt.runner_id, attempt.started_at) == (
            ours.number,
            ours.runner_id,
            ours.started_at,
        ):
            return index
    return None


# --- Cancelling ---------------------------------------------------------------------------


class CancelRuns:
    """Cancel queued or running runs: record them cancelled, then stop whoever runs them."""

    def __init__(self, store: RunStore, events: RunEvents, aborts: Aborts, clock: Clock) -> None:
        self._store = store
        self._events = events
        self._aborts = aborts
        self._clock = clock
        self.admission: Admission | None = None
        """Set once admission exists (admission cancels runs too: `cancel_previous`)."""

    async def cancel(self, workspace_id: str, run_id: str, reason: str) -> Run | Problem:
        if not (is_valid_id(workspace_id) and is_valid_id(run_id)):
            # Never a KV key: `*` or `>` would be a wildcard, a dot another key's shape.
            return Problem(
                status=404, code="run_not_found", message=f"no run {run_id!r} in this workspace"
            )
        key = subjects.run_key(workspace_id, run_id)
        for _ in range(MAX_WRITE_CONFLICTS):
            found = await self._store.read(key)
            if found is None:
                return Problem(
                    status=404,
                    code="run_not_found",
                    message=f"no run {run_id!r} in this workspace (yet)",
                )
            record, revision = found
            if record.status in TERMINAL_STATUSES:
                return Problem(
                    status=409,
                    code="run_finished",
                    message=f"run {run_id} is already {record.status}; only a queued or "
                    "running run can be cancelled",
                )
            cancelled = finish(record, "cancelled", self._clock(), error=reason)
            new_revision, _ = await self._store.swap(key, cancelled, revision)
            if new_revision is None:
                continue
            self._events.publish(cancelled)
            await self._aborts.abort(workspace_id, run_id)
            if self.admission is not None:
                await self.admission.release(
                    workspace_id, run_id, record.flow_id, record.trigger_id
                )
            log.info("run %s cancelled: %s", key, reason)
            return cancelled
        raise RuntimeError(f"run {key} keeps changing while it is being cancelled")

    async def cancel_quietly(self, workspace_id: str, run_id: str, reason: str) -> None:
        await self.cancel(workspace_id, run_id, reason)


# --- Starting -----------------------------------------------------------------------------


class Unrecorded:
    """A run started before its record exists (`runs_unrecorded`), and what became of
    the `running` record written once it has run a while."""

    __slots__ = (
        "deadline",
        "executing",
        "key",
        "owner",
        "preempted",
        "revision",
        "running",
        "task",
        "timed_out",
        "timer",
        "writing",
    )

    def __init__(
        self, key: str, running: Run, task: "asyncio.Task[None]", deadline: float | None = None
    ) -> None:
        self.key = key
        self.running = running
        self.executing = True
        """Whether its flow is still being run (its `running` record is then written)."""
        self.deadline = deadline
        """When the flow's time is up (event loop time), if its timeout is armed late (once
        the run has gone on for a while, by `StartRuns._sweep`); None: armed as it started."""
        self.timer: asyncio.TimerHandle | None = None
        """The late timeout's timer, once armed."""
        self.timed_out = False
        """Whether the late timeout stopped the flow."""
        self.task = task
        """The handler's task, which runs the flow."""
        self.writing: asyncio.Task[None] | None = None
        """Writing the `running` record (started once the run has gone on for a while)."""
        self.revision: int | None = None
        """The `running` record's revision, once written."""
        self.preempted = False
        """Whether another start (or delivery) of the run got its record in first."""
        self.owner: Run | None = None
        """The record it wrote (then this one's work is dropped)."""


class StartRuns:
    """What a start does to its run: one final run record per run id."""

    def __init__(
        self,
        *,
        store: RunStore,
        events: RunEvents,
        admission: Admission,
        keep_alive: KeepAlive,
        functions: FlowRegistry,
        clock: Clock,
        runner_id: str = "",
        http: HttpCaller | None = None,
        record_running_after: float = RECORD_RUNNING_AFTER,
        fresh_for: float = FRESH_FOR,
        write_retry_for: float = WRITE_RETRY_FOR,
        rng: Callable[[], float] = random.random,
        reconnected_at: Callable[[], float] = lambda: 0.0,
        max_record_bytes: int = MAX_RECORD_BYTES,
        workspace_limit: WorkspaceLimit = no_workspace_limit,
    ) -> None:
        self._store = store
        self._workspace_limit = workspace_limit
        self._reconnected_at = reconnected_at
        """When this runner last reconnected to NATS (seconds since the epoch; 0: never)."""
        self._events = events
        self._admission = admission
        self._keep_alive = keep_alive
        self._functions = functions
        self._clock = clock
        self._runner_id = runner_id
        self._http = http
        self._record_running_after = record_running_after
        self._fresh_for = fresh_for
        self._write_retry_for = write_retry_for
        self._rng = rng
        self.max_record_bytes = max_record_bytes
        self._working: dict[str, asyncio.Task[None]] = {}
        """The tasks running a flow, by run key."""
        self._aborted: set[str] = set()
        """Run keys whose task `abort` cancelled."""
        self._young: deque[tuple[float, Unrecorded]] = deque()
        """Unrecorded runs by when their `running` record is due (event loop time)."""
        self._sweeping: asyncio.TimerHandle | None = None
        """The timer of the next `_sweep`, while runs are young."""

    def abort(self, workspace_id: str, run_id: str) -> None:
        """Stop working on a run another replica recorded as cancelled (if we run it)."""
        key = subjects.run_key(workspace_id, run_id)
        work = self._working.get(key)
        if work is not None:
            self._aborted.add(key)
            work.cancel()

    async def start(
        self,
        msg: StartMessage,
        start: FlowStart,
        flow: Flow,
        seen: Delivery,
        msg_id: str | None,
    ) -> None:
        """Act on one delivery `seen` of the start `start` of `flow` (a flow of its workspace;
        `msg_id`: its `Nats-Msg-Id`): run it, record it, and ack or hand back `msg`."""
        key = subjects.run_key(start.workspace_id, start.run_id)
        sequence = seen.stream_sequence
        limit = self._workspace_limit(start.workspace_id)
        admitted_at_once = not takes_slots(flow, start.trigger_id, start.overlap, limit)
        # A start stored before this runner's last reconnect may have been delivered before by
        # a server that has since restarted and forgotten it (its delivery count starts over):
        # treat it as a redelivery, never on the fast path.
        uncertain = seen.stored_at < self._reconnected_at()
        fast = admitted_at_once and not uncertain
        if fast and runs_unrecorded(start, seen, msg_id, self._fresh_for):
            await self._run_unrecorded(msg, key, start, sequence, flow)
            return
        record, revision, created = await self._create_or_read(
            key,
            start,
            sequence,
            running=admitted_at_once,
            redelivered=seen.delivered > 1 or uncertain,
        )
        if created and record.status == "running":
            await self._attempt(msg, key, record, revision, flow, sequence)
            return
        if record.status in TERMINAL_STATUSES:
            # A duplicate of a finished run; its final event may have been lost in a crash.
            self._events.publish(record)
            await msg.ack()
            return
        if not created and is_duplicate(record, seen):
            # Another message owns this run: it is unacknowledged (here or at another
            # replica) and comes back if its runner dies.
            log.info("run %s belongs to another message; dropping a duplicate start", key)
            await msg.ack()
            return
        if record.retry_at is not None and record.status == "queued":
            wait = (record.retry_at - self._clock()).total_seconds()
            if wait > 0.05:  # redelivered before its retry is due
                await msg.nak(delay=wait)
                return

        if not admitted_at_once:
            decision = await self._admission.admit(
                record.workspace_id, record.id, flow, record.trigger_id, record.overlap
            )
            if decision.verdict == "wait":
                await msg.nak(delay=ADMISSION_RETRY * (0.5 + self._rng()))
                return
            if decision.verdict == "skip":
                skipped = finish(record, "skipped", self._clock(), error=decision.reason)
                await self._commit(msg, key, skipped, revision, flow, sequence)
                return

        running = begin(record, self._clock(), self._runner_id)
        if running.status in TERMINAL_STATUSES:  # too many lost attempts
            await self._commit(msg, key, running, revision, flow, sequence)
            return
        running_revision, _ = await self._store.swap(key, running, revision)
        if running_revision is None:
            # Nothing ran yet: whatever changed the record (a cancellation, another delivery
            # that began an attempt) decides, and this delivery gives way.
            found = await self._current(key)
            if found is None:
                raise RuntimeError(f"run {key} exists and does not")
            verdict, _ = settle(running, None, found, sequence)
            await self._gave_way(msg, key, verdict, found, None, running)
            return
        self._events.publish(running)
        await self._attempt(msg, key, running, running_revision, flow, sequence)

    async def fail_too_large(
        self, msg: StartMessage, start: FlowStart, seen: Delivery, size: int
    ) -> None:
        """Record the run of a start whose body (`size` bytes) leaves no room in a run record
        as `failed`, without its input and without running it, then acknowledge the start:
        retrying could never store it."""
        key = subjects.run_key(start.workspace_id, start.run_id)
        now = self._clock()
        reason = (
            f"the input is too large to record: the start is {size} bytes and a run record "
            f"holds at most {self.max_record_bytes - RECORD_OVERHEAD} bytes of it"
        )
        small = msgspec.structs.replace(start, input=None)
        record = finish(queued(small, now, seen.stream_sequence), "failed", now, error=reason)
        if await self._store.create(key, record) is not None:
            self._events.publish(record)
            log.warning("run %s failed: %s", key, reason)
        await msg.ack()

    async def fail_dead_lettered(
        self, start: FlowStart, reason: str, *, create: bool, sequence: int | None = None
    ) -> Run | None:
        """End the run of a start dead-lettered at its last delivery `failed` with `reason`,
        publish its event and give back its slots: the start will never be delivered again,
        so a `queued` or `running` record left as it is would never end. A run with no record
        gets a `failed` one only when `create` (its flow is known); a final run is left as it
        is. The record written, or None when there was nothing to end."""
        key = subjects.run_key(start.workspace_id, start.run_id)
        for _ in range(MAX_WRITE_CONFLICTS):
            now = self._clock()
            found = await self._store.read(key)
            if found is None:
                if not create:
                    return None
                record = finish(queued(start, now, sequence), "failed", now, error=reason)
                if len(encode(record)) > self.max_record_bytes:
                    record = msgspec.structs.replace(record, input=None)
                if await self._store.create(key, record) is None:
                    continue
            else:
                current, revision = found
                if current.status in TERMINAL_STATUSES:
                    return None
                record = finish(current, "failed", now, error=reason)
                written, _ = await self._store.swap(key, record, revision)
                if written is None:
                    continue
            self._events.publish(record)
            # Whatever slot it holds or waits in (`buffer_one`) would otherwise stay taken
            # until another run of the flow or trigger notices it is final.
            await self._admission.release(
                record.workspace_id, record.id, record.flow_id, record.trigger_id
            )
            log.warning("run %s failed: %s", key, reason)
            return record
        raise RuntimeError(f"run {key} keeps changing while it is being failed")

    async def _attempt(
        self, msg: StartMessage, key: str, running: Run, revision: int, flow: Flow, sequence: int
    ) -> None:
        """Run the attempt `running` (committed at `revision`), then commit what it made of
        the run: final (and acknowledge the message), or queued for a retry (and hand the
        message back until then)."""
        finished = await self._execute(msg, key, running, revision, flow)
        if finished is None:  # cancelled meanwhile: the record is final already
            await msg.ack()
            return
        await self._conclude(msg, key, finished, revision, flow, sequence)

    def _conclude(
        self,
        msg: StartMessage,
        key: str,
        finished: Run,
        revision: int | None,
        flow: Flow,
        sequence: int,
    ) -> Coroutine[Any, Any, None]:
        """Commit what this runner's attempt `finished` made of the run, over `revision`
        (None: the run has no record yet, so this creates it): await what this returns (the
        commit's coroutine, not one of its own: one coroutine less between a run and the
        answer to its write)."""
        record, delay = conclude(finished, flow, self._rng)
        ours = finished.attempts[-1] if finished.attempts else None
        return self._commit(msg, key, record, revision, flow, sequence, ours, delay)

    async def _commit(
        self,
        msg: StartMessage,
        key: str,
        record: Run,
        revision: int | None,
        flow: Flow,
        sequence: int,
        ours: Attempt | None = None,
        delay: float | None = None,
    ) -> None:
        """Commit `record` over `revision` (None: create it) and publish its event; then
        acknowledge the message if the record is final, or hand it back for `delay` seconds
        (a retry). `ours`: the attempt of this runner that `record` ends, if any."""
        value = encode(record) if delay is None else None  # once, for the record and its event
        if value is not None and len(value) > self.max_record_bytes:
            # A result too large to store fails the run now: the write would fail every time,
            # and a start handed back would run the flow again.
            record = too_large(record, len(value), self.max_record_bytes)
            value = encode(record)
        verdict, written = await self._write(msg, key, record, revision, sequence, ours, value)
        if verdict != "committed":
            await self._gave_way(msg, key, verdict, written, ours, record)
            return
        self._events.publish(written, value if written is record else None)
        if delay is not None:
            log.info(
                "run %s attempt %d %s; retry in %.1fs",
                key,
                written.attempt,
                written.attempts[-1].outcome if written.attempts else written.status,
                delay,
            )
            await msg.nak(delay=delay)
            return
        limit = self._workspace_limit(written.workspace_id)
        if takes_slots(flow, written.trigger_id, written.overlap, limit):
            await self._admission.release(
                written.workspace_id, written.id, written.flow_id, written.trigger_id
            )
        log.info("run %s %s (attempt %d)", key, written.status, written.attempt)
        await msg.ack()

    async def _write(
        self,
        msg: StartMessage,
        key: str,
        mine: Run,
        revision: int | None,
        sequence: int,
        ours: Attempt | None,
        value: bytes | None,
    ) -> tuple[Settled, Run]:
        """Write `mine` over `revision` (None: create it): `committed` and the record written
        (`mine`, or `mine` over earlier attempts' news), or why not and the record found.

        A write that fails (no answer: NATS down, a leader election) is tried again with the
        same compare-and-swap for up to `write_retry_for` seconds, the message kept in
        progress meanwhile: the attempt's work is done, and handing the message back would run
        it again. A write that was stored although its answer was lost is known by the record
        being `mine` (`settle`).
        """
        record, expected, amending = mine, revision, False
        conflicts = 0
        deadline: float | None = None
        pause = WRITE_RETRY_FIRST
        try:
            while True:
                try:
                    if expected is None:
                        written = await self._store.create(
                            key, record, value if record is mine else None
                        )
                    else:
                        written, _ = await self._store.swap(
                            key, record, expected, value if record is mine else None
                        )
                    if written is not None:
                        return _after_write(record, amending), record
                    found = await self._store.read(key)
                except Exception as error:
                    now = asyncio.get_running_loop().time()
                    if deadline is None:
                        deadline = now + self._write_retry_for
                        self._keep_alive.keep(msg)  # released by `_execute`: keep it again
                    if now >= deadline:
                        raise
                    log.warning(
                        "could not write run %s (%s: %s); trying again",
                        key,
                        type(error).__name__,
                        error,
                    )
                    await asyncio.sleep(min(pause, deadline - now))
                    pause = min(pause * 2, WRITE_RETRY_MAX)
                    continue
                if found is None:
                    raise RuntimeError(f"run {key} has no record any more")
                current, current_revision = found
                if current == record:  # stored, its answer lost
                    return _after_write(record, amending), record
                verdict, rewrite = settle(mine, ours, current, sequence)
                if rewrite is None:
                    return verdict, current
                conflicts += 1
                if conflicts > MAX_WRITE_CONFLICTS:
                    raise RuntimeError(f"run {key} keeps changing while this runner writes it")
                record, expected, amending = rewrite, current_revision, verdict == "amend"
        finally:
            if deadline is not None:
                self._keep_alive.release(msg)

    async def _gave_way(
        self,
        msg: StartMessage,
        key: str,
        verdict: Settled,
        current: Run,
        ours: Attempt | None,
        mine: Run,
    ) -> None:
        """Leave the run to whoever changed its record (`settle`'s `verdict`), say so in the
        log, and acknowledge the message unless the run goes on elsewhere."""
        told = ""
        if ours is not None:
            index = _index_of(current.attempts, ours)
            recorded = current.attempts[index] if index is not None else None
            ended = mine.attempts[-1].outcome if mine.attempts else mine.status
            if recorded is not None and recorded.superseded_by is not None:
                told = f"attempt {ours.number} was taken over by attempt {recorded.superseded_by}"
            else:
                told = f"attempt {ours.number} was taken over by another runner's attempt"
            if recorded is not None and recorded.outcome == ended:
                told += f"; its outcome ({ended}) is recorded as this attempt's"
            else:
                told += f"; dropping its result ({ended})"
        if verdict == "ended":
            # Final meanwhile: cancelled, or ended by the attempt that took ours over.
            log.info("run %s was %s meanwhile; %s", key, current.status, told or "dropping")
            await msg.ack()
        elif verdict == "another_start":
            log.info("run %s belongs to another start; dropping this one's result", key)
            await msg.ack()
        else:
            # Another delivery of this message owns the run now (ours outlived its ack wait):
            # its ack is the one that counts, and this runner starts nothing more for it.
            log.warning(
                "run %s: %s; leaving it to attempt %d",
                key,
                told or "another runner's attempt took it over",
                current.attempt,
            )

    async def _run_unrecorded(
        self, msg: StartMessage, key: str, start: FlowStart, sequence: int, flow: Flow
    ) -> None:
        """Run the flow now; write its `running` record only if it is still going after
        `record_running_after` seconds, and its final one with a `create` if it was not."""
        now = self._clock()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        began = loop.time()
        # Most runs end long before their timeout: theirs is armed only if they are still
        # going when their `running` record is written (`_sweep`), not a timer per run.
        late = flow.timeout_seconds >= self._record_running_after + ARM_TIMEOUT_LATE_MARGIN
        run = Unrecorded(
            key,
            begin(queued(start, now, sequence), now, self._runner_id),
            task,
            began + flow.timeout_seconds if late else None,
        )
        due = began + self._record_running_after
        self._young.append((due, run))
        if self._sweeping is None:
            self._sweeping = loop.call_at(due + SWEEP_SLACK, self._sweep)
        try:
            finished = await self._execute(msg, key, run.running, None, flow, run)
        finally:
            run.executing = False
            if run.timer is not None:
                run.timer.cancel()
        if run.writing is not None:
            await run.writing  # the record it writes decides between create and swap
        if run.preempted:
            ours = run.running.attempts[-1]
            if run.owner is None:
                verdict: Settled = "another_start"
                owner = run.running
            else:
                # Stopped (or ended) because the record came from another delivery of this
                # start: the record still names what this attempt did, where it can.
                if finished is not None:  # the flow ended before the record was found
                    ended = conclude(finished, flow, self._rng)[0]
                else:
                    ended = finish(
                        run.running,
                        "cancelled",
                        self._clock(),
                        error="stopped: this start came back to another runner while this "
                        "one was silent, and its attempt runs it",
                    )
                verdict, owner = await self._tell_own_attempt(key, ended, ours, run.owner, sequence)
            await self._gave_way(msg, key, verdict, owner, ours, finished or run.running)
            return
        if finished is None:  # cancelled on request: the record is final already
            await msg.ack()
            return
        await self._conclude(msg, key, finished, run.revision, flow, sequence)

    async def _tell_own_attempt(
        self, key: str, mine: Run, ours: Attempt, current: Run, sequence: int
    ) -> tuple[Settled, Run]:
        """Make the record `current` say what this runner's attempt `ours` did (`mine`), when
        `settle` finds where (an attempt taken over, or one the record could not name): a few
        compare-and-swap tries; the record found last otherwise."""
        for _ in range(MAX_WRITE_CONFLICTS):
            verdict, amended = settle(mine, ours, current, sequence)
            if verdict != "amend" or amended is None:
                return verdict, current
            found = await self._store.read(key)
            if found is None:
                return verdict, current
            if found[0] != current:
                current = found[0]
                continue
            written, _ = await self._store.swap(key, amended, found[1])
            if written is not None:
                return _after_write(amended, True), amended
            found = await self._store.read(key)
            if found is None:
                return verdict, current
            current = found[0]
        return "taken_over", current

    def _sweep(self) -> None:
        """Write the `running` record of every unrecorded run that has gone on for
        `record_running_after` seconds, and arm its flow's timeout (one timer for all of
        them: they are due in the order they started)."""
        self._sweeping = None
        young = self._young
        loop = asyncio.get_running_loop()
        now = loop.time()
        while young and young[0][0] <= now:
            _, run = young.popleft()
            if not run.executing:
                continue
            if run.deadline is not None:
                run.timer = loop.call_at(run.deadline, self._time_out, run)
            self._record_running(run)
        if young:
            self._sweeping = loop.call_at(young[0][0] + SWEEP_SLACK, self._sweep)

    def _time_out(self, run: Unrecorded) -> None:
        """Stop the flow of `run`, its time up (the late timeout `_sweep` armed): `_execute`
        then makes the attempt `timed_out`, as `execute_within`'s timeout would."""
        run.timer = None
        # Not once it is being cancelled already: aborted, or handed back as the runner stops.
        if run.executing and not run.task.cancelling():
            run.timed_out = True
            run.task.cancel()

    def _record_running(self, run: Unrecorded) -> None:
        run.writing = asyncio.create_task(self._write_running(run))

    async def _write_running(self, run: Unrecorded) -> None:
        """Write the `running` record of a run that is taking a while; if another start of
        the run has a record already, that one owns the run: stop this one's flow. A write
        that fails leaves the run unrecorded until its end (its final write settles it)."""
        try:
            revision = await self._store.create(run.key, run.running)
            if revision is not None:
                run.revision = revision
                self._events.publish(run.running)
                return
            run.owner = await self._current(run.key)
        except Exception as error:
            log.warning(
                "could not write the running record of run %s (%s: %s); its final one will be",
                run.key,
                type(error).__name__,
                error,
            )
            return
        run.preempted = True
        log.info("run %s belongs to another start; stopping this one's flow", run.key)
        work = self._working.get(run.key)
        if work is not None and work is run.task:  # still running the flow
            self._aborted.add(run.key)
            work.cancel()

    async def _execute(
        self,
        msg: StartMessage,
        key: str,
        running: Run,
        revision: int | None,
        flow: Flow,
        unrecorded: Unrecorded | None = None,
    ) -> Run | None:
        """The attempt's outcome; None if it was cancelled. Shutting down hands it back.

        The flow runs in the handler's own task (not a task of its own: one task per run is
        measurable): `abort` cancels that task and marks the run, which tells its cancellation
        from a shutdown's.
        """
        task = unrecorded.task if unrecorded is not None else asyncio.current_task()
        assert task is not None
        self._working[key] = task
        self._keep_alive.keep(msg)
        try:
            if unrecorded is not None and unrecorded.deadline is not None:
                # Its timeout is armed late, if the run lasts that long (`_time_out`).
                ended = await execute(running, flow, self._functions, self._clock, http=self._http)
                if unrecorded.timed_out:  # its flow went on anyway: what it returned stands
                    task.uncancel()
                return ended
            return await execute_within(
                running, flow, self._functions, self._clock, http=self._http
            )
        except asyncio.CancelledError:
            self._keep_alive.release(msg)  # the attempt is over: no beats while handing back
            aborted = key in self._aborted
            expired = unrecorded is not None and unrecorded.timed_out
            ours = aborted + expired
            if ours and task.cancelling() == ours:
                # Cancelled as a run (aborted, or its time up), not stopped as a runner.
                for _ in range(ours):
                    task.uncancel()
                return None if aborted else timed_out(running, flow, self._clock())
            if unrecorded is not None:
                revision = unrecorded.revision
                writing = unrecorded.writing
                if writing is not None and not writing.done():
                    writing.cancel()
            if revision is not None:
                with contextlib.suppress(Exception):
                    await self._store.swap(key, interrupted(running, self._clock()), revision)
            raise
        finally:
            self._keep_alive.release(msg)
            if self._working.get(key) is task:
                del self._working[key]
                self._aborted.discard(key)

    async def _current(self, key: str) -> Run | None:
        found = await self._store.read(key)
        return found[0] if found is not None else None

    async def _create_or_read(
        self, key: str, start: FlowStart, sequence: int, *, running: bool, redelivered: bool
    ) -> tuple[Run, int, bool]:
        """The run's record and revision, created unless it exists (then False).

        A run that needs no admission is created `running` (its first attempt starts now):
        one write instead of `queued` then `running`. Otherwise it is created `queued`, and
        starts once admitted.
        """
        now = self._clock()
        record = queued(start, now, sequence)
        if redelivered:
            record = msgspec.structs.replace(record, attempts=[unrecorded_attempt(now)])
        if running:
            record = begin(record, now, self._runner_id)
        revision = await self._store.create(key, record)
        if revision is None:
            found = await self._store.read(key)
            if found is None:
                raise RuntimeError(f"run {key} exists and does not")
            return found[0], found[1], False
        self._events.publish(record)
        return record, revision, True
