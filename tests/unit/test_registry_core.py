"""The registry's rules, over an in-memory store and a clock that stands still."""

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import msgspec
import pytest

from contracts import subjects
from contracts.registry import (
    ApiKey,
    ApiTrigger,
    CreateFlow,
    CreateKey,
    CreateTrigger,
    CreateWorkspace,
    CronSchedule,
    DailySchedule,
    DeleteTrigger,
    Flow,
    GetFlow,
    GetTrigger,
    HourlySchedule,
    HttpFlowSettingsBody,
    KeyUsed,
    ListFlows,
    ListKeys,
    ListTriggers,
    ManualTrigger,
    NewApiTrigger,
    NewFlow,
    NewKey,
    NewManualTrigger,
    NewScheduleTrigger,
    NewTrigger,
    NewWorkspace,
    Problem,
    PythonFlowSettings,
    RevokeKey,
    SchedulePatch,
    ScheduleTrigger,
    SetTriggerEnabled,
    Trigger,
    TriggerChanges,
    UpdateTrigger,
    WorkspaceCreated,
)
from services.registry import core
from services.registry.core import Registry, RegistryError
from shared import api_keys, ids
from shared.ids import new_id
from tests.unit.fakes import FixedClock, InMemoryRegistryStore

EVERY_FIVE_MINUTES = CronSchedule(cron="*/5 * * * *", timezone="Europe/Berlin")


@pytest.fixture
def store() -> InMemoryRegistryStore:
    return InMemoryRegistryStore()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def registry(store: InMemoryRegistryStore, clock: FixedClock) -> Registry:
    return Registry(store, clock)


async def refusal(call: Awaitable[Any]) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        await call
    return caught.value


async def outcome(call: Awaitable[Any]) -> Any:
    """The result of `call`, or the `Problem` it was refused with."""
    try:
        return await call
    except RegistryError as error:
        return error.problem


async def workspace(registry: Registry, name: str = "acme") -> WorkspaceCreated:
    return await registry.create_workspace(CreateWorkspace(workspace=NewWorkspace(name=name)))


async def flow(registry: Registry, workspace_id: str, function: str = "echo") -> Flow:
    new = NewFlow(name="nightly", settings=PythonFlowSettings(function=function))
    return await registry.create_flow(CreateFlow(workspace_id=workspace_id, flow=new))


NEW_TRIGGERS: dict[str, type[NewTrigger]] = {
    "api": NewApiTrigger,
    "schedule": NewScheduleTrigger,
    "manual": NewManualTrigger,
}


async def trigger(
    registry: Registry, workspace_id: str, flow_id: str, type: str = "api", **fields: Any
) -> Trigger:
    new = NEW_TRIGGERS[type](flow_id=flow_id, **fields)
    return await registry.create_trigger(CreateTrigger(workspace_id=workspace_id, trigger=new))


# --- workspaces and keys --------------------------------------------------------------------


async def test_creating_a_workspace_returns_an_admin_key_whose_digest_is_stored_not_the_secret(
    registry: Registry, store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    created = await workspace(registry, "  acme  ")

    assert created.workspace.name == "acme"
    assert created.workspace.created_at == clock.now
    issued = created.admin_key
    assert issued.key.scope == "admin"
    assert api_keys.is_well_formed(issued.secret)
    assert issued.key.prefix == api_keys.shown_prefix(issued.secret)
    key_record = subjects.record_key(created.workspace.id, issued.key.id)
    raw = store.raw(subjects.API_KEYS_BUCKET, key_record)
    assert raw is not None
    assert issued.secret.encode() not in raw
    stored = msgspec.json.decode(raw, type=ApiKey)
    assert stored.digest == api_keys.digest(issued.secret)
    assert stored.workspace_id == created.workspace.id
    assert store.raw(subjects.WORKSPACES_BUCKET, created.workspace.id) is not None


async def test_a_workspace_without_a_name_is_refused(registry: Registry) -> None:
    error = await refusal(workspace(registry, "   "))

    assert (error.problem.status, error.problem.code) == (422, "invalid_name")


@pytest.mark.parametrize(
    "name",
    ["nul\x00here", "right\u202eto left", "\x1b[31mred\x1b[0m", "two\nlines", "iso\u2067late"],
)
async def test_a_name_that_is_not_printable_text_is_invalid_name(
    registry: Registry, name: str
) -> None:
    ws = (await workspace(registry)).workspace.id

    refusals = [
        await refusal(workspace(registry, name)),
        await refusal(registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name=name)))),
        await refusal(
            registry.create_flow(
                CreateFlow(
                    workspace_id=ws,
                    flow=NewFlow(name=name, settings=PythonFlowSettings(function="echo")),
                )
            )
        ),
    ]

    assert {(e.problem.status, e.problem.code) for e in refusals} == {(422, "invalid_name")}


async def test_a_name_in_any_script_with_emoji_is_accepted(registry: Registry) -> None:
    created = await workspace(registry, "Ärger 東京 مرحبا 🚀")

    assert created.workspace.name == "Ärger 東京 مرحبا 🚀"


