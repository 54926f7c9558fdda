"""The scheduler's decisions with in-memory fakes and an injected clock (no broker, no sleeps)."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from nats.js.errors import NoStreamResponseError

from contracts.registry import ApiTrigger, CronSchedule, OnceSchedule, ScheduleTrigger, Trigger
from contracts.runs import FlowStart, Run
from contracts.scheduling import FireRecord, ScheduleTick
from services.scheduler.adapters import at_header
from services.scheduler.core import Scheduler, fire_key, ledger_entry_id, supersedes
from shared.ids import derived_id

NOW = datetime(2026, 1, 1, 10, 0, 0, 250_000, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now
        self.slept: list[float] = []
        self.while_sleeping: Callable[[], Awaitable[None]] | None = None

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        if self.while_sleeping is not None:
            await self.while_sleeping()


class FakeTriggers:
    def __init__(self) -> None:
        self.by_id: dict[str, Trigger] = {}
        self.arriving: dict[str, Trigger] = {}
        """Written to the bucket, not seen yet: `catch_up` brings them in."""
        self.caught_up = True
        """What `catch_up` answers (False: it could not within its timeout)."""
        self.catch_ups = 0

    def get(self, key: str) -> Trigger | None:
        return self.by_id.get(key)

    def values(self) -> Iterator[Trigger]:
        return iter(list(self.by_id.values()))

    async def catch_up(self, timeout: float = 1.0) -> bool:
        self.catch_ups += 1
        if self.caught_up:
            self.by_id.update(self.arriving)
            self.arriving.clear()
        return self.caught_up


class FakeTimers:
    """Timers as the stream holds them: a trigger's parked timer, else its tick that went off
    last, is the head of its chain, and parking only moves the head forward."""

    def __init__(self) -> None:
        self.lead = timedelta(0)
        self.parked_ticks: dict[str, ScheduleTick] = {}
        self.gone_off: dict[str, ScheduleTick] = {}
        self.head_lookups = 0
        self.parks = 0
        self.cancels: list[str] = []
        self.on_park: Callable[[ScheduleTick], None] | None = None

    async def park(self, tick: ScheduleTick, *, seen: int | None = None) -> bool:
        head = self.parked_ticks.get(tick.trigger_id) or self.gone_off.get(tick.trigger_id)
        if seen == 0 and head is not None and tick.trigger_version == 1:
            return False  # a new trigger's chain another replica parked: not read
        if seen != 0 or head is not None:
            self.head_lookups += 1
            if head is not None and not supersedes(tick, head):
                return False
        self.parks += 1
        self.parked_ticks[tick.trigger_id] = tick
        if self.on_park is not None:
            self.on_park(tick)
        return True

    async def parked(self, trigger_id: str) -> ScheduleTick | None:
        return self.parked_ticks.get(trigger_id)

    async def head_versions(self) -> dict[str, int]:
        heads = {key: tick.trigger_version for key, tick in self.gone_off.items()}
        return heads | {key: tick.trigger_version for key, tick in self.parked_ticks.items()}

    async def cancel(self, trigger_id: str) -> None:
        self.cancels.append(trigger_id)
        self.parked_ticks.pop(trigger_id, None)


class FakeLedger:
    """The ledger stream: an entry whose message id it holds already is dropped."""

    def __init__(self) -> None:
        self.entries: list[FireRecord] = []
        self.failures_left = 0
        self.refused = 0
        self.on_record: Callable[[FireRecord], None] | None = None
        self.on_refusal: Callable[[], None] | None = None

    async def record(self, entry: FireRecord) -> None:
        if self.failures_left:
            self.failures_left -= 1
            self.refused += 1
            if self.on_refusal is not None:
                self.on_refusal()
            raise NoStreamResponseError()  # what a write gets during a leader election
        if ledger_entry_id(entry) in {ledger_entry_id(stored) for stored in self.entries}:
            return
        self.entries.append(entry)
        if self.on_record is not None:
            self.on_record(entry)

    async def last_decided(self, workspace_id: str, trigger_id: str) -> datetime | None:
        mine = [entry for entry in self.entries if entry.trigger_id == trigger_id]
        return mine[-1].scheduled_at if mine else None

    def statuses(self) -> list[tuple[str, str]]:
        return [(e.scheduled_at.strftime("%H:%M:%S"), e.status) for e in self.entries]


class FakeStartPublisher:
    def __init__(self) -> None:
        self.published: list[tuple[FlowStart, str]] = []
        self.failing = False

    def prepare(self, start: FlowStart, msg_id: str) -> "FakeWrite":
        return FakeWrite(lambda: self.publish(start, msg_id))

    async def publish(self, start: FlowStart, msg_id: str) -> None:
        if self.failing:
            raise ConnectionError("no PubAck")
        self.published.append((start, msg_id))


class FakeWrite:
    def __init__(self, send: Callable[[], Awaitable[None]]) -> None:
        self.send = send


def schedule_trigger(trigger_id: str = "trg_1", cron: str = "*/15 * * * *", **changes) -> Trigger:
    trigger = ScheduleTrigger(
        id=trigger_id,
        workspace_id="wsp_1",
        flow_id="flw_1",
        schedule=CronSchedule(cron=cron),
        created_at=NOW,
        updated_at=NOW,
    )
    return msgspec.structs.replace(trigger, **changes)


def api_trigger(trigger_id: str, **changes) -> Trigger:
    trigger = ApiTrigger(
        id=trigger_id, workspace_id="wsp_1", flow_id="flw_1", created_at=NOW, updated_at=NOW
    )
    return msgspec.structs.replace(trigger, **changes)


class World:
    """A scheduler wired to fakes, plus helpers to play the registry."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.triggers = FakeTriggers()
        self.timers = FakeTimers()
        self.starts = FakeStartPublisher()
        self.ledger = FakeLedger()
        self.scheduler = Scheduler(
            self.triggers,
            self.timers,
            self.starts,
            ledger=self.ledger,
            clock=self.clock,
            sleep=self.clock.sleep,
        )

    async def write(self, trigger: Trigger) -> None:
        old = self.triggers.by_id.get(trigger.id)
        self.triggers.by_id[trigger.id] = trigger
        self.scheduler.on_trigger_change(trigger.id, old, trigger)
        await self.scheduler.settle()

    async def delete(self, trigger_id: str) -> None:
        old = self.triggers.by_id.pop(trigger_id)
        self.scheduler.on_trigger_change(trigger_id, old, None)
        await self.scheduler.settle()


