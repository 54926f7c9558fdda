"""The HTTP API in-process, against a real NATS server and a real registry."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from contracts import subjects
from contracts.registry import RunnerAnnouncement
from contracts.runs import FlowStart, Run, RunStatus
from services.history.app import create_app as create_history
from services.history.settings import HistorySettings
from services.ingress.app import create_app as create_ingress
from services.ingress.settings import IngressSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from shared import api_keys
from shared.codec import decode, encode
from shared.ids import new_id

OPERATOR = {"Authorization": "Bearer op-test"}
DEADLINE = 5.0

HttpClient = AsyncTestClient[Any]


@pytest.fixture(scope="module")
async def client(
    nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[HttpClient]:
    """The ingress app in-process, with a registry and a history on the app's own event loop.

    `AsyncTestClient` runs the app on a blocking portal (its own thread and loop) and blocks
    the test's loop while a request is in flight, so a registry on the test's loop could never
    answer: it runs on the portal's loop, beside the app.
    """
    registry = create_registry(RegistrySettings(nats_url=nats_url))
    history_db = tmp_path_factory.mktemp("history") / "history.sqlite"
    history = create_history(HistorySettings(nats_url=nats_url, history_db=str(history_db)))
    app = create_ingress(IngressSettings(nats_url=nats_url, operator_token="op-test"))
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as test_client:
        test_client.blocking_portal.call(registry.start)
        test_client.blocking_portal.call(history.start)
        try:
            yield test_client
        finally:
            test_client.blocking_portal.call(history.stop)
            test_client.blocking_portal.call(registry.stop)


@dataclass(frozen=True)
class Workspace:
    id: str
    admin: dict[str, str]
    """Headers authenticating with the workspace's admin key."""
    admin_key_id: str


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert that `response` is a problem document with `status` and `code`; return it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"]
    assert body["detail"]
    return body


def created(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()


async def new_workspace(client: HttpClient, name: str = "acme") -> Workspace:
    body = created(await client.post("/v1/workspaces", json={"name": name}, headers=OPERATOR))
    return Workspace(
        id=body["workspace"]["id"],
        admin=bearer(body["admin_key"]["secret"]),
        admin_key_id=body["admin_key"]["key"]["id"],
    )


async def new_key(client: HttpClient, ws: Workspace, scope: str = "trigger") -> dict[str, Any]:
    body: dict[str, Any] = created(
        await client.post(
            "/v1/keys", json={"name": f"{scope} key", "scope": scope}, headers=ws.admin
        )
    )
    return body


async def new_flow(client: HttpClient, ws: Workspace, name: str = "nightly") -> str:
    flow = {"name": name, "settings": {"kind": "python", "function": "echo"}}
    body = created(await client.post("/v1/flows", json=flow, headers=ws.admin))
    flow_id: str = body["id"]
    return flow_id


async def new_trigger(
    client: HttpClient, ws: Workspace, flow_id: str, **fields: Any
) -> dict[str, Any]:
    trigger = {"flow_id": flow_id, "type": "api", **fields}
    if trigger["type"] == "api":
        # No runner runs in these tests: API triggers answer 202 at once instead of waiting.
        trigger.setdefault("sync_wait_seconds", 0)
    body: dict[str, Any] = created(
        await client.post("/v1/triggers", json=trigger, headers=ws.admin)
    )
    return body


async def startable_flow(client: HttpClient) -> tuple[Workspace, str, dict[str, Any]]:
    """A fresh workspace with a flow and an enabled API trigger."""
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)
    return ws, flow_id, await new_trigger(client, ws, flow_id, name="hook")


@pytest.fixture
async def flow_starts(nc: Client) -> AsyncIterator[Subscription]:
    """A core subscription to `flow.start`: it sees every start without consuming the queue."""
    subscription = await nc.subscribe(subjects.FLOW_STARTS)
    yield subscription
    await subscription.unsubscribe()


