"""Followers of registry state keep following across a restart of the NATS server.

nats-py watches can go silent after a server restart without ending (nats.py issue 584 and
friends); these tests restart a server of their own, so the shared session server is untouched.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from shared.kv_mirror import KvMirror
from shared.supervise import supervised
from tests.integration.conftest import RestartableServer


async def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.05)


async def test_a_mirror_sees_writes_made_after_the_server_restarted(
    own_server: RestartableServer, own_client: Client
) -> None:
    js = own_client.jetstream()
    kv = await js.create_key_value(KeyValueConfig(bucket="restart_test", history=1))
    await kv.put("before", b'"one"')
    mirror: KvMirror[str] = KvMirror(js, "restart_test", str, stall_check=0.3)
    follower = asyncio.create_task(supervised("test mirror", mirror.follow))
    try:
        await eventually(lambda: mirror.get("before") == "one")

        await asyncio.to_thread(own_server.restart)
        await eventually(lambda: own_client.is_connected)
        await kv.put("after", b'"two"')

        await eventually(lambda: mirror.get("after") == "two")
        assert await mirror.catch_up(timeout=5)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
