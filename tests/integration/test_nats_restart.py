"""Followers of registry state keep following across a restart of the NATS server.

nats-py watches can go silent after a server restart without ending (nats.py issue 584 and
friends); these tests restart a server of their own, so the shared session server is untouched.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from shared import broker, nats_server
from shared.kv_mirror import KvMirror
from shared.supervise import supervised


class RestartableServer:
    def __init__(self, store: Path) -> None:
        self.port = nats_server.free_port()
        self.store = store
        self.process = nats_server.start(self.port, store)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def restart(self) -> None:
        self.stop()
        self.process = nats_server.start(self.port, self.store)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RestartableServer]:
    running = RestartableServer(tmp_path / "nats")
    yield running
    running.stop()


@pytest.fixture
async def client(server: RestartableServer) -> AsyncIterator[Client]:
    nc = await broker.connect(server.url, "restart-test")
    yield nc
    await nc.close()


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.05)


async def test_a_mirror_sees_writes_made_after_the_server_restarted(
    server: RestartableServer, client: Client
) -> None:
    js = client.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="restart_test", history=1))
    await kv.put("before", b'"one"')
    mirror: KvMirror[str] = KvMirror(js, "restart_test", str, stall_check=0.3)
    follower = asyncio.create_task(supervised("test mirror", mirror.follow))
    try:
        await eventually(lambda: mirror.get("before") == "one")

        await asyncio.to_thread(server.restart)
        await eventually(lambda: client.is_connected)
        await kv.put("after", b'"two"')

        await eventually(lambda: mirror.get("after") == "two")
        assert await mirror.catch_up(timeout=5)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