async def start_of(subscription: Subscription, run_id: str) -> FlowStart:
    """The `FlowStart` of `run_id`, skipping starts other tests made meanwhile."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"no flow.start for {run_id}"
        msg = await subscription.next_msg(timeout=remaining)
        start: FlowStart = decode(msg.data, FlowStart)
        if start.run_id == run_id:
            assert msg.headers is not None
            assert msg.headers.get("Nats-Msg-Id") == run_id
            return start


# --- the walkthrough ------------------------------------------------------------------------


async def test_the_walkthrough_from_a_workspace_to_a_stored_flow_start(
    client: HttpClient, js: JetStreamContext, flow_starts: Subscription
) -> None:
    workspace = await client.post("/v1/workspaces", json={"name": "acme"}, headers=OPERATOR)
    assert workspace.status_code == 201
    ws = Workspace(
        id=workspace.json()["workspace"]["id"],
        admin=bearer(workspace.json()["admin_key"]["secret"]),
        admin_key_id=workspace.json()["admin_key"]["key"]["id"],
    )
    assert workspace.json()["admin_key"]["key"]["scope"] == "admin"

    issued = await client.post(
        "/v1/keys", json={"name": "ci", "scope": "trigger"}, headers=ws.admin
    )
    assert issued.status_code == 201
    trigger_secret = issued.json()["secret"]
    assert api_keys.is_well_formed(trigger_secret)

    keys = await client.get("/v1/keys", headers=ws.admin)
    assert keys.status_code == 200
    assert keys.json()["next_cursor"] is None
    listed = keys.json()["items"]
    assert {key["id"] for key in listed} == {ws.admin_key_id, issued.json()["key"]["id"]}
    for key in listed:
        assert "secret" not in key
        assert "digest" not in key
    assert trigger_secret not in keys.text

    flow = await client.post(
        "/v1/flows",
        json={"name": "nightly", "settings": {"kind": "python", "function": "echo"}},
        headers=ws.admin,
    )
    assert flow.status_code == 201
    flow_id = flow.json()["id"]
    trigger = await client.post(
        "/v1/triggers", json={"flow_id": flow_id, "type": "api"}, headers=ws.admin
    )
    assert trigger.status_code == 201
    assert (trigger.json()["version"], trigger.json()["enabled"]) == (1, True)

    before = (await js.stream_info(subjects.FLOW_STARTS_STREAM)).state.last_seq
    started = await client.post(
        f"/trigger/{flow_id}",
        json={"n": 1},
        headers={**bearer(trigger_secret), "Prefer": "respond-async"},
    )

    assert started.status_code == 202, started.text
    assert started.headers["preference-applied"] == "respond-async"
    accepted = started.json()
    assert accepted["status"] == "queued"
    assert accepted["status_url"].endswith(f"/v1/runs/{accepted['run_id']}")
    assert started.headers["location"] == accepted["status_url"]
    start = await start_of(flow_starts, accepted["run_id"])
    assert (start.workspace_id, start.flow_id, start.input) == (ws.id, flow_id, {"n": 1})
    assert (start.source, start.trigger_id) == ("api", trigger.json()["id"])
    assert (await js.stream_info(subjects.FLOW_STARTS_STREAM)).state.last_seq > before


async def test_a_trigger_call_without_a_body_starts_the_flow_with_no_input(
    client: HttpClient, flow_starts: Subscription
) -> None:
    ws, flow_id, _ = await startable_flow(client)

    started = await client.post(f"/trigger/{flow_id}", headers=ws.admin)

    assert started.status_code == 202, started.text
    assert (await start_of(flow_starts, started.json()["run_id"])).input is None


async def test_a_start_answered_before_the_handler_looks_like_one_the_handler_answers(
    client: HttpClient, flow_starts: Subscription
) -> None:
    # The usual call is answered by the route's middleware; an Idempotency-Key sends it on to
    # the handler. A client cannot tell which one answered.
    ws, flow_id, trigger = await startable_flow(client)
    headers = {**ws.admin, "Prefer": "respond-async"}

    usual = await client.post(f"/trigger/{flow_id}", json={"n": 1}, headers=headers)
    handled = await client.post(
        f"/trigger/{flow_id}", json={"n": 1}, headers={**headers, "Idempotency-Key": new_id("k")}
    )

    for response in (usual, handled):
        assert response.status_code == 202, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["preference-applied"] == "respond-async"
        assert response.headers["location"] == response.json()["status_url"]
        assert set(response.json()) == {"run_id", "status", "status_url"}
        start = await start_of(flow_starts, response.json()["run_id"])
        assert (start.flow_id, start.trigger_id, start.input) == (flow_id, trigger["id"], {"n": 1})
    assert set(usual.headers) == set(handled.headers)


async def test_a_body_sent_in_pieces_is_started_as_if_sent_whole(
    client: HttpClient, flow_starts: Subscription
) -> None:
    # Straight over ASGI: the test client sends a body in one message.
    ws, flow_id, _ = await startable_flow(client)
    path = f"/trigger/{flow_id}"
    headers = [(name.lower().encode(), value.encode()) for name, value in ws.admin.items()]

    async def post(length: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
        pieces = [b'{"n": ', b"2}"]
        answer: list[Any] = []

        async def receive() -> dict[str, Any]:
            body = pieces.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pieces)}

        async def send(message: dict[str, Any]) -> None:
            answer.append(message.get("status") or message.get("body"))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [*headers, *length, (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await client.app(scope, receive, send)  # type: ignore[arg-type]
        return answer[0], answer[1]

    for length in ([], [(b"content-length", b"8")]):  # without a length, and with one
        status, body = client.blocking_portal.call(post, length)

        assert status == 202, body
        assert (await start_of(flow_starts, decode(body, dict)["run_id"])).input == {"n": 2}


# --- the operator ---------------------------------------------------------------------------


async def test_creating_a_workspace_without_the_operator_token_is_refused(
    client: HttpClient,
) -> None:
    missing = await client.post("/v1/workspaces", json={"name": "acme"})
    wrong = await client.post(
        "/v1/workspaces", json={"name": "acme"}, headers={"Authorization": "Bearer op-nope"}
    )
    ws = await new_workspace(client)
    admin_key = await client.post("/v1/workspaces", json={"name": "acme"}, headers=ws.admin)

    problem(missing, 401, "missing_key")
    problem(wrong, 401, "invalid_operator_token")
    problem(admin_key, 401, "invalid_operator_token")


# --- authentication and scopes --------------------------------------------------------------


async def test_a_mistyped_key_is_malformed_key(client: HttpClient) -> None:
    ws, flow_id, _ = await startable_flow(client)
    secret = ws.admin["Authorization"].removeprefix("Bearer ")
    mistyped = secret[:-1] + ("a" if secret[-1] != "a" else "b")

    body = problem(
        await client.post(f"/trigger/{flow_id}", headers=bearer(mistyped)), 401, "malformed_key"
    )

    assert "tpk_" in body["detail"]
    problem(await client.get("/v1/flows", headers=bearer("hunter2")), 401, "malformed_key")


async def test_the_host_header_is_never_reflected_into_location_or_status_url(
    client: HttpClient,
) -> None:
    ws, flow_id, _ = await startable_flow(client)

    started = await client.post(
        f"/trigger/{flow_id}", headers={**ws.admin, "Host": "attacker.example"}
    )

    assert started.status_code == 202, started.text
    base = IngressSettings().base_url
    assert started.json()["status_url"] == f"{base}/v1/runs/{started.json()['run_id']}"
    assert started.headers["location"] == started.json()["status_url"]
    assert "attacker" not in started.text


def test_the_public_url_setting_is_the_base_of_status_urls() -> None:
    settings = IngressSettings(public_url="https://flows.example.com/")
    listening = IngressSettings(ingress_host="0.0.0.0", ingress_port=9000)

    assert settings.base_url == "https://flows.example.com"
    assert listening.base_url == "http://127.0.0.1:9000"


async def test_a_key_nobody_issued_is_invalid_key(client: HttpClient) -> None:
    _, flow_id, _ = await startable_flow(client)

    response = await client.post(f"/trigger/{flow_id}", headers=bearer(api_keys.generate()))

    problem(response, 401, "invalid_key")


async def test_a_revoked_key_is_invalid_key_from_the_next_request_on(client: HttpClient) -> None:
    ws, flow_id, _ = await startable_flow(client)
    key = await new_key(client, ws)
    assert (
        await client.post(f"/trigger/{flow_id}", headers=bearer(key["secret"]))
    ).status_code == 202

    revoked = await client.delete(f"/v1/keys/{key['key']['id']}", headers=ws.admin)
    used = await client.post(f"/trigger/{flow_id}", headers=bearer(key["secret"]))

    assert revoked.status_code == 200
    assert revoked.json()["id"] == key["key"]["id"]
    problem(used, 401, "invalid_key")


async def test_revoking_the_last_admin_key_is_last_admin_key(client: HttpClient) -> None:
    ws = await new_workspace(client)

    response = await client.delete(f"/v1/keys/{ws.admin_key_id}", headers=ws.admin)

    problem(response, 409, "last_admin_key")


async def test_a_trigger_key_on_the_management_api_is_admin_key_required(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    key = await new_key(client, ws)

    for response in [
        await client.get("/v1/flows", headers=bearer(key["secret"])),
        await client.post(
            "/v1/flows",
            json={"name": "x", "settings": {"kind": "python", "function": "echo"}},
            headers=bearer(key["secret"]),
        ),
        await client.get("/v1/keys", headers=bearer(key["secret"])),
    ]:
        body = problem(response, 403, "admin_key_required")
        assert key["key"]["prefix"] in body["detail"]


async def test_a_management_call_without_a_key_is_missing_key(client: HttpClient) -> None:
    problem(await client.get("/v1/flows"), 401, "missing_key")
    problem(await client.get("/v1/flows", headers={"Authorization": "Basic x"}), 401, "missing_key")


# --- starting flows -------------------------------------------------------------------------


async def test_a_paused_trigger_is_trigger_paused_until_it_is_resumed(client: HttpClient) -> None:
    ws, flow_id, trigger = await startable_flow(client)

    paused = await client.post(f"/v1/triggers/{trigger['id']}/pause", headers=ws.admin)
    refused = await client.post(f"/trigger/{flow_id}", headers=ws.admin)
    resumed = await client.post(f"/v1/triggers/{trigger['id']}/resume", headers=ws.admin)
    accepted = await client.post(f"/trigger/{flow_id}", headers=ws.admin)

    assert paused.status_code == 200
    assert (paused.json()["enabled"], paused.json()["version"]) == (False, 2)
    body = problem(refused, 409, "trigger_paused")
    assert trigger["id"] in body["detail"]
    assert (resumed.json()["enabled"], resumed.json()["version"]) == (True, 3)
    assert accepted.status_code == 202, accepted.text


async def test_a_flow_without_an_api_trigger_is_no_api_trigger(client: HttpClient) -> None:
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)
    await new_trigger(client, ws, flow_id, type="manual")

    problem(await client.post(f"/trigger/{flow_id}", headers=ws.admin), 403, "no_api_trigger")


async def test_another_workspace_s_flow_is_indistinguishable_from_a_missing_one(
    client: HttpClient,
) -> None:
    ws, _, _ = await startable_flow(client)
    _, their_flow, _ = await startable_flow(client)

    foreign = await client.post(f"/trigger/{their_flow}", headers=ws.admin)
    missing = await client.post(f"/trigger/{new_id('flw')}", headers=ws.admin)
    not_an_id = await client.post("/trigger/nonsense", headers=ws.admin)

    problem(missing, 404, "flow_not_found")
    assert foreign.status_code == missing.status_code == not_an_id.status_code
    assert foreign.headers["content-type"] == missing.headers["content-type"]
    assert foreign.json() == missing.json() == not_an_id.json()


async def test_a_body_that_is_not_json_is_invalid_json(client: HttpClient) -> None:
    ws, flow_id, _ = await startable_flow(client)

    response = await client.post(
        f"/trigger/{flow_id}",
        content=b'{"n": 1',
        headers={**ws.admin, "content-type": "application/json"},
    )

    problem(response, 400, "invalid_json")


async def test_a_management_body_that_is_not_json_is_invalid_json(client: HttpClient) -> None:
    ws = await new_workspace(client)

    response = await client.post(
        "/v1/flows", content=b'{"name": ', headers={**ws.admin, "content-type": "application/json"}
    )

    problem(response, 400, "invalid_json")


async def test_a_body_missing_a_field_is_invalid_request_naming_the_field(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)

    response = await client.post("/v1/flows", json={"name": "nightly"}, headers=ws.admin)

    body = problem(response, 400, "invalid_request")
    assert "settings" in body["detail"]


async def test_an_unknown_route_is_a_not_found_problem(client: HttpClient) -> None:
    body = problem(await client.get("/v1/nothing-here"), 404, "not_found")

    assert "/v1/nothing-here" in body["detail"]


async def test_a_wrong_method_is_a_method_not_allowed_problem_with_an_allow_header(
    client: HttpClient,
) -> None:
    response = await client.put("/v1/flows")

    body = problem(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert "allowed: " in body["detail"]
    assert "GET" in body["detail"].split("allowed: ")[1]
    assert "POST" in body["detail"].split("allowed: ")[1]


async def test_a_body_over_the_limit_is_body_too_large(client: HttpClient) -> None:
    ws, flow_id, _ = await startable_flow(client)
    too_large = b'"' + b"x" * 524_288 + b'"'

    response = await client.post(
        f"/trigger/{flow_id}",
        content=too_large,
        headers={**ws.admin, "content-type": "application/json"},
    )

    body = problem(response, 413, "body_too_large")
    assert "524288 bytes" in body["detail"]
    assert "MAX_BODY_BYTES" in body["detail"]


async def test_a_management_body_over_the_limit_states_the_limit_and_its_setting(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    too_large = b'{"name": "' + b"x" * 524_288 + b'"}'

    response = await client.post(
        "/v1/flows", content=too_large, headers={**ws.admin, "content-type": "application/json"}
    )

    body = problem(response, 413, "body_too_large")
    assert "524288 bytes" in body["detail"]
    assert "MAX_BODY_BYTES" in body["detail"]


async def test_a_body_just_under_the_limit_is_started_not_refused_as_unstorable(
    client: HttpClient,
) -> None:
    ws, flow_id, _ = await startable_flow(client)
    limit = IngressSettings().max_body_bytes
    just_under = b'"' + b"x" * (limit - 2) + b'"'

    response = await client.post(
        f"/trigger/{flow_id}",
        content=just_under,
        headers={**ws.admin, "content-type": "application/json"},
    )

    assert response.status_code == 202, response.text


async def test_an_input_that_grows_past_the_limit_when_encoded_is_body_too_large(
    client: HttpClient,
) -> None:
    ws, flow_id, _ = await startable_flow(client)
    # `1e9` is stored as `1000000000.0`: four times the bytes.
    grows = b"[" + b",".join([b"1e9"] * 100_000) + b"]"

    response = await client.post(
        f"/trigger/{flow_id}",
        content=grows,
        headers={**ws.admin, "content-type": "application/json"},
    )

    body = problem(response, 413, "body_too_large")
    assert "524288 bytes" in body["detail"]


async def test_a_flow_just_under_the_body_limit_is_never_a_registry_error(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    limit = IngressSettings().max_body_bytes
    body = b'{"name": "big", "settings": {"kind": "http", "url": "https://example.com/", "body": ['
    body += b",".join([b"1e9"] * ((limit - len(body) - 10) // 4)) + b"]}}"
    assert len(body) <= limit

    response = await client.post(
        "/v1/flows", content=body, headers={**ws.admin, "content-type": "application/json"}
    )

    assert response.status_code in (201, 413, 422), response.text


async def test_json_nested_1000_levels_deep_is_invalid_json_on_every_kind_of_body(
    client: HttpClient,
) -> None:
    ws, flow_id, _ = await startable_flow(client)
    deep = b"[" * 1_000 + b"]" * 1_000
    flow = b'{"name": "deep", "settings": {"kind": "http", "url": "https://example.com/", "body": '
    headers = {**ws.admin, "content-type": "application/json"}

    started = await client.post(f"/trigger/{flow_id}", content=deep, headers=headers)
    registered = await client.post("/v1/flows", content=flow + deep + b"}}", headers=headers)

    problem(started, 400, "invalid_json")
    problem(registered, 400, "invalid_json")


async def test_an_empty_management_body_says_a_json_body_is_needed_and_what_it_holds(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)

    response = await client.post(
        "/v1/triggers", content=b"", headers={**ws.admin, "content-type": "application/json"}
    )

    detail = problem(response, 400, "invalid_request")["detail"]
    assert detail.startswith("the request needs a JSON body")
    assert "`flow_id`" in detail
    assert "`type`" in detail
    assert '"api", "schedule", "manual"' in detail


async def test_an_unknown_field_is_refused_naming_it_and_the_allowed_ones(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)

    response = await client.post(
        "/v1/triggers",
        json={"flow_id": flow_id, "type": "api", "frequency": "daily", "cron": "x"},
        headers=ws.admin,
    )

    detail = problem(response, 400, "invalid_request")["detail"]
    assert "`frequency`, `cron`" in detail
    assert "`sync_wait_seconds`" in detail  # the allowed fields of an API trigger
    listed = await client.get("/v1/triggers", headers=ws.admin)
    assert listed.json() == {"items": [], "next_cursor": None}


async def test_an_unknown_field_in_a_nested_object_is_refused_with_its_path(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    flow = {"name": "x", "settings": {"kind": "python", "function": "echo", "retries": 3}}

    response = await client.post("/v1/flows", json=flow, headers=ws.admin)

    detail = problem(response, 400, "invalid_request")["detail"]
    assert "unknown field `retries` in `settings`" in detail
    assert "`function`" in detail


async def test_patching_enabled_is_refused_and_points_to_pause_and_resume(
    client: HttpClient,
) -> None:
    ws, _, trigger = await startable_flow(client)

    response = await client.patch(
        f"/v1/triggers/{trigger['id']}", json={"enabled": False}, headers=ws.admin
    )

    detail = problem(response, 400, "invalid_request")["detail"]
    assert "`enabled`" in detail
    assert "/v1/triggers/{id}/pause" in detail
    unchanged = await client.get(f"/v1/triggers/{trigger['id']}", headers=ws.admin)
    assert unchanged.json() == trigger


async def test_a_value_outside_an_enum_is_refused_listing_the_allowed_values(
    client: HttpClient,
) -> None:
    ws, flow_id, trigger = await startable_flow(client)

    in_body = await client.post(
        "/v1/triggers", json={"flow_id": flow_id, "type": "email"}, headers=ws.admin
    )
    in_field = await client.patch(
        f"/v1/triggers/{trigger['id']}", json={"overlap": "never"}, headers=ws.admin
    )
    in_query = await client.post(
        f"/v1/triggers/{trigger['id']}/run?overlap=never", headers=ws.admin
    )

    assert (
        '"api", "schedule", "manual", "webhook"'
        in problem(in_body, 400, "invalid_request")["detail"]
    )
    for response in (in_field, in_query):
        detail = problem(response, 400, "invalid_request")["detail"]
        assert "cancel_previous" in detail
        assert "buffer_one" in detail


async def test_using_a_key_records_when_it_was_last_used(client: HttpClient) -> None:
    ws, flow_id, _ = await startable_flow(client)
    key = await new_key(client, ws)
    assert key["key"]["last_used_at"] is None

    assert (
        await client.post(f"/trigger/{flow_id}", headers=bearer(key["secret"]))
    ).status_code == 202

    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        listed = (await client.get("/v1/keys", headers=ws.admin)).json()["items"]
        [used] = [k for k in listed if k["id"] == key["key"]["id"]]
        if used["last_used_at"] is not None:
            break
        assert asyncio.get_running_loop().time() < deadline, "last_used_at was never recorded"
        await asyncio.sleep(0.02)


# --- managing triggers ----------------------------------------------------------------------


async def test_editing_a_trigger_changes_its_flow_and_name_and_bumps_its_version(
    client: HttpClient,
) -> None:
    ws, first_flow, trigger = await startable_flow(client)
    second_flow = await new_flow(client, ws, "weekly")

    response = await client.patch(
        f"/v1/triggers/{trigger['id']}",
        json={"flow_id": second_flow, "name": "renamed"},
        headers=ws.admin,
    )

    assert response.status_code == 200, response.text
    edited = response.json()
    assert (edited["flow_id"], edited["name"], edited["version"]) == (second_flow, "renamed", 2)
    assert (edited["type"], edited["enabled"], edited["created_at"]) == (
        "api",
        True,
        trigger["created_at"],
    )
    fetched = await client.get(f"/v1/triggers/{trigger['id']}", headers=ws.admin)
    assert fetched.json() == edited
    listed = await client.get("/v1/triggers", params={"flow_id": second_flow}, headers=ws.admin)
    assert [t["id"] for t in listed.json()["items"]] == [trigger["id"]]
    assert (await client.post(f"/trigger/{second_flow}", headers=ws.admin)).status_code == 202
    problem(await client.post(f"/trigger/{first_flow}", headers=ws.admin), 403, "no_api_trigger")


async def test_a_deleted_trigger_is_not_found(client: HttpClient) -> None:
    ws, flow_id, trigger = await startable_flow(client)

    deleted = await client.delete(f"/v1/triggers/{trigger['id']}", headers=ws.admin)

    assert deleted.status_code == 200
    assert deleted.json()["id"] == trigger["id"]
    problem(
        await client.get(f"/v1/triggers/{trigger['id']}", headers=ws.admin),
        404,
        "trigger_not_found",
    )
    problem(
        await client.delete(f"/v1/triggers/{trigger['id']}", headers=ws.admin),
        404,
        "trigger_not_found",
    )
    problem(await client.post(f"/trigger/{flow_id}", headers=ws.admin), 403, "no_api_trigger")


async def test_run_now_starts_even_a_paused_trigger_s_flow(
    client: HttpClient, flow_starts: Subscription
) -> None:
    ws, flow_id, trigger = await startable_flow(client)
    await client.post(f"/v1/triggers/{trigger['id']}/pause", headers=ws.admin)

    response = await client.post(
        f"/v1/triggers/{trigger['id']}/run", json={"manual": True}, headers=ws.admin
    )

    assert response.status_code == 202, response.text
    start = await start_of(flow_starts, response.json()["run_id"])
    assert (start.workspace_id, start.flow_id, start.trigger_id) == (ws.id, flow_id, trigger["id"])
    assert (start.source, start.input) == ("manual", {"manual": True})


async def test_run_now_of_another_workspace_s_trigger_is_trigger_not_found(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    _, _, theirs = await startable_flow(client)

    response = await client.post(f"/v1/triggers/{theirs['id']}/run", headers=ws.admin)

    problem(response, 404, "trigger_not_found")


# --- runs -----------------------------------------------------------------------------------


async def write_runs(
    js: JetStreamContext, ws: str, flows: list[str], client: HttpClient | None = None
) -> list[Run]:
    """Runs as a runner would record them, one millisecond apart, oldest first; with an admin
    `client` of the workspace, once the run history lists them all."""
    runs_bucket = await js.key_value(subjects.RUNS_BUCKET)
    statuses: list[RunStatus] = ["succeeded", "failed", "running", "succeeded", "queued"]
    base = datetime.now(UTC) - timedelta(minutes=5)
    runs = []
    for index, status in enumerate(statuses):
        at = base + timedelta(milliseconds=index)
        run = Run(
            id=new_id("run", now_ms=int(at.timestamp() * 1000)),
            workspace_id=ws,
            flow_id=flows[index % len(flows)],
            status=status,
            source="api",
            queued_at=at,
        )
        await runs_bucket.create(subjects.run_key(ws, run.id), encode(run))
        runs.append(run)
    return runs


async def listed_runs(client: HttpClient, ws: Workspace, count: int) -> None:
    """Wait until the run history lists `count` runs of the workspace (it follows the bucket)."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        page = await client.get("/v1/runs", params={"limit": 500}, headers=ws.admin)
        if page.status_code == 200 and len(page.json()["items"]) >= count:
            return
        assert asyncio.get_running_loop().time() < deadline, page.text
        await asyncio.sleep(0.05)


