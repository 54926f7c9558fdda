"""Wiring of the scheduler: NATS connection, trigger mirror, JetStream timers and the tick loop."""

import asyncio
import contextlib
import gc
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts import subjects
from contracts.registry import Trigger
from contracts.runs import FlowStart, RunEvent
from contracts.scheduling import FireRecord, ScheduleTick
from services.scheduler.handlers import (
    SERVICE,
    Clock,
    Scheduler,
    consume_tick,
    fire_key,
    now_utc,
)
from services.scheduler.settings import SchedulerSettings
from shared import broker, jetstream
from shared.codec import decode, decoder, encode
from shared.kv_mirror import KvMirror
from shared.pull import Puller
from shared.supervise import cancel_and_wait, supervised

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 5.0
"""Seconds one fetch of run events or parked timers waits for messages before it is renewed."""
STOP_TIMEOUT = 10.0
"""Seconds `stop` waits for ticks and timer updates in flight before giving up on them."""
RUN_EVENT_ACK_WAIT = 30.0
PUBLISH_TIMEOUT = 5.0
"""Seconds a publish waits for its JetStream acknowledgement before the work is retried."""
TICKS_PENDING = 100_000
"""Most ticks the replicas together hold unacknowledged (the server's default is 1,000, less
than one herd held until its due second)."""
PARKED_SCAN_BATCH = 1000
"""Timers and ticks one pull reads when the scheduler lists the heads at startup."""
PARKED_SCAN_INACTIVE = 30.0
"""Seconds after which the server removes the startup's timer-listing consumer if left behind."""


def at_header(goes_off_at: datetime) -> str:
    """`@at` value of a timer: RFC 3339 UTC to the millisecond (the server's timers go off
    within a millisecond or two of it), rounded up so it never goes off before `goes_off_at`."""
    moment = goes_off_at.astimezone(UTC)
    if moment.microsecond % 1000:
        moment += timedelta(microseconds=1000 - moment.microsecond % 1000)
    return f"@at {moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


class JetStreamTimers:
    """`Timers` as NATS message schedules: one `@at` message per trigger on its timer subject.

    The server republishes the due message to the trigger's tick subject `lead` seconds before
    the tick's due time (the scheduler holds it until then); the stream keeps one message per
    subject, so parking replaces the previous timer.
    """

    def __init__(self, js: JetStreamContext, writer: jetstream.Writer, lead: float = 0.0) -> None:
        self._js = js
        self._writer = writer
        self.lead = timedelta(seconds=lead)

    async def park(self, tick: ScheduleTick) -> None:
        await self._writer.publish(
            subjects.schedule_timer(tick.trigger_id),
            encode(tick),
            headers={
                "Nats-Schedule": at_header((tick.due_at or tick.scheduled_at) - self.lead),
                "Nats-Schedule-Target": subjects.schedule_tick(tick.trigger_id),
            },
        )

    async def parked(self, trigger_id: str) -> ScheduleTick | None:
        return await self._last(subjects.schedule_timer(trigger_id))

    async def last_gone_off(self, trigger_id: str) -> ScheduleTick | None:
        return await self._last(subjects.schedule_tick(trigger_id))

    async def _last(self, subject: str) -> ScheduleTick | None:
        try:
            stored = await self._js.get_last_msg(subjects.SCHEDULES_STREAM, subject)
        except NotFoundError:
            return None
        try:
            tick: ScheduleTick = decode(stored.data or b"", ScheduleTick)
        except msgspec.DecodeError:
            return None  # parking a fresh timer replaces it
        return tick

    async def head_versions(self) -> dict[str, int]:
        # A throwaway consumer over the timer and tick subjects (one message each): its
        # pending count says how many to expect, and pulls of a thousand fetch them.
        subscription = await self._js.pull_subscribe(
            ">",  # every subject of the stream: the timers and the ticks
            stream=subjects.SCHEDULES_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                inactive_threshold=PARKED_SCAN_INACTIVE,
                mem_storage=True,
            ),
        )
        timers: dict[str, int] = {}
        ticks: dict[str, int] = {}
        decode_tick = decoder(ScheduleTick).decode
        try:
            remaining = (await subscription.consumer_info()).num_pending
            while remaining > 0:
                try:
                    messages = await subscription.fetch(
                        min(remaining, PARKED_SCAN_BATCH), timeout=FETCH_TIMEOUT
                    )
                except TimeoutError:
                    break  # timers went off while we read: their ticks park anew
                remaining -= len(messages)
                for message in messages:
                    try:
                        tick: ScheduleTick = decode_tick(message.data)
                    except msgspec.DecodeError:
                        continue  # parking a fresh timer replaces it
                    gone_off = message.subject.startswith(subjects.SCHEDULE_TICK_PREFIX)
                    (ticks if gone_off else timers)[tick.trigger_id] = tick.trigger_version
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        return ticks | timers

    async def cancel(self, trigger_id: str) -> None:
        # The tick subject is purged too so that a deleted trigger leaves nothing behind.
        for subject in (subjects.schedule_timer(trigger_id), subjects.schedule_tick(trigger_id)):
            await self._js.purge_stream(subjects.SCHEDULES_STREAM, subject=subject)


