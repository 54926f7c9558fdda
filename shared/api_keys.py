"""Workspace API keys: generated, recognised and digested here, stored only as digests.

A key looks like `tpk_<40 random base62 characters><6-character checksum>`. The prefix makes a
leaked key easy to recognise (and to scan for); the checksum lets the ingress refuse a mistyped
or truncated key without any lookup. Keys carry 238 bits from a CSPRNG, so a plain SHA-256
digest is enough to store them: there is nothing to brute-force.
"""

import hashlib
import secrets
import string
import zlib

from shared.ids import fixed_width_digits

PREFIX = "tpk_"
_ALPHABET = string.digits + string.ascii_letters
_BODY_LENGTH = 40
_CHECKSUM_LENGTH = 6
LENGTH = len(PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH
SHOWN_PREFIX_LENGTH = len(PREFIX) + 8
"""How much of a key is kept in the clear to recognise it in a list (`tpk_AbCd1234`)."""


def _base62(number: int, width: int) -> str:
    return fixed_width_digits(number, width, _ALPHABET)


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def generate() -> str:
    """A new secret key."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    return f"{PREFIX}{body}{_checksum(body)}"


def is_well_formed(secret: str) -> bool:
    """Whether `secret` has a key's shape and a matching checksum (says nothing of validity)."""
    if len(secret) != LENGTH or not secret.startswith(PREFIX):
        return False
    body = secret[len(PREFIX) : len(PREFIX) + _BODY_LENGTH]
    return secrets.compare_digest(_checksum(body), secret[-_CHECKSUM_LENGTH:])


def digest(secret: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(secret.encode()).hexdigest()


def shown_prefix(secret: str) -> str:
    return secret[:SHOWN_PREFIX_LENGTH]
