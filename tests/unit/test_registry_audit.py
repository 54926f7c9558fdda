"""The registry's audit entries: one per change, who made it, the record before and after as the
API shows it, and never a secret, a key digest or a sealed webhook secret."""

from datetime import timedelta
from typing import Any

import msgspec
import pytest

from contracts import subjects
from contracts.audit import AuditEntry
from contracts.registry import (
    ApiKey,
    CreateFlow,
    CreateKey,
    CreateTrigger,
    CreateWorkspace,
    DeleteTrigger,
    KeyChanges,
    KeyRotation,
    NewApiTrigger,
    NewFlow,
    NewKey,
    NewWebhookSecret,
    NewWebhookTrigger,
    NewWorkspace,
    PythonFlowSettings,
    RevokeKey,
    RotateKey,
    RotateWebhookSecret,
    SetTriggerEnabled,
    TriggerChanges,
    UpdateKey,
    UpdateTrigger,
    WebhookTrigger,
)
from services.registry import audit
from services.registry.core import Registry
from shared.webhook_secrets import SecretBox
from tests.unit.fakes import FixedClock, InMemoryRegistryStore

BOX = SecretBox((b"a" * 32,))


class RecordedAuditLog:
    """An `AuditLog` that keeps what it is given."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    async def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)


@pytest.fixture
def log() -> RecordedAuditLog:
    return RecordedAuditLog()


@pytest.fixture
def store() -> InMemoryRegistryStore:
    return InMemoryRegistryStore()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def registry(store: InMemoryRegistryStore, clock: FixedClock, log: RecordedAuditLog) -> Registry:
    return Registry(store, clock, secret_box=BOX, audit_log=log)


async def workspace(registry: Registry) -> tuple[str, str, str]:
    """A workspace, its admin key id and a flow id."""
    created = await registry.create_workspace(
        CreateWorkspace(workspace=NewWorkspace(name="w"), actor="operator")
    )
    ws, admin = created.workspace.id, created.admin_key.key.id
    new = NewFlow(name="f", settings=PythonFlowSettings(function="echo"))
    flow = await registry.create_flow(CreateFlow(workspace_id=ws, flow=new, actor=admin))
    return ws, admin, flow.id


async def test_creating_a_workspace_records_it_and_its_admin_key_by_the_operator(
    registry: Registry, log: RecordedAuditLog
) -> None:
    ws, admin, flow_id = await workspace(registry)
    created, key, flow = log.entries
    assert (created.action, created.resource_id, created.actor) == (
        "workspace.created",
        ws,
        "operator",
    )
    assert (key.action, key.resource_type, key.resource_id) == ("key.created", "key", admin)
    assert key.before is None
    assert key.after is not None
    assert key.after["scope"] == "admin"
    assert (flow.action, flow.resource_id, flow.actor) == ("flow.created", flow_id, admin)
    assert flow.after is not None
    assert flow.after["settings"] == {
        "kind": "python",
        "function": "echo",
    }
    assert {entry.workspace_id for entry in log.entries} == {ws}


async def test_a_key_rotation_shows_the_new_prefix_and_the_grace_and_never_a_digest(
    registry: Registry, store: InMemoryRegistryStore, log: RecordedAuditLog, clock: FixedClock
) -> None:
    ws, admin, _ = await workspace(registry)
    issued = await registry.create_key(
        CreateKey(workspace_id=ws, key=NewKey(name="ci"), actor=admin)
    )
    rotated = await registry.rotate_key(
        RotateKey(
            workspace_id=ws,
            key_id=issued.key.id,
            rotation=KeyRotation(grace_seconds=3600),
            actor=admin,
        )
    )
    entry = log.entries[-1]
    assert (entry.action, entry.resource_id, entry.actor) == ("key.rotated", issued.key.id, admin)
    assert entry.before is not None
    assert entry.after is not None
    assert entry.before["prefix"] == issued.key.prefix
    assert entry.after["prefix"] == rotated.key.prefix != issued.key.prefix
    assert entry.before["previous_expires_at"] is None
    assert entry.after["previous_expires_at"] is not None
    assert entry.at == clock()
    stored = await store.get(
        subjects.API_KEYS_BUCKET, subjects.record_key(ws, issued.key.id), ApiKey
    )
    assert stored is not None
    assert stored.previous_digest is not None
    assert_no_secret(
        log.entries, [issued.secret, rotated.secret, stored.digest, stored.previous_digest]
    )


async def test_a_key_update_and_revocation_show_before_and_after(
    registry: Registry, log: RecordedAuditLog, clock: FixedClock
) -> None:
    ws, admin, flow_id = await workspace(registry)
    issued = await registry.create_key(
        CreateKey(workspace_id=ws, key=NewKey(name="ci"), actor=admin)
    )
    expiry = clock() + timedelta(days=1)
    changes = KeyChanges(expires_at=expiry, flow_ids=[flow_id])
    await registry.update_key(
        UpdateKey(workspace_id=ws, key_id=issued.key.id, changes=changes, actor=admin)
    )
    await registry.revoke_key(RevokeKey(workspace_id=ws, key_id=issued.key.id, actor=admin))
    updated, revoked = log.entries[-2:]
    assert updated.action == "key.updated"
    assert updated.before is not None
    assert updated.after is not None
    assert (updated.before["expires_at"], updated.before["flow_ids"]) == (None, None)
    assert updated.after["flow_ids"] == [flow_id]
    assert revoked.action == "key.revoked"
    assert revoked.before == updated.after
    assert revoked.after is None


async def test_trigger_changes_are_recorded_each_with_the_record_it_changed(
    registry: Registry, log: RecordedAuditLog
) -> None:
    ws, admin, flow_id = await workspace(registry)
    trigger = await registry.create_trigger(
        CreateTrigger(workspace_id=ws, trigger=NewApiTrigger(flow_id=flow_id), actor=admin)
    )
    ids = {"workspace_id": ws, "trigger_id": trigger.id, "actor": admin}
    await registry.update_trigger(UpdateTrigger(**ids, changes=TriggerChanges(name="renamed")))
    await registry.set_trigger_enabled(SetTriggerEnabled(**ids, enabled=False))
    await registry.set_trigger_enabled(SetTriggerEnabled(**ids, enabled=False))  # no change
    await registry.set_trigger_enabled(SetTriggerEnabled(**ids, enabled=True))
    await registry.delete_trigger(DeleteTrigger(**ids))
    entries = [e for e in log.entries if e.resource_type == "trigger"]
    assert [e.action for e in entries] == [
        "trigger.created",
        "trigger.updated",
        "trigger.paused",
        "trigger.resumed",
        "trigger.deleted",
    ]
    created, renamed, paused, resumed, deleted = entries
    assert renamed.before == created.after
    assert renamed.before is not None
    assert renamed.after is not None
    assert (renamed.before["name"], renamed.after["name"]) == ("", "renamed")
    assert paused.before == renamed.after
    assert paused.after is not None
    assert paused.after["enabled"] is False
    assert resumed.before == paused.after
    assert deleted.before == resumed.after
    assert deleted.after is None
    assert {e.resource_id for e in entries} == {trigger.id}
    assert {e.actor for e in entries} == {admin}


async def test_webhook_trigger_entries_never_hold_a_webhook_secret_sealed_or_in_clear(
    registry: Registry, store: InMemoryRegistryStore, log: RecordedAuditLog
) -> None:
    ws, admin, flow_id = await workspace(registry)
    created = await registry.create_trigger(
        CreateTrigger(
            workspace_id=ws,
            trigger=NewWebhookTrigger(flow_id=flow_id, scheme="github"),
            actor=admin,
        )
    )
    assert isinstance(created, WebhookTrigger)
    assert created.new_secret
    rotated = await registry.rotate_webhook_secret(
        RotateWebhookSecret(
            workspace_id=ws,
            trigger_id=created.id,
            rotation=NewWebhookSecret(secret="s3cr3t-supplied-by-the-sender"),
            actor=admin,
        )
    )
    assert isinstance(rotated, WebhookTrigger)
    assert rotated.new_secret
    entry = log.entries[-1]
    assert entry.action == "trigger.secret_rotated"
    assert entry.before is not None
    assert entry.after is not None
    assert len(entry.after["secrets"]) == 2  # the new one and the old one until its grace ends
    assert entry.after["secrets"][1]["fingerprint"] == entry.before["secrets"][0]["fingerprint"]
    record = await store.get(
        subjects.TRIGGERS_BUCKET, subjects.record_key(ws, created.id), WebhookTrigger
    )
    assert record is not None
    sealed = [secret.sealed for secret in record.secrets]
    assert all(sealed)
    assert_no_secret(log.entries, [created.new_secret, rotated.new_secret, *sealed])


async def test_a_request_that_does_not_say_who_asked_is_recorded_as_unknown(
    registry: Registry, log: RecordedAuditLog
) -> None:
    created = await registry.create_workspace(CreateWorkspace(workspace=NewWorkspace(name="w")))
    assert {entry.actor for entry in log.entries} == {"unknown"}
    assert created.admin_key.key.id in {entry.resource_id for entry in log.entries}


def test_an_actor_that_is_not_a_key_id_or_the_operator_is_refused_by_the_contract() -> None:
    for actor in ("key_*", "key_abc.>", "admin", ""):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"workspace": {"name": "w"}, "actor": actor}, CreateWorkspace)


def test_a_change_the_api_would_not_show_makes_no_entry() -> None:
    key = ApiKey(
        id="key_0000000000000000000000",
        workspace_id="ws_000000000000000000000",
        name="k",
        scope="trigger",
        prefix="tp_abc",
        digest="d" * 64,
        created_at=FixedClock()(),
    )
    same = msgspec.structs.replace(key, digest="e" * 64)
    found = audit.entry(
        at=FixedClock()(),
        workspace_id=key.workspace_id,
        actor="operator",
        action="key.updated",
        resource_id=key.id,
        before=key,
        after=same,
    )
    assert found is None


def assert_no_secret(entries: list[AuditEntry], secrets: list[Any]) -> None:
    """No entry, as stored (JSON), holds any of `secrets`, nor a field that could."""
    assert all(secrets)
    for entry in entries:
        text = msgspec.json.encode(entry).decode()
        for secret in secrets:
            assert secret not in text, f"{entry.action} holds a secret"
        for field in ("digest", "previous_digest", "sealed_secret", "secret", "new_secret"):
            for record in (entry.before, entry.after):
                if record is not None:
                    assert record.get(field) in (None, ""), f"{entry.action} has {field}"
        for record in (entry.before, entry.after):
            for secret in (record or {}).get("secrets", []):
                assert secret["sealed"] == ""