class JetStreamStarts:
    """`Starts` as JetStream publishes to `flow.v1.start.<ws>`, de-duplicated by `Nats-Msg-Id`."""

    def __init__(self, writer: jetstream.Writer) -> None:
        self._writer = writer

    async def publish(self, start: FlowStart, msg_id: str) -> None:
        subject = subjects.flow_start(start.workspace_id)
        await self._writer.publish(subject, encode(start), {"Nats-Msg-Id": msg_id})


class JetStreamLedger:
    """`Ledger` as JetStream publishes to the trigger's `schedule.fire.<ws>.<trigger>` subject.

    The publish is awaited (PubAck) so a decision the scheduler acts on is stored; the message
    id makes replicas' identical decisions, and retried ticks, one entry.
    """

    def __init__(self, writer: jetstream.Writer) -> None:
        self._writer = writer

    async def record(self, entry: FireRecord) -> None:
        msg_id = f"{fire_key(entry.trigger_id, entry.scheduled_at)}:{entry.status}"
        await self._writer.publish(
            subjects.schedule_fire(entry.workspace_id, entry.trigger_id),
            encode(entry),
            {"Nats-Msg-Id": msg_id},
        )


def run_events_consumer_config() -> ConsumerConfig:
    """The durable consumer the scheduler replicas share to see runs skipped by overlap."""
    return ConsumerConfig(
        durable_name=subjects.SCHEDULER_RUN_EVENTS_CONSUMER,
        filter_subject=subjects.RUN_EVENTS_SKIPPED,
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=RUN_EVENT_ACK_WAIT,
    )


