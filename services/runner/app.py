"""`create_app`: all of the runner's wiring, and the loop that pulls flow start messages."""

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable
from typing import NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from contracts import subjects
from contracts.registry import Flow, RunnerAnnouncement
from services.runner.adapters import (
    FlowLookup,
    InProgress,
    KvAdmission,
    KvRunStore,
    NatsAborts,
    NatsRunEvents,
)
from services.runner.core import CancelRuns, StartRuns
from services.runner.executor import Clock, utc_now
from services.runner.fair_share import (
    FairShare,
    hand_back_delay,
    reserved_slots,
    workspace_of,
)
from services.runner.flows import FlowRegistry, flows
from services.runner.handlers import SERVICE, CancelRequests, StartFlow
from services.runner.http_flows import HttpFlows, parse_networks
from services.runner.metrics import CountedRunEvents
from services.runner.settings import RunnerSettings
from shared import tracing
from shared.broker import bucket, connect, ensure_topology, is_last_delivery
from shared.codec import encode
from shared.ids import new_id
from shared.jetstream import Writer
from shared.kv_mirror import KvMirror
from shared.metrics import Readiness, sample_consumers
from shared.pull import Delivery, Puller, delivery
from shared.supervise import cancel_and_wait, supervised
from shared.tracing import consumed

log = logging.getLogger(__name__)

PULL_EXPIRES = 0.5
"""Longest wait of one pull request; stopping waits for the current one to end."""


class Waiting(NamedTuple):
    """A start waiting for a slot, with its delivery facts as parsed when it came (None: not
    a JetStream message, a test's)."""

    msg: Msg
    seen: Delivery | None