@pytest.fixture
def world() -> World:
    return World()


def tick(trigger_id: str, version: int, scheduled_at: str) -> ScheduleTick:
    return ScheduleTick(
        trigger_id=trigger_id,
        trigger_version=version,
        scheduled_at=datetime.fromisoformat(scheduled_at),
    )


async def test_reconcile_parks_the_next_fire_of_every_armed_schedule_trigger(world: World):
    world.triggers.by_id = {
        "trg_a": schedule_trigger("trg_a"),
        "trg_paused": schedule_trigger("trg_paused", enabled=False),
        "trg_api": api_trigger("trg_api"),
    }
    await world.scheduler.reconcile()
    assert world.timers.parked_ticks == {
        "trg_a": tick("trg_a", 1, "2026-01-01T10:15:00+00:00"),
    }


async def test_reconcile_keeps_a_timer_of_the_current_version_and_replaces_an_older_one(
    world: World,
):
    world.triggers.by_id = {
        "trg_current": schedule_trigger("trg_current", version=3),
        "trg_old": schedule_trigger("trg_old", version=3),
    }
    kept = tick("trg_current", 3, "2026-01-01T10:15:00+00:00")
    world.timers.parked_ticks = {
        "trg_current": kept,
        "trg_old": tick("trg_old", 2, "2026-01-01T10:05:00+00:00"),
    }
    await world.scheduler.reconcile()
    assert world.timers.parks == 1
    assert world.timers.parked_ticks["trg_current"] is kept
    assert world.timers.parked_ticks["trg_old"] == tick("trg_old", 3, "2026-01-01T10:15:00+00:00")


async def test_changes_replayed_before_reconcile_are_left_to_reconcile(world: World):
    await world.write(schedule_trigger("trg_1"))
    assert world.timers.parks == 0


async def test_a_created_schedule_trigger_gets_a_timer(world: World):
    await world.scheduler.reconcile()
    await world.write(schedule_trigger("trg_1", cron="0 12 * * *"))
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T12:00:00+00:00")


async def test_an_edited_schedule_replaces_the_timer_with_one_of_the_new_version(world: World):
    await world.scheduler.reconcile()
    await world.write(schedule_trigger("trg_1"))
    await world.write(schedule_trigger("trg_1", cron="0 12 * * *", version=2))
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 2, "2026-01-01T12:00:00+00:00")


async def test_a_created_trigger_is_parked_without_reading_its_chain_and_an_edit_reads_it(
    world: World,
):
    await world.scheduler.reconcile()
    await world.write(schedule_trigger("trg_1"))
    assert (world.timers.parks, world.timers.head_lookups) == (1, 0)
    await world.write(schedule_trigger("trg_1", cron="0 12 * * *", version=2))
    assert (world.timers.parks, world.timers.head_lookups) == (2, 1)


async def test_pausing_or_deleting_a_trigger_cancels_its_timer(world: World):
    await world.scheduler.reconcile()
    await world.write(schedule_trigger("trg_1"))
    await world.write(schedule_trigger("trg_1", enabled=False, version=2))
    assert world.timers.cancels == ["trg_1"]
    assert "trg_1" not in world.timers.parked_ticks

    await world.write(schedule_trigger("trg_1", version=3))
    assert world.timers.parked_ticks["trg_1"].trigger_version == 3
    await world.delete("trg_1")
    assert world.timers.cancels == ["trg_1", "trg_1"]
    assert "trg_1" not in world.timers.parked_ticks


async def test_a_trigger_that_is_not_a_schedule_never_touches_the_timers(world: World):
    await world.scheduler.reconcile()
    await world.write(api_trigger("trg_api"))
    await world.delete("trg_api")
    assert world.timers.parks == 0
    assert world.timers.cancels == []


async def test_a_tick_starts_the_flow_and_parks_the_next_fire(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 0, 3000, tzinfo=UTC)

    outcome = await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))

    assert outcome == "started"
    scheduled_at = datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    key = "trg_1:2026-01-01T10:15:00+00:00"
    assert fire_key("trg_1", scheduled_at) == key
    assert world.starts.published == [
        (
            FlowStart(
                run_id=derived_id("run", int(scheduled_at.timestamp() * 1000), key.encode()),
                workspace_id="wsp_1",
                flow_id="flw_1",
                input=None,
                source="schedule",
                trigger_id="trg_1",
                scheduled_at=scheduled_at,
                requested_at=world.clock.now,
            ),
            key,
        )
    ]
    assert world.ledger.statuses() == [("10:15:00", "started")]
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:30:00+00:00")


