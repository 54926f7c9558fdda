"""The scheduler's Prometheus families: how late fires are stored, and fires by ledger status.

`fire lag` is measured when a fire's `flow.start` is stored (its PubAck), from the occurrence's
scheduled time: the delay a schedule's user sees before the run is queued.
"""

import time
from collections.abc import Awaitable
from datetime import datetime
from typing import get_args

from prometheus_client import Counter, Histogram

from contracts.runs import FlowStart
from contracts.scheduling import FireRecord, FireStatus
from services.scheduler.core import Ledger, StartPublisher, Write
from shared.metrics import PREFIX

FIRE_LAG = Histogram(
    f"{PREFIX}_schedule_fire_lag_seconds",
    "Seconds from a fire's scheduled time to its start being stored",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
FIRES = Counter(
    f"{PREFIX}_schedule_fires",
    "Decisions recorded in the triggers' ledgers, by status (started, missed, ...)",
    ["status"],
)
_fires = {status: FIRES.labels(status) for status in get_args(FireStatus)}


class MeasuredStartPublisher:
    """`StartPublisher` that observes each stored start's lag behind its scheduled time."""

    def __init__(self, inner: StartPublisher) -> None:
        self._inner = inner

    def prepare(self, start: FlowStart, msg_id: str) -> Write:
        return MeasuredWrite(self._inner.prepare(start, msg_id), start.scheduled_at)


class MeasuredWrite:
    """A start's `Write` whose lag is observed once it is stored."""

    __slots__ = ("_inner", "_scheduled")

    def __init__(self, inner: Write, scheduled_at: datetime | None) -> None:
        self._inner = inner
        self._scheduled = scheduled_at.timestamp() if scheduled_at is not None else None

    def send(self) -> Awaitable[object]:
        return self._stored(self._inner.send())

    async def _stored(self, sent: Awaitable[object]) -> None:
        await sent
        if self._scheduled is not None:
            FIRE_LAG.observe(max(0.0, time.time() - self._scheduled))


class CountedLedger:
    """`Ledger` that counts every entry it stores by status."""

    def __init__(self, inner: Ledger) -> None:
        self._inner = inner

    async def last_decided(self, workspace_id: str, trigger_id: str) -> datetime | None:
        return await self._inner.last_decided(workspace_id, trigger_id)

    async def record(self, entry: FireRecord) -> None:
        await self._inner.record(entry)
        counter = _fires.get(entry.status)
        if counter is not None:
            counter.inc()
