"""`create_app`: all of the runner's wiring, and the loop that pulls `flow.start` messages."""

import asyncio
import contextlib
import functools
import logging

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from contracts import subjects
from contracts.registry import Flow
from services.runner.executor import Clock, utc_now
from services.runner.flows import FlowRegistry, flows
from services.runner.handlers import SERVICE, StartFlow
from services.runner.settings import RunnerSettings
from shared.broker import bucket, connect, ensure_topology
from shared.kv_mirror import KvMirror
from shared.supervise import supervised

log = logging.getLogger(__name__)

ACK_WAIT = 30.0
"""Seconds JetStream waits for an ack or an in-progress beat before redelivering a start."""
FETCH_TIMEOUT = 0.5
"""Longest wait of one pull request; stopping waits for the current one to end."""
STOP_GRACE = 30.0
"""Seconds `stop()` lets runs in flight finish before handing them back."""


class RunnerApp:
    """The runner service: a flows mirror and a pull consumer on `flow.start`."""

    def __init__(self, settings: RunnerSettings, *, clock: Clock, functions: FlowRegistry) -> None:
        self._settings = settings
        self._clock = clock
        self._functions = functions
        self._nc: Client | None = None
        self._mirror_loop: asyncio.Task[None] | None = None
        self._consumer_loop: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._nc = nc = await connect(self._settings.nats_url, SERVICE)
        js = nc.jetstream()
        await ensure_topology(js, self._settings.nats_replicas)
        flows_bucket = await bucket(js, subjects.FLOWS_BUCKET)
        mirror = KvMirror(flows_bucket, Flow)
        self._mirror_loop = asyncio.create_task(supervised("flows mirror", mirror.follow))
        await mirror.ready.wait()
        start_flow = StartFlow(
            js=js,
            runs=await bucket(js, subjects.RUNS_BUCKET),
            flows=flows_bucket,
            mirror=mirror,
            functions=self._functions,
            clock=self._clock,
        )
        consume = functools.partial(self._consume, js, start_flow)
        self._consumer_loop = asyncio.create_task(supervised("flow.start consumer", consume))
        log.info("runner serves flow functions: %s", ", ".join(self._functions.names()))

    async def stop(self) -> None:
        # The consumer goes first (it finishes its current pull request), the mirror last:
        # runs in flight may still be looking their flow up.
        await _cancel(self._consumer_loop)
        if self._in_flight:
            log.info("waiting for %d runs in flight", len(self._in_flight))
            _, unfinished = await asyncio.wait(self._in_flight, timeout=STOP_GRACE)
            for task in unfinished:
                await _cancel(task)
        await _cancel(self._mirror_loop)
        self._consumer_loop = self._mirror_loop = None
        if self._nc is not None:
            await self._nc.drain()

    async def _consume(self, js: JetStreamContext, start_flow: StartFlow) -> None:
        """Pull as many starts as there are free slots, and handle each in its own task."""
        subscription = await js.pull_subscribe(
            subjects.FLOW_START,
            durable=subjects.RUNNER_CONSUMER,
            stream=subjects.FLOW_STARTS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT),
        )
        try:
            while True:
                free = self._settings.runner_concurrency - len(self._in_flight)
                if free <= 0:
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for msg in await _fetch(subscription, free):
                    task = asyncio.create_task(start_flow(msg))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


async def _fetch(subscription: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
    """Up to `batch` messages, or none after `FETCH_TIMEOUT`.

    Cancelling lets the pull request run out first and hands back what it brought; otherwise
    a message the server delivers after we stop listening would sit out its whole ack wait.
    """
    fetch = asyncio.ensure_future(subscription.fetch(batch, timeout=FETCH_TIMEOUT))
    try:
        return await asyncio.shield(fetch)
    except nats.errors.TimeoutError:
        return []
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            for msg in await fetch:
                await msg.nak()
        raise


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    settings: RunnerSettings,
    *,
    clock: Clock = utc_now,
    functions: FlowRegistry = flows,
) -> RunnerApp:
    """The runner, serving the flow functions of `functions` (by default, the `@flow` ones)."""
    return RunnerApp(settings, clock=clock, functions=functions)
