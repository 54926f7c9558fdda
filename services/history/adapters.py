"""The history's storage and feed: `RunStore` and its SQLite implementation, and the follower
that projects the `runs` bucket's stream into it."""

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE

from contracts import subjects
from contracts.history import ListRuns
from contracts.runs import Run
from services.history import core
from services.history.core import Change
from shared.codec import decoder
from shared.kv import bucket_stream
from shared.pull import delivery

log = logging.getLogger(__name__)


class RunStore(Protocol):
    """Where a replica keeps its projection (SQLite here; another SQL backend could follow)."""

    def applied_sequence(self) -> int:
        """The stream sequence of the last change applied (0: none yet)."""

    def apply(self, changes: Sequence[Change], sequence: int, cutoff: datetime) -> None:
        """Apply a batch (older revisions than stored are refused) and record `sequence` as
        applied, in one transaction: the position never runs ahead of the data."""

    def list_runs(self, query: ListRuns) -> tuple[list[Run], str | None]:
        """A page of runs and the cursor of the next one (None: no more)."""

    def stats_rows(
        self,
        workspace_id: str,
        flow_id: str | None,
        trigger_id: str | None,
        since: datetime,
        until: datetime,
    ) -> list[tuple[str, int, float | None]]:
        """`(status, queued_at_us, duration)` of the runs of a window, for `core.summarize`."""

    def forget_before(self, cutoff: datetime) -> int:
        """Remove the runs queued before `cutoff`; how many went."""

    def reset(self) -> None:
        """Forget everything (the stream was recreated)."""

    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    trigger_id TEXT,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    queued_at INTEGER NOT NULL,
    duration REAL,
    error TEXT,
    revision INTEGER NOT NULL,
    record BLOB NOT NULL
);
-- Newest first by (queued_at, id) within a workspace, alone or with one equality filter; the
-- trailing columns let a status filter and the stats read the index only.
CREATE INDEX IF NOT EXISTS runs_by_time
    ON runs (workspace_id, queued_at, id, status);
CREATE INDEX IF NOT EXISTS runs_by_flow
    ON runs (workspace_id, flow_id, queued_at, id, status, duration);
CREATE INDEX IF NOT EXISTS runs_by_trigger
    ON runs (workspace_id, trigger_id, queued_at, id, status, duration);
CREATE INDEX IF NOT EXISTS runs_by_status
    ON runs (workspace_id, status, queued_at, id);
CREATE INDEX IF NOT EXISTS runs_by_source
    ON runs (workspace_id, source, queued_at, id);
CREATE TABLE IF NOT EXISTS position (
    name TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL
);
"""

UPSERT = """
INSERT INTO runs (id, workspace_id, flow_id, trigger_id, status, source, queued_at, duration,
                  error, revision, record)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    workspace_id = excluded.workspace_id, flow_id = excluded.flow_id,
    trigger_id = excluded.trigger_id, status = excluded.status, source = excluded.source,
    queued_at = excluded.queued_at, duration = excluded.duration, error = excluded.error,
    revision = excluded.revision, record = excluded.record