async def test_runs_are_listed_newest_first_and_filtered(
    client: HttpClient, js: JetStreamContext
) -> None:
    ws = await new_workspace(client)
    first, second = await new_flow(client, ws), await new_flow(client, ws)
    runs = await write_runs(js, ws.id, [first, second])
    newest_first = [run.id for run in reversed(runs)]
    await write_runs(js, (await new_workspace(client)).id, [first])
    await listed_runs(client, ws, len(runs))

    everything = await client.get("/v1/runs", headers=ws.admin)
    succeeded = await client.get("/v1/runs", params={"status": "succeeded"}, headers=ws.admin)
    of_second = await client.get("/v1/runs", params={"flow_id": second}, headers=ws.admin)

    assert everything.status_code == 200
    assert [r["id"] for r in everything.json()["items"]] == newest_first
    assert everything.json()["next_cursor"] is None
    assert [r["id"] for r in succeeded.json()["items"]] == [runs[3].id, runs[0].id]
    assert [r["id"] for r in of_second.json()["items"]] == [runs[3].id, runs[1].id]
    assert everything.json()["history_lag_seconds"] >= 0


async def test_runs_are_found_by_several_statuses_and_by_the_idempotency_key_that_started_them(
    client: HttpClient, js: JetStreamContext
) -> None:
    ws, flow_id, _ = await startable_flow(client)
    started = await client.post(
        f"/trigger/{flow_id}", json={}, headers={**ws.admin, "Idempotency-Key": "order-42"}
    )
    run_id = started.json()["run_id"]
    runs = await write_runs(js, ws.id, [flow_id])
    await runs_bucket_put(js, ws.id, run_id, flow_id)
    await listed_runs(client, ws, len(runs) + 1)

    by_status = await client.get(
        "/v1/runs", params=[("status", "failed"), ("status", "queued")], headers=ws.admin
    )
    by_key = await client.get("/v1/runs", params={"q": "order-42"}, headers=ws.admin)

    assert [r["status"] for r in by_status.json()["items"]] == ["queued", "queued", "failed"]
    assert [r["id"] for r in by_key.json()["items"]] == [run_id]


