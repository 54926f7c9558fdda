"""Which first-connection errors end a service's start at once, and what they tell to check."""

import ssl

import pytest
from nats.errors import AuthorizationError
from nats.errors import Error as NatsError

from shared.broker import refusal


def verification_failure(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    error.verify_message = message
    return error


def test_a_server_certificate_the_ca_does_not_sign_points_at_the_ca_and_hostname() -> None:
    said = refusal(verification_failure("unable to get local issuer certificate"))

    assert said is not None
    assert said.startswith("TLS: ")
    assert "unable to get local issuer certificate" in said
    assert "NATS_TLS_CA_FILE" in said
    assert "NATS_TLS_HOSTNAME" in said


def test_a_handshake_the_server_ends_with_an_alert_points_at_the_client_certificate() -> None:
    error = ssl.SSLError(1, "tlsv13 alert certificate required")
    error.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"

    said = refusal(error)

    assert said is not None
    assert "TLSV13_ALERT_CERTIFICATE_REQUIRED" in said
    assert "NATS_TLS_CERT_FILE" in said


@pytest.mark.parametrize(
    "error", [AuthorizationError(), NatsError("nats: 'Authorization Violation'")]
)
def test_refused_credentials_point_at_every_way_to_authenticate(error: Exception) -> None:
    said = refusal(error)

    assert said is not None
    for setting in ("NATS_USER", "NATS_TOKEN", "NATS_NKEY_SEED_FILE", "NATS_CREDS_FILE"):
        assert setting in said


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        NatsError("nats: empty response from server when expecting INFO message"),
    ],
)
def test_a_server_not_there_yet_is_waited_for_rather_than_refused(error: Exception) -> None:
    assert refusal(error) is None
