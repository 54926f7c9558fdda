"""The README walkthrough over HTTP against the whole stack started as processes."""

import asyncio
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import nats

from contracts import subjects
from contracts.runs import FlowStart
from shared.codec import encode
from shared.ids import new_id
from tests.e2e.conftest import Stack


def poll(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s; last value: {value}")
        time.sleep(0.1)


def create_workspace(stack: Stack, name: str) -> str:
    with stack.client(stack.operator_token) as operator:
        response = operator.post("/v1/workspaces", json={"name": name})
    assert response.status_code == 201, response.text
    secret: str = response.json()["admin_key"]["secret"]
    return secret


def create_flow(admin: httpx.Client, function: str) -> str:
    response = admin.post(
        "/v1/flows", json={"name": function, "settings": {"kind": "python", "function": function}}
    )
    assert response.status_code == 201, response.text
    flow_id: str = response.json()["id"]
    return flow_id


def test_an_api_trigger_call_answers_with_the_flow_s_result_and_records_the_run(
    stack: Stack,
) -> None:
    admin_key = create_workspace(stack, "walkthrough")
    with stack.client(admin_key) as admin:
        flow_id = create_flow(admin, "echo")
        trigger = admin.post("/v1/triggers", json={"flow_id": flow_id, "type": "api"})
        assert trigger.status_code == 201, trigger.text
        issued = admin.post("/v1/keys", json={"name": "webhooks", "scope": "trigger"})
        assert issued.status_code == 201, issued.text
        trigger_key = issued.json()["secret"]

        with stack.client(trigger_key) as producer:
            answered = producer.post(f"/trigger/{flow_id}", json={"hello": "world"})
            assert answered.status_code == 200, answered.text
            assert answered.json()["status"] == "succeeded"
            assert answered.json()["result"] == {"hello": "world"}
            run = producer.get(answered.json()["status_url"]).json()

        assert run["status"] == "succeeded", run
        assert run["result"] == {"hello": "world"}
        assert run["source"] == "api"
        assert run["trigger_id"] == trigger.json()["id"]
        # The list comes from the run history, which follows the run records closely.
        page = poll(
            lambda: admin.get("/v1/runs", params={"flow_id": flow_id}).json(),
            lambda page: bool(page["items"]) and page["items"][0]["status"] == "succeeded",
        )
        assert [r["id"] for r in page["items"]] == [run["id"]]
        assert page["history_lag_seconds"] < 5
        stats = admin.get("/v1/runs/stats", params={"flow_id": flow_id}).json()
        assert (stats["total"], stats["counts"], stats["success_rate"]) == (
            1,
            {"succeeded": 1},
            1.0,
        )

        # Step 9: the audit log shows the key made for the producer, and no secret.
        audit = admin.get("/v1/audit", params={"resource_type": "key", "limit": 5})
        assert audit.status_code == 200, audit.text
        entries = audit.json()["items"]
        assert [e["action"] for e in entries] == ["key.created", "key.created"]
        assert entries[0]["resource_id"] == issued.json()["key"]["id"]
        assert entries[0]["after"]["scope"] == "trigger"
        assert entries[1]["actor"] == "operator"
        assert trigger_key not in audit.text
        assert admin_key not in audit.text


def test_a_paused_api_trigger_refuses_calls_with_a_clear_problem(stack: Stack) -> None:
    admin_key = create_workspace(stack, "paused")
    with stack.client(admin_key) as admin:
        flow_id = create_flow(admin, "echo")
        trigger_id = admin.post("/v1/triggers", json={"flow_id": flow_id, "type": "api"}).json()[
            "id"
        ]
        assert admin.post(f"/v1/triggers/{trigger_id}/pause").json()["enabled"] is False
        refused = admin.post(f"/trigger/{flow_id}", json={})
        assert refused.status_code == 409
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "trigger_paused"
        assert trigger_id in refused.json()["detail"]


def test_a_per_second_schedule_trigger_starts_runs_until_it_is_paused(stack: Stack) -> None:
    admin_key = create_workspace(stack, "schedules")
    with stack.client(admin_key) as admin:
        flow_id = create_flow(admin, "echo")
        created = admin.post(
            "/v1/triggers",
            json={
                "flow_id": flow_id,
                "type": "schedule",
                "schedule": {"kind": "cron", "cron": "* * * * * *", "timezone": "Europe/Berlin"},
            },
        )
        assert created.status_code == 201, created.text
        trigger_id = created.json()["id"]

        def succeeded_runs() -> list[dict[str, Any]]:
            items = admin.get("/v1/runs", params={"trigger_id": trigger_id}).json()["items"]
            return [r for r in items if r["status"] == "succeeded"]

        runs = poll(succeeded_runs, lambda runs: len(runs) >= 2, timeout=15)
        assert all(r["source"] == "schedule" and r["scheduled_at"] for r in runs)
        assert len({r["scheduled_at"] for r in runs}) == len(runs), "one run per fire"

        preview = admin.get(f"/v1/triggers/{trigger_id}/preview", params={"count": 3})
        assert preview.status_code == 200, preview.text
        upcoming = preview.json()["fires"]
        assert [fire["fires"] for fire in upcoming] == [True, True, True]
        times = [datetime.fromisoformat(fire["scheduled_at"]) for fire in upcoming]
        assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [1.0, 1.0]
        assert all(fire["local_time"].endswith(("+01:00", "+02:00")) for fire in upcoming)

        # Every run of the trigger is a fire its ledger records as started, with its run id.
        def started_fires() -> dict[str, str]:
            items = admin.get(f"/v1/triggers/{trigger_id}/fires").json()["items"]
            return {e["run_id"]: e["status"] for e in items if e["status"] == "started"}

        fires = poll(started_fires, lambda fires: {r["id"] for r in runs} <= set(fires))
        assert set(fires.values()) == {"started"}

        admin.post(f"/v1/triggers/{trigger_id}/pause")
        time.sleep(1.5)  # let a fire already in flight at the moment of the pause land
        settled = len(admin.get("/v1/runs", params={"trigger_id": trigger_id}).json()["items"])
        time.sleep(2.5)  # two more periods: a paused trigger must not fire in them
        after = len(admin.get("/v1/runs", params={"trigger_id": trigger_id}).json()["items"])
        assert after == settled


def test_run_now_answers_like_an_api_trigger_call(stack: Stack) -> None:
    admin_key = create_workspace(stack, "manual")
    with stack.client(admin_key) as admin:
        flow_id = create_flow(admin, "add")
        trigger_id = admin.post("/v1/triggers", json={"flow_id": flow_id, "type": "manual"}).json()[
            "id"
        ]
        answered = admin.post(f"/v1/triggers/{trigger_id}/run", json={"a": 2, "b": 3})
        accepted = admin.post(
            f"/v1/triggers/{trigger_id}/run",
            json={"a": 1, "b": 1},
            headers={"Prefer": "respond-async"},
        )

        assert answered.status_code == 200, answered.text
        assert (answered.json()["status"], answered.json()["result"]) == ("succeeded", 5)
        assert accepted.status_code == 202, accepted.text
        assert accepted.headers["preference-applied"] == "respond-async"
        run_id = accepted.json()["run_id"]
        run = poll(
            lambda: admin.get(f"/v1/runs/{run_id}"),
            lambda r: r.status_code == 200 and r.json()["status"] == "succeeded",
        ).json()
        assert run["result"] == 2
        assert run["source"] == "manual"


def test_a_flow_start_published_straight_onto_nats_runs_like_an_http_start(stack: Stack) -> None:
    with stack.client(stack.operator_token) as operator:
        created = operator.post("/v1/workspaces", json={"name": "external"}).json()
    workspace_id = created["workspace"]["id"]
    with stack.client(created["admin_key"]["secret"]) as admin:
        flow_id = create_flow(admin, "echo")
        start = FlowStart(
            run_id=new_id("run"),
            workspace_id=workspace_id,
            flow_id=flow_id,
            input={"from": "another service"},
            requested_at=datetime.now(UTC),
        )

        async def publish() -> None:
            nc = await nats.connect(stack.nats_url)
            await nc.jetstream().publish(
                subjects.flow_start(start.workspace_id),
                encode(start),
                headers={"Nats-Msg-Id": start.run_id},
            )
            await nc.drain()

        asyncio.run(publish())
        run = poll(
            lambda: admin.get(f"/v1/runs/{start.run_id}"),
            lambda r: r.status_code == 200 and r.json()["status"] == "succeeded",
        ).json()
    assert run["result"] == {"from": "another service"}
    assert run["source"] == "external"


def test_a_slow_flow_answers_202_within_the_wait_and_later_shows_succeeded(stack: Stack) -> None:
    admin_key = create_workspace(stack, "slow")
    with stack.client(admin_key) as admin:
        flow_id = create_flow(admin, "sleep")
        admin.post("/v1/triggers", json={"flow_id": flow_id, "type": "api"})
        began = time.monotonic()
        accepted = admin.post(
            f"/trigger/{flow_id}", json={"seconds": 2}, headers={"Prefer": "wait=0.5"}
        )
        assert accepted.status_code == 202, accepted.text
        assert time.monotonic() - began < 2
        assert accepted.headers["preference-applied"] == "wait=0.5"
        assert accepted.json()["status"] in ("queued", "running")
        run = poll(
            lambda: admin.get(accepted.json()["status_url"]),
            lambda r: r.json()["status"] == "succeeded",
        ).json()
        assert run["result"] == {"slept": 2}
        assert run["duration_seconds"] >= 2


def test_a_failing_flow_answers_a_failure_document_with_its_error(stack: Stack) -> None:
    admin_key = create_workspace(stack, "failing")
    with stack.client(admin_key) as admin:
        flow_id = create_flow(admin, "fail")
        admin.post("/v1/triggers", json={"flow_id": flow_id, "type": "api"})
        failed = admin.post(f"/trigger/{flow_id}", json={"message": "no cheese"})
        assert failed.status_code == 502, failed.text
        assert failed.headers["content-type"].startswith("application/problem+json")
        body = failed.json()
        assert (body["code"], body["run_status"]) == ("run_failed", "failed")
        assert body["error"] == "RuntimeError: no cheese"
        assert body["run_id"] in body["status_url"]


def test_a_running_run_is_cancelled_over_the_api(stack: Stack) -> None:
    admin_key = create_workspace(stack, "cancel")
    with stack.client(admin_key) as admin:
        flow_id = create_flow(admin, "sleep")
        admin.post("/v1/triggers", json={"flow_id": flow_id, "type": "api"})
        accepted = admin.post(
            f"/trigger/{flow_id}", json={"seconds": 60}, headers={"Prefer": "respond-async"}
        )
        run_id = accepted.json()["run_id"]
        poll(lambda: admin.get(f"/v1/runs/{run_id}"), lambda r: r.json().get("status") == "running")

        cancelled = admin.post(f"/v1/runs/{run_id}/cancel")
        again = admin.post(f"/v1/runs/{run_id}/cancel")

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert again.status_code == 409
    assert again.json()["code"] == "run_finished"


def test_the_runner_s_built_in_functions_are_listed_as_announced(stack: Stack) -> None:
    admin_key = create_workspace(stack, "functions")
    with stack.client(admin_key) as admin:
        listed = poll(
            lambda: [f["name"] for f in admin.get("/v1/flow-functions").json()],
            lambda names: "echo" in names,
        )
    assert {"echo", "sleep", "add", "fail"} <= set(listed)
