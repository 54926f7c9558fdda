"""The history's storage and feed: `RunStore` and its SQLite implementation, and the follower
that projects the `runs` bucket's stream into it."""

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE

from contracts import subjects
from contracts.history import ListRuns
from contracts.runs import Run, RunStatus, StartSource
from services.history import core
from services.history.core import Change
from shared.codec import decoder
from shared.kv import bucket_stream
from shared.pull import Puller, delivery
from shared.supervise import cancel_and_wait

log = logging.getLogger(__name__)
T = TypeVar("T")


class RunStore(Protocol):
    """Where a replica keeps its projection (SQLite here; another SQL backend could follow)."""

    def applied_sequence(self) -> int:
        """The stream sequence of the last change applied (0: none yet)."""

    def apply(
        self, changes: Sequence[Change], sequence: int, cutoff: datetime, *, commit: bool = True
    ) -> None:
        """Apply a batch (older revisions than stored are refused) and record `sequence` as
        applied, in the same transaction: the position never runs ahead of the data. With
        `commit` False the transaction stays open for the next batches (queries do not see
        them yet, and a crash loses them with their position) until a commit ends it."""

    def commit(self) -> None:
        """Commit what `apply` left open, if anything."""

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

    def start_rebuild(self) -> None:
        """The store is about to take a whole stream from scratch: it may leave out what a bulk
        load does better at the end (secondary indexes, durable commits)."""

    def finish_rebuild(self) -> None:
        """The rebuild reached the head of the stream: make the store whole again."""

    def close(self) -> None: ...


TABLES = """
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
CREATE TABLE IF NOT EXISTS position (
    name TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL
);
"""
INDEXES = """
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
"""
SECONDARY_INDEXES = (
    "runs_by_time",
    "runs_by_flow",
    "runs_by_trigger",
    "runs_by_status",
    "runs_by_source",
)
SCHEMA = TABLES + INDEXES

UPSERT = """
INSERT INTO runs (id, workspace_id, flow_id, trigger_id, status, source, queued_at, duration,
                  error, revision, record)
SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5,
       value ->> 6, value ->> 7, value ->> 8, value ->> 9,
       substr(?2, value ->> 10, value ->> 11)
FROM json_each(?1) WHERE true
ON CONFLICT (id) DO UPDATE SET
    status = excluded.status, duration = excluded.duration, error = excluded.error,
    revision = excluded.revision, record = excluded.record
WHERE excluded.revision > runs.revision
"""
# A batch's rows go in as one JSON array, one statement: `executemany` steps once per row and
# lets go of the GIL around each step, and taking it back from a busy event loop costs up to
# the switch interval (5 ms) every time (measured: a quarter of the rate, with the loop busy).
# The records themselves go in side by side in one blob, each taken by its offset and length:
# inside the JSON they would be escaped, parsed and unescaped again.
# (`WHERE true` tells the parser the ON CONFLICT is the upsert's, not the join's.)
# A run's workspace, flow, trigger, source and queued time are set when the runner creates its
# record and never change: an update leaves them, and the indexes made of them alone, as they
# are (SQLite rewrites every index holding a column the SET names).
# The same rule as `core.is_newer`, kept in SQL so a batch is one statement per run.
REMOVE = "DELETE FROM runs WHERE id = ? AND revision < ?"
FORGET_CHUNK = 10_000
"""Runs removed per transaction by retention, so queries are never held up for long."""


class RunRow(msgspec.Struct, frozen=True):
    """The fields of a run record the projection indexes: decoding only these costs a third of
    decoding a whole `Run` (the rest of the record is kept and answered as it came)."""

    id: str
    workspace_id: str
    flow_id: str
    status: RunStatus
    source: StartSource
    queued_at: datetime
    trigger_id: str | None = None
    error: str | None = None
    duration_seconds: float | None = None


encode_rows = msgspec.json.Encoder().encode

