"""Webhook signing secrets: generated, fingerprinted, and sealed at rest with AES-GCM.

HMAC needs the secret itself, so a secret cannot be stored as a digest like an API key. The
registry seals it with `WEBHOOK_SECRET_KEY` before it writes the trigger; the ingress opens it
once when the trigger reaches its directory and keeps the key bytes in memory. The sealed form
is bound to its trigger and secret ids (AES-GCM associated data), so a sealed secret copied
into another trigger record does not open.
"""

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRET_PREFIX = "whsec_"
"""Prefix of the secrets the project generates (the Standard Webhooks form)."""
SECRET_BYTES = 32
MIN_SECRET_LENGTH = 16
"""Shortest secret that may be supplied (GitHub and generic HMAC secrets are free text)."""
MAX_SECRET_LENGTH = 512
SEALED_VERSION = "v1"
NONCE_BYTES = 12
KEY_FILE_NAME = "webhook-secret-key"
"""The file `make run` keeps a generated sealing key in, under its data folder."""


class SealingKeyError(ValueError):
    """`WEBHOOK_SECRET_KEY` holds something that is not a list of 32-byte base64 keys."""


class SealedSecretError(ValueError):
    """A sealed secret that none of the configured keys opens (or not a sealed secret)."""


def generate_secret() -> str:
    """A new secret: `whsec_` and the base64 of 32 random bytes (usable with every scheme)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def generate_sealing_key() -> str:
    """A new value for `WEBHOOK_SECRET_KEY`."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def fingerprint(secret: str) -> str:
    """A short digest that tells secrets apart without revealing them."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`.

    Raises ValueError when the secret is not base64 (such a secret cannot be shared with a
    Standard Webhooks sender, whose libraries decode it the same way)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Unpadded base64 is accepted, as the Standard Webhooks libraries accept it.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(
            "a standard_webhooks secret is `whsec_` followed by base64 (the key bytes)"
        ) from error
    if len(key) < 16:
        raise ValueError("a standard_webhooks secret holds at least 16 bytes of key")
    return key


@dataclass(frozen=True)
class SecretBox:
    """Seals with the first key, opens with any of them (so the sealing key can rotate:
    put the new key first, keep the old one after it until every trigger is re-sealed)."""

    keys: tuple[bytes, ...]

    @classmethod
    def from_setting(cls, value: str) -> "SecretBox | None":
        """The box of a `WEBHOOK_SECRET_KEY` value (comma-separated keys); None when empty."""
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not parts:
            return None
        keys: list[bytes] = []
        for part in parts:
            try:
                key = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
            except (binascii.Error, ValueError) as error:
                raise SealingKeyError(
                    "WEBHOOK_SECRET_KEY holds a key that is not base64"
                ) from error
            if len(key) != 32:
                raise SealingKeyError(
                    f"WEBHOOK_SECRET_KEY keys are 32 bytes in base64 (one had {len(key)}); "
                    'make one with: python3 -c "import base64,os;'
                    'print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'
                )
            keys.append(key)
        return cls(tuple(keys))

    def seal(self, secret: str, bound_to: str) -> str:
        """`secret` encrypted with the first key, bound to `bound_to` (trigger and secret id)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[0]).encrypt(nonce, secret.encode(), bound_to.encode())
        token = base64.urlsafe_b64encode(nonce + sealed).decode()
        return f"{SEALED_VERSION}.{_key_id(self.keys[0])}.{token}"

    def open(self, sealed: str, bound_to: str) -> str:
        """The secret inside `sealed`; raises `SealedSecretError` when no key opens it."""
        version, _, rest = sealed.partition(".")
        key_id, _, token = rest.partition(".")
        if version != SEALED_VERSION or not token:
            raise SealedSecretError("not a sealed webhook secret")
        try:
            raw = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError) as error:
            raise SealedSecretError("not a sealed webhook secret") from error
        for key in _first_by_id(self.keys, key_id):
            try:
                plain = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], bound_to.encode())
            except InvalidTag:
                continue
            return plain.decode()
        raise SealedSecretError(
            f"sealed with a key (id {key_id}) that WEBHOOK_SECRET_KEY does not hold"
        )


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _first_by_id(keys: Sequence[bytes], key_id: str) -> list[bytes]:
    """The keys to try, the one the id names first."""
    return sorted(keys, key=lambda key: _key_id(key) != key_id)


def local_sealing_key(data_dir: Path) -> tuple[str, bool]:
    """The sealing key kept in `data_dir` for local runs, made on first use; whether it was
    made now."""
    path = data_dir / KEY_FILE_NAME
    if path.exists():
        return path.read_text().strip(), False
    key = generate_sealing_key()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key, True
