"""The scheduler's NATS side: timers in the SCHEDULES stream, the ledger and `flow.v1.start`
writes, the shared consumers, the tick puller and the run-event loop.

`JetStreamTimers`, `JetStreamStartPublisher` and `JetStreamLedger` implement the core's
`Timers`, `StartPublisher` and `Ledger`; the loops hand each message to a handler
(`handlers.py`) and know nothing of what it means.
"""

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError

from contracts import subjects
from contracts.runs import FlowStart
from contracts.scheduling import FireRecord, ScheduleTick
from services.scheduler.core import ledger_entry_id, supersedes
from services.scheduler.settings import SchedulerSettings
from shared import jetstream, tracing
from shared.broker import MAX_DELIVER
from shared.codec import decode, decoder, encode
from shared.pull import Puller
from shared.stream_read import read_subject

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 5.0
"""Seconds one fetch of run events or parked timers waits for messages before it is renewed."""
RUN_EVENT_ACK_WAIT = 30.0
PUBLISH_TIMEOUT = 5.0
"""Seconds a publish waits for its JetStream acknowledgement before the work is retried."""
PARK_ATTEMPTS = 10
"""Most times a park is refused because the chain moved before it gives up (each refusal means
another replica or a timer moved it; the head is read again every time)."""
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
"""Names the subjects (wildcards allowed) whose last sequence `Nats-Expected-Last-Subject-
Sequence` is checked against, instead of the published subject alone (nats-server 2.11+)."""
FIRST_VERSION = 1
"""The version of a trigger as created (`Trigger.version`)."""
TICKS_PENDING = 100_000
"""Most ticks the replicas together hold unacknowledged (the server's default is 1,000, less
than one herd held until its due second)."""


