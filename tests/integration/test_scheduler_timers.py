"""The scheduler against a real nats-server: timers parked as NATS message schedules.

The test plays the registry by writing trigger records into the triggers bucket, and watches
`flow.start` with a core subscription (the work-queue stream allows no second consumer).
"""

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.registry import CronSchedule, OnceSchedule, ScheduleTrigger, Trigger
from contracts.runs import DeadLetter, FlowStart, Run, RunEvent
from contracts.scheduling import FireRecord, ScheduleTick
from services.ingress.adapters import read_ledger
from services.scheduler.adapters import TICKS_PENDING, JetStreamTimers
from services.scheduler.app import SchedulerApp, create_app
from services.scheduler.settings import SchedulerSettings
from shared import jetstream
from shared.broker import stream_configs
from shared.codec import decode, encode
from shared.ids import new_id

EVERY_SECOND = "* * * * * *"
NEVER_DURING_THE_TEST = "0 0 1 1 *"  # once a year


def now() -> datetime:
    return datetime.now(UTC)


def schedule_trigger(cron: str, **changes) -> Trigger:
    trigger = ScheduleTrigger(
        id=new_id("trg"),
        workspace_id=new_id("wsp"),
        flow_id=new_id("flw"),
        schedule=CronSchedule(cron=cron),
        created_at=now(),
        updated_at=now(),
    )
    return msgspec.structs.replace(trigger, **changes)


def changed(trigger: Trigger, **changes) -> Trigger:
    """`trigger` as the registry would store it after a change: the version goes up."""
    return msgspec.structs.replace(trigger, version=trigger.version + 1, **changes)


class Registry:
    """Writes trigger records the way the registry does; forgets them after the test."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._written: dict[str, str] = {}
        """trigger id -> its key in the bucket"""

    async def put(self, trigger: Trigger) -> None:
        key = subjects.record_key(trigger.workspace_id, trigger.id)
        await self._kv.put(key, encode(trigger))
        self._written[trigger.id] = key

    async def delete(self, trigger_id: str) -> None:
        await self._kv.delete(self._written[trigger_id])

    async def forget_all(self) -> None:
        for key in self._written.values():
            await self._kv.delete(key)


class StartLog:
    """Every `FlowStart` published while the test runs, seen through a core subscription."""

    def __init__(self) -> None:
        self.seen: list[FlowStart] = []

    async def record(self, msg: Msg) -> None:
        self.seen.append(decode(msg.data, FlowStart))

    def of(self, trigger_id: str) -> list[FlowStart]:
        return [start for start in self.seen if start.trigger_id == trigger_id]

    async def wait_for(self, matches: Callable[[FlowStart], bool], timeout: float) -> FlowStart:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for start in self.seen:
                if matches(start):
                    return start
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no matching start within {timeout}s; saw {self.seen}")
            await asyncio.sleep(0.02)

    async def assert_none(self, matches: Callable[[FlowStart], bool], during: float) -> None:
        deadline = asyncio.get_running_loop().time() + during
        while asyncio.get_running_loop().time() < deadline:
            unexpected = [start for start in self.seen if matches(start)]
            assert not unexpected, f"unexpected starts: {unexpected}"
            await asyncio.sleep(0.05)


async def poll(check: Callable[[], object], timeout: float, what: str) -> None:
    """Await `check()` (a coroutine returning truthy when done) until it holds or time runs out."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():  # type: ignore[misc]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.02)


async def started_scheduler(nats_url: str) -> SchedulerApp:
    app = create_app(SchedulerSettings(nats_url=nats_url))
    await app.start()
    return app


@pytest.fixture
async def registry(js: JetStreamContext) -> AsyncIterator[Registry]:
    writer = Registry(await js.key_value(subjects.TRIGGERS_BUCKET))
    yield writer
    await writer.forget_all()


@pytest.fixture
async def starts(nc: Client) -> AsyncIterator[StartLog]:
    log = StartLog()
    subscription = await nc.subscribe(subjects.FLOW_STARTS, cb=log.record)
    await nc.flush()
    yield log
    await subscription.unsubscribe()


@pytest.fixture
async def scheduler(nats_url: str) -> AsyncIterator[SchedulerApp]:
    app = await started_scheduler(nats_url)
    try:
        yield app
    finally:
        await app.stop()


def is_whole_second(moment: datetime | None) -> bool:
    return moment is not None and moment.microsecond == 0


