"""`python -m bench.runner_throughput` (`make bench-runner`): no-op runs per second with 1 and 2
runners, next to a bare nats-py pull consumer that only acks, in the same run.

Starts a nats-server with its store in memory (`/dev/shm`, when there is one), writes a flow
for the `noop` function straight into the flows bucket (as the registry would), publishes N
starts, then measures how long the consumers take to acknowledge all of them: the bare
consumer and the runners alike start on a full queue (the runners' consumer is paused while it
fills). Each side is measured twice, in turn. It measures, it does not assert.
"""

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from bench.processes import Server, start_module, start_nats, stop_all
from bench.summary import Row, record
from contracts import subjects
from contracts.registry import Flow, PythonFlowSettings
from contracts.runs import FlowStart
from shared import broker
from shared.codec import encode
from shared.ids import new_id

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 300.0


async def publish_starts(js: JetStreamContext, flow: Flow, count: int) -> None:
    for offset in range(0, count, 256):
        batch = [
            FlowStart(run_id=new_id("run"), workspace_id=flow.workspace_id, flow_id=flow.id)
            for _ in range(min(256, count - offset))
        ]
        await asyncio.gather(
            *(
                js.publish(
                    subjects.flow_start(s.workspace_id),
                    encode(s),
                    headers={"Nats-Msg-Id": s.run_id},
                )
                for s in batch
            )
        )


async def drained(js: JetStreamContext, below: int = 1) -> None:
    """Wait until the work queue holds fewer than `below` starts (1: every start acknowledged)."""
    deadline = time.monotonic() + TIMEOUT
    while (await js.stream_info(subjects.FLOW_STARTS_STREAM)).state.messages >= below:
        if time.monotonic() > deadline:
            raise TimeoutError("the starts were not all handled in time")
        await asyncio.sleep(0.005)


async def bare_consumer(js: JetStreamContext, count: int) -> float:
    """Messages per second of a pull consumer that fetches 256 at a time and only acks."""
    subscription = await js.pull_subscribe_bind(
        durable=subjects.RUNNER_CONSUMER, stream=subjects.FLOW_STARTS_STREAM
    )
    began = time.monotonic()
    done = 0
    while done < count:
        msgs = await subscription.fetch(256, timeout=5)
        for msg in msgs:
            await msg.ack()
        done += len(msgs)
    await drained(js)
    elapsed = time.monotonic() - began
    await subscription.unsubscribe()
    return count / elapsed


class Drained(NamedTuple):
    """What runners did while draining a queue of no-op starts."""

    rate: float
    """Runs per second."""
    shares: list[float]
    """Each runner's CPU over the measured time (1.0: one core)."""
    server_share: float
    """nats-server's CPU over the measured time."""
    runner_us: float
    """The runners' CPU per run, in microseconds."""
    server_us: float
    """nats-server's CPU per run, in microseconds."""


class Stage(NamedTuple):
    """A nats-server ready for runners (`prepare`d), and what starting them needs."""

    js: JetStreamContext
    env: dict[str, str]
    """A runner's settings for it (`runner_env`)."""
    work_dir: Path
    """Where the runners' logs go."""
    nats: Server
    servers: list[Server]
    """The runners started on it, stopped with it."""


@contextlib.asynccontextmanager
async def stage(store: Path | None, prefix: str) -> AsyncIterator[Stage]:
    """A nats-server with its store under `store` (a temporary folder named `prefix`...),
    `prepare`d; it and every runner started on it are stopped on the way out."""
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix=prefix, dir=store) as tmp:
        work_dir = Path(tmp)
        nats, url = start_nats(work_dir)
        try:
            nc = await broker.connect(url, "bench")
            js = nc.jetstream()
            await prepare(js)
            yield Stage(js, runner_env(url), work_dir, nats, servers)
            await nc.drain()
        finally:
            stop_all([nats, *servers])


async def runners(on: Stage, replicas: int, count: int, checkout: Path = REPO) -> Drained:
    """`replicas` runners of `checkout` (its code, this Python) draining `count` starts."""
    js, nats = on.js, on.nats
    env = {**on.env, "PYTHONPATH": str(checkout)}
    started = [
        start_module(f"runner-{replicas}-{i}", "services.runner", env, on.work_dir, checkout)
        for i in range(replicas)
    ]
    on.servers.extend(started)
    await asyncio.sleep(3.0)  # let them connect and pull (an empty queue meanwhile)
    for server in started:
        server.check_running()
    # Fill the queue while the consumer is paused, as for the bare consumer: what is measured
    # is consuming, not this process publishing on the same two cores.
    await js.pause_consumer(
        subjects.FLOW_STARTS_STREAM, subjects.RUNNER_CONSUMER, "2999-01-01T00:00:00Z"
    )
    await publish_starts(js, FLOW, count)
    await js.resume_consumer(subjects.FLOW_STARTS_STREAM, subjects.RUNNER_CONSUMER)
    # The clock starts with the first acknowledged start: a pull request waiting on the
    # paused consumer may only be answered when it expires.
    await drained(js, below=count)
    began = time.monotonic()
    cpu_before = [server.cpu_seconds() for server in (*started, nats)]
    await drained(js)
    elapsed = time.monotonic() - began
    cpu = [
        server.cpu_seconds() - before
        for server, before in zip((*started, nats), cpu_before, strict=True)
    ]
    stop_all(started)
    return Drained(
        rate=count / elapsed,
        shares=[seconds / elapsed for seconds in cpu[:-1]],
        server_share=cpu[-1] / elapsed,
        runner_us=sum(cpu[:-1]) / count * 1e6,
        server_us=cpu[-1] / count * 1e6,
    )


