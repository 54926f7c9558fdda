"""`python -m bench.fairness` (`make bench-fairness`): a busy workspace next to a quiet one.

The experiment of the noisy-neighbour report: workspace B's `echo` latency (publish to final
run event) is measured on an idle runner, then while workspace A has 32 `sleep 20` runs queued
on the same runner (default settings: 16 slots). With the slots one FIFO for all workspaces,
B's echo waited for A's runs (39 s in the report); with a fair share it stays within a few
times its idle latency. It measures and prints; it does not assert (the regression test is
tests/integration/test_runner_fairness.py).
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from bench.processes import Server, start_module, start_nats, stop_all
from contracts import subjects
from contracts.registry import Flow, PythonFlowSettings
from contracts.runs import TERMINAL_STATUSES, FlowStart, Run, RunEvent
from shared import broker
from shared.codec import decode, encode
from shared.ids import new_id

REPO = Path(__file__).resolve().parent.parent


def a_flow(function: str) -> Flow:
    return Flow(
        id=new_id("flw"),
        workspace_id=new_id("ws"),
        name=function,
        settings=PythonFlowSettings(function=function),
        created_at=datetime.now(UTC),
    )


async def start(js: JetStreamContext, flow: Flow, input: Any) -> str:
    run_id = new_id("run")
    body = FlowStart(run_id=run_id, workspace_id=flow.workspace_id, flow_id=flow.id, input=input)
    await js.publish(
        subjects.flow_start(flow.workspace_id), encode(body), headers={"Nats-Msg-Id": run_id}
    )
    return run_id


async def echo_latency(nc: Client, js: JetStreamContext, flow: Flow, timeout: float) -> float:
    """Seconds from publishing one echo start to its run's final event."""
    ended: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
    run_id = new_id("run")

    async def on_event(msg: Any) -> None:
        run = decode(msg.data, RunEvent).run
        if run.status in TERMINAL_STATUSES and not ended.done():
            ended.set_result(run)

    subscription = await nc.subscribe(subjects.run_events(flow.workspace_id, run_id), cb=on_event)
    body = FlowStart(
        run_id=run_id, workspace_id=flow.workspace_id, flow_id=flow.id, input={"hi": "B"}
    )
    began = time.monotonic()
    await js.publish(
        subjects.flow_start(flow.workspace_id), encode(body), headers={"Nats-Msg-Id": run_id}
    )
    try:
        run = await asyncio.wait_for(ended, timeout)
    except TimeoutError:
        return float("inf")
    finally:
        await subscription.unsubscribe()
    if run.status != "succeeded":
        raise RuntimeError(f"B's echo ended {run.status}: {run.error}")
    return time.monotonic() - began


async def latencies(
    nc: Client, js: JetStreamContext, flow: Flow, count: int, timeout: float
) -> list[float]:
    found = []
    for _ in range(count):
        found.append(await echo_latency(nc, js, flow, timeout))
        await asyncio.sleep(0.05)
    return found


def summary(values: list[float]) -> str:
    shown = ", ".join(f"{v * 1000:.0f}" if v != float("inf") else "timeout" for v in values)
    median, most = statistics.median(values) * 1000, max(values) * 1000
    return f"median {median:7.0f} ms, max {most:7.0f} ms ({shown})"


async def run(args: argparse.Namespace) -> None:
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as tmp:
        work_dir = Path(tmp)
        nats, url = start_nats(work_dir)
        servers.append(nats)
        try:
            nc = await broker.connect(url, "bench")
            js = nc.jetstream()
            await broker.ensure_topology(js)
            busy, quiet = a_flow("sleep"), a_flow("echo")
            flows = await js.key_value(subjects.FLOWS_BUCKET)
            for flow in (busy, quiet):
                await flows.put(subjects.record_key(flow.workspace_id, flow.id), encode(flow))
            env = {"NATS_URL": url, "LOG_LEVEL": "WARNING",
                   "RUNNER_CONCURRENCY": str(args.concurrency)}  # fmt: skip
            servers.append(start_module("runner", "services.runner", env, work_dir, REPO))
            warm = await latencies(nc, js, quiet, 3, 30.0)  # the runner connects, pulls
            if float("inf") in warm:
                raise RuntimeError(f"the runner does not run echoes:\n{servers[-1].log_tail()}")
            idle = await latencies(nc, js, quiet, args.echoes, 30.0)
            print(f"B's echo, idle runner:            {summary(idle)}", flush=True)
            for _ in range(args.runs):
                await start(js, busy, {"seconds": args.seconds})
            await asyncio.sleep(1.0)  # A takes its slots
            loaded = await latencies(nc, js, quiet, args.echoes, args.seconds * 3)
            print(
                f"B's echo, A's {args.runs} x sleep {args.seconds:g}s queued: {summary(loaded)}",
                flush=True,
            )
            ratio = max(loaded) / max(idle)
            print(f"loaded/idle, slowest echo: {ratio:.1f}x", flush=True)
            await nc.drain()
        finally:
            stop_all(servers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness")
    parser.add_argument("--runs", type=int, default=32, help="A's sleep runs")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each sleeps")
    parser.add_argument("--echoes", type=int, default=5, help="B's echoes per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="RUNNER_CONCURRENCY")
    args = parser.parse_args(argv)
    print(
        f"fairness: one runner with {args.concurrency} slots; workspace A queues {args.runs} "
        f"sleeps of {args.seconds:g}s, workspace B runs echoes one at a time",
        flush=True,
    )
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
