"""Wiring of the history: NATS connection, SQLite store, the bucket's follower, queries."""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts import subjects
from services.history import metrics
from services.history.adapters import RunsFollower, RunStore, SqliteRunStore
from services.history.handlers import Queries, answer, routes
from services.history.settings import HistorySettings
from shared import broker
from shared.metrics import Readiness
from shared.supervise import cancel_and_wait, supervised

log = logging.getLogger(__name__)

RETENTION_EVERY = 600.0
"""Seconds between two retention passes."""


class HistoryApp:
    """Follows the `runs` bucket into its own SQLite and answers `history.v1.*` queries in the
    `history` queue group (run as many replicas as reads need, each with its own file)."""

    def __init__(self, settings: HistorySettings, store: RunStore | None = None) -> None:
        self.settings = settings
        self._store = store
        self._nc: Client | None = None
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()
        # SQLite never runs on the event loop: one thread writes (the follower's batches and
        # retention, in turn), a few read (queries, side by side, beside the writer: WAL).
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="history-writer")
        self._readers = ThreadPoolExecutor(
            settings.history_readers, thread_name_prefix="history-reader"
        )
        self.follower: RunsFollower | None = None
        self.queries: Queries | None = None
        self.readiness = Readiness()

    async def start(self) -> None:
        self._nc = await broker.connect(self.settings.nats_url, "history")
        await broker.ensure_topology(self._nc.jetstream(), self.settings.nats_replicas)
        if self._store is None:
            self._store = SqliteRunStore(self.settings.history_db)
        follower = self.follower = RunsFollower(
            self._nc,
            self._store,
            batch_size=self.settings.history_batch_size,
            commit_interval=self.settings.history_commit_interval,
            retention_days=self.settings.history_retention_days,
            writer=self._writer,
        )
        self._tasks.append(asyncio.create_task(supervised("following runs", follower.follow)))
        # Join the queue group only once caught up with what the bucket held at start: a
        # rebuilding replica would answer with a partial list while others have it all.
        await follower.caught_up.wait()
        self._tasks.append(asyncio.create_task(supervised("retention", self._forget_expired)))
        log.info("history caught up")
        self.queries = Queries(self._store, follower.lag_seconds)
        table = routes(self.queries)
        loop = asyncio.get_running_loop()

        async def respond(msg: Msg) -> None:
            reply = await loop.run_in_executor(self._readers, answer, table, msg.subject, msg.data)
            await msg.respond(reply)

        async def on_query(msg: Msg) -> None:
            # Answered on a reader thread, several at a time; the loop goes on receiving.
            if msg.reply:
                task = asyncio.create_task(respond(msg))
                self._answering.add(task)
                task.add_done_callback(self._answering.discard)

        self._subscription = await self._nc.subscribe(
            f"{subjects.HISTORY_PREFIX}.>", queue=subjects.HISTORY_QUEUE, cb=on_query
        )
        await self._nc.flush()  # serving once started: the server knows the subscription
        self._observe(self._nc, follower, self._store)

    def _observe(self, nc: Client, follower: RunsFollower, store: RunStore) -> None:
        """Readiness checks (`/readyz`) and the projection's lag (metrics)."""
        self.readiness.require("nats", lambda: nc.is_connected)
        self.readiness.require("caught up", follower.caught_up.is_set)
        self.readiness.require("subscribed", lambda: self._subscription is not None)
        metrics.watch_projection(follower.lag_seconds, lambda: follower.applied_sequence)

    async def _forget_expired(self) -> None:
        while True:
            assert self.follower is not None
            gone = await self.follower.forget_expired()
            if gone:
                log.info(
                    "retention: %d runs older than %g days left the history",
                    gone,
                    self.settings.history_retention_days,
                )
            await asyncio.sleep(RETENTION_EVERY)

    async def stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        if self._answering:
            await asyncio.wait(list(self._answering))
        nc, self._nc = self._nc, None
        if nc is not None:
            await nc.drain()
        # A write or query already handed to a thread finishes before the store closes.
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        store, self._store = self._store, None
        if store is not None:
            store.close()


def create_app(settings: HistorySettings, store: RunStore | None = None) -> HistoryApp:
    return HistoryApp(settings, store)