async def runs_bucket_put(js: JetStreamContext, ws: str, run_id: str, flow_id: str) -> None:
    """The record a runner would make of a start the ingress accepted."""
    runs_bucket = await js.key_value(subjects.RUNS_BUCKET)
    run = Run(
        id=run_id,
        workspace_id=ws,
        flow_id=flow_id,
        status="queued",
        source="api",
        queued_at=datetime.now(UTC),
    )
    await runs_bucket.put(subjects.run_key(ws, run_id), encode(run))


async def test_run_stats_count_a_flows_runs_of_the_last_day(
    client: HttpClient, js: JetStreamContext
) -> None:
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)
    runs = await write_runs(js, ws.id, [flow_id])
    await listed_runs(client, ws, len(runs))

    response = await client.get("/v1/runs/stats", params={"flow_id": flow_id}, headers=ws.admin)

    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["total"] == 5
    assert stats["counts"] == {"succeeded": 2, "failed": 1, "running": 1, "queued": 1}
    assert stats["success_rate"] == pytest.approx(2 / 3)
    assert sum(minute["runs"] for minute in stats["per_minute"]) == 5


async def test_runs_are_paged_with_next_cursor(client: HttpClient, js: JetStreamContext) -> None:
    ws = await new_workspace(client)
    runs = await write_runs(js, ws.id, [await new_flow(client, ws)])
    await listed_runs(client, ws, len(runs))

    pages: list[list[str]] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = (await client.get("/v1/runs", params=params, headers=ws.admin)).json()
        pages.append([r["id"] for r in page["items"]])
        if page["next_cursor"] is None:
            break
        params = {"limit": 2, "cursor": page["next_cursor"]}
        assert len(pages) < 10

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [run_id for page in pages for run_id in page] == [run.id for run in reversed(runs)]