class Alarm:
    """The core's `Sleep` with one timer for every sleep: a herd's ticks are all held until
    the same due second, and one asyncio timer each costs more than the hold is worth.

    Measured on 2 cores, 10,000 sleeps ending at the same moment: 28-29 us of CPU each with
    `asyncio.sleep`, 17-18 us here. Sleeps end in the order of their ends, every sleep due in
    the same turn of the event loop (waking the due ones a chunk per turn was measured too: it
    spread the ledger writes between the starts, and a herd's last start came later).
    """

    def __init__(self, flush: Callable[[], None] | None = None, flush_every: int = 500) -> None:
        self._flush = flush
        self._flush_every = flush_every
        self._sleepers: list[
            tuple[float, int, asyncio.Future[None], Callable[[], None] | None]
        ] = []
        self._order = itertools.count()
        self._ring_at: float | None = None
        self._ringing: asyncio.TimerHandle | None = None

    async def sleep(self, seconds: float, then: Callable[[], None] | None = None) -> None:
        """Sleep `seconds`; `then` is called the moment they are over, in the same turn of the
        event loop as every other sleep due then, before any of the sleepers resumes."""
        loop = asyncio.get_running_loop()
        wake = loop.create_future()
        at = loop.time() + seconds
        heapq.heappush(self._sleepers, (at, next(self._order), wake, then))
        if self._ring_at is None or at < self._ring_at:
            self._ring(loop, at)
        await wake

    def _ring(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._ringing is not None:
            self._ringing.cancel()
        self._ring_at = at
        self._ringing = loop.call_at(at, self._wake, loop)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ringing = self._ring_at = None
        sleepers, now = self._sleepers, loop.time()
        flush, flush_every, called = self._flush, self._flush_every, 0
        while sleepers and sleepers[0][0] <= now:
            _, _, wake, then = heapq.heappop(sleepers)
            if wake.done():  # a cancelled sleep leaves its future behind
                continue
            if then is not None:
                try:
                    then()
                except Exception:
                    log.exception("an alarm's callback failed")
                called += 1
                if flush is not None and called % flush_every == 0:
                    flush()  # the server stores these while the next ones are sent
            wake.set_result(None)
        if flush is not None and called % flush_every:
            flush()
        if sleepers:
            self._ring(loop, sleepers[0][0])


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
    subject, so parking replaces the previous timer. The newest message on the two subjects
    (`subjects.schedule_chain`) is the head of the trigger's chain: parking publishes with the
    head's sequence as `Nats-Expected-Last-Subject-Sequence` over both subjects, so a timer
    parked, or going off, meanwhile makes the server refuse it and the head is judged again.
    """

    def __init__(self, js: JetStreamContext, writer: jetstream.Writer, lead: float = 0.0) -> None:
        self._js = js
        self._writer = writer
        self.lead = timedelta(seconds=lead)

    async def park(self, tick: ScheduleTick, *, seen: int | None = None) -> bool:
        trigger_id = tick.trigger_id
        headers = {
            "Nats-Schedule": at_header((tick.due_at or tick.scheduled_at) - self.lead),
            "Nats-Schedule-Target": subjects.schedule_tick(trigger_id),
            EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: subjects.schedule_chain(trigger_id),
        }
        payload = encode(tick)
        expected = seen
        for _ in range(PARK_ATTEMPTS):
            if expected is None:
                head, expected = await self._head(trigger_id)
                if head is not None and not supersedes(tick, head):
                    return False
            headers[jetstream.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
            writer = self._writer
            try:
                await writer.send(
                    writer.prepare(subjects.schedule_timer(trigger_id), payload, headers)
                )
            except KeyWrongLastSequenceError:
                if seen == 0 and tick.trigger_version == FIRST_VERSION:
                    # A new trigger's chain, parked by another replica that saw the creation
                    # too (see `Timers.park`): with replicas, every creation meets one.
                    return False
                expected = None  # the chain moved: judge its new head
                continue
            return True
        raise RuntimeError(f"the timers of trigger {trigger_id} kept moving while parking")

    async def parked(self, trigger_id: str) -> ScheduleTick | None:
        tick, _ = await self._last(subjects.schedule_timer(trigger_id))
        return tick

    async def _head(self, trigger_id: str) -> tuple[ScheduleTick | None, int]:
        """The head of the trigger's chain (its parked timer, or its tick that went off last)
        and its stream sequence (0 when the trigger has neither)."""
        return await self._last(subjects.schedule_chain(trigger_id))

    async def _last(self, subject: str) -> tuple[ScheduleTick | None, int]:
        try:
            stored = await self._js.get_last_msg(subjects.SCHEDULES_STREAM, subject)
        except NotFoundError:
            return None, 0
        try:
            tick: ScheduleTick = decode(stored.data or b"", ScheduleTick)
        except msgspec.DecodeError:
            return None, stored.seq or 0  # parking a fresh timer replaces it
        return tick, stored.seq or 0

    async def head_versions(self) -> dict[str, int]:
        # The newest message of every timer and tick subject (one each), read once.
        timers: dict[str, int] = {}
        ticks: dict[str, int] = {}
        decode_tick = decoder(ScheduleTick).decode
        reads = read_subject(
            self._js,
            subjects.SCHEDULES_STREAM,
            ">",  # every subject of the stream: the timers and the ticks
            last_per_subject=True,
            timeout=FETCH_TIMEOUT,
            partial=True,  # timers went off while we read: their ticks park anew
        )
        async with contextlib.aclosing(reads) as batches:
            async for batch in batches:
                for message in batch:
                    try:
                        tick: ScheduleTick = decode_tick(message.data)
                    except msgspec.DecodeError:
                        continue  # parking a fresh timer replaces it
                    gone_off = message.subject.startswith(subjects.SCHEDULE_TICK_PREFIX)
                    (ticks if gone_off else timers)[tick.trigger_id] = tick.trigger_version
        return ticks | timers

    async def cancel(self, trigger_id: str) -> None:
        # The tick subject is purged too so that a deleted trigger leaves nothing behind.
        for subject in (subjects.schedule_timer(trigger_id), subjects.schedule_tick(trigger_id)):
            await self._js.purge_stream(subjects.SCHEDULES_STREAM, subject=subject)


class PreparedWrite:
    """A core `Write` of the writer's wire form: encoded when made, put on the wire by `send`."""

    __slots__ = ("_prepared", "_writer")

    def __init__(self, writer: jetstream.Writer, prepared: jetstream.Prepared) -> None:
        self._writer = writer
        self._prepared = prepared

    def send(self) -> Awaitable[object]:
        return self._writer.send(self._prepared)


class TracedWrite:
    """A core `Write` in a trace span of its own (a fire starts a trace: nothing before it
    belongs to one): encoded when sent, since the span begins then."""

    __slots__ = ("_headers", "_start", "_subject", "_tracer", "_writer")

    def __init__(
        self, writer: jetstream.Writer, tracer: Any, subject: str, start: FlowStart, msg_id: str
    ) -> None:
        self._writer = writer
        self._tracer = tracer
        self._subject = subject
        self._start = start
        self._headers = {"Nats-Msg-Id": msg_id}

    def send(self) -> Awaitable[object]:
        return self._publish()

    async def _publish(self) -> None:
        with tracing.producer_span(
            self._tracer, self._subject, self._start, self._headers, root=True
        ):
            await self._writer.publish(self._subject, encode(self._start), self._headers)


class JetStreamStartPublisher:
    """`StartPublisher` as JetStream publishes to `flow.v1.start.<ws>`, de-duplicated by
    `Nats-Msg-Id`; each start is encoded when prepared (before its due moment)."""

    def __init__(self, writer: jetstream.Writer) -> None:
        self._writer = writer

    def prepare(self, start: FlowStart, msg_id: str) -> PreparedWrite | TracedWrite:
        subject = subjects.flow_start(start.workspace_id)
        active = tracing.tracer()
        if active is not None:
            return TracedWrite(self._writer, active, subject, start, msg_id)
        writer = self._writer
        return PreparedWrite(
            writer, writer.prepare(subject, encode(start), {"Nats-Msg-Id": msg_id})
        )


class JetStreamLedger:
    """`Ledger` as JetStream publishes to the trigger's `schedule.fire.<ws>.<trigger>` subject.

    The publish is awaited (PubAck) so a decision the scheduler acts on is stored; the message
    id (`ledger_entry_id`) makes every decision about one occurrence one entry.
    """

    def __init__(self, js: JetStreamContext, writer: jetstream.Writer) -> None:
        self._js = js
        self._writer = writer

    async def last_decided(self, workspace_id: str, trigger_id: str) -> datetime | None:
        subject = subjects.schedule_fire(workspace_id, trigger_id)
        try:
            stored = await self._js.get_last_msg(subjects.SCHEDULE_FIRES_STREAM, subject)
        except NotFoundError:
            return None
        try:
            entry: FireRecord = decode(stored.data or b"", FireRecord)
        except msgspec.DecodeError:
            return None
        return entry.scheduled_at

    async def record(self, entry: FireRecord) -> None:
        writer = self._writer
        await writer.send(
            writer.prepare(
                subjects.schedule_fire(entry.workspace_id, entry.trigger_id),
                encode(entry),
                {"Nats-Msg-Id": ledger_entry_id(entry)},
            )
        )


TICK_MAX_DELIVER = 100
"""Deliveries of one tick (a tick handed back every `tick_retry_delay`, about a minute and a
half by default, outlasts a leader election); the last one is dead-lettered with its reason."""
RUN_EVENT_MAX_DELIVER = MAX_DELIVER
"""Deliveries of one run event to the scheduler; the last one is dead-lettered."""


def run_events_consumer_config() -> ConsumerConfig:
    """The durable consumer the scheduler replicas share to see runs skipped by overlap."""
    return ConsumerConfig(
        durable_name=subjects.SCHEDULER_RUN_EVENTS_CONSUMER,
        filter_subject=subjects.RUN_EVENTS_SKIPPED,
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=RUN_EVENT_ACK_WAIT,
        max_deliver=RUN_EVENT_MAX_DELIVER,
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
        max_deliver=TICK_MAX_DELIVER,
    )


async def ensure_consumers(js: JetStreamContext, settings: SchedulerSettings) -> None:
    """Create the tick and run-event consumers the replicas share (safe for each to call)."""
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
        wanted = run_events_consumer_config()
        if (info.config.filter_subject, info.config.max_deliver) != (
            wanted.filter_subject,
            wanted.max_deliver,
        ):
            # An older version's consumer sees every run event, or without a delivery limit:
            # bring it up to date in place.
            await js.add_consumer(subjects.RUN_EVENTS_STREAM, run_events_consumer_config())


async def follow_run_events(js: JetStreamContext, handle: Callable[[Msg], Awaitable[None]]) -> None:
    """Hand every run event to `handle`, one after the other (run it under `supervised`)."""
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
                await handle(message)
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()


TickHandler = Callable[[Msg, Callable[[], None]], Coroutine[Any, Any, None]]
"""Handles one tick message; calls its second argument when it starts to hold the tick."""


class TickPuller:
    """Pulls due ticks from the shared consumer and handles each in its own task.

    Ticks are handled as they come, up to `limit` at once: the next pull does not wait for the
    slowest tick of the previous one, and the publishes of every tick in hand share the
    connection (pipelined) instead of taking turns. A tick held until its due time gives its
    place up (the consumer's pending limit bounds those). `in_flight` holds every tick's task;
    they are not cancelled with the pull loop, so stopping lets the ticks in hand finish
    instead of leaving them unacknowledged until the ack wait runs out.
    """

    def __init__(self, nc: Client, handle: TickHandler, *, batch: int, limit: int) -> None:
        self._nc = nc
        self._handle = handle
        self._batch = batch
        self._limit = limit
        self.in_flight: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Pull until cancelled (run it under `supervised`)."""
        limit, batch = self._limit, self._batch
        tasks = self.in_flight
        busy: set[asyncio.Task[None]] = set()
        handle = self._handle

        def free(task: asyncio.Task[Any] | None) -> None:
            busy.discard(task)
            puller.freed.set()

        def held() -> None:  # called by a tick's own task as it starts to wait
            free(asyncio.current_task())

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            free(task)

        def dispatch(message: Msg) -> None:
            task = asyncio.get_running_loop().create_task(handle(message, held))
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

    async def finish(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the ticks in hand."""
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=timeout)
