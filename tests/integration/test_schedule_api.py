"""Schedule preview and the fire ledger over HTTP: ingress, registry and scheduler in-process."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from nats.js import JetStreamContext

from contracts import subjects
from contracts.scheduling import FireRecord
from services.ingress.app import create_app as create_ingress
from services.ingress.settings import IngressSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.scheduler.app import create_app as create_scheduler
from services.scheduler.settings import SchedulerSettings
from shared.codec import encode
from tests.integration.test_ingress_api import (
    HttpClient,
    Workspace,
    created,
    new_flow,
    new_trigger,
    new_workspace,
    problem,
)


@pytest.fixture(scope="module")
async def client(nats_url: str) -> AsyncIterator[HttpClient]:
    """The ingress in-process, with a registry and a scheduler on the app's own loop."""
    registry = create_registry(RegistrySettings(nats_url=nats_url))
    scheduler = create_scheduler(SchedulerSettings(nats_url=nats_url))
    app = create_ingress(IngressSettings(nats_url=nats_url, operator_token="op-test"))
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as test_client:
        test_client.blocking_portal.call(registry.start)
        test_client.blocking_portal.call(scheduler.start)
        try:
            yield test_client
        finally:
            test_client.blocking_portal.call(scheduler.stop)
            test_client.blocking_portal.call(registry.stop)


async def schedule_trigger(
    client: HttpClient, schedule: dict[str, Any]
) -> tuple[Workspace, dict[str, Any]]:
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)
    return ws, await new_trigger(client, ws, flow_id, type="schedule", schedule=schedule)


async def test_the_preview_lists_the_next_fires_in_the_trigger_zone_and_in_utc(
    client: HttpClient,
) -> None:
    ws, trigger = await schedule_trigger(
        client, {"kind": "daily", "at": "09:30", "timezone": "Asia/Tokyo", "jitter": 120}
    )
    body = created(
        await client.get(f"/v1/triggers/{trigger['id']}/preview?count=3", headers=ws.admin)
    )
    assert body["timezone"] == "Asia/Tokyo"
    assert 0 <= body["jitter_seconds"] <= 120
    fires = body["fires"]
    assert len(fires) == 3
    for fire in fires:
        local = datetime.fromisoformat(fire["local_time"])
        scheduled = datetime.fromisoformat(fire["scheduled_at"])
        assert (local.hour, local.minute) == (9, 30)
        assert local.utcoffset() == timedelta(hours=9)
        assert local == scheduled
        assert scheduled.utcoffset() == timedelta(0)
        fires_at = datetime.fromisoformat(fire["fires_at"])
        assert fires_at - scheduled == timedelta(seconds=body["jitter_seconds"])
        assert fire["fires"] is True


async def test_the_preview_shows_a_dst_gap_non_fire_with_its_note(client: HttpClient) -> None:
    ws, trigger = await schedule_trigger(
        client,
        {
            "kind": "cron",
            "cron": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "dst_gap": "skip",
            "start": "2031-03-29T00:00:00",
        },
    )
    body = created(
        await client.get(f"/v1/triggers/{trigger['id']}/preview?count=2", headers=ws.admin)
    )
    # 2031-03-30 is Berlin's spring-forward day.
    first, second = body["fires"]
    assert (first["fires"], first["skip"]) == (True, None)
    assert (second["fires"], second["skip"]) == (False, "dst_gap")
    assert "does not exist" in second["note"]