async def test_a_run_is_read_with_any_key_of_its_workspace(
    client: HttpClient, js: JetStreamContext
) -> None:
    ws = await new_workspace(client)
    key = await new_key(client, ws)
    [run, *_] = await write_runs(js, ws.id, [await new_flow(client, ws)])

    response = await client.get(f"/v1/runs/{run.id}", headers=bearer(key["secret"]))

    assert response.status_code == 200
    assert decode(response.content, Run) == run


async def test_a_bad_run_filter_is_invalid_request_naming_the_parameter(client: HttpClient) -> None:
    ws = await new_workspace(client)

    bad_status = await client.get("/v1/runs", params={"status": "bogus"}, headers=ws.admin)
    bad_limit = await client.get("/v1/runs", params={"limit": 0}, headers=ws.admin)

    assert "status" in problem(bad_status, 400, "invalid_request")["detail"]
    assert "limit" in problem(bad_limit, 400, "invalid_request")["detail"]


async def test_an_unknown_run_is_run_not_found(client: HttpClient, js: JetStreamContext) -> None:
    ws = await new_workspace(client)
    [theirs, *_] = await write_runs(js, (await new_workspace(client)).id, ["flw_x"])

    for run_id in [new_id("run"), "not-a-run", theirs.id]:
        problem(await client.get(f"/v1/runs/{run_id}", headers=ws.admin), 404, "run_not_found")


