"""Thin adapters between NATS and the core: one `flow.start` message in, one run record out.

Exactly one final record per run id, however messages are redelivered or duplicated:
- the record is created with a KV `create` (the first message to get there owns the run: its
  stream sequence is written into the record); every later change is a compare-and-swap;
- a fresh start that needs no admission runs at once, before any record: its first record is
  `running` once it has run `record_running_after` seconds, or its final record if it ends
  sooner, both written with a KV `create`, so a duplicate that got there first wins and this
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

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.registry import Flow, Problem, Reply
from contracts.runs import TERMINAL_STATUSES, AbortRun, CancelRun, FlowStart, Run, RunEvent
from contracts.subjects import RUNS_BUCKET
from services.runner.admission import Admission, takes_slots
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
from shared import jetstream
from shared.broker import START_DUPLICATE_WINDOW, reject
from shared.codec import decode, encode
from shared.ids import minted_at_ms
from shared.kv import read_one
from shared.kv_mirror import KvMirror
from shared.pull import Delivery, delivery

log = logging.getLogger(__name__)

SERVICE = "runner"
IN_PROGRESS_INTERVAL = 10.0
"""Seconds between in-progress acks of a running message (a third of the default ack wait)."""
RETRY_DELAY = 2.0
"""Seconds before a message whose handling failed (not its flow: NATS trouble) comes back."""
ADMISSION_RETRY = 0.3
"""About how many seconds a run waiting for a slot waits before it asks again."""
MAX_WRITE_CONFLICTS = 10
RECORD_RUNNING_AFTER = 0.1
"""Seconds a fresh start runs before its `running` record is written (`runs_unrecorded`)."""
FRESH_FOR = START_DUPLICATE_WINDOW.total_seconds() / 2
"""A start stored within this many seconds of its run id's making cannot have a stored twin
with the same `Nats-Msg-Id`: JetStream would have dropped it (half the window: clock skew)."""
MSG_ID = "Nats-Msg-Id"

# Ids become KV keys and subject tokens: no dots, spaces or wildcards.
_ID = re.compile(r"[A-Za-z0-9_-]+")


class InProgress:
    """In-progress acks for every message being worked on, sent by one loop.

    One loop for all runs instead of a task per run: a run that ends within the interval (most
    do) costs a dict insert and delete. Each message is beaten within `interval` seconds of
    being registered and every `interval` seconds after that.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._messages: dict[int, Msg] = {}

    def keep(self, msg: Msg) -> None:
        """Keep `msg` in progress until `release` (a method pair, not a context manager: this
        is on every run's path)."""
        self._messages[id(msg)] = msg

    def release(self, msg: Msg) -> None:
        self._messages.pop(id(msg), None)

    async def beat(self) -> None:
        """Run forever: tell JetStream every `interval` seconds that the messages are alive."""
        while True:
            await asyncio.sleep(self._interval)
            for key, msg in list(self._messages.items()):
                if key in self._messages:  # not finished while an earlier beat was sent
                    with contextlib.suppress(Exception):
                        await msg.in_progress()


class RunBook:
    """The runs bucket: reading, creating and compare-and-swapping run records, and their
    events. Shared by the start handler and the cancel handler."""

    def __init__(self, nc: Client, writer: jetstream.Writer, runs: KeyValue) -> None:
        self._nc = nc
        self._writer = writer
        self._runs = runs

    async def read(self, key: str) -> tuple[Run, int] | None:
        return await read_one(self._runs, key, Run)

    async def current(self, key: str) -> Run | None:
        found = await self.read(key)
        return found[0] if found is not None else None

    async def create(self, key: str, run: Run, value: bytes | None = None) -> int | None:
        """Create the record (`value`: `run` encoded already); None when it exists already."""
        if value is None:
            value = encode(run)
        try:
            return await self._writer.put_if_last(RUNS_BUCKET, key, value, last=0)
        except KeyWrongLastSequenceError:
            pass
        # The key exists, or held a record that was deleted: only the library's `create`
        # tells these apart (and writes over a deletion marker).
        try:
            return await self._runs.create(key, value)
        except KeyWrongLastSequenceError:
            return None

    async def swap(
        self, key: str, run: Run, revision: int, value: bytes | None = None
    ) -> tuple[int | None, Run | None]:
        """Compare-and-swap `run` (`value`: encoded already) in over `revision`.

        Returns `(new revision, None)` on success, or `(None, current record)` when someone
        else changed the record first (a cancellation, or another attempt took over).
        """
        if value is None:
            value = encode(run)
        try:
            written = await self._writer.put_if_last(RUNS_BUCKET, key, value, last=revision)
            return written, None
        except KeyWrongLastSequenceError:
            found = await self.read(key)
            if found is not None and found[0] == run:  # our own write, its answer lost
                return found[1], None
            return None, found[0] if found else None

    async def is_finished(self, workspace_id: str, run_id: str) -> bool:
        found = await self.read(subjects.run_key(workspace_id, run_id))
        return found is None or found[0].status in TERMINAL_STATUSES

    async def publish(self, run: Run, value: bytes | None = None) -> None:
        """Publish the event of `run`'s current record (call it once the record is committed;
        `value`: the record as written, which the event wraps without encoding it again).

        Without waiting for JetStream's answer, final events included: the record is the
        truth and events only inform, so a round trip per event would buy nothing a reader of
        the record does not have (a synchronous caller reads the record when its wait ends).
        """
        # One event per status and attempt: a retried publish is stored once.
        event_id = f"{run.id}.{run.status}.{run.attempt}.{len(run.attempts)}"
        await self._nc.publish(
            subjects.run_event(run.workspace_id, run.id, run.status),
            event_payload(run, value),
            headers={MSG_ID: event_id},
        )


