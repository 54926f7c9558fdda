"""The registry's rules: what may be created or changed, and what each record looks like.

Pure logic over a small `RegistryStore`; the NATS KV adapter lives in `adapters.py`.
"""

import builtins
import contextlib
import re
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import UNSET

from contracts import subjects
from contracts.audit import AuditAction
from contracts.registry import (
    CURSOR_PATTERN,
    DEFAULT_SYNC_WAIT_SECONDS,
    MAX_NAME_LENGTH,
    AdminKeys,
    AnnouncedFunction,
    ApiKey,
    ApiKeyView,
    ApiTrigger,
    CreateFlow,
    CreateKey,
    CreateTrigger,
    CreateWorkspace,
    DeleteTrigger,
    Flow,
    FlowPage,
    FlowSettings,
    GetFlow,
    GetTrigger,
    Held,
    IssuedKey,
    KeyChanges,
    KeyPage,
    KeyScope,
    KeyUsed,
    ListFlows,
    ListFunctions,
    ListKeys,
    ListTriggers,
    ManualTrigger,
    NewApiTrigger,
    NewManualTrigger,
    NewScheduleTrigger,
    NewWebhookTrigger,
    Problem,
    PythonFlowSettings,
    QuotaExceeded,
    QuotaName,
    QuotaUse,
    RevokeKey,
    RotateKey,
    RotateWebhookSecret,
    RunnerAnnouncement,
    Schedule,
    ScheduleBody,
    ScheduleOptions,
    SchedulePatch,
    ScheduleTrigger,
    SetTriggerEnabled,
    Trigger,
    TriggerBase,
    TriggerChanges,
    TriggerPage,
    UpdateKey,
    UpdateTrigger,
    WebhookTrigger,
    Workspace,
    WorkspaceCreated,
)
from services.registry import audit, quotas, webhooks
from services.registry.audit import Audited, AuditLog, NoAuditLog
from services.registry.quotas import QuotaLimits, QuotaRefused
from services.registry.webhooks import WebhookRuleError
from shared import api_keys, schedules
from shared.ids import is_valid_id, new_id
from shared.webhook_secrets import SecretBox

R = TypeVar("R", bound=msgspec.Struct)
S = TypeVar("S")

BUILTIN_FUNCTIONS = frozenset({"echo", "sleep", "add", "fail"})
"""Flow functions every runner serves (`services.runner.builtin_flows`): accepted even before
any runner has announced them, so flows can be set up before the runners start."""
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,199}$")


class RegistryError(Exception):
    """A request the registry refuses; carries the `Problem` to send back."""

    def __init__(
        self, status: int, code: str, message: str, quota: QuotaExceeded | None = None
    ) -> None:
        super().__init__(message)
        self.problem = Problem(status=status, code=code, message=message, quota=quota)


QUOTA_STATUS = 422
"""A quota refusal: the request is well-formed but cannot be done as the workspace stands, and
sending it again changes nothing until something is deleted or the limit is raised (`429`
says "too many requests, retry later", which clients retry on their own: it would loop)."""


def quota_refusal(refused: QuotaRefused) -> RegistryError:
    return RegistryError(QUOTA_STATUS, "quota_exceeded", str(refused), quota=refused.refused)


RECONCILE_EVERY = timedelta(seconds=60)
"""How often a replica may recount a workspace's records of a quota it refused (a recount
reads them all, so a client hammering at its limit does not get one per request)."""
WRITE_GRACE = timedelta(seconds=60)
"""A holding whose record is missing is only dropped when its id is older than this: a
record is written within a registry request (seconds), so a younger one may be on its way."""
CHANGE_ATTEMPTS = 10


class _ScheduleMoved(Exception):
    """A concurrent edit made a trigger fire more often than the share taken for this one."""


class AlreadyExists(Exception):
    """A `create` found the key taken."""


class RegistryStore(Protocol):
    """Where registry records live, bucket by bucket (JetStream KV in production)."""

    async def create(self, bucket: str, key: str, value: msgspec.Struct) -> None:
        """Store `value` under a new `key`; raise `AlreadyExists` if it is taken."""

    async def get(self, bucket: str, key: str, type_: type[R]) -> R | None: ...

    async def list(self, bucket: str, prefix: str, type_: type[R]) -> list[R]:
        """Every record whose key starts with `prefix.`."""

    async def update(
        self, bucket: str, key: str, type_: type[R], change: Callable[[R], R]
    ) -> R | None:
        """Apply `change` atomically (compare-and-swap); None when the key does not exist."""

    async def delete(self, bucket: str, key: str) -> None: ...

    async def put(self, bucket: str, key: str, value: msgspec.Struct) -> None:
        """Store `value` under `key`, whether or not it exists."""

    async def list_all(self, bucket: str) -> builtins.list[AnnouncedFunction]:
        """Every announced function (the only bucket listed whole)."""


class Listed(Protocol):
    """What a record needs to be paged: its creation time and its id."""

    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


L = TypeVar("L", bound=Listed)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CURSOR = re.compile(CURSOR_PATTERN)


def page_of(
    records: builtins.list[L], cursor: str | None, limit: int
) -> tuple[builtins.list[L], str | None]:
    """One page of `records`, oldest first: the first `limit` after `cursor`, and the cursor of
    the next page (None when this one is the last).

    The cursor is a position (creation time to the microsecond, then id), not an offset:
    records created or deleted meanwhile never shift a page, and a cursor whose record was
    deleted still works.
    """
    after = _position_from(cursor) if cursor is not None else None
    ordered = sorted(records, key=_position)
    if after is not None:
        ordered = [record for record in ordered if _position(record) > after]
    page = ordered[:limit]
    if len(ordered) <= limit:
        return page, None
    micros, record_id = _position(page[-1])
    return page, f"{micros}.{record_id}"


