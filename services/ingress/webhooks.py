"""Verification of signed webhook deliveries, pure: which secrets a trigger holds (opened once,
when the trigger reaches the directory), whether a delivery's signature matches its raw body,
whether its timestamp is fresh, and what the flow receives. Refusals are `ApiError`s with the
codes senders and the console see: `401 invalid_signature`, `401 stale_timestamp`,
`400 missing_header`.
"""

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import msgspec

from contracts.registry import WebhookTrigger
from services.ingress.problems import ApiError
from shared import webhook_secrets
from shared.webhook_secrets import SealedSecretError, SecretBox

log = logging.getLogger(__name__)

MAX_SIGNATURES = 10
"""Signatures of one header looked at (a sender lists one per secret it holds)."""


class Refused(ApiError):
    """A delivery refused before anything ran; counted on the trigger."""


def missing_header(name: str) -> Refused:
    return Refused(400, "missing_header", f"the delivery has no `{name}` header")


def invalid_signature(why: str) -> Refused:
    return Refused(401, "invalid_signature", why)


@dataclass(frozen=True)
class SigningKey:
    """One secret of a trigger, ready to verify: the HMAC key bytes and when they stop."""

    key: bytes
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Endpoint:
    """A webhook trigger and its opened secrets, as the directory keeps them."""

    trigger: WebhookTrigger
    keys: tuple[SigningKey, ...]
    unreadable: str | None = None
    """Why some secret could not be opened (wrong or missing `WEBHOOK_SECRET_KEY`)."""

    def usable_keys(self, now: datetime) -> list[bytes]:
        return [k.key for k in self.keys if k.expires_at is None or now < k.expires_at]


def open_endpoint(trigger: WebhookTrigger, box: SecretBox | None) -> Endpoint:
    """`trigger` with its secrets opened (done once per trigger change, never per delivery)."""
    if box is None:
        return Endpoint(trigger, (), "the ingress has no WEBHOOK_SECRET_KEY")
    keys: list[SigningKey] = []
    problem: str | None = None
    for secret in trigger.secrets:
        try:
            clear = box.open(secret.sealed, f"{trigger.id}.{secret.id}")
            key = (
                webhook_secrets.standard_webhooks_key(clear)
                if trigger.scheme == "standard_webhooks"
                else clear.encode()
            )
        except (SealedSecretError, ValueError) as error:
            # Never the secret: only which one and why.
            log.error("webhook trigger %s: secret %s unusable: %s", trigger.id, secret.id, error)
            problem = str(error)
            continue
        keys.append(SigningKey(key, secret.expires_at))
    return Endpoint(trigger, tuple(keys), problem)


@dataclass(frozen=True)
class Delivery:
    """What a verified delivery says about itself."""

    delivery_id: str | None
    event: str | None


