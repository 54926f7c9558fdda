"""`python -m bench.forged_keys` (`make bench-flood`): valid traffic while forged keys flood in.

A well-formed key is easy to forge (the checksum is public), and the ingress cannot tell it from
a key created a moment ago without asking. This starts NATS, the registry and the ingress, sets
up a flow and its API trigger, then measures the valid traffic (`POST /trigger/{flow_id}`,
`Prefer: respond-async`, from `bench.load` in its own process) undisturbed, and again while
another process sends well-formed forged keys to the same route at a fixed rate (a new key for
every request, from one address), alternately for `--rounds` rounds; then the ingress's CPU per
forged key and per valid start (less noisy than a rate on a shared machine, and what a flood
takes from valid traffic on a busy ingress). With `--unprotected` the same is measured on an
ingress with the failure limits and the unknown-key cache turned off, for comparison. It
measures, it does not assert: the exit code is non-zero only when the stack could not start.

`python -m bench.forged_keys flood --port P --path /trigger/F --rate 850 --seconds 10` is the
flood alone (it prints one JSON line: the rate reached and the statuses seen).
"""

import argparse
import asyncio
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench import generators
from bench.generators import Load, Target
from bench.processes import Server, adopt, start_module, stop_all, wait_until
from bench.trigger_api import BODY, STARTUP_TIMEOUT, _answers, _set_up_flow
from shared import api_keys, nats_server

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.80
"""Valid traffic under the flood should keep at least this share of its undisturbed rate."""
UNPROTECTED = {
    "AUTH_FAILURES_PER_MINUTE": "0",
    "KEY_FAILURES_PER_MINUTE": "0",
    "UNKNOWN_KEY_SECONDS": "0",
}
"""An ingress without the limits or the cache: every forged key is looked up."""


# --- the flood ----------------------------------------------------------------------------


def _request(port: int, path: str, secret: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _flood_connection(
    port: int,
    path: str,
    interval: float,
    end_at: float,
    statuses: Counter[str],
    requests: Iterator[bytes],
) -> None:
    """One keep-alive connection sending a forged key every `interval` seconds (never faster
    than the answers come; late, it does not burst to catch up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    next_at = time.monotonic()
    try:
        while time.monotonic() < end_at:
            writer.write(next(requests))
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            statuses[head[9:12].decode()] += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()
    finally:
        writer.close()


async def flood(port: int, path: str, rate: float, seconds: float, connections: int) -> dict:
    # Every key is made before the flood starts, so the flood's own CPU stays small on a
    # machine it shares with the ingress.
    requests = iter(
        [_request(port, path, api_keys.generate()) for _ in range(int(rate * seconds * 1.2) + 100)]
    )
    print("ready", flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    statuses: Counter[str] = Counter()
    began = time.monotonic()
    end_at = began + seconds
    await asyncio.gather(
        *(
            _flood_connection(port, path, connections / rate, end_at, statuses, requests)
            for _ in range(connections)
        ),
        return_exceptions=True,
    )
    sent, elapsed = sum(statuses.values()), time.monotonic() - began
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "rate": sent / elapsed,
        "statuses": dict(statuses),
        "cpu_share": (usage.ru_utime + usage.ru_stime - cpu_before) / elapsed,
    }


# --- the experiment -----------------------------------------------------------------------


def start_stack(
    work_dir: Path, servers: list[Server], extra: dict[str, str]
) -> tuple[int, str, str]:
    """NATS, the registry and the ingress (with `extra` settings); the ingress port, an admin
    key's secret and a flow set up with its API trigger."""
    nats_port = nats_server.free_port()
    log = work_dir / "nats-server.log"
    nats = nats_server.start(nats_port, work_dir / "nats", log, new_session=True)
    servers.append(adopt("nats", nats, log))
    environment = {"NATS_URL": f"nats://127.0.0.1:{nats_port}", "LOG_LEVEL": "WARNING"}
    servers.append(start_module("registry", "services.registry", environment, work_dir, REPO))
    port, token = nats_server.free_port(), f"op_{secrets.token_urlsafe(18)}"
    ingress_environment = {
        **environment,
        "INGRESS_PORT": str(port),
        "OPERATOR_TOKEN": token,
        **extra,
    }
    servers.append(start_module("ingress", "services.ingress", ingress_environment, work_dir, REPO))
    api = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: _answers("GET", f"{api}/health", 200), servers, "the ingress", STARTUP_TIMEOUT
    )
    secret, flow_id = _set_up_flow(api, token, servers)
    return port, secret, flow_id


def _flood_process(
    port: int, path: str, rate: float, seconds: float, nice: int = 0
) -> subprocess.Popen[str]:
    """A flood in its own process (at `nice`), at full rate when this returns."""
    flooding = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.forged_keys",
            "flood",
            f"--port={port}",
            f"--path={path}",
            f"--rate={rate}",
            f"--seconds={seconds}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )
    assert flooding.stdout is not None
    flooding.stdout.readline()  # "ready": its keys are made
    time.sleep(0.5)
    return flooding


