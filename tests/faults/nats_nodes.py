"""NATS for the fault drills: one node, or a 3-node cluster on loopback, from the pinned binary.

Every node gets its own config file (the production settings: JetStream with
`sync_interval: always`; `cluster { name, listen, routes }` for a cluster) and a monitoring
port, which tells which node holds the services' connections (`/connz`). JetStream state goes
to `/dev/shm` when it exists: the drills kill processes, not machines, and the development
VM's disk makes a write's latency vary tenfold.
"""

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from shared import nats_server

DRILL_CONNECTION = "fault-drill"
"""Name of the drills' own NATS connections (not counted as a service's)."""


@dataclass
class Node:
    """One `nats-server` process with its config, store and log; restartable on its ports."""

    name: str
    port: int
    http_port: int
    route_port: int
    store: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_config(self, peers: list["Node"]) -> None:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "127.0.0.1:{self.port}"',
            f'http: "127.0.0.1:{self.http_port}"',
            "jetstream {",
            f'  store_dir: "{self.store}"',
            "  sync_interval: always",
            "}",
        ]
        if peers:
            routes = ", ".join(f'"nats-route://127.0.0.1:{peer.route_port}"' for peer in peers)
            lines += [
                "cluster {",
                '  name: "faults"',
                f'  listen: "127.0.0.1:{self.route_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [nats_server.binary(), "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            nats_server.wait_for_port(self.port)
        except TimeoutError:
            self.process.kill()
            raise

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Send `signum` and wait for the process to end (SIGKILL when it does not)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def connection_names(self) -> list[str]:
        """Names of the client connections this node holds (its monitoring `/connz`)."""
        url = f"http://127.0.0.1:{self.http_port}/connz?limit=4096"
        with urllib.request.urlopen(url, timeout=2) as answer:
            found = json.load(answer)
        return [str(c.get("name") or "") for c in found.get("connections") or []]


class Nats:
    """`size` nodes (1: a single server; 3: a cluster) under `root`, JetStream in `store`."""

    def __init__(self, root: Path, size: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        shm = Path("/dev/shm")
        self._store_root = Path(
            tempfile.mkdtemp(prefix="faults-js-", dir=shm if shm.is_dir() else root)
        )
        self.nodes = [
            Node(
                name=f"n{index + 1}",
                port=nats_server.free_port(),
                http_port=nats_server.free_port(),
                route_port=nats_server.free_port(),
                store=self._store_root / f"n{index + 1}",
                config=root / f"n{index + 1}.conf",
                log=root / f"n{index + 1}.log",
            )
            for index in range(size)
        ]
        for node in self.nodes:
            node.write_config([peer for peer in self.nodes if peer is not node])

    @property
    def url(self) -> str:
        """`NATS_URL` for the services: every node, comma-separated."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self._store_root, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.name}\n{n.log.read_text(errors='replace')[-3000:]}" for n in self.nodes
        )

    async def connect(self) -> Client:
        """A connection of the drill's own to any node (reconnecting forever, quietly: the
        drills take nodes down on purpose)."""

        async def ignore(error: Exception) -> None:
            pass

        return await nats.connect(
            error_cb=ignore,
            servers=[node.url for node in self.nodes],
            name=DRILL_CONNECTION,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            connect_timeout=2,
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until JetStream answers (`$JS.API.INFO`) and, in a cluster, every stream has all its
        replicas current: a node just restarted has caught up."""
        deadline = time.monotonic() + timeout
        nc = await self.connect()
        try:
            while True:
                try:
                    if await self._all_current(nc):
                        return
                except (NatsTimeoutError, NoRespondersError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"JetStream not ready after {timeout}s\n{self.logs()}")
                await asyncio.sleep(0.25)
        finally:
            await nc.close()

    async def _all_current(self, nc: Client) -> bool:
        if "error" in await api(nc, "$JS.API.INFO"):
            return False
        names = await api(nc, "$JS.API.STREAM.NAMES")
        if "error" in names:
            return False
        for stream in names.get("streams") or []:
            info = await api(nc, f"$JS.API.STREAM.INFO.{stream}")
            cluster = info.get("cluster") or {}
            if "error" in info or (len(self.nodes) > 1 and not cluster.get("leader")):
                return False
            replicas = cluster.get("replicas") or []
            if len(replicas) != len(self.nodes) - 1 and len(self.nodes) > 1:
                return False
            if not all(r.get("current") and not r.get("offline") for r in replicas):
                return False
        return True

    async def stream_leader(self, stream: str) -> Node:
        """The node that leads `stream` (its `cluster.leader`)."""
        nc = await self.connect()
        try:
            info = await api(nc, f"$JS.API.STREAM.INFO.{stream}")
        finally:
            await nc.close()
        return self.node(info["cluster"]["leader"])

    def most_connected(self) -> Node:
        """The running node holding the most service connections."""
        counts = {
            node.name: sum(1 for name in node.connection_names() if name != DRILL_CONNECTION)
            for node in self.nodes
            if node.running
        }
        return self.node(max(counts, key=lambda name: counts[name]))


async def api(nc: Client, subject: str) -> dict[str, Any]:
    """One JetStream API request, its JSON answer (`{"error": ...}` on failure)."""
    answer = await nc.request(subject, b"", timeout=2)
    with contextlib.suppress(ValueError):
        decoded = json.loads(answer.data)
        if isinstance(decoded, dict):
            return decoded
    return {"error": answer.data.decode(errors="replace")}