@pytest.mark.usefixtures("scheduler")
async def test_a_per_second_schedule_starts_its_flow_every_second(
    registry: Registry, starts: StartLog
):
    trigger = schedule_trigger(EVERY_SECOND)
    await registry.put(trigger)

    await starts.wait_for(lambda _: len(starts.of(trigger.id)) >= 2, timeout=3.5)

    fired = starts.of(trigger.id)
    assert all(is_whole_second(start.scheduled_at) for start in fired)
    assert len({start.scheduled_at for start in fired}) == len(fired)
    assert len({start.run_id for start in fired}) == len(fired)
    for start in fired:
        assert start.source == "schedule"
        assert start.workspace_id == trigger.workspace_id
        assert start.flow_id == trigger.flow_id
        assert start.requested_at is not None
        assert start.scheduled_at is not None
        assert start.requested_at >= start.scheduled_at


@pytest.mark.usefixtures("scheduler")
async def test_a_one_off_due_before_the_scheduler_handles_its_creation_still_starts_its_flow(
    registry: Registry, starts: StartLog
):
    # As when the scheduler is busy with a herd of creations: by the time it handles this one,
    # its moment has passed. Its timer is parked due and goes off at once.
    created = now() - timedelta(seconds=3)
    at = (created + timedelta(seconds=1)).replace(microsecond=0)
    trigger = schedule_trigger(
        NEVER_DURING_THE_TEST, schedule=OnceSchedule(at=at), created_at=created
    )
    await registry.put(trigger)

    fired = await starts.wait_for(lambda start: start.trigger_id == trigger.id, timeout=5)
    assert fired.scheduled_at == at
    await starts.assert_none(
        lambda start: start.trigger_id == trigger.id and start is not fired, during=1.0
    )


@pytest.mark.usefixtures("scheduler")
async def test_pausing_stops_the_fires_and_resuming_restarts_them(
    registry: Registry, starts: StartLog
):
    trigger = schedule_trigger(EVERY_SECOND)
    await registry.put(trigger)
    await starts.wait_for(lambda start: start.trigger_id == trigger.id, timeout=3)

    paused = changed(trigger, enabled=False)
    await registry.put(paused)
    paused_at = now()
    await starts.assert_none(
        lambda start: (
            start.trigger_id == trigger.id
            and start.scheduled_at is not None
            and start.scheduled_at > paused_at + timedelta(seconds=1)
        ),
        during=2.5,
    )

    await registry.put(changed(paused, enabled=True))
    resumed_at = now()
    await starts.wait_for(
        lambda start: (
            start.trigger_id == trigger.id
            and start.scheduled_at is not None
            and start.scheduled_at > resumed_at
        ),
        timeout=3,
    )


@pytest.mark.usefixtures("scheduler")
async def test_deleting_a_trigger_stops_its_fires_and_its_timer(
    registry: Registry, starts: StartLog, js: JetStreamContext
):
    trigger = schedule_trigger(EVERY_SECOND)
    await registry.put(trigger)
    await starts.wait_for(lambda start: start.trigger_id == trigger.id, timeout=3)

    await registry.delete(trigger.id)
    deleted_at = now()

    async def timer_gone() -> bool:
        try:
            await js.get_last_msg(subjects.SCHEDULES_STREAM, subjects.schedule_timer(trigger.id))
        except NotFoundError:
            return True
        return False

    await poll(timer_gone, timeout=2, what="the timer purge")
    await starts.assert_none(
        lambda start: (
            start.trigger_id == trigger.id
            and start.scheduled_at is not None
            and start.scheduled_at > deleted_at + timedelta(seconds=1)
        ),
        during=2.5,
    )


@pytest.mark.usefixtures("scheduler")
async def test_editing_the_cron_expression_takes_effect(registry: Registry, starts: StartLog):
    trigger = schedule_trigger(NEVER_DURING_THE_TEST)
    await registry.put(trigger)

    await registry.put(changed(trigger, schedule=CronSchedule(cron=EVERY_SECOND)))
    edited_at = now()

    start = await starts.wait_for(lambda start: start.trigger_id == trigger.id, timeout=3)
    assert start.scheduled_at is not None
    assert start.scheduled_at > edited_at


async def test_a_timer_parked_by_a_stopped_scheduler_fires_through_a_new_one(
    nats_url: str, registry: Registry, starts: StartLog, js: JetStreamContext
):
    # One fire whose timer goes off two whole seconds from now (its lead before the fire),
    # while no scheduler runs.
    lead = math.ceil(SchedulerSettings().timer_lead)
    due = now().replace(microsecond=0) + timedelta(seconds=2 + lead)
    trigger = schedule_trigger(f"{due.second} {due.minute} {due.hour} * * *")

    first = await started_scheduler(nats_url)
    try:
        await registry.put(trigger)

        async def timer_parked() -> bool:
            try:
                stored = await js.get_last_msg(
                    subjects.SCHEDULES_STREAM, subjects.schedule_timer(trigger.id)
                )
            except NotFoundError:
                return False
            return bool(decode(stored.data, ScheduleTick).scheduled_at == due)

        await poll(timer_parked, timeout=1.5, what="parking the timer")
    finally:
        await first.stop()

    async def tick_fired() -> bool:
        try:
            await js.get_last_msg(subjects.SCHEDULES_STREAM, subjects.schedule_tick(trigger.id))
        except NotFoundError:
            return False
        return True

    await poll(tick_fired, timeout=4, what="the timer firing")
    assert starts.of(trigger.id) == []

    second = await started_scheduler(nats_url)
    try:
        start = await starts.wait_for(
            lambda start: start.trigger_id == trigger.id, timeout=3 + lead
        )
        assert start.scheduled_at == due
        assert start.requested_at >= due  # held until its time, not started early
    finally:
        await second.stop()
    assert len(starts.of(trigger.id)) == 1