def _report(flooding: subprocess.Popen[str]) -> dict:
    """Wait for a flood process to end; what it reports."""
    out, _ = flooding.communicate(timeout=120)
    report: dict = json.loads(out.strip().splitlines()[-1])
    return report


def experiment(args: argparse.Namespace, name: str, extra: dict[str, str]) -> list[str]:
    servers: list[Server] = []
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as folder:
        try:
            port, secret, flow_id = start_stack(Path(folder), servers, extra)
            path = f"/trigger/{flow_id}"
            valid = Target(
                name="valid",
                port=port,
                path=path,
                body=BODY,
                headers={
                    "Authorization": f"Bearer {secret}",
                    "Prefer": "respond-async",
                },
            )
            load = Load(connections=args.connections, warmup=args.warmup, duration=args.duration)
            ingress = next(server for server in servers if server.name == "ingress")
            seconds = args.warmup + args.duration + 1
            alone_total = under_total = 0.0
            ratios: list[float] = []
            for round_ in range(args.rounds):
                # Alternated, so that the machine's other load weighs on both alike.
                alone = generators.run("python", valid, load, Path(folder))
                flooding = _flood_process(port, path, args.rate, seconds, args.flood_nice)
                under = generators.run("python", valid, load, Path(folder))
                report = _report(flooding)
                alone_total, under_total = alone_total + alone.rps, under_total + under.rps
                ratio = under.rps / alone.rps if alone.rps else 0.0
                ratios.append(ratio)
                lines.append(
                    f"{name} round {round_ + 1}: valid {alone.rps:,.0f} req/s alone "
                    f"(p99 {alone.p99_ms:.1f} ms), {under.rps:,.0f} req/s under a flood of "
                    f"{report['rate']:,.0f} forged keys/s (p99 {under.p99_ms:.1f} ms): "
                    f"{ratio:.2f} of undisturbed; flood answers {report['statuses']}, its "
                    f"client's CPU {report['cpu_share']:.0%} of a core; valid errors "
                    f"{alone.errors} / {under.errors}"
                )
                print(lines[-1], flush=True)
            ratio = under_total / alone_total if alone_total else 0.0
            lines.append(
                f"{name}: over {args.rounds} rounds, valid traffic under the flood is {ratio:.2f} "
                f"of undisturbed in all, {statistics.median(ratios):.2f} the median round "
                f"(target >= {TARGET:.2f})"
            )
            # What one forged key costs the ingress, the flood alone (CPU: less noisy than a
            # rate on a shared machine).
            cpu_before = ingress.cpu_seconds()
            report = _report(_flood_process(port, path, args.rate, args.duration, args.flood_nice))
            cpu = ingress.cpu_seconds() - cpu_before
            forged = sum(report["statuses"].values())
            cpu_before = ingress.cpu_seconds()
            valid_alone = generators.run("python", valid, load, Path(folder))
            valid_cpu = ingress.cpu_seconds() - cpu_before
            valid_count = valid_alone.rps * (args.warmup + args.duration)
            lines.append(
                f"{name}: ingress CPU per forged key {cpu / max(forged, 1) * 1e6:.0f} us "
                f"({forged} sent, answers {report['statuses']}), per valid start "
                f"{valid_cpu / max(valid_count, 1) * 1e6:.0f} us"
            )
            print(lines[-1], flush=True)
        finally:
            stop_all(servers)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.forged_keys", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command")
    flood_parser = sub.add_parser("flood", help="send forged keys at a fixed rate")
    flood_parser.add_argument("--port", type=int, required=True)
    flood_parser.add_argument("--path", required=True)
    flood_parser.add_argument("--rate", type=float, default=850.0)
    flood_parser.add_argument("--seconds", type=float, default=10.0)
    flood_parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=850.0, help="forged keys a second")
    parser.add_argument("--connections", type=int, default=8, help="valid traffic's connections")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each kind")
    parser.add_argument(
        "--flood-nice",
        type=int,
        default=0,
        help="niceness of the flood's process (19: it gets only the CPU nothing else wants)",
    )
    parser.add_argument(
        "--unprotected", action="store_true", help="also measure with the limits turned off"
    )
    args = parser.parse_args(argv)
    if args.command == "flood":
        report = asyncio.run(flood(args.port, args.path, args.rate, args.seconds, args.connections))
        print(json.dumps(report))
        return 0
    try:
        lines = experiment(args, "protected", {})
        if args.unprotected:
            lines += experiment(args, "unprotected", UNPROTECTED)
    except RuntimeError as error:
        print(f"the stack could not start: {error}", file=sys.stderr)
        return 2
    print("\n".join(["", *lines]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
