"""The registry's rules for webhook triggers: their secrets (generated or supplied, sealed, rotated
with a grace period) and their settings. Pure: the sealing box is given, time is given."""

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from contracts.registry import (
    HEADER_NAME_PATTERN,
    MAX_EVENT_NAME_LENGTH,
    MAX_WEBHOOK_SECRETS,
    NewWebhookSecret,
    NewWebhookTrigger,
    Trigger,
    WebhookScheme,
    WebhookSecret,
    WebhookTrigger,
)
from shared import webhook_secrets
from shared.ids import new_id
from shared.webhook_secrets import SecretBox


class WebhookRuleError(Exception):
    """A webhook request the registry refuses: (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


NO_SEALING_KEY = WebhookRuleError(
    503,
    "webhook_secrets_disabled",
    "webhook triggers need WEBHOOK_SECRET_KEY on the registry and the ingress (their secrets "
    "are kept encrypted with it); `make run` makes one in its data folder",
)


_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)


def checked_events(events: Sequence[str]) -> tuple[str, ...]:
    """The accepted events, each once, in the order given."""
    for event in events:
        if not event or len(event) > MAX_EVENT_NAME_LENGTH or not event.isprintable():
            raise WebhookRuleError(
                422,
                "invalid_webhook_setting",
                f"an event in `events` is 1 to {MAX_EVENT_NAME_LENGTH} printable characters, "
                "such as `push` or `invoice.paid`",
            )
    return tuple(dict.fromkeys(events))


def checked_headers(names: Sequence[str]) -> tuple[str, ...]:
    """The header names to copy into the flow input, lower-case, each once."""
    for name in names:
        if not _HEADER_NAME.match(name):
            raise WebhookRuleError(
                422,
                "invalid_webhook_setting",
                f"{name[:100]!r} in `include_headers` is not an HTTP header name",
            )
    return tuple(dict.fromkeys(name.lower() for name in names))


def bound_to(trigger_id: str, secret_id: str) -> str:
    """What a sealed secret is bound to (AES-GCM associated data)."""
    return f"{trigger_id}.{secret_id}"


def _checked_secret(scheme: WebhookScheme, secret: str) -> str:
    if any(c.isspace() or ord(c) < 32 for c in secret):
        raise WebhookRuleError(
            422, "invalid_secret", "a webhook secret has no spaces or control characters"
        )
    if scheme == "standard_webhooks":
        try:
            webhook_secrets.standard_webhooks_key(secret)
        except ValueError as error:
            raise WebhookRuleError(422, "invalid_secret", str(error)) from error
    return secret


def _sealed(box: SecretBox, trigger_id: str, secret: str, now: datetime) -> WebhookSecret:
    secret_id = new_id("whs")
    return WebhookSecret(
        id=secret_id,
        fingerprint=webhook_secrets.fingerprint(secret),
        created_at=now,
        sealed=box.seal(secret, bound_to(trigger_id, secret_id)),
    )


def new_webhook_trigger(
    common: dict[str, Any], new: NewWebhookTrigger, box: SecretBox | None, now: datetime
) -> tuple[WebhookTrigger, str]:
    """The trigger to store (its secret sealed) and the secret in clear, to show once."""
    if box is None:
        raise NO_SEALING_KEY
    if new.scheme == "hmac" and new.hmac is None:
        raise WebhookRuleError(
            422,
            "hmac_settings_required",
            'the `hmac` scheme needs `hmac`: {"signature_header": "X-Signature", '
            '"encoding": "hex"} at least',
        )
    if new.scheme != "hmac" and new.hmac is not None:
        raise WebhookRuleError(
            422, "unexpected_hmac_settings", f"`hmac` is for the `hmac` scheme, not `{new.scheme}`"
        )
    secret = _checked_secret(new.scheme, new.secret or webhook_secrets.generate_secret())
    trigger = WebhookTrigger(
        **common,
        scheme=new.scheme,
        secrets=(_sealed(box, common["id"], secret, now),),
        events=checked_events(new.events),
        include_headers=checked_headers(new.include_headers),
        hmac=new.hmac,
        tolerance_seconds=new.tolerance_seconds,
        response_mode=new.response_mode,
        sync_wait_seconds=new.sync_wait_seconds,
    )
    return trigger, secret


def rotated(
    trigger: Trigger, rotation: NewWebhookSecret, box: SecretBox | None, now: datetime
) -> tuple[WebhookTrigger, str]:
    """`trigger` with a new current secret; the previous one verifies until the grace ends,
    older ones (and expired ones) are dropped, so a trigger never holds more than two."""
    if not isinstance(trigger, WebhookTrigger):
        raise WebhookRuleError(
            409, "not_a_webhook", f"trigger {trigger.id} is a `{trigger.type}` trigger"
        )
    if box is None:
        raise NO_SEALING_KEY
    secret = _checked_secret(trigger.scheme, rotation.secret or webhook_secrets.generate_secret())
    kept: list[WebhookSecret] = []
    if trigger.secrets and rotation.previous_valid_seconds > 0:
        previous = trigger.secrets[0]
        until = now + timedelta(seconds=rotation.previous_valid_seconds)
        if previous.expires_at is not None:
            until = min(until, previous.expires_at)
        if until > now:
            kept.append(msgspec.structs.replace(previous, expires_at=until))
    secrets = (_sealed(box, trigger.id, secret, now), *kept)[:MAX_WEBHOOK_SECRETS]
    changed = msgspec.structs.replace(
        trigger, secrets=secrets, version=trigger.version + 1, updated_at=now, new_secret=None
    )
    return changed, secret


def public(trigger: Trigger) -> Trigger:
    """`trigger` as the API shows it: its secrets without their sealed form."""
    if not isinstance(trigger, WebhookTrigger):
        return trigger
    return msgspec.structs.replace(
        trigger,
        secrets=tuple(msgspec.structs.replace(s, sealed="") for s in trigger.secrets),
        new_secret=None,
    )


def issued(trigger: WebhookTrigger, secret: str) -> WebhookTrigger:
    """The answer that shows a new secret (the only one)."""
    shown = public(trigger)
    assert isinstance(shown, WebhookTrigger)
    return msgspec.structs.replace(shown, new_secret=secret)
