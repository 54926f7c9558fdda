"""Integration fixtures: a NATS server of a test's own that it can restart, and a watchdog (a
test still running after `STUCK_AFTER` seconds prints the stack of every asyncio task, which
pytest-timeout's thread dump cannot show)."""

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from shared import broker, nats_server

STUCK_AFTER = 120.0


@pytest.fixture(autouse=True)
async def stuck_tasks_report() -> AsyncIterator[None]:
    async def report() -> None:
        await asyncio.sleep(STUCK_AFTER)
        print(f"--- still running after {STUCK_AFTER:.0f}s; asyncio tasks:", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)

    watchdog = asyncio.create_task(report())
    yield
    watchdog.cancel()


class RestartableServer:
    """A nats-server of one test's own (the session's shared server is never restarted)."""

    def __init__(self, store: Path) -> None:
        self.port = nats_server.free_port()
        self.store = store
        self.process = nats_server.start(self.port, store)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def restart(self) -> None:
        self.stop()
        self.start()

    def start(self) -> None:
        self.process = nats_server.start(self.port, self.store)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RestartableServer]:
    running = RestartableServer(tmp_path / "nats")
    yield running
    running.stop()


@pytest.fixture
async def own_client(own_server: RestartableServer) -> AsyncIterator[Client]:
    nc = await broker.connect(own_server.url, "own-server-test")
    yield nc
    with contextlib.suppress(Exception):  # the test may have left the server stopped
        await nc.close()
