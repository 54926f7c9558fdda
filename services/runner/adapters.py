"""The NATS and KV side of the runner's core: the `runs` and `run_slots` buckets, run events,
abort broadcasts, flow lookups and in-progress acks."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.registry import Flow, OverlapPolicy
from contracts.runs import TERMINAL_STATUSES, AbortRun, Run, RunEvent, RunSlots
from contracts.subjects import RUNS_BUCKET
from services.runner.core import (
    Decision,
    StartMessage,
    WorkspaceLimit,
    decide_concurrency,
    decide_overlap,
    no_workspace_limit,
    without,
)
from shared import jetstream, wire
from shared.codec import decode, encode
from shared.kv import read_one
from shared.kv_mirror import KvMirror

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
MAX_SLOT_CONFLICTS = 50


class InProgress:
    """In-progress acks for every message being worked on, sent by one loop (`KeepAlive`).

    One loop for all runs instead of a task per run: a run that ends within the interval (most
    do) costs a dict insert and delete. Each message is beaten within `interval` seconds of
    being registered and every `interval` seconds after that.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._messages: dict[int, StartMessage] = {}

    def keep(self, msg: StartMessage) -> None:
        """Keep `msg` in progress until `release` (a method pair, not a context manager: this
        is on every run's path)."""
        self._messages[id(msg)] = msg

    def release(self, msg: StartMessage) -> None:
        self._messages.pop(id(msg), None)

    async def beat(self) -> None:
        """Run forever: tell JetStream every `interval` seconds that the messages are alive."""
        while True:
            await asyncio.sleep(self._interval)
            for key, msg in list(self._messages.items()):
                if key in self._messages:  # not finished while an earlier beat was sent
                    with contextlib.suppress(Exception):
                        await msg.in_progress()


class KvRunStore:
    """`RunStore` over the `runs` bucket: creates and compare-and-swaps with lean JetStream
    writes (one publish each, no KV client overhead)."""

    def __init__(self, writer: jetstream.Writer, runs: KeyValue) -> None:
        self._writer = writer
        self._runs = runs

    async def read(self, key: str) -> tuple[Run, int] | None:
        return await read_one(self._runs, key, Run)

    async def create(self, key: str, run: Run, value: bytes | None = None) -> int | None:
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
        """Whether the run is final, or has no record (a slot holder that can be dropped)."""
        found = await self.read(subjects.run_key(workspace_id, run_id))
        return found is None or found[0].status in TERMINAL_STATUSES


class NatsRunEvents:
    """`RunEvents` as core NATS publishes to `run.v1.event.<ws>.<run>.<status>`, which the
    stream `RUN_EVENTS` stores."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc

    def publish(self, run: Run, value: bytes | None = None) -> None:
        """Without waiting for JetStream's answer, final events included: the record is the
        truth and events only inform, so a round trip per event would buy nothing a reader of
        the record does not have (a synchronous caller reads the record when its wait ends).
        """
        # One event per status and attempt: a retried publish is stored once. Its header block
        # is formatted in one step (`wire.headed`): every run publishes one or more.
        event_id = f"{run.id}.{run.status}.{run.attempt}.{len(run.attempts)}"
        head = f"NATS/1.0\r\n{MSG_ID}: {event_id}\r\n\r\n".encode()
        subject = subjects.run_event(run.workspace_id, run.id, run.status)
        wire.send(self._nc, wire.headed(subject, event_payload(run, value), "", head))


def event_payload(run: Run, value: bytes | None = None) -> bytes:
    """The encoded `RunEvent` of `run`, built around `value` (`run` encoded) when given."""
    if value is None:
        return encode(RunEvent(run=run))
    return b'{"run":' + value + b"}"  # RunEvent's one field, as msgspec writes it


class NatsAborts:
    """`Aborts` as a broadcast of `AbortRun` to every runner replica."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc

    async def abort(self, workspace_id: str, run_id: str) -> None:
        await self._nc.publish(
            subjects.RUN_ABORT, encode(AbortRun(workspace_id=workspace_id, run_id=run_id))
        )


class FlowLookup:
    """Flows by workspace and id, from the local mirror of the `flows` bucket."""

    def __init__(self, flows: KeyValue, mirror: KvMirror[Flow]) -> None:
        self._flows = flows
        self._mirror = mirror

    async def find(self, workspace_id: str, flow_id: str) -> Flow | None:
        key = subjects.record_key(workspace_id, flow_id)
        flow = self._mirror.get(key)
        if flow is None:
            # The mirror may not have caught up with a flow created a moment ago.
            found = await read_one(self._flows, key, Flow)
            flow = found[0] if found is not None else None
        if flow is None or flow.workspace_id != workspace_id:
            return None
        return flow


