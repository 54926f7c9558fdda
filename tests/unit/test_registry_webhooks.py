"""The registry's rules for webhook triggers: secrets generated or supplied, shown once, sealed
at rest, rotated with a grace period; settings that fit the kind."""

from datetime import timedelta
from typing import Any

import pytest

from contracts import subjects
from contracts.registry import (
    ApiTrigger,
    CreateFlow,
    CreateTrigger,
    CreateWorkspace,
    GetTrigger,
    HmacSettings,
    ListTriggers,
    NewApiTrigger,
    NewFlow,
    NewWebhookSecret,
    NewWebhookTrigger,
    NewWorkspace,
    PythonFlowSettings,
    RotateWebhookSecret,
    Trigger,
    TriggerChanges,
    UpdateTrigger,
    WebhookTrigger,
)
from services.registry.core import Registry, RegistryError
from services.registry.webhooks import bound_to
from shared.webhook_secrets import SecretBox
from tests.unit.fakes import FixedClock, InMemoryRegistryStore

BOX = SecretBox((b"s" * 32,))


@pytest.fixture
def store() -> InMemoryRegistryStore:
    return InMemoryRegistryStore()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def registry(store: InMemoryRegistryStore, clock: FixedClock) -> Registry:
    return Registry(store, clock, secret_box=BOX)


async def flow_in_workspace(registry: Registry) -> tuple[str, str]:
    created = await registry.create_workspace(CreateWorkspace(workspace=NewWorkspace(name="w")))
    ws = created.workspace.id
    new = NewFlow(name="f", settings=PythonFlowSettings(function="echo"))
    flow = await registry.create_flow(CreateFlow(workspace_id=ws, flow=new))
    return ws, flow.id


async def webhook(registry: Registry, **fields: Any) -> tuple[str, WebhookTrigger]:
    ws, flow_id = await flow_in_workspace(registry)
    new = NewWebhookTrigger(flow_id=flow_id, **{"scheme": "github", **fields})
    created = await registry.create_trigger(CreateTrigger(workspace_id=ws, trigger=new))
    assert isinstance(created, WebhookTrigger)
    return ws, created


async def stored(store: InMemoryRegistryStore, ws: str, trigger_id: str) -> WebhookTrigger:
    record = await store.get(
        subjects.TRIGGERS_BUCKET,
        subjects.record_key(ws, trigger_id),
        Trigger,  # type: ignore[type-abstract]
    )
    assert isinstance(record, WebhookTrigger)
    return record


async def test_a_new_webhook_trigger_shows_its_generated_secret_once_and_stores_it_sealed(
    registry: Registry, store: InMemoryRegistryStore
) -> None:
    ws, created = await webhook(registry, scheme="standard_webhooks")
    secret = created.new_secret
    assert secret is not None
    assert secret.startswith("whsec_")
    assert created.secrets[0].sealed == ""  # the answer never holds the sealed form
    record = await stored(store, ws, created.id)
    assert record.new_secret is None
    assert secret not in record.secrets[0].sealed
    assert BOX.open(record.secrets[0].sealed, bound_to(created.id, record.secrets[0].id)) == secret
    fetched = await registry.get_trigger(GetTrigger(workspace_id=ws, trigger_id=created.id))
    assert isinstance(fetched, WebhookTrigger)
    assert fetched.new_secret is None
    assert fetched.secrets[0].sealed == ""
    listed = await registry.list_triggers(ListTriggers(workspace_id=ws))
    assert all(
        not s.sealed for t in listed.items if isinstance(t, WebhookTrigger) for s in t.secrets
    )


async def test_a_supplied_secret_is_kept_and_a_standard_webhooks_one_must_be_base64(
    registry: Registry,
) -> None:
    _, created = await webhook(registry, secret="my-github-secret-value")
    assert created.new_secret == "my-github-secret-value"
    with pytest.raises(RegistryError) as caught:
        await webhook(registry, scheme="standard_webhooks", secret="whsec_not base64 at all!!")
    assert caught.value.problem.code == "invalid_secret"


async def test_the_hmac_scheme_needs_its_settings_and_others_refuse_them(
    registry: Registry,
) -> None:
    with pytest.raises(RegistryError) as caught:
        await webhook(registry, scheme="hmac")
    assert caught.value.problem.code == "hmac_settings_required"
    with pytest.raises(RegistryError) as caught:
        await webhook(registry, hmac=HmacSettings(signature_header="X-Sig"))
    assert caught.value.problem.code == "unexpected_hmac_settings"


