"""A local, read-only mirror of a KV bucket, kept current by a watch.

This is how a service follows state another service owns: the owner writes the bucket, the
follower watches it. The watch replays the current values, then streams every change.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Generic, TypeVar

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from shared import metrics
from shared.codec import decoder
from shared.kv import bucket_stream

log = logging.getLogger(__name__)

V = TypeVar("V")

RECREATED_AFTER = 10.0
"""Seconds a stream may stay behind what a mirror saw (a server still recovering it) before the
mirror takes it for a bucket made anew and starts over."""


class KvMirror(Generic[V]):
    """`key -> decoded value` for one bucket; `ready` is set once the first replay is done."""

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        value_type: type[V],
        on_change: Callable[[str, V | None, V | None], None] | None = None,
        key_of: Callable[[str], str] = str,
        stall_check: float = 2.0,
    ) -> None:
        """Mirror KV bucket `bucket`; `key_of` maps a bucket key to the mirror's key (by
        default the same); every `stall_check` seconds the watch is checked for having stopped
        (see `follow`)."""
        # The context and the stream are kept here, not read off nats-py's KeyValue (whose
        # `_js` and `_stream` are private): the stall check and `catch_up` read the stream.
        self._js = js
        self._bucket = bucket
        self._stream = bucket_stream(bucket)
        self._stall_check = stall_check
        self._received = 0
        """Highest revision the current or an earlier watch delivered (replay included)."""
        self._received_at_last_check = -1
        self._behind_since = 0.0
        """Since when (loop time) the stream has been behind what this mirror saw; 0: it is not."""
        self._key_of = key_of
        self._decoder = decoder(value_type)
        self._values: dict[str, V] = {}
        self._on_change = on_change
        self.ready = asyncio.Event()
        self._revision = 0
        self._advanced = asyncio.Event()
        self._caught_up_at = monotonic()
        """When (`monotonic`) the mirror was last seen holding every write of its bucket."""
        self._lag = metrics.MIRROR_LAG.labels(bucket)

    def get(self, key: str) -> V | None:
        return self._values.get(key)

    def values(self) -> Iterator[V]:
        return iter(list(self._values.values()))

    def __len__(self) -> int:
        return len(self._values)

    async def catch_up(self, timeout: float = 1.0) -> bool:
        """Wait until the mirror has seen every write made to the bucket before this call.

        For the rare path where a miss may only mean "not seen yet" (a key used a moment after
        it was created); the hot path never waits. Returns False on timeout.
        """
        info = await self._js.stream_info(self._stream)
        target = info.state.last_seq
        deadline = asyncio.get_running_loop().time() + timeout
        while self._revision < target or not self.ready.is_set():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            self._advanced.clear()
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def follow(self) -> None:
        """Watch the bucket until the watch ends or stalls (run it under `supervised`).

        A nats-py watch can go silent after a server restart without ending, so the bucket is
        checked every `stall_check` seconds: a write the watch has not delivered and no
        progress since the last check ends this watch, and `supervised` starts a fresh one.
        Each (re)start replays the whole bucket into a fresh table and swaps it in once the
        replay is complete, so readers never see a half-loaded mirror.
        """
        metrics.watch_age(self._bucket, lambda: self._caught_up_at)
        watch = asyncio.create_task(self._watch())
        try:
            while True:
                done, _ = await asyncio.wait({watch}, timeout=self._stall_check)
                if done:
                    watch.result()  # re-raise what ended it
                    return
                if await self._stalled():
                    log.warning("the watch of %s stalled; starting a new one", self._bucket)
                    return
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _stalled(self) -> bool:
        received, before = self._received, self._received_at_last_check
        self._received_at_last_check = received
        info = await self._js.stream_info(self._stream)
        last = info.state.last_seq
        self._note_lag(last, received)
        if last <= received or received != before:
            return False
        # The newest message may be gone (purged markers): then nothing was missed.
        return await self._exists(last)

    def _note_lag(self, last: int, received: int) -> None:
        """Record how far behind its bucket's stream (at `last`) the mirror was (metrics)."""
        self._lag.set(max(0, last - received))
        if last <= received and self.ready.is_set():
            self._caught_up_at = monotonic()

    async def _watch(self) -> None:
        # nats-py can put its end-of-replay marker before the replay (it counts what is pending
        # after delivery has begun), so the replay also waits for the newest write that existed
        # when the watch started.
        info = await self._js.stream_info(self._stream)
        replay_until = info.state.last_seq
        if replay_until < self._received:
            # A stream's last sequence never goes back: a server that restarted and has not
            # recovered the stream yet answers with less than an earlier watch delivered, and
            # a replay up to that would swap a partial table in (an ingress then answered
            # `flow_not_found` for a second). Let `supervised` try again shortly, unless it
            # stays so long that the bucket must have been made anew.
            now = asyncio.get_running_loop().time()
            self._behind_since = self._behind_since or now
            if now - self._behind_since < RECREATED_AFTER:
                raise RuntimeError(
                    f"stream {self._stream} is at {replay_until}, behind the {self._received} "
                    "this mirror has seen: not recovered yet"
                )
            log.warning("stream %s was made anew; mirroring it from the start", self._stream)
            self._received = 0
        self._behind_since = 0.0
        newest_exists: bool | None = None
        kv = await self._js.key_value(self._bucket)
        watcher = await kv.watchall()
        replay: dict[str, V] | None = {}
        replay_revision = 0
        marker_seen = False
        try:
            async for entry in watcher:
                if entry is None:
                    marker_seen = True
                else:
                    self._received = max(self._received, entry.revision)
                    key, value, decoded = self._read(entry)
                    if replay is not None:
                        if decoded:
                            if value is None:
                                replay.pop(key, None)
                            else:
                                replay[key] = value
                        # Counted only once the replay is swapped in, so `catch_up` cannot
                        # report a revision that readers do not see yet.
                        replay_revision = max(replay_revision, entry.revision)
                    else:
                        if decoded:
                            self._apply(key, value)
                        self._revision = max(self._revision, entry.revision)
                        self._advanced.set()
                if replay is None or not marker_seen:
                    continue
                if replay_revision < replay_until and newest_exists is None:
                    newest_exists = await self._exists(replay_until)
                if replay_revision >= replay_until or not newest_exists:
                    self._swap(replay)
                    self._revision = max(self._revision, replay_revision)
                    replay = None
                    self._advanced.set()
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    def _read(self, entry: KeyValue.Entry) -> tuple[str, V | None, bool]:
        """The mirror key, the value (None when deleted), and whether it could be decoded."""
        key = self._key_of(entry.key)
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            return key, None, True
        try:
            return key, self._decoder.decode(entry.value), True
        except msgspec.DecodeError as error:
            log.error("skipping undecodable %s/%s: %s", self._bucket, entry.key, error)
            return key, None, False

    async def _exists(self, sequence: int) -> bool:
        try:
            await self._js.get_msg(self._stream, seq=sequence)
        except NotFoundError:
            return False
        return True

    def _swap(self, fresh: dict[str, V]) -> None:
        old = self._values
        self._values = fresh
        self._caught_up_at = monotonic()
        if self._on_change is not None:
            for key in old.keys() | fresh.keys():
                if old.get(key) != fresh.get(key):
                    self._on_change(key, old.get(key), fresh.get(key))
        self.ready.set()

    def _apply(self, key: str, value: V | None) -> None:
        old = self._values.get(key)
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = value
        if self._on_change is not None:
            self._on_change(key, old, value)
