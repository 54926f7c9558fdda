"""The history service against a real nats-server: it rebuilds from the `runs` bucket, its
replicas answer alike, and a replica stopped mid-ingest resumes without loss or double count."""

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.history import ListRuns, RunPage, RunStats, RunStatsQuery
from contracts.runs import Run, RunStatus
from services.history.app import HistoryApp, create_app
from services.history.settings import HistorySettings
from shared.codec import encode
from shared.ids import new_id
from shared.kv import bucket_stream
from shared.rpc import ServiceClient, ServiceUnavailable

DEADLINE = 10.0


@pytest.fixture
async def runs(js: JetStreamContext) -> KeyValue:
    return await js.key_value(subjects.RUNS_BUCKET)


@pytest.fixture
async def history(nats_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., HistoryApp]]:
    """Makes history replicas (each with its own file unless told); stops them after the test."""
    started: list[HistoryApp] = []

    def make(name: str = "a", batch_size: int = 1000) -> HistoryApp:
        app = create_app(
            HistorySettings(
                nats_url=nats_url,
                history_db=str(tmp_path / name / "history.sqlite"),
                history_batch_size=batch_size,
            )
        )
        started.append(app)
        return app

    yield make
    for app in started:
        await app.stop()


def a_run(workspace_id: str, index: int, status: RunStatus = "queued") -> Run:
    queued_at = datetime.now(UTC) - timedelta(minutes=30) + timedelta(milliseconds=index)
    return Run(
        id=new_id("run", now_ms=int(queued_at.timestamp() * 1000)),
        workspace_id=workspace_id,
        flow_id="flw_history",
        status=status,
        source="api",
        queued_at=queued_at,
        duration_seconds=1.0 if status == "succeeded" else None,
    )


async def record(runs: KeyValue, run: Run) -> None:
    await runs.put(subjects.run_key(run.workspace_id, run.id), encode(run))


async def everything(client: ServiceClient, workspace_id: str) -> list[Run]:
    """Every run of the workspace, page by page over NATS."""
    items: list[Run] = []
    cursor = None
    while True:
        query = ListRuns(workspace_id=workspace_id, limit=500, cursor=cursor)
        page = await client.call(subjects.HISTORY_RUNS_LIST, query, RunPage)
        items += page.items
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor


async def until_listed(client: ServiceClient, workspace_id: str, expected: list[Run]) -> None:
    """Wait until the history lists exactly `expected` (newest first) for the workspace."""
    want = sorted(expected, key=lambda r: (r.queued_at, r.id), reverse=True)
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        try:
            found = await everything(client, workspace_id)
        except ServiceUnavailable:
            # Seen once in a few runs of the whole suite, right after a replica restarted on
            # the same file: the server answered "no responders" though the replica had
            # subscribed and flushed. What this waits for is the list; a replica that never
            # answers still fails at the deadline.
            found = None
        if found == want:
            return
        assert asyncio.get_running_loop().time() < deadline, (
            "no history answered" if found is None else (len(found), len(want))
        )
        await asyncio.sleep(0.05)


async def test_a_new_replica_rebuilds_the_history_from_the_bucket(
    nc: Client, runs: KeyValue, history: Callable[..., HistoryApp]
) -> None:
    workspace_id = new_id("wsp")
    written = [a_run(workspace_id, n, "succeeded") for n in range(300)]
    await asyncio.gather(*(record(runs, run) for run in written))

    replica = history()
    await replica.start()  # an empty file: everything comes from the bucket
    client = ServiceClient(nc, "history", 5.0)

    assert await everything(client, workspace_id) == list(reversed(written))
    head = (await nc.jetstream().stream_info(bucket_stream(subjects.RUNS_BUCKET))).state.last_seq
    assert replica.follower is not None
    assert replica.follower.applied_sequence == head
    stats = await client.call(
        subjects.HISTORY_RUNS_STATS, RunStatsQuery(workspace_id=workspace_id), RunStats
    )
    assert (stats.total, stats.success_rate) == (300, 1.0)


async def test_two_replicas_answer_the_same_pages(
    nc: Client, runs: KeyValue, history: Callable[..., HistoryApp]
) -> None:
    workspace_id = new_id("wsp")
    written = [a_run(workspace_id, n) for n in range(50)]
    await asyncio.gather(*(record(runs, run) for run in written))
    first, second = history("a"), history("b")
    await asyncio.gather(first.start(), second.start())
    client = ServiceClient(nc, "history", 5.0)
    await until_listed(client, workspace_id, written)

    pages = []
    for replica in (first, second):
        assert replica.queries is not None
        query = ListRuns(workspace_id=workspace_id, limit=7, statuses=["queued"])
        page = replica.queries.list_runs(query)
        follow = replica.queries.list_runs(
            ListRuns(workspace_id=workspace_id, limit=7, cursor=page.next_cursor)
        )
        pages.append((page.items, page.next_cursor, follow.items))

    assert pages[0] == pages[1]
    assert len(pages[0][0]) == 7


async def test_a_replica_stopped_mid_ingest_resumes_without_loss_or_double_count(
    nc: Client, runs: KeyValue, history: Callable[..., HistoryApp]
) -> None:
    workspace_id = new_id("wsp")
    written = [a_run(workspace_id, n) for n in range(400)]
    client = ServiceClient(nc, "history", 5.0)
    replica = history("a", batch_size=20)
    await replica.start()
    await asyncio.gather(*(record(runs, run) for run in written[:200]))
    await until_listed(client, workspace_id, written[:200])
    await replica.stop()
    # While it is away: new runs, and changes of runs it already holds.
    await asyncio.gather(*(record(runs, run) for run in written[200:]))
    finished = [
        Run(**{**_fields(run), "status": "succeeded", "duration_seconds": 2.0})
        for run in written[::2]
    ]
    await asyncio.gather(*(record(runs, run) for run in finished))

    again = history("a", batch_size=20)  # the same file
    await again.start()

    latest = {run.id: run for run in [*written, *finished]}
    await until_listed(client, workspace_id, list(latest.values()))
    stats = await client.call(
        subjects.HISTORY_RUNS_STATS, RunStatsQuery(workspace_id=workspace_id), RunStats
    )
    assert stats.total == 400
    assert stats.counts == {"succeeded": 200, "queued": 200}


def _fields(run: Run) -> dict[str, object]:
    return {name: getattr(run, name) for name in run.__struct_fields__}
