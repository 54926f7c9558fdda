"""`python -m bench.history` (`make bench-history`): the run history at scale.

Writes run records straight into the `runs` bucket (as runners would): a small workspace of
1,000 runs and a large one (`--runs`, 100,000 by default; `--million` for 1,000,000), spread
over 30 days, 50 flows, 500 triggers and 5 statuses. Then starts one history replica as a
process and prints: the rebuild time and rate (its ingest ceiling) and its peak RSS; list p99
(the history's NATS API, limit 50) with no filter, each single filter and status+flow, on page
1 and page 200 (the last page for the small workspace), at both sizes and their ratio; stats
p99 for one flow over 24 h; and the rate at which the running replica takes live changes. It
measures, it does not assert.
"""

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.aio.client import Client

from bench.processes import Server, start_module, start_nats, stop_all
from contracts import subjects
from contracts.history import ListRuns, RunPage, RunStats, RunStatsQuery
from contracts.runs import Run, RunStatus, StartSource
from shared import broker
from shared.codec import encode
from shared.ids import new_id
from shared.rpc import ServiceClient, ServiceUnavailable

REPO = Path(__file__).resolve().parent.parent
STATUSES: list[RunStatus] = ["succeeded", "failed", "running", "queued", "cancelled"]
SOURCES: list[StartSource] = ["api", "schedule", "manual", "external"]
FLOWS = [f"flw_{n:021d}" for n in range(50)]
TRIGGERS = [f"trg_{n:021d}" for n in range(500)]
IN_FLIGHT = 512
REPEATS = 200


def make_run(workspace_id: str, now: datetime, rng: random.Random) -> Run:
    queued_at = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
    trigger = rng.randrange(len(TRIGGERS))
    status = STATUSES[rng.randrange(len(STATUSES))]
    return Run(
        id=new_id("run", now_ms=int(queued_at.timestamp() * 1000)),
        workspace_id=workspace_id,
        flow_id=FLOWS[trigger % len(FLOWS)],
        trigger_id=TRIGGERS[trigger],
        status=status,
        source=SOURCES[trigger % len(SOURCES)],
        queued_at=queued_at,
        error="flow raised ValueError" if status == "failed" else None,
        duration_seconds=rng.uniform(0.01, 5) if status in ("succeeded", "failed") else None,
    )


async def write_runs(nc: Client, runs: list[Run]) -> float:
    """Publish the records into the bucket's stream, many in flight; records per second."""
    js = nc.jetstream()
    started = time.perf_counter()
    for offset in range(0, len(runs), IN_FLIGHT):
        await asyncio.gather(
            *(
                js.publish(f"$KV.{subjects.RUNS_BUCKET}.{r.workspace_id}.{r.id}", encode(r))
                for r in runs[offset : offset + IN_FLIGHT]
            )
        )
    return len(runs) / (time.perf_counter() - started)


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def p99_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000


async def timed(call: Callable[[], object], repeats: int = REPEATS) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()  # type: ignore[misc]
        samples.append(time.perf_counter() - started)
    return p99_ms(samples)


async def cursor_of_page(client: ServiceClient, query: ListRuns, page: int) -> str | None:
    """The cursor that opens page `page` (or the last page, if there are fewer)."""
    cursor = None
    for _ in range(page - 1):
        found = await client.call(
            subjects.HISTORY_RUNS_LIST, ListRuns(**{**_fields(query), "cursor": cursor}), RunPage
        )
        if found.next_cursor is None:
            return cursor
        cursor = found.next_cursor
    return cursor


def _fields(record: ListRuns | Run) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__struct_fields__}


def filters(now: datetime) -> dict[str, dict[str, object]]:
    return {
        "no filter": {},
        "flow_id": {"flow_id": FLOWS[7]},
        "trigger_id": {"trigger_id": TRIGGERS[77]},
        "status": {"statuses": ["failed"]},
        "source": {"source": "schedule"},
        "since/until": {"since": now - timedelta(days=20), "until": now - timedelta(days=10)},
        "status+flow_id": {"statuses": ["failed"], "flow_id": FLOWS[7]},
    }


