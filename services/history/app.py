"""Wiring of the history: NATS connection, SQLite store, the bucket's follower, queries."""

import asyncio
import logging

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
        self.follower: RunsFollower | None = None
        self.queries: Queries | None = None
        self.readiness = Readiness()

    async def start(self) -> None:
        self._nc = await broker.connect(self.settings.nats_url, "history")
        js = self._nc.jetstream()
        await broker.ensure_topology(js, self.settings.nats_replicas)
        if self._store is None:
            self._store = SqliteRunStore(self.settings.history_db)
        follower = self.follower = RunsFollower(
            js,
            self._store,
            batch_size=self.settings.history_batch_size,
            retention_days=self.settings.history_retention_days,
        )
        self._tasks.append(asyncio.create_task(supervised("following runs", follower.follow)))
        self._tasks.append(asyncio.create_task(supervised("retention", self._forget_expired)))
        # Join the queue group only once caught up with what the bucket held at start: a
        # rebuilding replica would answer with a partial list while others have it all.
        await follower.caught_up.wait()
        log.info("history caught up at stream sequence %d", self._store.applied_sequence())
        self.queries = Queries(self._store, follower.lag_seconds)
        table = routes(self.queries)

        async def on_query(msg: Msg) -> None:
            # SQLite answers in milliseconds: answered in turn, on the loop.
            if msg.reply:
                await msg.respond(answer(table, msg.subject, msg.data))

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
        metrics.watch_projection(follower.lag_seconds, store.applied_sequence)

    async def _forget_expired(self) -> None:
        while True:
            assert self.follower is not None
            gone = self.follower.forget_expired()
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
        nc, self._nc = self._nc, None
        if nc is not None:
            await nc.drain()
        store, self._store = self._store, None
        if store is not None:
            store.close()


def create_app(settings: HistorySettings, store: RunStore | None = None) -> HistoryApp:
    return HistoryApp(settings, store)
