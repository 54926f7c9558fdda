"""Signed webhook deliveries over HTTP: `POST /hooks/{trigger_id}` (verified by signature, no
API key), a webhook trigger's secret rotation and its refused deliveries. The verification
itself is `webhooks.py`; the replay guard is the Idempotency-Key store; refusals are counted in
their own bucket, written off the request's path."""

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.params import FromPath, JSONBody
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import registry as api
from contracts import subjects
from contracts.http import (
    DeliveryIgnored,
    DeliveryRepeated,
    RunSucceeded,
    WebhookRefusal,
    WebhookRefusals,
)
from contracts.registry import ApiKey
from contracts.runs import IdempotentStart
from services.ingress import docs, handlers, webhooks
from services.ingress.adapters import Ingress
from services.ingress.docs import REGISTRY_ANSWERS, problems
from services.ingress.problems import ApiError, body_too_large
from shared.codec import decode, encode
from shared.ids import new_id

log = logging.getLogger(__name__)

LATEST_REFUSALS = 20
"""Refused deliveries kept per trigger (the newest)."""
WRITE_ATTEMPTS = 10


class RefusalLog:
    """Counts a trigger's refused deliveries and keeps the latest, in the refusals bucket.

    Written in the background, one write at a time per trigger: refusals that arrive while
    a write is on its way join the next one, so a flood of bad signatures costs a trigger
    one KV write in flight, never one per request, and never delays an answer.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._pending: dict[str, list[WebhookRefusal]] = {}
        self._writing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def note(self, workspace_id: str, trigger_id: str, refusal: WebhookRefusal) -> None:
        key = subjects.record_key(workspace_id, trigger_id)
        self._pending.setdefault(key, []).append(refusal)
        if key in self._writing:
            return
        self._writing.add(key)
        task = asyncio.create_task(self._write(key, trigger_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settled(self) -> None:
        """Wait for the writes under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def read(self, workspace_id: str, trigger_id: str) -> WebhookRefusals:
        try:
            entry = await self._kv.get(subjects.record_key(workspace_id, trigger_id))
        except KeyNotFoundError:
            return WebhookRefusals(trigger_id=trigger_id)
        if not entry.value:
            return WebhookRefusals(trigger_id=trigger_id)
        return decode(entry.value, WebhookRefusals)

    async def _write(self, key: str, trigger_id: str) -> None:
        try:
            while batch := self._pending.pop(key, None):
                await self._add(key, trigger_id, batch)
        except Exception as error:  # counting must never hurt deliveries
            log.warning("could not record refusals of %s: %s", trigger_id, error)
        finally:
            self._writing.discard(key)

    async def _add(self, key: str, trigger_id: str, batch: list[WebhookRefusal]) -> None:
        for _ in range(WRITE_ATTEMPTS):
            revision: int | None = None
            current = WebhookRefusals(trigger_id=trigger_id)
            with contextlib.suppress(KeyNotFoundError):
                entry = await self._kv.get(key)
                if entry.value:
                    current = decode(entry.value, WebhookRefusals)
                revision = entry.revision
            by_code = dict(current.by_code)
            for refusal in batch:
                by_code[refusal.code] = by_code.get(refusal.code, 0) + 1
            merged = WebhookRefusals(
                trigger_id=trigger_id,
                total=current.total + len(batch),
                by_code=by_code,
                latest=[*reversed(batch), *current.latest][:LATEST_REFUSALS],
            )
            try:
                if revision is None:
                    await self._kv.create(key, encode(merged))
                else:
                    await self._kv.update(key, encode(merged), last=revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another ingress wrote meanwhile: merge into its record


@dataclass
class Hooks:
    """What the webhook routes use besides the ingress: the refusal log."""

    refusals: RefusalLog


def _hooks(request: Request[Any, Any, Any]) -> Hooks:
    hooks: Hooks = request.app.state.hooks
    return hooks


async def claim_delivery(
    ingress: Ingress, storage_key: str, flow_id: str, body: bytes, run_id: str
) -> tuple[str, bool]:
    """The run id of this delivery: `(run_id, False)` for a first delivery, `(the original
    run id, True)` for one seen before (within the 25 hours the store keeps it)."""
    record = IdempotentStart(
        run_id=run_id,
        flow_id=flow_id,
        body_digest=hashlib.sha256(body).hexdigest(),
        created_at=datetime.now(UTC),
    )
    stored = await ingress.claim_start(
        storage_key,
        record,
        "the delivery could not be recorded (%s); nothing was started, send it again",
    )
    return (run_id, False) if stored is None else (stored.run_id, True)


# --- the delivery endpoint ---------------------------------------------------------------------


@dataclass
class TakesSignedBody(Operation):
    """The body is read raw: its bytes are what the sender signed."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            description="The delivery exactly as the sender signed it (JSON, a form, or text); "
            "the flow receives it parsed, with the delivery's metadata.",
            required=False,
            content={"application/json": OpenAPIMediaType(schema=Schema())},
        )


_HOOK_PROBLEMS = {
    **problems(404, 409, 413, 503),
    400: ResponseSpec(
        data_container=docs.ProblemDetails,
        media_type=docs.PROBLEM_JSON,
        description="A header the scheme needs is missing (`missing_header`).",
        generate_examples=False,
    ),
    401: ResponseSpec(
        data_container=docs.ProblemDetails,
        media_type=docs.PROBLEM_JSON,
        description="The signature does not match the body with any current secret "
        "(`invalid_signature`), or its signed timestamp is more than the trigger's tolerance "
        "from now (`stale_timestamp`). Counted on the trigger (`GET /v1/triggers/{id}/refusals`).",
        generate_examples=False,
    ),
}


@post(
    "/hooks/{trigger_id:str}",
    tags=["trigger"],
    summary="Receive a signed webhook delivery for a webhook trigger (no API key: the signature "
    "authenticates it)",
    description="Verifies the delivery by the trigger's scheme (`standard_webhooks`, `github`, "
    "`stripe` or `hmac`) over the raw body, then starts the trigger's flow with the parsed body "
    "and the delivery's metadata as input. A delivery id seen before answers `200` with the "
    "original run id and starts nothing; an event the trigger does not accept (and a GitHub "
    "`ping`) answers `200` and starts nothing. `response_mode` `accepted` answers `202` once "
    "the start is stored; `result` waits for the run as `POST /trigger/{flow_id}` does.",
    status_code=202,
    security=[],
    operation_class=TakesSignedBody,
    responses={
        **_HOOK_PROBLEMS,
        **docs.run_answers("The start is stored (the run did not end within the wait)."),
        200: ResponseSpec(
            data_container=RunSucceeded | DeliveryRepeated | DeliveryIgnored,  # type: ignore[arg-type]
            description="A repeated delivery (`repeated`, with the original `run_id`), an "
            "ignored event (`ignored`), or, in `result` mode, the run's result.",
            generate_examples=False,
        ),
    },
)
async def receive_webhook(
    trigger_id: FromPath[str], request: Request[Any, Any, Any]
) -> Response[Any]:
    ingress: Ingress = request.app.state.ingress
    directory = ingress.directory
    endpoint = directory.hook(trigger_id)
    if endpoint is None:
        await directory.catch_up()
        endpoint = directory.hook(trigger_id)
    if endpoint is None:
        raise ApiError(404, "trigger_not_found", f"no webhook trigger {trigger_id!r}")
    body = await request.body()
    if len(body) > ingress.settings.max_body_bytes:
        raise body_too_large(ingress.settings.max_body_bytes)
    headers = request.headers
    now = datetime.now(UTC)
    trigger = endpoint.trigger
    try:
        webhooks.verify(endpoint, headers, body, now)
    except webhooks.Refused as refused:
        payload = None
        with contextlib.suppress(Exception):
            payload = webhooks.parsed_body(body, headers.get("content-type"))
        said = webhooks.describe(trigger, headers, payload)
        _hooks(request).refusals.note(
            trigger.workspace_id,
            trigger.id,
            WebhookRefusal(
                at=now,
                status=refused.status,
                code=refused.code,  # type: ignore[arg-type]
                detail=refused.detail,
                delivery_id=(said.delivery_id or "")[:200] or None,
                remote=request.client.host if request.client else None,
            ),
        )
        raise
    if not trigger.enabled:
        raise ApiError(
            409,
            "trigger_paused",
            f"webhook trigger {trigger.id} is paused; resume it with "
            f"POST /v1/triggers/{trigger.id}/resume (the sender may retry this delivery)",
        )
    payload = webhooks.parsed_body(body, headers.get("content-type"))
    delivery = webhooks.describe(trigger, headers, payload)
    reason = webhooks.ignored(trigger, delivery)
    if reason is not None:
        ignored = DeliveryIgnored(reason=reason, event=delivery.event)  # type: ignore[arg-type]
        return Response(content=encode(ignored), status_code=200, media_type="application/json")
    flow_input = webhooks.flow_input(trigger, delivery, payload, headers, now)
    run_id = new_id("run")
    if delivery.delivery_id:
        storage_key = webhooks.delivery_key(trigger.workspace_id, trigger.id, delivery.delivery_id)
        run_id, repeated = await claim_delivery(ingress, storage_key, trigger.flow_id, body, run_id)
        if repeated:
            return await _repeated(request, ingress, trigger, flow_input, run_id)
    wait = trigger.sync_wait_seconds if trigger.response_mode == "result" else 0.0
    return await handlers._start(
        request, ingress, trigger, "webhook", flow_input, wait=wait, run_id=run_id
    )


async def _repeated(
    request: Request[Any, Any, Any],
    ingress: Ingress,
    trigger: api.WebhookTrigger,
    flow_input: Any,
    run_id: str,
) -> Response[Any]:
    """`200` with the original run. When no runner has its record yet, its start is published
    again under the same run id: harmless (one record per run id), and it covers a first
    delivery that stored its id but not its start."""
    status_url = f"{ingress.settings.base_url}/v1/runs/{run_id}"
    try:
        known = await ingress.find_run(trigger.workspace_id, run_id)
    except Exception:
        known = None
    if known is None:
        await handlers._start(request, ingress, trigger, "webhook", flow_input, run_id=run_id)
    answer = DeliveryRepeated(
        run_id=run_id, status=known.status if known else None, status_url=status_url
    )
    return Response(
        content=encode(answer),
        status_code=200,
        media_type="application/json",
        headers={"Location": status_url},
    )


# --- managing a webhook trigger's secrets and refusals --------------------------------------


class WebhookTriggerController(handlers.AdminController):
    path = "/v1/triggers"
    tags = ["triggers"]

    @post(
        "/{trigger_id:str}/secrets",
        status_code=200,
        summary="Rotate a webhook trigger's signing secret: the new one (shown only here, in "
        "`new_secret`) verifies at once, the previous one until its grace ends",
        responses=problems(*REGISTRY_ANSWERS, 404, 409, 413, 422),
    )
    async def rotate_webhook_secret(
        self,
        trigger_id: FromPath[str],
        data: JSONBody[api.NewWebhookSecret],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.Trigger:
        request = api.RotateWebhookSecret(
            workspace_id=admin.workspace_id, trigger_id=trigger_id, rotation=data, actor=admin.id
        )
        trigger = await ingress.registry.call(subjects.TRIGGER_ROTATE_SECRET, request, api.Trigger)
        await ingress.directory.catch_up()  # once we answer, this ingress verifies with it
        return trigger

    @get(
        "/{trigger_id:str}/refusals",
        summary="A webhook trigger's refused deliveries: counts by code and the latest ones",
        responses=problems(*REGISTRY_ANSWERS, 404, 409),
    )
    async def list_webhook_refusals(
        self,
        trigger_id: FromPath[str],
        request: Request[Any, Any, Any],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> WebhookRefusals:
        get_trigger = api.GetTrigger(workspace_id=admin.workspace_id, trigger_id=trigger_id)
        trigger = await ingress.registry.call(subjects.TRIGGER_GET, get_trigger, api.Trigger)
        if not isinstance(trigger, api.WebhookTrigger):
            raise ApiError(
                409, "not_a_webhook", f"trigger {trigger.id} is a `{trigger.type}` trigger"
            )
        return await _hooks(request).refusals.read(trigger.workspace_id, trigger.id)


ROUTES = [receive_webhook, WebhookTriggerController]
