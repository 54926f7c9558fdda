"""Identifiers: a readable type prefix, then a time-ordered, random part.

Ids of the same type sort by creation time (to the millisecond), which gives newest-first
listings without an index.
"""

import hashlib
import re
import secrets
import time

_VALID = re.compile(r"^[a-z]{2,4}_[0-9a-z]{21}$")

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def fixed_width_digits(number: int, width: int, alphabet: str) -> str:
    """`number` written with `alphabet`'s characters as digits, left-padded to `width`."""
    base = len(alphabet)
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, base)
        digits.append(alphabet[remainder])
    return "".join(reversed(digits))


def _base36(number: int, width: int) -> str:
    return fixed_width_digits(number, width, _ALPHABET)


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """A new id such as `run_0mx0vlscmhe76pclymsbg`: 9 time characters, 12 random ones."""
    millis = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{prefix}_{_base36(millis, 9)}{_base36(secrets.randbits(62), 12)}"


def derived_id(prefix: str, now_ms: int, seed: bytes) -> str:
    """A deterministic id for work that must be recognised when it comes again (a tick)."""
    digest = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") >> 2
    return f"{prefix}_{_base36(now_ms, 9)}{_base36(digest, 12)}"


def minted_at_ms(value: str) -> int | None:
    """When an id of `new_id` or `derived_id` was made (milliseconds since the epoch), or None
    for a string of another shape."""
    if _VALID.fullmatch(value) is None:
        return None
    return int(value[-21:-12], 36)


def is_valid_id(value: str) -> bool:
    """Whether `value` has the shape of an id this project made (safe as a KV key part)."""
    return _VALID.fullmatch(value) is not None
