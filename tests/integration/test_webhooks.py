"""Signed webhook deliveries over HTTP, against a real NATS server, registry and runner: signed
with the producers' own code (the `standardwebhooks` package, Stripe's library) and GitHub's
published algorithm."""

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe
from litestar.testing import AsyncTestClient
from nats.js import JetStreamContext
from standardwebhooks.webhooks import Webhook

from contracts import subjects
from services.ingress.app import create_app as create_ingress
from services.ingress.settings import IngressSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.runner.app import create_app as create_runner
from services.runner.settings import RunnerSettings
from shared import webhook_secrets
from tests.integration.test_ingress_api import (
    DEADLINE,
    HttpClient,
    Workspace,
    created,
    new_flow,
    new_workspace,
    problem,
)
from tests.integration.test_runner_app import functions as runner_functions

SEALING_KEY = webhook_secrets.generate_sealing_key()


@pytest.fixture(scope="module")
async def client(nats_url: str) -> AsyncIterator[HttpClient]:
    """The ingress in-process with a registry and a runner on the app's own loop (see
    `test_ingress_api.client`), registry and ingress sharing one sealing key."""
    registry = create_registry(RegistrySettings(nats_url=nats_url, webhook_secret_key=SEALING_KEY))
    runner = create_runner(
        RunnerSettings(nats_url=nats_url, runner_concurrency=4), functions=runner_functions
    )
    app = create_ingress(
        IngressSettings(nats_url=nats_url, operator_token="op-test", webhook_secret_key=SEALING_KEY)
    )
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as test_client:
        test_client.blocking_portal.call(registry.start)
        test_client.blocking_portal.call(runner.start)
        try:
            yield test_client
        finally:
            test_client.blocking_portal.call(runner.stop)
            test_client.blocking_portal.call(registry.stop)


async def webhook_trigger(
    client: HttpClient, scheme: str, **fields: Any
) -> tuple[Workspace, dict[str, Any]]:
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)
    body = {"flow_id": flow_id, "type": "webhook", "scheme": scheme, **fields}
    trigger: dict[str, Any] = created(
        await client.post("/v1/triggers", json=body, headers=ws.admin)
    )
    return ws, trigger


def standard_signed(
    secret: str, body: bytes, message_id: str, at: datetime | None = None
) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body.decode()),
        "content-type": "application/json",
    }


def github_signed(secret: str, body: bytes, event: str, delivery: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "x-hub-signature-256": f"sha256={digest}",
        "x-github-event": event,
        "x-github-delivery": delivery,
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/test",
    }


def stripe_signed(secret: str, body: bytes) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    return {"stripe-signature": header, "content-type": "application/json"}


async def starts_of(js: JetStreamContext, workspace_id: str) -> int:
    """How many starts the workspace has stored (its own subject of the starts stream)."""
    subject = subjects.flow_start(workspace_id)
    info = await js.stream_info(subjects.FLOW_STARTS_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_a_standard_webhooks_delivery_starts_the_flow_once_however_often_it_is_sent(
    client: HttpClient, js: JetStreamContext
) -> None:
    ws, trigger = await webhook_trigger(
        client, "standard_webhooks", response_mode="result", include_headers=["Webhook-Id"]
    )
    secret = trigger["new_secret"]
    assert secret.startswith("whsec_")
    assert all(s["sealed"] == "" for s in trigger["secrets"])
    body = json.dumps({"type": "user.created", "data": {"id": 7}}).encode()

    first = await client.post(
        f"/hooks/{trigger['id']}", content=body, headers=standard_signed(secret, body, "msg_a1")
    )
    # `result` mode: the echo flow's answer is its input, the body and the delivery's metadata.
    assert first.status_code == 200, first.text
    run_id = first.json()["run_id"]
    given = first.json()["result"]
    assert given["body"] == {"type": "user.created", "data": {"id": 7}}
    assert given["delivery"]["id"] == "msg_a1"
    assert given["delivery"]["event"] == "user.created"
    assert given["delivery"]["headers"] == {"webhook-id": "msg_a1"}
    run = await client.get(f"/v1/runs/{run_id}", headers=ws.admin)
    assert run.json()["source"] == "webhook"
    assert run.json()["trigger_id"] == trigger["id"]
    stored = await starts_of(js, ws.id)

    # The sender retries (signed again, later): the original run, nothing started.
    again = await client.post(
        f"/hooks/{trigger['id']}", content=body, headers=standard_signed(secret, body, "msg_a1")
    )
    assert again.status_code == 200, again.text
    assert again.json()["repeated"] is True
    assert again.json()["run_id"] == run_id
    assert again.json()["status"] == "succeeded"
    assert await starts_of(js, ws.id) == stored

    # The secret is never shown again.
    fetched = await client.get(f"/v1/triggers/{trigger['id']}", headers=ws.admin)
    assert secret not in fetched.text
    assert fetched.json()["new_secret"] is None
    assert fetched.json()["secrets"][0]["sealed"] == ""


async def test_refused_deliveries_are_problems_that_the_trigger_counts(
    client: HttpClient, js: JetStreamContext
) -> None:
    ws, trigger = await webhook_trigger(client, "standard_webhooks")
    secret, hook = trigger["new_secret"], f"/hooks/{trigger['id']}"
    body = b'{"type": "user.deleted"}'
    other = webhook_secrets.generate_secret()

    wrong = await client.post(hook, content=body, headers=standard_signed(other, body, "m1"))
    problem(wrong, 401, "invalid_signature")
    changed = await client.post(
        hook,
        content=body.replace(b"deleted", b"deletes"),
        headers=standard_signed(secret, body, "m2"),
    )
    problem(changed, 401, "invalid_signature")
    old = standard_signed(secret, body, "m3", datetime.now(UTC) - timedelta(minutes=6))
    problem(await client.post(hook, content=body, headers=old), 401, "stale_timestamp")
    unsigned = standard_signed(secret, body, "m4")
    del unsigned["webhook-signature"]
    problem(await client.post(hook, content=body, headers=unsigned), 400, "missing_header")
    assert await starts_of(js, ws.id) == 0

    # Counted off the request's path: read until the four are written.
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        refusals = await client.get(f"/v1/triggers/{trigger['id']}/refusals", headers=ws.admin)
        assert refusals.status_code == 200, refusals.text
        if refusals.json()["total"] >= 4 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.02)
    assert refusals.json()["total"] == 4
    assert refusals.json()["by_code"] == {
        "invalid_signature": 2,
        "stale_timestamp": 1,
        "missing_header": 1,
    }
    latest = refusals.json()["latest"]
    assert [r["code"] for r in latest] == [
        "missing_header",
        "stale_timestamp",
        "invalid_signature",
        "invalid_signature",
    ]
    assert latest[0]["delivery_id"] == "m4"
    assert "v1," not in refusals.text  # never a signature


