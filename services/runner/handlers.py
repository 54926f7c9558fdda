"""Thin adapters between NATS and the core: one `flow.start` message in, one run record out."""

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.registry import Flow
from contracts.runs import TERMINAL_STATUSES, FlowStart, Run, RunEvent
from services.runner.executor import Clock, begin, execute, queued
from services.runner.flows import FlowRegistry
from shared.broker import reject
from shared.codec import decode, encode
from shared.kv_mirror import KvMirror

log = logging.getLogger(__name__)

SERVICE = "runner"
IN_PROGRESS_INTERVAL = 10.0
"""Seconds between in-progress acks of a running message (its ack wait is 30 s)."""
RETRY_DELAY = 2.0
"""Seconds before a message whose handling failed (not its flow: NATS trouble) comes back."""
MAX_WRITE_CONFLICTS = 10

# Ids become KV keys and subject tokens: no dots, spaces or wildcards.
_ID = re.compile(r"[A-Za-z0-9_-]+")


@contextlib.asynccontextmanager
async def keep_in_progress(msg: Msg, interval: float) -> AsyncIterator[None]:
    """Tell JetStream every `interval` seconds that `msg` is still being worked on."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class StartFlow:
    """Handle `flow.start` messages: one run record per run id, the flow run once."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        runs: KeyValue,
        flows: KeyValue,
        mirror: KvMirror[Flow],
        functions: FlowRegistry,
        clock: Clock,
        in_progress_interval: float = IN_PROGRESS_INTERVAL,
    ) -> None:
        self._js = js
        self._runs = runs
        self._flows = flows
        self._mirror = mirror
        self._functions = functions
        self._clock = clock
        self._in_progress_interval = in_progress_interval

    async def __call__(self, msg: Msg) -> None:
        """Handle one message; a failure to handle it hands it back to JetStream for later."""
        try:
            await self.start_flow(msg)
        except asyncio.CancelledError:
            # Stopping with the run unfinished: let another replica take it over now.
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
        record, revision, created = await self._create_or_read(key, start)
        if record.status in TERMINAL_STATUSES:
            # A duplicate of a finished run; its terminal event may have been lost in a crash.
            await self._publish(record)
            await msg.ack()
            return
        if not created and msg.metadata.num_delivered == 1:
            # A second message for a run another message already started: that one is still
            # unacknowledged (here or at another replica) and comes back if its runner dies.
            log.info("run %s is already in progress; dropping a duplicate start", key)
            await msg.ack()
            return

        running = begin(record, self._clock())
        running_revision = await self._commit(key, running, revision)
        if running_revision is None:  # another runner finished it meanwhile
            await msg.ack()
            return
        await self._publish(running)
        async with keep_in_progress(msg, self._in_progress_interval):
            finished = await execute(running, flow, self._functions, self._clock)
        if await self._commit(key, finished, running_revision) is not None:
            await self._publish(finished)
            log.info("run %s %s (attempt %d)", key, finished.status, finished.attempt)
        await msg.ack()

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

    async def _create_or_read(self, key: str, start: FlowStart) -> tuple[Run, int, bool]:
        """The run's record and revision, created as queued unless it exists (then False)."""
        record = queued(start, self._clock())
        try:
            revision = await self._runs.create(key, encode(record))
        except KeyWrongLastSequenceError:
            existing, revision = await self._read(key)
            return existing, revision, False
        await self._publish(record)
        return record, revision, True

    async def _read(self, key: str) -> tuple[Run, int]:
        entry = await self._runs.get(key)
        run: Run = decode(entry.value or b"", Run)
        return run, entry.revision or 0

    async def _commit(self, key: str, run: Run, revision: int) -> int | None:
        """Compare-and-swap `run` in; None when another runner has already finished the run."""
        for _ in range(MAX_WRITE_CONFLICTS):
            try:
                return await self._runs.update(key, encode(run), last=revision)
            except KeyWrongLastSequenceError:
                current, revision = await self._read(key)
                if current.status in TERMINAL_STATUSES:
                    log.warning("run %s was finished by another runner", key)
                    return None
        raise RuntimeError(f"run {key} keeps changing while this runner writes it")

    async def _publish(self, run: Run) -> None:
        # One event per status and attempt: a retried publish is stored once.
        event_id = f"{run.id}.{run.status}.{run.attempt}"
        await self._js.publish(
            subjects.run_event(run.workspace_id, run.id),
            encode(RunEvent(run=run)),
            headers={"Nats-Msg-Id": event_id},
        )
