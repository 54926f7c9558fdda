"""The scheduler's work: keep one timer parked per armed schedule trigger, turn ticks into starts.

`Scheduler` holds the decisions and talks to the world through three small Protocols
(`TriggerStore`, `Timers`, `Starts`) and a clock, so it is tested with fakes and no broker.
`consume_tick` is the thin adapter from a JetStream tick message to `Scheduler.fire`.

Consistency rules, all of which make repeated or reordered work harmless:

- Every write reads the trigger's *current* state from the store right before it, under a
  per-trigger lock, so a timer is never parked for a version this process knows to be old.
- Every replica reacts to every trigger change (parking the same timer twice just replaces it);
  if replicas race, the tick carries the trigger version and a stale tick never starts a flow.
- A start is published with `Nats-Msg-Id = <trigger id>:<scheduled time>` and a run id derived
  from the same, so a retried tick or two replicas handling it stay one run.
"""

import asyncio
import logging
import weakref
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.registry import CronSchedule, Trigger
from contracts.runs import FlowStart
from contracts.scheduling import ScheduleTick
from services.scheduler import cron
from shared.broker import reject
from shared.codec import decode
from shared.ids import derived_id

log = logging.getLogger(__name__)

SERVICE = "scheduler"

Clock = Callable[[], datetime]
"""Returns the current time as an aware datetime."""

TickOutcome = Literal["started", "stale", "store_behind"]
"""What `Scheduler.fire` did: published a start, dropped a stale tick, or could not judge the
tick yet because the local trigger store has not caught up with the tick's trigger version."""

MAX_DELIVERIES_WHILE_BEHIND = 10
"""After this many deliveries a tick from a version the store never shows is dropped."""


def now_utc() -> datetime:
    """The wall clock, as an aware UTC datetime."""
    return datetime.now(UTC)


class TriggerStore(Protocol):
    """Read access to the current triggers (in production: a `KvMirror` of the triggers bucket)."""

    def get(self, key: str) -> Trigger | None: ...

    def values(self) -> Iterator[Trigger]: ...


class Timers(Protocol):
    """One parked timer per trigger: parking replaces the trigger's previous timer."""

    async def park(self, tick: ScheduleTick) -> None:
        """Park `tick` until its `scheduled_at`, replacing the trigger's earlier timer."""

    async def parked(self, trigger_id: str) -> ScheduleTick | None:
        """The trigger's parked timer, or None if there is none."""

    async def cancel(self, trigger_id: str) -> None:
        """Remove the trigger's timer (and any tick of it not yet handled)."""


class Starts(Protocol):
    """Where flow starts go (in production: JetStream `flow.start`, awaiting the PubAck)."""

    async def publish(self, start: FlowStart, msg_id: str) -> None:
        """Store `start` durably; a second publish with the same `msg_id` is stored once."""


def armed_schedule(trigger: Trigger | None) -> CronSchedule | None:
    """The schedule of a trigger the scheduler must keep a timer for, or None."""
    if trigger is None or trigger.type != "schedule" or not trigger.enabled:
        return None
    return trigger.schedule


def fire_key(trigger_id: str, scheduled_at: datetime) -> str:
    """The identity of one fire: the `Nats-Msg-Id` of its start and the seed of its run id."""
    return f"{trigger_id}:{scheduled_at.astimezone(UTC).isoformat()}"


def flow_start(trigger: Trigger, scheduled_at: datetime, requested_at: datetime) -> FlowStart:
    """The start of `trigger`'s flow for the fire at `scheduled_at` (same fire, same run id)."""
    scheduled_ms = int(scheduled_at.timestamp() * 1000)
    return FlowStart(
        run_id=derived_id("run", scheduled_ms, fire_key(trigger.id, scheduled_at).encode()),
        workspace_id=trigger.workspace_id,
        flow_id=trigger.flow_id,
        input=None,
        source="schedule",
        trigger_id=trigger.id,
        scheduled_at=scheduled_at,
        requested_at=requested_at,
        overlap=trigger.overlap,
    )


