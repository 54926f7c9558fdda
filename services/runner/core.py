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
- a message is acknowledged only once the run's final record is committed; a runner that dies
  leaves the message unacknowledged, and JetStream hands it to another replica after the ack
  wait, which records the lost attempt and starts a new one;
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from contracts import subjects
from contracts.registry import Flow, OverlapPolicy, Problem
from contracts.runs import TERMINAL_STATUSES, FlowStart, Run, RunSlots
from services.runner.executor import (
    Clock,
    HttpCaller,
    begin,
    conclude,
    execute_within,
    finish,
    interrupted,
    queued,
)
from services.runner.flows import FlowRegistry
from shared.broker import START_DUPLICATE_WINDOW
from shared.codec import encode
from shared.ids import minted_at_ms
from shared.pull import Delivery

log = logging.getLogger(__name__)

ADMISSION_RETRY = 0.3
"""About how many seconds a run waiting for a slot waits before it asks again."""
MAX_WRITE_CONFLICTS = 10
RECORD_RUNNING_AFTER = 0.1
"""Seconds a fresh start runs before its `running` record is written (`runs_unrecorded`)."""
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
    async def publish(self, run: Run, value: bytes | None = None) -> None:
        """Publish the event of `run`'s committed record (`value`: the record as written)."""


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


def refusal(subject: str, start: FlowStart) -> str:
    """Why a start on `subject` can never be run (empty: it may be)."""
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