class RunnerApp:
    """The runner service: a flows mirror, a pull consumer on `FLOW_STARTS`, run cancellation
    and announcements of its flow functions."""

    def __init__(self, settings: RunnerSettings, *, clock: Clock, functions: FlowRegistry) -> None:
        self._settings = settings
        self._clock = clock
        self._functions = functions
        self.runner_id = new_id("rnr")
        self._nc: Client | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._consumer_loop: asyncio.Task[None] | None = None
        self._subscriptions: list[Subscription] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        concurrency = settings.runner_concurrency
        reserved = reserved_slots(concurrency, settings.runner_reserved_slots)
        self._fair = FairShare[Waiting](
            concurrency,
            reserved=reserved,
            buffer=concurrency,
            least=max(1, concurrency // 4),
        )
        """The slots of this replica and the starts waiting for them, by workspace."""
        # A third of the ack wait: a beat may be late by one interval and still be in time.
        self._in_progress = InProgress(settings.runner_ack_wait / 3)
        self._start_flow: StartFlow | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop the runner runs on, once started (asking for it costs a system call)."""
        self._context: contextvars.Context | None = None
        """The context of `start`, which every run's task starts from (a copy each)."""
        self._puller: Puller | None = None
        self._wake: asyncio.TimerHandle | None = None
        """Wakes the puller when it may pull without a run ending (`FairShare.wake_at`)."""
        self._stopping = False
        self._handing_back: set[asyncio.Task[None]] = set()
        self._http: HttpFlows | None = None
        self._reconnected_at = 0.0
        """When the connection to NATS last came back (seconds since the epoch; 0: never)."""
        self.readiness = Readiness()

    def _note_reconnect(self) -> None:
        self._reconnected_at = time.time()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()
        self._nc = nc = await connect(
            self._settings.nats_url, SERVICE, on_reconnected=self._note_reconnect
        )
        js = nc.jetstream()
        await ensure_topology(js, self._settings.nats_replicas)
        flows_bucket = await bucket(js, subjects.FLOWS_BUCKET)
        mirror = KvMirror(js, subjects.FLOWS_BUCKET, Flow)
        self._loops.append(asyncio.create_task(supervised("flows mirror", mirror.follow)))
        await mirror.ready.wait()
        store = KvRunStore(await Writer.open(nc), await bucket(js, subjects.RUNS_BUCKET))
        events = CountedRunEvents(NatsRunEvents(nc))
        cancel_runs = CancelRuns(store, events, NatsAborts(nc), self._clock)
        limits = self._settings.workspace_limits
        default_limit = self._settings.runner_workspace_concurrency or None

        def workspace_limit(workspace_id: str) -> int | None:
            return limits.get(workspace_id, default_limit) or None

        admission = KvAdmission(
            await bucket(js, subjects.RUN_SLOTS_BUCKET),
            store.is_finished,
            cancel_runs.cancel_quietly,
            workspace_limit,
        )
        cancel_runs.admission = admission
        self._http = HttpFlows(
            parse_networks(self._settings.runner_http_allowed_networks),
            max_response_bytes=self._settings.runner_http_max_response_bytes,
        )
        in_progress = self._in_progress
        starts = StartRuns(
            store=store,
            events=events,
            admission=admission,
            keep_alive=in_progress,
            functions=self._functions,
            clock=self._clock,
            runner_id=self.runner_id,
            http=self._http,
            record_running_after=self._settings.runner_record_running_after,
            reconnected_at=lambda: self._reconnected_at,
            # Room for the write's headers below what this server takes in one message.
            max_record_bytes=nc.max_payload - 4096,
            workspace_limit=workspace_limit,
        )
        start_flow = StartFlow(
            js=js,
            flows=FlowLookup(flows_bucket, mirror),
            starts=starts,
            max_deliver=self._settings.runner_max_deliver,
        )
        cancel_requests = CancelRequests(cancel_runs)
        self._subscriptions = [
            await nc.subscribe(
                subjects.RUN_CANCEL, queue=subjects.RUNNER_QUEUE, cb=cancel_requests.on_request
            ),
            await nc.subscribe(subjects.RUN_ABORT, cb=start_flow.on_abort),
        ]
        await js.add_consumer(
            subjects.FLOW_STARTS_STREAM,
            ConsumerConfig(
                durable_name=subjects.RUNNER_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self._settings.runner_ack_wait,
                max_deliver=self._settings.runner_max_deliver,
            ),
        )
        self._loops.append(asyncio.create_task(supervised("in-progress acks", in_progress.beat)))
        self._observe(js, mirror)
        self._start_flow = start_flow
        consume = functools.partial(self._consume, nc)
        self._consumer_loop = asyncio.create_task(supervised("flow.start consumer", consume))
        self._loops.append(asyncio.create_task(supervised("announcements", self._announce)))
        log.info(
            "runner %s serves flow functions: %s",
            self.runner_id,
            ", ".join(self._functions.names()),
        )

    def _observe(self, js: JetStreamContext, mirror: KvMirror[Flow]) -> None:
        """Readiness checks (`/readyz`) and the sampling of the start consumer's counts."""
        self.readiness.require("nats", lambda: self._nc is not None and self._nc.is_connected)
        self.readiness.require("flows mirror", mirror.ready.is_set)
        self.readiness.require("consumer", lambda: self._consumer_loop is not None)
        consumers = [(subjects.FLOW_STARTS_STREAM, subjects.RUNNER_CONSUMER)]
        sample = functools.partial(sample_consumers, js, consumers)
        self._loops.append(asyncio.create_task(supervised("consumer metrics", sample)))

    async def stop(self) -> None:
        """Stop fetching, let runs in flight finish within the grace period, hand back the rest.

        The consumer goes first (it finishes its current pull request), the mirror last: runs
        in flight may still be looking their flow up.
        """
        self._stopping = True
        await cancel_and_wait(self._consumer_loop)
        self._consumer_loop = None
        # Starts waiting for their turn go back now, for another replica to take.
        for msg, _ in self._fair.drain():
            self._in_progress.release(msg)
            self._hand_back(msg, None)
        if self._handing_back:
            await asyncio.gather(*self._handing_back, return_exceptions=True)
        if self._in_flight:
            log.info(
                "waiting up to %gs for %d runs in flight",
                self._settings.runner_stop_grace,
                len(self._in_flight),
            )
            _, unfinished = await asyncio.wait(
                self._in_flight, timeout=self._settings.runner_stop_grace or None
            )
            if unfinished:
                log.info("handing back %d unfinished runs", len(unfinished))
            # All at once: each hand-back writes its record, and one at a time adds up.
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        for loop in self._loops:
            await cancel_and_wait(loop)
        self._loops = []
        if self._http is not None:
            await self._http.close()
        if self._nc is not None:
            await self._nc.drain()

    async def _announce(self) -> None:
        """Tell the registry which flow functions this runner serves, now and periodically."""
        assert self._nc is not None
        while True:
            announcement = RunnerAnnouncement(
                runner_id=self.runner_id,
                functions=self._functions.names(),
                announced_at=self._clock(),
                interval_seconds=self._settings.runner_announce_interval,
            )
            await self._nc.publish(subjects.RUNNER_ANNOUNCE, encode(announcement))
            await asyncio.sleep(self._settings.runner_announce_interval)

    async def _consume(self, nc: Client) -> None:
        """Pull starts as slots free up (`FairShare.wanted` says how many and when), and hand
        each to `_arrive`."""
        self._puller = Puller(
            nc,
            subjects.FLOW_STARTS_STREAM,
            subjects.RUNNER_CONSUMER,
            capacity=self._capacity,
            dispatch=self._arrive,
            least=1,  # `FairShare.wanted` says when a pull is worth it
            expires=PULL_EXPIRES,
        )
        try:
            await self._puller.run()
        finally:
            if self._wake is not None:
                self._wake.cancel()
                self._wake = None

    def _capacity(self) -> int:
        """How many starts to pull now (see `FairShare.wanted`)."""
        loop = asyncio.get_running_loop()
        wanted = self._fair.wanted(loop.time())
        wake_at = self._fair.wake_at()
        if wanted or wake_at is None or wake_at <= loop.time():
            return wanted
        # Nothing to pull until then (a full buffer looked past, a slot pulled for alone).
        if self._wake is None or wake_at < self._wake.when():
            if self._wake is not None:
                self._wake.cancel()
            self._wake = loop.call_at(wake_at, self._woken)
        return 0

    def _woken(self) -> None:
        self._wake = None
        self._freed()

    def _freed(self) -> None:
        if self._puller is not None:
            self._puller.freed.set()

    def _arrive(self, msg: Msg) -> None:
        """A start came: it runs now if its workspace may take a slot, or waits its turn."""
        try:
            # Parsed once here and handed to the handler with the message (when it runs now).
            seen: Delivery | None = delivery(msg)
        except ValueError:  # not a JetStream message (a test's): no delivery limit
            seen = None
        if seen is not None and is_last_delivery(seen.delivered, self._settings.runner_max_deliver):
            # Its handler dead-letters it at once: no slot to share, no turn to wait for.
            self._run(msg, None, seen)
            return
        fair = self._fair
        workspace = workspace_of(msg.subject, msg.data)
        if not self._stopping and fair.run_now(workspace):
            # Nothing waits and a slot is free for it: what `add`, `next` and `overflow`
            # would decide, without queueing it.
            self._run(msg, workspace, seen)
            return
        fair.add(workspace, Waiting(msg, seen), asyncio.get_running_loop().time())
        self._in_progress.keep(msg)
        self._pump()
        # Only what cannot run now waits; past the buffer's bound, some of it goes back.
        for handed, handed_seen in fair.overflow(self._may_hand_back):
            self._in_progress.release(handed)
            assert handed_seen is not None  # `_may_hand_back` keeps what has no delivery facts
            self._hand_back(handed, hand_back_delay(handed_seen.delivered))

    def _may_hand_back(self, waiting: Waiting) -> bool:
        # One delivery short of the limit, it would come back only to be dead-lettered for
        # having waited its turn: it stays, past the buffer's bound. Not a JetStream message
        # (a test's): it stays too.
        seen = waiting.seen
        if seen is None:
            return False
        return not is_last_delivery(seen.delivered + 1, self._settings.runner_max_deliver)

    def _pump(self) -> None:
        """Start every waiting start whose workspace may take a slot now."""
        if self._stopping:  # what waits goes back to JetStream; nothing more starts
            return
        while (picked := self._fair.next()) is not None:
            workspace, (msg, seen) = picked
            self._in_progress.release(msg)
            self._run(msg, workspace, seen)

    def _run(self, msg: Msg, workspace: str | None, seen: Delivery | None = None) -> None:
        start_flow, loop, context = self._start_flow, self._loop, self._context
        assert start_flow is not None
        assert loop is not None
        assert context is not None
        active = tracing.tracer()
        if active is None:
            handling = start_flow(msg, seen)
        else:
            handling = consumed(active, msg, functools.partial(start_flow, seen=seen))
        # The loop's own `create_task`: `asyncio.create_task` adds a call of its own a run. Each
        # run starts from the runner's own context, not that of the run whose end started it
        # (`_handled`), whose log ids it would carry.
        task = loop.create_task(self._handled(handling, workspace), context=context.copy())
        self._in_flight.add(task)

    async def _handled(self, handling: Awaitable[None], workspace: str | None) -> None:
        """Run a start's handling; then its slot is free. The task's own `finally`, not a done
        callback: one callback of the loop less per run. A task cancelled before its first step
        would skip it, but the runner cancels only runs that have started (aborted, timed out,
        or still going when it stops after its grace period)."""
        try:
            await handling
        finally:
            task = asyncio.current_task(self._loop)
            if task is not None:
                self._in_flight.discard(task)
            if workspace is not None:
                self._fair.finished(workspace)
                self._pump()
            self._freed()

    def _hand_back(self, msg: Msg, delay: float | None) -> None:
        """Give `msg` back to JetStream (for another replica, or this one after `delay`)."""
        task = asyncio.create_task(_nak(msg, delay))
        self._handing_back.add(task)
        task.add_done_callback(self._handing_back.discard)


async def _nak(msg: Msg, delay: float | None) -> None:
    with contextlib.suppress(Exception):
        await msg.nak(delay=delay)


def create_app(
    settings: RunnerSettings,
    *,
    clock: Clock = utc_now,
    functions: FlowRegistry = flows,
) -> RunnerApp:
    """The runner, serving the flow functions of `functions` (by default, the `@flow` ones)."""
    return RunnerApp(settings, clock=clock, functions=functions)
