"""KvMirror's end of replay, with a watch that marks it too early (as nats-py can under load)."""

import asyncio
from types import SimpleNamespace
from typing import Any

from nats.js.kv import KeyValue

from shared.kv_mirror import KvMirror


class EarlyMarkerWatch:
    """Yields the end-of-replay marker first, then the replay, then blocks like a live watch."""

    def __init__(self, entries: list[KeyValue.Entry]) -> None:
        self._items: list[KeyValue.Entry | None] = [None, *entries]
        self.stopped = False

    def __aiter__(self) -> "EarlyMarkerWatch":
        return self

    async def __anext__(self) -> KeyValue.Entry | None:
        if self._items:
            await asyncio.sleep(0)
            return self._items.pop(0)
        await asyncio.Event().wait()
        raise StopAsyncIteration

    async def stop(self) -> None:
        self.stopped = True


class FakeBucket:
    """Just what KvMirror reads of JetStream for one bucket: the stream and its watch."""

    def __init__(self, values: dict[str, bytes]) -> None:
        self.entries = [
            KeyValue.Entry("fake", key, value, revision, 0, None, None)
            for revision, (key, value) in enumerate(values.items(), start=1)
        ]

    async def stream_info(self, stream: str) -> Any:
        assert stream == "KV_fake"
        return SimpleNamespace(state=SimpleNamespace(last_seq=len(self.entries)))

    async def get_msg(self, stream: str, seq: int) -> Any:
        assert stream == "KV_fake"
        return self.entries[seq - 1]

    async def key_value(self, bucket: str) -> "FakeBucket":
        assert bucket == "fake"
        return self

    async def watchall(self) -> EarlyMarkerWatch:
        return EarlyMarkerWatch(list(self.entries))


async def test_a_mirror_is_ready_only_once_the_replay_has_really_arrived() -> None:
    bucket = FakeBucket({"a": b'"one"', "b": b'"two"', "c": b'"three"'})
    mirror: KvMirror[str] = KvMirror(bucket, "fake", str)  # type: ignore[arg-type]
    follower = asyncio.create_task(mirror.follow())
    try:
        await asyncio.wait_for(mirror.ready.wait(), 5)
        assert {key: mirror.get(key) for key in "abc"} == {"a": "one", "b": "two", "c": "three"}
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_an_empty_bucket_is_ready_at_the_marker() -> None:
    mirror: KvMirror[str] = KvMirror(FakeBucket({}), "fake", str)  # type: ignore[arg-type]
    follower = asyncio.create_task(mirror.follow())
    try:
        await asyncio.wait_for(mirror.ready.wait(), 5)
        assert len(mirror) == 0
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def test_a_new_watch_on_a_stream_not_recovered_yet_keeps_the_table_it_has() -> None:
    bucket = FakeBucket({"a": b'"one"', "b": b'"two"', "c": b'"three"'})
    mirror: KvMirror[str] = KvMirror(bucket, "fake", str)  # type: ignore[arg-type]
    follower = asyncio.create_task(mirror.follow())
    await asyncio.wait_for(mirror.ready.wait(), 5)
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    # The server restarted: until it has recovered the stream it reports none of it.
    recovering = FakeBucket({})

    mirror._js = recovering  # type: ignore[assignment]
    again = asyncio.create_task(mirror.follow())
    done, _ = await asyncio.wait({again}, timeout=1)

    assert done, "the watch gives up at once, for `supervised` to try again"
    assert isinstance(again.exception(), RuntimeError)
    assert {key: mirror.get(key) for key in "abc"} == {"a": "one", "b": "two", "c": "three"}