def _position(record: Listed) -> tuple[int, str]:
    return (record.created_at - _EPOCH) // _MICROSECOND, record.id


def _position_from(cursor: str) -> tuple[int, str]:
    micros, _, record_id = cursor.partition(".")
    if _CURSOR.fullmatch(cursor) is None:
        raise RegistryError(
            400,
            "invalid_cursor",
            f"cursor {cursor!r} is not one this API gave: pass the `next_cursor` of the page "
            "before, or no cursor for the first page",
        )
    return int(micros), record_id


def _now() -> datetime:
    return datetime.now(UTC)


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069]")
"""Control characters (NUL, ANSI escapes, newlines) and the marks that reorder text (bidi
overrides and isolates): a name shown in a console, a log or a UI must read as it is."""


def _name(value: str, what: str) -> str:
    name = value.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(422, "invalid_name", f"{what} name is longer than {MAX_NAME_LENGTH}")
    if _UNPRINTABLE.search(name):
        raise RegistryError(
            422,
            "invalid_name",
            f"a {what} name is printable text: no control characters, escapes or "
            "direction overrides",
        )
    return name


def _both_valid(workspace_id: str, record_id: str) -> bool:
    """Whether both ids are ours: anything else (wildcards, dots) must never reach a KV key."""
    return is_valid_id(workspace_id) and is_valid_id(record_id)


_view = audit.key_view


class _Seen(Generic[S]):
    """A change that remembers the record it was last applied to: the one a compare-and-swap
    stored it over (a conflict applies it again to the record as it is then)."""

    def __init__(self, change: Callable[[S], S]) -> None:
        self._change = change
        self.record: S | None = None

    def __call__(self, record: S) -> S:
        self.record = record
        return self._change(record)


def _check_url(url: str) -> None:
    """Refuse a URL no call could ever use (`http:///127.0.0.1/` names no host); whether its
    address may be called is the runner's check, at every hop of every call."""
    why = ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError as error:
        why = f": {error}"
    else:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            why = ""
        elif _UNPRINTABLE.search(url) or any(c.isspace() for c in url):
            why = ": it has spaces or control characters"
        else:
            return
    raise RegistryError(
        422,
        "invalid_url",
        f"`settings.url` {url[:200]!r} must be an absolute http(s) URL with a host, such as "
        f"https://example.com/hook{why}",
    )


SCHEDULE_OPTIONS = frozenset(ScheduleOptions.__struct_fields__)
"""Fields every schedule kind has; a change of `kind` keeps them (see `SchedulePatch`)."""
_SCHEDULE_KINDS: dict[str, type[ScheduleBody]] = {
    kind.__struct_config__.tag: kind  # type: ignore[misc]
    for kind in typing.get_args(ScheduleBody)
}
SCHEDULE_EXAMPLE = '{"kind": "cron", "cron": "*/5 * * * *", "timezone": "UTC"}'


def _as_record(value: msgspec.Struct, type_: Any) -> Any:
    """A body's value as the record type it is stored as (the same JSON, the lenient class)."""
    return msgspec.json.decode(msgspec.json.encode(value), type=type_)


def _usable_schedule(schedule: Schedule, now: datetime | None) -> Schedule:
    """`schedule` as a record; refused when it cannot be used (with `now`: also when it can
    never fire again)."""
    problem = schedules.validate(schedule, now)
    if problem is not None:
        raise RegistryError(422, "invalid_schedule", problem)
    record: Schedule = _as_record(schedule, Schedule)
    return record


def merge_schedule(current: Schedule | None, patch: SchedulePatch) -> Schedule:
    """`patch` merged into `current` (RFC 7396), decoded and checked as a whole.

    The fields given replace the stored ones; `null` removes one (back to its default); a new
    `kind` drops the old kind's own fields and keeps the options common to every kind.
    """
    merged: dict[str, Any] = msgspec.to_builtins(current) if current is not None else {}
    changes: dict[str, Any] = msgspec.to_builtins(patch)
    if "kind" in changes and changes["kind"] != merged.get("kind"):
        merged = {name: value for name, value in merged.items() if name in SCHEDULE_OPTIONS}
    for name, value in changes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    kind = _SCHEDULE_KINDS.get(merged.get("kind", ""))
    if kind is None:
        raise RegistryError(
            422,
            "invalid_schedule",
            "`schedule.kind` is required for a new schedule (one of "
            f"{', '.join(_SCHEDULE_KINDS)}), with that kind's fields, such as {SCHEDULE_EXAMPLE}",
        )
    fields = {"kind", *kind.__struct_fields__}
    unknown = sorted(set(merged) - fields)
    if unknown:
        raise RegistryError(
            422,
            "invalid_schedule",
            f"{_listed(unknown, 'schedule.')} not a field of a `{merged['kind']}` schedule "
            f"(its fields: {', '.join(sorted(fields))}); to change the kind, give `kind` "
            "with the new kind's fields",
        )
    try:
        schedule: Schedule = msgspec.json.decode(msgspec.json.encode(merged), type=kind)
    except msgspec.ValidationError as error:
        where = str(error).replace("`$.", "`schedule.").replace("- at `$`", "")
        raise RegistryError(
            422,
            "invalid_schedule",
            f"the `{merged['kind']}` schedule this change makes is not valid: {where.strip()} "
            f"(the schedule would be {msgspec.json.encode(merged).decode()})",
        ) from error
    return schedule


