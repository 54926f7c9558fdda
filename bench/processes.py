"""Server processes of a benchmark: started in their own sessions, logged to files, always stopped.

Each server gets its own process group, so stopping it also stops the worker processes Granian
forks, and nothing else.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from shared import nats_server

STOP_GRACE = 10.0
LOG_TAIL_BYTES = 3000
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Server:
    """A started process, the file its output goes to, and how to stop it."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    def check_running(self) -> None:
        """Raise with the end of the log if the process has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self) -> str:
        try:
            data = self.log.read_bytes()
        except OSError:
            return "(no log)"
        return data[-LOG_TAIL_BYTES:].decode("utf-8", errors="replace")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the live processes of this server's group."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # Fields after the `(command)`, which may itself hold spaces or parentheses.
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue  # the process ended while we looked
            if int(fields[2]) == self.process.pid:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / _CLOCK_TICKS

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


def start_module(
    name: str, module: str, env: Mapping[str, str], log_dir: Path, cwd: Path
) -> Server:
    """`python -m <module>` with `env`, its output in `log_dir/<name>.log`."""
    log = log_dir / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, process, log)


def adopt(name: str, process: subprocess.Popen[bytes], log: Path) -> Server:
    """A process started elsewhere in its own session (such as `nats_server.start`)."""
    return Server(name, process, log)


def start_nats(folder: Path) -> tuple[Server, str]:
    """A nats-server with JetStream on a free port, its store and log in `folder`; its URL."""
    port = nats_server.free_port()
    log = folder / "nats.log"
    process = nats_server.start(port, folder / "nats", log, new_session=True)
    return adopt("nats", process, log), f"nats://127.0.0.1:{port}"


def stop_all(servers: list[Server]) -> None:
    """SIGTERM every group (in reverse start order), wait, then SIGKILL what is left."""
    for server in reversed(servers):
        if server.process.poll() is None:
            server.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for server in reversed(servers):
        try:
            server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        # Granian workers left behind by a parent that died first.
        server.signal_group(signal.SIGKILL)


def wait_until(
    ready: Callable[[], bool], servers: list[Server], what: str, timeout: float = 30.0
) -> None:
    """Poll `ready` until it holds, failing early if a server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for server in servers:
            server.check_running()
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f}s")
