"""Thin adapters between NATS and the core: one `flow.start` message in, one run record out.

Exactly one final record per run id, however messages are redelivered or duplicated:
- the record is created with a KV `create` (the first message to get there owns the run: its
  stream sequence is written into the record); every later change is a compare-and-swap;
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
from collections.abc import Callable, Iterator

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
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
from shared.broker import reject
from shared.codec import decode, encode
from shared.kv_mirror import KvMirror

log = logging.getLogger(__name__)

SERVICE = "runner"
IN_PROGRESS_INTERVAL = 10.0
"""Seconds between in-progress acks of a running message (a third of the default ack wait)."""
RETRY_DELAY = 2.0
"""Seconds before a message whose handling failed (not its flow: NATS trouble) comes back."""
ADMISSION_RETRY = 0.3
"""About how many seconds a run waiting for a slot waits before it asks again."""
MAX_WRITE_CONFLICTS = 10

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

    @contextlib.contextmanager
    def kept(self, msg: Msg) -> Iterator[None]:
        """Keep `msg` in progress while the block runs."""
        self._messages[id(msg)] = msg
        try:
            yield
        finally:
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
        try:
            entry = await self._runs.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        run: Run = decode(entry.value, Run)
        return run, entry.revision or 0

    async def create(self, key: str, run: Run) -> int | None:
        """Create the record; None when it exists already."""
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

    async def swap(self, key: str, run: Run, revision: int) -> tuple[int | None, Run | None]:
        """Compare-and-swap `run` in over `revision`.

        Returns `(new revision, None)` on success, or `(None, current record)` when someone
        else changed the record first (a cancellation, or another attempt took over).
        """
        try:
            written = await self._writer.put_if_last(RUNS_BUCKET, key, encode(run), last=revision)
            return written, None
        except KeyWrongLastSequenceError:
            found = await self.read(key)
            if found is not None and found[0] == run:  # our own write, its answer lost
                return found[1], None
            return None, found[0] if found else None

    async def is_finished(self, workspace_id: str, run_id: str) -> bool:
        found = await self.read(subjects.run_key(workspace_id, run_id))
        return found is None or found[0].status in TERMINAL_STATUSES

    async def publish(self, run: Run) -> None:
        """Publish the event of `run`'s current record (call it once the record is committed).

        A final event is stored before this returns (the message is acknowledged after it,
        and a duplicate start of a finished run publishes it again): a synchronous caller
        waits for it. A queued or running event only informs, the record being the truth: it
        is published without waiting for JetStream's answer, which saves a round trip per run.
        """
        # One event per status and attempt: a retried publish is stored once.
        event_id = f"{run.id}.{run.status}.{run.attempt}.{len(run.attempts)}"
        subject = subjects.run_event(run.workspace_id, run.id)
        headers = {"Nats-Msg-Id": event_id}
        if run.status in TERMINAL_STATUSES:
            await self._writer.publish(subject, encode(RunEvent(run=run)), headers)
        else:
            await self._nc.publish(subject, encode(RunEvent(run=run)), headers=headers)


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
        sequence = msg.metadata.sequence.stream
        admitted_at_once = not takes_slots(flow, start.trigger_id, start.overlap)
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
        if not created and _is_duplicate(record, msg, sequence):
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
        record, delay = conclude(finished, flow, self._rng)
        if delay is None:
            await self._commit_final(msg, key, record, revision, flow)
            return
        retry_revision, current = await self._book.swap(key, record, revision)
        if retry_revision is None:
            await self._lost_the_record(msg, key, current)
            return
        await self._book.publish(record)
        log.info(
            "run %s attempt %d %s; retry in %.1fs", key, finished.attempt, finished.status, delay
        )
        await msg.nak(delay=delay)

    async def _execute(
        self, msg: Msg, key: str, running: Run, revision: int, flow: Flow
    ) -> Run | None:
        """The attempt's outcome; None if it was cancelled. Shutting down hands it back.

        The flow runs in the handler's own task (not a task of its own: one task per run is
        measurable): `abort` cancels that task and marks the run, which tells its cancellation
        from a shutdown's.
        """
        task = asyncio.current_task()
        assert task is not None
        self._working[key] = task
        try:
            with self.in_progress.kept(msg):
                return await execute_within(
                    running, flow, self._functions, self._clock, http=self._http
                )
        except asyncio.CancelledError:
            if key in self._aborted and task.cancelling() == 1:
                task.uncancel()  # cancelled as a run, not stopped as a runner
                return None
            with contextlib.suppress(Exception):
                await self._book.swap(key, interrupted(running, self._clock()), revision)
            raise
        finally:
            self._working.pop(key, None)
            self._aborted.discard(key)

    async def _commit_final(
        self, msg: Msg, key: str, final: Run, revision: int, flow: Flow
    ) -> None:
        committed, current = await self._book.swap(key, final, revision)
        if committed is None:
            await self._lost_the_record(msg, key, current)
            return
        await self._book.publish(final)
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

    async def _find_flow(self, workspace_id: str, flow_id: str) -> Flow | None:
        key = subjects.record_key(workspace_id, flow_id)
        flow = self._mirror.get(key)
        if flow is None:
            # The mirror may not have caught up with a flow created a moment ago.
            try:
                entry = await self._flows.get(key)
            except KeyNotFoundError:
                return None
            flow = decode(entry.value, Flow) if entry.value else None
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


def _is_duplicate(record: Run, msg: Msg, sequence: int) -> bool:
    if record.start_sequence is not None:
        return record.start_sequence != sequence
    # A record from before start sequences were kept: only a first delivery can be a copy.
    return bool(msg.metadata.num_delivered == 1)
