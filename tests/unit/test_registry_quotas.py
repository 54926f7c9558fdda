"""Per-workspace quotas: the pure decisions, and the registry's rules over an in-memory store."""

import asyncio
from typing import Any

import pytest

from contracts import subjects
from contracts.registry import (
    CreateFlow,
    CreateKey,
    CreateTrigger,
    CreateWorkspace,
    CronSchedule,
    DailySchedule,
    DeleteTrigger,
    Held,
    HourlySchedule,
    IntervalSchedule,
    IntervalScheduleBody,
    NewApiTrigger,
    NewFlow,
    NewKey,
    NewScheduleTrigger,
    NewWorkspace,
    OnceSchedule,
    PythonFlowSettings,
    QuotaUse,
    RevokeKey,
    SchedulePatch,
    SetTriggerEnabled,
    Trigger,
    TriggerChanges,
    UpdateTrigger,
    WeeklySchedule,
)
from services.registry import quotas
from services.registry.core import Registry, RegistryError
from services.registry.quotas import QuotaLimits, QuotaRefused, parse_overrides
from services.registry.settings import RegistrySettings
from shared.ids import new_id
from shared.schedules import fires_per_hour
from shared.settings import from_environment
from tests.unit.fakes import FixedClock, InMemoryRegistryStore

EVERY_SECOND = IntervalScheduleBody(every=1)
FIRES = quotas.SCHEDULE_FIRES


def use(quota: Any = "triggers", **held: int) -> QuotaUse:
    return QuotaUse(
        workspace_id="ws_x",
        quota=quota,
        held={name: Held(amount=amount) for name, amount in held.items()},
    )


# --- the pure decisions ----------------------------------------------------------------------


def test_a_schedule_counts_the_fires_of_its_busiest_hour() -> None:
    assert fires_per_hour(CronSchedule(cron="* * * * * *")) == 3600
    assert fires_per_hour(CronSchedule(cron="*/10 * * * * *")) == 360
    assert fires_per_hour(CronSchedule(cron="*/5 * * * *")) == 12
    # Day and hour fields make a schedule quieter over a day, never in its busiest hour.
    assert fires_per_hour(CronSchedule(cron="*/15 9-17 * * MON-FRI")) == 4
    assert fires_per_hour(HourlySchedule(minute=5)) == 1
    assert fires_per_hour(DailySchedule(at="09:00")) == 1
    assert fires_per_hour(WeeklySchedule(days=("mon", "fri"), at="09:00:30")) == 1
    assert fires_per_hour(IntervalSchedule(every=1)) == 3600
    # A period that does not divide the hour fits one more fire into some hours.
    assert fires_per_hour(IntervalSchedule(every=7)) == 515
    assert fires_per_hour(IntervalSchedule(every=2, unit="hours")) == 1
    assert fires_per_hour(OnceSchedule(at="2030-01-01T00:00:00Z")) == 1  # type: ignore[arg-type]


def test_taking_the_last_slot_passes_and_the_next_is_refused_with_the_limit_and_the_use() -> None:
    full = quotas.take(use(a=1, b=1), "c", 1, limit=3)
    assert quotas.used(full) == 3

    with pytest.raises(QuotaRefused) as caught:
        quotas.take(full, "d", 1, limit=3)

    refused = caught.value.refused
    assert (refused.quota, refused.limit, refused.used, refused.requested) == ("triggers", 3, 3, 1)
    assert refused.setting == "REGISTRY_MAX_TRIGGERS"
    assert "3 of its 3 triggers" in str(caught.value)
    assert "DELETE /v1/triggers/{id}" in str(caught.value)


def test_taking_a_share_twice_counts_once_and_giving_it_back_twice_frees_it_once() -> None:
    once = quotas.take(use(a=1), "b", 1, limit=2)
    assert quotas.take(once, "b", 1, limit=2) == once

    freed = quotas.give_back(quotas.give_back(once, "b"), "b")
    assert quotas.used(freed) == 1
    assert quotas.take(freed, "c", 1, limit=2).held.keys() == {"a", "c"}


def test_a_schedule_made_more_frequent_needs_only_the_difference() -> None:
    fires = use(FIRES, a=3000, b=600)
    faster = quotas.take(fires, "b", 1200, limit=4200)
    assert quotas.used(faster) == 4200

    with pytest.raises(QuotaRefused) as caught:
        quotas.take(fires, "b", 1300, limit=4200)
    assert (caught.value.refused.used, caught.value.refused.requested) == (3600, 700)
    assert "schedule fires an hour" in str(caught.value)


def test_a_settle_of_an_older_edit_never_overwrites_a_newer_one() -> None:
    fires = QuotaUse(workspace_id="ws_x", quota=FIRES, held={"t": Held(amount=3600, version=2)})
    newer = quotas.settle(fires, "t", 60, version=4)
    assert newer.held["t"] == Held(amount=60, version=4)

    assert quotas.settle(newer, "t", 3600, version=3) == newer
    # A holder gone meanwhile (its trigger was deleted) is not brought back.
    assert quotas.settle(newer, "gone", 60, version=9) == newer
    assert "t" not in quotas.settle(newer, "t", 0, version=5).held