async def test_the_preview_of_a_trigger_that_is_not_a_schedule_is_not_a_schedule(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    trigger = await new_trigger(client, ws, await new_flow(client, ws))
    response = await client.get(f"/v1/triggers/{trigger['id']}/preview", headers=ws.admin)
    problem(response, 409, "not_a_schedule")
    response = await client.get(f"/v1/triggers/{trigger['id']}/preview?count=0", headers=ws.admin)
    assert response.status_code == 400


async def test_an_unusable_schedule_option_is_invalid_schedule_with_the_reason(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)
    response = await client.post(
        "/v1/triggers",
        json={
            "flow_id": flow_id,
            "type": "schedule",
            "schedule": {"kind": "weekly", "days": ["mon"], "at": "9:30pm"},
        },
        headers=ws.admin,
    )
    body = problem(response, 422, "invalid_schedule")
    assert "'9:30pm' is not a time of day" in body["detail"]


async def test_the_ledger_is_listed_newest_first_and_paged(
    client: HttpClient, js: JetStreamContext
) -> None:
    ws, trigger = await schedule_trigger(client, {"kind": "cron", "cron": "0 0 1 1 *"})
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for minute in range(5):
        entry = FireRecord(
            trigger_id=trigger["id"],
            workspace_id=ws.id,
            flow_id=trigger["flow_id"],
            trigger_version=1,
            scheduled_at=base + timedelta(minutes=minute),
            local_time=(base + timedelta(minutes=minute)).isoformat(),
            timezone="UTC",
            status="missed" if minute % 2 else "started",
            reason="test",
            recorded_at=base,
        )
        await js.publish(subjects.schedule_fire(ws.id, trigger["id"]), encode(entry))

    url = f"/v1/triggers/{trigger['id']}/fires?limit=2"
    first = created(await client.get(url, headers=ws.admin))
    second = created(await client.get(f"{url}&cursor={first['next_cursor']}", headers=ws.admin))
    third = created(await client.get(f"{url}&cursor={second['next_cursor']}", headers=ws.admin))
    minutes = [
        datetime.fromisoformat(item["scheduled_at"]).minute
        for page in (first, second, third)
        for item in page["items"]
    ]
    assert minutes == [4, 3, 2, 1, 0]
    assert third["next_cursor"] is None
    assert first["items"][0]["status"] == "started"
    assert first["items"][1]["status"] == "missed"

    other = await new_workspace(client)
    response = await client.get(f"/v1/triggers/{trigger['id']}/fires", headers=other.admin)
    problem(response, 404, "trigger_not_found")


async def test_a_per_second_schedule_shows_its_fires_in_the_ledger(client: HttpClient) -> None:
    ws, trigger = await schedule_trigger(client, {"kind": "interval", "every": 1})
    deadline = asyncio.get_running_loop().time() + 8
    items: list[dict[str, Any]] = []
    while asyncio.get_running_loop().time() < deadline:
        body = created(await client.get(f"/v1/triggers/{trigger['id']}/fires", headers=ws.admin))
        items = body["items"]
        if len(items) >= 2:
            break
        await asyncio.sleep(0.2)
    assert len(items) >= 2, items
    assert {item["status"] for item in items} == {"started"}
    assert items[0]["scheduled_at"] > items[1]["scheduled_at"]
    assert all(item["run_id"].startswith("run_") for item in items)


async def test_patching_a_schedule_changes_the_fields_given_and_keeps_the_others(
    client: HttpClient,
) -> None:
    ws, trigger = await schedule_trigger(
        client, {"kind": "cron", "cron": "* * * * *", "timezone": "Europe/Berlin", "jitter": 5}
    )
    url = f"/v1/triggers/{trigger['id']}"

    new_cron = await client.patch(
        url, json={"schedule": {"kind": "cron", "cron": "*/5 * * * *"}}, headers=ws.admin
    )
    hourly = await client.patch(
        url, json={"schedule": {"kind": "hourly", "minute": 20}}, headers=ws.admin
    )
    minute = await client.patch(url, json={"schedule": {"minute": 40}}, headers=ws.admin)
    reset = await client.patch(url, json={"schedule": {"timezone": None}}, headers=ws.admin)

    assert created(new_cron)["schedule"] == {
        "kind": "cron",
        "cron": "*/5 * * * *",
        "timezone": "Europe/Berlin",
        "jitter": 5,
    }
    assert created(hourly)["schedule"] == {
        "kind": "hourly",
        "minute": 20,
        "timezone": "Europe/Berlin",
        "jitter": 5,
    }
    assert created(minute)["schedule"]["minute"] == 40
    assert created(reset)["schedule"] == {"kind": "hourly", "minute": 40, "jitter": 5}
    assert created(reset)["version"] == 5


async def test_a_schedule_patch_with_a_field_of_another_kind_is_invalid_schedule(
    client: HttpClient,
) -> None:
    ws, trigger = await schedule_trigger(client, {"kind": "cron", "cron": "* * * * *"})

    response = await client.patch(
        f"/v1/triggers/{trigger['id']}", json={"schedule": {"minute": 20}}, headers=ws.admin
    )

    detail = problem(response, 422, "invalid_schedule")["detail"]
    assert "`schedule.minute`" in detail
    assert "`cron` schedule" in detail


async def test_an_api_trigger_becomes_a_schedule_trigger_with_a_complete_schedule(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    trigger = await new_trigger(client, ws, await new_flow(client, ws))
    url = f"/v1/triggers/{trigger['id']}"

    without = await client.patch(url, json={"type": "schedule"}, headers=ws.admin)
    became = await client.patch(
        url,
        json={"type": "schedule", "schedule": {"kind": "daily", "at": "09:30"}},
        headers=ws.admin,
    )
    back = await client.patch(url, json={"type": "api"}, headers=ws.admin)

    problem(without, 422, "schedule_required")
    assert created(became)["type"] == "schedule"
    assert created(became)["schedule"] == {"kind": "daily", "at": "09:30"}
    assert "sync_wait_seconds" not in created(became)
    assert created(back)["type"] == "api"
    assert "schedule" not in created(back)
    assert created(back)["sync_wait_seconds"] == 10.0
