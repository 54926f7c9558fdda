"""Wiring of the scheduler: connection, trigger mirror, core, adapters and loops (`create_app`)."""

import asyncio
import gc
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts import subjects
from contracts.registry import Trigger
from services.scheduler import adapters, handlers, metrics
from services.scheduler.core import Clock, Scheduler, now_utc
from services.scheduler.settings import SchedulerSettings
from shared import broker, jetstream
from shared.kv_mirror import KvMirror
from shared.metrics import Readiness, sample_consumers
from shared.supervise import cancel_and_wait, supervised

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
"""Seconds `stop` waits for ticks and timer updates in flight before giving up on them."""

GC_THRESHOLDS = (700, 10, 1000)
"""Young objects before a collection, and collections of each generation before one of the
next (CPython's default: 700, 10, 10)."""


def quiet_collector() -> None:
    """Keep the garbage collector's pauses away from the fires.

    Measured at 100,000 triggers and 1,667 fires a second: with CPython's defaults a full
    collection ran about every second and took 70-120 ms (the triggers, and the coroutines of
    the ticks held until their due time), delaying every start due meanwhile. The triggers
    loaded at start live as long as the process, so they are frozen out of collections; the
    thresholds make full collections rare (minutes apart) and young ones cheap.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class SchedulerApp:
    """The scheduler service: follows the triggers, keeps their timers parked, fires ticks."""

    def __init__(
        self, settings: SchedulerSettings, *, clock: Clock = now_utc, tune_gc: bool = False
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._tune_gc = tune_gc
        self._nc: Client | None = None
        self._scheduler: Scheduler | None = None
        self._ticks: adapters.TickPuller | None = None
        self._mirror_task: asyncio.Task[None] | None = None
        self._consume_task: asyncio.Task[None] | None = None
        self._run_events_task: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self.readiness = Readiness()

    async def start(self) -> None:
        """Connect, follow the triggers, consume ticks and reconcile the parked timers."""
        settings = self._settings
        nc = self._nc = await broker.connect(settings.nats_url, handlers.SERVICE)
        js = nc.jetstream()
        await broker.ensure_topology(js, settings.nats_replicas)
        # The consumer exists before any timer is parked, so no tick can fire unseen.
        await adapters.ensure_consumers(js, settings)
        # Keyed by trigger id: ticks and timers name triggers by id alone.
        mirror: KvMirror[Trigger] = KvMirror(
            js,
            subjects.TRIGGERS_BUCKET,
            Trigger,
            on_change=self._on_trigger_change,
            key_of=subjects.record_id,
        )
        # Every fire makes three confirmed writes: the lean writer's, not `js.publish`.
        writer = await jetstream.Writer.open(nc, adapters.PUBLISH_TIMEOUT)
        # The starts of the held ticks due at one moment are sent from the alarm's callbacks,
        # and written a chunk at a time as they are.
        alarm = adapters.Alarm(flush=writer.flush)
        scheduler = self._scheduler = Scheduler(
            mirror,
            adapters.JetStreamTimers(js, writer, settings.timer_lead),
            metrics.MeasuredStartPublisher(adapters.JetStreamStartPublisher(writer)),
            ledger=metrics.CountedLedger(adapters.JetStreamLedger(js, writer)),
            clock=self._clock,
            sleep=alarm.sleep,
            wake_sleep=alarm.sleep,
            misfire_after=settings.misfire_after,
        )
        retry_delay = settings.tick_retry_delay

        def handle_tick(message: Msg, on_hold: Callable[[], None]) -> Coroutine[Any, Any, None]:
            return handlers.handle_tick(
                scheduler, js, message, retry_delay=retry_delay, on_hold=on_hold
            )

        ticks = self._ticks = adapters.TickPuller(
            nc, handle_tick, batch=settings.tick_batch, limit=settings.ticks_in_flight
        )
        self._mirror_task = asyncio.create_task(
            supervised("scheduler trigger mirror", mirror.follow)
        )
        await mirror.ready.wait()
        # Ticks are handled while the timers are reconciled: at 100,000 triggers parking takes
        # seconds, and the first timers parked go off meanwhile. Both sides take the trigger's
        # lock and park the same next occurrence, so the order between them does not matter.
        self._consume_task = asyncio.create_task(supervised("scheduler tick loop", ticks.run))
        await scheduler.reconcile()
        self._run_events_task = asyncio.create_task(
            supervised(
                "scheduler run events",
                lambda: adapters.follow_run_events(
                    js, lambda message: handlers.handle_run_event(scheduler, message, js)
                ),
            )
        )
        self._observe(nc, js, mirror)
        if self._tune_gc:  # the process is ours alone (not when embedded, as in tests)
            quiet_collector()
        log.info("scheduler follows %d triggers", len(mirror))

    def _observe(self, nc: Client, js: JetStreamContext, mirror: KvMirror[Trigger]) -> None:
        """Readiness checks (`/readyz`) and the sampling of the shared consumers' counts."""
        self.readiness.require("nats", lambda: nc.is_connected)
        self.readiness.require("triggers mirror", mirror.ready.is_set)
        self.readiness.require("tick consumer", lambda: self._consume_task is not None)
        consumers = [
            (subjects.SCHEDULES_STREAM, subjects.SCHEDULER_CONSUMER),
            (subjects.RUN_EVENTS_STREAM, subjects.SCHEDULER_RUN_EVENTS_CONSUMER),
        ]
        self._metrics_task = asyncio.create_task(
            supervised("consumer metrics", lambda: sample_consumers(js, consumers))
        )

    async def stop(self) -> None:
        """Stop fetching ticks, finish those in hand, stop following triggers, drain."""
        await cancel_and_wait(self._consume_task)
        await cancel_and_wait(self._run_events_task)
        await cancel_and_wait(self._metrics_task)
        if self._ticks is not None:
            await self._ticks.finish(STOP_TIMEOUT)
        await cancel_and_wait(self._mirror_task)
        if self._scheduler is not None:
            await self._scheduler.settle(STOP_TIMEOUT)
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    def _on_trigger_change(self, key: str, old: Trigger | None, new: Trigger | None) -> None:
        if self._scheduler is not None:
            self._scheduler.on_trigger_change(key, old, new)


def create_app(
    settings: SchedulerSettings, *, clock: Clock = now_utc, tune_gc: bool = False
) -> SchedulerApp:
    """The scheduler, not yet started (no connection is made until `start`). `tune_gc`: the
    process runs nothing else, so the collector is tuned for it (`quiet_collector`)."""
    return SchedulerApp(settings, clock=clock, tune_gc=tune_gc)
