"""Service processes a test started: stopped as an orchestrator would (SIGTERM, then SIGKILL)."""

import subprocess
from collections.abc import Iterable


def stop_processes(processes: Iterable["subprocess.Popen[bytes]"], grace: float = 15.0) -> None:
    """SIGTERM every process still running, then wait up to `grace` seconds for each (they
    drain side by side), killing those that outlast it."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
