"""The pure verification of signed webhook deliveries, signed by producers' own code: the
`standardwebhooks` library, Stripe's library, and GitHub's published algorithm."""

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import stripe
from standardwebhooks.webhooks import Webhook

from contracts.registry import HmacSettings, WebhookSecret, WebhookTrigger
from services.ingress import webhooks
from services.ingress.webhooks import Endpoint, Refused
from services.registry.webhooks import bound_to
from shared import webhook_secrets
from shared.webhook_secrets import SealedSecretError, SecretBox

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BOX = SecretBox((b"k" * 32,))
BODY = json.dumps({"id": "evt_1", "type": "invoice.paid", "amount": 1200}).encode()


def trigger(scheme: str, *secrets: tuple[str, datetime | None], **fields: Any) -> WebhookTrigger:
    """A webhook trigger holding `secrets` sealed as the registry seals them."""
    held = tuple(
        WebhookSecret(
            id=f"whs_{index:021d}",
            fingerprint=webhook_secrets.fingerprint(secret),
            created_at=NOW,
            expires_at=expires_at,
            sealed=BOX.seal(secret, bound_to("trg_1", f"whs_{index:021d}")),
        )
        for index, (secret, expires_at) in enumerate(secrets)
    )
    return WebhookTrigger(
        id="trg_1",
        workspace_id="ws_1",
        flow_id="flw_1",
        created_at=NOW,
        updated_at=NOW,
        scheme=scheme,  # type: ignore[arg-type]
        secrets=held,
        **fields,
    )


def endpoint(scheme: str, *secrets: str, **fields: Any) -> Endpoint:
    return webhooks.open_endpoint(trigger(scheme, *((s, None) for s in secrets), **fields), BOX)


def refusal(target: Endpoint, headers: dict[str, str], body: bytes = BODY) -> Refused:
    with pytest.raises(Refused) as caught:
        webhooks.verify(target, headers, body, NOW)
    return caught.value


# --- Standard Webhooks, signed with the `standardwebhooks` package --------------------------

SECRET = webhook_secrets.generate_secret()
OTHER_SECRET = webhook_secrets.generate_secret()


def standard_headers(secret: str, body: bytes = BODY, at: datetime = NOW) -> dict[str, str]:
    signature = Webhook(secret).sign("msg_1", at, body.decode())
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }


def test_a_standard_webhooks_delivery_signed_by_its_library_is_accepted() -> None:
    webhooks.verify(endpoint("standard_webhooks", SECRET), standard_headers(SECRET), BODY, NOW)


def test_a_standard_webhooks_delivery_signed_with_another_secret_is_refused() -> None:
    refused = refusal(endpoint("standard_webhooks", SECRET), standard_headers(OTHER_SECRET))
    assert (refused.status, refused.code) == (401, "invalid_signature")


def test_a_body_changed_by_one_byte_is_refused() -> None:
    changed = BODY.replace(b"1200", b"1201")
    refused = refusal(endpoint("standard_webhooks", SECRET), standard_headers(SECRET), changed)
    assert refused.code == "invalid_signature"


def test_a_timestamp_older_than_five_minutes_is_refused_as_stale() -> None:
    old = standard_headers(SECRET, at=NOW - timedelta(minutes=5, seconds=1))
    refused = refusal(endpoint("standard_webhooks", SECRET), old)
    assert (refused.status, refused.code) == (401, "stale_timestamp")
    future = standard_headers(SECRET, at=NOW + timedelta(minutes=6))
    assert refusal(endpoint("standard_webhooks", SECRET), future).code == "stale_timestamp"
    # Within the tolerance it passes.
    recent = standard_headers(SECRET, at=NOW - timedelta(minutes=4))
    webhooks.verify(endpoint("standard_webhooks", SECRET), recent, BODY, NOW)


def test_a_missing_standard_webhooks_header_is_a_400() -> None:
    headers = standard_headers(SECRET)
    del headers["webhook-timestamp"]
    refused = refusal(endpoint("standard_webhooks", SECRET), headers)
    assert (refused.status, refused.code) == (400, "missing_header")
    assert "webhook-timestamp" in refused.detail


def test_one_of_several_space_separated_signatures_is_enough() -> None:
    headers = standard_headers(SECRET)
    other = standard_headers(OTHER_SECRET)["webhook-signature"]
    headers["webhook-signature"] = f"v2,abc {other} {headers['webhook-signature']}"
    webhooks.verify(endpoint("standard_webhooks", SECRET), headers, BODY, NOW)


