"""Fakes for unit tests: an in-memory `RegistryStore` that behaves like JetStream KV, a clock."""

import builtins
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import msgspec

from contracts.registry import AnnouncedFunction
from services.registry.core import AlreadyExists
from shared.codec import decode, encode

R = TypeVar("R", bound=msgspec.Struct)

# The key rule of nats-py's KV client: anything else (a `*` or `>` for instance) is refused.
_VALID_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


class InvalidKey(ValueError):
    """What the real store raises (as nats-py's `InvalidKeyError`) for a key KV cannot hold."""


def _check_key(key: str) -> str:
    if not key or key.startswith(".") or key.endswith(".") or not _VALID_KEY.match(key):
        raise InvalidKey(key)
    return key


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` is one or more tokens."""
    wanted = pattern.split(".")
    if ">" in wanted[:-1] or "" in wanted:
        raise ValueError(f"invalid subject filter {pattern!r}")  # as the server refuses it
    tokens = subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return index == len(wanted) - 1 and len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)


class InMemoryRegistryStore:
    """`RegistryStore` over dictionaries of encoded records, with the real store's rules.

    Values are stored as JSON bytes, as in KV, so a record that does not survive encoding fails
    here too; `list` filters with the same `<prefix>.>` subject filter the KV watch uses.
    """

    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, bytes]] = {}
        self.writes = 0

    def raw(self, bucket: str, key: str) -> bytes | None:
        """The stored bytes of one record, for assertions on what is persisted."""
        return self.buckets.get(bucket, {}).get(key)

    def keys(self, bucket: str) -> list[str]:
        return sorted(self.buckets.get(bucket, {}))

    async def create(self, bucket: str, key: str, value: msgspec.Struct) -> None:
        records = self.buckets.setdefault(bucket, {})
        if _check_key(key) in records:
            raise AlreadyExists(key)
        records[key] = encode(value)
        self.writes += 1

    async def get(self, bucket: str, key: str, type_: type[R]) -> R | None:
        data = self.buckets.get(bucket, {}).get(_check_key(key))
        if data is None:
            return None
        value: R = decode(data, type_)
        return value

    async def list(self, bucket: str, prefix: str, type_: type[R]) -> list[R]:
        pattern = f"{prefix}.>"
        return [
            decode(data, type_)
            for key, data in self.buckets.get(bucket, {}).items()
            if subject_matches(pattern, key)
        ]

    async def update(
        self, bucket: str, key: str, type_: type[R], change: Callable[[R], R]
    ) -> R | None:
        current = await self.get(bucket, key, type_)
        if current is None:
            return None
        changed = change(current)
        if changed == current:
            return current
        self.buckets[bucket][key] = encode(changed)
        self.writes += 1
        return changed

    async def delete(self, bucket: str, key: str) -> None:
        self.buckets.get(bucket, {}).pop(_check_key(key), None)
        self.writes += 1

    async def put(self, bucket: str, key: str, value: msgspec.Struct) -> None:
        self.buckets.setdefault(bucket, {})[_check_key(key)] = encode(value)
        self.writes += 1

    async def list_all(self, bucket: str) -> builtins.list[AnnouncedFunction]:
        return [decode(data, AnnouncedFunction) for data in self.buckets.get(bucket, {}).values()]


class FixedClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now
