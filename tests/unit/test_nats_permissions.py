"""NATS credentials from the environment, and the shipped users rendered from `contracts/`."""

import ssl
from pathlib import Path

import pytest

from contracts import subjects
from shared import nats_permissions
from shared.broker import connect_options, stream_configs
from shared.settings import NatsConnectionSettings, SettingsError, from_environment

ROOT = Path(__file__).resolve().parents[2]


def settings(**environ: str) -> NatsConnectionSettings:
    return from_environment(NatsConnectionSettings, environ)


def test_without_settings_a_service_connects_anonymously_on_an_inbox_of_its_own() -> None:
    assert connect_options(settings(), "runner") == {"inbox_prefix": "_INBOX_runner"}


def test_a_user_and_password_are_passed_to_nats() -> None:
    options = connect_options(settings(NATS_USER="runner", NATS_PASSWORD="s3cret"), "runner")

    assert (options["user"], options["password"]) == ("runner", "s3cret")


@pytest.mark.parametrize(
    ("variable", "option"),
    [
        ("NATS_TOKEN", "token"),
        ("NATS_NKEY_SEED_FILE", "nkeys_seed"),
        ("NATS_CREDS_FILE", "user_credentials"),
    ],
)
def test_each_other_way_to_authenticate_is_passed_to_nats(variable: str, option: str) -> None:
    assert connect_options(settings(**{variable: "value"}), "x")[option] == "value"


def test_two_ways_to_authenticate_at_once_are_refused_with_both_names() -> None:
    with pytest.raises(SettingsError, match=r"NATS_USER and NATS_CREDS_FILE"):
        settings(NATS_USER="a", NATS_CREDS_FILE="/a.creds")


def test_a_password_without_a_user_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"NATS_PASSWORD is set without NATS_USER"):
        settings(NATS_PASSWORD="s3cret")


def test_a_client_certificate_without_its_key_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"together"):
        settings(NATS_TLS_CERT_FILE="/client.pem")


def test_a_tls_server_name_builds_a_verifying_context() -> None:
    options = connect_options(settings(NATS_TLS_HOSTNAME="nats.internal"), "x")

    assert isinstance(options["tls"], ssl.SSLContext)
    assert options["tls"].verify_mode == ssl.CERT_REQUIRED
    assert options["tls_hostname"] == "nats.internal"


def test_a_missing_ca_file_fails_at_start_rather_than_connecting_unverified() -> None:
    with pytest.raises(FileNotFoundError):
        connect_options(settings(NATS_TLS_CA_FILE="/nowhere/ca.pem"), "x")


def test_an_inbox_prefix_setting_overrides_the_service_s_own() -> None:
    options = connect_options(settings(NATS_INBOX_PREFIX="_INBOX_custom"), "runner")

    assert options["inbox_prefix"] == "_INBOX_custom"


def test_the_shipped_users_file_is_what_contracts_render_today() -> None:
    shipped = (ROOT / "deploy" / "nats" / "users.conf").read_text()

    assert shipped == nats_permissions.render(), (
        "stale: python -m shared.nats_permissions > deploy/nats/users.conf"
    )


def grants() -> dict[str, nats_permissions.User]:
    return {user.name: user for user in nats_permissions.service_users()}


def test_no_user_may_read_the_shared_inbox_or_another_service_s() -> None:
    for name, user in grants().items():
        inboxes = [s for s in user.subscribe if s.startswith("_INBOX")]
        assert inboxes == [f"_INBOX_{name}.>"], name
        assert ">" not in user.publish, name
        assert ">" not in user.subscribe, name


def test_only_the_registry_writes_registry_buckets_and_only_the_runner_writes_runs() -> None:
    writers: dict[str, set[str]] = {}
    for name, user in grants().items():
        for subject in user.publish:
            if subject.startswith("$KV."):
                writers.setdefault(subject.split(".")[1], set()).add(name)

    assert writers[subjects.API_KEYS_BUCKET] == {"registry"}
    assert writers[subjects.WORKSPACES_BUCKET] == {"registry"}
    assert writers[subjects.RUNS_BUCKET] == {"runner"}


def test_only_the_ingress_and_the_registry_may_read_api_keys() -> None:
    stream = f"KV_{subjects.API_KEYS_BUCKET}"
    readers = {
        name
        for name, user in grants().items()
        if f"$JS.API.DIRECT.GET.{stream}.>" in user.publish
        or f"$JS.API.CONSUMER.CREATE.{stream}" in user.publish
    }

    assert readers == {"ingress", "registry"}


def test_every_registry_call_the_ingress_makes_is_granted_and_the_registry_hears_them() -> None:
    ingress, registry = grants()["ingress"], grants()["registry"]
    called = {
        value
        for name, value in vars(subjects).items()
        if isinstance(value, str)
        and value.startswith(f"{subjects.REGISTRY_PREFIX}.")
        and name != "RUNNER_ANNOUNCE"
    }

    assert called <= set(ingress.publish)
    assert f"{subjects.REGISTRY_PREFIX}.>" in registry.subscribe
    assert registry.allow_responses
    assert not ingress.allow_responses


def test_every_stream_of_the_topology_may_be_created_by_every_service() -> None:
    for name, user in grants().items():
        for config in stream_configs():
            assert f"$JS.API.STREAM.CREATE.{config.name}" in user.publish, (name, config.name)


def test_an_outside_publisher_may_start_its_own_workspace_s_flows_only() -> None:
    user = nats_permissions.outside_publisher("acme", '"pw"', "ws_acme")

    assert user.publish == ("flow.v1.start.ws_acme",)
    assert set(user.subscribe) == {"_INBOX_acme.>", "run.v1.event.ws_acme.>"}
    rendered = nats_permissions.render_user(user)
    assert "user: acme" in rendered
    assert '"flow.v1.start.ws_acme"' in rendered