def tick_consumer_config(settings: SchedulerSettings) -> ConsumerConfig:
    """The durable pull consumer every scheduler replica shares to receive due ticks.

    A tick in the hands of a replica that dies comes back `tick_ack_wait` after its due time
    (it is delivered up to `timer_lead` before it). Held ticks are unacknowledged, so a herd
    of them needs room: `TICKS_PENDING`.
    """
    return ConsumerConfig(
        durable_name=subjects.SCHEDULER_CONSUMER,
        filter_subject=f"{subjects.SCHEDULE_TICK_PREFIX}.>",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.tick_ack_wait + settings.timer_lead,
        max_ack_pending=TICKS_PENDING,
    )


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
        self._js: JetStreamContext | None = None
        self._scheduler: Scheduler | None = None
        self._mirror_task: asyncio.Task[None] | None = None
        self._consume_task: asyncio.Task[None] | None = None
        self._run_events_task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect, follow the triggers, consume ticks and reconcile the parked timers."""
        self._nc = await broker.connect(self._settings.nats_url, SERVICE)
        js = self._js = self._nc.jetstream()
        await broker.ensure_topology(js, self._settings.nats_replicas)
        # The consumer exists before any timer is parked, so no tick can fire unseen.
        await self._ensure_consumers(js, self._settings)
        kv = await broker.bucket(js, subjects.TRIGGERS_BUCKET)
        # Keyed by trigger id: ticks and timers name triggers by id alone.
        mirror: KvMirror[Trigger] = KvMirror(
            kv, Trigger, on_change=self._on_trigger_change, key_of=subjects.record_id
        )
        # Every fire makes three confirmed writes: the lean writer's, not `js.publish`.
        writer = await jetstream.Writer.open(self._nc, PUBLISH_TIMEOUT)
        self._scheduler = Scheduler(
            mirror,
            JetStreamTimers(js, writer, self._settings.timer_lead),
            JetStreamStarts(writer),
            ledger=JetStreamLedger(writer),
            clock=self._clock,
            misfire_after=self._settings.misfire_after,
        )
        self._mirror_task = asyncio.create_task(
            supervised("scheduler trigger mirror", mirror.follow)
        )
        await mirror.ready.wait()
        # Ticks are handled while the timers are reconciled: at 100,000 triggers parking takes
        # seconds, and the first timers parked go off meanwhile. Both sides take the trigger's
        # lock and park the same next occurrence, so the order between them does not matter.
        self._consume_task = asyncio.create_task(supervised("scheduler tick loop", self._consume))
        await self._scheduler.reconcile()
        self._run_events_task = asyncio.create_task(
            supervised("scheduler run events", self._follow_run_events)
        )
        if self._tune_gc:  # the process is ours alone (not when embedded, as in tests)
            quiet_collector()
        log.info("scheduler follows %d triggers", len(mirror))

    async def stop(self) -> None:
        """Stop fetching ticks, finish those in hand, stop following triggers, drain."""
        await cancel_and_wait(self._consume_task)
        await cancel_and_wait(self._run_events_task)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=STOP_TIMEOUT)
        await cancel_and_wait(self._mirror_task)
        if self._scheduler is not None:
            await self._scheduler.settle(STOP_TIMEOUT)
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    def _on_trigger_change(self, key: str, old: Trigger | None, new: Trigger | None) -> None:
        if self._scheduler is not None:
            self._scheduler.on_trigger_change(key, old, new)

    @staticmethod
    async def _ensure_consumers(js: JetStreamContext, settings: SchedulerSettings) -> None:
        # Created, or updated in place (the server's create-or-update), so a new ack wait or
        # pending limit reaches a deployment whose consumer an older version created.
        await js.add_consumer(subjects.SCHEDULES_STREAM, tick_consumer_config(settings))
        try:
            info = await js.consumer_info(
                subjects.RUN_EVENTS_STREAM, subjects.SCHEDULER_RUN_EVENTS_CONSUMER
            )
        except NotFoundError:
            await js.add_consumer(subjects.RUN_EVENTS_STREAM, run_events_consumer_config())
        else:
            if info.config.filter_subject != subjects.RUN_EVENTS_SKIPPED:
                # An older version's consumer sees every run event: narrow it in place.
                await js.add_consumer(subjects.RUN_EVENTS_STREAM, run_events_consumer_config())

    async def _follow_run_events(self) -> None:
        """Turn runs of schedule fires skipped by overlap into ledger entries (supervised)."""
        assert self._js is not None
        assert self._scheduler is not None
        js, scheduler = self._js, self._scheduler
        subscription = await js.pull_subscribe(
            subjects.RUN_EVENTS_SKIPPED,
            durable=subjects.SCHEDULER_RUN_EVENTS_CONSUMER,
            stream=subjects.RUN_EVENTS_STREAM,
            config=run_events_consumer_config(),
        )
        try:
            while True:
                try:
                    messages = await subscription.fetch(256, timeout=FETCH_TIMEOUT)
                except TimeoutError:
                    continue
                for message in messages:
                    try:
                        event = decode(message.data, RunEvent)
                    except msgspec.DecodeError:
                        await message.ack()  # not ours to dead-letter: the runner wrote it
                        continue
                    await scheduler.record_overlap_skip(event.run)
                    await message.ack()
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _consume(self) -> None:
        """Pull due ticks and handle each in its own task (run it under `supervised`)."""
        assert self._nc is not None
        assert self._js is not None
        assert self._scheduler is not None
        js, scheduler = self._js, self._scheduler
        retry_delay = self._settings.tick_retry_delay
        # Ticks are handled as they come, up to `ticks_in_flight` at once: the next pull does
        # not wait for the slowest tick of the previous one, and the publishes of every tick in
        # hand share the connection (pipelined) instead of taking turns. A tick held until its
        # due time gives its place up (the consumer's pending limit bounds those).
        limit, batch = self._settings.ticks_in_flight, self._settings.tick_batch
        tasks = self._in_flight
        busy: set[asyncio.Task[None]] = set()

        def free(task: asyncio.Task[Any] | None) -> None:
            busy.discard(task)
            puller.freed.set()

        def held() -> None:  # called by a tick's own task as it starts to wait
            free(asyncio.current_task())

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            free(task)

        def dispatch(message: Msg) -> None:
            # Not cancelled with the pull loop: stopping lets the ticks in hand finish instead
            # of leaving them unacknowledged until the ack wait runs out.
            task = asyncio.get_running_loop().create_task(
                consume_tick(scheduler, js, message, retry_delay=retry_delay, on_hold=held)
            )
            tasks.add(task)
            busy.add(task)
            task.add_done_callback(done)

        puller = Puller(
            self._nc,
            subjects.SCHEDULES_STREAM,
            subjects.SCHEDULER_CONSUMER,
            capacity=lambda: min(batch, limit - len(busy)),
            dispatch=dispatch,
        )
        await puller.run()


def create_app(
    settings: SchedulerSettings, *, clock: Clock = now_utc, tune_gc: bool = False
) -> SchedulerApp:
    """The scheduler, not yet started (no connection is made until `start`). `tune_gc`: the
    process runs nothing else, so the collector is tuned for it (`quiet_collector`)."""
    return SchedulerApp(settings, clock=clock, tune_gc=tune_gc)
