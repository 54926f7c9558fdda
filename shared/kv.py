"""Reading many records of a KV bucket at once."""

import contextlib
import logging
from typing import TypeVar

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from shared.codec import decoder

log = logging.getLogger(__name__)

R = TypeVar("R")

FETCH_BATCH = 1000
INACTIVE_THRESHOLD = 30.0
"""Seconds after which the server removes a reading consumer this process failed to delete."""


async def read_one(kv: KeyValue, key: str, type_: type[R]) -> tuple[R, int] | None:
    """The value under `key` and its revision; None when the key is missing or deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    value: R = decoder(type_).decode(entry.value)
    return value, entry.revision or 0


async def read_prefix(kv: KeyValue, prefix: str | None, type_: type[R]) -> list[R]:
    """The current value of every key under `prefix.` (None: every key); undecodable values
    are logged and skipped.

    A pull consumer counts what it has to deliver when it is created (one message per key), so
    the read ends exactly after that many. A KV watch cannot be used for this: nats-py marks
    the end of its replay from a count taken after delivery has begun, and under load it marks
    the end before the first entry, so a list comes back empty.
    """
    js, stream = kv._js, kv._stream
    subject = f"$KV.{kv._name}.{prefix}.>" if prefix else f"$KV.{kv._name}.>"
    consumer = await js.add_consumer(
        stream,
        ConsumerConfig(
            filter_subject=subject,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE_THRESHOLD,
            mem_storage=True,
        ),
    )
    decode = decoder(type_).decode
    records: list[R] = []
    remaining = consumer.num_pending or 0
    try:
        if remaining:
            subscription = await js.pull_subscribe_bind(stream=stream, name=consumer.name)
            while remaining > 0:
                for msg in await subscription.fetch(min(remaining, FETCH_BATCH), timeout=5):
                    remaining -= 1
                    if (msg.headers or {}).get(KV_OP) in (KV_DEL, KV_PURGE) or not msg.data:
                        continue
                    try:
                        records.append(decode(msg.data))
                    except msgspec.DecodeError as error:
                        log.error("skipping undecodable %s: %s", msg.subject, error)
            await subscription.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, consumer.name)
    return records
