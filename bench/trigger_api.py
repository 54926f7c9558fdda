"""`python -m bench.trigger_api` (`make bench`): the API trigger's 202 path next to a bare baseline.

Starts a nats-server, the registry, the ingress and the baseline app (`bench.baseline_app`) on
free ports in a temporary directory, sets up a workspace, a flow and its API trigger over HTTP,
then loads the baseline, the ingress and the baseline again with the same connections, warm-up
and duration, each from a separate load process. The runner is not started: starts pile up in
the work-queue stream, which keeps the CPU for the measured path. It measures, it does not
assert: the exit code is non-zero only when the stack could not start (2) or a run had more than
1% errors (1).
"""

import argparse
import asyncio
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import nats

from bench import generators
from bench.generators import Load, Target
from bench.load import LoadResult
from bench.processes import Server, adopt, start_module, stop_all, wait_until
from contracts import subjects
from contracts.registry import (
    Flow,
    NewApiTrigger,
    NewFlow,
    NewWorkspace,
    PythonFlowSettings,
    Trigger,
    WorkspaceCreated,
)
from shared import nats_server
from shared.codec import decode, encode

REPO = Path(__file__).resolve().parent.parent
BODY = b'{"n":1}'
JSON = {"Content-Type": "application/json"}
MAX_ERROR_RATE = 0.01
THROUGHPUT_TARGET = 0.80
"""The ingress should keep at least this share of the baseline's throughput."""
P99_TARGET = 2.00
"""The ingress's p99 latency should stay within this multiple of the baseline's."""
STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Stack:
    """The two targets and the server processes behind them."""

    ingress: Target
    ingress_server: Server
    baseline: Target
    baseline_server: Server
    nats_url: str = ""
    secret: str = ""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.trigger_api", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--workers", type=int, default=1, help="Granian workers of each server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--quick", action="store_true", help="1 s warm-up, 3 s measured (smoke)")
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator: wrk when on PATH (auto), or the built-in bench.load",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.duration = 1.0, 3.0
    if args.workers < 1 or args.connections < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("workers and connections must be >= 1, duration > 0, warmup >= 0")
    return args


def _answers(method: str, url: str, status: int, content: bytes | None = None) -> bool:
    """Whether `url` answers `status` right now (False while nothing listens)."""
    try:
        return httpx.request(method, url, content=content, timeout=2.0).status_code == status
    except httpx.HTTPError:
        return False


def start_stack(workers: int, work_dir: Path, servers: list[Server]) -> Stack:
    """Start NATS, the registry, the ingress and the baseline; set up a flow to trigger."""
    nats_port = nats_server.free_port()
    nats_log = work_dir / "nats-server.log"
    nats = nats_server.start(nats_port, work_dir / "nats", nats_log, new_session=True)
    servers.append(adopt("nats-server", nats, nats_log))
    nats_url = f"nats://127.0.0.1:{nats_port}"
    ingress_port, baseline_port = nats_server.free_port(), nats_server.free_port()
    token = f"op_{secrets.token_urlsafe(18)}"
    environment = {"NATS_URL": nats_url, "LOG_LEVEL": "WARNING"}
    servers.append(start_module("registry", "services.registry", environment, work_dir, REPO))
    ingress_environment = {
        **environment,
        "INGRESS_PORT": str(ingress_port),
        "INGRESS_WORKERS": str(workers),
        "OPERATOR_TOKEN": token,
    }
    ingress = start_module("ingress", "services.ingress", ingress_environment, work_dir, REPO)
    servers.append(ingress)
    baseline_environment = {
        **environment,
        "BASELINE_PORT": str(baseline_port),
        "BASELINE_WORKERS": str(workers),
    }
    baseline = start_module("baseline", "bench.baseline_app", baseline_environment, work_dir, REPO)
    servers.append(baseline)

    api = f"http://127.0.0.1:{ingress_port}"
    wait_until(
        lambda: _answers("GET", f"{api}/health", 200),
        servers,
        "the ingress",
        STARTUP_TIMEOUT,
    )
    baseline_url = f"http://127.0.0.1:{baseline_port}/baseline"
    wait_until(
        lambda: _answers("POST", baseline_url, 202, BODY),
        servers,
        "the baseline",
        STARTUP_TIMEOUT,
    )
    secret, flow_id = _set_up_flow(api, token, servers)
    return Stack(
        ingress=Target(
            name="ingress",
            port=ingress_port,
            path=f"/trigger/{flow_id}",
            body=BODY,
            # The asynchronous 202 path: the synchronous one is measured by `light_load`.
            headers={"Authorization": f"Bearer {secret}", "Prefer": "respond-async"},
        ),
        ingress_server=ingress,
        baseline=Target(
            name="baseline", port=baseline_port, path="/baseline", body=BODY, headers={}
        ),
        baseline_server=baseline,
        nats_url=nats_url,
        secret=secret,
    )


