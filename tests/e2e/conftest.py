"""The whole stack (`python -m services`, what `make run` runs) on free ports, for e2e tests."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from services.__main__ import metrics_ports
from shared import nats_server

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Stack:
    url: str
    operator_token: str
    data: Path
    """The stack's DATA_DIR (what `.data` is for `make run`)."""
    nats_url: str
    log: Path
    metrics_ports: dict[str, int] = field(default_factory=dict)
    """`METRICS_PORT` of each NATS-only service (`/metrics`, `/healthz`, `/readyz`)."""

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


def free_port_run(length: int) -> int:
    """The first of `length` consecutive free ports."""
    for _ in range(50):
        first = nats_server.free_port()
        ports = range(first, first + length)
        if first + length < 65536 and all(_is_free(port) for port in ports):
            return first
    raise RuntimeError(f"found no {length} consecutive free ports")


def free_port_outside(taken: Collection[int]) -> int:
    """A free port that is none of `taken`: ports this stack chose but has not bound yet look
    free too (a stack once got its NATS port inside its metrics ports, and its runner's
    `/metrics` answered in NATS's protocol)."""
    for _ in range(50):
        port = nats_server.free_port()
        if port not in taken:
            return port
    raise RuntimeError("found no free port outside the ones taken")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def running_stack(data: Path) -> Iterator[Stack]:
    """`python -m services` (what `make run` runs) on free ports, its data under `data`."""
    log = data / "stack.log"
    # The run of metrics ports first, then the others outside it and each other.
    metrics_count = len(metrics_ports(1)) + 1
    metrics_base = free_port_run(metrics_count)
    taken = set(range(metrics_base, metrics_base + metrics_count))
    http_port = free_port_outside(taken)
    nats_port = free_port_outside(taken | {http_port})
    env = {
        **os.environ,
        "NATS_PORT": str(nats_port),
        "INGRESS_PORT": str(http_port),
        "DATA_DIR": str(data),
        "OPERATOR_TOKEN": "op-e2e-token",
        # Free ports of the stack's own (9101-9104 may be taken); pending counts sampled often.
        "METRICS_PORT_BASE": str(metrics_base),
        "METRICS_SAMPLE_SECONDS": "0.5",
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"the stack exited early:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the stack was not healthy after 60s:\n{log.read_text()}")
            time.sleep(0.2)
        yield Stack(
            url=url,
            operator_token="op-e2e-token",
            data=data,
            nats_url=f"nats://127.0.0.1:{nats_port}",
            log=log,
            metrics_ports=metrics_ports(metrics_base),
        )
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C in `make run` does
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running