def takes_slots(flow: Flow, trigger_id: str | None, policy: OverlapPolicy) -> bool:
    """Whether a run of `flow` through `trigger_id` needs admission at all: without a
    concurrency limit and with overlap `allow` it holds no slot, so there is nothing to take or
    give back (and no `run_slots` round trip on the hot path)."""
    return flow.concurrency is not None or (trigger_id is not None and policy != "allow")


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
            await self._events.publish(cancelled)
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

    __slots__ = ("key", "owner", "revision", "running", "task", "writing")

    def __init__(self, key: str, running: Run) -> None:
        self.key = key
        self.running = running
        self.task = asyncio.current_task()
        """The handler's task, which runs the flow."""
        self.writing: asyncio.Task[None] | None = None
        """Writing the `running` record (started once the run has gone on for a while)."""
        self.revision: int | None = None
        """The `running` record's revision, once written."""
        self.owner: Run | None = None
        """The record another start of the run wrote first (then this one's work is dropped)."""

    @property
    def preempted(self) -> bool:
        """Whether another start of the run got its record in first."""
        return self.writing is not None and self.writing.done() and self.revision is None


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
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._events = events
        self._admission = admission
        self._keep_alive = keep_alive
        self._functions = functions
        self._clock = clock
        self._runner_id = runner_id
        self._http = http
        self._record_running_after = record_running_after
        self._fresh_for = fresh_for
        self._rng = rng
        self._working: dict[str, asyncio.Task[None]] = {}
        """The tasks running a flow, by run key."""
        self._aborted: set[str] = set()
        """Run keys whose task `abort` cancelled."""

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
        admitted_at_once = not takes_slots(flow, start.trigger_id, start.overlap)
        if admitted_at_once and runs_unrecorded(start, seen, msg_id, self._fresh_for):
            await self._run_unrecorded(msg, key, start, sequence, flow)
            return
        record, revision, created = await self._create_or_read(
            key, start, sequence, running=admitted_at_once
        )
        if created and record.status == "running":
            await self._attempt(msg, key, record, revision, flow, sequence)
            return
        if record.status in TERMINAL_STATUSES:
            # A duplicate of a finished run; its final event may have been lost in a crash.
            await self._events.publish(record)
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
                await self._commit_final(msg, key, skipped, revision, flow, sequence)
                return

        running = begin(record, self._clock(), self._runner_id)
        if running.status in TERMINAL_STATUSES:  # too many lost attempts
            await self._commit_final(msg, key, running, revision, flow, sequence)
            return
        running_revision, current = await self._store.swap(key, running, revision)
        if running_revision is None:
            await self._lost_the_record(msg, key, current)
            return
        await self._events.publish(running)
        await self._attempt(msg, key, running, running_revision, flow, sequence)

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

    async def _conclude(
        self,
        msg: StartMessage,
        key: str,
        finished: Run,
        revision: int | None,
        flow: Flow,
        sequence: int,
    ) -> None:
        """Commit what the attempt `finished` made of the run, over `revision` (None: the run
        has no record yet, so this creates it)."""
        record, delay = conclude(finished, flow, self._rng)
        if delay is None:
            await self._commit_final(msg, key, record, revision, flow, sequence)
            return
        if revision is None:
            if await self._store.create(key, record) is None:
                await self._preempted(msg, key, await self._current(key), sequence)
                return
        else:
            retry_revision, current = await self._store.swap(key, record, revision)
            if retry_revision is None:
                await self._lost_the_record(msg, key, current)
                return
        await self._events.publish(record)
        log.info(
            "run %s attempt %d %s; retry in %.1fs", key, finished.attempt, finished.status, delay
        )
        await msg.nak(delay=delay)

    async def _run_unrecorded(
        self, msg: StartMessage, key: str, start: FlowStart, sequence: int, flow: Flow
    ) -> None:
        """Run the flow now; write its `running` record only if it is still going after
        `record_running_after` seconds, and its final one with a `create` if it was not."""
        now = self._clock()
        run = Unrecorded(key, begin(queued(start, now, sequence), now, self._runner_id))
        timer = asyncio.get_running_loop().call_later(
            self._record_running_after, self._record_running, run
        )
        try:
            finished = await self._execute(msg, key, run.running, None, flow, run)
        finally:
            timer.cancel()
        if run.writing is not None:
            await run.writing  # the record it writes decides between create and swap
        if run.preempted:
            await self._preempted(msg, key, run.owner, sequence)
            return
        if finished is None:  # cancelled on request: the record is final already
            await msg.ack()
            return
        await self._conclude(msg, key, finished, run.revision, flow, sequence)

    def _record_running(self, run: Unrecorded) -> None:
        run.writing = asyncio.create_task(self._write_running(run))

    async def _write_running(self, run: Unrecorded) -> None:
        """Write the `running` record of a run that is taking a while; if another start of
        the run has a record already, that one owns the run: stop this one's flow."""
        revision = await self._store.create(run.key, run.running)
        if revision is not None:
            run.revision = revision
            await self._events.publish(run.running)
            return
        run.owner = await self._current(run.key)
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
        task = asyncio.current_task()
        assert task is not None
        self._working[key] = task
        self._keep_alive.keep(msg)
        try:
            return await execute_within(
                running, flow, self._functions, self._clock, http=self._http
            )
        except asyncio.CancelledError:
            self._keep_alive.release(msg)  # the attempt is over: no beats while handing back
            if key in self._aborted and task.cancelling() == 1:
                task.uncancel()  # cancelled as a run, not stopped as a runner
                return None
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

    async def _commit_final(
        self,
        msg: StartMessage,
        key: str,
        final: Run,
        revision: int | None,
        flow: Flow,
        sequence: int,
    ) -> None:
        """Commit the final record over `revision` (None: create it), publish its event and
        acknowledge the message."""
        value = encode(final)  # once, for the record and its event
        if revision is None:
            if await self._store.create(key, final, value) is None:
                await self._preempted(msg, key, await self._current(key), sequence)
                return
        else:
            committed, current = await self._store.swap(key, final, revision, value)
            if committed is None:
                await self._lost_the_record(msg, key, current)
                return
        await self._events.publish(final, value)
        if takes_slots(flow, final.trigger_id, final.overlap):
            await self._admission.release(
                final.workspace_id, final.id, final.flow_id, final.trigger_id
            )
        log.info("run %s %s (attempt %d)", key, final.status, final.attempt)
        await msg.ack()

    async def _lost_the_record(self, msg: StartMessage, key: str, current: Run | None) -> None:
        """Someone else changed the record first: a cancellation (final) or another attempt."""
        if current is not None and current.status in TERMINAL_STATUSES:
            log.info("run %s was %s meanwhile; dropping this attempt", key, current.status)
            await msg.ack()
            return
        # Another delivery of this message took over (ours outlived its ack wait): it owns
        # the run now, and its ack is the one that counts.
        log.warning("run %s was taken over by another attempt; leaving it to that one", key)

    async def _preempted(
        self, msg: StartMessage, key: str, current: Run | None, sequence: int
    ) -> None:
        """A start that ran before its record existed found one when it wrote: the start
        that wrote it owns the run, and this one's work is dropped unpublished."""
        if (
            current is not None
            and current.status not in TERMINAL_STATUSES
            and current.start_sequence == sequence
        ):
            await self._lost_the_record(msg, key, current)  # our own message, redelivered
            return
        log.info("run %s belongs to another start; dropping this one's result", key)
        await msg.ack()

    async def _current(self, key: str) -> Run | None:
        found = await self._store.read(key)
        return found[0] if found is not None else None

    async def _create_or_read(
        self, key: str, start: FlowStart, sequence: int, *, running: bool
    ) -> tuple[Run, int, bool]:
        """The run's record and revision, created unless it exists (then False).

        A run that needs no admission is created `running` (its first attempt starts now):
        one write instead of `queued` then `running`. Otherwise it is created `queued`, and
        starts once admitted.
        """
        now = self._clock()
        record = queued(start, now, sequence)
        if running:
            record = begin(record, now, self._runner_id)
        revision = await self._store.create(key, record)
        if revision is None:
            found = await self._store.read(key)
            if found is None:
                raise RuntimeError(f"run {key} exists and does not")
            return found[0], found[1], False
        await self._events.publish(record)
        return record, revision, True