async def test_the_same_tick_twice_gives_the_same_run_id_and_message_id(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    due = tick("trg_1", 1, "2026-01-01T10:15:00+00:00")
    await world.scheduler.fire(due)
    world.clock.now += timedelta(seconds=5)
    await world.scheduler.fire(due)
    (first, first_id), (second, second_id) = world.starts.published
    assert first.run_id == second.run_id
    assert first_id == second_id


@pytest.mark.parametrize(
    "current",
    [
        None,
        schedule_trigger("trg_1", enabled=False, version=2),
        api_trigger("trg_1", version=2),
    ],
    ids=["deleted", "paused", "no longer a schedule"],
)
async def test_a_tick_of_a_trigger_that_is_not_armed_is_dropped(
    world: World, current: Trigger | None
):
    if current is not None:
        world.triggers.by_id["trg_1"] = current
    outcome = await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert outcome == "stale"
    assert world.starts.published == []
    assert world.timers.parks == 0
    assert world.triggers.catch_ups == (1 if current is None else 0)


async def test_a_tick_of_an_older_version_is_dropped_and_the_current_timer_kept(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1", version=2)
    current = tick("trg_1", 2, "2026-01-01T10:15:00+00:00")
    world.timers.parked_ticks["trg_1"] = current
    outcome = await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:10:00+00:00"))
    assert outcome == "stale"
    assert world.starts.published == []
    assert world.timers.parked_ticks["trg_1"] is current


async def test_a_stale_tick_restores_a_missing_timer_of_the_current_version(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1", version=2)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:10:00+00:00"))
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 2, "2026-01-01T10:15:00+00:00")


async def test_a_tick_newer_than_the_known_trigger_waits_for_the_store_to_catch_up(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1", version=1)
    outcome = await world.scheduler.fire(tick("trg_1", 2, "2026-01-01T10:15:00+00:00"))
    assert outcome == "store_behind"
    assert world.starts.published == []


async def test_a_tick_of_a_trigger_created_a_moment_ago_waits_for_the_store_and_fires(
    world: World,
):
    # Another replica saw the creation first and parked the timer; this one gets the tick.
    world.triggers.arriving["trg_1"] = schedule_trigger("trg_1")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 0, 3000, tzinfo=UTC)

    outcome = await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))

    assert outcome == "started"
    assert len(world.starts.published) == 1
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:30:00+00:00")


async def test_a_tick_of_a_version_edited_a_moment_ago_waits_for_the_store_and_fires(
    world: World,
):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1", version=1)
    world.triggers.arriving["trg_1"] = schedule_trigger("trg_1", version=2)
    world.clock.now = datetime(2026, 1, 1, 10, 15, 0, 3000, tzinfo=UTC)

    outcome = await world.scheduler.fire(tick("trg_1", 2, "2026-01-01T10:15:00+00:00"))

    assert outcome == "started"
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 2, "2026-01-01T10:30:00+00:00")


async def test_a_tick_of_a_trigger_the_store_cannot_catch_up_with_is_retried_not_dropped(
    world: World,
):
    world.triggers.arriving["trg_1"] = schedule_trigger("trg_1")
    world.triggers.caught_up = False
    outcome = await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert outcome == "store_behind"
    assert world.starts.published == []