async def test_github_deliveries_are_filtered_by_event_and_a_ping_starts_nothing(
    client: HttpClient, js: JetStreamContext
) -> None:
    secret = "a-github-secret-of-mine"
    ws, trigger = await webhook_trigger(
        client, "github", secret=secret, events=["push", "pull_request"]
    )
    assert trigger["new_secret"] == secret
    hook = f"/hooks/{trigger['id']}"
    ping = b'{"zen": "Design for failure.", "hook_id": 1}'
    answer = await client.post(
        hook, content=ping, headers=github_signed(secret, ping, "ping", "d1")
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"ignored": True, "reason": "ping", "event": "ping"}
    issue = b'{"action": "opened"}'
    answer = await client.post(
        hook, content=issue, headers=github_signed(secret, issue, "issues", "d2")
    )
    assert answer.json()["reason"] == "event_not_accepted"
    assert await starts_of(js, ws.id) == 0

    push = b'{"ref": "refs/heads/main"}'
    accepted = await client.post(
        hook, content=push, headers=github_signed(secret, push, "push", "d3")
    )
    # `accepted` is a webhook's default: 202 once the start is stored.
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "queued"
    assert await starts_of(js, ws.id) == 1
    tampered = push.replace(b"main", b"mair")
    refused = await client.post(
        hook, content=tampered, headers=github_signed(secret, push, "push", "d4")
    )
    problem(refused, 401, "invalid_signature")


async def test_during_a_rotation_both_secrets_verify_and_the_old_one_ends_when_told(
    client: HttpClient,
) -> None:
    ws, trigger = await webhook_trigger(client, "stripe")
    old, hook = trigger["new_secret"], f"/hooks/{trigger['id']}"
    rotated = await client.post(
        f"/v1/triggers/{trigger['id']}/secrets",
        json={"previous_valid_seconds": 3600},
        headers=ws.admin,
    )
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["new_secret"]
    assert new != old
    assert len(rotated.json()["secrets"]) == 2
    for number, secret in enumerate((old, new)):
        event = json.dumps({"id": f"evt_{number}", "type": "invoice.paid"}).encode()
        answer = await client.post(hook, content=event, headers=stripe_signed(secret, event))
        assert answer.status_code == 202, answer.text

    ended = await client.post(
        f"/v1/triggers/{trigger['id']}/secrets",
        json={"previous_valid_seconds": 0, "secret": "whsec_my_own_stripe_secret"},
        headers=ws.admin,
    )
    assert ended.json()["new_secret"] == "whsec_my_own_stripe_secret"
    event = b'{"id": "evt_9", "type": "invoice.paid"}'
    problem(
        await client.post(hook, content=event, headers=stripe_signed(new, event)),
        401,
        "invalid_signature",
    )
    answer = await client.post(
        hook, content=event, headers=stripe_signed("whsec_my_own_stripe_secret", event)
    )
    assert answer.status_code == 202, answer.text


async def test_an_unknown_trigger_is_404_and_a_paused_one_is_409_after_verification(
    client: HttpClient,
) -> None:
    problem(
        await client.post("/hooks/trg_000000000000000000000", content=b"{}"),
        404,
        "trigger_not_found",
    )
    ws, trigger = await webhook_trigger(client, "github", secret="paused-trigger-secret")
    await client.post(f"/v1/triggers/{trigger['id']}/pause", headers=ws.admin)
    body = b"{}"
    hook = f"/hooks/{trigger['id']}"
    problem(
        await client.post(
            hook, content=body, headers=github_signed("nope-nope-nope-nope", body, "push", "x")
        ),
        401,
        "invalid_signature",
    )
    paused = await client.post(
        hook, content=body, headers=github_signed("paused-trigger-secret", body, "push", "x")
    )
    problem(paused, 409, "trigger_paused")


async def test_an_api_trigger_in_accepted_mode_answers_202_without_waiting(
    client: HttpClient,
) -> None:
    ws = await new_workspace(client)
    flow_id = await new_flow(client, ws)
    created(
        await client.post(
            "/v1/triggers",
            json={"flow_id": flow_id, "type": "api", "response_mode": "accepted"},
            headers=ws.admin,
        )
    )
    answer = await client.post(f"/trigger/{flow_id}", json={"x": 1}, headers=ws.admin)
    assert answer.status_code == 202, answer.text
    # A caller may still ask to wait.
    waited = await client.post(
        f"/trigger/{flow_id}", json={"x": 2}, headers={**ws.admin, "Prefer": "wait=10"}
    )
    assert waited.status_code == 200, waited.text
    assert waited.json()["result"] == {"x": 2}
