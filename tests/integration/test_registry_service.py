"""The registry service over a real NATS server, spoken to the way other services do."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts import subjects
from contracts.registry import (
    ApiKey,
    ApiKeyView,
    CreateFlow,
    CreateKey,
    CreateTrigger,
    CreateWorkspace,
    Flow,
    FlowPage,
    IssuedKey,
    KeyPage,
    KeyUsed,
    ListFlows,
    ListKeys,
    NewApiTrigger,
    NewFlow,
    NewKey,
    NewWorkspace,
    PythonFlowSettings,
    Reply,
    RevokeKey,
    Trigger,
    Workspace,
    WorkspaceCreated,
)
from services.registry.app import RegistryApp, create_app
from services.registry.settings import RegistrySettings
from shared import api_keys
from shared.codec import decode, encode

T = TypeVar("T")

DEADLINE = 5.0


@pytest.fixture(scope="module")
async def registry(nats_url: str) -> AsyncIterator[RegistryApp]:
    app = create_app(RegistrySettings(nats_url=nats_url))
    await app.start()
    yield app
    await app.stop()


async def ask(nc: Client, subject: str, request: Any, result: type[T]) -> Reply[T]:
    data = request if isinstance(request, bytes) else encode(request)
    msg = await nc.request(subject, data, timeout=DEADLINE)
    reply: Reply[T] = decode(msg.data, Reply[result])  # type: ignore[valid-type]
    return reply


async def ok(nc: Client, subject: str, request: Any, result: type[T]) -> T:
    reply = await ask(nc, subject, request, result)
    assert reply.error is None, reply.error
    assert reply.ok is not None
    return reply.ok


async def new_workspace(nc: Client, name: str = "acme") -> WorkspaceCreated:
    request = CreateWorkspace(workspace=NewWorkspace(name=name))
    return await ok(nc, subjects.WORKSPACE_CREATE, request, WorkspaceCreated)


async def new_flow(nc: Client, workspace_id: str) -> Flow:
    new = NewFlow(name="nightly", settings=PythonFlowSettings(function="echo"))
    return await ok(nc, subjects.FLOW_CREATE, CreateFlow(workspace_id=workspace_id, flow=new), Flow)


async def stored(js: JetStreamContext, bucket: str, key: str, type_: type[T]) -> T:
    entry = await (await js.key_value(bucket)).get(key)
    assert entry.value is not None
    value: T = decode(entry.value, type_)
    return value


async def eventually(check: Any, what: str) -> None:
    """Poll `check()` (async, truthy when done) until it holds or the deadline passes."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.usefixtures("registry")
async def test_a_workspace_flow_and_trigger_are_created_and_stored_in_their_buckets(
    nc: Client, js: JetStreamContext
) -> None:
    created = await new_workspace(nc)
    ws = created.workspace.id
    flow = await new_flow(nc, ws)
    trigger = await ok(
        nc,
        subjects.TRIGGER_CREATE,
        CreateTrigger(workspace_id=ws, trigger=NewApiTrigger(flow_id=flow.id)),
        Trigger,
    )

    assert await stored(js, subjects.WORKSPACES_BUCKET, ws, Workspace) == created.workspace
    assert await stored(js, subjects.FLOWS_BUCKET, subjects.record_key(ws, flow.id), Flow) == flow
    trigger_key = subjects.record_key(ws, trigger.id)
    assert await stored(js, subjects.TRIGGERS_BUCKET, trigger_key, Trigger) == trigger
    key_record = subjects.record_key(ws, created.admin_key.key.id)
    key = await stored(js, subjects.API_KEYS_BUCKET, key_record, ApiKey)
    assert key.digest == api_keys.digest(created.admin_key.secret)
    raw = (await (await js.key_value(subjects.API_KEYS_BUCKET)).get(key_record)).value
    assert raw is not None
    assert created.admin_key.secret.encode() not in raw


@pytest.mark.usefixtures("registry")
async def test_a_request_that_is_not_json_is_invalid_request_with_a_reason(nc: Client) -> None:
    reply = await ask(nc, subjects.FLOW_CREATE, b"{not json", Flow)

    assert reply.ok is None
    assert reply.error is not None
    assert (reply.error.status, reply.error.code) == (422, "invalid_request")
    assert reply.error.message


@pytest.mark.usefixtures("registry")
async def test_a_request_missing_a_field_is_invalid_request_naming_the_field(nc: Client) -> None:
    reply = await ask(nc, subjects.FLOW_CREATE, encode({"workspace_id": "ws_x"}), Flow)

    assert reply.error is not None
    assert reply.error.code == "invalid_request"
    assert "flow" in reply.error.message


@pytest.mark.usefixtures("registry")
async def test_an_unknown_operation_under_registry_v1_is_unknown_operation(nc: Client) -> None:
    subject = f"{subjects.REGISTRY_PREFIX}.flow.explode"

    reply = await ask(nc, subject, b"{}", Flow)

    assert reply.error is not None
    assert (reply.error.status, reply.error.code) == (404, "unknown_operation")
    assert subject in reply.error.message


