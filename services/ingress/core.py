"""The ingress's decisions, pure (no NATS, no HTTP framework): who may do what, how long a start
waits for its run, and how a ledger or a schedule preview is paged and shown. Refusals are
`ApiError`s that say why.
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from contracts.registry import (
    DEFAULT_SYNC_WAIT_SECONDS,
    ApiKey,
    ApiTrigger,
    Flow,
    Schedule,
    ScheduleTrigger,
    Trigger,
)
from contracts.scheduling import (
    DraftPreview,
    FirePage,
    FireRecord,
    PreviewFire,
    SchedulePreview,
)
from services.ingress.auth_guard import Limited
from services.ingress.problems import ApiError
from shared import api_keys, schedules

MAYBE_STALE = frozenset({"invalid_key", "flow_not_found", "no_api_trigger", "trigger_paused"})
"""Refusals that can come from a directory a few milliseconds behind the registry."""


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a body may have: deeper ones are `400`, before a
service further on runs out of stack decoding them."""


def json_body(body: bytes) -> Any:
    """The JSON value of a request body, or `400 invalid_json` saying why (nesting deeper than
    `MAX_JSON_DEPTH` included)."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from error
    except RecursionError as error:
        raise too_deep() from error
    # Counting is done in C; only a body with more brackets than the limit is walked.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and depth_over(value, MAX_JSON_DEPTH):
        raise too_deep()
    return value


def too_deep() -> ApiError:
    return ApiError(
        400,
        "invalid_json",
        f"the body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
    )


def depth_over(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and dicts more than `limit` deep (walked without recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return False


def bearer_secret(authorization: str | None) -> str:
    """The secret of an `Authorization: Bearer <secret>` header."""
    if not authorization:
        raise ApiError(401, "missing_key", "send your API key as `Authorization: Bearer <key>`")
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "missing_key", "the Authorization header must be `Bearer <key>`")
    return secret.strip()


def unexpired(key: ApiKey, digest: str, now: datetime) -> ApiKey:
    """`key`, unless it has expired or `digest` is its secret that a rotation replaced and
    whose grace has ended (`401 expired_key`): time decides, so every replica agrees."""
    if key.expires_at is not None and now >= key.expires_at:
        raise ApiError(
            401,
            "expired_key",
            f"API key {key.prefix}… expired at {key.expires_at.isoformat()}; "
            "create a new key or extend this one (PATCH /v1/keys/{id})",
        )
    if digest != key.digest and (key.previous_expires_at is None or now >= key.previous_expires_at):
        ended = key.previous_expires_at.isoformat() if key.previous_expires_at else "now"
        raise ApiError(
            401,
            "expired_key",
            f"this secret of API key {key.id} was replaced by a rotation; it stopped working "
            f"at {ended}: use the new secret",
        )
    return key


def authenticate(
    authorization: str | None,
    lookup: Callable[[str], ApiKey | None],
    now: datetime | None = None,
) -> ApiKey:
    """The key behind the header, or a 401 that tells a typo from an unknown key."""
    secret = bearer_secret(authorization)
    digest = api_keys.digest(secret)
    key = lookup(digest)
    if key is not None:
        return unexpired(key, digest, now or datetime.now(UTC))
    raise refusal_of_unknown(secret)


def refusal_of_unknown(secret: str) -> ApiError:
    """The 401 for a key the lookup missed: raised at once for a malformed key (a copy error,
    told apart by the checksum alone), returned for a well-formed one (revoked or never
    issued, unless it was created a moment ago). Only a miss pays for the checksum."""
    if not api_keys.is_well_formed(secret):
        raise ApiError(
            401,
            "malformed_key",
            f"that is not a workspace API key: keys start with `{api_keys.PREFIX}`, are "
            f"{api_keys.LENGTH} characters long and end in a checksum (check for a copy error)",
        )
    return ApiError(401, "invalid_key", "this API key is not valid: revoked or never issued")


def too_many_failures(limited: Limited, now: datetime) -> ApiError:
    """`429` for a request over a limit of failed authentications: which one, and when to
    try again (also in `Retry-After`)."""
    retry_at = (now + timedelta(seconds=limited.retry_after)).replace(microsecond=0)
    who = "from this address" if limited.by == "address" else "with this key"
    return ApiError(
        429,
        "too_many_failed_authentications",
        f"too many requests {who} with API keys that are not valid (at most "
        f"{limited.burst} at once, then {limited.per_minute:g} a minute); retry after "
        f"{limited.retry_after} s, at {retry_at.isoformat().replace('+00:00', 'Z')}",
        headers={"Retry-After": str(limited.retry_after)},
    )


def require_admin(key: ApiKey) -> ApiKey:
    if key.scope != "admin":
        raise ApiError(
            403, "admin_key_required", f"key {key.prefix}… may only call triggers; use an admin key"
        )
    return key


def api_trigger_for(key: ApiKey, flow: Flow | None, triggers: list[Trigger]) -> ApiTrigger:
    """The enabled API trigger through which `key` may start `flow`."""
    if flow is None or flow.workspace_id != key.workspace_id:
        # A foreign workspace's flow looks exactly like a missing one.
        raise ApiError(404, "flow_not_found", "no such flow in this key's workspace")
    if key.flow_ids is not None and flow.id not in key.flow_ids:
        raise ApiError(
            403,
            "flow_not_allowed",
            f"key {key.prefix}… may only start the flows it was limited to; flow {flow.id} is "
            "not one of them",
        )
    api_triggers = sorted((t for t in triggers if isinstance(t, ApiTrigger)), key=lambda t: t.id)
    if not api_triggers:
        raise ApiError(
            403,
            "no_api_trigger",
            f"flow {flow.id} has no API trigger; create one with POST /v1/triggers "
            f'{{"flow_id": "{flow.id}", "type": "api"}}',
        )
    for trigger in api_triggers:
        if trigger.enabled:
            return trigger
    raise ApiError(
        409,
        "trigger_paused",
        f"the API trigger {api_triggers[0].id} of flow {flow.id} is paused; resume it with "
        f"POST /v1/triggers/{api_triggers[0].id}/resume",
    )


def run_now_wait(trigger: Trigger) -> float:
    """How long Run now waits for the run by default: an API trigger's own wait, else the
    default wait of an API trigger (`Prefer` overrides either)."""
    if isinstance(trigger, ApiTrigger):
        return trigger.sync_wait_seconds
    return DEFAULT_SYNC_WAIT_SECONDS


def sync_wait(prefer: str | None, default: float, limit: float) -> tuple[float, str | None]:
    """How long `POST /trigger` waits for the run (RFC 7240 `Prefer`), and the preference it
    applied (for `Preference-Applied`).

    `Prefer: respond-async` answers at once; `Prefer: wait=N` waits up to N seconds, at most
    `limit`; without either, the trigger's `default` applies. Unknown preferences are ignored,
    as the RFC asks.
    """
    wait: float | None = None
    for preference in (prefer or "").split(","):
        name, _, value = preference.strip().partition("=")
        name = name.strip().lower()
        if name == "respond-async":
            return 0.0, "respond-async"
        if name == "wait":
            try:
                wait = float(value.strip().strip('"'))
            except ValueError:
                continue
    if wait is None or wait != wait or wait < 0:  # absent, or NaN, or negative
        return min(default, limit), None
    applied = min(wait, limit)
    return applied, f"wait={applied:g}"


# --- the ledger and the preview of a schedule trigger ------------------------------------


def fire_page(entries: list[FireRecord], limit: int, cursor: str | None) -> FirePage:
    """Newest occurrence first (a later decision on the same occurrence before an earlier one);
    `cursor` is the `next_cursor` of the previous page."""
    ordered = sorted(
        enumerate(entries), key=lambda pair: (pair[1].scheduled_at, pair[0]), reverse=True
    )
    keyed = [(f"{entry.scheduled_at.isoformat()}|{index:06d}", entry) for index, entry in ordered]
    if cursor is not None:
        keyed = [(key, entry) for key, entry in keyed if key < cursor]
    page = keyed[:limit]
    next_cursor = page[-1][0] if len(keyed) > limit else None
    return FirePage(items=[entry for _, entry in page], next_cursor=next_cursor)


def schedule_preview(trigger: Trigger, count: int, now: datetime | None = None) -> SchedulePreview:
    """The trigger's next `count` occurrences, with their local and UTC times."""
    if not isinstance(trigger, ScheduleTrigger):
        raise ApiError(409, "not_a_schedule", f"trigger {trigger.id} is a `{trigger.type}` trigger")
    schedule = trigger.schedule
    jitter = schedules.jitter_offset(trigger.id, schedule.jitter)
    moment = now or datetime.now(UTC)
    try:
        found = schedules.preview(schedule, moment, count)
    except schedules.InvalidSchedule as error:
        raise ApiError(422, "invalid_schedule", str(error)) from error
    return SchedulePreview(
        trigger_id=trigger.id,
        timezone=schedule.timezone,
        jitter_seconds=int(jitter.total_seconds()),
        enabled=trigger.enabled,
        fires=_preview_fires(found, jitter),
    )


def draft_preview(schedule: Schedule, count: int, now: datetime | None = None) -> DraftPreview:
    """The next `count` occurrences of a schedule no trigger has yet (a form being filled in),
    refused with the words the registry would use when it cannot be saved."""
    moment = now or datetime.now(UTC)
    problem = schedules.validate(schedule, moment)
    if problem is not None:
        raise ApiError(422, "invalid_schedule", problem)
    try:
        found = schedules.preview(schedule, moment, count)
    except (ValueError, OverflowError) as error:
        # InvalidSchedule is a ValueError; OverflowError: a fire beyond the year 9999.
        raise ApiError(422, "invalid_schedule", str(error)) from error
    # The jitter offset is fixed per trigger id, which the draft does not have yet.
    return DraftPreview(timezone=schedule.timezone, fires=_preview_fires(found, timedelta()))


def _preview_fires(found: list[schedules.Occurrence], jitter: timedelta) -> list[PreviewFire]:
    return [
        PreviewFire(
            scheduled_at=occurrence.scheduled_at,
            local_time=occurrence.local.isoformat(),
            fires_at=occurrence.scheduled_at + jitter,
            fires=occurrence.skip is None,
            skip=occurrence.skip,
            note=occurrence.note,
        )
        for occurrence in found
    ]
