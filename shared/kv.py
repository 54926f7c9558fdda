"""Reading many records of a KV bucket at once."""

import contextlib
import logging
from typing import TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from shared.codec import decoder
from shared.stream_read import read_subject

log = logging.getLogger(__name__)

R = TypeVar("R")


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


def bucket_stream(bucket: str) -> str:
    """The stream that holds KV bucket `bucket` (JetStream's naming rule)."""
    return f"KV_{bucket}"


async def read_prefix(
    js: JetStreamContext, bucket: str, prefix: str | None, type_: type[R]
) -> list[R]:
    """The current value of every key of `bucket` under `prefix.` (None: every key), read with
    a counted consumer (`read_subject`); undecodable values are logged and skipped."""
    subject = f"$KV.{bucket}.{prefix}.>" if prefix else f"$KV.{bucket}.>"
    decode = decoder(type_).decode
    records: list[R] = []
    reads = read_subject(js, bucket_stream(bucket), subject, last_per_subject=True)
    async with contextlib.aclosing(reads) as batches:
        async for batch in batches:
            for msg in batch:
                if (msg.headers or {}).get(KV_OP) in (KV_DEL, KV_PURGE) or not msg.data:
                    continue
                try:
                    records.append(decode(msg.data))
                except msgspec.DecodeError as error:
                    log.error("skipping undecodable %s: %s", msg.subject, error)
    return records