def _listed(names: list[str], prefix: str = "") -> str:
    """`` `a` is`` or `` `a`, `b` are`` (for messages)."""
    quoted = ", ".join(f"`{prefix}{name}`" for name in names)
    return f"{quoted} {'is' if len(names) == 1 else 'are'}"


def _changed_trigger(trigger: Trigger, changes: TriggerChanges, now: datetime) -> Trigger:
    """`trigger` with `changes` applied, of the kind it is or becomes; refuses a change that
    does not fit that kind."""
    kind = trigger.type if changes.type is UNSET else changes.type
    if (kind == "webhook") != isinstance(trigger, WebhookTrigger):
        raise RegistryError(
            422,
            "webhook_type_fixed",
            "a trigger cannot become or stop being a `webhook` one (its secrets belong to it): "
            "create a new trigger instead",
        )
    common: dict[str, Any] = {
        name: getattr(trigger, name) for name in TriggerBase.__struct_fields__
    }
    if changes.flow_id is not UNSET:
        common["flow_id"] = changes.flow_id
    if changes.name is not UNSET:
        common["name"] = _name(changes.name, "trigger")
    if changes.overlap is not UNSET:
        common["overlap"] = changes.overlap
    common["version"] = trigger.version + 1
    common["updated_at"] = now
    if changes.sync_wait_seconds is not UNSET and kind not in ("api", "webhook"):
        raise RegistryError(
            422,
            "unexpected_sync_wait",
            "`sync_wait_seconds` is a setting of API and webhook triggers; this trigger is a "
            f"`{kind}` one",
        )
    if changes.response_mode is not UNSET and kind not in ("api", "webhook"):
        raise RegistryError(
            422,
            "unexpected_response_mode",
            "`response_mode` is a setting of API and webhook triggers; this trigger is a "
            f"`{kind}` one",
        )
    webhook_only = [
        name
        for name in ("events", "include_headers", "tolerance_seconds")
        if getattr(changes, name) is not UNSET
    ]
    if webhook_only and kind != "webhook":
        raise RegistryError(
            422,
            "unexpected_webhook_setting",
            f"{_listed(webhook_only)} for webhook triggers; this trigger is a `{kind}` one",
        )
    if isinstance(trigger, WebhookTrigger):
        if isinstance(changes.schedule, SchedulePatch):
            raise RegistryError(
                422, "unexpected_schedule", "a `webhook` trigger takes no `schedule`"
            )
        webhook: dict[str, Any] = {
            name: getattr(changes, name)
            for name in ("tolerance_seconds", "response_mode", "sync_wait_seconds")
            if getattr(changes, name) is not UNSET
        }
        try:
            if changes.events is not UNSET:
                webhook["events"] = webhooks.checked_events(changes.events)
            if changes.include_headers is not UNSET:
                webhook["include_headers"] = webhooks.checked_headers(changes.include_headers)
        except WebhookRuleError as error:
            raise RegistryError(error.status, error.code, error.message) from None
        return msgspec.structs.replace(trigger, **common, **webhook)
    if kind == "schedule":
        stored = trigger.schedule if isinstance(trigger, ScheduleTrigger) else None
        if isinstance(changes.schedule, SchedulePatch):
            # A schedule changed now must still fire; one left alone may have ended meanwhile.
            schedule = _usable_schedule(merge_schedule(stored, changes.schedule), now)
        elif stored is not None and changes.schedule is UNSET:
            schedule = stored
        else:
            raise RegistryError(
                422,
                "schedule_required",
                "a schedule trigger needs a `schedule`, such as " + SCHEDULE_EXAMPLE,
            )
        return ScheduleTrigger(**common, schedule=schedule)
    if isinstance(changes.schedule, SchedulePatch):
        raise RegistryError(
            422,
            "unexpected_schedule",
            f"a `{kind}` trigger takes no `schedule` (change `type` to `schedule` to give it one)",
        )
    if kind == "api":
        if changes.sync_wait_seconds is not UNSET:
            sync_wait = changes.sync_wait_seconds
        elif isinstance(trigger, ApiTrigger):
            sync_wait = trigger.sync_wait_seconds
        else:
            sync_wait = DEFAULT_SYNC_WAIT_SECONDS
        if changes.response_mode is not UNSET:
            mode = changes.response_mode
        else:
            mode = trigger.response_mode if isinstance(trigger, ApiTrigger) else "result"
        return ApiTrigger(**common, sync_wait_seconds=sync_wait, response_mode=mode)
    return ManualTrigger(**common)


