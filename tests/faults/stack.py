"""The services as processes (`python -m services.<name>`) against a `Nats` of the drills.

One registry, one ingress, two runners and two schedulers: the smallest stack where losing a
runner or a scheduler leaves another to take over. Settings are the defaults, but for the
waits a drill would otherwise sit out (documented settings, scaled down so the suite stays
short): a runner's ack wait of 3 s, a scheduler's tick ack wait of 2 s and a misfire threshold
of 4 s, so an 8 s pause outlasts them all as a 30 s pause outlasts the defaults; and a tick
batch of 32, so that both schedulers always hold ticks.
"""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared import nats_server
from tests.faults.nats_nodes import Nats

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_TOKEN = "op-fault-drills"
RUNNER_ACK_WAIT = 3.0
TICK_ACK_WAIT = 2.0
MISFIRE_AFTER = 4.0
TICK_BATCH = 32
"""Below a second's 200 ticks, so both schedulers hold some of every second's ticks (with the
default 256 one pull can take them all, and a paused replica may hold none)."""


@dataclass
class Service:
    """One service process; `name` is unique in the stack (`runner-2`), `module` is what runs."""

    name: str
    module: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    runner_ids: list[str] = field(default_factory=list)
    """Every runner id a process of this service announced (a runner gets a new one each
    start), read from its log."""

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.module}"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def is_up(self) -> bool:
        text = self.text()
        if self.module == "runner":
            for runner_id in re.findall(r"runner (rnr_\S+) serves flow functions", text):
                if runner_id not in self.runner_ids:
                    self.runner_ids.append(runner_id)
        return f"{self.module} is up" in text.rsplit("--- started", 1)[-1]


class Stack:
    """The services against `nats`, logs and the execution notes under `root`."""

    def __init__(self, nats: Nats, root: Path) -> None:
        self.nats = nats
        self.root = root
        self.executions = root / "executions.txt"
        self.executions.touch()
        self.http_port = nats_server.free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        env = {
            **os.environ,
            "NATS_URL": nats.url,
            "NATS_REPLICAS": str(len(nats.nodes)),
            "LOG_LEVEL": "INFO",
            "OPERATOR_TOKEN": OPERATOR_TOKEN,
            "INGRESS_PORT": str(self.http_port),
            "RUNNER_FLOWS": "tests.faults.flows",
            "RUNNER_ACK_WAIT": str(RUNNER_ACK_WAIT),
            "RUNNER_STOP_GRACE": "1",
            "FAULT_EXECUTIONS": str(self.executions),
            "TICK_ACK_WAIT": str(TICK_ACK_WAIT),
            "MISFIRE_AFTER": str(MISFIRE_AFTER),
            "TICK_BATCH": str(TICK_BATCH),
            # The drills run 200 every-second schedules in one workspace: 20 times the default.
            "REGISTRY_MAX_SCHEDULE_FIRES_PER_HOUR": "10000000",
        }
        layout = [
            ("registry", "registry"),
            ("ingress", "ingress"),
            ("runner-1", "runner"),
            ("runner-2", "runner"),
            ("scheduler-1", "scheduler"),
            ("scheduler-2", "scheduler"),
        ]
        self.services = {
            name: Service(name, module, env, root / f"{name}.log") for name, module in layout
        }
        self.restarts = 0
        """Service starts after the first: what the drills needed besides their faults."""

    def service(self, name: str) -> Service:
        return self.services[name]

    def of(self, module: str) -> list[Service]:
        return [s for s in self.services.values() if s.module == module]

    def start(self) -> None:
        for service in self.services.values():
            self._start(service)
        self.wait_up(list(self.services.values()))

    def _start(self, service: Service) -> None:
        with open(service.log, "a") as log:
            log.write(f"--- started {time.strftime('%H:%M:%S')}\n")
        service.start()

    def wait_up(self, services: list[Service], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(services)
        while waiting:
            for service in list(waiting):
                if not service.alive:
                    raise AssertionError(f"{service.name} exited:\n{service.text()[-3000:]}")
                if self._healthy() if service.module == "ingress" else service.is_up():
                    waiting.remove(service)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(s.name for s in waiting)
                raise AssertionError(f"not up after {timeout}s: {names}\n{waiting[0].text()}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def healthy(self) -> bool:
        return self._healthy()

    def restart(self, services: list[Service]) -> None:
        """Start `services` again (a drill's kill, or a stack a failed drill left behind)."""
        for service in services:
            service.stop()
            self._start(service)
            self.restarts += 1
        self.wait_up(services)

    def heal(self) -> None:
        """Restart what is not running: the drills' own kills, nothing else."""
        dead = [service for service in self.services.values() if not service.alive]
        if dead:
            self.restart(dead)

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(
            f"--- {name}\n{service.text()[-tail:]}" for name, service in self.services.items()
        )

    def mentions(self, ids: list[str], limit: int = 40, width: int = 400) -> str:
        """The services' log lines that name any of `ids` (the first `limit`, each cut to
        `width` characters): a failed drill's logs go with the machine it ran on, its output
        stays."""
        found = [
            f"{name}: {line[:width]}"
            for name, service in self.services.items()
            if service.log.exists()
            for line in service.text().splitlines()
            if any(item in line for item in ids)
        ]
        more = f"\n({len(found) - limit} more)" if len(found) > limit else ""
        return "\n".join(found[:limit]) + more

    def tracebacks(self) -> dict[str, int]:
        """How many tracebacks each service logged."""
        return {
            name: service.text().count("Traceback")
            for name, service in self.services.items()
            if "Traceback" in service.text()
        }