async def test_a_tick_of_a_known_trigger_does_not_wait_for_the_store(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 0, 3000, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert world.triggers.catch_ups == 0


async def test_a_start_that_cannot_be_stored_fails_the_tick_without_parking(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.starts.failing = True
    with pytest.raises(ConnectionError):
        await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert world.timers.parks == 0


async def test_a_trigger_edited_while_its_tick_fires_keeps_the_timer_of_the_new_version(
    world: World,
):
    await world.scheduler.reconcile()
    await world.write(schedule_trigger("trg_1"))

    class EditingStarts(FakeStartPublisher):
        async def publish(self, start: FlowStart, msg_id: str) -> None:
            await super().publish(start, msg_id)
            await world.write(schedule_trigger("trg_1", cron="0 12 * * *", version=2))

    world.scheduler = Scheduler(
        world.triggers,
        world.timers,
        EditingStarts(),
        ledger=world.ledger,
        clock=world.clock,
        sleep=world.clock.sleep,
    )
    await world.scheduler.reconcile()
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 2, "2026-01-01T12:00:00+00:00")


async def test_an_early_tick_is_held_and_starts_at_its_due_time(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.clock.now = datetime(2026, 1, 1, 10, 14, 58, 500_000, tzinfo=UTC)
    holds: list[datetime] = []

    outcome = await world.scheduler.fire(
        tick("trg_1", 1, "2026-01-01T10:15:00+00:00"),
        on_hold=lambda: holds.append(world.clock.now),
    )

    assert outcome == "started"
    assert holds == [datetime(2026, 1, 1, 10, 14, 58, 500_000, tzinfo=UTC)]
    assert world.clock.slept == [1.5]
    ((start, _),) = world.starts.published
    assert start.requested_at == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    assert world.ledger.statuses() == [("10:15:00", "started")]
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:30:00+00:00")


async def test_a_tick_on_or_after_its_due_time_is_not_held(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.clock.now = datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert world.clock.slept == []
    assert started_times(world) == ["10:15:00"]


@pytest.mark.parametrize(
    "change",
    [
        {"enabled": False, "version": 2},
        {"cron": "0 12 * * *", "version": 2},
    ],
    ids=["paused", "edited"],
)
async def test_a_trigger_changed_while_its_tick_is_held_does_not_fire_the_held_tick(
    world: World, change: dict[str, object]
):
    await world.scheduler.reconcile()
    world.clock.now = datetime(2026, 1, 1, 10, 14, 59, tzinfo=UTC)
    await world.write(schedule_trigger("trg_1"))
    world.clock.while_sleeping = lambda: world.write(schedule_trigger("trg_1", **change))

    outcome = await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))

    assert outcome == "stale"
    assert world.starts.published == []
    assert world.ledger.entries == []
    parked = world.timers.parked_ticks.get("trg_1")
    assert parked is None or parked.trigger_version == 2


async def test_a_timer_that_already_went_off_for_the_next_fire_is_not_parked_again(
    world: World,
):
    # Timers go off 2 s early; the one for 10:15:00 went off and its tick is held somewhere.
    world.timers.lead = timedelta(seconds=2)
    world.clock.now = datetime(2026, 1, 1, 10, 14, 59, tzinfo=UTC)
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.timers.gone_off["trg_1"] = tick("trg_1", 1, "2026-01-01T10:15:00+00:00")
    await world.scheduler.ensure_parked("trg_1")
    assert world.timers.parks == 0


async def test_a_timer_is_parked_when_the_one_that_went_off_was_for_an_earlier_fire(
    world: World,
):
    world.timers.lead = timedelta(seconds=2)
    world.clock.now = datetime(2026, 1, 1, 10, 14, 59, tzinfo=UTC)
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.timers.gone_off["trg_1"] = tick("trg_1", 1, "2026-01-01T10:00:00+00:00")
    await world.scheduler.ensure_parked("trg_1")
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:15:00+00:00")


# --- Misfires, the ledger and the policies -------------------------------------------------


def with_schedule(trigger_id: str = "trg_1", **options) -> Trigger:
    cron = options.pop("cron", "*/15 * * * *")
    return schedule_trigger(trigger_id, schedule=CronSchedule(cron=cron, **options))


def started_times(world: World) -> list[str]:
    return [
        start.scheduled_at.strftime("%H:%M:%S")
        for start, _ in world.starts.published
        if start.scheduled_at is not None
    ]


async def test_a_tick_handled_within_the_misfire_threshold_is_an_ordinary_fire(world: World):
    world.triggers.by_id["trg_1"] = with_schedule(misfire="skip")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 9, tzinfo=UTC)  # 9 s late, threshold 10 s
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert started_times(world) == ["10:15:00"]
    assert world.ledger.statuses() == [("10:15:00", "started")]


