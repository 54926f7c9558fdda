"""Per-workspace quotas over a real NATS server: the HTTP answer at a limit, and the last slot
under concurrent creates answered by two registry replicas."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client

from contracts import subjects
from contracts.registry import CreateTrigger, NewApiTrigger, Reply, Trigger
from services.ingress.app import create_app as create_ingress
from services.ingress.settings import IngressSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from shared.codec import decode, encode

OPERATOR = {"Authorization": "Bearer op-test"}
EVERY_SECOND = {"kind": "interval", "every": 1}

HttpClient = AsyncTestClient[Any]


def limited(nats_url: str) -> RegistrySettings:
    return RegistrySettings(
        nats_url=nats_url,
        registry_max_triggers=4,
        registry_max_flows=2,
        registry_max_api_keys=2,
        registry_max_schedule_fires_per_hour=7300,
    )


@pytest.fixture(scope="module")
async def client(nats_url: str) -> AsyncIterator[HttpClient]:
    """The ingress in-process with a registry on the app's own loop (see test_ingress_api)."""
    registry = create_registry(limited(nats_url))
    app = create_ingress(IngressSettings(nats_url=nats_url, operator_token="op-test"))
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as test_client:
        test_client.blocking_portal.call(registry.start)
        try:
            yield test_client
        finally:
            test_client.blocking_portal.call(registry.stop)


async def workspace(client: HttpClient) -> tuple[str, dict[str, str], str]:
    """A new workspace: its id, admin headers and one flow."""
    created = await client.post("/v1/workspaces", json={"name": "quota"}, headers=OPERATOR)
    assert created.status_code == 201, created.text
    body = created.json()
    admin = {"Authorization": f"Bearer {body['admin_key']['secret']}"}
    flow = {"name": "f", "settings": {"kind": "python", "function": "echo"}}
    answer = await client.post("/v1/flows", json=flow, headers=admin)
    assert answer.status_code == 201, answer.text
    return body["workspace"]["id"], admin, answer.json()["id"]


def quota_refusal(answer: Any, quota: str) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["code"] == "quota_exceeded"
    assert body["quota"]["quota"] == quota
    return body


async def test_the_trigger_past_the_limit_gets_422_with_the_limit_and_a_delete_frees_it(
    client: HttpClient,
) -> None:
    _, admin, flow_id = await workspace(client)
    created = []
    for _ in range(4):
        answer = await client.post(
            "/v1/triggers", json={"flow_id": flow_id, "type": "manual"}, headers=admin
        )
        assert answer.status_code == 201, answer.text
        created.append(answer.json()["id"])

    answer = await client.post(
        "/v1/triggers", json={"flow_id": flow_id, "type": "manual"}, headers=admin
    )

    body = quota_refusal(answer, "triggers")
    assert body["quota"] == {
        "quota": "triggers",
        "limit": 4,
        "used": 4,
        "requested": 1,
        "setting": "REGISTRY_MAX_TRIGGERS",
    }
    assert "4 of its 4 triggers" in body["detail"]
    assert "REGISTRY_MAX_TRIGGERS" in body["detail"]

    deleted = await client.delete(f"/v1/triggers/{created[0]}", headers=admin)
    assert deleted.status_code == 200, deleted.text
    answer = await client.post(
        "/v1/triggers", json={"flow_id": flow_id, "type": "manual"}, headers=admin
    )
    assert answer.status_code == 201, answer.text


async def test_schedules_past_the_fire_rate_are_refused_on_create_and_on_resume(
    client: HttpClient,
) -> None:
    _, admin, flow_id = await workspace(client)
    schedule = {"flow_id": flow_id, "type": "schedule", "schedule": EVERY_SECOND}
    first = (await client.post("/v1/triggers", json=schedule, headers=admin)).json()
    assert (await client.post("/v1/triggers", json=schedule, headers=admin)).status_code == 201

    body = quota_refusal(
        await client.post("/v1/triggers", json=schedule, headers=admin), "schedule_fires_per_hour"
    )
    assert (body["quota"]["limit"], body["quota"]["used"]) == (7300, 7200)

    assert (await client.post(f"/v1/triggers/{first['id']}/pause", headers=admin)).is_success
    third = await client.post("/v1/triggers", json=schedule, headers=admin)
    assert third.status_code == 201, third.text
    quota_refusal(
        await client.post(f"/v1/triggers/{first['id']}/resume", headers=admin),
        "schedule_fires_per_hour",
    )
    slower = {"schedule": {"every": 1, "unit": "minutes"}}
    edited = await client.patch(f"/v1/triggers/{third.json()['id']}", json=slower, headers=admin)
    assert edited.status_code == 200, edited.text
    resumed = await client.post(f"/v1/triggers/{first['id']}/resume", headers=admin)
    assert resumed.status_code == 200, resumed.text


async def test_keys_and_flows_past_their_limits_get_422(client: HttpClient) -> None:
    _, admin, _ = await workspace(client)
    key = {"name": "k", "scope": "trigger"}
    assert (await client.post("/v1/keys", json=key, headers=admin)).status_code == 201
    quota_refusal(await client.post("/v1/keys", json=key, headers=admin), "api_keys")

    flow = {"name": "g", "settings": {"kind": "python", "function": "echo"}}
    assert (await client.post("/v1/flows", json=flow, headers=admin)).status_code == 201
    quota_refusal(await client.post("/v1/flows", json=flow, headers=admin), "flows")


async def test_the_openapi_document_declares_the_quota_refusal(client: HttpClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    for path, method in [
        ("/v1/triggers", "post"),
        ("/v1/triggers/{trigger_id}", "patch"),
        ("/v1/triggers/{trigger_id}/resume", "post"),
        ("/v1/flows", "post"),
        ("/v1/keys", "post"),
    ]:
        answer = document["paths"][path][method]["responses"]["422"]
        assert "quota_exceeded" in answer["description"]
        schema = answer["content"]["application/problem+json"]["schema"]
        assert schema["$ref"].endswith("/UnusableProblem")
    assert "quota" in document["components"]["schemas"]["UnusableProblem"]["properties"]


async def test_concurrent_creates_at_the_limit_admit_exactly_the_limit(
    client: HttpClient, nats_url: str, nc: Client
) -> None:
    """Two more replicas answer in the same queue group, so the creates race across processes'
    worth of registries, each with its own compare-and-swap on the workspace's use."""
    ws, admin, flow_id = await workspace(client)
    replicas = [create_registry(limited(nats_url)) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    try:
        request = encode(
            CreateTrigger(workspace_id=ws, trigger=NewApiTrigger(flow_id=flow_id, name="race"))
        )
        answers = await asyncio.gather(
            *(nc.request(subjects.TRIGGER_CREATE, request, timeout=10) for _ in range(16))
        )
    finally:
        for replica in replicas:
            await replica.stop()

    replies = [decode(answer.data, Reply[Trigger]) for answer in answers]
    assert sum(reply.ok is not None for reply in replies) == 4
    refusals = [reply.error for reply in replies if reply.error is not None]
    assert {(p.status, p.code) for p in refusals} == {(422, "quota_exceeded")}
    listed = (await client.get("/v1/triggers", headers=admin)).json()["items"]
    assert len(listed) == 4
