"""`create_app`: all of the runner's wiring, and the loop that pulls flow start messages."""

import asyncio
import contextlib
import functools
import logging
import time

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
from services.runner.flows import FlowRegistry, flows
from services.runner.handlers import SERVICE, CancelRequests, StartFlow
from services.runner.http_flows import HttpFlows, parse_networks
from services.runner.metrics import CountedRunEvents
from services.runner.settings import RunnerSettings
from shared import tracing
from shared.broker import bucket, connect, ensure_topology
from shared.codec import encode
from shared.ids import new_id
from shared.jetstream import Writer
from shared.kv_mirror import KvMirror
from shared.metrics import Readiness, sample_consumers
from shared.pull import Puller
from shared.supervise import cancel_and_wait, supervised
from shared.tracing import consumed

log = logging.getLogger(__name__)

PULL_EXPIRES = 0.5
"""Longest wait of one pull request; stopping waits for the current one to end."""


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
        self._http: HttpFlows | None = None
        self._reconnected_at = 0.0
        """When the connection to NATS last came back (seconds since the epoch; 0: never)."""
        self.readiness = Readiness()

    def _note_reconnect(self) -> None:
        self._reconnected_at = time.time()

    async def start(self) -> None:
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
        admission = KvAdmission(
            await bucket(js, subjects.RUN_SLOTS_BUCKET),
            store.is_finished,
            cancel_runs.cancel_quietly,
        )
        cancel_runs.admission = admission
        self._http = HttpFlows(
            parse_networks(self._settings.runner_http_allowed_networks),
            max_response_bytes=self._settings.runner_http_max_response_bytes,
        )
        # A third of the ack wait: a beat may be late by one interval and still be in time.
        in_progress = InProgress(self._settings.runner_ack_wait / 3)
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
        consume = functools.partial(self._consume, nc, start_flow)
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
        await cancel_and_wait(self._consumer_loop)
        self._consumer_loop = None
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

    async def _consume(self, nc: Client, start_flow: StartFlow) -> None:
        """Pull as many starts as there are free slots, and handle each in its own task.

        Under load it waits for a quarter of the slots to be free before it pulls again: a
        pull is a round trip, and one per finished run would cost more than the runs.
        """
        concurrency = self._settings.runner_concurrency

        def dispatch(msg: Msg) -> None:
            active = tracing.tracer()
            handling = start_flow(msg) if active is None else consumed(active, msg, start_flow)
            task = asyncio.create_task(handling)
            self._in_flight.add(task)
            task.add_done_callback(finished)

        def finished(task: asyncio.Task[None]) -> None:
            self._in_flight.discard(task)
            puller.freed.set()

        puller = Puller(
            nc,
            subjects.FLOW_STARTS_STREAM,
            subjects.RUNNER_CONSUMER,
            capacity=lambda: concurrency - len(self._in_flight),
            dispatch=dispatch,
            least=max(1, concurrency // 4),
            expires=PULL_EXPIRES,
        )
        await puller.run()


def create_app(
    settings: RunnerSettings,
    *,
    clock: Clock = utc_now,
    functions: FlowRegistry = flows,
) -> RunnerApp:
    """The runner, serving the flow functions of `functions` (by default, the `@flow` ones)."""
    return RunnerApp(settings, clock=clock, functions=functions)
