"""Fakes for unit tests: in-memory stores that behave like JetStream KV (the registry's, the
runner's runs and slots), recording publishers and messages, a clock."""

import asyncio
import builtins
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import msgspec

from contracts.registry import AnnouncedFunction, Flow, OverlapPolicy
from contracts.runs import Run, RunSlots
from services.registry.core import AlreadyExists
from services.runner.core import Decision, decide_concurrency, decide_overlap, without
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
    here too; `list` filters with the same `<prefix>.>` subject filter the KV watch uses. Every
    call yields to the event loop first, as a network round trip would, so concurrent requests
    interleave between calls; `update` alone reads and writes in one step (compare-and-swap).
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
        await asyncio.sleep(0)
        records = self.buckets.setdefault(bucket, {})
        if _check_key(key) in records:
            raise AlreadyExists(key)
        records[key] = encode(value)
        self.writes += 1

    async def get(self, bucket: str, key: str, type_: type[R]) -> R | None:
        await asyncio.sleep(0)
        data = self.buckets.get(bucket, {}).get(_check_key(key))
        if data is None:
            return None
        value: R = decode(data, type_)
        return value

    async def list(self, bucket: str, prefix: str, type_: type[R]) -> list[R]:
        await asyncio.sleep(0)
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
        await asyncio.sleep(0)
        self.buckets.get(bucket, {}).pop(_check_key(key), None)
        self.writes += 1

    async def put(self, bucket: str, key: str, value: msgspec.Struct) -> None:
        await asyncio.sleep(0)
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


# --- The runner's core ----------------------------------------------------------------------


class InMemoryRunStore:
    """`RunStore` over a dictionary of encoded records with revisions, like the `runs` bucket:
    `create` fails when the key exists, `swap` only over the current revision."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[bytes, int]] = {}
        self.revision = 0
        self.writes = 0

    def get(self, key: str) -> Run | None:
        """The stored record, for assertions."""
        found = self.records.get(key)
        return decode(found[0], Run) if found is not None else None

    async def read(self, key: str) -> tuple[Run, int] | None:
        found = self.records.get(_check_key(key))  # a wildcard key fails, as in KV
        return (decode(found[0], Run), found[1]) if found is not None else None

    async def create(self, key: str, run: Run, value: bytes | None = None) -> int | None:
        if key in self.records:
            return None
        return self._write(key, value or encode(run))

    async def swap(
        self, key: str, run: Run, revision: int, value: bytes | None = None
    ) -> tuple[int | None, Run | None]:
        found = self.records.get(key)
        if found is None or found[1] != revision:
            return None, decode(found[0], Run) if found is not None else None
        return self._write(key, value or encode(run)), None

    def _write(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.writes += 1
        self.records[_check_key(key)] = (value, self.revision)
        return self.revision


class FlakyRunStore(InMemoryRunStore):
    """`InMemoryRunStore` whose next `failures` writes raise, as writes do while NATS is down or
    electing a leader. With `landed`, a failing write is stored first and only its answer is
    lost (the server took it, the connection dropped before the reply)."""

    def __init__(self, failures: int = 0, *, landed: bool = False) -> None:
        super().__init__()
        self.failures = failures
        self.landed = landed
        self.failed = 0

    async def create(self, key: str, run: Run, value: bytes | None = None) -> int | None:
        if self.failures:
            if self.landed:
                await super().create(key, run, value)
            self._fail()
        return await super().create(key, run, value)

    async def swap(
        self, key: str, run: Run, revision: int, value: bytes | None = None
    ) -> tuple[int | None, Run | None]:
        if self.failures:
            if self.landed:
                await super().swap(key, run, revision, value)
            self._fail()
        return await super().swap(key, run, revision, value)

    def _fail(self) -> None:
        self.failures -= 1
        self.failed += 1
        raise ConnectionError("no answer from NATS")


class RecordingEvents:
    """`RunEvents` that keeps every published run (and checks a given value is the run)."""

    def __init__(self) -> None:
        self.published: list[Run] = []

    def publish(self, run: Run, value: bytes | None = None) -> None:
        assert value is None or decode(value, Run) == run
        self.published.append(run)

    def statuses(self, run_id: str) -> list[str]:
        return [run.status for run in self.published if run.id == run_id]


class InMemoryAdmission:
    """`Admission` over dictionaries of `RunSlots`, deciding as the real one does (with the
    core's `decide_overlap` and `decide_concurrency`), without conflicts to retry."""

    def __init__(self) -> None:
        self.slots: dict[str, RunSlots] = {}

    async def admit(
        self,
        workspace_id: str,
        run_id: str,
        flow: Flow,
        trigger_id: str | None,
        policy: OverlapPolicy,
    ) -> Decision:
        if trigger_id is not None and policy != "allow":
            key = f"trigger.{workspace_id}.{trigger_id}"
            decision = decide_overlap(self.slots.get(key, RunSlots()), run_id, policy, trigger_id)
            self.slots[key] = decision.slots
            if decision.verdict != "admitted":
                return decision
        if flow.concurrency is not None:
            key = f"flow.{workspace_id}.{flow.id}"
            decision = decide_concurrency(self.slots.get(key, RunSlots()), run_id, flow.concurrency)
            self.slots[key] = decision.slots
            return decision
        return Decision("admitted", RunSlots())

    async def release(
        self, workspace_id: str, run_id: str, flow_id: str, trigger_id: str | None
    ) -> None:
        for key in (f"flow.{workspace_id}.{flow_id}", f"trigger.{workspace_id}.{trigger_id}"):
            if key in self.slots:
                self.slots[key] = without(self.slots[key], run_id)


class RecordingAborts:
    def __init__(self) -> None:
        self.aborted: list[tuple[str, str]] = []

    async def abort(self, workspace_id: str, run_id: str) -> None:
        self.aborted.append((workspace_id, run_id))


class StartMessageLog:
    """A start's message: what the core did with it (`acked`, or the delays it was handed
    back with), and whether it is being kept in progress."""

    def __init__(self) -> None:
        self.acked = 0
        self.naks: list[float | None] = []
        self.kept = False

    async def ack(self) -> None:
        self.acked += 1

    async def nak(self, delay: float | None = None) -> None:
        self.naks.append(delay)

    async def in_progress(self) -> None:
        pass


class KeepAliveLog:
    """`KeepAlive` that only remembers which messages it keeps."""

    def keep(self, msg: StartMessageLog) -> None:
        msg.kept = True

    def release(self, msg: StartMessageLog) -> None:
        msg.kept = False