REBUILD_COMMIT_CHANGES = 100_000
"""Changes a rebuild applies per commit (a crash loses at most these: they come again)."""
READER_CACHE_KIB = 16 * 1024
WRITER_CACHE_KIB = 64 * 1024


class SqliteRunStore:
    """The projection in one SQLite file (WAL: readers never wait for the writer).

    One writer connection, used by one thread at a time (the history's writer thread), and a
    reader connection per reading thread, so queries run beside a write."""

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect(WRITER_CACHE_KIB)
        self._db.execute("PRAGMA journal_mode = WAL")
        # The bucket is the truth: a write lost to a crash is applied again from the stream,
        # because the position is committed with its data.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(SCHEMA)
        self._decode_row = msgspec.json.Decoder(RunRow).decode
        self._decode = decoder(Run).decode
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._rebuilding = False
        self._uncommitted = 0
        """Changes applied since the last commit (a rebuild commits every so many)."""

    def _connect(self, cache_kib: int) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA cache_size = -{cache_kib}")
        db.execute("PRAGMA temp_store = MEMORY")
        return db

    def _reader(self) -> sqlite3.Connection:
        """This thread's reading connection (opened on its first query)."""
        if self._path == ":memory:":
            return self._db  # a private in-memory database: one connection sees it
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect(READER_CACHE_KIB)
            db.execute("PRAGMA query_only = ON")
            with self._readers_lock:
                self._readers.append(db)
        return db

    def applied_sequence(self) -> int:
        row = self._db.execute("SELECT sequence FROM position WHERE name = 'runs'").fetchone()
        return int(row[0]) if row else 0

    def apply(
        self, changes: Sequence[Change], sequence: int, cutoff: datetime, *, commit: bool = True
    ) -> None:
        puts = []
        records = []
        offset = 1  # where the next record starts in their blob (SQLite counts from 1)
        removals = []
        cutoff_us = core.microseconds(cutoff)
        decode_row = self._decode_row
        epoch, unit = core.EPOCH, core.MICROSECOND
        for run_id, revision, record in core.newest_per_run(changes):
            if record is None:
                removals.append((run_id, revision))
                continue
            try:
                run = decode_row(record)
            except msgspec.DecodeError as error:  # ValidationError included
                log.error("skipping undecodable run record %s: %s", run_id, error)
                continue
            queued_at = run.queued_at
            if queued_at.tzinfo is None:
                queued_at = queued_at.replace(tzinfo=UTC)
            queued_at_us = (queued_at - epoch) // unit  # core.microseconds, inlined: per row
            if core.kept(queued_at_us, cutoff_us):
                puts.append(
                    (
                        run.id,
                        run.workspace_id,
                        run.flow_id,
                        run.trigger_id,
                        run.status,
                        run.source,
                        queued_at_us,
                        run.duration_seconds,
                        run.error,
                        revision,
                        offset,
                        len(record),
                    )
                )
                records.append(record)
                offset += len(record)
        db = self._db
        if not db.in_transaction:
            db.execute("BEGIN IMMEDIATE")
        try:
            if puts:
                db.execute(UPSERT, (encode_rows(puts), b"".join(records)))
            if removals:
                db.executemany(REMOVE, removals)
            db.execute(
                "INSERT INTO position (name, sequence) VALUES ('runs', ?) "
                "ON CONFLICT (name) DO UPDATE SET sequence = max(sequence, excluded.sequence)",
                (sequence,),
            )
            self._uncommitted += len(changes)
            # A rebuild commits far less often: each commit writes every page the batch
            # touched, and random run ids touch most of the id index's pages every time.
            if self._rebuilding:
                commit = self._uncommitted >= REBUILD_COMMIT_CHANGES
            if commit:
                db.execute("COMMIT")
                self._uncommitted = 0
        except BaseException:
            db.execute("ROLLBACK")
            self._uncommitted = 0
            raise

    def commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._uncommitted = 0

    def start_rebuild(self) -> None:
        self.commit()
        # Only an empty store: its indexes are then built once from sorted data at the end,
        # rather than kept up to date a million random inserts at a time. Commits need not
        # be durable meanwhile: a rebuild cut short starts over from the bucket anyway.
        if self._db.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None:
            return
        for index in SECONDARY_INDEXES:
            self._db.execute(f"DROP INDEX IF EXISTS {index}")
        self._db.execute("PRAGMA synchronous = OFF")
        self._rebuilding = True

    def finish_rebuild(self) -> None:
        self.commit()
        self._rebuilding = False
        self._db.executescript(INDEXES)  # only those missing
        self._db.execute("PRAGMA synchronous = NORMAL")
        # The bulk load left a large write-ahead log: fold it in and give the space back.
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

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
        until = core.microseconds(query.until) if query.until is not None else None
        position = core.position_of(query.cursor) if query.cursor is not None else None
        if until is not None and (position is None or position[0] >= until):
            # Without a cursor, or one at or after `until` (which then says it all). A cursor
            # before `until` says it alone: given both, SQLite bounds the index scan with
            # `until` and filters the cursor, reading every page before this one.
            where.append("queued_at < ?")
            params.append(until)
            position = None
        if query.q:
            # No index serves text search: it scans the workspace's runs the other filters
            # leave (documented; the filters narrow it).
            matches = ["id = ?", "id LIKE ? ESCAPE '\\'", "instr(error, ?) > 0"]
            params.extend([query.q, _like_prefix(query.q), query.q])
            if query.q_run_id:
                matches.append("id = ?")
                params.append(query.q_run_id)
            where.append(f"({' OR '.join(matches)})")
        if position is not None:
            where.append("(queued_at, id) < (?, ?)")
            params.extend(position)
        # One more than the page says whether a next page exists. The index is named: with
        # several filters SQLite may otherwise pick one that does not give the order, and sort.
        sql = (
            f"SELECT queued_at, id, record FROM runs INDEXED BY {index} "
            f"WHERE {' AND '.join(where)} ORDER BY queued_at DESC, id DESC LIMIT ?"
        )
        params.append(query.limit + 1)
        rows = self._reader().execute(sql, params).fetchall()
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
        return self._reader().execute(sql, params).fetchall()

    def forget_before(self, cutoff: datetime) -> int:
        # Workspace by workspace, on the list's own index: an index of its own would slow
        # every insert (measured: a third of the ingest rate) for a pass every few minutes.
        self.commit()
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
        self.commit()
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM runs")
        self._db.execute("DELETE FROM position")
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for db in readers:
            db.close()
        self._db.close()


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


