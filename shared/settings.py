"""Typed settings read from environment variables: field `nats_url` is read from `NATS_URL`."""

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


def from_environment(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build `cls` from the environment; unset variables keep the field's default."""
    env = os.environ if environ is None else environ
    given: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        value = env.get(field.name.upper())
        if value is not None and value != "":
            try:
                given[field.name] = msgspec.convert(value, field.type, strict=False)
            except msgspec.ValidationError as error:
                raise SettingsError(
                    f"invalid {field.name.upper()}={value!r} (setting `{field.name}`): {error}"
                ) from error
    try:
        return msgspec.convert(given, cls, strict=False)
    except msgspec.ValidationError as error:
        raise SettingsError(f"invalid setting in the environment: {error}") from error


class NatsConnectionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How every service authenticates to NATS and secures the connection (`NATS_USER`, ...).

    At most one way to authenticate: a user and password, a token, an NKey seed file or a
    `.creds` file (a user JWT with its seed). With none, the connection is anonymous, which a
    server with the shipped configuration refuses (see `deploy/nats/`).
    """

    nats_user: str = ""
    """User name (`NATS_USER`), with `nats_password`."""
    nats_password: str = ""
    """Password of `nats_user` (`NATS_PASSWORD`)."""
    nats_token: str = ""
    """Authentication token (`NATS_TOKEN`)."""
    nats_nkey_seed_file: str = ""
    """File holding the NKey seed (`SU...`) of a user the server lists by its public key."""
    nats_creds_file: str = ""
    """A `.creds` file (user JWT and NKey seed) for a server run in operator/JWT mode."""
    nats_tls_ca_file: str = ""
    """CA certificate(s) the server's certificate is checked against (PEM); setting any TLS
    file turns TLS on (as does a `tls://` URL, then with the system's CAs)."""
    nats_tls_cert_file: str = ""
    """Client certificate (PEM) for servers that verify clients; with `nats_tls_key_file`."""
    nats_tls_key_file: str = ""
    """Private key of `nats_tls_cert_file` (PEM)."""
    nats_tls_hostname: str = ""
    """Name the server's certificate must carry when it differs from the URL's host."""
    nats_inbox_prefix: str = ""
    """Prefix of this connection's reply subjects. Empty: `_INBOX_<service>`, so a server
    can let each service subscribe to its own replies only (the shipped configuration does)."""

    def __post_init__(self) -> None:
        ways = [
            name
            for name, given in (
                ("NATS_USER", bool(self.nats_user)),
                ("NATS_TOKEN", bool(self.nats_token)),
                ("NATS_NKEY_SEED_FILE", bool(self.nats_nkey_seed_file)),
                ("NATS_CREDS_FILE", bool(self.nats_creds_file)),
            )
            if given
        ]
        if len(ways) > 1:
            raise ValueError(f"set one way to authenticate to NATS, not {' and '.join(ways)}")
        if self.nats_password and not self.nats_user:
            raise ValueError("NATS_PASSWORD is set without NATS_USER")
        if bool(self.nats_tls_cert_file) != bool(self.nats_tls_key_file):
            raise ValueError("set NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE together")

    @property
    def tls(self) -> bool:
        """Whether any TLS setting is given (a TLS context is built from them)."""
        return bool(self.nats_tls_ca_file or self.nats_tls_cert_file or self.nats_tls_hostname)
