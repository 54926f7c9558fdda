"""Thin adapters: decode a registry request, call the core, send back a `Reply`."""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError

from contracts import registry as api
from contracts import subjects
from contracts.registry import Problem, Reply
from services.registry.core import Registry, RegistryError
from shared.codec import decoder, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    request_type: type[msgspec.Struct]
    handle: Callable[[Any], Awaitable[Any]]


def routes(registry: Registry) -> dict[str, Route]:
    """Which subject takes which request, answered by which operation."""
    return {
        subjects.WORKSPACE_CREATE: Route(api.CreateWorkspace, registry.create_workspace),
        subjects.KEY_CREATE: Route(api.CreateKey, registry.create_key),
        subjects.KEY_LIST: Route(api.ListKeys, registry.list_keys),
        subjects.KEY_REVOKE: Route(api.RevokeKey, registry.revoke_key),
        subjects.KEY_TOUCH: Route(api.KeyUsed, registry.key_used),
        subjects.KEY_ROTATE: Route(api.RotateKey, registry.rotate_key),
        subjects.KEY_UPDATE: Route(api.UpdateKey, registry.update_key),
        subjects.FLOW_CREATE: Route(api.CreateFlow, registry.create_flow),
        subjects.FLOW_LIST: Route(api.ListFlows, registry.list_flows),
        subjects.FLOW_GET: Route(api.GetFlow, registry.get_flow),
        subjects.TRIGGER_CREATE: Route(api.CreateTrigger, registry.create_trigger),
        subjects.TRIGGER_LIST: Route(api.ListTriggers, registry.list_triggers),
        subjects.TRIGGER_GET: Route(api.GetTrigger, registry.get_trigger),
        subjects.TRIGGER_UPDATE: Route(api.UpdateTrigger, registry.update_trigger),
        subjects.TRIGGER_SET_ENABLED: Route(api.SetTriggerEnabled, registry.set_trigger_enabled),
        subjects.TRIGGER_DELETE: Route(api.DeleteTrigger, registry.delete_trigger),
        subjects.TRIGGER_ROTATE_SECRET: Route(
            api.RotateWebhookSecret, registry.rotate_webhook_secret
        ),
        subjects.RUNNER_ANNOUNCE: Route(api.RunnerAnnouncement, registry.runner_announced),
        subjects.FUNCTION_LIST: Route(api.ListFunctions, registry.list_functions),
    }


async def answer(table: dict[str, Route], msg: Msg) -> None:
    """Handle one request; every outcome, including a bug, is answered with a `Reply`."""
    reply: Reply[Any]
    route = table.get(msg.subject)
    if route is None:
        reply = Reply(error=Problem(status=404, code="unknown_operation", message=msg.subject))
    else:
        try:
            request = decoder(route.request_type).decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            reply = Reply(error=Problem(status=422, code="invalid_request", message=str(error)))
        else:
            try:
                reply = Reply(ok=await route.handle(request))
            except RegistryError as error:
                reply = Reply(error=error.problem)
            except MaxPayloadError:
                # A record NATS cannot store in one message: the request's fault, not ours.
                reply = Reply(
                    error=Problem(
                        status=413,
                        code="body_too_large",
                        message="the record is larger than NATS stores in one message; "
                        "send less (see MAX_BODY_BYTES)",
                    )
                )
            except Exception:
                log.exception("registry failed on %s", msg.subject)
                reply = Reply(
                    error=Problem(
                        status=500,
                        code="registry_error",
                        message=f"the registry failed to handle {msg.subject}; see its log",
                    )
                )
    if msg.reply:
        await msg.respond(encode(reply))
    elif reply.error is not None:
        log.warning("dropped a fire-and-forget %s: %s", msg.subject, reply.error.message)