def verify(endpoint: Endpoint, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
    """Refuse a delivery whose signature does not match `body` (the raw bytes, as sent) with
    one of the trigger's current secrets, or whose signed timestamp is further from `now` than
    the trigger's tolerance. `headers` are keyed by lower-case names."""
    keys = endpoint.usable_keys(now)
    if not keys:
        raise ApiError(
            503,
            "webhook_secret_unavailable",
            "this trigger has no secret the ingress can use: "
            + (endpoint.unreadable or "every secret has expired; rotate in a new one"),
        )
    trigger = endpoint.trigger
    match trigger.scheme:
        case "standard_webhooks":
            _verify_standard(headers, body, keys, now, trigger.tolerance_seconds)
        case "github":
            signature = _header(headers, "x-hub-signature-256")
            if not signature.startswith("sha256="):
                raise invalid_signature("`X-Hub-Signature-256` must be `sha256=<hex digest>`")
            _match(_hex(signature.removeprefix("sha256=")), body, keys)
        case "stripe":
            _verify_stripe(headers, body, keys, now, trigger.tolerance_seconds)
        case "hmac":
            settings = trigger.hmac
            assert settings is not None  # the registry refuses an hmac trigger without them
            value = _header(headers, settings.signature_header.lower()).strip()
            if settings.prefix:
                if not value.startswith(settings.prefix):
                    raise invalid_signature(
                        f"`{settings.signature_header}` must start with `{settings.prefix}`"
                    )
                value = value.removeprefix(settings.prefix)
            given = _hex(value) if settings.encoding == "hex" else _base64(value)
            _match(given, body, keys)


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip():
        raise missing_header(name)
    return value


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise invalid_signature("the signature is not hexadecimal") from None


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_signature("the signature is not base64") from None


def _digest(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def _match(given: bytes, body: bytes, keys: list[bytes], *signed_before: bytes) -> None:
    """Accept when one of the keys signs `signed_before + body` to `given` (constant time)."""
    for key in keys:
        if hmac.compare_digest(_digest(key, *signed_before, body), given):
            return
    raise invalid_signature("the signature does not match the body with any current secret")


def _fresh(timestamp: str, now: datetime, tolerance: int) -> None:
    try:
        sent = int(timestamp.strip())
    except ValueError:
        raise invalid_signature(
            f"the signed timestamp {timestamp[:40]!r} is not a number"
        ) from None
    age = now.timestamp() - sent
    if abs(age) > tolerance:
        when = "old" if age > 0 else "in the future"
        raise Refused(
            401,
            "stale_timestamp",
            f"the signed timestamp is {abs(age):.0f}s {when}; at most {tolerance}s is accepted "
            "(check the sender's clock, or it is a replay)",
        )


def _verify_standard(
    headers: Mapping[str, str], body: bytes, keys: list[bytes], now: datetime, tolerance: int
) -> None:
    message_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    _fresh(timestamp, now, tolerance)
    signed = f"{message_id}.{timestamp}.".encode()
    expected = [_digest(key, signed, body) for key in keys]
    # `v1,<base64>` entries separated by spaces; other versions are skipped, as the spec says.
    for entry in signatures.split(" ")[:MAX_SIGNATURES]:
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if any(hmac.compare_digest(digest, given) for digest in expected):
            return
    raise invalid_signature("no `v1` signature matches the body with any current secret")


def _verify_stripe(
    headers: Mapping[str, str], body: bytes, keys: list[bytes], now: datetime, tolerance: int
) -> None:
    header = _header(headers, "stripe-signature")
    timestamp: str | None = None
    given: list[bytes] = []
    for item in header.split(",")[: MAX_SIGNATURES + 2]:
        name, _, value = item.strip().partition("=")
        if name == "t":
            timestamp = value
        elif name == "v1":
            try:
                given.append(bytes.fromhex(value))
            except ValueError:
                continue
    if timestamp is None or not given:
        raise invalid_signature("`Stripe-Signature` must hold `t=<timestamp>` and `v1=<hex>`")
    _fresh(timestamp, now, tolerance)
    expected = [_digest(key, f"{timestamp}.".encode(), body) for key in keys]
    for signature in given:
        if any(hmac.compare_digest(digest, signature) for digest in expected):
            return
    raise invalid_signature("no `v1` signature matches the body with any current secret")


# --- after verification: what the delivery is and what the flow receives ---------------------


def parsed_body(body: bytes, content_type: str | None) -> Any:
    """The delivery's body as a value: JSON, a form (GitHub's `payload=` form included), or
    the text itself. A verified delivery is never refused for its format: senders retry."""
    if not body.strip():
        return None
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        form = {
            name: values[0] if len(values) == 1 else values
            for name, values in parse_qs(body.decode("utf-8", "replace")).items()
        }
        payload = form.get("payload")
        if len(form) == 1 and isinstance(payload, str):
            try:
                return msgspec.json.decode(payload)
            except (msgspec.DecodeError, RecursionError):
                pass
        return form
    try:
        return msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return body.decode("utf-8", "replace")


def describe(trigger: WebhookTrigger, headers: Mapping[str, str], payload: Any) -> Delivery:
    """The delivery id and event, where the scheme puts them."""
    from_body = payload if isinstance(payload, dict) else {}
    body_id = from_body.get("id") if isinstance(from_body.get("id"), str) else None
    body_type = from_body.get("type") if isinstance(from_body.get("type"), str) else None
    match trigger.scheme:
        case "standard_webhooks":
            return Delivery(headers.get("webhook-id"), body_type)
        case "github":
            return Delivery(headers.get("x-github-delivery"), headers.get("x-github-event"))
        case "stripe":
            # Stripe sends an event again with the same id: it is the delivery's identity.
            return Delivery(body_id, body_type)
        case "hmac":
            settings = trigger.hmac
            assert settings is not None
            delivery_header = settings.delivery_id_header
            event_header = settings.event_header
            return Delivery(
                headers.get(delivery_header.lower()) if delivery_header else None,
                headers.get(event_header.lower()) if event_header else None,
            )


def ignored(trigger: WebhookTrigger, delivery: Delivery) -> str | None:
    """Why a verified delivery starts nothing (`ping`, `event_not_accepted`), or None."""
    event = delivery.event
    if trigger.scheme == "github" and event == "ping" and "ping" not in trigger.events:
        return "ping"
    if trigger.events and event not in trigger.events:
        return "event_not_accepted"
    return None


def flow_input(
    trigger: WebhookTrigger,
    delivery: Delivery,
    payload: Any,
    headers: Mapping[str, str],
    received_at: datetime | None = None,
) -> dict[str, Any]:
    """What the flow receives: the parsed body and the delivery's metadata."""
    return {
        "body": payload,
        "delivery": {
            "id": delivery.delivery_id,
            "event": delivery.event,
            "scheme": trigger.scheme,
            "trigger_id": trigger.id,
            "received_at": (received_at or datetime.now(UTC)).isoformat(),
            "headers": {name: headers[name] for name in trigger.include_headers if name in headers},
        },
    }


def delivery_key(workspace_id: str, trigger_id: str, delivery_id: str) -> str:
    """The delivery's key in the idempotency store (per trigger: one event sent to two
    triggers of a workspace is two deliveries)."""
    digest = hashlib.sha256(f"hook:{trigger_id}:{delivery_id}".encode()).hexdigest()
    return f"{workspace_id}.{digest}"