# --- operations -----------------------------------------------------------------------------


async def test_the_openapi_schema_lists_the_trigger_endpoint(client: HttpClient) -> None:
    response = await client.get("/schema/openapi.json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/trigger/{flow_id}" in paths
    assert "/v1/triggers/{trigger_id}/run" in paths


async def test_health_is_ok_once_the_directory_is_loaded(client: HttpClient) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "nats": True}


# --- idempotency, run now overrides, time filters, flow functions ----------------------------


async def test_an_idempotent_retry_after_a_lost_response_returns_the_original_run(
    client: HttpClient, js: JetStreamContext, flow_starts: Subscription
) -> None:
    ws, flow_id, _ = await startable_flow(client)
    headers = {**ws.admin, "Idempotency-Key": "order-1234"}

    first = await client.post(f"/trigger/{flow_id}", json={"order": 1234}, headers=headers)
    # The answer to the first call is lost; the client sends the same request again.
    retried = await client.post(f"/trigger/{flow_id}", json={"order": 1234}, headers=headers)

    assert first.status_code == retried.status_code == 202, retried.text
    assert retried.json()["run_id"] == first.json()["run_id"]
    start = await start_of(flow_starts, first.json()["run_id"])
    assert start.input == {"order": 1234}
    # Both publishes carried the run id as Nats-Msg-Id: the stream stored the start once.
    stored = await js.get_last_msg(subjects.FLOW_STARTS_STREAM, subjects.FLOW_STARTS)
    assert decode(stored.data or b"", FlowStart).run_id == first.json()["run_id"]