def event_payload(run: Run, value: bytes | None = None) -> bytes:
    """The encoded `RunEvent` of `run`, built around `value` (`run` encoded) when given."""
    if value is None:
        return encode(RunEvent(run=run))
    return b'{"run":' + value + b"}"  # RunEvent's one field, as msgspec writes it


class CancelRuns:
    """Cancel queued or running runs: record them cancelled, then stop whoever runs them."""

    def __init__(self, nc: Client, book: RunBook, clock: Clock) -> None:
        self._nc = nc
        self._book = book
        self._clock = clock
        self.admission: Admission | None = None

    async def cancel(self, workspace_id: str, run_id: str, reason: str) -> Run | Problem:
        key = subjects.run_key(workspace_id, run_id)
        for _ in range(MAX_WRITE_CONFLICTS):
            found = await self._book.read(key)
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
            new_revision, _ = await self._book.swap(key, cancelled, revision)
            if new_revision is None:
                continue
            await self._book.publish(cancelled)
            await self._nc.publish(
                subjects.RUN_ABORT, encode(AbortRun(workspace_id=workspace_id, run_id=run_id))
            )
            if self.admission is not None:
                await self.admission.release(
                    workspace_id, run_id, record.flow_id, record.trigger_id
                )
            log.info("run %s cancelled: %s", key, reason)
            return cancelled
        raise RuntimeError(f"run {key} keeps changing while it is being cancelled")

    async def cancel_quietly(self, workspace_id: str, run_id: str, reason: str) -> None:
        await self.cancel(workspace_id, run_id, reason)

    async def on_request(self, msg: Msg) -> None:
        """`runner.v1.run.cancel`: answer a `CancelRun` with `Reply[Run]`."""
        reply: Reply[Run]
        try:
            request: CancelRun = decode(msg.data, CancelRun)
        except msgspec.DecodeError as error:
            reply = Reply(error=Problem(status=422, code="invalid_request", message=str(error)))
        else:
            try:
                outcome = await self.cancel(request.workspace_id, request.run_id, request.reason)
            except Exception:
                log.exception("could not cancel run %s", request.run_id)
                outcome = Problem(
                    status=500, code="runner_error", message="the runner failed; see its log"
                )
            reply = Reply(error=outcome) if isinstance(outcome, Problem) else Reply(ok=outcome)
        if msg.reply:
            await msg.respond(encode(reply))


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