async def list_p99s(client: ServiceClient, workspace_id: str, now: datetime) -> dict[str, float]:
    figures = {}
    for name, given in filters(now).items():
        for page in (1, 200):
            query = ListRuns(workspace_id=workspace_id, limit=50, **given)  # type: ignore[arg-type]
            cursor = await cursor_of_page(client, query, page)
            paged = ListRuns(**{**_fields(query), "cursor": cursor})

            async def call(paged: ListRuns = paged) -> RunPage:
                return await client.call(subjects.HISTORY_RUNS_LIST, paged, RunPage)

            figures[f"{name}, page {page}"] = await timed(call)
    return figures


async def until_newest(client: ServiceClient, workspace_id: str, run_id: str) -> None:
    query = ListRuns(workspace_id=workspace_id, limit=1)
    while True:
        page = await client.call(subjects.HISTORY_RUNS_LIST, query, RunPage)
        if page.items and page.items[0].id == run_id:
            return
        await asyncio.sleep(0.01)


async def wait_answering(client: ServiceClient, history: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history.check_running()
        try:
            await client.call(subjects.HISTORY_RUNS_LIST, ListRuns(workspace_id="wsp_x"), RunPage)
            return
        except ServiceUnavailable:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the history did not answer within {timeout:.0f}s")


async def run(large: int, folder: Path) -> None:
    nats, url = start_nats(folder)
    servers: list[Server] = [nats]
    try:
        nc = await broker.connect(url, "bench-history")
        await broker.ensure_topology(nc.jetstream())
        rng = random.Random(20261201)
        now = datetime.now(UTC)
        small_ws, large_ws = new_id("wsp"), new_id("wsp")
        print(f"writing {1000 + large:,} run records into the bucket ...", flush=True)
        small = [make_run(small_ws, now, rng) for _ in range(1000)]
        await write_runs(nc, small)
        rate = 0.0
        for offset in range(0, large, 100_000):
            chunk = [make_run(large_ws, now, rng) for _ in range(min(100_000, large - offset))]
            rate = await write_runs(nc, chunk)
        print(f"  bucket write rate {rate:,.0f} records/s (last 100k)")

        env = {
            "NATS_URL": url,
            "HISTORY_DB": str(folder / "history.sqlite"),
            "LOG_LEVEL": "WARNING",
        }
        started = time.perf_counter()
        history = start_module("history", "services.history", env, folder, REPO)
        servers.append(history)
        client = ServiceClient(nc, "history", 10.0)
        await wait_answering(client, history, timeout=600)
        rebuild = time.perf_counter() - started
        total = 1000 + large
        print(
            f"rebuild of {total:,} records: {rebuild:.1f} s ({total / rebuild:,.0f} records/s, "
            f"process start included); peak RSS {rss_peak_mb(history.process.pid):.0f} MB"
        )

        small_p99 = await list_p99s(client, small_ws, now)
        large_p99 = await list_p99s(client, large_ws, now)
        print(f"\nlist p99 (limit 50), ms: 1,000 runs | {large:,} runs | ratio")
        for name, at_small in small_p99.items():
            at_large = large_p99[name]
            print(f"  {name:28} {at_small:7.2f} | {at_large:7.2f} | {at_large / at_small:5.2f}x")

        async def stats() -> RunStats:
            query = RunStatsQuery(workspace_id=large_ws, flow_id=FLOWS[7])
            return await client.call(subjects.HISTORY_RUNS_STATS, query, RunStats)

        figures = await stats()
        print(
            f"\nstats of one flow over 24 h ({figures.total} runs): "
            f"p99 {await timed(stats, 100):.2f} ms"
        )

        live = [make_run(large_ws, now, rng) for _ in range(50_000)]
        # The last change written is the newest run: once it heads the list, all are in.
        newest = Run(**{**_fields(live[-1]), "queued_at": now + timedelta(minutes=1)})
        live[-1] = newest
        started = time.perf_counter()
        await write_runs(nc, live)
        await until_newest(client, large_ws, newest.id)
        took = time.perf_counter() - started
        print(
            f"live ingest: {len(live):,} changes written and applied in {took:.1f} s "
            f"({len(live) / took:,.0f}/s; the bucket writes alone: see above); "
            f"peak RSS {rss_peak_mb(history.process.pid):.0f} MB"
        )
        await nc.drain()
    finally:
        stop_all(servers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000, help="runs of the large workspace")
    parser.add_argument("--million", action="store_true", help="1,000,000 runs")
    args = parser.parse_args(argv)
    large = 1_000_000 if args.million else args.runs
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(
        prefix="bench-history-", dir=shm if shm.is_dir() else None
    ) as folder:
        asyncio.run(run(large, Path(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