class Registry:
    """Every registry operation, one method per request type."""

    def __init__(
        self,
        store: RegistryStore,
        clock: Callable[[], datetime] = _now,
        limits: QuotaLimits | None = None,
        secret_box: SecretBox | None = None,
        audit_log: AuditLog | None = None,
    ) -> None:
        self._store = store
        self._audit_log: AuditLog = audit_log if audit_log is not None else NoAuditLog()
        self._clock = clock
        self._limits = limits if limits is not None else QuotaLimits()
        self._box = secret_box
        """Seals webhook secrets (None: `WEBHOOK_SECRET_KEY` unset, no webhook triggers)."""
        self._reconciled: dict[tuple[str, QuotaName], datetime] = {}

    # --- workspaces and keys ---------------------------------------------------------------

    async def create_workspace(self, request: CreateWorkspace) -> WorkspaceCreated:
        name = _name(request.workspace.name, "workspace")
        if not name:
            raise RegistryError(422, "invalid_name", "a workspace needs a non-empty `name`")
        workspace = Workspace(id=new_id("ws"), name=name, created_at=self._clock())
        await self._store.create(subjects.WORKSPACES_BUCKET, workspace.id, workspace)
        admin_key = await self._issue_key(workspace.id, "admin", "admin")
        await self._store.create(
            subjects.WORKSPACES_BUCKET,
            subjects.admin_keys_key(workspace.id),
            AdminKeys(workspace_id=workspace.id, key_ids=(admin_key.key.id,)),
        )
        await self._audit(
            workspace.id, request.actor, "workspace.created", workspace.id, None, workspace
        )
        await self._audit(
            workspace.id, request.actor, "key.created", admin_key.key.id, None, admin_key.key
        )
        return WorkspaceCreated(workspace=workspace, admin_key=admin_key)

    async def create_key(self, request: CreateKey) -> IssuedKey:
        await self._workspace(request.workspace_id)
        name = _name(request.key.name, "key") or f"{request.key.scope} key"
        limits = await self._key_limits(
            request.workspace_id, request.key.scope, request.key.expires_at, request.key.flow_ids
        )
        key_id = new_id("key")
        await self._take(request.workspace_id, quotas.API_KEYS, key_id, 1)
        try:
            issued = await self._issue_key(
                request.workspace_id, name, request.key.scope, key_id, **limits
            )
        except Exception:
            await self._give_back(request.workspace_id, quotas.API_KEYS, key_id)
            raise
        if issued.key.scope == "admin":
            # After the key exists: an id in the record must always be a live admin key.
            def with_key(record: AdminKeys) -> AdminKeys:
                if issued.key.id in record.key_ids:
                    return record
                return msgspec.structs.replace(record, key_ids=(*record.key_ids, issued.key.id))

            await self._admin_keys(request.workspace_id)
            await self._store.update(
                subjects.WORKSPACES_BUCKET,
                subjects.admin_keys_key(request.workspace_id),
                AdminKeys,
                with_key,
            )
        await self._audit(
            request.workspace_id, request.actor, "key.created", issued.key.id, None, issued.key
        )
        return issued

    async def _admin_keys(self, workspace_id: str) -> None:
        """Make sure the workspace's `AdminKeys` record exists: a workspace created before it
        gets one built from its admin keys (concurrent builders agree through `create`)."""
        record_key = subjects.admin_keys_key(workspace_id)
        if await self._store.get(subjects.WORKSPACES_BUCKET, record_key, AdminKeys) is not None:
            return
        keys = await self._store.list(subjects.API_KEYS_BUCKET, workspace_id, ApiKey)
        ids = tuple(sorted(key.id for key in keys if key.scope == "admin"))
        with contextlib.suppress(AlreadyExists):
            await self._store.create(
                subjects.WORKSPACES_BUCKET,
                record_key,
                AdminKeys(workspace_id=workspace_id, key_ids=ids),
            )

    async def _key_limits(
        self,
        workspace_id: str,
        scope: KeyScope,
        expires_at: datetime | None,
        flow_ids: builtins.list[str] | None,
    ) -> dict[str, Any]:
        """A key's expiry and flows, checked: an expiry in the future, flows of the workspace,
        and flows only for trigger keys (an admin key manages every flow anyway)."""
        if expires_at is not None:
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=UTC)
            if expires_at <= self._clock():
                raise RegistryError(
                    422, "invalid_expiry", "`expires_at` must be in the future (RFC 3339)"
                )
        if flow_ids is not None:
            if scope != "trigger":
                raise RegistryError(
                    422, "unexpected_flow_ids", "only trigger keys are limited to flows"
                )
            for flow_id in flow_ids:
                try:
                    await self._flow(workspace_id, flow_id)
                except RegistryError as error:
                    if error.problem.code != "flow_not_found":
                        raise
                    # A value of the body, not the resource the URL names: 422, not 404.
                    raise RegistryError(
                        422,
                        "unknown_flow",
                        f"`flow_ids` names {flow_id!r}, which is not a flow of this workspace: "
                        "list the flows with GET /v1/flows",
                    ) from error
        return {
            "expires_at": expires_at,
            "flow_ids": tuple(dict.fromkeys(flow_ids)) if flow_ids is not None else None,
        }

    async def _issue_key(
        self,
        workspace_id: str,
        name: str,
        scope: KeyScope,
        key_id: str | None = None,
        expires_at: datetime | None = None,
        flow_ids: tuple[str, ...] | None = None,
    ) -> IssuedKey:
        secret = api_keys.generate()
        key = ApiKey(
            id=key_id or new_id("key"),
            workspace_id=workspace_id,
            name=name,
            scope=scope,
            prefix=api_keys.shown_prefix(secret),
            digest=api_keys.digest(secret),
            created_at=self._clock(),
            expires_at=expires_at,
            flow_ids=flow_ids,
        )
        await self._store.create(
            subjects.API_KEYS_BUCKET, subjects.record_key(workspace_id, key.id), key
        )
        return IssuedKey(key=_view(key), secret=secret)

    async def list_keys(self, request: ListKeys) -> KeyPage:
        if not is_valid_id(request.workspace_id):
            return KeyPage(items=[])
        keys = await self._store.list(subjects.API_KEYS_BUCKET, request.workspace_id, ApiKey)
        page, next_cursor = page_of(keys, request.cursor, request.limit)
        return KeyPage(items=[_view(key) for key in page], next_cursor=next_cursor)

    async def revoke_key(self, request: RevokeKey) -> ApiKeyView:
        storage_key = subjects.record_key(request.workspace_id, request.key_id)
        key = None
        if _both_valid(request.workspace_id, request.key_id):
            key = await self._store.get(subjects.API_KEYS_BUCKET, storage_key, ApiKey)
        if key is None:
            raise RegistryError(404, "key_not_found", f"no API key {request.key_id!r}")
        if key.scope == "admin":
            revoked_id = key.id

            # Count and remove in one compare-and-swap: counting the keys, then deleting, let two
            # admin keys revoking each other at the same moment both find the other one left.
            def without_key(record: AdminKeys) -> AdminKeys:
                if revoked_id not in record.key_ids:
                    return record  # never counted (its creation was cut short): others remain
                if len(record.key_ids) == 1:
                    raise RegistryError(
                        409,
                        "last_admin_key",
                        "this is the workspace's last admin key: create another admin key first",
                    )
                kept = tuple(i for i in record.key_ids if i != revoked_id)
                return msgspec.structs.replace(record, key_ids=kept)

            await self._admin_keys(request.workspace_id)
            await self._store.update(
                subjects.WORKSPACES_BUCKET,
                subjects.admin_keys_key(request.workspace_id),
                AdminKeys,
                without_key,
            )
        await self._store.delete(subjects.API_KEYS_BUCKET, storage_key)
        await self._give_back(request.workspace_id, quotas.API_KEYS, key.id)
        await self._audit(request.workspace_id, request.actor, "key.revoked", key.id, key, None)
        return _view(key)

    async def rotate_key(self, request: RotateKey) -> IssuedKey:
        """A new secret for the same key; the old one works until the grace ends."""
        secret = api_keys.generate()

        def rotate(key: ApiKey) -> ApiKey:
            now = self._clock()
            grace = request.rotation.grace_seconds
            return msgspec.structs.replace(
                key,
                prefix=api_keys.shown_prefix(secret),
                digest=api_keys.digest(secret),
                previous_digest=key.digest if grace > 0 else None,
                previous_expires_at=now + timedelta(seconds=grace) if grace > 0 else None,
            )

        seen = _Seen(rotate)
        key = await self._change_key(request.workspace_id, request.key_id, seen)
        await self._audit(
            request.workspace_id, request.actor, "key.rotated", key.id, seen.record, key
        )
        return IssuedKey(key=_view(key), secret=secret)

    async def update_key(self, request: UpdateKey) -> ApiKeyView:
        changes: KeyChanges = request.changes
        current = await self._change_key(request.workspace_id, request.key_id, lambda k: k)
        limits = await self._key_limits(
            request.workspace_id,
            current.scope,
            None if changes.expires_at is UNSET else changes.expires_at,
            None if changes.flow_ids is UNSET else changes.flow_ids,
        )
        given = {
            name: limits[name]
            for name in ("expires_at", "flow_ids")
            if getattr(changes, name) is not UNSET
        }

        def change(key: ApiKey) -> ApiKey:
            return msgspec.structs.replace(key, **given)

        seen = _Seen(change)
        key = await self._change_key(request.workspace_id, request.key_id, seen)
        await self._audit(
            request.workspace_id, request.actor, "key.updated", key.id, seen.record, key
        )
        return _view(key)

    async def _change_key(
        self, workspace_id: str, key_id: str, change: Callable[[ApiKey], ApiKey]
    ) -> ApiKey:
        changed = None
        if _both_valid(workspace_id, key_id):
            storage_key = subjects.record_key(workspace_id, key_id)
            changed = await self._store.update(
                subjects.API_KEYS_BUCKET, storage_key, ApiKey, change
            )
        if changed is None:
            raise RegistryError(404, "key_not_found", f"no API key {key_id!r}")
        return changed

    async def key_used(self, event: KeyUsed) -> None:
        def touch(key: ApiKey) -> ApiKey:
            if key.last_used_at is not None and key.last_used_at >= event.used_at:
                return key
            return msgspec.structs.replace(key, last_used_at=event.used_at)

        if not _both_valid(event.workspace_id, event.key_id):
            return
        storage_key = subjects.record_key(event.workspace_id, event.key_id)
        await self._store.update(subjects.API_KEYS_BUCKET, storage_key, ApiKey, touch)

    # --- flows -----------------------------------------------------------------------------

    async def create_flow(self, request: CreateFlow) -> Flow:
        await self._workspace(request.workspace_id)
        name = _name(request.flow.name, "flow")
        if not name:
            raise RegistryError(422, "invalid_name", "a flow needs a non-empty `name`")
        settings: FlowSettings = _as_record(request.flow.settings, FlowSettings)
        if isinstance(settings, PythonFlowSettings):
            await self._check_function(settings.function)
        else:
            _check_url(settings.url)
        new = request.flow
        flow = Flow(
            id=new_id("flw"),
            workspace_id=request.workspace_id,
            name=name,
            settings=settings,
            created_at=self._clock(),
            timeout_seconds=new.timeout_seconds,
            retries=new.retries,
            retry_backoff_seconds=new.retry_backoff_seconds,
            concurrency=new.concurrency,
        )
        await self._take(flow.workspace_id, quotas.FLOWS, flow.id, 1)
        try:
            await self._store.create(
                subjects.FLOWS_BUCKET, subjects.record_key(flow.workspace_id, flow.id), flow
            )
        except Exception:
            await self._give_back(flow.workspace_id, quotas.FLOWS, flow.id)
            raise
        await self._audit(flow.workspace_id, request.actor, "flow.created", flow.id, None, flow)
        return flow

    async def list_flows(self, request: ListFlows) -> FlowPage:
        if not is_valid_id(request.workspace_id):
            return FlowPage(items=[])
        flows = await self._store.list(subjects.FLOWS_BUCKET, request.workspace_id, Flow)
        page, next_cursor = page_of(flows, request.cursor, request.limit)
        return FlowPage(items=page, next_cursor=next_cursor)

    async def get_flow(self, request: GetFlow) -> Flow:
        return await self._flow(request.workspace_id, request.flow_id)

    async def _check_function(self, function: str) -> None:
        if not _FUNCTION_NAME.match(function):
            raise RegistryError(
                422,
                "invalid_function",
                f"`settings.function` {function!r} is not a registered flow name "
                "(letters, digits, `_`, `.`, `-`; such as `echo`)",
            )
        if function in BUILTIN_FUNCTIONS:
            return
        announced = await self._store.get(
            subjects.FLOW_FUNCTIONS_BUCKET, function, AnnouncedFunction
        )
        if announced is None:
            known = sorted(
                BUILTIN_FUNCTIONS
                | {f.name for f in await self._store.list_all(subjects.FLOW_FUNCTIONS_BUCKET)}
            )
            raise RegistryError(
                422,
                "unknown_function",
                f"no runner serves the flow function {function!r}: start a runner with the "
                f"module that defines it in RUNNER_FLOWS (served now: {', '.join(known)})",
            )

    async def runner_announced(self, announcement: RunnerAnnouncement) -> None:
        """Record the functions a runner serves (each entry expires unless announced again)."""
        for function in announcement.functions:
            if _FUNCTION_NAME.match(function):
                record = AnnouncedFunction(
                    name=function,
                    runner_id=announcement.runner_id,
                    announced_at=announcement.announced_at,
                )
                await self._store.put(subjects.FLOW_FUNCTIONS_BUCKET, function, record)

    async def list_functions(self, request: ListFunctions) -> list[AnnouncedFunction]:
        functions = await self._store.list_all(subjects.FLOW_FUNCTIONS_BUCKET)
        return sorted(functions, key=lambda f: f.name)

    # --- triggers --------------------------------------------------------------------------

    async def create_trigger(self, request: CreateTrigger) -> Trigger:
        new = request.trigger
        await self._flow(request.workspace_id, new.flow_id)
        now = self._clock()
        common: dict[str, Any] = {
            "id": new_id("trg"),
            "workspace_id": request.workspace_id,
            "flow_id": new.flow_id,
            "name": _name(new.name, "trigger"),
            "enabled": new.enabled,
            "overlap": new.overlap,
            "created_at": now,
            "updated_at": now,
            "paused_at": None if new.enabled else now,
        }
        trigger: Trigger
        secret: str | None = None
        match new:
            case NewApiTrigger():
                trigger = ApiTrigger(
                    **common,
                    sync_wait_seconds=new.sync_wait_seconds,
                    response_mode=new.response_mode,
                )
            case NewScheduleTrigger():
                trigger = ScheduleTrigger(**common, schedule=_usable_schedule(new.schedule, now))
            case NewManualTrigger():
                trigger = ManualTrigger(**common)
            case NewWebhookTrigger():
                try:
                    trigger, secret = webhooks.new_webhook_trigger(common, new, self._box, now)
                except WebhookRuleError as error:
                    raise RegistryError(error.status, error.code, error.message) from None
        ws = trigger.workspace_id
        await self._take(ws, quotas.TRIGGERS, trigger.id, 1)
        try:
            load = quotas.schedule_load(trigger)
            if load:
                await self._take(ws, quotas.SCHEDULE_FIRES, trigger.id, load, trigger.version)
            await self._store.create(
                subjects.TRIGGERS_BUCKET, subjects.record_key(ws, trigger.id), trigger
            )
        except Exception:
            await self._give_back(ws, quotas.TRIGGERS, trigger.id)
            await self._give_back(ws, quotas.SCHEDULE_FIRES, trigger.id)
            raise
        await self._audit(ws, request.actor, "trigger.created", trigger.id, None, trigger)
        if isinstance(trigger, WebhookTrigger) and secret is not None:
            return webhooks.issued(trigger, secret)
        return trigger

    async def list_triggers(self, request: ListTriggers) -> TriggerPage:
        if not is_valid_id(request.workspace_id):
            return TriggerPage(items=[])
        triggers = await self._store.list(subjects.TRIGGERS_BUCKET, request.workspace_id, Trigger)
        if request.flow_id is not None:
            triggers = [t for t in triggers if t.flow_id == request.flow_id]
        page, next_cursor = page_of(triggers, request.cursor, request.limit)
        return TriggerPage(items=[webhooks.public(t) for t in page], next_cursor=next_cursor)

    async def get_trigger(self, request: GetTrigger) -> Trigger:
        return webhooks.public(await self._trigger(request.workspace_id, request.trigger_id))

    async def update_trigger(self, request: UpdateTrigger) -> Trigger:
        changes = request.changes
        current = await self._trigger(request.workspace_id, request.trigger_id)
        if changes.flow_id is not UNSET and changes.flow_id != current.flow_id:
            await self._flow(request.workspace_id, changes.flow_id)

        def apply(trigger: Trigger) -> Trigger:
            # Merged into the record as it is now: a concurrent edit is never undone.
            return _changed_trigger(trigger, changes, self._clock())

        seen = _Seen(apply)
        updated = await self._change_trigger(request.workspace_id, request.trigger_id, seen)
        await self._audit_trigger(request.actor, "trigger.updated", seen.record, updated)
        return webhooks.public(updated)

    async def rotate_webhook_secret(self, request: RotateWebhookSecret) -> Trigger:
        """A new current secret for a webhook trigger (shown once), the previous one kept for
        the grace the request gives."""
        issued: list[str] = []

        def apply(trigger: Trigger) -> Trigger:
            try:
                changed, secret = webhooks.rotated(
                    trigger, request.rotation, self._box, self._clock()
                )
            except WebhookRuleError as error:
                raise RegistryError(error.status, error.code, error.message) from None
            issued.append(secret)
            return changed

        seen = _Seen(apply)
        updated = await self._update_trigger(request.workspace_id, request.trigger_id, seen)
        assert isinstance(updated, WebhookTrigger)
        await self._audit_trigger(request.actor, "trigger.secret_rotated", seen.record, updated)
        return webhooks.issued(updated, issued[-1])

    async def set_trigger_enabled(self, request: SetTriggerEnabled) -> Trigger:
        def apply(trigger: Trigger) -> Trigger:
            if trigger.enabled == request.enabled:
                return trigger
            now = self._clock()
            return msgspec.structs.replace(
                trigger,
                enabled=request.enabled,
                version=trigger.version + 1,
                updated_at=now,
                paused_at=trigger.paused_at if request.enabled else now,
                resumed_at=now if request.enabled else None,
            )

        seen = _Seen(apply)
        updated = await self._change_trigger(request.workspace_id, request.trigger_id, seen)
        action: AuditAction = "trigger.resumed" if request.enabled else "trigger.paused"
        await self._audit_trigger(request.actor, action, seen.record, updated)
        return webhooks.public(updated)

    async def delete_trigger(self, request: DeleteTrigger) -> Trigger:
        trigger = await self._trigger(request.workspace_id, request.trigger_id)
        await self._store.delete(
            subjects.TRIGGERS_BUCKET, subjects.record_key(trigger.workspace_id, trigger.id)
        )
        await self._give_back(trigger.workspace_id, quotas.TRIGGERS, trigger.id)
        await self._give_back(trigger.workspace_id, quotas.SCHEDULE_FIRES, trigger.id)
        await self._audit_trigger(request.actor, "trigger.deleted", trigger, None)
        return webhooks.public(trigger)

    async def _change_trigger(
        self, workspace_id: str, trigger_id: str, apply: Callable[[Trigger], Trigger]
    ) -> Trigger:
        """`apply` the change, with the schedule fires it adds taken first and those it frees
        given back after."""
        for _ in range(CHANGE_ATTEMPTS):
            current = await self._trigger(workspace_id, trigger_id)
            wanted = quotas.schedule_load(apply(current))
            if wanted > quotas.schedule_load(current):
                await self._take(
                    workspace_id, quotas.SCHEDULE_FIRES, trigger_id, wanted, current.version
                )

            def within_share(trigger: Trigger, wanted: int = wanted) -> Trigger:
                changed = apply(trigger)
                # The record moved since it was read (a concurrent edit): what the change
                # makes of it now may fire more often than the share just taken.
                load = quotas.schedule_load(changed)
                if load > max(wanted, quotas.schedule_load(trigger)):
                    raise _ScheduleMoved
                return changed

            try:
                updated = await self._update_trigger(workspace_id, trigger_id, within_share)
            except _ScheduleMoved:
                continue
            await self._settle_schedule(updated)
            return updated
        raise RuntimeError(f"trigger {trigger_id} kept changing under {CHANGE_ATTEMPTS} edits")

    # --- the audit log ---------------------------------------------------------------------

    async def _audit(
        self,
        workspace_id: str,
        actor: str,
        action: AuditAction,
        resource_id: str,
        before: Audited | None,
        after: Audited | None,
    ) -> None:
        """Record a change once it is stored (nothing when the API would show no change)."""
        entry = audit.entry(
            at=self._clock(),
            workspace_id=workspace_id,
            actor=actor,
            action=action,
            resource_id=resource_id,
            before=before,
            after=after,
        )
        if entry is not None:
            await self._audit_log.record(entry)

    async def _audit_trigger(
        self, actor: str, action: AuditAction, before: Trigger | None, after: Trigger | None
    ) -> None:
        trigger = after or before
        assert trigger is not None
        await self._audit(trigger.workspace_id, actor, action, trigger.id, before, after)

    # --- quotas ----------------------------------------------------------------------------

    async def _take(
        self, workspace_id: str, quota: QuotaName, holder: str, amount: int, version: int = 0
    ) -> None:
        """`holder` takes its share of the workspace's `quota`, or the request is refused with
        the limit (after dropping what records that no longer exist still held)."""
        limit = self._limits.of(workspace_id, quota)

        def take(use: QuotaUse) -> QuotaUse:
            return quotas.take(use, holder, amount, limit, version)

        key = subjects.quota_key(workspace_id, quota)
        reconciled = False
        for _ in range(3):
            try:
                taken = await self._store.update(subjects.WORKSPACES_BUCKET, key, QuotaUse, take)
            except QuotaRefused as refused:
                if not reconciled and await self._reconcile(workspace_id, quota):
                    reconciled = True
                    continue
                raise quota_refusal(refused) from None
            if taken is not None:
                return
            await self._quota_use(workspace_id, quota)  # the workspace's first use: count it
        raise RuntimeError(f"the {quota} record of {workspace_id} keeps disappearing")

    async def _give_back(self, workspace_id: str, quota: QuotaName, holder: str) -> None:
        await self._store.update(
            subjects.WORKSPACES_BUCKET,
            subjects.quota_key(workspace_id, quota),
            QuotaUse,
            lambda use: quotas.give_back(use, holder),
        )

    async def _settle_schedule(self, trigger: Trigger) -> None:
        """The fires `trigger` holds as written (less, when the change made it quieter)."""
        load = quotas.schedule_load(trigger)
        await self._store.update(
            subjects.WORKSPACES_BUCKET,
            subjects.quota_key(trigger.workspace_id, quotas.SCHEDULE_FIRES),
            QuotaUse,
            lambda use: quotas.settle(use, trigger.id, load, trigger.version),
        )

    async def _quota_use(self, workspace_id: str, quota: QuotaName) -> None:
        """Make sure the workspace's record of `quota` exists: a workspace that has none yet
        (new, or created before quotas) gets one counted from its records (concurrent
        builders agree through `create`)."""
        key = subjects.quota_key(workspace_id, quota)
        if await self._store.get(subjects.WORKSPACES_BUCKET, key, QuotaUse) is not None:
            return
        held = await self._holdings(workspace_id, quota)
        with contextlib.suppress(AlreadyExists):
            await self._store.create(
                subjects.WORKSPACES_BUCKET,
                key,
                QuotaUse(workspace_id=workspace_id, quota=quota, held=held),
            )

    async def _holdings(self, workspace_id: str, quota: QuotaName) -> dict[str, Held]:
        """What the workspace's records hold of `quota`, counted from the records."""
        records: builtins.list[Listed]
        match quota:
            case "api_keys":
                records = [*await self._store.list(subjects.API_KEYS_BUCKET, workspace_id, ApiKey)]
            case "flows":
                records = [*await self._store.list(subjects.FLOWS_BUCKET, workspace_id, Flow)]
            case "triggers" | "schedule_fires_per_hour":
                triggers = await self._store.list(subjects.TRIGGERS_BUCKET, workspace_id, Trigger)
                if quota == quotas.SCHEDULE_FIRES:
                    return {
                        t.id: Held(amount=load, version=t.version)
                        for t in triggers
                        if (load := quotas.schedule_load(t))
                    }
                records = [*triggers]
        return {record.id: Held(amount=1) for record in records}

    async def _reconcile(self, workspace_id: str, quota: QuotaName) -> bool:
        """Drop what records that no longer exist still hold (a request cut short between its
        two writes); whether anything was dropped. At most once a `RECONCILE_EVERY` per
        workspace and quota on this replica."""
        now = self._clock()
        last = self._reconciled.get((workspace_id, quota))
        if last is not None and now - last < RECONCILE_EVERY:
            return False
        self._reconciled[(workspace_id, quota)] = now
        live = set(
            await self._holdings(
                workspace_id, quotas.TRIGGERS if quota == quotas.SCHEDULE_FIRES else quota
            )
        )
        cutoff = (now - WRITE_GRACE - _EPOCH) // timedelta(milliseconds=1)
        dropped = False

        def without_dead(use: QuotaUse) -> QuotaUse:
            nonlocal dropped
            kept = quotas.without_dead(use, live, cutoff)
            dropped = kept != use
            return kept

        await self._store.update(
            subjects.WORKSPACES_BUCKET,
            subjects.quota_key(workspace_id, quota),
            QuotaUse,
            without_dead,
        )
        return dropped

    # --- lookups ---------------------------------------------------------------------------

    async def _workspace(self, workspace_id: str) -> Workspace:
        workspace = None
        if is_valid_id(workspace_id):
            workspace = await self._store.get(subjects.WORKSPACES_BUCKET, workspace_id, Workspace)
        if workspace is None:
            raise RegistryError(404, "workspace_not_found", f"no workspace {workspace_id!r}")
        return workspace

    async def _flow(self, workspace_id: str, flow_id: str) -> Flow:
        flow = None
        if _both_valid(workspace_id, flow_id):
            key = subjects.record_key(workspace_id, flow_id)
            flow = await self._store.get(subjects.FLOWS_BUCKET, key, Flow)
        if flow is None:
            raise RegistryError(404, "flow_not_found", f"no flow {flow_id!r} in this workspace")
        return flow

    async def _trigger(self, workspace_id: str, trigger_id: str) -> Trigger:
        trigger = None
        if _both_valid(workspace_id, trigger_id):
            key = subjects.record_key(workspace_id, trigger_id)
            trigger = await self._store.get(subjects.TRIGGERS_BUCKET, key, Trigger)
        if trigger is None:
            raise RegistryError(
                404, "trigger_not_found", f"no trigger {trigger_id!r} in this workspace"
            )
        return trigger

    async def _update_trigger(
        self, workspace_id: str, trigger_id: str, apply: Callable[[Trigger], Trigger]
    ) -> Trigger:
        updated = None
        if _both_valid(workspace_id, trigger_id):
            key = subjects.record_key(workspace_id, trigger_id)
            updated = await self._store.update(subjects.TRIGGERS_BUCKET, key, Trigger, apply)
        if updated is None:
            raise RegistryError(
                404, "trigger_not_found", f"no trigger {trigger_id!r} in this workspace"
            )
        return updated
