"""`KvMirror` against a real KV bucket of its own: replay, follow, catch up, restart."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from shared.codec import encode
from shared.kv_mirror import KvMirror
from shared.supervise import supervised

DEADLINE = 5.0


class Item(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    size: int = 0


Change = tuple[str, Item | None, Item | None]


@pytest.fixture
def bucket_name() -> str:
    return f"test_mirror_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def bucket(js: JetStreamContext, bucket_name: str) -> AsyncIterator[KeyValue]:
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket_name, history=1))
    yield kv
    await js.delete_key_value(bucket_name)


class Following:
    """A mirror whose `follow` runs under supervision, as the services run it."""

    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self.changes: list[Change] = []
        self.mirror = KvMirror(js, bucket, Item, lambda *change: self.changes.append(change))
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(
            supervised("test mirror", self.mirror.follow, initial_backoff=0.01)
        )

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


@pytest.fixture
async def following(
    bucket: KeyValue, js: JetStreamContext, bucket_name: str
) -> AsyncIterator[Callable[[], Following]]:
    started: list[Following] = []

    def follow() -> Following:
        mirror = Following(js, bucket_name)
        mirror.start()
        started.append(mirror)
        return mirror

    yield follow
    for mirror in started:
        await mirror.stop()


async def ready(mirror: KvMirror[Item]) -> None:
    await asyncio.wait_for(mirror.ready.wait(), DEADLINE)


async def put(kv: KeyValue, key: str, item: Item) -> None:
    await kv.put(key, encode(item))


async def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_mirror_replays_the_existing_values_then_is_ready(
    bucket: KeyValue, following: Callable[[], Following]
) -> None:
    await put(bucket, "ws.a", Item(name="a"))
    await put(bucket, "ws.b", Item(name="b", size=1))
    await put(bucket, "ws.b", Item(name="b", size=2))
    await put(bucket, "ws.gone", Item(name="gone"))
    await bucket.delete("ws.gone")

    mirror = following().mirror
    await ready(mirror)

    assert len(mirror) == 2
    assert mirror.get("ws.a") == Item(name="a")
    assert mirror.get("ws.b") == Item(name="b", size=2)
    assert mirror.get("ws.gone") is None
    assert sorted(item.name for item in mirror.values()) == ["a", "b"]


async def test_a_mirror_of_an_empty_bucket_becomes_ready_and_empty(
    following: Callable[[], Following],
) -> None:
    mirror = following().mirror

    await ready(mirror)

    assert len(mirror) == 0
    assert await mirror.catch_up()


async def test_a_mirror_is_not_ready_and_cannot_catch_up_before_it_follows(
    bucket: KeyValue, js: JetStreamContext, bucket_name: str
) -> None:
    mirror = KvMirror(js, bucket_name, Item)

    assert not mirror.ready.is_set()
    assert not await mirror.catch_up(timeout=0.05)


async def test_a_mirror_follows_puts_and_deletes(
    bucket: KeyValue, following: Callable[[], Following]
) -> None:
    await put(bucket, "ws.a", Item(name="a"))
    mirror = following().mirror
    await ready(mirror)

    await put(bucket, "ws.b", Item(name="b"))
    await put(bucket, "ws.a", Item(name="a", size=5))
    await bucket.delete("ws.b")
    await put(bucket, "ws.c", Item(name="c"))
    await bucket.purge("ws.c")

    assert await mirror.catch_up()
    assert mirror.get("ws.a") == Item(name="a", size=5)
    assert mirror.get("ws.b") is None
    assert mirror.get("ws.c") is None
    assert len(mirror) == 1


async def test_on_change_is_told_the_key_the_old_and_the_new_value(
    bucket: KeyValue, following: Callable[[], Following]
) -> None:
    await put(bucket, "ws.a", Item(name="a"))
    follower = following()
    await ready(follower.mirror)

    await put(bucket, "ws.a", Item(name="a", size=2))
    await put(bucket, "ws.b", Item(name="b"))
    await bucket.delete("ws.a")
    assert await follower.mirror.catch_up()

    assert follower.changes == [
        ("ws.a", None, Item(name="a")),
        ("ws.a", Item(name="a"), Item(name="a", size=2)),
        ("ws.b", None, Item(name="b")),
        ("ws.a", Item(name="a", size=2), None),
    ]


async def test_catch_up_returns_true_once_a_write_made_just_before_is_visible(
    bucket: KeyValue, following: Callable[[], Following]
) -> None:
    mirror = following().mirror
    await ready(mirror)

    for size in range(20):
        await put(bucket, f"ws.k{size}", Item(name="k", size=size))
        assert await mirror.catch_up()
        assert mirror.get(f"ws.k{size}") == Item(name="k", size=size)


async def test_an_undecodable_value_is_skipped_without_stalling_catch_up(
    bucket: KeyValue, following: Callable[[], Following]
) -> None:
    mirror = following().mirror
    await ready(mirror)

    await bucket.put("ws.bad", b"not an item")

    assert await mirror.catch_up()
    assert mirror.get("ws.bad") is None
    await put(bucket, "ws.good", Item(name="good"))
    assert await mirror.catch_up()
    assert mirror.get("ws.good") == Item(name="good")


async def test_a_restarted_follow_ends_with_the_right_contents(
    bucket: KeyValue, following: Callable[[], Following]
) -> None:
    await put(bucket, "ws.kept", Item(name="kept"))
    await put(bucket, "ws.changed", Item(name="changed"))
    await put(bucket, "ws.removed", Item(name="removed"))
    follower = following()
    await ready(follower.mirror)

    await follower.stop()
    await put(bucket, "ws.changed", Item(name="changed", size=2))
    await bucket.delete("ws.removed")
    await put(bucket, "ws.added", Item(name="added"))
    follower.changes.clear()
    follower.start()

    expected = {
        "ws.kept": Item(name="kept"),
        "ws.changed": Item(name="changed", size=2),
        "ws.added": Item(name="added"),
    }
    await eventually(
        lambda: (
            {k: v for k in expected if (v := follower.mirror.get(k)) is not None} == expected
            and follower.mirror.get("ws.removed") is None
        ),
        "the restarted mirror to hold the bucket's contents",
    )
    assert len(follower.mirror) == 3
    assert sorted(follower.changes, key=lambda change: change[0]) == [
        ("ws.added", None, Item(name="added")),
        ("ws.changed", Item(name="changed"), Item(name="changed", size=2)),
        ("ws.removed", Item(name="removed"), None),
    ]
    await put(bucket, "ws.after", Item(name="after"))
    assert await follower.mirror.catch_up()
    assert follower.mirror.get("ws.after") == Item(name="after")