async def test_keys_are_listed_without_secrets_or_digests(registry: Registry) -> None:
    created = await workspace(registry)
    ws = created.workspace.id
    second = await registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name="ci")))
    third = await registry.create_key(
        CreateKey(workspace_id=ws, key=NewKey(name="", scope="admin"))
    )

    keys = (await registry.list_keys(ListKeys(workspace_id=ws))).items

    assert {(k.id, k.name, k.scope) for k in keys} == {
        (created.admin_key.key.id, "admin", "admin"),
        (second.key.id, "ci", "trigger"),
        (third.key.id, "admin key", "admin"),
    }
    for key in keys:
        listed = msgspec.to_builtins(key)
        assert "digest" not in listed
        assert "secret" not in listed
        assert not any(
            secret in str(listed)
            for secret in (created.admin_key.secret, second.secret, third.secret)
        )


async def test_keys_of_one_workspace_are_not_listed_in_another(registry: Registry) -> None:
    acme = await workspace(registry, "acme")
    await workspace(registry, "globex")

    keys = (await registry.list_keys(ListKeys(workspace_id=acme.workspace.id))).items

    assert [k.id for k in keys] == [acme.admin_key.key.id]


async def test_a_key_for_an_unknown_workspace_is_workspace_not_found(registry: Registry) -> None:
    error = await refusal(
        registry.create_key(CreateKey(workspace_id=new_id("ws"), key=NewKey(name="ci")))
    )

    assert (error.problem.status, error.problem.code) == (404, "workspace_not_found")


async def test_a_revoked_key_is_removed_and_no_longer_listed(
    registry: Registry, store: InMemoryRegistryStore
) -> None:
    created = await workspace(registry)
    ws = created.workspace.id
    ci = await registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name="ci")))

    revoked = await registry.revoke_key(RevokeKey(workspace_id=ws, key_id=ci.key.id))

    assert revoked == ci.key
    assert store.raw(subjects.API_KEYS_BUCKET, subjects.record_key(ws, ci.key.id)) is None
    listed = (await registry.list_keys(ListKeys(workspace_id=ws))).items
    assert [k.id for k in listed] == [created.admin_key.key.id]


async def test_revoking_the_last_admin_key_is_refused_with_last_admin_key(
    registry: Registry,
) -> None:
    created = await workspace(registry)
    ws = created.workspace.id
    await registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name="ci")))

    error = await refusal(
        registry.revoke_key(RevokeKey(workspace_id=ws, key_id=created.admin_key.key.id))
    )

    assert (error.problem.status, error.problem.code) == (409, "last_admin_key")
    assert "admin key" in error.problem.message


async def test_an_admin_key_can_be_revoked_once_another_admin_key_exists(
    registry: Registry,
) -> None:
    created = await workspace(registry)
    ws = created.workspace.id
    spare = await registry.create_key(
        CreateKey(workspace_id=ws, key=NewKey(name="spare", scope="admin"))
    )

    await registry.revoke_key(RevokeKey(workspace_id=ws, key_id=created.admin_key.key.id))

    assert [k.id for k in (await registry.list_keys(ListKeys(workspace_id=ws))).items] == [
        spare.key.id
    ]


async def test_two_admin_keys_revoking_each_other_at_once_leave_one_admin_key(
    registry: Registry,
) -> None:
    created = await workspace(registry)
    ws = created.workspace.id
    spare = await registry.create_key(
        CreateKey(workspace_id=ws, key=NewKey(name="spare", scope="admin"))
    )

    results = await asyncio.gather(
        outcome(registry.revoke_key(RevokeKey(workspace_id=ws, key_id=created.admin_key.key.id))),
        outcome(registry.revoke_key(RevokeKey(workspace_id=ws, key_id=spare.key.id))),
    )

    refused = [r for r in results if isinstance(r, Problem)]
    assert [(p.status, p.code) for p in refused] == [(409, "last_admin_key")]
    left = (await registry.list_keys(ListKeys(workspace_id=ws))).items
    assert [k.scope for k in left] == ["admin"]


async def test_a_workspace_stored_without_its_admin_key_record_still_keeps_one_admin_key(
    registry: Registry, store: InMemoryRegistryStore
) -> None:
    created = await workspace(registry)
    ws = created.workspace.id
    spare = await registry.create_key(
        CreateKey(workspace_id=ws, key=NewKey(name="spare", scope="admin"))
    )
    del store.buckets[subjects.WORKSPACES_BUCKET][subjects.admin_keys_key(ws)]

    results = await asyncio.gather(
        *(
            outcome(registry.revoke_key(RevokeKey(workspace_id=ws, key_id=key_id)))
            for key_id in (created.admin_key.key.id, spare.key.id)
        )
    )

    assert sum(isinstance(r, Problem) for r in results) == 1
    assert len((await registry.list_keys(ListKeys(workspace_id=ws))).items) == 1


