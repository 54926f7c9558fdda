"""Reading many records of a KV bucket at once."""

import logging
from typing import TypeVar

import msgspec
from nats.js.kv import KeyValue

from shared.codec import decoder

log = logging.getLogger(__name__)

R = TypeVar("R")


async def read_prefix(kv: KeyValue, prefix: str | None, type_: type[R]) -> list[R]:
    """The current value of every key under `prefix.` (None: every key); undecodable values
    are logged and skipped."""
    watcher = await kv.watch(f"{prefix}.>" if prefix else ">", ignore_deletes=True)
    decode = decoder(type_).decode
    records: list[R] = []
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value:
                try:
                    records.append(decode(entry.value))
                except msgspec.DecodeError as error:
                    log.error("skipping undecodable %s: %s", entry.key, error)
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return records
