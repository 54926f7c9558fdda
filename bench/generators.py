"""Running one load against one target, with `wrk` when it is installed or `bench.load` otherwise.

Either way the load runs in its own process, with the same connections, warm-up and duration,
and comes back as a `LoadResult`.
"""

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bench.load import LoadResult

SLACK = 30.0
"""Seconds a load process may take beyond its warm-up and duration before it is killed."""
_WRK_RESULT = "BENCH_RESULT "


@dataclass(frozen=True, kw_only=True)
class Target:
    """An HTTP endpoint to load with the same `POST` again and again."""

    name: str
    port: int
    path: str
    body: bytes
    headers: dict[str, str]
    host: str = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class Load:
    """How hard and how long to load a target."""

    connections: int
    warmup: float
    duration: float


def choose(preference: str) -> str:
    """`wrk` or `python`: `auto` takes wrk when it is on PATH."""
    if preference == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if preference == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("--generator wrk: wrk is not on PATH")
    return preference


def run(generator: str, target: Target, load: Load, work_dir: Path) -> LoadResult:
    if generator == "wrk":
        return _run_wrk(target, load, work_dir)
    return _run_python(target, load)


def _run_python(target: Target, load: Load) -> LoadResult:
    command = [
        sys.executable,
        "-m",
        "bench.load",
        f"--host={target.host}",
        f"--port={target.port}",
        f"--path={target.path}",
        f"--body={target.body.decode()}",
        f"--connections={load.connections}",
        f"--warmup={load.warmup}",
        f"--duration={load.duration}",
        *(f"--header={name}: {value}" for name, value in target.headers.items()),
    ]
    output = _check_output(command, load.warmup + load.duration + SLACK)
    return msgspec.json.decode(output.strip().splitlines()[-1], type=LoadResult)


def _lua_string(value: str) -> str:
    """A Lua string literal: printable ASCII as is, every other byte as a decimal escape."""
    safe = (
        chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\{byte:03d}"
        for byte in value.encode()
    )
    return '"' + "".join(safe) + '"'


def wrk_script(target: Target) -> str:
    """A wrk script sending `target`'s POST and printing its result as one JSON line."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {_lua_string(target.body.decode())}",
        'wrk.headers["Content-Type"] = "application/json"',
        *(
            f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
            for name, value in target.headers.items()
        ),
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        f'  io.write("{_WRK_RESULT}", string.format(',
        '    \'{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,\' ..',
        '    \'"p50_us":%f,"p90_us":%f,"p99_us":%f,"max_us":%f}\\n\',',
        "    summary.requests, summary.duration, e.status,",
        "    e.connect + e.read + e.write + e.timeout,",
        "    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def parse_wrk(output: str) -> LoadResult:
    """The `LoadResult` in the line our `done` callback printed."""
    for line in output.splitlines():
        if line.startswith(_WRK_RESULT):
            raw = json.loads(line.removeprefix(_WRK_RESULT))
            break
    else:
        raise RuntimeError(f"wrk printed no result:\n{output}")
    duration = raw["duration_us"] / 1e6
    errors = raw["status_errors"] + raw["socket_errors"]
    ok = max(0, raw["requests"] - raw["status_errors"])
    statuses = {"2xx": ok, "non-2xx": raw["status_errors"]}
    if raw["socket_errors"]:
        statuses["failure"] = raw["socket_errors"]
    return LoadResult(
        requests=ok,
        errors=errors,
        duration=duration,
        rps=ok / duration if duration else 0.0,
        p50_ms=raw["p50_us"] / 1e3,
        p90_ms=raw["p90_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3,
        max_ms=raw["max_us"] / 1e3,
        statuses=statuses,
    )


def _run_wrk(target: Target, load: Load, work_dir: Path) -> LoadResult:
    script = work_dir / f"{target.name.replace(' ', '-')}.lua"
    script.write_text(wrk_script(target))
    url = f"http://{target.host}:{target.port}{target.path}"

    def command(seconds: float) -> list[str]:
        # wrk takes whole seconds; one thread leaves the other core to the servers.
        whole = max(1, math.ceil(seconds))
        return [
            "wrk",
            "-t1",
            f"-c{load.connections}",
            f"-d{whole}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]

    if load.warmup > 0:
        _check_output(command(load.warmup), load.warmup + SLACK)
    return parse_wrk(_check_output(command(load.duration), load.duration + SLACK))


def _check_output(command: list[str], timeout: float) -> str:
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{command[0]} {command[1]} failed ({completed.returncode}):\n{completed.stderr}"
        )
    return completed.stdout
