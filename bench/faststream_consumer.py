"""`python -m bench.faststream_consumer` (`make bench-faststream`): what a FastStream JetStream
pull subscriber costs per message, next to a bare nats-py pull consumer and to one whole run in
our runner, against the same nats-server in the same run.

Why it exists: the design card lists FastStream, and the hot paths (the runner's consumer of
`flow.v1.start.*`, the scheduler's ticks) do not use it. This measures the decision so it can
be revisited: a FastStream subscriber whose msgspec-typed handler does nothing, a nats-py pull
consumer that fetches 256 at a time and acks, and (unless `--no-runner`) our runner doing no-op
runs (the figure `make bench-runner` prints). Every consumer starts on a full queue of the same
`FlowStart` messages; the clock and the CPU count start at its first message and stop at its
last, so connecting and setting up are not counted. It measures, it does not assert.
"""

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fast_depends.msgspec import MsgSpecSerializer
from faststream.nats import JStream, NatsBroker, PullSub
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from bench import runner_throughput
from bench.processes import Server, start_nats, stop_all
from contracts.runs import FlowStart
from shared import broker
from shared.codec import decoder, encode

STREAM = "BENCH_FASTSTREAM"
SUBJECT = "bench.faststream"
BATCH = 256
TIMEOUT = 300.0


@dataclass
class Measured:
    name: str
    count: int
    seconds: float
    cpu_seconds: float
    """CPU of the consuming process (this one) between its first and its last message."""
    server_cpu_seconds: float

    def line(self, unit: str = "msgs/s") -> str:
        per = self.cpu_seconds / self.count * 1e6
        return (
            f"{self.name:<40} {self.count / self.seconds:>8.0f} {unit:<7} "
            f"{per:>6.0f} us CPU per message "
            f"(consumer {self.cpu_seconds / self.seconds * 100:.0f}%, nats-server "
            f"{self.server_cpu_seconds / self.seconds * 100:.0f}% of a core)"
        )


class Clock:
    """Wall and CPU time at the first and the last of `count` messages."""

    def __init__(self, count: int, nats: Server) -> None:
        self.count = count
        self.seen = 0
        self.done = asyncio.Event()
        self._nats = nats
        self._first = (0.0, 0.0, 0.0)
        self._last = (0.0, 0.0, 0.0)

    def tick(self) -> None:
        self.seen += 1
        if self.seen == 1:
            self._first = (time.monotonic(), time.process_time(), self._nats.cpu_seconds())
        elif self.seen == self.count:
            self._last = (time.monotonic(), time.process_time(), self._nats.cpu_seconds())
            self.done.set()

    def measured(self, name: str) -> Measured:
        wall, cpu, server = (
            last - first for first, last in zip(self._first, self._last, strict=True)
        )
        # Between the first and the last message: count - 1 messages were handled.
        return Measured(name, self.count - 1, wall, cpu, server)


async def fill(js: JetStreamContext, count: int) -> None:
    """Store `count` starts (the runner's message) on the bench subject, 256 in flight."""
    payload = encode(FlowStart(run_id="run_bench", workspace_id="ws_bench", flow_id="flw_bench"))
    for offset in range(0, count, 256):
        await asyncio.gather(
            *(js.publish(SUBJECT, payload) for _ in range(min(256, count - offset)))
        )


async def fresh_stream(js: JetStreamContext, count: int) -> None:
    """A work-queue stream holding `count` messages (emptied and filled again)."""
    config = StreamConfig(
        name=STREAM,
        subjects=[SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
    )
    with contextlib.suppress(NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(config)
    await fill(js, count)


async def bare_nats_py(js: JetStreamContext, count: int, nats: Server) -> Measured:
    """A nats-py pull consumer: fetch 256, decode each with msgspec, ack each."""
    await fresh_stream(js, count)
    await js.add_consumer(
        STREAM, ConsumerConfig(durable_name="bare", ack_policy=AckPolicy.EXPLICIT)
    )
    subscription = await js.pull_subscribe_bind(durable="bare", stream=STREAM)
    clock = Clock(count, nats)
    decode = decoder(FlowStart).decode
    while not clock.done.is_set():
        for msg in await subscription.fetch(BATCH, timeout=5):
            decode(msg.data)
            await msg.ack()
            clock.tick()
    await subscription.unsubscribe()
    return clock.measured("nats-py pull consumer (decode + ack)")


async def faststream_subscriber(
    url: str, js: JetStreamContext, count: int, nats: Server
) -> Measured:
    """FastStream's JetStream pull subscriber with a msgspec-typed handler that does nothing
    (acked by FastStream after the handler returns)."""
    await fresh_stream(js, count)
    clock = Clock(count, nats)
    fast = NatsBroker(url, serializer=MsgSpecSerializer(), logger=None)

    @fast.subscriber(
        SUBJECT,
        stream=JStream(STREAM, declare=False),
        durable="faststream",
        pull_sub=PullSub(batch_size=BATCH, timeout=5.0),
    )
    async def handle(start: FlowStart) -> None:
        clock.tick()

    await fast.start()
    try:
        await asyncio.wait_for(clock.done.wait(), TIMEOUT)
    finally:
        await fast.stop()
    return clock.measured("FastStream pull subscriber (no-op handler)")


async def our_runner(js: JetStreamContext, count: int, url: str, work_dir: Path,
                     nats: Server) -> str:  # fmt: skip
    """One runner process doing `count` no-op runs, as `make bench-runner` measures it."""
    await runner_throughput.prepare(js)
    on = runner_throughput.Stage(js, runner_throughput.runner_env(url), work_dir, nats, [])
    try:
        drained = await runner_throughput.runners(on, 1, count)
    finally:
        stop_all(on.servers)
    return (
        f"{'our runner x1 (one no-op run each)':<40} {drained.rate:>8.0f} runs/s  CPU: runner "
        f"{drained.shares[0] * 100:.0f}%, nats-server {drained.server_share * 100:.0f}% of a "
        f"core; {drained.runner_us:.0f} us of runner CPU per run"
    )


async def run(count: int, store: Path | None, with_runner: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-faststream-", dir=store) as tmp:
        work_dir = Path(tmp)
        nats, url = start_nats(work_dir)
        try:
            nc = await broker.connect(url, "bench")
            js = nc.jetstream()
            # The bare consumer before and after: how much the machine drifted meanwhile.
            print((await bare_nats_py(js, count, nats)).line(), flush=True)
            print((await faststream_subscriber(url, js, count, nats)).line(), flush=True)
            print((await bare_nats_py(js, count, nats)).line(), flush=True)
            if with_runner:
                print(await our_runner(js, count, url, work_dir, nats), flush=True)
            await nc.drain()
        finally:
            stop_all([nats])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faststream_consumer")
    parser.add_argument("--messages", type=int, default=20000, help="messages per measurement")
    parser.add_argument("--no-runner", action="store_true", help="skip our runner's figure")
    runner_throughput.add_store_option(parser)
    args = parser.parse_args(argv)
    print(
        f"consumers on a full queue of {args.messages} FlowStart messages, one nats-server; "
        "CPU of the consuming process between its first and last message",
        flush=True,
    )
    asyncio.run(run(args.messages, args.store, not args.no_runner))
    return 0


if __name__ == "__main__":
    sys.exit(main())