async def test_after_an_outage_run_once_starts_only_the_most_recent_missed_fire(world: World):
    world.triggers.by_id["trg_1"] = with_schedule()  # run_once is the default
    world.clock.now = datetime(2026, 1, 1, 11, 7, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert started_times(world) == ["11:00:00"]
    assert world.ledger.statuses() == [
        ("10:15:00", "missed"),
        ("10:30:00", "missed"),
        ("10:45:00", "missed"),
        ("11:00:00", "caught_up"),
    ]
    assert "no scheduler was running" in world.ledger.entries[0].reason
    assert "run_once started only 2026-01-01T11:00:00+00:00" in world.ledger.entries[0].reason
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T11:15:00+00:00")


async def test_after_an_outage_skip_starts_nothing_and_records_every_missed_fire(world: World):
    world.triggers.by_id["trg_1"] = with_schedule(misfire="skip")
    world.clock.now = datetime(2026, 1, 1, 11, 7, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert world.starts.published == []
    assert [status for _, status in world.ledger.statuses()] == ["missed"] * 4
    assert all("misfire policy skip" in entry.reason for entry in world.ledger.entries)
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T11:15:00+00:00")


async def test_after_an_outage_run_all_starts_each_fire_within_the_catch_up_window(world: World):
    world.triggers.by_id["trg_1"] = with_schedule(misfire="run_all", catch_up_window=1800)
    world.clock.now = datetime(2026, 1, 1, 11, 7, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert started_times(world) == ["10:45:00", "11:00:00"]
    assert world.ledger.statuses() == [
        ("10:15:00", "missed"),
        ("10:30:00", "missed"),
        ("10:45:00", "caught_up"),
        ("11:00:00", "caught_up"),
    ]
    assert "older than the catch-up window of 1800s" in world.ledger.entries[0].reason


async def test_run_once_starts_nothing_when_every_missed_fire_is_outside_the_window(
    world: World,
):
    world.triggers.by_id["trg_1"] = with_schedule(catch_up_window=60)
    world.clock.now = datetime(2026, 1, 1, 11, 7, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert world.starts.published == []
    assert [status for _, status in world.ledger.statuses()] == ["missed"] * 4


async def test_a_tick_redelivered_after_a_crash_within_the_threshold_still_fires_on_time(
    world: World,
):
    world.triggers.by_id["trg_1"] = with_schedule(misfire="skip")
    # A replica died holding it: it comes back TICK_ACK_WAIT (5 s) after its due time.
    world.clock.now = datetime(2026, 1, 1, 10, 15, 5, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"), redelivered=True)
    assert started_times(world) == ["10:15:00"]
    assert world.ledger.statuses() == [("10:15:00", "started")]


async def test_a_redelivered_tick_later_than_the_threshold_is_decided_by_the_misfire_policy(
    world: World,
):
    # Every replica was down: the tick held when the last one died comes back 40 s late.
    world.triggers.by_id["trg_1"] = with_schedule(misfire="skip")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 40, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"), redelivered=True)
    assert world.starts.published == []
    assert world.ledger.statuses() == [("10:15:00", "missed")]
    assert "late by 40.0s" in world.ledger.entries[0].reason


async def test_a_tick_held_through_a_pause_of_the_process_is_decided_as_of_its_end(
    world: World,
):
    world.triggers.by_id["trg_1"] = with_schedule(misfire="skip")
    world.clock.now = datetime(2026, 1, 1, 10, 14, 58, tzinfo=UTC)  # held for 2 s...

    async def paused() -> None:
        world.clock.now += timedelta(seconds=25)  # ... and the process stopped for 25 s

    world.clock.while_sleeping = paused
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert world.starts.published == []
    assert world.ledger.statuses() == [("10:15:00", "missed")]
    assert "late by 25.0s" in world.ledger.entries[0].reason


async def test_a_very_long_outage_is_decided_with_bounded_work(world: World):
    world.triggers.by_id["trg_1"] = with_schedule(cron="* * * * * *")  # every second
    world.clock.now = datetime(2026, 1, 2, 10, 15, 0, 500_000, tzinfo=UTC)  # a day later
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    # The last 10 s (the misfire threshold) are on time; run_once adds the most recent of the
    # day of missed fires before them.
    started = started_times(world)
    assert started == [f"10:14:{second}" for second in range(50, 60)] + ["10:15:00"]
    statuses = [status for _, status in world.ledger.statuses()]
    assert statuses.count("caught_up") == 1
    assert len(world.ledger.entries) < 1300
    assert any("not listed one by one" in entry.reason for entry in world.ledger.entries)
    assert world.timers.parked_ticks["trg_1"].scheduled_at == datetime(
        2026, 1, 2, 10, 15, 1, tzinfo=UTC
    )


async def test_a_dst_gap_tick_is_recorded_and_the_next_occurrence_parked(world: World):
    world.triggers.by_id["trg_1"] = with_schedule(
        cron="30 2 * * *", timezone="Europe/Berlin", dst_gap="skip"
    )
    world.clock.now = datetime(2026, 3, 29, 1, 0, 0, 100_000, tzinfo=UTC)
    gap_tick = msgspec.structs.replace(
        tick("trg_1", 1, "2026-03-29T01:00:00+00:00"), skip="dst_gap", note="02:30 does not exist"
    )
    await world.scheduler.fire(gap_tick)
    assert world.starts.published == []
    assert world.ledger.statuses() == [("01:00:00", "dst_gap")]
    assert world.ledger.entries[0].reason == "02:30 does not exist"
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-03-30T00:30:00+00:00")


async def test_the_timer_of_a_gap_skip_is_parked_as_a_non_fire(world: World):
    await world.scheduler.reconcile()
    world.clock.now = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    created = with_schedule(cron="30 2 * * *", timezone="Europe/Berlin", dst_gap="skip")
    await world.write(msgspec.structs.replace(created, created_at=world.clock.now))
    parked = world.timers.parked_ticks["trg_1"]
    assert parked.skip == "dst_gap"
    assert parked.scheduled_at == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert "02:30:00 does not exist" in parked.note


async def test_the_first_occurrence_after_the_end_is_recorded_and_nothing_more_parked(
    world: World,
):
    end = datetime(2026, 1, 1, 10, 20, tzinfo=UTC)
    world.triggers.by_id["trg_1"] = with_schedule(end=end)
    world.clock.now = datetime(2026, 1, 1, 10, 15, 1, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert world.timers.parked_ticks["trg_1"].skip == "after_end"
    world.clock.now = datetime(2026, 1, 1, 10, 30, 1, tzinfo=UTC)
    await world.scheduler.fire(world.timers.parked_ticks.pop("trg_1"))
    assert world.ledger.statuses() == [("10:15:00", "started"), ("10:30:00", "ended")]
    assert "trg_1" not in world.timers.parked_ticks


async def test_a_jittered_timer_goes_off_later_but_keeps_its_scheduled_time(world: World):
    await world.scheduler.reconcile()
    await world.write(with_schedule(jitter=600))
    parked = world.timers.parked_ticks["trg_1"]
    assert parked.scheduled_at == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    assert parked.due_at is not None
    assert timedelta(0) <= parked.due_at - parked.scheduled_at <= timedelta(seconds=600)


async def test_resuming_decides_the_fires_of_the_pause_by_the_misfire_policy(world: World):
    await world.scheduler.reconcile()
    trigger = with_schedule()
    await world.write(trigger)
    paused_at = datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    paused = msgspec.structs.replace(trigger, enabled=False, version=2, updated_at=paused_at)
    await world.write(paused)
    world.clock.now = resumed_at = datetime(2026, 1, 1, 11, 7, tzinfo=UTC)
    await world.write(
        msgspec.structs.replace(paused, enabled=True, version=3, updated_at=resumed_at)
    )
    assert started_times(world) == ["11:00:00"]
    assert world.ledger.statuses() == [
        ("10:15:00", "paused"),
        ("10:30:00", "paused"),
        ("10:45:00", "paused"),
        ("11:00:00", "caught_up"),
    ]
    assert "the trigger was paused" in world.ledger.entries[0].reason
    assert world.timers.parked_ticks["trg_1"].scheduled_at == datetime(
        2026, 1, 1, 11, 15, tzinfo=UTC
    )


def paused_10_05_resumed_11_07() -> Trigger:
    """A */15 trigger as the registry leaves it after a pause at 10:05 and a resume at 11:07."""
    return msgspec.structs.replace(
        with_schedule(),
        version=3,
        paused_at=datetime(2026, 1, 1, 10, 5, tzinfo=UTC),
        resumed_at=datetime(2026, 1, 1, 11, 7, tzinfo=UTC),
    )


async def test_a_resume_no_scheduler_saw_is_decided_when_one_starts(world: World):
    # Paused at 10:05 and resumed at 11:07 while every replica was down: no timer is parked.
    world.triggers.by_id["trg_1"] = paused_10_05_resumed_11_07()
    world.clock.now = datetime(2026, 1, 1, 11, 20, tzinfo=UTC)
    await world.scheduler.reconcile()
    assert started_times(world) == ["11:00:00"]
    assert world.ledger.statuses() == [
        ("10:15:00", "paused"),
        ("10:30:00", "paused"),
        ("10:45:00", "paused"),
        ("11:00:00", "caught_up"),
    ]
    assert world.timers.parked_ticks["trg_1"].scheduled_at == datetime(
        2026, 1, 1, 11, 30, tzinfo=UTC
    )


async def test_a_resume_whose_decision_fails_parks_nothing_so_the_next_start_decides_it(
    world: World,
):
    world.triggers.by_id["trg_1"] = paused_10_05_resumed_11_07()
    world.clock.now = datetime(2026, 1, 1, 11, 20, tzinfo=UTC)
    world.starts.failing = True
    with pytest.raises(RuntimeError, match="could not park the timers of 1 triggers"):
        await world.scheduler.reconcile()
    assert world.timers.parks == 0

    world.starts.failing = False
    await world.scheduler.reconcile()
    assert started_times(world) == ["11:00:00"]
    assert world.timers.parked_ticks["trg_1"].scheduled_at == datetime(
        2026, 1, 1, 11, 30, tzinfo=UTC
    )


async def test_reconcile_does_not_look_for_a_gone_off_timer_of_a_trigger_with_none(
    world: World,
):
    # Due within the lead, so its timer goes off at once; but no timer or tick exists at all.
    world.timers.lead = timedelta(seconds=2)
    world.clock.now = datetime(2026, 1, 1, 10, 14, 59, tzinfo=UTC)
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    await world.scheduler.reconcile()
    assert world.timers.head_lookups == 0
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:15:00+00:00")


async def test_a_resume_a_scheduler_saw_is_not_decided_again_on_restart(world: World):
    # The replica that saw the resume parked a timer of the resumed version.
    trigger = paused_10_05_resumed_11_07()
    world.triggers.by_id["trg_1"] = trigger
    world.timers.parked_ticks["trg_1"] = tick("trg_1", 3, "2026-01-01T11:30:00+00:00")
    world.clock.now = datetime(2026, 1, 1, 11, 20, tzinfo=UTC)
    await world.scheduler.reconcile()
    assert world.starts.published == []
    assert world.ledger.entries == []


async def test_resuming_with_skip_records_the_paused_fires_and_starts_none(world: World):
    await world.scheduler.reconcile()
    trigger = with_schedule(misfire="skip")
    await world.write(trigger)
    paused = msgspec.structs.replace(trigger, enabled=False, version=2)
    await world.write(paused)
    world.clock.now = resumed_at = datetime(2026, 1, 1, 10, 50, tzinfo=UTC)
    await world.write(
        msgspec.structs.replace(paused, enabled=True, version=3, updated_at=resumed_at)
    )
    assert world.starts.published == []
    assert world.ledger.statuses() == [
        ("10:15:00", "paused"),
        ("10:30:00", "paused"),
        ("10:45:00", "paused"),
    ]


async def test_a_run_skipped_by_overlap_becomes_a_ledger_entry(world: World):
    world.triggers.by_id["trg_1"] = with_schedule(timezone="Europe/Berlin")
    scheduled_at = datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    run = Run(
        id="run_1",
        workspace_id="wsp_1",
        flow_id="flw_1",
        status="skipped",
        source="schedule",
        trigger_id="trg_1",
        error="skipped: run run_0 of this trigger is still running (overlap policy skip)",
        scheduled_at=scheduled_at,
        queued_at=NOW,
    )
    await world.scheduler.record_overlap_skip(run)
    await world.scheduler.record_overlap_skip(msgspec.structs.replace(run, source="api"))
    await world.scheduler.record_overlap_skip(msgspec.structs.replace(run, status="succeeded"))
    (entry,) = world.ledger.entries
    assert (entry.status, entry.run_id, entry.scheduled_at) == (
        "overlap_skipped",
        "run_1",
        scheduled_at,
    )
    assert entry.local_time == "2026-01-01T11:15:00+01:00"
    assert "still running" in entry.reason


@pytest.mark.parametrize(
    ("goes_off_at", "header"),
    [
        (datetime(2026, 1, 1, 10, 14, 57, 500_000, tzinfo=UTC), "@at 2026-01-01T10:14:57.500Z"),
        (datetime(2026, 1, 1, 10, 14, 57, 1, tzinfo=UTC), "@at 2026-01-01T10:14:57.001Z"),
        (datetime(2026, 1, 1, 10, 14, 59, 999_001, tzinfo=UTC), "@at 2026-01-01T10:15:00.000Z"),
        (
            datetime(2026, 1, 1, 11, 0, tzinfo=timezone(timedelta(hours=1))),
            "@at 2026-01-01T10:00:00.000Z",
        ),
    ],
)
def test_a_timer_goes_off_to_the_millisecond_never_before_its_time(
    goes_off_at: datetime, header: str
):
    assert at_header(goes_off_at) == header


async def test_reconcile_leaves_a_trigger_whose_tick_is_in_flight_to_that_tick(world: World):
    # Its timer went off and no newer one is parked: a replica holds the tick (or held it and
    # died; it comes back after the ack wait) and parks the next timer when it handles it.
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.timers.gone_off["trg_1"] = tick("trg_1", 1, "2026-01-01T09:45:00+00:00")
    await world.scheduler.reconcile()
    assert world.timers.parks == 0


async def test_reconcile_parks_a_trigger_whose_last_tick_is_of_an_older_version(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1", version=2)
    world.timers.gone_off["trg_1"] = tick("trg_1", 1, "2026-01-01T09:45:00+00:00")
    await world.scheduler.reconcile()
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 2, "2026-01-01T10:15:00+00:00")


# --- Timers that never move backwards, one decision per occurrence ---------------------------


def second(text: str) -> datetime:
    return datetime.fromisoformat(f"2026-01-01T10:15:{text}+00:00")


def decided_by_the_other_replica(world: World, until: str) -> None:
    """What the replica that went on meanwhile did: every second from 10:15:00 to `until`
    started on time, and the timer of the one after parked."""
    trigger = world.triggers.by_id["trg_1"]
    at = second("00")
    while at <= second(until):
        world.ledger.entries.append(
            FireRecord(
                trigger_id="trg_1",
                workspace_id=trigger.workspace_id,
                flow_id=trigger.flow_id,
                trigger_version=1,
                scheduled_at=at,
                local_time=at.isoformat(),
                timezone="UTC",
                status="started",
                reason="on time",
                recorded_at=at,
            )
        )
        at += timedelta(seconds=1)
    world.timers.parked_ticks["trg_1"] = tick("trg_1", 1, at.isoformat())


async def test_a_replica_paused_while_holding_a_tick_adds_no_second_decision_on_waking(
    world: World,
):
    # The drill: this replica holds the tick of 10:15:00 and is stopped (SIGSTOP) for
    # 30 s; the other replica gets the tick after the ack wait and goes on with the chain.
    world.triggers.by_id["trg_1"] = with_schedule(cron="* * * * * *")
    world.clock.now = datetime(2026, 1, 1, 10, 14, 58, 500_000, tzinfo=UTC)

    async def paused() -> None:
        world.clock.now += timedelta(seconds=30)
        decided_by_the_other_replica(world, until="30")

    world.clock.while_sleeping = paused
    outcome = await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))

    assert outcome == "decided_before"
    assert world.starts.published == []
    statuses = world.ledger.statuses()
    assert len(statuses) == len(set(statuses)) == 31  # one entry for each second
    assert {status for _, status in statuses} == {"started"}
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:15:31+00:00")


async def test_a_late_tick_decides_only_what_the_ledger_does_not_hold_yet(world: World):
    # Pulled before a pause of this replica and handled after it: the other replica has
    # decided up to 10:15:29, and its tick of 10:15:30 is not decided yet.
    world.triggers.by_id["trg_1"] = with_schedule(cron="* * * * * *")
    decided_by_the_other_replica(world, until="29")
    world.timers.gone_off["trg_1"] = world.timers.parked_ticks.pop("trg_1")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 30, 200_000, tzinfo=UTC)

    outcome = await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:05+00:00"))

    assert outcome == "started"
    assert started_times(world) == ["10:15:30"]  # on time, as the other replica decides it
    statuses = world.ledger.statuses()
    assert len(statuses) == len(set(statuses)) == 31
    assert {status for _, status in statuses} == {"started"}
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:15:31+00:00")


async def test_a_redelivered_tick_its_first_handler_decided_parks_the_next_timer_only(
    world: World,
):
    # The first handler stored the start and the entry, then died before parking the next.
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    due = tick("trg_1", 1, "2026-01-01T10:15:00+00:00")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 0, 100_000, tzinfo=UTC)
    await world.scheduler.fire(due)
    world.timers.parked_ticks.pop("trg_1")  # never parked: it died first
    world.timers.gone_off["trg_1"] = due
    world.starts.published.clear()

    world.clock.now += timedelta(seconds=5)
    outcome = await world.scheduler.fire(due, redelivered=True)

    assert outcome == "decided_before"
    assert world.starts.published == []
    assert world.ledger.statuses() == [("10:15:00", "started")]
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:30:00+00:00")


# --- Ledger writes through a leader election -------------------------------------------------


async def test_a_ledger_entry_the_stream_refuses_is_retried_until_stored(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 0, 100_000, tzinfo=UTC)
    world.ledger.failures_left = 4  # a leader election: refused for a few seconds

    outcome = await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))

    assert outcome == "started"
    assert world.ledger.refused == 4
    assert world.ledger.statuses() == [("10:15:00", "started")]
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:30:00+00:00")


