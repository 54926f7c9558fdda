"""`make bench-scheduler`: the scheduler at 100,000 schedules, next to a bare croniter+heapq loop.

Phases, each against a fresh nats-server on a free port (the benchmark plays the registry and
writes trigger records straight into the `triggers` bucket):

1. spread: N schedules `S * * * * *` (S = i mod 60: fires spread over every minute) on one
   scheduler process; fire lag over a measuring window, peak RSS, CPU per second, and CPU
   while idle (a window with no fire due).
2. herd: H one-off schedules due in the same second; time until the last start is stored,
   with one scheduler replica and then with two; then the same with 3H.
3. the baseline: one Python process, croniter + heapq, publishing the same `flow.start`
   messages to JetStream (pipelined), measured the same way for the spread and the herd.

Fire lag is the start's publish time minus its scheduled time, the publish time being when
the server stored it (the stream's timestamp, read back after each phase): a subscriber's
receive time would add the benchmark's own delays on a busy machine. The receive time is
printed too, for the scheduler phases.

The spread and the 10,000 herd run `--rounds` times (2), so each figure shows its noise.
Bounded: several minutes with the defaults. `--quick` runs smaller numbers.
"""

import argparse
import asyncio
import heapq
import itertools
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from croniter import croniter
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from bench.processes import Server, start_module, start_nats, stop_all
from bench.summary import Row, record
from contracts import subjects
from contracts.registry import CronSchedule, OnceSchedule, ScheduleTrigger, Trigger
from contracts.runs import FlowStart
from services.scheduler.core import fire_key, flow_start
from shared import broker
from shared.codec import decoder, encode
from shared.ids import new_id

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = new_id("ws")
FLOW = new_id("flw")
SETTLE = 15
"""Seconds after the scheduler is up before the spread's steady state is measured."""
LAUNCHES = itertools.count(1)
"""Numbers the scheduler processes' log files: `wait_up` looks for the line a process logs once
up, which a second round with the same file name found at once (its first round's)."""
HERD_LEAD = 2.5
"""The scheduler's default `TIMER_LEAD`: how early a herd's timers go off."""


def now() -> datetime:
    return datetime.now(UTC)


def trigger(schedule: CronSchedule | OnceSchedule) -> Trigger:
    moment = now()
    return ScheduleTrigger(
        id=new_id("trg"),
        workspace_id=WORKSPACE,
        flow_id=FLOW,
        schedule=schedule,
        created_at=moment,
        updated_at=moment,
    )


class Lags:
    """Lag per distinct fire: of flow.start messages seen on a core subscription (`record`,
    which only notes the time: decoding waits for `lags`), or stored in the stream (`stored`)."""

    def __init__(self) -> None:
        self._lags: dict[str, float] = {}
        self.scheduled: dict[str, datetime] = {}
        self.trigger_of: dict[str, str | None] = {}
        self._seen: list[tuple[datetime, bytes]] = []
        self._decode = decoder(FlowStart).decode

    async def record(self, msg: Msg) -> None:
        self._seen.append((now(), msg.data))

    def note(self, start: FlowStart, at: datetime) -> None:
        if start.scheduled_at is None or start.run_id in self._lags:
            return
        self._lags[start.run_id] = (at - start.scheduled_at).total_seconds()
        self.scheduled[start.run_id] = start.scheduled_at
        self.trigger_of[start.run_id] = start.trigger_id

    @property
    def lags(self) -> dict[str, float]:
        seen, self._seen = self._seen, []
        for received, data in seen:
            self.note(self._decode(data), received)
        return self._lags

    def between(self, begin: datetime, end: datetime) -> list[float]:
        """The lags of the fires scheduled in [begin, end)."""
        return [lag for run_id, lag in self.lags.items() if begin <= self.scheduled[run_id] < end]

    @classmethod
    async def stored(cls, js: JetStreamContext) -> "Lags":
        """The lags of every start in the stream, from the time the server stored each (then
        taken out of the stream)."""
        lags = cls()
        subscription = await js.pull_subscribe(
            subjects.FLOW_STARTS,
            stream=subjects.FLOW_STARTS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, mem_storage=True),
        )
        try:
            remaining = (await subscription.consumer_info()).num_pending
            while remaining > 0:
                messages = await subscription.fetch(min(remaining, 1000), timeout=10)
                remaining -= len(messages)
                for message in messages:
                    lags.note(lags._decode(message.data), message.metadata.timestamp)
                    await message.ack()  # read: a work queue then drops it
        finally:
            await subscription.unsubscribe()
        return lags