FLOW = Flow(
    id=new_id("flw"),
    workspace_id=new_id("ws"),
    name="noop",
    settings=PythonFlowSettings(function="noop"),
    created_at=datetime.now(UTC),
)


ONE_RUNNER_TARGET = 0.6
"""One runner's no-op runs per second, as a share of the bare consumer's messages per second."""
TWO_RUNNERS_TARGET = 1.1


MEMORY = Path("/dev/shm")
"""Where the NATS store goes when it exists: on this VM's disk the same run varied 3-9k runs/s
with neither the runner nor the server busy (waiting on the disk), which drowns what is
measured here, the runner's own cost."""


async def prepare(js: JetStreamContext) -> None:
    """The streams and buckets, the `noop` flow (as the registry would write it) and the
    runners' consumer, which the bare consumer uses first."""
    await broker.ensure_topology(js)
    flows = await js.key_value(subjects.FLOWS_BUCKET)
    await flows.put(subjects.record_key(FLOW.workspace_id, FLOW.id), encode(FLOW))
    await js.add_consumer(
        subjects.FLOW_STARTS_STREAM,
        ConsumerConfig(durable_name=subjects.RUNNER_CONSUMER, ack_policy=AckPolicy.EXPLICIT),
    )


def runner_env(url: str) -> dict[str, str]:
    """A benchmarked runner's settings: the bench flows, 256 slots, quiet logs."""
    return {"NATS_URL": url, "RUNNER_FLOWS": "bench.flows", "LOG_LEVEL": "WARNING",
            "RUNNER_CONCURRENCY": "256"}  # fmt: skip


async def run(count: int, store: Path | None) -> None:
    async with stage(store, "bench-runner-") as on:
        # Each side twice, in turn: the machine's drift shows in each one's two figures.
        for round_number in (1, 2):
            await publish_starts(on.js, FLOW, count)
            cpu_before, nats_before, began = (
                time.process_time(),
                on.nats.cpu_seconds(),
                time.time(),
            )
            bare = await bare_consumer(on.js, count)
            elapsed = time.time() - began  # with the consumer's setup: a slight underestimate
            cpu = time.process_time() - cpu_before
            bare_us = cpu / count * 1e6
            print(
                f"{f'bare pull consumer #{round_number} (ack only)':<34} {bare:>9.0f} msgs/s "
                f"(CPU: consumer {cpu / elapsed * 100:.0f}%, nats-server "
                f"{(on.nats.cpu_seconds() - nats_before) / elapsed * 100:.0f}% of a core; "
                f"{bare_us:.0f} us of consumer CPU per message)",
                flush=True,
            )
            for replicas, target in ((1, ONE_RUNNER_TARGET), (2, TWO_RUNNERS_TARGET)):
                measured = await runners(on, replicas, count)
                rate, per_run = measured.rate, measured.runner_us
                ratio = rate / bare
                usage = ", ".join(f"{share * 100:.0f}%" for share in measured.shares)
                print(
                    f"{f'runner x{replicas} #{round_number} (no-op runs)':<34} "
                    f"{rate:>9.0f} runs/s ({ratio:.2f} of the bare consumer; "
                    f"target >= {target:.2f}; CPU: runner {usage}, nats-server "
                    f"{measured.server_share * 100:.0f}% of a core; {per_run:.0f} us of "
                    "runner CPU per run)",
                    flush=True,
                )
                record(
                    Row(
                        stage=f"runner x{replicas}, no-op runs (#{round_number})",
                        ours=f"{rate:.0f}/s, {per_run:.0f} us CPU/run",
                        bare=f"{bare:.0f}/s, {bare_us:.0f} us CPU/msg",
                        ratio=f"{ratio:.2f}",
                        target=f">= {target:.2f}",
                        met=ratio >= target,
                    )
                )


def add_store_option(parser: argparse.ArgumentParser) -> None:
    """`--store`: where the NATS store goes (`MEMORY` when there is one)."""
    parser.add_argument(
        "--store",
        type=Path,
        default=MEMORY if MEMORY.is_dir() else None,
        help="folder for the NATS store (default: /dev/shm when it exists, else the temp dir)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runner_throughput")
    parser.add_argument("--runs", type=int, default=50000, help="starts per measurement")
    add_store_option(parser)
    args = parser.parse_args(argv)
    print(
        f"runner throughput: {args.runs} no-op starts per measurement; NATS store under "
        f"{args.store or tempfile.gettempdir()}",
        flush=True,
    )
    asyncio.run(run(args.runs, args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