def test_only_holders_without_a_record_that_are_not_being_written_are_dropped() -> None:
    old, young, live = new_id("trg", 1_000), new_id("trg", 9_000), new_id("trg", 1_000)
    held = use(**{old: 1, young: 1, live: 1})

    kept = quotas.without_dead(held, live={live}, minted_before_ms=5_000)

    assert kept.held.keys() == {young, live}


def test_overrides_name_a_workspace_and_a_quota_and_anything_else_is_refused() -> None:
    ws = new_id("ws")
    parsed = parse_overrides(f" {ws}.triggers=5000 , {ws}.schedule_fires_per_hour=72000,")
    assert parsed == {ws: {"triggers": 5000, "schedule_fires_per_hour": 72000}}

    limits = QuotaLimits(overrides=parsed)
    assert limits.of(ws, "triggers") == 5000
    assert limits.of(ws, "flows") == 500
    assert limits.of(new_id("ws"), "triggers") == 1000

    for wrong in ("triggers=5", f"{ws}.runs=5", f"{ws}.triggers=-1", f"{ws}.triggers"):
        with pytest.raises(ValueError, match=r"<workspace id>\.<quota>=<limit>"):
            parse_overrides(wrong)
    with pytest.raises(ValueError, match="between 0 and 20000"):
        QuotaLimits(overrides={ws: {"triggers": 50_000}})


def test_the_limits_are_read_from_the_environment() -> None:
    ws = new_id("ws")
    settings = from_environment(
        RegistrySettings,
        {
            "REGISTRY_MAX_TRIGGERS": "20",
            "REGISTRY_MAX_API_KEYS": "5",
            "REGISTRY_QUOTA_OVERRIDES": f"{ws}.flows=7",
        },
    )
    limits = settings.quota_limits()

    assert limits.of(ws, "triggers") == 20
    assert limits.of(ws, "api_keys") == 5
    assert limits.of(ws, "flows") == 7
    assert limits.of(new_id("ws"), "flows") == 500
    assert limits.of(ws, "schedule_fires_per_hour") == 36_000


# --- the registry's rules ---------------------------------------------------------------------


def registry_with(store: InMemoryRegistryStore, clock: FixedClock, **limits: int) -> Registry:
    return Registry(store, clock, QuotaLimits(defaults={**quotas.DEFAULT_LIMITS, **limits}))


@pytest.fixture
def store() -> InMemoryRegistryStore:
    return InMemoryRegistryStore()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


async def setup(registry: Registry) -> tuple[str, str]:
    created = await registry.create_workspace(CreateWorkspace(workspace=NewWorkspace(name="a")))
    ws = created.workspace.id
    new = NewFlow(name="f", settings=PythonFlowSettings(function="echo"))
    flow = await registry.create_flow(CreateFlow(workspace_id=ws, flow=new))
    return ws, flow.id


async def api_trigger(registry: Registry, ws: str, flow_id: str) -> Trigger:
    new = NewApiTrigger(flow_id=flow_id)
    return await registry.create_trigger(CreateTrigger(workspace_id=ws, trigger=new))


async def schedule_trigger(
    registry: Registry, ws: str, flow_id: str, schedule: Any = EVERY_SECOND
) -> Trigger:
    new = NewScheduleTrigger(flow_id=flow_id, schedule=schedule)
    return await registry.create_trigger(CreateTrigger(workspace_id=ws, trigger=new))


async def refused(call: Any) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        await call
    problem = caught.value.problem
    assert (problem.status, problem.code) == (422, "quota_exceeded"), problem
    assert problem.quota is not None
    return caught.value


async def test_a_trigger_past_the_limit_is_refused_and_deleting_one_frees_its_slot(
    store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    registry = registry_with(store, clock, triggers=2)
    ws, flow_id = await setup(registry)
    first = await api_trigger(registry, ws, flow_id)
    await api_trigger(registry, ws, flow_id)

    error = await refused(api_trigger(registry, ws, flow_id))
    assert error.problem.quota is not None
    assert (error.problem.quota.limit, error.problem.quota.used) == (2, 2)
    assert len(store.keys(subjects.TRIGGERS_BUCKET)) == 2

    await registry.delete_trigger(DeleteTrigger(workspace_id=ws, trigger_id=first.id))
    await api_trigger(registry, ws, flow_id)


async def test_concurrent_creates_at_the_limit_admit_exactly_the_limit(
    store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    registry = registry_with(store, clock, triggers=3)
    ws, flow_id = await setup(registry)

    results = await asyncio.gather(
        *(api_trigger(registry, ws, flow_id) for _ in range(12)), return_exceptions=True
    )

    assert sum(isinstance(result, Trigger) for result in results) == 3
    assert all(
        isinstance(r, Trigger) or r.problem.code == "quota_exceeded"  # type: ignore[union-attr]
        for r in results
    )
    assert len(store.keys(subjects.TRIGGERS_BUCKET)) == 3


async def test_keys_and_flows_have_their_own_limits_and_the_first_admin_key_counts(
    store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    registry = registry_with(store, clock, api_keys=2, flows=1)
    ws, _ = await setup(registry)

    issued = await registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name="k")))
    error = await refused(registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name="k"))))
    assert "2 of its 2 API keys" in str(error)
    await registry.revoke_key(RevokeKey(workspace_id=ws, key_id=issued.key.id))
    await registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name="k")))

    new = NewFlow(name="g", settings=PythonFlowSettings(function="echo"))
    error = await refused(registry.create_flow(CreateFlow(workspace_id=ws, flow=new)))
    assert error.problem.quota is not None
    assert error.problem.quota.setting == "REGISTRY_MAX_FLOWS"