def p99(lags: list[float]) -> float:
    if not lags:
        return float("nan")
    ordered = sorted(lags)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def summary(lags: list[float]) -> str:
    if not lags:
        return "no fires"
    ordered = sorted(lags)
    return (
        f"{len(ordered)} fires, lag min {ordered[0] * 1000:.0f} ms, "
        f"p50 {statistics.median(ordered) * 1000:.0f} ms, "
        f"p99 {p99(ordered) * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"
    )


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def write_triggers(nc: Client, triggers: list[Trigger]) -> None:
    kv = await nc.jetstream().key_value(subjects.TRIGGERS_BUCKET)
    for index in range(0, len(triggers), 512):
        batch = triggers[index : index + 512]
        await asyncio.gather(
            *(kv.put(subjects.record_key(t.workspace_id, t.id), encode(t)) for t in batch)
        )


async def fresh_state(nc: Client) -> None:
    js = nc.jetstream()
    for stream in (
        subjects.SCHEDULES_STREAM,
        subjects.FLOW_STARTS_STREAM,
        subjects.SCHEDULE_FIRES_STREAM,
        f"KV_{subjects.TRIGGERS_BUCKET}",
    ):
        await js.purge_stream(stream)


async def wait_up(server: Server, timeout: float) -> float:
    began = time.monotonic()
    while "scheduler is up" not in server.log.read_text(errors="replace"):
        server.check_running()
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"{server.name} not up after {timeout}s:\n{server.log_tail()}")
        await asyncio.sleep(0.2)
    return time.monotonic() - began