@pytest.mark.usefixtures("scheduler")
async def test_a_stale_tick_does_not_start_the_flow(
    registry: Registry, starts: StartLog, js: JetStreamContext
):
    trigger = changed(schedule_trigger(NEVER_DURING_THE_TEST))  # version 2
    await registry.put(trigger)
    stale_at = now().replace(microsecond=0) - timedelta(seconds=10)
    current_at = stale_at + timedelta(seconds=1)

    for version, scheduled_at in ((1, stale_at), (2, current_at)):
        tick = ScheduleTick(
            trigger_id=trigger.id, trigger_version=version, scheduled_at=scheduled_at
        )
        await js.publish(subjects.schedule_tick(trigger.id), encode(tick))

    # The current tick, published after the stale one, proves both have been handled.
    await starts.wait_for(
        lambda start: start.trigger_id == trigger.id and start.scheduled_at == current_at,
        timeout=3,
    )
    assert [start.scheduled_at for start in starts.of(trigger.id)] == [current_at]


@pytest.mark.usefixtures("scheduler")
async def test_an_undecodable_tick_becomes_a_dead_letter(nc: Client, js: JetStreamContext):
    tick_subject = subjects.schedule_tick(new_id("trg"))
    letters: list[DeadLetter] = []

    async def record(msg: Msg) -> None:
        letters.append(decode(msg.data, DeadLetter))

    subscription = await nc.subscribe(subjects.dead_letter(tick_subject), cb=record)
    try:
        await js.publish(tick_subject, b"not a tick")

        async def rejected() -> bool:
            return bool(letters)

        await poll(rejected, timeout=3, what="the dead letter")
    finally:
        await subscription.unsubscribe()
    assert letters[0].subject == tick_subject
    assert letters[0].service == "scheduler"
    assert letters[0].payload == "not a tick"
    assert "undecodable" in letters[0].reason


async def test_starting_brings_an_older_tick_consumer_up_to_date(
    nats_url: str, js: JetStreamContext
):
    # As an earlier version left it: 30 s ack wait and the server's default pending limit.
    await js.delete_consumer(subjects.SCHEDULES_STREAM, subjects.SCHEDULER_CONSUMER)
    await js.add_consumer(
        subjects.SCHEDULES_STREAM,
        ConsumerConfig(
            durable_name=subjects.SCHEDULER_CONSUMER,
            filter_subject=f"{subjects.SCHEDULE_TICK_PREFIX}.>",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
        ),
    )
    settings = SchedulerSettings(nats_url=nats_url)
    app = create_app(settings)
    await app.start()
    try:
        info = await js.consumer_info(subjects.SCHEDULES_STREAM, subjects.SCHEDULER_CONSUMER)
    finally:
        await app.stop()
    assert info.config.ack_wait == settings.tick_ack_wait + settings.timer_lead
    assert info.config.max_ack_pending == TICKS_PENDING