def test_both_secrets_verify_during_a_rotation_and_the_old_one_stops_at_its_expiry() -> None:
    rotating = webhooks.open_endpoint(
        trigger("standard_webhooks", (SECRET, None), (OTHER_SECRET, NOW + timedelta(hours=1))),
        BOX,
    )
    webhooks.verify(rotating, standard_headers(SECRET), BODY, NOW)
    webhooks.verify(rotating, standard_headers(OTHER_SECRET), BODY, NOW)
    later = NOW + timedelta(hours=1, seconds=1)
    old = standard_headers(OTHER_SECRET, at=later)
    with pytest.raises(Refused, match="any current secret"):
        webhooks.verify(rotating, old, BODY, later)
    webhooks.verify(rotating, standard_headers(SECRET, at=later), BODY, later)


def test_a_trigger_whose_secret_the_ingress_cannot_open_answers_503_not_401() -> None:
    unreadable = webhooks.open_endpoint(
        trigger("standard_webhooks", (SECRET, None)), SecretBox((b"x" * 32,))
    )
    with pytest.raises(webhooks.ApiError) as caught:
        webhooks.verify(unreadable, standard_headers(SECRET), BODY, NOW)
    assert (caught.value.status, caught.value.code) == (503, "webhook_secret_unavailable")


# --- GitHub: HMAC-SHA256 hex of the raw body, `sha256=` prefix --------------------------------

GITHUB_SECRET = "It's a Secret to Everybody"


def github_headers(secret: str, body: bytes = BODY, event: str = "push") -> dict[str, str]:
    # As GitHub documents it (docs.github.com, "Validating webhook deliveries").
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "x-hub-signature-256": f"sha256={digest}",
        "x-github-event": event,
        "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }


def test_githubs_published_test_vector_verifies() -> None:
    # The example from GitHub's documentation: this secret and payload give this signature.
    digest = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    documented = {"x-hub-signature-256": f"sha256={digest}"}
    webhooks.verify(endpoint("github", GITHUB_SECRET), documented, b"Hello, World!", NOW)


def test_a_github_delivery_is_accepted_and_tells_its_event_and_delivery_id() -> None:
    target = endpoint("github", GITHUB_SECRET)
    headers = github_headers(GITHUB_SECRET)
    webhooks.verify(target, headers, BODY, NOW)
    delivery = webhooks.describe(target.trigger, headers, json.loads(BODY))
    assert delivery == webhooks.Delivery("72d3162e-cc78-11e3-81ab-4c9367dc0958", "push")


def test_a_github_delivery_with_a_wrong_secret_or_a_changed_byte_is_refused() -> None:
    target = endpoint("github", GITHUB_SECRET)
    assert refusal(target, github_headers("another secret")).code == "invalid_signature"
    assert refusal(target, github_headers(GITHUB_SECRET), BODY + b" ").code == "invalid_signature"
    assert refusal(target, {}).code == "missing_header"
    sha1 = {"x-hub-signature-256": "sha1=00"}
    assert refusal(target, sha1).code == "invalid_signature"


def test_a_github_ping_and_an_event_not_listed_start_nothing() -> None:
    listed = trigger("github", (GITHUB_SECRET, None), events=("push", "pull_request"))
    assert webhooks.ignored(listed, webhooks.Delivery("d", "ping")) == "ping"
    assert webhooks.ignored(listed, webhooks.Delivery("d", "issues")) == "event_not_accepted"
    assert webhooks.ignored(listed, webhooks.Delivery("d", "push")) is None
    every = trigger("github", (GITHUB_SECRET, None))
    assert webhooks.ignored(every, webhooks.Delivery("d", "ping")) == "ping"
    assert webhooks.ignored(every, webhooks.Delivery("d", "issues")) is None


def test_a_github_form_delivery_gives_the_flow_its_json_payload() -> None:
    form = b"payload=%7B%22zen%22%3A%22Keep+it+logically+awesome.%22%7D"
    parsed = webhooks.parsed_body(form, "application/x-www-form-urlencoded")
    assert parsed == {"zen": "Keep it logically awesome."}


# --- Stripe: `t=...,v1=...` over `t.body`, generated by Stripe's own library ------------------

STRIPE_SECRET = "whsec_test_" + "a" * 24


def stripe_headers(secret: str, body: bytes = BODY, at: datetime = NOW) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, int(at.timestamp())
    )
    return {"stripe-signature": header}


def test_a_stripe_delivery_signed_by_stripes_library_is_accepted_with_the_event_id() -> None:
    target = endpoint("stripe", STRIPE_SECRET)
    headers = stripe_headers(STRIPE_SECRET)
    webhooks.verify(target, headers, BODY, NOW)
    delivery = webhooks.describe(target.trigger, headers, json.loads(BODY))
    assert delivery == webhooks.Delivery("evt_1", "invoice.paid")


def test_a_stripe_delivery_with_a_wrong_secret_an_old_timestamp_or_a_changed_byte_is_refused() -> (
    None
):
    target = endpoint("stripe", STRIPE_SECRET)
    assert refusal(target, stripe_headers("whsec_other_secret_123456")).code == "invalid_signature"
    old = stripe_headers(STRIPE_SECRET, at=NOW - timedelta(minutes=6))
    assert refusal(target, old).code == "stale_timestamp"
    assert refusal(target, stripe_headers(STRIPE_SECRET), BODY[:-1] + b" ").code == (
        "invalid_signature"
    )
    assert refusal(target, {"stripe-signature": "v1=abc"}).code == "invalid_signature"


