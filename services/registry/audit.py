"""Audit entries of the registry's changes, pure: the records before and after as the API shows
them (never a key's secret or digest, never a sealed webhook secret), and where they go."""

import logging
from datetime import datetime
from typing import Any, Protocol

import msgspec

from contracts.audit import AuditAction, AuditEntry, ResourceType
from contracts.registry import ApiKey, ApiKeyView, Flow, Trigger, WebhookTrigger, Workspace
from shared.ids import new_id

log = logging.getLogger(__name__)

Audited = ApiKey | ApiKeyView | Flow | Trigger | Workspace
"""What an entry may show before and after a change (a stored key is shown as its view)."""


class AuditLog(Protocol):
    """Where the registry records its changes (a JetStream stream in production)."""

    async def record(self, entry: AuditEntry) -> None:
        """Store `entry` (once, however often it is retried)."""


class NoAuditLog:
    """An `AuditLog` that keeps nothing (for a registry built without one, in tests)."""

    async def record(self, entry: AuditEntry) -> None:
        return None


def shown(record: Audited | None) -> dict[str, Any] | None:
    """`record` as the API shows it, as plain JSON values."""
    if record is None:
        return None
    if isinstance(record, ApiKey):
        record = key_view(record)
    elif isinstance(record, WebhookTrigger):
        record = msgspec.structs.replace(
            record,
            secrets=tuple(msgspec.structs.replace(s, sealed="") for s in record.secrets),
            new_secret=None,
        )
    # Through JSON: the values the entry will hold once stored, so two views compare as such.
    value: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(record))
    return value


def key_view(key: ApiKey) -> ApiKeyView:
    """A stored key as listed over the API: no secret, no digest."""
    return ApiKeyView(
        id=key.id,
        name=key.name,
        scope=key.scope,
        prefix=key.prefix,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        expires_at=key.expires_at,
        flow_ids=key.flow_ids,
        previous_expires_at=key.previous_expires_at if key.previous_digest else None,
    )


def entry(
    *,
    at: datetime,
    workspace_id: str,
    actor: str,
    action: AuditAction,
    resource_id: str,
    before: Audited | None = None,
    after: Audited | None = None,
) -> AuditEntry | None:
    """The entry of one change; None when nothing the API shows changed (pausing a paused
    trigger)."""
    shown_before, shown_after = shown(before), shown(after)
    if before is not None and after is not None and shown_before == shown_after:
        return None
    resource_type: ResourceType = action.partition(".")[0]  # type: ignore[assignment]
    return AuditEntry(
        id=new_id("aud"),
        at=at,
        workspace_id=workspace_id,
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        before=shown_before,
        after=shown_after,
    )
