"""The audit log: who changed which key, flow, trigger or workspace, when, from what to what.

Published by: the registry alone, after each change it stores, on
`audit.v1.<workspace>.<resource type>.<verb>.<resource id>.<actor>` (stream `AUDIT`, kept
`AUDIT_RETENTION_DAYS` days), with `Nats-Msg-Id` = the entry's id, so a retried publish records
once. Consumed by: the ingress, which reads it for `GET /v1/audit`. Delivery: stored in
JetStream before the registry answers the change (or logged as lost if JetStream stayed down
for the whole retry budget: the change itself is never undone).

`before` and `after` are the records as the API shows them (`ApiKeyView`, `Flow`, `Trigger`
without sealed secrets, `Workspace`): never a key's secret or digest, never a webhook secret.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

AUDIT_RETENTION_DAYS = 90
"""How long the stream keeps an entry (its `max_age`)."""

ResourceType = Literal["workspace", "key", "flow", "trigger"]
AuditAction = Literal[
    "workspace.created",
    "key.created",
    "key.updated",
    "key.rotated",
    "key.revoked",
    "flow.created",
    "trigger.created",
    "trigger.updated",
    "trigger.paused",
    "trigger.resumed",
    "trigger.deleted",
    "trigger.secret_rotated",
]
"""`<resource type>.<verb>`: what was done."""

OPERATOR = "operator"
"""The actor of what the operator's token did (creating a workspace)."""
UNKNOWN_ACTOR = "unknown"
"""The actor of a request that did not say who made it (sent by an older ingress)."""
ACTOR_PATTERN = r"^(operator|unknown|key_[0-9a-z]{21})$"
Actor = Annotated[str, Meta(pattern=ACTOR_PATTERN)]
"""Who made a change: the id of the API key that called (`key_...`), or `operator`."""
AUDIT_CURSOR_PATTERN = r"^[0-9]{1,20}$"
"""A page's `next_cursor`: the stream position of its last entry."""


class AuditEntry(Struct, frozen=True, kw_only=True):
    """One change, as `GET /v1/audit` lists it."""

    id: str
    at: datetime
    """When the registry made the change."""
    workspace_id: str
    actor: str
    """The id of the API key that made it (`key_...`), or `operator`."""
    action: AuditAction
    resource_type: ResourceType
    resource_id: str
    before: dict[str, Any] | None = None
    """The record before the change as the API shows it (None for a creation)."""
    after: dict[str, Any] | None = None
    """The record after the change as the API shows it (None for a deletion or revocation)."""


class AuditPage(Struct, frozen=True, kw_only=True):
    """`GET /v1/audit`: entries newest first; pass `next_cursor` as `cursor` for the next page
    (None: this is the last page)."""

    items: list[AuditEntry]
    next_cursor: str | None = None