# --- following the bucket ---------------------------------------------------------------------

IDLE_CHECK = 1.0
"""Seconds without a change after which the follower checks that its consumer still exists (a
server restart forgets it, and pulls then only go unanswered)."""
INACTIVE_THRESHOLD = 30.0
"""Seconds after which the server removes a reading consumer this replica left behind."""
BUFFERED_BATCHES = 4
"""Batches of changes received ahead of the writer: the next ones arrive while one is written,
and no more than this waits in memory."""


def change_of(msg: Msg) -> Change:
    """The change a message of the bucket's stream carries."""
    run_id = subjects.record_id(msg.subject)
    sequence = delivery(msg).stream_sequence
    headers = msg.headers
    if not msg.data or (headers is not None and headers.get(KV_OP) in (KV_DEL, KV_PURGE)):
        return Change(run_id, sequence, None)
    return Change(run_id, sequence, msg.data)


def pending_after(msg: Msg) -> int:
    """How many messages the consumer still had for this replica after `msg`."""
    tokens = (msg.reply or "").split(".")
    # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>; v2 adds the
    # domain and account hash after ACK and a random token at the end.
    return int(tokens[8] if len(tokens) == 9 else tokens[10])


class RunsFollower:
    """Projects the `runs` bucket's own stream into a `RunStore`: from the sequence after the
    last one applied, with a consumer of its own that keeps no state on the server (the
    position lives in the store, committed with the data). A restart resumes; a wiped store
    starts from sequence 1, which rebuilds it (the stream holds every run's latest record).

    The event loop only receives: every store call runs on `writer`, one thread, so SQLite
    never holds up NATS, and the next changes arrive while a batch is written."""

    def __init__(
        self,
        nc: Client,
        store: RunStore,
        *,
        batch_size: int,
        retention_days: float,
        writer: Executor,
        commit_interval: float = 0.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._store = store
        self._batch_size = batch_size
        self._retention_days = retention_days
        self._writer = writer
        self._clock = clock
        self._commit_interval = commit_interval
        self._monotonic = monotonic
        self._open_since: float | None = None
        """When the open transaction began (monotonic), or None: all applied is committed."""
        self._uncommitted_since: datetime | None = None
        """When the oldest change applied but not committed yet was stored (its lag runs on)."""
        self._received: list[Msg] = []
        self._window: list[Msg] = []
        """Changes received for the open transaction, not written yet."""
        self._arrived = asyncio.Event()
        self.behind_since: datetime | None = clock()
        """None while caught up; else the age of the oldest change maybe not applied yet."""
        self.caught_up = asyncio.Event()
        """Set once the projection holds what the stream held when following began."""
        self._rebuilding = False
        self.applied_sequence = 0
        """The stream sequence of the last change applied (kept here so that readers on other
        threads, such as a metrics scrape, never touch the writer's connection)."""

    def lag_seconds(self) -> float:
        return core.lag_seconds(self._clock(), self.behind_since)

    async def _write(self, call: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, call, *args)

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
        finally:
            self._received.clear()
            self._window.clear()  # not written: they come again from the applied position

    async def _follow(self, stream: str) -> None:
        # A transaction a previous attempt left open is whole (its position with its data).
        await self._write(self._store.commit)
        self._open_since = self._uncommitted_since = None
        info = await self._js.stream_info(stream)
        last = info.state.last_seq
        if core.must_rebuild(await self._write(self._store.applied_sequence), last):
            log.warning("the runs stream was recreated: rebuilding the history from it")
            await self._write(self._store.reset)
        applied = self.applied_sequence = await self._write(self._store.applied_sequence)
        if applied == 0 and last > 0:
            self._rebuilding = True
            await self._write(self._store.start_rebuild)
        if applied >= last:
            await self._caught_up()
        consumer = await self._js.add_consumer(
            stream,
            ConsumerConfig(
                # No subject filter: the bucket's stream holds only its records, and a
                # filter over a million subjects makes the server slower to deliver.
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=applied + 1,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=INACTIVE_THRESHOLD,
                mem_storage=True,
            ),
        )
        assert consumer.name is not None
        most = self._batch_size * BUFFERED_BATCHES
        puller = Puller(
            self._nc,
            stream,
            consumer.name,
            capacity=lambda: most - len(self._received),
            dispatch=self._receive,
            least=min(most, max(1, self._batch_size // 2)),
        )
        pulling = asyncio.create_task(puller.run())
        try:
            await self._apply_received(stream, consumer.name, puller)
        finally:
            await cancel_and_wait(pulling)
            with contextlib.suppress(Exception, NotFoundError):
                await self._js.delete_consumer(stream, consumer.name)

    def _receive(self, msg: Msg) -> None:
        if self.behind_since is None:
            self.behind_since = datetime.fromtimestamp(delivery(msg).stored_at, UTC)
        self._received.append(msg)
        self._arrived.set()

    async def _apply_received(self, stream: str, consumer: str, puller: Puller) -> None:
        last: Msg | None = None  # the last change applied: its stored time, what was pending
        while True:
            if not self._received and self._open_since is not None:
                # Applied but not committed: commit once the interval is over, unless more
                # changes come first (they join the transaction).
                due = self._commit_interval - (self._monotonic() - self._open_since)
                if due > 0:
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(due):
                            await self._arrived.wait()
                    continue
                await self._flush(commit=True)
                self._open_since = self._uncommitted_since = None
                if last is not None:
                    await self._account(last)
                continue
            if not self._received:
                self._arrived.clear()
                try:
                    async with asyncio.timeout(IDLE_CHECK):
                        await self._arrived.wait()
                except TimeoutError:
                    # Nothing new for a while: ask (`consumer_info` raises if the consumer is
                    # gone, and following starts over). Silence alone is no proof of being
                    # caught up: a busy server may just be slow to deliver.
                    info = await self._js.consumer_info(stream, consumer)
                    if not info.num_pending:
                        await self._caught_up()
                    else:
                        log.warning(
                            "no run change for %gs, %d pending", IDLE_CHECK, info.num_pending
                        )
                continue
            batch = self._received[: self._batch_size]
            del self._received[: self._batch_size]
            puller.freed.set()
            cutoff = core.retention_cutoff(self._clock(), self._retention_days)
            now = self._monotonic()
            if self._open_since is None:
                self._open_since = now
                self._uncommitted_since = datetime.fromtimestamp(delivery(batch[0]).stored_at, UTC)
            # Each commit writes every page its transaction touched: under a steady load that
            # is a page per trigger and per flow of the runs, however few runs each has. The
            # transaction takes the batches of `commit_interval` seconds, so these pages are
            # written once for all of them; queries see a change that much later at most.
            commit = now - self._open_since >= self._commit_interval
            # The changes of a transaction are written together when it commits (or once a
            # statement's worth is waiting): a run that is queued, starts and ends within it is
            # then written once, not three times (each write updates most of the indexes).
            # Queries see nothing before the commit either way. A rebuild writes every batch:
            # it holds each run once.
            self._window += batch
            if commit or self._rebuilding or len(self._window) >= self._batch_size:
                await self._flush(commit, cutoff)
            if commit:
                self._open_since = self._uncommitted_since = None
            last = batch[-1]
            await self._account(last)

    async def _flush(self, commit: bool, cutoff: datetime | None = None) -> None:
        """Write the changes waiting in the window (and commit, if told)."""
        if not self._window:
            if commit:
                await self._write(self._store.commit)
            return
        window, self._window = self._window, []
        if cutoff is None:
            cutoff = core.retention_cutoff(self._clock(), self._retention_days)
        await self._write(self._apply, window, cutoff, commit)
        self.applied_sequence = delivery(window[-1]).stream_sequence

    async def _account(self, last: Msg) -> None:
        """How far behind the queries are, after applying or committing up to `last`."""
        if self._uncommitted_since is not None:
            # Applied, but not seen by queries until committed.
            self.behind_since = self._uncommitted_since
        elif self._received:
            # What is still to apply was written after the last change applied.
            self.behind_since = datetime.fromtimestamp(delivery(self._received[0]).stored_at, UTC)
        elif pending_after(last) == 0:
            await self._caught_up()
        else:
            self.behind_since = datetime.fromtimestamp(delivery(last).stored_at, UTC)

    def _apply(self, batch: list[Msg], cutoff: datetime, commit: bool) -> None:
        """On the writer thread: the batch's changes and its last sequence, in one transaction."""
        changes = [change_of(msg) for msg in batch]
        self._store.apply(changes, changes[-1].revision, cutoff, commit=commit)

    async def _caught_up(self) -> None:
        if self._rebuilding:
            log.info("history rebuilt up to the head of the stream: building its indexes")
            await self._write(self._store.finish_rebuild)
            self._rebuilding = False
        self.behind_since = None
        self.caught_up.set()

    async def forget_expired(self) -> int:
        cutoff = core.retention_cutoff(self._clock(), self._retention_days)
        return await self._write(self._store.forget_before, cutoff)