async def test_the_next_timer_is_parked_only_once_every_entry_of_a_tick_is_stored(
    world: World,
):
    # A tick that decides several occurrences (its replica was slow to get it): parking the
    # next timer replaces this tick in the stream, so no retry of it could come afterwards.
    world.triggers.by_id["trg_1"] = with_schedule(cron="* * * * * *")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 3, 100_000, tzinfo=UTC)
    world.ledger.failures_left = 2
    events: list[str] = []
    world.ledger.on_record = lambda entry: events.append(f"entry {entry.scheduled_at:%S}")
    world.timers.on_park = lambda parked: events.append(f"park {parked.scheduled_at:%S}")

    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))

    assert sorted(events[:-1]) == ["entry 00", "entry 01", "entry 02", "entry 03"]
    assert events[-1] == "park 04"


async def test_a_retried_tick_writes_the_entry_its_first_attempt_did_not_store(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    due = tick("trg_1", 1, "2026-01-01T10:15:00+00:00")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 0, 100_000, tzinfo=UTC)
    world.ledger.failures_left = 1_000_000

    async def let_the_test_run() -> None:
        await asyncio.sleep(0)

    world.clock.while_sleeping = let_the_test_run
    refused = asyncio.Event()
    world.ledger.on_refusal = refused.set
    first = asyncio.create_task(world.scheduler.fire(due))
    await refused.wait()
    first.cancel()  # its replica died with the start stored and the entry not
    with contextlib.suppress(asyncio.CancelledError, NoStreamResponseError):
        await first
    world.clock.while_sleeping = None
    assert started_times(world) == ["10:15:00"]
    assert world.ledger.entries == []

    world.ledger.failures_left = 0
    world.clock.now += timedelta(seconds=5)  # redelivered after the ack wait
    await world.scheduler.fire(due, redelivered=True)
    assert world.ledger.statuses() == [("10:15:00", "started")]