async def test_a_refused_create_leaves_nothing_held(
    store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    registry = registry_with(store, clock, triggers=5, schedule_fires_per_hour=3600)
    ws, flow_id = await setup(registry)
    await schedule_trigger(registry, ws, flow_id)

    # The trigger slot it took is given back when the fires refuse it.
    await refused(schedule_trigger(registry, ws, flow_id))
    for _ in range(4):
        await api_trigger(registry, ws, flow_id)


async def test_schedules_share_the_workspace_fire_rate_and_pausing_frees_their_share(
    store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    registry = registry_with(store, clock, schedule_fires_per_hour=7300)
    ws, flow_id = await setup(registry)
    first = await schedule_trigger(registry, ws, flow_id)
    await schedule_trigger(registry, ws, flow_id)

    error = await refused(schedule_trigger(registry, ws, flow_id))
    assert error.problem.quota is not None
    assert (error.problem.quota.used, error.problem.quota.requested) == (7200, 3600)
    # Schedules that fire rarely still fit, and so does any other kind of trigger.
    await schedule_trigger(registry, ws, flow_id, HourlySchedule(minute=5))
    await api_trigger(registry, ws, flow_id)

    pause = SetTriggerEnabled(workspace_id=ws, trigger_id=first.id, enabled=False)
    await registry.set_trigger_enabled(pause)
    third = await schedule_trigger(registry, ws, flow_id)
    resume = SetTriggerEnabled(workspace_id=ws, trigger_id=first.id, enabled=True)
    await refused(registry.set_trigger_enabled(resume))

    slower = TriggerChanges(schedule=SchedulePatch(every=60))
    await registry.update_trigger(
        UpdateTrigger(workspace_id=ws, trigger_id=third.id, changes=slower)
    )
    resumed = await registry.set_trigger_enabled(resume)
    assert resumed.enabled

    faster = TriggerChanges(schedule=SchedulePatch(every=10))
    change = UpdateTrigger(workspace_id=ws, trigger_id=third.id, changes=faster)
    await refused(registry.update_trigger(change))


async def test_a_workspace_without_a_record_of_its_use_is_counted_from_its_records(
    store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    registry = registry_with(store, clock, triggers=3, schedule_fires_per_hour=4000)
    ws, flow_id = await setup(registry)
    await api_trigger(registry, ws, flow_id)
    await schedule_trigger(registry, ws, flow_id)
    # As for a workspace created before quotas existed.
    for quota in (quotas.TRIGGERS, FIRES):
        del store.buckets[subjects.WORKSPACES_BUCKET][subjects.quota_key(ws, quota)]

    error = await refused(schedule_trigger(registry, ws, flow_id))
    assert error.problem.quota is not None
    assert error.problem.quota.used == 3600
    await schedule_trigger(registry, ws, flow_id, HourlySchedule(minute=5))
    error = await refused(api_trigger(registry, ws, flow_id))
    assert error.problem.quota is not None
    assert error.problem.quota.used == 3


async def test_a_share_left_by_a_request_cut_short_is_reclaimed_when_the_limit_is_reached(
    store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    registry = registry_with(store, clock, triggers=2)
    ws, flow_id = await setup(registry)
    await api_trigger(registry, ws, flow_id)
    # A registry that died between taking a slot and writing its trigger, two minutes ago.
    minted = int(clock.now.timestamp() * 1000) - 120_000
    lost = new_id("trg", minted)
    key = subjects.quota_key(ws, quotas.TRIGGERS)
    await store.update(
        subjects.WORKSPACES_BUCKET, key, QuotaUse, lambda u: quotas.take(u, lost, 1, 2)
    )

    await api_trigger(registry, ws, flow_id)

    # A slot taken a moment ago is a create in flight: never reclaimed.
    in_flight = new_id("trg", int(clock.now.timestamp() * 1000))
    await store.update(
        subjects.WORKSPACES_BUCKET, key, QuotaUse, lambda u: quotas.give_back(u, lost)
    )
    await store.update(
        subjects.WORKSPACES_BUCKET, key, QuotaUse, lambda u: quotas.take(u, in_flight, 1, 3)
    )
    clock.advance(120)
    await refused(api_trigger(registry, ws, flow_id))