async def scheduler_spread(
    nc: Client, env: dict[str, str], logs: Path, n: int, measure: float
) -> tuple[float, float]:
    """Fire lag p99 (seconds) in the steady state, and the scheduler's CPU (share of a core)."""
    await fresh_state(nc)
    triggers = [trigger(CronSchedule(cron=f"{i % 60} * * * * *")) for i in range(n)]
    began = time.monotonic()
    await write_triggers(nc, triggers)
    print(f"  wrote {n} triggers in {time.monotonic() - began:.1f}s")
    lags = Lags()
    sub = await nc.subscribe(subjects.FLOW_STARTS, cb=lags.record)
    server = start_module(f"scheduler-{next(LAUNCHES)}", "services.scheduler", env, logs, ROOT)
    try:
        up = await wait_up(server, 300)
        print(
            f"  scheduler up (timers parked) in {up:.1f}s, "
            f"RSS {rss_peak_mb(server.process.pid):.0f} MB"
        )
        # Startup: the timers parked first go off while the rest are parked, so the first
        # seconds after `up` show the catch-up; the steady state is measured after it.
        up_at = now().replace(microsecond=0)
        start_at = up_at + timedelta(seconds=SETTLE)
        started_at = up_at - timedelta(seconds=up)
        end_at = start_at + timedelta(seconds=measure)
        await asyncio.sleep(SETTLE)
        cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(measure + 4)
        cpu = (server.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        stored = await Lags.stored(nc.jetstream())
        print(
            f"  scheduler startup (fires due while parking and {SETTLE}s after): "
            f"{summary(stored.between(started_at, start_at))}"
        )
        steady = stored.between(start_at, end_at)
        print(f"  scheduler spread, steady state: {summary(steady)}")
        print(f"    (as received by a subscriber: {summary(lags.between(start_at, end_at))})")
        print(
            f"  scheduler CPU {cpu * 100:.0f}% of a core while firing {n / 60:.0f}/s; "
            f"peak RSS {rss_peak_mb(server.process.pid):.0f} MB"
        )
        return p99(steady), cpu
    finally:
        await sub.unsubscribe()
        stop_all([server])


async def scheduler_idle(nc: Client, env: dict[str, str], logs: Path, n: int) -> None:
    """CPU of a scheduler holding N timers none of which is due during the window."""
    await fresh_state(nc)
    await write_triggers(nc, [trigger(CronSchedule(cron="0 0 1 1 *")) for _ in range(n)])
    server = start_module("scheduler-idle", "services.scheduler", env, logs, ROOT)
    try:
        await wait_up(server, 300)
        await asyncio.sleep(1)
        cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
        await asyncio.sleep(10)
        cpu = (server.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        print(
            f"  scheduler idle with {n} timers parked: CPU {cpu * 100:.1f}% of a core, "
            f"peak RSS {rss_peak_mb(server.process.pid):.0f} MB"
        )
    finally:
        stop_all([server])


async def scheduler_herd(
    nc: Client, env: dict[str, str], logs: Path, h: int, replicas: int
) -> tuple[float, float]:
    """Seconds from the due second to the last start stored, and CPU (us) per fire."""
    await fresh_state(nc)
    servers = [
        start_module(
            f"scheduler-herd-{replicas}-{r}-{next(LAUNCHES)}", "services.scheduler", env, logs, ROOT
        )
        for r in range(replicas)
    ]
    lags = Lags()
    sub = await nc.subscribe(subjects.FLOW_STARTS, cb=lags.record)
    try:
        for server in servers:
            await wait_up(server, 120)
        due = now().replace(microsecond=0) + timedelta(seconds=12)
        cpu_parking = sum(server.cpu_seconds() for server in servers)
        await write_triggers(nc, [trigger(OnceSchedule(at=due)) for _ in range(h)])
        # The timers go off TIMER_LEAD (2.5 s) before the due second: CPU from a second
        # before that on is the firing's (deciding, holding, publishing, acking).
        await asyncio.sleep(max(0.0, (due - now()).total_seconds() - HERD_LEAD - 1))
        cpu_firing = sum(server.cpu_seconds() for server in servers)
        cpu_parking = cpu_firing - cpu_parking
        deadline = time.monotonic() + 60
        while len(lags.lags) < h and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the ledger writes and acks after the last start
        cpu_firing = sum(server.cpu_seconds() for server in servers) - cpu_firing
        stored = (await Lags.stored(nc.jetstream())).lags
        done = max(stored.values()) if stored else float("nan")
        print(
            f"  scheduler herd, {replicas} replica(s): {len(stored)}/{h} started, "
            f"the last {done:.2f}s after the due second ({summary(list(stored.values()))})"
        )
        print(f"    (as received by a subscriber: {summary(list(lags.lags.values()))})")
        print(
            f"    scheduler CPU: parking {cpu_parking / h * 1e6:.0f} us per trigger, "
            f"firing {cpu_firing / h * 1e6:.0f} us per fire"
        )
        return (done if len(stored) == h else float("inf")), cpu_firing / h * 1e6
    finally:
        await sub.unsubscribe()
        stop_all(servers)


async def baseline(nc: Client, n: int, h: int, measure: float) -> tuple[float, float]:
    """croniter + heapq in this process, publishing FlowStarts to JetStream with pipelining."""
    await fresh_state(nc)
    js = nc.jetstream()
    triggers = [trigger(CronSchedule(cron=f"{i % 60} * * * * *")) for i in range(n)]
    began = time.monotonic()
    heap: list[tuple[datetime, int]] = []
    iterators = []
    for index, item in enumerate(triggers):
        assert isinstance(item.schedule, CronSchedule)
        iterator = croniter(item.schedule.cron, now(), second_at_beginning=True)
        iterators.append(iterator)
        heap.append((iterator.get_next(datetime), index))
    # The clock base comes after the build: the fires that fell due while building are moved
    # on to their next occurrence (as the scheduler's startup parks the next one), not counted
    # as late.
    base = now().replace(microsecond=0) + timedelta(seconds=3)
    for position, (scheduled, index) in enumerate(heap):
        while scheduled < base:
            scheduled = iterators[index].get_next(datetime)
        heap[position] = (scheduled, index)
    herd_at = base + timedelta(seconds=measure + 8)
    herd = [trigger(OnceSchedule(at=herd_at)) for _ in range(h)]
    for index in range(h):
        heap.append((herd_at, n + index))
    heapq.heapify(heap)
    print(f"  baseline heap of {n + h} built in {time.monotonic() - began:.1f}s")
    everything = [*triggers, *herd]
    spread_lags: list[float] = []
    herd_lags: list[float] = []
    window_end = base + timedelta(seconds=measure)

    async def publish(index: int, scheduled: datetime) -> None:
        start = flow_start(everything[index], scheduled, now())
        await js.publish(
            subjects.flow_start(start.workspace_id),
            encode(start),
            headers={"Nats-Msg-Id": fire_key(start.run_id, scheduled)},
        )
        lag = (now() - scheduled).total_seconds()
        if index >= n:
            herd_lags.append(lag)
        elif scheduled < window_end:
            spread_lags.append(lag)

    cpu_before = time.process_time()
    wall_before = time.monotonic()
    while heap and heap[0][0] <= herd_at + timedelta(seconds=1):
        wait = (heap[0][0] - now()).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        moment = now()
        due: list[tuple[datetime, int]] = []
        while heap and heap[0][0] <= moment:
            due.append(heapq.heappop(heap))
        for offset in range(0, len(due), 256):
            await asyncio.gather(*(publish(i, s) for s, i in due[offset : offset + 256]))
        for scheduled, index in due:
            if index < n and scheduled < window_end:
                heapq.heappush(heap, (iterators[index].get_next(datetime), index))
    cpu = (time.process_time() - cpu_before) / (time.monotonic() - wall_before)
    stored = await Lags.stored(js)
    herd_ids = {item.id for item in herd}
    stored_herd = [lag for run, lag in stored.lags.items() if stored.trigger_of[run] in herd_ids]
    print(
        f"  baseline spread: {summary(stored.between(base, window_end))}; "
        f"CPU {cpu * 100:.0f}% (bench process)"
    )
    print(f"    (at its PubAck: {summary(spread_lags)})")
    print(
        f"  baseline herd: {len(stored_herd)}/{h} started, the last "
        f"{max(stored_herd, default=float('nan')):.2f}s after the due second "
        f"(at its PubAck: {max(herd_lags, default=float('nan')):.2f}s)"
    )
    print(f"  baseline peak RSS of the bench process {rss_peak_mb(os.getpid()):.0f} MB")
    return p99(stored.between(base, window_end)), max(stored_herd, default=float("nan"))


SPREAD_P99_TARGET = 0.080
"""Seconds: fire lag p99 of the spread schedules."""
HERD_TARGET = 0.5
"""Seconds from a herd's due second to its last start, with one replica."""


async def main(n: int, h: int, measure: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as folder:
        logs = Path(folder)
        nats, url = start_nats(logs)
        env = {"NATS_URL": url, "LOG_LEVEL": "INFO"}
        nc = await broker.connect(url, "bench")
        spreads: list[tuple[float, float]] = []
        herds: list[tuple[float, float]] = []
        try:
            await broker.ensure_topology(nc.jetstream())
            print(f"spread: {n} schedules, fires spread over each minute, measured {measure:.0f}s")
            for _ in range(rounds):
                spreads.append(await scheduler_spread(nc, env, logs, n, measure))
            await scheduler_idle(nc, env, logs, n)
            print(f"herd: {h} schedules due in the same second")
            for _ in range(rounds):
                herds.append(await scheduler_herd(nc, env, logs, h, 1))
                await scheduler_herd(nc, env, logs, h, 2)
            # On two shared cores a second replica adds no CPU: it shows once a herd is more
            # than one replica decides within its `TIMER_LEAD`.
            print(f"herd: {3 * h} schedules due in the same second")
            await scheduler_herd(nc, env, logs, 3 * h, 1)
            await scheduler_herd(nc, env, logs, 3 * h, 2)
            print("baseline (croniter + heapq, one process, same flow.start messages)")
            bare_spread, bare_herd = await baseline(nc, n, h, measure)
        finally:
            await nc.drain()
            stop_all([nats])
    for number, (lag, cpu) in enumerate(spreads, 1):
        record(
            Row(
                stage=f"scheduler, {n} spread schedules, fire lag p99 (#{number})",
                ours=f"{lag * 1000:.0f} ms at {cpu * 100:.0f}% CPU",
                bare=f"{bare_spread * 1000:.0f} ms",
                ratio=f"{lag / bare_spread:.2f}",
                target=f"< {SPREAD_P99_TARGET * 1000:.0f} ms",
                met=lag < SPREAD_P99_TARGET,
            )
        )
    for number, (last, cpu) in enumerate(herds, 1):
        record(
            Row(
                stage=f"scheduler, herd of {h}, one replica, last start (#{number})",
                ours=f"{last:.2f} s, {cpu:.0f} us CPU/fire",
                bare=f"{bare_herd:.2f} s",
                ratio=f"{last / bare_herd:.2f}",
                target=f"< {HERD_TARGET} s",
                met=last < HERD_TARGET,
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--herd", type=int, default=10_000)
    parser.add_argument("--measure", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="times the spread and herd run")
    parser.add_argument("--quick", action="store_true", help="5,000 schedules, a 1,000 herd")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.schedules, arguments.herd, arguments.measure = 5_000, 1_000, 10.0
    asyncio.run(main(arguments.schedules, arguments.herd, arguments.measure, arguments.rounds))
