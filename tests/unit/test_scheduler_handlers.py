"""The scheduler's decisions with in-memory fakes and an injected clock (no broker, no sleeps)."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from contracts.registry import CronSchedule, Trigger
from contracts.runs import FlowStart
from contracts.scheduling import ScheduleTick
from services.scheduler.handlers import Scheduler, fire_key
from shared.ids import derived_id

NOW = datetime(2026, 1, 1, 10, 0, 0, 250_000, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakeTriggers:
    def __init__(self) -> None:
        self.by_id: dict[str, Trigger] = {}

    def get(self, key: str) -> Trigger | None:
        return self.by_id.get(key)

    def values(self) -> Iterator[Trigger]:
        return iter(list(self.by_id.values()))


class FakeTimers:
    def __init__(self) -> None:
        self.parked_ticks: dict[str, ScheduleTick] = {}
        self.parks = 0
        self.cancels: list[str] = []

    async def park(self, tick: ScheduleTick) -> None:
        self.parks += 1
        self.parked_ticks[tick.trigger_id] = tick

    async def parked(self, trigger_id: str) -> ScheduleTick | None:
        return self.parked_ticks.get(trigger_id)

    async def cancel(self, trigger_id: str) -> None:
        self.cancels.append(trigger_id)
        self.parked_ticks.pop(trigger_id, None)


class FakeStarts:
    def __init__(self) -> None:
        self.published: list[tuple[FlowStart, str]] = []
        self.failing = False

    async def publish(self, start: FlowStart, msg_id: str) -> None:
        if self.failing:
            raise ConnectionError("no PubAck")
        self.published.append((start, msg_id))


def schedule_trigger(trigger_id: str = "trg_1", cron: str = "*/15 * * * *", **changes) -> Trigger:
    trigger = Trigger(
        id=trigger_id,
        workspace_id="wsp_1",
        flow_id="flw_1",
        type="schedule",
        schedule=CronSchedule(cron=cron),
        created_at=NOW,
        updated_at=NOW,
    )
    return msgspec.structs.replace(trigger, **changes)


class World:
    """A scheduler wired to fakes, plus helpers to play the registry."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.triggers = FakeTriggers()
        self.timers = FakeTimers()
        self.starts = FakeStarts()
        self.scheduler = Scheduler(self.triggers, self.timers, self.starts, clock=self.clock)

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
        "trg_api": schedule_trigger("trg_api", type="api", schedule=None),
        "trg_no_schedule": schedule_trigger("trg_no_schedule", schedule=None),
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
    await world.write(schedule_trigger("trg_api", type="api", schedule=None))
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


async def test_fires_missed_while_the_scheduler_was_down_are_skipped(world: World):
    world.triggers.by_id["trg_1"] = schedule_trigger("trg_1")
    world.clock.now = datetime(2026, 1, 1, 11, 7, tzinfo=UTC)
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert len(world.starts.published) == 1  # the late tick itself still starts once
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 1, "2026-01-01T11:15:00+00:00")


@pytest.mark.parametrize(
    "current",
    [
        None,
        schedule_trigger("trg_1", enabled=False, version=2),
        schedule_trigger("trg_1", type="api", schedule=None, version=2),
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

    class EditingStarts(FakeStarts):
        async def publish(self, start: FlowStart, msg_id: str) -> None:
            await super().publish(start, msg_id)
            await world.write(schedule_trigger("trg_1", cron="0 12 * * *", version=2))

    world.scheduler = Scheduler(world.triggers, world.timers, EditingStarts(), clock=world.clock)
    await world.scheduler.reconcile()
    await world.scheduler.fire(tick("trg_1", 1, "2026-01-01T10:15:00+00:00"))
    assert world.timers.parked_ticks["trg_1"] == tick("trg_1", 2, "2026-01-01T12:00:00+00:00")
