"""The audit log end to end: changes made with two keys are recorded by the registry in the
`AUDIT` stream and read back at `GET /v1/audit`, filtered and paged, against a real NATS server;
and the newest-first reader it uses, against a stream far larger than a page."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from services.ingress.app import create_app as create_ingress
from services.ingress.settings import IngressSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from shared import stream_read
from shared.stream_read import read_newest
from tests.integration.test_ingress_api import (
    HttpClient,
    Workspace,
    bearer,
    created,
    new_flow,
    new_trigger,
    new_workspace,
    problem,
)


@pytest.fixture(scope="module")
async def client(nats_url: str) -> AsyncIterator[HttpClient]:
    """One ingress and one registry (on the app's loop, as in `test_ingress_api`)."""
    registry = create_registry(RegistrySettings(nats_url=nats_url))
    settings = IngressSettings(nats_url=nats_url, operator_token="op-test")
    async with AsyncTestClient(app=create_ingress(settings), raise_server_exceptions=False) as app:
        app.blocking_portal.call(registry.start)
        try:
            yield app
        finally:
            app.blocking_portal.call(registry.stop)


async def audit(client: HttpClient, ws: Workspace, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/audit", params=params, headers=ws.admin)
    body: dict[str, Any] = created(response)
    return body


async def every_page(client: HttpClient, ws: Workspace, **params: Any) -> list[dict[str, Any]]:
    """Every entry the filters select, page by page."""
    entries: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await audit(client, ws, **params, **({"cursor": cursor} if cursor else {}))
        assert len(page["items"]) <= params.get("limit", 50)
        entries += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return entries


async def test_changes_made_with_two_keys_are_read_back_filtered_and_paged(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client, "audited")
    second = created(
        await client.post("/v1/keys", json={"name": "ops", "scope": "admin"}, headers=ws.admin)
    )
    ops = Workspace(id=ws.id, admin=bearer(second["secret"]), admin_key_id=second["key"]["id"])
    flow_id = await new_flow(client, ws)
    trigger = await new_trigger(client, ws, flow_id)
    path = f"/v1/triggers/{trigger['id']}"
    created(await client.post(f"{path}/pause", headers=ops.admin))
    created(await client.post(f"{path}/resume", headers=ops.admin))
    created(await client.patch(path, json={"name": "renamed"}, headers=ops.admin))
    ci = created(await client.post("/v1/keys", json={"name": "ci"}, headers=ops.admin))
    rotated = created(
        await client.post(
            f"/v1/keys/{ci['key']['id']}/rotate", json={"grace_seconds": 60}, headers=ops.admin
        )
    )
    created(await client.delete(f"/v1/keys/{ci['key']['id']}", headers=ws.admin))

    everything = await audit(client, ws, limit=100)
    entries = everything["items"]
    assert everything["next_cursor"] is None
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("key.revoked", ws.admin_key_id),
        ("key.rotated", ops.admin_key_id),
        ("key.created", ops.admin_key_id),
        ("trigger.updated", ops.admin_key_id),
        ("trigger.resumed", ops.admin_key_id),
        ("trigger.paused", ops.admin_key_id),
        ("trigger.created", ws.admin_key_id),
        ("flow.created", ws.admin_key_id),
        ("key.created", ws.admin_key_id),
        ("key.created", "operator"),
        ("workspace.created", "operator"),
    ]
    assert all(e["workspace_id"] == ws.id for e in entries)
    times = [datetime.fromisoformat(e["at"]) for e in entries]
    assert times == sorted(times, reverse=True)
    renamed = entries[3]
    assert (renamed["before"]["name"], renamed["after"]["name"]) == ("", "renamed")
    paused = entries[5]
    assert (paused["before"]["enabled"], paused["after"]["enabled"]) == (True, False)

    # Never a secret nor a digest, in any entry.
    text = str(everything)
    for secret in (second["secret"], ci["secret"], rotated["secret"]):
        assert secret not in text
    assert "digest" not in text

    # Filters: by actor, by record, by action, by kind of record, combined.
    by_ops = await every_page(client, ws, actor=ops.admin_key_id)
    assert [e["id"] for e in by_ops] == [e["id"] for e in entries[1:6]]
    of_trigger = await every_page(client, ws, resource_id=trigger["id"])
    assert [e["action"] for e in of_trigger] == [
        "trigger.updated",
        "trigger.resumed",
        "trigger.paused",
        "trigger.created",
    ]
    assert [e["id"] for e in await every_page(client, ws, action="trigger.paused")] == [
        paused["id"]
    ]
    keys = await every_page(client, ws, resource_type="key")
    assert [e["action"] for e in keys] == [
        "key.revoked",
        "key.rotated",
        "key.created",
        "key.created",
        "key.created",
    ]
    assert await every_page(client, ws, resource_type="key", actor="operator") == [entries[9]]
    assert await every_page(client, ws, resource_type="flow", action="key.created") == []

    # Paging: two at a time gives the same entries in the same order.
    assert [e["id"] for e in await every_page(client, ws, limit=2)] == [e["id"] for e in entries]
    assert [e["id"] for e in await every_page(client, ws, limit=3, resource_type="key")] == [
        e["id"] for e in keys
    ]

    # A time window: `since` inclusive, `until` exclusive, on each entry's own time.
    since, until = entries[8]["at"], entries[2]["at"]
    window = await every_page(client, ws, since=since, until=until, limit=2)
    assert [e["id"] for e in window] == [e["id"] for e in entries[3:9]]
    assert await every_page(client, ws, since=datetime.now(UTC) + timedelta(hours=1)) == []
    # The ends of time: the clock margin around them cannot overflow (found by the fuzzer).
    first, last = datetime(1, 1, 1, 0, 0, 2, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    assert len(await every_page(client, ws, since=first, until=last)) == len(entries)
    assert await every_page(client, ws, until=first) == []


async def test_the_audit_log_is_its_workspace_admins_alone(client: HttpClient) -> None:
    ws = await new_workspace(client, "private")
    flow_id = await new_flow(client, ws)
    other = await new_workspace(client, "other")
    assert (await audit(client, other, resource_id=flow_id))["items"] == []
    assert all(e["workspace_id"] == other.id for e in (await audit(client, other))["items"])
    trigger_key = created(await client.post("/v1/keys", json={"name": "t"}, headers=ws.admin))
    refused = await client.get("/v1/audit", headers=bearer(trigger_key["secret"]))
    problem(refused, 403, "admin_key_required")
    problem(await client.get("/v1/audit"), 401, "missing_key")


async def test_a_filter_that_could_widen_the_subject_is_refused(client: HttpClient) -> None:
    ws = await new_workspace(client, "wildcards")
    for params in ({"resource_id": "*"}, {"resource_id": "flw_>"}, {"actor": "key_a.b"}):
        response = await client.get("/v1/audit", params=params, headers=ws.admin)
        assert response.status_code == 400, (params, response.text)
    response = await client.get("/v1/audit", params={"cursor": "abc"}, headers=ws.admin)
    assert response.status_code == 400


# --- the reader, on a stream many windows long ------------------------------------------


@pytest.fixture
async def crowded(js: JetStreamContext) -> AsyncIterator[tuple[str, list[tuple[int, str]]]]:
    """A stream of 3,000 messages on three subjects: `dense` (every other one), `sparse`
    (every 97th) and `other`; yields its name and every (position, subject)."""
    name = "READ_NEWEST_TEST"
    await js.add_stream(StreamConfig(name=name, subjects=["rn.>"]))
    try:
        subjects = [
            "rn.sparse" if i % 97 == 0 else "rn.dense" if i % 2 else "rn.other" for i in range(3000)
        ]
        acks = await asyncio.gather(
            *(js.publish(subject, str(i).encode()) for i, subject in enumerate(subjects))
        )
        yield name, sorted((ack.seq, subject) for ack, subject in zip(acks, subjects, strict=True))
    finally:
        await js.delete_stream(name)


async def test_the_newest_first_reader_matches_a_full_scan_and_reads_no_more_than_it_may(
    js: JetStreamContext,
    crowded: tuple[str, list[tuple[int, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream, stored = crowded
    largest_read = 0
    read = stream_read._Window.read

    async def counted(self: Any, count: int, last: int, timeout: float) -> Any:
        nonlocal largest_read
        largest_read = max(largest_read, count)
        return await read(self, count, last, timeout)

    monkeypatch.setattr(stream_read._Window, "read", counted)
    for subject in ("rn.sparse", "rn.dense", "rn.*"):
        for want, below in ((5, None), (40, 2500), (1, 1200), (500, None)):
            largest_read = 0
            found = await read_newest(js, stream, subject, want, below=below)
            expected = [
                seq
                for seq, name in reversed(stored)
                if (subject == "rn.*" or name == subject) and (below is None or seq < below)
            ][:want]
            assert [m.metadata.sequence.stream for m in found] == expected, (subject, want)
            assert largest_read <= stream_read.DENSE * want, (subject, want, largest_read)
    odd = await read_newest(
        js, stream, "rn.dense", 10, floor=2990, accept=lambda m: int(m.data) % 4 == 1
    )
    assert [int(m.data) for m in odd] == [2997, 2993, 2989]  # message i is at position i + 1