def _set_up_flow(api: str, operator_token: str, servers: list[Server]) -> tuple[str, str]:
    """A workspace, a flow and its API trigger; returns the admin key's secret and the flow id."""
    with httpx.Client(base_url=api, timeout=10.0) as client:
        created: list[WorkspaceCreated] = []

        def workspace_created() -> bool:
            # The registry may still be connecting: the ingress answers 503 until it does.
            response = client.post(
                "/v1/workspaces",
                content=encode(NewWorkspace(name="bench")),
                headers={"Authorization": f"Bearer {operator_token}", **JSON},
            )
            if response.status_code == 503:
                return False
            created.append(_expect(response, WorkspaceCreated))
            return True

        wait_until(workspace_created, servers, "the registry", STARTUP_TIMEOUT)
        secret = created[0].admin_key.secret
        admin = {"Authorization": f"Bearer {secret}", **JSON}
        new_flow = NewFlow(name="bench", settings=PythonFlowSettings(function="echo"))
        flow = _expect(client.post("/v1/flows", content=encode(new_flow), headers=admin), Flow)
        new_trigger = NewApiTrigger(flow_id=flow.id)
        _expect(client.post("/v1/triggers", content=encode(new_trigger), headers=admin), Trigger)
        accepted = client.post(
            f"/trigger/{flow.id}", content=BODY, headers={**admin, "Prefer": "respond-async"}
        )
        if accepted.status_code != 202:
            raise RuntimeError(
                f"POST /trigger/{flow.id} answered {accepted.status_code}, not 202: {accepted.text}"
            )
    return secret, flow.id


T = TypeVar("T")


def _expect(response: httpx.Response, type_: type[T]) -> T:
    """The decoded body of a successful answer, or an error naming the request."""
    if not response.is_success:
        request = response.request
        raise RuntimeError(
            f"{request.method} {request.url.path} answered {response.status_code}: {response.text}"
        )
    body: T = decode(response.content, type_)
    return body


@dataclass(frozen=True)
class Measurement:
    """One load run and the CPU its server spent on it."""

    name: str
    result: LoadResult
    cpu_us_per_request: float
    """Server CPU (all its processes) per answered request, over warm-up and window alike."""


def measure(
    name: str, generator: str, target: Target, server: Server, load: Load, work_dir: Path
) -> Measurement:
    cpu_before, began = server.cpu_seconds(), time.monotonic()
    result = generators.run(generator, target, load, work_dir)
    cpu, elapsed = server.cpu_seconds() - cpu_before, time.monotonic() - began
    # The warm-up runs at about the window's rate, so rate x elapsed estimates every answer.
    answered = result.rps * elapsed
    return Measurement(name, result, cpu / answered * 1e6 if answered else 0.0)


HEADER = f"{'target':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'cpu us/req':>11}"


def _row(name: str, rps: float, p50: float, p99: float, errors: str, cpu_us: float) -> str:
    return f"{name:<14} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {errors:>7} {cpu_us:>11.0f}"


def row(measurement: Measurement) -> str:
    result = measurement.result
    return _row(
        measurement.name,
        result.rps,
        result.p50_ms,
        result.p99_ms,
        str(result.errors),
        measurement.cpu_us_per_request,
    )


def summary(measurements: list[Measurement]) -> str:
    """The rows after the table: the baseline mean, its drift and the ingress's ratios."""
    ingress = next(m for m in measurements if m.name == "ingress")
    baselines = [m for m in measurements if m.name.startswith("baseline")]

    def mean(value: Callable[[Measurement], float]) -> float:
        return sum(value(m) for m in baselines) / len(baselines)

    rps, p99 = mean(lambda m: m.result.rps), mean(lambda m: m.result.p99_ms)
    cpu = mean(lambda m: m.cpu_us_per_request)
    lines = [_row("baseline mean", rps, mean(lambda m: m.result.p50_ms), p99, "", cpu)]
    if len(baselines) == 2 and baselines[0].result.rps:
        drift = baselines[1].result.rps / baselines[0].result.rps - 1
        lines.append(f"baseline drift between its two runs: {drift:+.1%}")
    lines.append(
        f"ratio: throughput ingress/baseline = {_ratio(ingress.result.rps, rps):.2f} "
        f"(target >= {THROUGHPUT_TARGET:.2f}), "
        f"p99 ingress/baseline = {_ratio(ingress.result.p99_ms, p99):.2f} "
        f"(target <= {P99_TARGET:.2f})"
    )
    lines.append(
        f"server CPU per request ingress/baseline = {_ratio(ingress.cpu_us_per_request, cpu):.2f}"
    )
    return "\n".join(lines)


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("inf")


LIGHT_REQUESTS = 300