async def test_without_a_sealing_key_a_webhook_trigger_is_refused_with_503(
    store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    with pytest.raises(RegistryError) as caught:
        await webhook(Registry(store, clock))
    assert (caught.value.problem.status, caught.value.problem.code) == (
        503,
        "webhook_secrets_disabled",
    )


async def test_a_rotation_keeps_the_previous_secret_until_its_grace_ends_and_never_more_than_two(
    registry: Registry, store: InMemoryRegistryStore, clock: FixedClock
) -> None:
    ws, created = await webhook(registry)
    first = created.secrets[0]

    async def rotate(**fields: Any) -> WebhookTrigger:
        rotation = NewWebhookSecret(**fields)
        request = RotateWebhookSecret(workspace_id=ws, trigger_id=created.id, rotation=rotation)
        answer = await registry.rotate_webhook_secret(request)
        assert isinstance(answer, WebhookTrigger)
        return answer

    second = await rotate(previous_valid_seconds=3600)
    assert second.new_secret
    assert second.new_secret != created.new_secret
    assert [s.id for s in second.secrets][1] == first.id
    assert second.secrets[1].expires_at == clock.now + timedelta(hours=1)
    assert second.secrets[0].expires_at is None
    assert second.version == created.version + 1
    third = await rotate(secret="a-secret-i-chose-myself")
    assert third.new_secret == "a-secret-i-chose-myself"
    assert len(third.secrets) == 2
    assert first.id not in {s.id for s in third.secrets}
    # The previous one keeps the expiry it had if that comes first.
    assert third.secrets[1].id == second.secrets[0].id
    now_only = await rotate(previous_valid_seconds=0)
    assert len(now_only.secrets) == 1
    assert len((await stored(store, ws, created.id)).secrets) == 1


async def test_a_rotation_of_a_trigger_that_is_not_a_webhook_is_refused(registry: Registry) -> None:
    ws, flow_id = await flow_in_workspace(registry)
    api = await registry.create_trigger(
        CreateTrigger(workspace_id=ws, trigger=NewApiTrigger(flow_id=flow_id))
    )
    request = RotateWebhookSecret(workspace_id=ws, trigger_id=api.id, rotation=NewWebhookSecret())
    with pytest.raises(RegistryError) as caught:
        await registry.rotate_webhook_secret(request)
    assert (caught.value.problem.status, caught.value.problem.code) == (409, "not_a_webhook")


async def test_an_edit_changes_a_webhooks_settings_but_keeps_its_secrets_and_kind(
    registry: Registry, store: InMemoryRegistryStore
) -> None:
    ws, created = await webhook(registry, events=["push"])
    changes = TriggerChanges(
        events=["push", "release"],
        include_headers=["User-Agent"],
        response_mode="result",
        sync_wait_seconds=5,
    )
    updated = await registry.update_trigger(
        UpdateTrigger(workspace_id=ws, trigger_id=created.id, changes=changes)
    )
    assert isinstance(updated, WebhookTrigger)
    assert updated.events == ("push", "release")
    assert updated.include_headers == ("user-agent",)
    assert (updated.response_mode, updated.sync_wait_seconds) == ("result", 5)
    assert updated.secrets[0].sealed == ""
    assert (await stored(store, ws, created.id)).secrets[0].sealed
    for change in (TriggerChanges(type="api"), TriggerChanges(events=["x"])):
        target = created.id if change.type == "api" else None
        if target is None:
            api = await registry.create_trigger(
                CreateTrigger(workspace_id=ws, trigger=NewApiTrigger(flow_id=created.flow_id))
            )
            target = api.id
        with pytest.raises(RegistryError) as caught:
            await registry.update_trigger(
                UpdateTrigger(workspace_id=ws, trigger_id=target, changes=change)
            )
        assert caught.value.problem.status == 422


async def test_an_api_triggers_response_mode_is_kept_across_edits(registry: Registry) -> None:
    ws, flow_id = await flow_in_workspace(registry)
    new = NewApiTrigger(flow_id=flow_id, response_mode="accepted")
    created = await registry.create_trigger(CreateTrigger(workspace_id=ws, trigger=new))
    renamed = await registry.update_trigger(
        UpdateTrigger(workspace_id=ws, trigger_id=created.id, changes=TriggerChanges(name="x"))
    )
    assert isinstance(renamed, ApiTrigger)
    assert renamed.response_mode == "accepted"


async def test_an_empty_event_or_a_header_name_with_a_space_is_refused_with_422(
    registry: Registry,
) -> None:
    for fields in ({"events": [""]}, {"include_headers": ["X Bad"]}, {"events": ["a\nb"]}):
        with pytest.raises(RegistryError) as caught:
            await webhook(registry, **fields)
        assert (caught.value.problem.status, caught.value.problem.code) == (
            422,
            "invalid_webhook_setting",
        )
