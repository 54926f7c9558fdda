"""Key rotation, expiry and revocation seen by two ingress replicas: each applies the change
within one second, against a real NATS server and registry."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from services.ingress.app import create_app as create_ingress
from services.ingress.settings import IngressSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from tests.integration.test_ingress_api import (
    HttpClient,
    bearer,
    created,
    new_flow,
    new_trigger,
    new_workspace,
    problem,
)

APPLIED_WITHIN = 1.0


@pytest.fixture(scope="module")
async def replicas(nats_url: str) -> AsyncIterator[tuple[HttpClient, HttpClient]]:
    """Two ingress replicas (each its own app, loop and directory) and one registry."""
    registry = create_registry(RegistrySettings(nats_url=nats_url))
    settings = IngressSettings(nats_url=nats_url, operator_token="op-test")
    async with (
        AsyncTestClient(app=create_ingress(settings), raise_server_exceptions=False) as one,
        AsyncTestClient(app=create_ingress(settings), raise_server_exceptions=False) as two,
    ):
        one.blocking_portal.call(registry.start)
        try:
            yield one, two
        finally:
            one.blocking_portal.call(registry.stop)


async def answer_within(
    client: HttpClient, flow_id: str, secret: str, status: int, seconds: float
) -> dict[str, Any]:
    """Poll `POST /trigger/{flow_id}` until it answers `status`; fail after `seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        response = await client.post(f"/trigger/{flow_id}", json={}, headers=bearer(secret))
        if response.status_code == status:
            body: dict[str, Any] = response.json()
            return body
        assert loop.time() < deadline, f"still {response.status_code} after {seconds}s"
        await asyncio.sleep(0.02)


async def test_a_rotation_and_the_end_of_its_grace_apply_on_both_replicas_within_a_second(
    replicas: tuple[HttpClient, HttpClient],
) -> None:
    one, two = replicas
    ws = await new_workspace(one)
    flow_id = await new_flow(one, ws)
    await new_trigger(one, ws, flow_id)
    key = created(await one.post("/v1/keys", json={"name": "ci"}, headers=ws.admin))
    old = key["secret"]
    await answer_within(two, flow_id, old, 202, APPLIED_WITHIN)

    rotated = created(
        await one.post(
            f"/v1/keys/{key['key']['id']}/rotate", json={"grace_seconds": 3600}, headers=ws.admin
        )
    )
    new = rotated["secret"]
    for replica in (one, two):
        await answer_within(replica, flow_id, new, 202, APPLIED_WITHIN)
        await answer_within(replica, flow_id, old, 202, APPLIED_WITHIN)  # within its grace

    created(
        await one.post(
            f"/v1/keys/{key['key']['id']}/rotate", json={"grace_seconds": 0}, headers=ws.admin
        )
    )
    for replica in (one, two):
        refused = await answer_within(replica, flow_id, new, 401, APPLIED_WITHIN)
        assert refused["code"] == "invalid_key"


async def test_an_expiry_and_a_revocation_apply_on_both_replicas_within_a_second(
    replicas: tuple[HttpClient, HttpClient],
) -> None:
    one, two = replicas
    ws = await new_workspace(one)
    flow_id = await new_flow(one, ws)
    await new_trigger(one, ws, flow_id)
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    key = created(
        await one.post("/v1/keys", json={"name": "ci", "expires_at": soon}, headers=ws.admin)
    )
    await answer_within(two, flow_id, key["secret"], 202, APPLIED_WITHIN)
    for replica in (one, two):
        refused = await answer_within(replica, flow_id, key["secret"], 401, 1.5 + APPLIED_WITHIN)
        assert refused["code"] == "expired_key"

    other = created(await one.post("/v1/keys", json={"name": "ci2"}, headers=ws.admin))
    await answer_within(two, flow_id, other["secret"], 202, APPLIED_WITHIN)
    revoked = await one.delete(f"/v1/keys/{other['key']['id']}", headers=ws.admin)
    assert revoked.status_code == 200
    for replica in (one, two):
        refused = await answer_within(replica, flow_id, other["secret"], 401, APPLIED_WITHIN)
        assert refused["code"] == "invalid_key"


async def test_a_key_limited_to_a_flow_is_refused_another_with_403(
    replicas: tuple[HttpClient, HttpClient],
) -> None:
    one, _ = replicas
    ws = await new_workspace(one)
    allowed, other = await new_flow(one, ws, "a"), await new_flow(one, ws, "b")
    for flow_id in (allowed, other):
        await new_trigger(one, ws, flow_id)
    key = created(
        await one.post("/v1/keys", json={"name": "ci", "flow_ids": [allowed]}, headers=ws.admin)
    )
    assert key["key"]["flow_ids"] == [allowed]
    await answer_within(one, allowed, key["secret"], 202, APPLIED_WITHIN)
    problem(
        await one.post(f"/trigger/{other}", json={}, headers=bearer(key["secret"])),
        403,
        "flow_not_allowed",
    )