async def test_revoking_a_key_of_another_workspace_is_key_not_found(registry: Registry) -> None:
    acme = await workspace(registry, "acme")
    globex = await workspace(registry, "globex")
    ci = await registry.create_key(
        CreateKey(workspace_id=globex.workspace.id, key=NewKey(name="ci"))
    )

    error = await refusal(
        registry.revoke_key(RevokeKey(workspace_id=acme.workspace.id, key_id=ci.key.id))
    )

    assert (error.problem.status, error.problem.code) == (404, "key_not_found")


async def test_key_used_only_moves_last_used_at_forward(
    registry: Registry, store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    created = await workspace(registry)
    ws, key_id = created.workspace.id, created.admin_key.key.id
    later, earlier = clock.now.replace(hour=14), clock.now.replace(hour=13)

    await registry.key_used(KeyUsed(workspace_id=ws, key_id=key_id, used_at=later))
    await registry.key_used(KeyUsed(workspace_id=ws, key_id=key_id, used_at=earlier))

    [listed] = (await registry.list_keys(ListKeys(workspace_id=ws))).items
    assert listed.last_used_at == later


async def test_key_used_for_an_unknown_or_malformed_key_changes_nothing(
    registry: Registry, store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    created = await workspace(registry)
    writes = store.writes

    for ws, key_id in [
        (created.workspace.id, new_id("key")),
        (created.workspace.id, "*"),
        ("*", created.admin_key.key.id),
    ]:
        await registry.key_used(KeyUsed(workspace_id=ws, key_id=key_id, used_at=clock.now))

    assert store.writes == writes


# --- flows ----------------------------------------------------------------------------------


async def test_a_flow_is_stored_under_its_workspace(
    registry: Registry, store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    ws = (await workspace(registry)).workspace.id

    created = await flow(registry, ws)

    assert created.workspace_id == ws
    assert created.created_at == clock.now
    assert store.keys(subjects.FLOWS_BUCKET) == [subjects.record_key(ws, created.id)]
    assert await registry.get_flow(GetFlow(workspace_id=ws, flow_id=created.id)) == created
    assert (await registry.list_flows(ListFlows(workspace_id=ws))).items == [created]


async def test_a_flow_whose_function_is_not_a_name_is_invalid_function(
    registry: Registry,
) -> None:
    ws = (await workspace(registry)).workspace.id

    error = await refusal(flow(registry, ws, function="rm -rf /"))

    assert (error.problem.status, error.problem.code) == (422, "invalid_function")


async def test_a_flow_of_another_workspace_is_flow_not_found(registry: Registry) -> None:
    acme = (await workspace(registry, "acme")).workspace.id
    globex = (await workspace(registry, "globex")).workspace.id
    theirs = await flow(registry, globex)

    error = await refusal(registry.get_flow(GetFlow(workspace_id=acme, flow_id=theirs.id)))

    assert (error.problem.status, error.problem.code) == (404, "flow_not_found")


# --- triggers -------------------------------------------------------------------------------


async def test_a_trigger_starts_at_version_1_with_the_clock_s_time(
    registry: Registry, clock: FixedClock
) -> None:
    ws = (await workspace(registry)).workspace.id
    nightly = await flow(registry, ws)

    created = await trigger(
        registry, ws, nightly.id, type="schedule", name="every 5", schedule=EVERY_FIVE_MINUTES
    )

    assert created.version == 1
    assert created.enabled
    assert created.schedule == EVERY_FIVE_MINUTES
    assert created.created_at == created.updated_at == clock.now
    assert await registry.get_trigger(GetTrigger(workspace_id=ws, trigger_id=created.id)) == created


async def test_a_trigger_for_a_flow_of_another_workspace_is_flow_not_found(
    registry: Registry, store: InMemoryRegistryStore
) -> None:
    acme = (await workspace(registry, "acme")).workspace.id
    globex = (await workspace(registry, "globex")).workspace.id
    theirs = await flow(registry, globex)

    error = await refusal(trigger(registry, acme, theirs.id))

    assert (error.problem.status, error.problem.code) == (404, "flow_not_found")
    assert store.keys(subjects.TRIGGERS_BUCKET) == []


def test_a_schedule_trigger_body_without_a_schedule_is_refused_naming_the_field() -> None:
    body = b'{"flow_id": "flw_1", "type": "schedule"}'

    with pytest.raises(msgspec.ValidationError, match="`schedule`"):
        msgspec.json.decode(body, type=NewTrigger)


@pytest.mark.parametrize("trigger_type", ["api", "manual"])
def test_a_trigger_body_that_is_not_a_schedule_with_a_schedule_is_refused(
    trigger_type: str,
) -> None:
    body = msgspec.json.encode(
        {"flow_id": "flw_1", "type": trigger_type, "schedule": EVERY_FIVE_MINUTES}
    )

    with pytest.raises(msgspec.ValidationError, match="unknown field `schedule`"):
        msgspec.json.decode(body, type=NewTrigger)


def test_records_stored_in_the_old_flat_shape_still_decode() -> None:
    common = {
        "id": "trg_1",
        "workspace_id": "wsp_1",
        "flow_id": "flw_1",
        "name": "",
        "enabled": True,
        "overlap": "allow",
        "version": 3,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    api = {**common, "type": "api", "schedule": None, "sync_wait_seconds": 2.5}
    schedule = {
        **common,
        "type": "schedule",
        "sync_wait_seconds": 10.0,
        "schedule": {"kind": "cron", "cron": "*/5 * * * *", "future_option": 1},
    }
    manual = {**common, "type": "manual", "schedule": None, "sync_wait_seconds": 10.0}

    decoded = [
        msgspec.json.decode(msgspec.json.encode(r), type=Trigger) for r in (api, schedule, manual)
    ]

    assert [type(t) for t in decoded] == [ApiTrigger, ScheduleTrigger, ManualTrigger]
    assert decoded[0].sync_wait_seconds == 2.5
    assert decoded[1].schedule == CronSchedule(cron="*/5 * * * *")
    assert msgspec.json.decode(msgspec.json.encode(decoded[1]))["type"] == "schedule"


@pytest.mark.parametrize(
    ("schedule", "named"),
    [
        (CronSchedule(cron="61 * * * *"), "minute"),
        (CronSchedule(cron="* * * *"), "4 fields"),
        (CronSchedule(cron="0 9 * * *", timezone="Mars/Olympus_Mons"), "Mars/Olympus_Mons"),
    ],
    ids=["minute out of range", "too few fields", "unknown time zone"],
)
async def test_an_unusable_schedule_is_invalid_schedule_with_a_message_naming_the_problem(
    registry: Registry, store: InMemoryRegistryStore, schedule: CronSchedule, named: str
) -> None:
    ws = (await workspace(registry)).workspace.id
    nightly = await flow(registry, ws)

    error = await refusal(trigger(registry, ws, nightly.id, type="schedule", schedule=schedule))

    assert (error.problem.status, error.problem.code) == (422, "invalid_schedule")
    assert named in error.problem.message
    assert store.keys(subjects.TRIGGERS_BUCKET) == []


async def test_updating_a_trigger_bumps_its_version_and_keeps_unchanged_fields(
    registry: Registry, clock: FixedClock
) -> None:
    ws = (await workspace(registry)).workspace.id
    nightly = await flow(registry, ws)
    created = await trigger(
        registry, ws, nightly.id, type="schedule", name="old", schedule=EVERY_FIVE_MINUTES
    )
    clock.advance(60)

    updated = await registry.update_trigger(
        UpdateTrigger(workspace_id=ws, trigger_id=created.id, changes=TriggerChanges(name="new"))
    )

    assert updated == msgspec.structs.replace(created, name="new", version=2, updated_at=clock.now)
    assert await registry.get_trigger(GetTrigger(workspace_id=ws, trigger_id=created.id)) == updated


async def test_moving_a_trigger_to_another_flow_of_the_workspace_keeps_the_rest(
    registry: Registry,
) -> None:
    ws = (await workspace(registry)).workspace.id
    first, second = await flow(registry, ws), await flow(registry, ws)
    created = await trigger(registry, ws, first.id, name="hook")

    updated = await registry.update_trigger(
        UpdateTrigger(
            workspace_id=ws, trigger_id=created.id, changes=TriggerChanges(flow_id=second.id)
        )
    )

    assert isinstance(updated, ApiTrigger)
    assert (updated.flow_id, updated.name, updated.version) == (second.id, "hook", 2)
    listed = (await registry.list_triggers(ListTriggers(workspace_id=ws, flow_id=second.id))).items
    assert [t.id for t in listed] == [created.id]
    assert (
        await registry.list_triggers(ListTriggers(workspace_id=ws, flow_id=first.id))
    ).items == []


async def test_moving_a_trigger_to_a_flow_of_another_workspace_is_flow_not_found(
    registry: Registry,
) -> None:
    acme = (await workspace(registry, "acme")).workspace.id
    globex = (await workspace(registry, "globex")).workspace.id
    created = await trigger(registry, acme, (await flow(registry, acme)).id)
    theirs = await flow(registry, globex)

    error = await refusal(
        registry.update_trigger(
            UpdateTrigger(
                workspace_id=acme, trigger_id=created.id, changes=TriggerChanges(flow_id=theirs.id)
            )
        )
    )

    assert (error.problem.status, error.problem.code) == (404, "flow_not_found")


async def test_changing_a_schedule_trigger_into_an_api_trigger_drops_its_schedule(
    registry: Registry,
) -> None:
    ws = (await workspace(registry)).workspace.id
    nightly = await flow(registry, ws)
    created = await trigger(registry, ws, nightly.id, type="schedule", schedule=EVERY_FIVE_MINUTES)

    updated = await registry.update_trigger(
        UpdateTrigger(workspace_id=ws, trigger_id=created.id, changes=TriggerChanges(type="api"))
    )

    assert isinstance(updated, ApiTrigger)
    assert (updated.sync_wait_seconds, updated.version) == (10.0, 2)
    assert "schedule" not in msgspec.json.decode(msgspec.json.encode(updated))


async def test_changing_an_api_trigger_into_a_schedule_trigger_needs_a_schedule(
    registry: Registry,
) -> None:
    ws = (await workspace(registry)).workspace.id
    created = await trigger(registry, ws, (await flow(registry, ws)).id)
    change = UpdateTrigger(
        workspace_id=ws, trigger_id=created.id, changes=TriggerChanges(type="schedule")
    )

    error = await refusal(registry.update_trigger(change))
    updated = await registry.update_trigger(
        msgspec.structs.replace(
            change,
            changes=TriggerChanges(
                type="schedule",
                schedule=SchedulePatch(kind="cron", cron="*/5 * * * *", timezone="Europe/Berlin"),
            ),
        )
    )

    assert (error.problem.status, error.problem.code) == (422, "schedule_required")
    assert isinstance(updated, ScheduleTrigger)
    assert updated.schedule == EVERY_FIVE_MINUTES


async def test_an_invalid_schedule_change_leaves_the_trigger_as_it_was(
    registry: Registry,
) -> None:
    ws = (await workspace(registry)).workspace.id
    created = await trigger(
        registry, ws, (await flow(registry, ws)).id, type="schedule", schedule=EVERY_FIVE_MINUTES
    )

    error = await refusal(
        registry.update_trigger(
            UpdateTrigger(
                workspace_id=ws,
                trigger_id=created.id,
                changes=TriggerChanges(schedule=SchedulePatch(cron="0 25 * * *")),
            )
        )
    )

    assert (error.problem.code, "hour" in error.problem.message) == ("invalid_schedule", True)
    assert await registry.get_trigger(GetTrigger(workspace_id=ws, trigger_id=created.id)) == created


async def test_pause_and_resume_bump_the_version_only_when_the_state_changes(
    registry: Registry, store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    ws = (await workspace(registry)).workspace.id
    created = await trigger(registry, ws, (await flow(registry, ws)).id)

    def set_enabled(enabled: bool) -> Awaitable[Trigger]:
        return registry.set_trigger_enabled(
            SetTriggerEnabled(workspace_id=ws, trigger_id=created.id, enabled=enabled)
        )

    clock.advance(1)
    paused = await set_enabled(False)
    writes = store.writes
    clock.advance(1)
    paused_again = await set_enabled(False)
    resumed = await set_enabled(True)
    resumed_again = await set_enabled(True)

    assert (paused.enabled, paused.version) == (False, 2)
    assert paused_again == paused
    assert store.writes == writes + 1
    assert (resumed.enabled, resumed.version, resumed.updated_at) == (True, 3, clock.now)
    assert resumed_again == resumed


async def test_a_pause_and_the_resume_after_it_are_kept_on_the_trigger(
    registry: Registry, clock: FixedClock
) -> None:
    ws = (await workspace(registry)).workspace.id
    created = await trigger(registry, ws, (await flow(registry, ws)).id)
    assert (created.paused_at, created.resumed_at) == (None, None)

    def set_enabled(enabled: bool) -> Awaitable[Trigger]:
        return registry.set_trigger_enabled(
            SetTriggerEnabled(workspace_id=ws, trigger_id=created.id, enabled=enabled)
        )

    clock.advance(1)
    paused = await set_enabled(False)
    clock.advance(60)
    resumed = await set_enabled(True)
    clock.advance(5)
    paused_again = await set_enabled(False)

    assert (paused.paused_at, paused.resumed_at) == (paused.updated_at, None)
    assert (resumed.paused_at, resumed.resumed_at) == (paused.updated_at, resumed.updated_at)
    assert (paused_again.paused_at, paused_again.resumed_at) == (paused_again.updated_at, None)


async def test_a_deleted_trigger_is_gone(registry: Registry, store: InMemoryRegistryStore) -> None:
    ws = (await workspace(registry)).workspace.id
    created = await trigger(registry, ws, (await flow(registry, ws)).id)

    deleted = await registry.delete_trigger(DeleteTrigger(workspace_id=ws, trigger_id=created.id))

    assert deleted == created
    assert store.keys(subjects.TRIGGERS_BUCKET) == []
    error = await refusal(registry.get_trigger(GetTrigger(workspace_id=ws, trigger_id=created.id)))
    assert (error.problem.status, error.problem.code) == (404, "trigger_not_found")
    again = await refusal(
        registry.delete_trigger(DeleteTrigger(workspace_id=ws, trigger_id=created.id))
    )
    assert again.problem.code == "trigger_not_found"


async def test_a_trigger_of_another_workspace_cannot_be_seen_or_changed(
    registry: Registry,
) -> None:
    acme = (await workspace(registry, "acme")).workspace.id
    globex = (await workspace(registry, "globex")).workspace.id
    theirs = await trigger(registry, globex, (await flow(registry, globex)).id)

    for call in [
        registry.get_trigger(GetTrigger(workspace_id=acme, trigger_id=theirs.id)),
        registry.set_trigger_enabled(
            SetTriggerEnabled(workspace_id=acme, trigger_id=theirs.id, enabled=False)
        ),
        registry.update_trigger(
            UpdateTrigger(workspace_id=acme, trigger_id=theirs.id, changes=TriggerChanges())
        ),
        registry.delete_trigger(DeleteTrigger(workspace_id=acme, trigger_id=theirs.id)),
    ]:
        error = await refusal(call)
        assert (error.problem.status, error.problem.code) == (404, "trigger_not_found")
    assert (
        await registry.get_trigger(GetTrigger(workspace_id=globex, trigger_id=theirs.id)) == theirs
    )


@pytest.fixture
def same_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every new id falls in the same millisecond, with random parts that happen to decrease."""
    randoms = iter(range(10**6, 0, -1))
    monkeypatch.setattr(core, "new_id", partial(ids.new_id, now_ms=1_767_000_000_000))
    monkeypatch.setattr(ids.secrets, "randbits", lambda _bits: next(randoms))


@pytest.mark.usefixtures("same_millisecond")
async def test_records_made_in_the_same_millisecond_are_still_listed_oldest_first(
    registry: Registry, clock: FixedClock
) -> None:
    created = await workspace(registry)
    ws = created.workspace.id
    keys = [created.admin_key.key.id]
    flows, triggers = [], []
    for name in ["first", "second"]:
        clock.advance(0.0002)
        keys.append(
            (await registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name=name)))).key.id
        )
        clock.advance(0.0002)
        flows.append((await flow(registry, ws)).id)
        clock.advance(0.0002)
        triggers.append((await trigger(registry, ws, flows[0], name=name)).id)

    assert [k.id for k in (await registry.list_keys(ListKeys(workspace_id=ws))).items] == keys
    assert [f.id for f in (await registry.list_flows(ListFlows(workspace_id=ws))).items] == flows
    assert [
        t.id for t in (await registry.list_triggers(ListTriggers(workspace_id=ws))).items
    ] == triggers


# --- ids that are not ids -------------------------------------------------------------------

NOT_IDS = ["", "*", ">", "trg_x.y", "flw_*", "ws_0000000000000000000000000", "WS_ABC"]

Operation = Callable[[Registry, str, str], Awaitable[Any]]

OPERATIONS_ON_AN_ID: dict[str, Operation] = {
    "create key": lambda r, ws, bad: r.create_key(
        CreateKey(workspace_id=bad, key=NewKey(name="k"))
    ),
    "create flow": lambda r, ws, bad: r.create_flow(
        CreateFlow(
            workspace_id=bad, flow=NewFlow(name="f", settings=PythonFlowSettings(function="echo"))
        )
    ),
    "get flow": lambda r, ws, bad: r.get_flow(GetFlow(workspace_id=ws, flow_id=bad)),
    "trigger a flow": lambda r, ws, bad: r.create_trigger(
        CreateTrigger(workspace_id=ws, trigger=NewApiTrigger(flow_id=bad))
    ),
    "get trigger": lambda r, ws, bad: r.get_trigger(GetTrigger(workspace_id=ws, trigger_id=bad)),
    "update trigger": lambda r, ws, bad: r.update_trigger(
        UpdateTrigger(workspace_id=ws, trigger_id=bad, changes=TriggerChanges(name="x"))
    ),
    "pause trigger": lambda r, ws, bad: r.set_trigger_enabled(
        SetTriggerEnabled(workspace_id=ws, trigger_id=bad, enabled=False)
    ),
    "delete trigger": lambda r, ws, bad: r.delete_trigger(
        DeleteTrigger(workspace_id=ws, trigger_id=bad)
    ),
    "revoke key": lambda r, ws, bad: r.revoke_key(RevokeKey(workspace_id=ws, key_id=bad)),
}


@pytest.mark.parametrize("bad", NOT_IDS)
@pytest.mark.parametrize("operation", OPERATIONS_ON_AN_ID, ids=str)
async def test_an_id_that_is_not_an_id_is_not_found_rather_than_an_error(
    registry: Registry, operation: str, bad: str
) -> None:
    ws = (await workspace(registry)).workspace.id

    error = await refusal(OPERATIONS_ON_AN_ID[operation](registry, ws, bad))

    assert error.problem.status == 404


# The workspace id is part of every KV key too: a wildcard there must never reach the store.
OPERATIONS_IN_A_WORKSPACE: dict[str, Operation] = {
    "get flow": lambda r, bad, flow_id: r.get_flow(GetFlow(workspace_id=bad, flow_id=flow_id)),
    "trigger a flow": lambda r, bad, flow_id: r.create_trigger(
        CreateTrigger(workspace_id=bad, trigger=NewApiTrigger(flow_id=flow_id))
    ),
    "get trigger": lambda r, bad, _: r.get_trigger(
        GetTrigger(workspace_id=bad, trigger_id=new_id("trg"))
    ),
    "pause trigger": lambda r, bad, _: r.set_trigger_enabled(
        SetTriggerEnabled(workspace_id=bad, trigger_id=new_id("trg"), enabled=False)
    ),
    "revoke key": lambda r, bad, _: r.revoke_key(RevokeKey(workspace_id=bad, key_id=new_id("key"))),
}


@pytest.mark.parametrize("bad", ["*", ">", "ws_a.b"])
@pytest.mark.parametrize("operation", OPERATIONS_IN_A_WORKSPACE, ids=str)
async def test_a_workspace_id_that_is_not_an_id_is_not_found_rather_than_an_error(
    registry: Registry, operation: str, bad: str
) -> None:
    ws = (await workspace(registry)).workspace.id
    someone_elses = await flow(registry, ws)

    error = await refusal(OPERATIONS_IN_A_WORKSPACE[operation](registry, bad, someone_elses.id))

    assert error.problem.status == 404


@pytest.mark.parametrize("bad", ["*", ">"])
async def test_listing_with_a_wildcard_workspace_id_shows_no_workspace_s_records(
    registry: Registry, bad: str
) -> None:
    ws = (await workspace(registry)).workspace.id
    await trigger(registry, ws, (await flow(registry, ws)).id)

    outcomes = [
        await outcome(registry.list_keys(ListKeys(workspace_id=bad))),
        await outcome(registry.list_flows(ListFlows(workspace_id=bad))),
        await outcome(registry.list_triggers(ListTriggers(workspace_id=bad))),
    ]

    assert [getattr(o, "items", getattr(o, "status", o)) for o in outcomes] in (
        [[], [], []],
        [404, 404, 404],
    )


# --- schedule changes are merges (RFC 7396) --------------------------------------------------


async def changed_schedule_trigger(
    registry: Registry, schedule: Any, changes: TriggerChanges
) -> Any:
    """The outcome of creating a schedule trigger with `schedule`, then applying `changes`."""
    ws = (await workspace(registry)).workspace.id
    created = await trigger(
        registry, ws, (await flow(registry, ws)).id, type="schedule", schedule=schedule
    )
    return await outcome(
        registry.update_trigger(
            UpdateTrigger(workspace_id=ws, trigger_id=created.id, changes=changes)
        )
    )


async def test_a_new_cron_expression_keeps_the_schedule_s_time_zone(registry: Registry) -> None:
    berlin = CronSchedule(cron="0 9 * * *", timezone="Europe/Berlin", jitter=30)

    updated = await changed_schedule_trigger(
        registry,
        berlin,
        TriggerChanges(schedule=SchedulePatch(kind="cron", cron="*/5 * * * *")),
    )

    assert updated.schedule == CronSchedule(cron="*/5 * * * *", timezone="Europe/Berlin", jitter=30)


async def test_a_schedule_change_naming_one_field_keeps_the_others(registry: Registry) -> None:
    hourly = HourlySchedule(minute=5, timezone="Asia/Tokyo", misfire="skip")

    updated = await changed_schedule_trigger(
        registry, hourly, TriggerChanges(schedule=SchedulePatch(minute=20))
    )

    assert updated.schedule == HourlySchedule(minute=20, timezone="Asia/Tokyo", misfire="skip")


async def test_null_resets_a_schedule_option_to_its_default(registry: Registry) -> None:
    berlin = CronSchedule(cron="0 9 * * *", timezone="Europe/Berlin", jitter=30)

    updated = await changed_schedule_trigger(
        registry, berlin, TriggerChanges(schedule=SchedulePatch(timezone=None, jitter=None))
    )

    assert updated.schedule == CronSchedule(cron="0 9 * * *")


async def test_a_new_kind_drops_the_old_kind_s_fields_and_keeps_the_common_options(
    registry: Registry,
) -> None:
    daily = DailySchedule(at="09:30", timezone="America/New_York", dst_gap="skip")

    updated = await changed_schedule_trigger(
        registry, daily, TriggerChanges(schedule=SchedulePatch(kind="hourly", minute=15))
    )

    assert updated.schedule == HourlySchedule(
        minute=15, timezone="America/New_York", dst_gap="skip"
    )


async def test_a_field_of_another_kind_is_invalid_schedule_naming_the_field_and_the_kind_s_fields(
    registry: Registry,
) -> None:
    problem = await changed_schedule_trigger(
        registry, EVERY_FIVE_MINUTES, TriggerChanges(schedule=SchedulePatch(minute=20))
    )

    assert (problem.status, problem.code) == (422, "invalid_schedule")
    assert "`schedule.minute`" in problem.message
    assert "`cron` schedule" in problem.message
    assert "cron, dst_gap" in problem.message  # the kind's fields, listed


async def test_removing_a_required_schedule_field_is_invalid_schedule_naming_it(
    registry: Registry,
) -> None:
    problem = await changed_schedule_trigger(
        registry, EVERY_FIVE_MINUTES, TriggerChanges(schedule=SchedulePatch(cron=None))
    )

    assert (problem.status, problem.code) == (422, "invalid_schedule")
    assert "`cron`" in problem.message


async def test_a_partial_schedule_for_a_trigger_that_had_none_needs_its_kind(
    registry: Registry,
) -> None:
    ws = (await workspace(registry)).workspace.id
    created = await trigger(registry, ws, (await flow(registry, ws)).id)

    problem = await outcome(
        registry.update_trigger(
            UpdateTrigger(
                workspace_id=ws,
                trigger_id=created.id,
                changes=TriggerChanges(type="schedule", schedule=SchedulePatch(minute=5)),
            )
        )
    )

    assert (problem.status, problem.code) == (422, "invalid_schedule")
    assert "`schedule.kind`" in problem.message


async def test_sync_wait_seconds_on_a_trigger_that_is_not_an_api_one_is_unexpected_sync_wait(
    registry: Registry,
) -> None:
    problem = await changed_schedule_trigger(
        registry, EVERY_FIVE_MINUTES, TriggerChanges(sync_wait_seconds=5)
    )

    assert (problem.status, problem.code) == (422, "unexpected_sync_wait")


async def test_a_trigger_that_becomes_an_api_trigger_gets_the_default_wait_or_the_one_given(
    registry: Registry,
) -> None:
    ws = (await workspace(registry)).workspace.id
    nightly = await flow(registry, ws)
    manual = await trigger(registry, ws, nightly.id, type="manual")
    other = await trigger(registry, ws, nightly.id, type="manual")

    default = await registry.update_trigger(
        UpdateTrigger(workspace_id=ws, trigger_id=manual.id, changes=TriggerChanges(type="api"))
    )
    given = await registry.update_trigger(
        UpdateTrigger(
            workspace_id=ws,
            trigger_id=other.id,
            changes=TriggerChanges(type="api", sync_wait_seconds=2),
        )
    )

    assert isinstance(default, ApiTrigger)
    assert default.sync_wait_seconds == 10.0
    assert isinstance(given, ApiTrigger)
    assert given.sync_wait_seconds == 2


async def test_a_long_list_comes_in_pages_that_follow_one_another_by_cursor(
    registry: Registry, clock: FixedClock
) -> None:
    ws = (await workspace(registry)).workspace.id
    flow_ids = []
    for _ in range(7):
        clock.advance(0.001)
        flow_ids.append((await flow(registry, ws)).id)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await registry.list_flows(ListFlows(workspace_id=ws, limit=3, cursor=cursor))
        pages += 1
        seen += [f.id for f in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == flow_ids
    assert pages == 3


@pytest.mark.parametrize("cursor", ["", "x", "12.", "12.*", "-1.flw_0mx5b3cazm4ll8xtms7lt"])
async def test_a_cursor_the_api_never_gave_is_refused_with_what_to_pass(
    registry: Registry, cursor: str
) -> None:
    ws = (await workspace(registry)).workspace.id

    with pytest.raises(RegistryError) as refused:
        await registry.list_flows(ListFlows(workspace_id=ws, cursor=cursor))

    assert refused.value.problem.status == 400
    assert refused.value.problem.code == "invalid_cursor"
    assert "next_cursor" in refused.value.problem.message


async def test_a_page_cursor_still_works_after_its_record_is_gone(
    registry: Registry, clock: FixedClock
) -> None:
    ws = (await workspace(registry)).workspace.id
    keys = []
    for n in range(3):
        clock.advance(0.001)
        keys.append(await registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name=f"{n}"))))
    first = await registry.list_keys(ListKeys(workspace_id=ws, limit=2))
    assert first.next_cursor is not None

    await registry.revoke_key(RevokeKey(workspace_id=ws, key_id=first.items[-1].id))
    rest = await registry.list_keys(ListKeys(workspace_id=ws, limit=2, cursor=first.next_cursor))

    assert [k.id for k in rest.items] == [keys[1].key.id, keys[2].key.id]
    assert rest.next_cursor is None


@pytest.mark.parametrize(
    "url",
    [
        "http:///127.0.0.1/",
        "ftp://example.com/",
        "https://",
        "http://exa mple.com/",
        "http://example.com:99999/",
    ],
)
async def test_an_http_flow_url_no_call_could_use_is_invalid_url(
    registry: Registry, url: str
) -> None:
    ws = (await workspace(registry)).workspace.id
    new = NewFlow(name="hook", settings=HttpFlowSettingsBody(url=url))

    error = await refusal(registry.create_flow(CreateFlow(workspace_id=ws, flow=new)))

    assert (error.problem.status, error.problem.code) == (422, "invalid_url")