class Scheduler:
    """Keeps the parked timers in line with the triggers and turns due ticks into starts.

    Missed fires are skipped: after a tick, the next timer is the next fire after the tick's
    time, or, if that is already past (the scheduler was down), the next fire after now. The
    one tick that was due while every replica was down is still delivered and starts late.
    A later version replaces this with per-trigger misfire and overlap policies.
    """

    def __init__(
        self,
        triggers: TriggerStore,
        timers: Timers,
        starts: Starts,
        *,
        clock: Clock = now_utc,
        concurrency: int = 64,
    ) -> None:
        self._triggers = triggers
        self._timers = timers
        self._starts = starts
        self._clock = clock
        self._concurrency = concurrency
        self._following = False
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- Following trigger changes ---------------------------------------------------------

    def on_trigger_change(self, key: str, old: Trigger | None, new: Trigger | None) -> None:
        """Store callback (sync): re-park or cancel the trigger's timer in the background.

        Ignored until `reconcile` has started: the first replay of the store is reconciled
        against the parked timers instead, so a restart does not re-park every timer.
        """
        if not self._following:
            return
        new_schedule, old_schedule = armed_schedule(new), armed_schedule(old)
        if new_schedule is None and old_schedule is None:
            return
        if (
            new is not None
            and old is not None
            and new_schedule == old_schedule
            and new.version == old.version
        ):
            return
        self._spawn(self._sync_until_done(key))

    async def sync(self, trigger_id: str) -> None:
        """Make the trigger's timer match its current state: park a fresh one, or cancel it."""
        async with self._lock(trigger_id):
            if not await self._park_current(trigger_id, self._clock()):
                await self._timers.cancel(trigger_id)

    async def reconcile(self) -> None:
        """Park a timer for every armed trigger that has none, or one of an older version.

        Timers of triggers that were deleted or paused while no scheduler ran are not looked
        for: such a timer fires once more, its tick is recognised as stale and dropped, and it
        is never parked again. That costs one wasted tick instead of listing every timer.
        """
        self._following = True
        trigger_ids = iter([t.id for t in self._triggers.values() if armed_schedule(t)])
        failures: list[str] = []

        async def work() -> None:
            for trigger_id in trigger_ids:
                try:
                    await self.ensure_parked(trigger_id)
                except Exception:
                    log.exception("could not park the timer of trigger %s", trigger_id)
                    failures.append(trigger_id)

        await asyncio.gather(*(work() for _ in range(self._concurrency)))
        if failures:
            raise RuntimeError(f"could not park the timers of {len(failures)} triggers")

    async def ensure_parked(self, trigger_id: str) -> None:
        """Park the trigger's timer unless one of its current version is already parked."""
        async with self._lock(trigger_id):
            if armed_schedule(self._triggers.get(trigger_id)) is None:
                return
            parked = await self._timers.parked(trigger_id)
            trigger = self._triggers.get(trigger_id)  # may have changed while we waited
            if (
                parked is not None
                and trigger is not None
                and parked.trigger_version == trigger.version
            ):
                return
            await self._park_current(trigger_id, self._clock())

    # --- Ticks -----------------------------------------------------------------------------

    async def fire(self, tick: ScheduleTick) -> TickOutcome:
        """Handle a due tick: start the flow and park the next timer, or drop a stale tick.

        Raises when the start could not be stored; the caller retries the tick later, which
        the fire key makes harmless.
        """
        trigger = self._triggers.get(tick.trigger_id)
        if trigger is not None and tick.trigger_version > trigger.version:
            log.info(
                "tick of trigger %s is from version %d, newer than the known %d; retrying",
                tick.trigger_id,
                tick.trigger_version,
                trigger.version,
            )
            return "store_behind"
        if (
            trigger is None
            or armed_schedule(trigger) is None
            or trigger.version != tick.trigger_version
        ):
            log.info(
                "dropping stale tick of trigger %s (version %d) for %s",
                tick.trigger_id,
                tick.trigger_version,
                tick.scheduled_at.isoformat(),
            )
            if armed_schedule(trigger) is not None:
                # The current version's timer may have lost a race with this older one.
                await self.ensure_parked(tick.trigger_id)
            return "stale"
        await self._starts.publish(
            flow_start(trigger, tick.scheduled_at, self._clock()),
            fire_key(trigger.id, tick.scheduled_at),
        )
        async with self._lock(trigger.id):
            current = self._triggers.get(trigger.id)
            if current is not None and current.version == tick.trigger_version:
                await self._park_current(trigger.id, tick.scheduled_at)
        return "started"

    # --- Life cycle ------------------------------------------------------------------------

    async def settle(self, timeout: float | None = None) -> None:
        """Wait for the background timer updates; cancel those still running after `timeout`."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # --- Internals -------------------------------------------------------------------------

    async def _park_current(self, trigger_id: str, after: datetime) -> bool:
        """Park the next fire of the trigger's current version after `after` (but not in the
        past); False if the trigger is not armed. Call with the trigger's lock held."""
        trigger = self._triggers.get(trigger_id)
        schedule = armed_schedule(trigger)
        if trigger is None or schedule is None:
            return False
        now = self._clock()
        scheduled_at = cron.next_fire(schedule, after)
        if scheduled_at <= now:
            log.info(
                "trigger %s missed its fires up to %s; next fire after now",
                trigger_id,
                now.isoformat(),
            )
            scheduled_at = cron.next_fire(schedule, now)
        tick = ScheduleTick(
            trigger_id=trigger_id, trigger_version=trigger.version, scheduled_at=scheduled_at
        )
        await self._timers.park(tick)
        return True

    async def _sync_until_done(self, trigger_id: str) -> None:
        backoff = 0.1
        while True:
            try:
                await self.sync(trigger_id)
                return
            except Exception:
                log.exception("updating the timer of trigger %s failed; retrying", trigger_id)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _lock(self, trigger_id: str) -> asyncio.Lock:
        lock = self._locks.get(trigger_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[trigger_id] = lock
        return lock

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def consume_tick(
    scheduler: Scheduler, js: JetStreamContext, msg: Msg, *, retry_delay: float
) -> None:
    """Decode a tick, fire it, then ack; nak (retry later) on any failure before the ack."""
    try:
        tick = decode(msg.data, ScheduleTick)
    except msgspec.DecodeError as error:
        await reject(js, msg, f"undecodable schedule tick: {error}", SERVICE)
        return
    try:
        outcome = await scheduler.fire(tick)
    except Exception:
        log.exception("tick of trigger %s for %s failed", tick.trigger_id, tick.scheduled_at)
        await msg.nak(delay=retry_delay)
        return
    if outcome == "store_behind" and msg.metadata.num_delivered < MAX_DELIVERIES_WHILE_BEHIND:
        await msg.nak(delay=retry_delay)
        return
    await msg.ack()