async def test_the_same_idempotency_key_with_another_body_is_refused(client: HttpClient) -> None:
    ws, flow_id, _ = await startable_flow(client)
    headers = {**ws.admin, "Idempotency-Key": "order-99"}
    await client.post(f"/trigger/{flow_id}", json={"order": 99}, headers=headers)

    refused = await client.post(f"/trigger/{flow_id}", json={"order": 100}, headers=headers)

    body = problem(refused, 422, "idempotency_key_reused")
    assert "different body" in body["detail"]


async def test_idempotency_keys_are_per_workspace(client: HttpClient) -> None:
    ws, flow_id, _ = await startable_flow(client)
    other, other_flow, _ = await startable_flow(client)
    mine = await client.post(
        f"/trigger/{flow_id}", json={}, headers={**ws.admin, "Idempotency-Key": "k"}
    )
    theirs = await client.post(
        f"/trigger/{other_flow}", json={}, headers={**other.admin, "Idempotency-Key": "k"}
    )
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["run_id"] != theirs.json()["run_id"]


async def test_run_now_may_override_the_trigger_s_overlap_policy(
    client: HttpClient, flow_starts: Subscription
) -> None:
    ws, _, trigger = await startable_flow(client)
    default = await client.post(f"/v1/triggers/{trigger['id']}/run", headers=ws.admin)
    overridden = await client.post(
        f"/v1/triggers/{trigger['id']}/run", params={"overlap": "skip"}, headers=ws.admin
    )

    assert (await start_of(flow_starts, default.json()["run_id"])).overlap == "allow"
    assert (await start_of(flow_starts, overridden.json()["run_id"])).overlap == "skip"


