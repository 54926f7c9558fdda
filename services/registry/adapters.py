"""The registry's NATS side: its records in JetStream KV, one bucket per record type, with
one writer (us)."""

import asyncio
import builtins
import logging
import random
import weakref
from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.audit import AuditEntry
from contracts.registry import AnnouncedFunction
from services.registry.core import AlreadyExists
from shared import metrics
from shared.codec import encode
from shared.kv import read_one, read_prefix
from shared.supervise import retried_within

log = logging.getLogger(__name__)

R = TypeVar("R", bound=msgspec.Struct)

MAX_CAS_ATTEMPTS = 64
"""Enough for every request in flight on one record (a workspace's quota use is one record
that all its creates change), with `CAS_BACKOFF_SECONDS` spreading their retries."""
CAS_BACKOFF_SECONDS = 0.002


class KvRegistryStore:
    """`RegistryStore` over JetStream KV buckets (opened lazily, then kept)."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._buckets: dict[str, KeyValue] = {}
        self._updating: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def _kv(self, bucket: str) -> KeyValue:
        kv = self._buckets.get(bucket)
        if kv is None:
            kv = self._buckets[bucket] = await self._js.key_value(bucket)
        return kv

    async def create(self, bucket: str, key: str, value: msgspec.Struct) -> None:
        kv = await self._kv(bucket)
        try:
            await kv.create(key, encode(value))
        except KeyWrongLastSequenceError as error:
            raise AlreadyExists(key) from error

    async def get(self, bucket: str, key: str, type_: type[R]) -> R | None:
        found = await read_one(await self._kv(bucket), key, type_)
        return found[0] if found is not None else None

    async def list(self, bucket: str, prefix: str, type_: type[R]) -> list[R]:
        return await read_prefix(self._js, bucket, prefix, type_)

    async def update(
        self, bucket: str, key: str, type_: type[R], change: Callable[[R], R]
    ) -> R | None:
        kv = await self._kv(bucket)
        # Updates of one record from this replica take turns: racing each other they would
        # mostly fail their compare-and-swap (a workspace's quota use is one record that all
        # its creates change). Other replicas are still kept out by the compare-and-swap.
        lock = self._updating.setdefault((bucket, key), asyncio.Lock())
        async with lock:
            return await self._swap(kv, bucket, key, type_, change)

    async def _swap(
        self, kv: KeyValue, bucket: str, key: str, type_: type[R], change: Callable[[R], R]
    ) -> R | None:
        for attempt in range(MAX_CAS_ATTEMPTS):
            found = await read_one(kv, key, type_)
            if found is None:
                return None
            current, revision = found
            changed = change(current)
            if changed == current:
                return current
            try:
                await kv.update(key, encode(changed), last=revision)
            except KeyWrongLastSequenceError:
                # Someone wrote in between: read again and re-apply, after a random pause that
                # grows with the conflicts, so writers racing for one record take turns.
                await asyncio.sleep(random.uniform(0, CAS_BACKOFF_SECONDS * min(attempt + 1, 10)))
                continue
            return changed
        raise RuntimeError(f"gave up updating {bucket}/{key} after {MAX_CAS_ATTEMPTS} conflicts")

    async def delete(self, bucket: str, key: str) -> None:
        kv = await self._kv(bucket)
        await kv.delete(key)

    async def put(self, bucket: str, key: str, value: msgspec.Struct) -> None:
        kv = await self._kv(bucket)
        await kv.put(key, encode(value))

    async def list_all(self, bucket: str) -> builtins.list[AnnouncedFunction]:
        return await read_prefix(self._js, bucket, None, AnnouncedFunction)


AUDIT_PUBLISH_BUDGET = 10.0
"""Seconds an audit entry's publish is retried (through a JetStream leader election, 5-7 s)."""


class JetStreamAuditLog:
    """`AuditLog` over the `AUDIT` stream: one message per entry, its id as `Nats-Msg-Id`, so
    a publish retried after a lost acknowledgement stores the entry once."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def record(self, entry: AuditEntry) -> None:
        subject = subjects.audit_entry(
            entry.workspace_id, entry.action, entry.resource_id, entry.actor
        )
        payload = encode(entry)

        async def publish() -> None:
            await self._js.publish(subject, payload, headers={"Nats-Msg-Id": entry.id})

        try:
            await retried_within(f"audit entry {entry.id}", publish, AUDIT_PUBLISH_BUDGET)
        except Exception:
            # The change is stored and is answered as done: failing the request would make the
            # caller believe it was not (and redo it). The loss is logged, with no secret in it.
            metrics.AUDIT_ENTRIES_LOST.inc()
            log.exception(
                "lost the audit entry %s (%s of %s %s by %s)",
                entry.id,
                entry.action,
                entry.resource_type,
                entry.resource_id,
                entry.actor,
            )
