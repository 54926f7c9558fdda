"""Throwaway NATS credentials for tests: a CA with server and client certificates, NKey users,
and an operator/account/user JWT chain with a `.creds` file (signed here, without `nsc`)."""

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


class Authority:
    """A CA that signs server and client certificates into `directory`."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        self._cert = (
            _builder(subject, subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = self.directory / f"{name}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def server(self, name: str) -> Issued:
        """A server certificate for 127.0.0.1 and localhost."""
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        return self._issue(name, ExtendedKeyUsageOID.SERVER_AUTH, names)

    def client(self, name: str) -> Issued:
        return self._issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def _issue(
        self, name: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _builder(_name(name), self._cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        issued = Issued(cert=self.directory / f"{name}.pem", key=self.directory / f"{name}.key")
        issued.cert.write_bytes(
            builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def new_nkey(prefix: int = nkeys.PREFIX_BYTE_USER) -> nkeys.KeyPair:
    """A fresh NKey pair; a user's by default (seed `SU...`, public key `U...`)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def seed_file(pair: nkeys.KeyPair, path: Path) -> Path:
    path.write_bytes(pair.seed + b"\n")
    path.chmod(0o600)
    return path


def public(pair: nkeys.KeyPair) -> str:
    return bytes(pair.public_key).decode()


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) signed with `issuer`'s NKey: what `nsc` writes."""
    body: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": public(issuer),
        "sub": subject,
        "name": name,
        "nats": {**claims, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _segment({"typ": "JWT", "alg": "ed25519-nkey"})
    payload = _segment(body)
    signature = base64.urlsafe_b64encode(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature.decode().rstrip('=')}"


def _segment(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    # JetStream is on for an account only with storage limits.
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass(frozen=True)
class Operator:
    """An operator with a system account and one JetStream account, for a server in operator
    mode with a memory resolver (`server_config`); `creds` writes a user of that account."""

    operator: nkeys.KeyPair
    system: nkeys.KeyPair
    account: nkeys.KeyPair

    @classmethod
    def new(cls) -> "Operator":
        return cls(
            operator=new_nkey(nkeys.PREFIX_BYTE_OPERATOR),
            system=new_nkey(nkeys.PREFIX_BYTE_ACCOUNT),
            account=new_nkey(nkeys.PREFIX_BYTE_ACCOUNT),
        )

    def server_config(self) -> str:
        operator = _jwt(self.operator, public(self.operator), "test", {"type": "operator"})
        system = _jwt(self.operator, public(self.system), "SYS", {"type": "account"})
        account = _jwt(
            self.operator,
            public(self.account),
            "plane",
            {"type": "account", "limits": UNLIMITED_ACCOUNT},
        )
        return "\n".join(
            [
                f'operator: "{operator}"',
                f"system_account: {public(self.system)}",
                "resolver: MEMORY",
                "resolver_preload: {",
                f'  {public(self.system)}: "{system}"',
                f'  {public(self.account)}: "{account}"',
                "}",
                "",
            ]
        )

    def creds(self, name: str, path: Path, *, signer: nkeys.KeyPair | None = None) -> Path:
        """A `.creds` file of a new user of the account (signed by `signer`, by default the
        account's own key)."""
        user = new_nkey()
        token = _jwt(
            signer or self.account,
            public(user),
            name,
            {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
        )
        path.write_text(
            "-----BEGIN NATS USER JWT-----\n"
            f"{token}\n"
            "------END NATS USER JWT------\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{bytes(user.seed).decode()}\n"
            "------END USER NKEY SEED------\n"
        )
        path.chmod(0o600)
        return path