async def _purge_starts(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    await nc.jetstream().purge_stream(subjects.FLOW_STARTS_STREAM)
    await nc.drain()


def light_load(api: str, secret: str) -> list[str]:
    """One client, one request at a time, with a runner: the synchronous `echo` round trip
    next to the asynchronous 202, and POST /trigger → the flow's first line."""
    lines = []
    with httpx.Client(base_url=api, timeout=30.0) as client:
        admin = {"Authorization": f"Bearer {secret}", **JSON}

        def flow_with_trigger(function: str) -> str:
            new_flow = NewFlow(name=function, settings=PythonFlowSettings(function=function))
            flow = _expect(client.post("/v1/flows", content=encode(new_flow), headers=admin), Flow)
            new_trigger = NewApiTrigger(flow_id=flow.id)
            _expect(
                client.post("/v1/triggers", content=encode(new_trigger), headers=admin), Trigger
            )
            return flow.id

        echo, first_line = flow_with_trigger("echo"), flow_with_trigger("first_line")

        def series(
            flow_id: str, prefer: str, expected: int
        ) -> tuple[list[float], float, list[float]]:
            latencies, first_lines = [], []
            headers = {**admin, "Prefer": prefer}
            for _ in range(20):  # warm-up
                client.post(f"/trigger/{flow_id}", content=BODY, headers=headers)
            began = time.monotonic()
            for _ in range(LIGHT_REQUESTS):
                sent_wall, sent = time.time(), time.perf_counter()
                response = client.post(f"/trigger/{flow_id}", content=BODY, headers=headers)
                latencies.append((time.perf_counter() - sent) * 1000)
                if response.status_code != expected:
                    raise RuntimeError(f"{prefer}: {response.status_code} {response.text}")
                if flow_id == first_line:
                    first_lines.append((response.json()["result"] - sent_wall) * 1000)
            return latencies, LIGHT_REQUESTS / (time.monotonic() - began), first_lines

        def percentiles(values: list[float]) -> tuple[float, float]:
            ordered = sorted(values)
            return ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99) - 1]

        for name, flow_id, prefer, expected in [
            ("async 202", echo, "respond-async", 202),
            ("sync echo 200", echo, "wait=10", 200),
        ]:
            latencies, rate, _ = series(flow_id, prefer, expected)
            p50, p99 = percentiles(latencies)
            lines.append(_row(name, rate, p50, p99, "0", 0))
        _, _, first_lines = series(first_line, "wait=10", 200)
        p50, p99 = percentiles(first_lines)
        lines.append(
            f"POST /trigger -> flow's first line: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"({LIGHT_REQUESTS} requests, one at a time)"
        )
    return lines


def _stop_on_sigterm(signum: int, _: object) -> None:
    # Turned into an exception so that `finally` stops every server we started.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    load = Load(connections=args.connections, warmup=args.warmup, duration=args.duration)
    try:
        generator = generators.choose(args.generator)
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 2
    print(
        f"POST /trigger/{{flow_id}} vs baseline: workers={args.workers} "
        f"connections={load.connections} warmup={load.warmup:g}s duration={load.duration:g}s "
        f"generator={generator}",
        flush=True,
    )
    measurements: list[Measurement] = []
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="bench-trigger-api-") as tmp:
        work_dir = Path(tmp)
        try:
            began = time.monotonic()
            stack = start_stack(args.workers, work_dir, servers)
            print(f"stack up in {time.monotonic() - began:.1f}s\n{HEADER}", flush=True)
            plan = [
                ("baseline #1", stack.baseline, stack.baseline_server),
                ("ingress", stack.ingress, stack.ingress_server),
                ("baseline #2", stack.baseline, stack.baseline_server),
            ]
            for name, target, server in plan:
                measurement = measure(name, generator, target, server, load, work_dir)
                for each in servers:
                    each.check_running()
                print(row(measurement), flush=True)
                measurements.append(measurement)
            environment = {
                "NATS_URL": stack.nats_url,
                "LOG_LEVEL": "WARNING",
                "RUNNER_FLOWS": "bench.flows",
            }
            # The 202 runs left a backlog no runner took: drop it, so the runner starts idle.
            asyncio.run(_purge_starts(stack.nats_url))
            servers.append(start_module("runner", "services.runner", environment, work_dir, REPO))
            time.sleep(3.0)  # the runner connects and announces its functions
            print(
                f"\nlight load with a runner, {LIGHT_REQUESTS} requests one at a time "
                "(cpu column not measured)\n" + HEADER,
                flush=True,
            )
            api = f"http://127.0.0.1:{stack.ingress.port}"
            for line in light_load(api, stack.secret):
                print(line, flush=True)
        except (RuntimeError, OSError, subprocess.SubprocessError, httpx.HTTPError) as error:
            print(f"benchmark failed: {error}", file=sys.stderr)
            for server in servers:
                print(f"--- {server.name} log ---\n{server.log_tail()}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stop_all(servers)
    print(summary(measurements))
    failed = [m for m in measurements if m.result.error_rate > MAX_ERROR_RATE]
    for m in failed:
        print(
            f"{m.name}: more than {MAX_ERROR_RATE:.0%} errors {m.result.statuses}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