IsFinished = Callable[[str, str], Awaitable[bool]]
"""`(workspace_id, run_id)` → whether that run is final (or has no record)."""
Cancel = Callable[[str, str, str], Awaitable[None]]
"""`(workspace_id, run_id, reason)`: cancel a run."""


class KvAdmission:
    """`Admission` over `RunSlots` records in the `run_slots` bucket, shared by every replica.

    Records change only with compare-and-swap, so every replica sees the same slots. A slot is
    held by a run id, which makes taking it again (after a redelivery) harmless; a holder whose
    run is already final (its runner died before giving the slot back) is dropped the next
    time someone finds the slots full. The decisions themselves are `core.decide_overlap` and
    `core.decide_concurrency`.
    """

    def __init__(
        self,
        slots: KeyValue,
        is_finished: IsFinished,
        cancel: Cancel,
        workspace_limit: WorkspaceLimit = no_workspace_limit,
    ) -> None:
        self._slots = slots
        self._is_finished = is_finished
        self._cancel = cancel
        self._workspace_limit = workspace_limit

    async def admit(
        self,
        workspace_id: str,
        run_id: str,
        flow: Flow,
        trigger_id: str | None,
        policy: OverlapPolicy,
    ) -> Decision:
        """Admit the run through its trigger's overlap policy, then its flow's limit, then its
        workspace's: last, so that a run waiting for its flow holds no slot of its workspace
        (the slots it took so far it keeps while it waits: taking them again is harmless)."""
        if trigger_id is not None and policy != "allow":
            key = subjects.trigger_slots_key(workspace_id, trigger_id)

            def overlap(slots: RunSlots) -> Decision:
                return decide_overlap(slots, run_id, policy, trigger_id)

            decision = await self._apply(workspace_id, key, overlap)
            if decision.verdict != "admitted":
                return decision
        if flow.concurrency is not None:
            limit = flow.concurrency
            key = subjects.flow_slots_key(workspace_id, flow.id)
            decision = await self._apply(
                workspace_id, key, lambda slots: decide_concurrency(slots, run_id, limit)
            )
            if decision.verdict != "admitted":
                return decision
        workspace_limit = self._workspace_limit(workspace_id)
        if workspace_limit is not None:
            key = subjects.workspace_slots_key(workspace_id)
            return await self._apply(
                workspace_id, key, lambda slots: decide_concurrency(slots, run_id, workspace_limit)
            )
        return Decision("admitted", RunSlots())

    async def release(
        self, workspace_id: str, run_id: str, flow_id: str, trigger_id: str | None
    ) -> None:
        keys = [subjects.flow_slots_key(workspace_id, flow_id)]
        if trigger_id is not None:
            keys.append(subjects.trigger_slots_key(workspace_id, trigger_id))
        if self._workspace_limit(workspace_id) is not None:
            keys.append(subjects.workspace_slots_key(workspace_id))
        for key in keys:
            for _ in range(MAX_SLOT_CONFLICTS):
                slots, revision = await self._read(key)
                if revision is None:
                    break
                if run_id not in slots.active and slots.buffered != run_id:
                    break
                try:
                    await self._slots.update(key, encode(without(slots, run_id)), last=revision)
                    break
                except KeyWrongLastSequenceError:
                    continue

    async def _read(self, key: str) -> tuple[RunSlots, int | None]:
        try:
            entry = await self._slots.get(key)
        except KeyNotFoundError:
            return RunSlots(), None
        if not entry.value:
            return RunSlots(), entry.revision
        slots: RunSlots = decode(entry.value, RunSlots)
        return slots, entry.revision

    async def _apply(
        self, workspace_id: str, key: str, decide: Callable[[RunSlots], Decision]
    ) -> Decision:
        for _ in range(MAX_SLOT_CONFLICTS):
            slots, revision = await self._read(key)
            decision = decide(slots)
            if decision.verdict != "admitted" or decision.cancel:
                # Blocked: drop holders whose runs are over (their runner died before giving
                # the slot back), and decide again.
                live = [r for r in slots.active if not await self._is_finished(workspace_id, r)]
                buffered = slots.buffered
                if buffered is not None and await self._is_finished(workspace_id, buffered):
                    buffered = None
                if live != slots.active or buffered != slots.buffered:
                    slots = RunSlots(active=live, buffered=buffered)
                    decision = decide(slots)
            for run_id in decision.cancel:
                await self._cancel(
                    workspace_id, run_id, "cancelled by a newer start (overlap cancel_previous)"
                )
            if decision.slots == slots and revision is not None:
                return decision
            try:
                if revision is None:
                    await self._slots.create(key, encode(decision.slots))
                else:
                    await self._slots.update(key, encode(decision.slots), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return decision
        raise RuntimeError(f"the slots {key} keep changing while this runner writes them")
