"""API keys that rotate with a grace period, expire, and may be limited to flows: the
registry's rules and the ingress's decision per request (time decides, so replicas agree)."""

from datetime import UTC, datetime, timedelta

import pytest

from contracts.registry import (
    ApiKey,
    CreateFlow,
    CreateKey,
    CreateWorkspace,
    Flow,
    KeyChanges,
    KeyRotation,
    NewFlow,
    NewKey,
    NewWorkspace,
    PythonFlowSettings,
    RotateKey,
    UpdateKey,
)
from services.ingress import core
from services.ingress.problems import ApiError
from services.registry.core import Registry, RegistryError
from shared import api_keys
from tests.unit.fakes import FixedClock, InMemoryRegistryStore

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def refused(call: object, *args: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def registry(clock: FixedClock) -> Registry:
    return Registry(InMemoryRegistryStore(), clock)


async def workspace_with_flow(registry: Registry) -> tuple[str, Flow]:
    ws = await registry.create_workspace(CreateWorkspace(workspace=NewWorkspace(name="w")))
    new = NewFlow(name="f", settings=PythonFlowSettings(function="echo"))
    flow = await registry.create_flow(CreateFlow(workspace_id=ws.workspace.id, flow=new))
    return ws.workspace.id, flow


def lookup_of(*keys: ApiKey) -> dict[str, ApiKey]:
    """The ingress directory's index: every digest a key answers to."""
    found: dict[str, ApiKey] = {}
    for key in keys:
        found[key.digest] = key
        if key.previous_digest:
            found[key.previous_digest] = key
    return found


async def stored_key(registry: Registry, ws: str, key_id: str) -> ApiKey:
    key = await registry._store.get("api_keys", f"{ws}.{key_id}", ApiKey)  # type: ignore[attr-defined]
    assert key is not None
    return key


async def test_a_rotated_key_accepts_both_secrets_until_the_grace_ends_then_only_the_new(
    registry: Registry, clock: FixedClock
) -> None:
    ws, _ = await workspace_with_flow(registry)
    issued = await registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name="ci")))
    rotated = await registry.rotate_key(
        RotateKey(workspace_id=ws, key_id=issued.key.id, rotation=KeyRotation(grace_seconds=3600))
    )
    assert rotated.key.id == issued.key.id
    assert rotated.secret != issued.secret
    assert rotated.key.previous_expires_at == NOW + timedelta(hours=1)
    index = lookup_of(await stored_key(registry, ws, issued.key.id))
    for secret in (issued.secret, rotated.secret):
        assert core.authenticate(f"Bearer {secret}", index.get, NOW).id == issued.key.id
    later = NOW + timedelta(hours=1)
    error = refused(core.authenticate, f"Bearer {issued.secret}", index.get, later)
    assert (error.status, error.code) == (401, "expired_key")
    assert core.authenticate(f"Bearer {rotated.secret}", index.get, later).id == issued.key.id


async def test_a_rotation_without_grace_ends_the_old_secret_at_once(registry: Registry) -> None:
    ws, _ = await workspace_with_flow(registry)
    issued = await registry.create_key(CreateKey(workspace_id=ws, key=NewKey(name="ci")))
    rotated = await registry.rotate_key(
        RotateKey(workspace_id=ws, key_id=issued.key.id, rotation=KeyRotation(grace_seconds=0))
    )
    assert rotated.key.previous_expires_at is None
    index = lookup_of(await stored_key(registry, ws, issued.key.id))
    assert refused(core.authenticate, f"Bearer {issued.secret}", index.get, NOW).code == (
        "invalid_key"
    )


async def test_an_expired_key_is_refused_as_expired_not_invalid(
    registry: Registry, clock: FixedClock
) -> None:
    ws, _ = await workspace_with_flow(registry)
    expires = NOW + timedelta(minutes=5)
    issued = await registry.create_key(
        CreateKey(workspace_id=ws, key=NewKey(name="ci", expires_at=expires))
    )
    assert issued.key.expires_at == expires
    index = lookup_of(await stored_key(registry, ws, issued.key.id))
    core.authenticate(f"Bearer {issued.secret}", index.get, expires - timedelta(seconds=1))
    error = refused(core.authenticate, f"Bearer {issued.secret}", index.get, expires)
    assert (error.status, error.code) == (401, "expired_key")
    # Set later: extended, or removed.
    extended = await registry.update_key(
        UpdateKey(
            workspace_id=ws,
            key_id=issued.key.id,
            changes=KeyChanges(expires_at=NOW + timedelta(days=1)),
        )
    )
    assert extended.expires_at == NOW + timedelta(days=1)
    cleared = await registry.update_key(
        UpdateKey(workspace_id=ws, key_id=issued.key.id, changes=KeyChanges(expires_at=None))
    )
    assert cleared.expires_at is None


async def test_an_expiry_in_the_past_is_refused(registry: Registry) -> None:
    ws, _ = await workspace_with_flow(registry)
    with pytest.raises(RegistryError) as caught:
        await registry.create_key(
            CreateKey(workspace_id=ws, key=NewKey(name="x", expires_at=NOW - timedelta(1)))
        )
    assert caught.value.problem.code == "invalid_expiry"


async def test_a_trigger_key_limited_to_flows_may_start_only_those(registry: Registry) -> None:
    ws, flow = await workspace_with_flow(registry)
    other = await registry.create_flow(
        CreateFlow(
            workspace_id=ws, flow=NewFlow(name="g", settings=PythonFlowSettings(function="echo"))
        )
    )
    issued = await registry.create_key(
        CreateKey(workspace_id=ws, key=NewKey(name="ci", flow_ids=[flow.id]))
    )
    assert issued.key.flow_ids == (flow.id,)
    key = await stored_key(registry, ws, issued.key.id)
    error = refused(core.api_trigger_for, key, other, [])
    assert (error.status, error.code) == (403, "flow_not_allowed")
    assert refused(core.api_trigger_for, key, flow, []).code == "no_api_trigger"  # allowed
    with pytest.raises(RegistryError) as caught:
        await registry.create_key(
            CreateKey(workspace_id=ws, key=NewKey(name="a", scope="admin", flow_ids=[flow.id]))
        )
    assert caught.value.problem.code == "unexpected_flow_ids"
    with pytest.raises(RegistryError) as caught:
        await registry.create_key(
            CreateKey(workspace_id=ws, key=NewKey(name="b", flow_ids=["flw_000000000000000000000"]))
        )
    assert (caught.value.problem.status, caught.value.problem.code) == (422, "unknown_flow")


def test_a_digest_that_is_not_the_keys_own_needs_a_live_grace() -> None:
    secret = api_keys.generate()
    key = ApiKey(
        id="key_1",
        workspace_id="ws_1",
        name="k",
        scope="trigger",
        prefix="tpk_x",
        digest="new",
        created_at=NOW,
        previous_digest=api_keys.digest(secret),
        previous_expires_at=None,
    )
    assert refused(core.unexpired, key, api_keys.digest(secret), NOW).code == "expired_key"