@pytest.mark.usefixtures("registry")
async def test_a_refused_request_is_answered_with_the_problem(nc: Client) -> None:
    created = await new_workspace(nc)
    new = NewApiTrigger(flow_id="flw_000000000000000000000")

    reply = await ask(
        nc,
        subjects.TRIGGER_CREATE,
        CreateTrigger(workspace_id=created.workspace.id, trigger=new),
        Trigger,
    )

    assert reply.ok is None
    assert reply.error is not None
    assert (reply.error.status, reply.error.code) == (404, "flow_not_found")


@pytest.mark.usefixtures("registry")
async def test_a_wildcard_workspace_id_lists_no_other_workspace_s_flows(nc: Client) -> None:
    theirs = await new_flow(nc, (await new_workspace(nc, "globex")).workspace.id)

    reply = await ask(nc, subjects.FLOW_LIST, ListFlows(workspace_id="*"), FlowPage)

    listed = reply.ok.items if reply.ok else []
    assert theirs.id not in [flow.id for flow in listed]
    assert reply.error is None or reply.error.status == 404


async def test_two_registry_replicas_answer_each_request_exactly_once(
    registry: RegistryApp, nats_url: str, nc: Client
) -> None:
    second = create_app(RegistrySettings(nats_url=nats_url))
    await second.start()
    try:
        replies: list[Msg] = []
        inbox = nc.new_inbox()

        async def collect(msg: Msg) -> None:
            replies.append(msg)

        subscription = await nc.subscribe(inbox, cb=collect)
        count = 40
        for index in range(count):
            request = CreateWorkspace(workspace=NewWorkspace(name=f"replica test {index}"))
            await nc.publish(subjects.WORKSPACE_CREATE, encode(request), reply=inbox)

        async def all_answered() -> bool:
            return len(replies) >= count

        await eventually(all_answered, f"{count} replies")
        # Nothing to poll for: a duplicate answer would arrive within this quiet period.
        await asyncio.sleep(0.3)
        await subscription.unsubscribe()

        created = [decode(msg.data, Reply[WorkspaceCreated]).ok for msg in replies]
        assert len(replies) == count
        assert sorted(c.workspace.name for c in created) == sorted(
            f"replica test {index}" for index in range(count)
        )
    finally:
        await second.stop()


@pytest.mark.usefixtures("registry")
async def test_key_used_published_without_a_reply_moves_last_used_at(nc: Client) -> None:
    created = await new_workspace(nc)
    ws, key_id = created.workspace.id, created.admin_key.key.id
    used_at = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)

    await nc.publish(
        subjects.KEY_TOUCH, encode(KeyUsed(workspace_id=ws, key_id=key_id, used_at=used_at))
    )

    async def last_used_at_moved() -> bool:
        keys = await ok(nc, subjects.KEY_LIST, ListKeys(workspace_id=ws), KeyPage)
        return keys.items[0].last_used_at == used_at

    await eventually(last_used_at_moved, "last_used_at to be recorded")


@pytest.mark.usefixtures("registry")
async def test_a_reply_decodes_with_a_generic_reply_of_the_result_type(nc: Client) -> None:
    created = await new_workspace(nc)

    msg = await nc.request(
        subjects.KEY_LIST, encode(ListKeys(workspace_id=created.workspace.id)), timeout=DEADLINE
    )

    body = msgspec.json.decode(msg.data)
    assert set(body) == {"ok", "error"}
    assert body["error"] is None
    assert [key["id"] for key in body["ok"]["items"]] == [created.admin_key.key.id]


@pytest.mark.usefixtures("registry")
async def test_admin_keys_revoking_each_other_at_once_always_leave_one_admin_key(
    nc: Client,
) -> None:
    async def revoke(workspace_id: str, key_id: str) -> Reply[ApiKeyView]:
        return await ask(
            nc, subjects.KEY_REVOKE, RevokeKey(workspace_id=workspace_id, key_id=key_id), ApiKeyView
        )

    for attempt in range(10):
        created = await new_workspace(nc, f"revoke race {attempt}")
        ws = created.workspace.id
        spare = await ok(
            nc,
            subjects.KEY_CREATE,
            CreateKey(workspace_id=ws, key=NewKey(name="spare", scope="admin")),
            IssuedKey,
        )

        replies = await asyncio.gather(
            revoke(ws, created.admin_key.key.id), revoke(ws, spare.key.id)
        )

        refused = [reply.error.code for reply in replies if reply.error is not None]
        assert refused == ["last_admin_key"], replies
        keys = await ok(nc, subjects.KEY_LIST, ListKeys(workspace_id=ws), KeyPage)
        assert [key.scope for key in keys.items] == ["admin"]