async def test_runs_are_filtered_by_the_time_they_were_queued(
    client: HttpClient, js: JetStreamContext
) -> None:
    ws = await new_workspace(client)
    runs = await write_runs(js, ws.id, [await new_flow(client, ws)])
    await listed_runs(client, ws, len(runs))
    since, until = runs[1].queued_at, runs[3].queued_at

    response = await client.get(
        "/v1/runs",
        params={"since": since.isoformat(), "until": until.isoformat()},
        headers=ws.admin,
    )

    assert [r["id"] for r in response.json()["items"]] == [runs[2].id, runs[1].id]


async def test_a_python_flow_needs_a_function_some_runner_announced(
    client: HttpClient, nc: Client
) -> None:
    ws = await new_workspace(client)
    function = f"reports.{new_id('fn')}"
    flow = {"name": "report", "settings": {"kind": "python", "function": function}}

    refused = await client.post("/v1/flows", json=flow, headers=ws.admin)
    announcement = RunnerAnnouncement(
        runner_id=new_id("rnr"), functions=[function], announced_at=datetime.now(UTC)
    )
    await nc.publish(subjects.RUNNER_ANNOUNCE, encode(announcement))
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        listed = (await client.get("/v1/flow-functions", headers=ws.admin)).json()
        if function in [f["name"] for f in listed]:
            break
        assert asyncio.get_running_loop().time() < deadline, listed
        await asyncio.sleep(0.05)
    accepted = await client.post("/v1/flows", json=flow, headers=ws.admin)

    body = problem(refused, 422, "unknown_function")
    assert function in body["detail"]
    assert "RUNNER_FLOWS" in body["detail"]
    assert accepted.status_code == 201, accepted.text


async def test_an_http_flow_is_registered_with_its_request_and_limits(client: HttpClient) -> None:
    ws = await new_workspace(client)
    flow = {
        "name": "notify",
        "settings": {"kind": "http", "url": "https://example.com/hook", "method": "PUT"},
        "timeout_seconds": 20,
        "retries": 2,
        "concurrency": 3,
    }
    created_flow = created(await client.post("/v1/flows", json=flow, headers=ws.admin))
    bad = {"name": "bad", "settings": {"kind": "http", "url": "file:///etc/passwd"}}

    assert created_flow["settings"]["method"] == "PUT"
    assert (created_flow["retries"], created_flow["concurrency"]) == (2, 3)
    problem(await client.post("/v1/flows", json=bad, headers=ws.admin), 422, "invalid_url")


async def test_lists_come_in_pages_that_follow_one_another_by_cursor(client: HttpClient) -> None:
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)
    made = [
        created(
            await client.post(
                "/v1/triggers", json={"flow_id": flow_id, "type": "manual"}, headers=ws.admin
            )
        )["id"]
        for _ in range(5)
    ]

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await client.get("/v1/triggers", params=params, headers=ws.admin)
        assert page.status_code == 200, page.text
        assert len(page.json()["items"]) <= 2
        seen += [t["id"] for t in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break

    assert seen == made
    problem(
        await client.get("/v1/triggers", params={"limit": 501}, headers=ws.admin),
        400,
        "invalid_request",
    )
    detail = problem(
        await client.get("/v1/flows", params={"cursor": "not-a-cursor"}, headers=ws.admin),
        400,
        "invalid_request",
    )["detail"]
    assert "cursor" in detail


async def test_options_and_a_wrong_method_list_every_method_of_the_path(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)

    options = await client.options("/v1/triggers/trg_0000000000000000000000", headers=ws.admin)
    wrong = await client.put("/v1/flows", headers=ws.admin)

    assert options.status_code == 204
    assert options.headers["allow"] == "DELETE, GET, OPTIONS, PATCH"
    problem(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "GET, OPTIONS, POST"


async def test_a_time_filter_that_is_not_an_rfc_3339_time_is_refused(client: HttpClient) -> None:
    ws = await new_workspace(client)

    detail = problem(
        await client.get("/v1/runs", params={"until": "0.5"}, headers=ws.admin),
        400,
        "invalid_request",
    )["detail"]

    assert "`until`" in detail
    assert "RFC 3339" in detail


async def test_a_flow_the_directory_has_lost_is_read_from_its_source(client: HttpClient) -> None:
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)
    created(
        await client.post(
            "/v1/triggers",
            json={"flow_id": flow_id, "type": "api", "sync_wait_seconds": 0},
            headers=ws.admin,
        )
    )
    # As between two watches of the buckets after a NATS restart: the directory has neither.
    directory = client.app.state.ingress.directory
    directory._flow_by_id.pop(flow_id, None)
    directory._triggers_by_flow.pop(flow_id, None)

    response = await client.post(f"/trigger/{flow_id}", json={"n": 1}, headers=ws.admin)

    assert response.status_code == 202, response.text