async def test_starting_narrows_an_older_run_events_consumer_to_skipped_runs(
    nats_url: str, js: JetStreamContext
):
    # As an earlier version left it: every run event, decoded to find the few skipped ones,
    # on the stream's unversioned subjects (starting brings the stream up to date too).
    (events,) = (c for c in stream_configs() if c.name == subjects.RUN_EVENTS_STREAM)
    await js.update_stream(events.evolve(subjects=["run.event.>"]))
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(subjects.RUN_EVENTS_STREAM, subjects.SCHEDULER_RUN_EVENTS_CONSUMER)
    await js.add_consumer(
        subjects.RUN_EVENTS_STREAM,
        ConsumerConfig(
            durable_name=subjects.SCHEDULER_RUN_EVENTS_CONSUMER,
            filter_subject="run.event.>",
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    app = create_app(SchedulerSettings(nats_url=nats_url))
    await app.start()
    try:
        info = await js.consumer_info(
            subjects.RUN_EVENTS_STREAM, subjects.SCHEDULER_RUN_EVENTS_CONSUMER
        )
    finally:
        await app.stop()
    assert info.config.filter_subject == "run.v1.event.*.*.skipped"


async def test_a_run_the_runner_skipped_reaches_the_ledger_from_its_versioned_event_subject(
    nats_url: str, nc: Client, js: JetStreamContext
):
    workspace_id, trigger_id = new_id("ws"), new_id("trg")
    scheduled_at = datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    app = await started_scheduler(nats_url)
    try:
        for status in ("queued", "skipped"):
            run = Run(
                id=new_id("run"),
                workspace_id=workspace_id,
                flow_id=new_id("flw"),
                status=status,  # type: ignore[arg-type]
                source="schedule",
                trigger_id=trigger_id,
                error="skipped by the overlap policy skip" if status == "skipped" else None,
                scheduled_at=scheduled_at,
                queued_at=now(),
            )
            await js.publish(
                subjects.run_event(workspace_id, run.id, status), encode(RunEvent(run=run))
            )
        fires = subjects.schedule_fire(workspace_id, trigger_id)

        async def recorded() -> bool:
            try:
                await js.get_last_msg(subjects.SCHEDULE_FIRES_STREAM, fires)
            except NotFoundError:
                return False
            return True

        await poll(recorded, timeout=5, what="the ledger entry")
    finally:
        await app.stop()
    entries = (await js.stream_info(subjects.SCHEDULE_FIRES_STREAM, subjects_filter=fires)).state
    assert entries.subjects == {fires: 1}
    stored = await js.get_last_msg(subjects.SCHEDULE_FIRES_STREAM, fires)
    entry = decode(stored.data or b"", FireRecord)
    assert (entry.status, entry.run_id) == ("overlap_skipped", run.id)


async def test_parking_never_moves_a_trigger_s_chain_of_timers_backwards(
    nc: Client, js: JetStreamContext
):
    timers = JetStreamTimers(js, await jetstream.Writer.open(nc))
    trigger_id = new_id("trg")
    in_an_hour = now().replace(microsecond=0) + timedelta(hours=1)

    def timer(version: int, at: datetime) -> ScheduleTick:
        return ScheduleTick(trigger_id=trigger_id, trigger_version=version, scheduled_at=at)

    try:
        later = timer(1, in_an_hour + timedelta(seconds=30))
        assert await timers.park(later, seen=0)
        assert not await timers.park(timer(1, in_an_hour))
        # A caller whose view of the chain is old is refused by the server, then judged.
        assert not await timers.park(timer(1, in_an_hour), seen=0)
        assert await timers.parked(trigger_id) == later
        edited = timer(2, in_an_hour)  # a new version replaces the old one, earlier or not
        assert await timers.park(edited, seen=0)
        assert await timers.parked(trigger_id) == edited

        # Once a timer went off, its tick heads the chain: the same timer is not parked again.
        soon = timer(3, now() + timedelta(milliseconds=300))
        assert await timers.park(soon)

        async def gone_off() -> bool:
            return await timers.parked(trigger_id) is None

        await poll(gone_off, timeout=3, what="the timer going off")
        assert not await timers.park(soon)
        assert await timers.parked(trigger_id) is None
        assert await timers.park(timer(3, in_an_hour))
    finally:
        await timers.cancel(trigger_id)


async def test_fires_during_a_ledger_outage_reach_the_ledger_once_each_when_it_is_back(
    nats_url: str, registry: Registry, starts: StartLog, js: JetStreamContext
):
    # With the ledger's stream gone, every write of an entry fails as it does while a
    # JetStream leader is elected (no stream answers); the stream comes back 3 s later.
    ledger_stream = next(
        config for config in stream_configs() if config.name == subjects.SCHEDULE_FIRES_STREAM
    )
    trigger = schedule_trigger(EVERY_SECOND)
    app = await started_scheduler(nats_url)
    try:
        await registry.put(trigger)
        await starts.wait_for(lambda start: start.trigger_id == trigger.id, timeout=4)
        await js.delete_stream(subjects.SCHEDULE_FIRES_STREAM)
        gone_at = now()
        await asyncio.sleep(3)
        await js.add_stream(ledger_stream)
        await asyncio.sleep(3)
        await registry.put(changed(trigger, enabled=False))
        disabled_at = now()
        await asyncio.sleep(1)
    finally:
        await app.stop()
        with contextlib.suppress(Exception):
            await js.add_stream(ledger_stream)

    entries = await read_ledger(js, trigger.workspace_id, trigger.id)
    decided: dict[datetime, list[str]] = {}
    for entry in entries:
        decided.setdefault(entry.scheduled_at, []).append(entry.status)
    fires = {start.scheduled_at for start in starts.of(trigger.id)}
    first = gone_at.replace(microsecond=0) + timedelta(seconds=1)
    seconds = int((disabled_at - first).total_seconds()) - 1
    assert seconds >= 4
    for second in (first + timedelta(seconds=n) for n in range(seconds)):
        assert second in fires, f"{second} has no start"
        assert decided.get(second) == ["started"], (second, decided)