# --- Generic HMAC (Shopify's form: base64 in X-Shopify-Hmac-Sha256) ----------------------------


def test_a_generic_hmac_in_base64_with_its_header_and_metadata_is_verified() -> None:
    settings = HmacSettings(
        signature_header="X-Shopify-Hmac-Sha256",
        encoding="base64",
        delivery_id_header="X-Shopify-Webhook-Id",
        event_header="X-Shopify-Topic",
    )
    target = endpoint("hmac", "shpss_secret_value_1234", hmac=settings)
    signature = base64.b64encode(
        hmac.new(b"shpss_secret_value_1234", BODY, hashlib.sha256).digest()
    ).decode()
    headers = {
        "x-shopify-hmac-sha256": signature,
        "x-shopify-webhook-id": "b54557e4",
        "x-shopify-topic": "orders/create",
    }
    webhooks.verify(target, headers, BODY, NOW)
    assert webhooks.describe(target.trigger, headers, None) == webhooks.Delivery(
        "b54557e4", "orders/create"
    )
    headers["x-shopify-hmac-sha256"] = base64.b64encode(b"\0" * 32).decode()
    assert refusal(target, headers).code == "invalid_signature"


def test_a_generic_hmac_in_hex_after_a_prefix_is_verified() -> None:
    settings = HmacSettings(signature_header="X-Signature", prefix="sha256=")
    target = endpoint("hmac", "a-generic-secret-value", hmac=settings)
    digest = hmac.new(b"a-generic-secret-value", BODY, hashlib.sha256).hexdigest()
    webhooks.verify(target, {"x-signature": f"sha256={digest}"}, BODY, NOW)
    assert refusal(target, {"x-signature": digest}).code == "invalid_signature"


# --- what the flow receives, and the sealed secrets -------------------------------------------


def test_the_flow_input_is_the_parsed_body_with_the_deliverys_metadata_and_named_headers() -> None:
    hook = trigger("github", (GITHUB_SECRET, None), include_headers=("user-agent",))
    headers = {**github_headers(GITHUB_SECRET), "user-agent": "GitHub-Hookshot/1", "cookie": "x"}
    delivery = webhooks.describe(hook, headers, None)
    given = webhooks.flow_input(hook, delivery, {"ref": "main"}, headers, NOW)
    assert given == {
        "body": {"ref": "main"},
        "delivery": {
            "id": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "event": "push",
            "scheme": "github",
            "trigger_id": "trg_1",
            "received_at": NOW.isoformat(),
            "headers": {"user-agent": "GitHub-Hookshot/1"},
        },
    }


def test_a_body_that_is_not_json_reaches_the_flow_as_text() -> None:
    assert webhooks.parsed_body(b"plain words", "text/plain") == "plain words"


def test_a_sealed_secret_opens_only_for_its_own_trigger_and_with_a_key_the_box_holds() -> None:
    sealed = BOX.seal("whsec_abc", "trg_1.whs_1")
    assert "whsec_abc" not in sealed
    assert BOX.open(sealed, "trg_1.whs_1") == "whsec_abc"
    with pytest.raises(SealedSecretError):
        BOX.open(sealed, "trg_2.whs_1")
    rotated = SecretBox((b"n" * 32, b"k" * 32))
    assert rotated.open(sealed, "trg_1.whs_1") == "whsec_abc"
    with pytest.raises(SealedSecretError):
        SecretBox((b"n" * 32,)).open(sealed, "trg_1.whs_1")


def test_the_sealing_key_setting_takes_comma_separated_base64_keys() -> None:
    one, two = webhook_secrets.generate_sealing_key(), webhook_secrets.generate_sealing_key()
    box = SecretBox.from_setting(f"{one}, {two}")
    assert box is not None
    assert len(box.keys) == 2
    assert SecretBox.from_setting("") is None
    with pytest.raises(webhook_secrets.SealingKeyError):
        SecretBox.from_setting("too-short")


def test_a_generated_secret_is_a_standard_webhooks_secret_its_library_accepts() -> None:
    secret = webhook_secrets.generate_secret()
    assert secret.startswith("whsec_")
    assert len(webhook_secrets.standard_webhooks_key(secret)) == 32
    # The library verifies what it signed with the same secret: the formats agree.
    headers = standard_headers(secret, at=datetime.now(UTC))
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_a_trigger_record_decodes_with_its_secrets_and_older_records_still_decode() -> None:
    record = msgspec.json.encode(trigger("github", (GITHUB_SECRET, None)))
    assert msgspec.json.decode(record, type=WebhookTrigger).secrets[0].sealed