async def test_a_tick_is_kept_in_progress_while_its_entry_is_retried(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.clock.now = datetime(2026, 1, 1, 10, 15, 0, 100_000, tzinfo=UTC)
    world.ledger.failures_left = 3
    kept: list[datetime] = []

    async def still_working() -> None:
        kept.append(world.clock.now)

    await world.scheduler.fire(
        tick("trg_1", 1, "2026-01-01T10:15:00+00:00"), still_working=still_working
    )
    assert len(kept) == 3


async def test_a_one_off_whose_time_passed_before_its_creation_was_handled_still_fires(
    world: World,
):
    # Created 10:00:00 for 10:00:01; this replica gets to the creation at 10:00:04 (a herd of
    # creations ahead of it) and no replica parked it: it used to be left behind, never fired
    # and never recorded. Its timer is parked due, and its tick fires it (within the misfire
    # threshold).
    created_at, at = (
        datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC),
    )
    await world.scheduler.reconcile()
    world.clock.now = at + timedelta(seconds=3)
    one_off = msgspec.structs.replace(
        schedule_trigger("trg_1"), schedule=OnceSchedule(at=at), created_at=created_at
    )
    await world.write(one_off)
    parked = world.timers.parked_ticks["trg_1"]
    assert parked == tick("trg_1", 1, at.isoformat())

    await world.scheduler.fire(parked)
    assert started_times(world) == ["10:00:01"]
    assert world.ledger.statuses() == [("10:00:01", "started")]