class StartFlow:
    """Handle `flow.start` messages: one final run record per run id."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        book: RunBook,
        flows: KeyValue,
        mirror: KvMirror[Flow],
        functions: FlowRegistry,
        clock: Clock,
        admission: Admission,
        runner_id: str = "",
        http: HttpCaller | None = None,
        in_progress_interval: float = IN_PROGRESS_INTERVAL,
        record_running_after: float = RECORD_RUNNING_AFTER,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._js = js
        self._book = book
        self._flows = flows
        self._mirror = mirror
        self._functions = functions
        self._clock = clock
        self._admission = admission
        self._runner_id = runner_id
        self._http = http
        self.in_progress = InProgress(in_progress_interval)
        self._record_running_after = record_running_after
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

    async def on_abort(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            request: AbortRun = decode(msg.data, AbortRun)
            self.abort(request.workspace_id, request.run_id)

    async def __call__(self, msg: Msg) -> None:
        """Handle one message; a failure to handle it hands it back to JetStream for later."""
        try:
            await self.start_flow(msg)
        except asyncio.CancelledError:
            # Stopping: let another replica take the message over now.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception:
            log.exception("could not handle a message on %s; it will come back", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=RETRY_DELAY)

    async def start_flow(self, msg: Msg) -> None:
        try:
            start: FlowStart = decode(msg.data, FlowStart)
        except msgspec.DecodeError as error:
            await reject(self._js, msg, f"not a valid FlowStart: {error}", SERVICE)
            return
        misfiled = misfiled_start(msg.subject, start)
        if misfiled:
            await reject(self._js, msg, misfiled, SERVICE)
            return
        ids = ("run_id", "workspace_id", "flow_id")
        invalid = [name for name in ids if not _ID.fullmatch(getattr(start, name))]
        if start.trigger_id is not None and not _ID.fullmatch(start.trigger_id):
            invalid.append("trigger_id")
        if invalid:
            reason = f"{', '.join(invalid)} may only hold letters, digits, '_' and '-'"
            await reject(self._js, msg, reason, SERVICE)
            return
        flow = await self._find_flow(start.workspace_id, start.flow_id)
        if flow is None:
            reason = f"unknown flow {start.flow_id} in workspace {start.workspace_id}"
            await reject(self._js, msg, reason, SERVICE)
            return

        key = subjects.run_key(start.workspace_id, start.run_id)
        seen = delivery(msg)
        sequence = seen.stream_sequence
        admitted_at_once = not takes_slots(flow, start.trigger_id, start.overlap)
        if admitted_at_once and runs_unrecorded(msg, start, seen):
            await self._run_unrecorded(msg, key, start, sequence, flow)
            return
        record, revision, created = await self._create_or_read(
            key, start, sequence, running=admitted_at_once
        )
        if created and record.status == "running":
            await self._attempt(msg, key, record, revision, flow)
            return
        if record.status in TERMINAL_STATUSES:
            # A duplicate of a finished run; its final event may have been lost in a crash.
            await self._book.publish(record)
            await msg.ack()
            return
        if not created and _is_duplicate(record, seen):
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
                await self._commit_final(msg, key, skipped, revision, flow)
                return

        running = begin(record, self._clock(), self._runner_id)
        if running.status in TERMINAL_STATUSES:  # too many lost attempts
            await self._commit_final(msg, key, running, revision, flow)
            return
        running_revision, current = await self._book.swap(key, running, revision)
        if running_revision is None:
            await self._lost_the_record(msg, key, current)
            return
        await self._book.publish(running)
        await self._attempt(msg, key, running, running_revision, flow)

    async def _attempt(self, msg: Msg, key: str, running: Run, revision: int, flow: Flow) -> None:
        """Run the attempt `running` (committed at `revision`), then commit what it made of
        the run: final (and acknowledge the message), or queued for a retry (and hand the
        message back until then)."""
        finished = await self._execute(msg, key, running, revision, flow)
        if finished is None:  # cancelled meanwhile: the record is final already
            await msg.ack()
            return
        await self._conclude(msg, key, finished, revision, flow)

    async def _conclude(
        self, msg: Msg, key: str, finished: Run, revision: int | None, flow: Flow
    ) -> None:
        """Commit what the attempt `finished` made of the run, over `revision` (None: the run
        has no record yet, so this creates it)."""
        record, delay = conclude(finished, flow, self._rng)
        if delay is None:
            await self._commit_final(msg, key, record, revision, flow)
            return
        if revision is None:
            if await self._book.create(key, record) is None:
                await self._preempted(msg, key, await self._book.current(key))
                return
        else:
            retry_revision, current = await self._book.swap(key, record, revision)
            if retry_revision is None:
                await self._lost_the_record(msg, key, current)
                return
        await self._book.publish(record)
        log.info(
            "run %s attempt %d %s; retry in %.1fs", key, finished.attempt, finished.status, delay
        )
        await msg.nak(delay=delay)

    async def _run_unrecorded(
        self, msg: Msg, key: str, start: FlowStart, sequence: int, flow: Flow
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
            await self._preempted(msg, key, run.owner)
            return
        if finished is None:  # cancelled on request: the record is final already
            await msg.ack()
            return
        await self._conclude(msg, key, finished, run.revision, flow)

    def _record_running(self, run: Unrecorded) -> None:
        run.writing = asyncio.create_task(self._write_running(run))

    async def _write_running(self, run: Unrecorded) -> None:
        """Write the `running` record of a run that is taking a while; if another start of
        the run has a record already, that one owns the run: stop this one's flow."""
        revision = await self._book.create(run.key, run.running)
        if revision is not None:
            run.revision = revision
            await self._book.publish(run.running)
            return
        run.owner = await self._book.current(run.key)
        log.info("run %s belongs to another start; stopping this one's flow", run.key)
        work = self._working.get(run.key)
        if work is not None and work is run.task:  # still running the flow
            self._aborted.add(run.key)
            work.cancel()

    async def _execute(
        self,
        msg: Msg,
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
        self.in_progress.keep(msg)
        try:
            return await execute_within(
                running, flow, self._functions, self._clock, http=self._http
            )
        except asyncio.CancelledError:
            self.in_progress.release(msg)  # the attempt is over: no beats while handing back
            if key in self._aborted and task.cancelling() == 1:
                task.uncancel()  # cancelled as a run, not stopped as a runner
                return None
            if unrecorded is not None:
                revision = unrecorded.revision
                if unrecorded.writing is not None and not unrecorded.writing.done():
                    unrecorded.writing.cancel()
            if revision is not None:
                with contextlib.suppress(Exception):
                    await self._book.swap(key, interrupted(running, self._clock()), revision)
            raise
        finally:
            self.in_progress.release(msg)
            if self._working.get(key) is task:
                del self._working[key]
                self._aborted.discard(key)

    async def _commit_final(
        self, msg: Msg, key: str, final: Run, revision: int | None, flow: Flow
    ) -> None:
        """Commit the final record over `revision` (None: create it), publish its event and
        acknowledge the message."""
        value = encode(final)  # once, for the record and its event
        if revision is None:
            if await self._book.create(key, final, value) is None:
                await self._preempted(msg, key, await self._book.current(key))
                return
        else:
            committed, current = await self._book.swap(key, final, revision, value)
            if committed is None:
                await self._lost_the_record(msg, key, current)
                return
        await self._book.publish(final, value)
        if takes_slots(flow, final.trigger_id, final.overlap):
            await self._admission.release(
                final.workspace_id, final.id, final.flow_id, final.trigger_id
            )
        log.info("run %s %s (attempt %d)", key, final.status, final.attempt)
        await msg.ack()

    async def _lost_the_record(self, msg: Msg, key: str, current: Run | None) -> None:
        """Someone else changed the record first: a cancellation (final) or another attempt."""
        if current is not None and current.status in TERMINAL_STATUSES:
            log.info("run %s was %s meanwhile; dropping this attempt", key, current.status)
            await msg.ack()
            return
        # Another delivery of this message took over (ours outlived its ack wait): it owns
        # the run now, and its ack is the one that counts.
        log.warning("run %s was taken over by another attempt; leaving it to that one", key)

    async def _preempted(self, msg: Msg, key: str, current: Run | None) -> None:
        """A start that ran before its record existed found one when it wrote: the start
        that wrote it owns the run, and this one's work is dropped unpublished."""
        if (
            current is not None
            and current.status not in TERMINAL_STATUSES
            and current.start_sequence == msg.metadata.sequence.stream
        ):
            await self._lost_the_record(msg, key, current)  # our own message, redelivered
            return
        log.info("run %s belongs to another start; dropping this one's result", key)
        await msg.ack()

    async def _find_flow(self, workspace_id: str, flow_id: str) -> Flow | None:
        key = subjects.record_key(workspace_id, flow_id)
        flow = self._mirror.get(key)
        if flow is None:
            # The mirror may not have caught up with a flow created a moment ago.
            found = await read_one(self._flows, key, Flow)
            flow = found[0] if found is not None else None
        if flow is None or flow.workspace_id != workspace_id:
            return None
        return flow

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
        revision = await self._book.create(key, record)
        if revision is None:
            found = await self._book.read(key)
            if found is None:
                raise RuntimeError(f"run {key} exists and does not")
            return found[0], found[1], False
        await self._book.publish(record)
        return record, revision, True


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


def _is_duplicate(record: Run, seen: Delivery) -> bool:
    if record.start_sequence is not None:
        return record.start_sequence != seen.stream_sequence
    # A record from before start sequences were kept: only a first delivery can be a copy.
    return seen.delivered == 1


def runs_unrecorded(msg: Msg, start: FlowStart, seen: Delivery | None = None) -> bool:
    """Whether this start (of a run that needs no admission) runs before its record exists.

    Only a first delivery published with `Nats-Msg-Id` = its run id (as the `FlowStart`
    contract asks) within `FRESH_FOR` of the run id's making. No earlier start of the run
    carrying the same `Nats-Msg-Id` can be stored (JetStream dropped it, or this one), so
    reading the record first would be a round trip for nothing; a later one comes after the
    duplicate window, is not fresh and reads the record. It finds none only while this start
    is in its first `record_running_after` seconds: then both run the flow, and the `create`
    of the first record keeps exactly one of them. A start of the run published with another
    `Nats-Msg-Id` (against the contract) may run the flow again; it still leaves one record.
    Everything that is not fresh, redeliveries included, reads the record first.
    """
    if seen is None:
        seen = delivery(msg)
    if seen.delivered != 1 or not msg.headers:
        return False
    if msg.headers.get(MSG_ID) != start.run_id:
        return False
    minted = minted_at_ms(start.run_id)
    if minted is None:
        return False
    return seen.stored_at - minted / 1000 < FRESH_FOR