WHERE excluded.revision > runs.revision
"""
# The same rule as `core.is_newer`, kept in SQL so a batch is one statement per run.
REMOVE = "DELETE FROM runs WHERE id = ? AND revision < ?"
FORGET_CHUNK = 10_000
"""Runs removed per transaction by retention, so queries are never held up for long."""


class SqliteRunStore:
    """The projection in one SQLite file (WAL: readers never wait for the writer)."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        # The bucket is the truth: a write lost to a crash is applied again from the stream,
        # because the position is committed with its data.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA cache_size = -65536")  # 64 MiB
        self._db.execute("PRAGMA temp_store = MEMORY")
        self._db.executescript(SCHEMA)
        self._decode = decoder(Run).decode

    def applied_sequence(self) -> int:
        row = self._db.execute("SELECT sequence FROM position WHERE name = 'runs'").fetchone()
        return int(row[0]) if row else 0

    def apply(self, changes: Sequence[Change], sequence: int, cutoff: datetime) -> None:
        puts = []
        removals = []
        for change in core.newest_per_run(changes):
            if change.run is None:
                removals.append((change.run_id, change.revision))
            elif core.kept(change, cutoff):
                run = change.run
                puts.append(
                    (
                        run.id,
                        run.workspace_id,
                        run.flow_id,
                        run.trigger_id,
                        run.status,
                        run.source,
                        core.microseconds(run.queued_at),
                        run.duration_seconds,
                        run.error,
                        change.revision,
                        change.record,
                    )
                )
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(UPSERT, puts)
            db.executemany(REMOVE, removals)
            db.execute(
                "INSERT INTO position (name, sequence) VALUES ('runs', ?) "
                "ON CONFLICT (name) DO UPDATE SET sequence = max(sequence, excluded.sequence)",
                (sequence,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def list_runs(self, query: ListRuns) -> tuple[list[Run], str | None]:
        where = ["workspace_id = ?"]
        params: list[object] = [query.workspace_id]
        index = "runs_by_time"
        if query.flow_id is not None:
            where.append("flow_id = ?")
            params.append(query.flow_id)
            index = "runs_by_flow"
        if query.trigger_id is not None:
            where.append("trigger_id = ?")
            params.append(query.trigger_id)
            index = "runs_by_trigger" if query.flow_id is None else index
        if query.statuses:
            where.append(f"status IN ({', '.join('?' * len(query.statuses))})")
            params.extend(query.statuses)
            if len(query.statuses) == 1 and index == "runs_by_time":
                index = "runs_by_status"
        if query.source is not None:
            where.append("source = ?")
            params.append(query.source)
            index = "runs_by_source" if index == "runs_by_time" else index
        if query.since is not None:
            where.append("queued_at >= ?")
            params.append(core.microseconds(query.since))
        if query.until is not None:
            where.append("queued_at < ?")
            params.append(core.microseconds(query.until))
        if query.q:
            # No index serves text search: it scans the workspace's runs the other filters
            # leave (documented; the filters narrow it).
            matches = ["id = ?", "id LIKE ? ESCAPE '\\'", "instr(error, ?) > 0"]
            params.extend([query.q, _like_prefix(query.q), query.q])
            if query.q_run_id:
                matches.append("id = ?")
                params.append(query.q_run_id)
            where.append(f"({' OR '.join(matches)})")
        if query.cursor is not None:
            at, run_id = core.position_of(query.cursor)
            where.append("(queued_at, id) < (?, ?)")
            params.extend([at, run_id])
        # One more than the page says whether a next page exists. The index is named: with
        # several filters SQLite may otherwise pick one that does not give the order, and sort.
        sql = (
            f"SELECT queued_at, id, record FROM runs INDEXED BY {index} "
            f"WHERE {' AND '.join(where)} ORDER BY queued_at DESC, id DESC LIMIT ?"
        )
        params.append(query.limit + 1)
        rows = self._db.execute(sql, params).fetchall()
        page = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            last = page[-1]
            next_cursor = core.cursor_of(last[0], last[1])
        return [self._decode(row[2]) for row in page], next_cursor

    def stats_rows(
        self,
        workspace_id: str,
        flow_id: str | None,
        trigger_id: str | None,
        since: datetime,
        until: datetime,
    ) -> list[tuple[str, int, float | None]]:
        where = ["workspace_id = ?", "queued_at >= ?", "queued_at < ?"]
        params: list[object] = [
            workspace_id,
            core.microseconds(since),
            core.microseconds(until),
        ]
        if flow_id is not None:
            where.append("flow_id = ?")
            params.append(flow_id)
        if trigger_id is not None:
            where.append("trigger_id = ?")
            params.append(trigger_id)
        sql = f"SELECT status, queued_at, duration FROM runs WHERE {' AND '.join(where)}"
        return [(row[0], row[1], row[2]) for row in self._db.execute(sql, params)]

    def forget_before(self, cutoff: datetime) -> int:
        # Workspace by workspace, on the list's own index: an index of its own would slow
        # every insert (measured: a third of the ingest rate) for a pass every few minutes.
        limit = core.microseconds(cutoff)
        workspaces = [row[0] for row in self._db.execute("SELECT DISTINCT workspace_id FROM runs")]
        gone = 0
        for workspace_id in workspaces:
            while True:
                cursor = self._db.execute(
                    "DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs INDEXED BY "
                    "runs_by_time WHERE workspace_id = ? AND queued_at < ? LIMIT ?)",
                    (workspace_id, limit, FORGET_CHUNK),
                )
                gone += cursor.rowcount
                if cursor.rowcount < FORGET_CHUNK:
                    break
        return gone

    def reset(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM runs")
        self._db.execute("DELETE FROM position")
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


# --- following the bucket ---------------------------------------------------------------------

RUNS_SUBJECTS = f"$KV.{subjects.RUNS_BUCKET}.>"
FETCH_TIMEOUT = 1.0
"""Seconds one pull waits for new changes before asking again."""
INACTIVE_THRESHOLD = 30.0
"""Seconds after which the server removes a reading consumer this replica left behind."""


def change_of(msg: Msg, sequence: int) -> Change | None:
    """The change a message of the bucket's stream carries (None: not a run record)."""
    run_id = subjects.record_id(msg.subject)
    if (msg.headers or {}).get(KV_OP) in (KV_DEL, KV_PURGE) or not msg.data:
        return Change(run_id=run_id, revision=sequence, run=None)
    try:
        run: Run = decoder(Run).decode(msg.data)
    except msgspec.DecodeError as error:
        log.error("skipping undecodable run record %s: %s", msg.subject, error)
        return None
    return Change(run_id=run.id, revision=sequence, run=run, record=msg.data)


class RunsFollower:
    """Projects the `runs` bucket's own stream into a `RunStore`: from the sequence after the
    last one applied, with a consumer of its own that keeps no state on the server (the
    position lives in the store, committed with the data). A restart resumes; a wiped store
    starts from sequence 1, which rebuilds it (the stream holds every run's latest record)."""

    def __init__(
        self,
        js: JetStreamContext,
        store: RunStore,
        *,
        batch_size: int,
        retention_days: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._js = js
        self._store = store
        self._batch_size = batch_size
        self._retention_days = retention_days
        self._clock = clock
        self.behind_since: datetime | None = clock()
        """None while caught up; else the age of the oldest change maybe not applied yet."""
        self.caught_up = asyncio.Event()
        """Set once the projection holds what the stream held when following began."""

    def lag_seconds(self) -> float:
        return core.lag_seconds(self._clock(), self.behind_since)

    async def follow(self) -> None:
        """Follow until cancelled or until something fails (run it under `supervised`)."""
        stream = bucket_stream(subjects.RUNS_BUCKET)
        try:
            await self._follow(stream)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self.behind_since is None:
                self.behind_since = self._clock()
            raise

    async def _follow(self, stream: str) -> None:
        info = await self._js.stream_info(stream)
        last = info.state.last_seq
        if core.must_rebuild(self._store.applied_sequence(), last):
            log.warning("the runs stream was recreated: rebuilding the history from it")
            self._store.reset()
        applied = self._store.applied_sequence()
        if applied >= last:
            self._caught_up()
        consumer = await self._js.add_consumer(
            stream,
            ConsumerConfig(
                filter_subject=RUNS_SUBJECTS,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=applied + 1,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=INACTIVE_THRESHOLD,
                mem_storage=True,
            ),
        )
        subscription = await self._js.pull_subscribe_bind(stream=stream, name=consumer.name)
        try:
            while True:
                try:
                    batch = await subscription.fetch(self._batch_size, timeout=FETCH_TIMEOUT)
                except TimeoutError:
                    # Nothing new for a while, unless the consumer is gone (a server restart
                    # forgets it, and nats-py then only times out): ask, and start over if so.
                    await self._js.consumer_info(stream, consumer.name)
                    self._caught_up()
                    continue
                self._apply(batch)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            with contextlib.suppress(Exception, NotFoundError):
                await self._js.delete_consumer(stream, consumer.name)

    def _apply(self, batch: list[Msg]) -> None:
        changes = []
        for msg in batch:
            change = change_of(msg, delivery(msg).stream_sequence)
            if change is not None:
                changes.append(change)
        last = batch[-1].metadata  # the full metadata once a batch: it costs
        cutoff = core.retention_cutoff(self._clock(), self._retention_days)
        self._store.apply(changes, last.sequence.stream, cutoff)
        if last.num_pending == 0:
            self._caught_up()
        else:
            # What is still pending was written after the last change applied.
            self.behind_since = datetime.fromtimestamp(delivery(batch[-1]).stored_at, UTC)

    def _caught_up(self) -> None:
        self.behind_since = None
        self.caught_up.set()

    def forget_expired(self) -> int:
        cutoff = core.retention_cutoff(self._clock(), self._retention_days)
        return self._store.forget_before(cutoff)