async def test_a_schedule_created_during_a_late_catch_up_decides_the_occurrences_it_missed(
    world: World,
):
    # Every 15 minutes, created at 10:10 and handled at 10:31: 10:15 and 10:30 are due. The
    # first is parked due; its tick decides both (misfire policy skip, both later than the
    # 10 s threshold: missed) and parks 10:45.
    created_at = datetime(2026, 1, 1, 10, 10, tzinfo=UTC)
    await world.scheduler.reconcile()
    world.clock.now = datetime(2026, 1, 1, 10, 31, tzinfo=UTC)
    await world.write(msgspec.structs.replace(with_schedule(misfire="skip"), created_at=created_at))
    parked = world.timers.parked_ticks["trg_1"]
    assert parked == tick("trg_1", 1, "2026-01-01T10:15:00+00:00")

    await world.scheduler.fire(parked)
    assert started_times(world) == []
    assert [status for _, status in world.ledger.statuses()] == ["missed", "missed"]
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T10:45:00+00:00")


async def test_a_replica_that_sees_a_one_off_created_after_its_time_leaves_its_tick_alone(
    world: World,
):
    # Another replica parked the timer in time and it went off: its tick is in flight. This
    # replica handles the creation late (busy with a herd): nothing is left to park, and
    # cancelling would purge the tick before it is delivered (the fire would never start).
    at = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
    await world.scheduler.reconcile()
    world.timers.gone_off["trg_1"] = tick("trg_1", 1, at.isoformat())
    world.clock.now = at + timedelta(seconds=3)
    await world.write(
        msgspec.structs.replace(schedule_trigger("trg_1"), schedule=OnceSchedule(at=at))
    )
    assert world.timers.cancels == []
    assert world.timers.gone_off["trg_1"] == tick("trg_1", 1, at.isoformat())
