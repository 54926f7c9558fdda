"""The scheduler's core: one timer parked per armed schedule trigger, ticks turned into starts.

The decisions are pure functions of plain values (`judge_tick`, `plan_tick`, `plan_pause`,
`decide`, `ledger_entries`, `next_tick`, `trigger_change`, `overlap_skip_entry`). `Scheduler`
applies them through four small Protocols (`TriggerStore`, `Timers`, `StartPublisher`,
`Ledger`) and an injected clock, so all of it is tested with fakes and no broker. The NATS
implementations of the Protocols are in `adapters.py`; `handlers.py` turns messages into calls.

Consistency rules, all of which make repeated or reordered work harmless:

- Every write reads the trigger's *current* state from the store right before it, under a
  per-trigger lock, so a timer is never parked for a version this process knows to be old.
- Every replica reacts to every trigger change (a timer its trigger's chain already holds is
  not parked twice); if replicas race, the tick carries the trigger version and a stale tick
  never starts a flow.
- A start is published with `Nats-Msg-Id = <trigger id>:<scheduled time>` and a run id derived
  from the same, so a retried tick or two replicas handling it stay one run.
- Timers never move backwards. A trigger's timers form one chain: each tick, once handled,
  parks the occurrence after it. Parking is a compare-and-set on the chain's position in the
  stream (`Timers.park`), and a timer is parked only if it supersedes the chain's head
  (`supersedes`: a newer trigger version, or a later occurrence of the same version), so a
  replica that wakes from a pause cannot put back an occurrence the others already passed.
- One decision per occurrence. Every decision (started, missed, skipped and why) goes to the
  trigger's ledger with a message id that names the occurrence, not the status
  (`ledger_entry_id`), so a second decision about it is dropped by the stream; and a tick that
  may have been decided elsewhere (redelivered, or late enough to be missed) first drops the
  occurrences the trigger's ledger already holds: a tick whose every occurrence was decided is
  acknowledged with no entry.
- A decision is carried out until stored: the ledger entries of a tick are retried until the
  stream takes them (a JetStream leader election fails writes for seconds), and the next timer
  is parked only after all of them, so a tick is never replaced before its decisions are kept.

Missed fires. Only one timer per trigger is parked, so when every replica was down the server
still delivers that one (late) tick and nothing else. The replica that gets it lists every
occurrence from the tick's up to now and decides them at once: an occurrence handled within
`misfire_after` of its due time is a normal fire; the rest are missed and the trigger's misfire
policy decides which of them start. Lateness is measured when the tick is handled, however many
times it was delivered: a replica killed with SIGKILL has its ticks redelivered `TICK_ACK_WAIT`
after their due time, below `misfire_after`, so they still fire on time, while a tick held
through a whole outage is missed like the rest of it. Resuming a paused trigger decides the
occurrences of the pause the same way.

Early ticks. Timers go off a little before their due time (the scheduler's `TIMER_LEAD`). The
replica that gets such a tick decides it at once, holds it, and publishes the start at the due
time: the start's lag is then the time to publish, not the time to deliver and decide every
tick due in that second. A trigger edited, paused or deleted while its tick is held is judged
again at the due time, so the held tick of an old version never fires; a hold that ends well
after the due time (the process was paused or starved) is decided again as of when it ends.
"""

import asyncio
import contextlib
import dataclasses
import functools
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import msgspec

from contracts.registry import Schedule, ScheduleTrigger, Trigger
from contracts.runs import FlowStart, Run
from contracts.scheduling import FireRecord, FireStatus, ScheduleTick
from shared import schedules
from shared.ids import derived_id
from shared.schedules import Occurrence
from shared.supervise import retried

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""Returns the current time as an aware datetime."""
Sleep = Callable[[float], Awaitable[None]]
"""Waits the given number of seconds (`asyncio.sleep`; tests advance a fake clock instead)."""
WakeSleep = Callable[[float, Callable[[], None]], Awaitable[None]]
"""Waits the given number of seconds and calls the function the moment they are over, before
the waiter resumes (`adapters.Alarm.sleep`: the held ticks due at the same moment send their
starts from one callback, so the whole batch leaves in one write)."""

TickStanding = Literal["current", "stale", "store_behind"]
"""What a tick is to the known trigger: of its current armed version, of an older version or a
disarmed trigger, or of a version newer than the local trigger store has seen yet."""
TickOutcome = Literal["started", "decided_before", "stale", "store_behind"]
"""What `Scheduler.fire` did: decided the tick (and published its starts), found every
occurrence it covers already in the ledger (another replica, or an earlier delivery of the same
tick, decided them), dropped a stale tick, or could not judge the tick yet because the local
trigger store has not caught up with the tick's trigger version."""

MAX_LISTED = 1000
"""Most missed occurrences one decision lists one by one from the oldest; the ones after are
summarised in one ledger entry, except the most recent (which the misfire policy may start)."""
MAX_CATCH_UP = 100
"""Most missed fires `run_all` starts at once (the most recent ones)."""
LATE_WAKE = timedelta(seconds=1)
"""A tick whose hold ends more than this after its due time (the process was paused or
starved while holding it) is decided again as of when the hold ended."""
RECORD_BACKOFF = 0.1
"""Seconds before the first retry of a ledger entry the stream did not take; doubled on each
failure up to `RECORD_MAX_BACKOFF`."""
RECORD_MAX_BACKOFF = 2.0


def now_utc() -> datetime:
    """The wall clock, as an aware UTC datetime."""
    return datetime.now(UTC)


class TriggerStore(Protocol):
    """Read access to the current triggers (in production: a `KvMirror` of the triggers bucket)."""

    def get(self, key: str) -> Trigger | None: ...

    def values(self) -> Iterator[Trigger]: ...

    async def catch_up(self, timeout: float = 1.0) -> bool:
        """Wait until the store holds every trigger written before this call; False if it
        could not within `timeout` seconds."""
        ...


class Timers(Protocol):
    """One parked timer per trigger: parking replaces the trigger's previous timer.

    A trigger's timers form a chain whose head is its parked timer or, once that went off, its
    tick. `park` moves the head forward only (`supersedes`), atomically with respect to every
    other replica parking or any timer going off meanwhile.
    """

    lead: timedelta
    """How long before its due time a parked timer goes off."""

    async def park(self, tick: ScheduleTick, *, seen: int | None = None) -> bool:
        """Park `tick` until `lead` before its due time, replacing the trigger's earlier timer,
        if it supersedes the chain's head; True if parked, False if the head is as new or newer
        (another replica parked it, or its timer already went off).

        `seen` is the chain position the caller knows to be the head (the stream sequence of
        the tick it handles; 0 for a trigger with no timer and no tick at all): tried first, it
        saves reading the head, which is read only when the chain has moved since. A park
        with `seen` 0 of a trigger's first version that finds a chain returns False without
        reading it: only that same version can have parked it (another replica that saw the
        creation too), and whoever handles its tick parks the next."""

    async def parked(self, trigger_id: str) -> ScheduleTick | None:
        """The trigger's parked timer, or None if there is none."""

    async def head_versions(self) -> dict[str, int]:
        """The head of every trigger's chain of timers, as trigger id -> the trigger version it
        was computed from: its parked timer, or where none is parked, its timer that went off
        last (a tick in flight, whose handler parks the next one; or the schedule's end)."""

    async def cancel(self, trigger_id: str) -> None:
        """Remove the trigger's timer (and any tick of it not yet handled)."""


class Ledger(Protocol):
    """Where decisions about occurrences go (in production: the `SCHEDULE_FIRES` stream)."""

    async def record(self, entry: FireRecord) -> None:
        """Store `entry`; a second decision about the same occurrence is dropped
        (`ledger_entry_id`). Raises when it could not be stored."""

    async def last_decided(self, workspace_id: str, trigger_id: str) -> datetime | None:
        """The occurrence of the trigger's newest ledger entry, or None when it has none."""


class Write(Protocol):
    """A write made ready ahead of its moment (encoded), so that the moment only sends it."""

    def send(self) -> Awaitable[object]:
        """Put the write on its way now (no await: the writes of every tick due at the same
        moment leave together); awaiting the result waits until it is stored, and raises when
        it was not. Send a write once, and await what it returns."""


class StartPublisher(Protocol):
    """Where flow starts go (in production: JetStream `flow.v1.start.<ws>`, awaiting the PubAck)."""

    def prepare(self, start: FlowStart, msg_id: str) -> Write:
        """The write that stores `start` durably; a second one with the same `msg_id` is stored
        once."""


def armed_schedule(trigger: Trigger | None) -> Schedule | None:
    """The schedule of a trigger the scheduler must keep a timer for, or None."""
    if not isinstance(trigger, ScheduleTrigger) or not trigger.enabled:
        return None
    return trigger.schedule


def supersedes(tick: ScheduleTick, head: ScheduleTick) -> bool:
    """Whether parking `tick` moves its trigger's chain of timers forward from `head`: it is of
    a newer trigger version, or a later occurrence of the same version. Parking a tick that does
    not would fire an occurrence twice, or one the chain has passed (decided long ago)."""
    if tick.trigger_version != head.trigger_version:
        return tick.trigger_version > head.trigger_version
    return tick.scheduled_at > head.scheduled_at


@functools.lru_cache(maxsize=32768)  # each fire needs it for its start and its ledger entry
def fire_key(trigger_id: str, scheduled_at: datetime) -> str:
    """The identity of one fire: the `Nats-Msg-Id` of its start and the seed of its run id."""
    return f"{trigger_id}:{scheduled_at.astimezone(UTC).isoformat()}"


@functools.lru_cache(maxsize=32768)  # a fire's start and its ledger entry both need it,
# 2.5 s apart in a herd (`TIMER_LEAD`): 4,096 entries were evicted by a herd of 10,000
def fire_run_id(trigger_id: str, scheduled_at: datetime) -> str:
    """The run id of the fire at `scheduled_at` (the same on every replica and every retry)."""
    scheduled_ms = int(scheduled_at.timestamp() * 1000)
    return derived_id("run", scheduled_ms, fire_key(trigger_id, scheduled_at).encode())


def flow_start(trigger: Trigger, scheduled_at: datetime, requested_at: datetime) -> FlowStart:
    """The start of `trigger`'s flow for the fire at `scheduled_at` (same fire, same run id)."""
    return FlowStart(
        run_id=fire_run_id(trigger.id, scheduled_at),
        workspace_id=trigger.workspace_id,
        flow_id=trigger.flow_id,
        input=None,
        source="schedule",
        trigger_id=trigger.id,
        scheduled_at=scheduled_at,
        requested_at=requested_at,
        overlap=trigger.overlap,
    )


_SKIP_STATUS: dict[str, FireStatus] = {
    "dst_gap": "dst_gap",
    "dst_repeat": "dst_repeat",
    "after_end": "ended",
}


@dataclass(frozen=True, slots=True)
class Decision:
    """What becomes of one occurrence: its ledger status and reason, and whether it starts."""

    occurrence: Occurrence
    status: FireStatus
    reason: str

    @property
    def starts(self) -> bool:
        return self.status in ("started", "caught_up")


@dataclass(frozen=True, slots=True)
class Due:
    """The occurrences due by now, in order: listed ones, and how many were only summarised."""

    listed: list[Occurrence]
    unlisted: int = 0
    unlisted_from: datetime | None = None
    unlisted_until: datetime | None = None
    upcoming: Occurrence | None = None
    """The first occurrence not yet due (the next timer to park), or None when there is none
    (or, with `upcoming_known` False, when the scan stopped before finding it)."""
    upcoming_known: bool = True


def scan_due(
    schedule: Schedule, after: datetime, now: datetime, jitter: timedelta, *, first: Occurrence
) -> Due:
    """`first` and every occurrence after `after` that is due (time plus jitter) by `now`.

    Bounded work: the oldest `MAX_LISTED` are listed, then the most recent `MAX_CATCH_UP + 1`
    (all the misfire policy can start); what lies between is only counted.
    """
    listed = [first]
    last = first.scheduled_at
    iterator = schedules.occurrences(schedule, max(after, first.scheduled_at))
    for occurrence in iterator:
        if occurrence.scheduled_at + jitter > now:
            return Due(listed, upcoming=occurrence)
        listed.append(occurrence)
        last = occurrence.scheduled_at
        if len(listed) >= MAX_LISTED:
            break
    else:
        return Due(listed)
    # Too many: jump close to now, keeping the most recent ones for the misfire policy.
    spacing = max((last - first.scheduled_at) / max(len(listed) - 1, 1), timedelta(seconds=1))
    tail_from = max(last, now - jitter - spacing * (MAX_CATCH_UP + 2))
    skipped_from = last
    tail: deque[Occurrence] = deque(maxlen=MAX_CATCH_UP + 1)
    upcoming: Occurrence | None = None
    upcoming_known = True
    for count, occurrence in enumerate(schedules.occurrences(schedule, tail_from)):
        if occurrence.scheduled_at + jitter > now:
            upcoming = occurrence
            break
        if count > 10 * MAX_LISTED:
            upcoming_known = False
            break
        tail.append(occurrence)
    unlisted_until = tail[0].scheduled_at if tail else now
    between = max(int((unlisted_until - skipped_from) / spacing) - 1, 1)
    return Due(
        [*listed, *tail],
        unlisted=between,
        unlisted_from=skipped_from,
        unlisted_until=unlisted_until,
        upcoming=upcoming,
        upcoming_known=upcoming_known,
    )


def decide(
    due: list[Occurrence],
    *,
    schedule: Schedule,
    now: datetime,
    jitter: timedelta,
    misfire_after: timedelta | None,
    missed_status: FireStatus = "missed",
    why_missed: str = "no scheduler was running",
) -> list[Decision]:
    """Decide every due occurrence: fire it, record it as a non-fire, or let the misfire
    policy choose among the missed ones (pure; the unit tests pin every branch).

    An occurrence is on time when handled within `misfire_after` of its due time (`now` is when
    it is handled, whatever brought it); `misfire_after=None` makes every occurrence missed (a
    resumed pause).
    """
    decisions: dict[datetime, Decision] = {}
    missed: list[Occurrence] = []
    for occurrence in due:
        if occurrence.skip is not None:
            decisions[occurrence.scheduled_at] = Decision(
                occurrence, _SKIP_STATUS[occurrence.skip], occurrence.note
            )
            continue
        late = now - (occurrence.scheduled_at + jitter)
        if misfire_after is not None and late <= misfire_after:
            decisions[occurrence.scheduled_at] = Decision(occurrence, "started", "on time")
        else:
            missed.append(occurrence)
    window_start = now - timedelta(seconds=schedule.catch_up_window)
    eligible = [occurrence for occurrence in missed if occurrence.scheduled_at >= window_start]
    match schedule.misfire:
        case "skip":
            chosen: list[Occurrence] = []
        case "run_once":
            chosen = eligible[-1:]
        case "run_all":
            chosen = eligible[-MAX_CATCH_UP:]
    chosen_times = {occurrence.scheduled_at for occurrence in chosen}
    most_recent = chosen[-1].scheduled_at.isoformat() if chosen else ""
    for occurrence in missed:
        late_by = _seconds(now - occurrence.scheduled_at - jitter)
        context = f"missed: {why_missed} (late by {late_by})"
        if occurrence.scheduled_at in chosen_times:
            status: FireStatus = "caught_up"
            reason = f"{context}; started by misfire policy {schedule.misfire}"
        elif schedule.misfire == "skip":
            status, reason = missed_status, f"{context}; misfire policy skip"
        elif occurrence.scheduled_at < window_start:
            status = missed_status
            reason = f"{context}; older than the catch-up window of {schedule.catch_up_window}s"
        elif schedule.misfire == "run_once":
            status = missed_status
            reason = f"{context}; misfire policy run_once started only {most_recent}"
        else:
            status = missed_status
            reason = f"{context}; run_all starts at most the {MAX_CATCH_UP} most recent"
        decisions[occurrence.scheduled_at] = Decision(occurrence, status, reason)
    return [decisions[occurrence.scheduled_at] for occurrence in due]


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.1f}s"


# --- Pure decisions about ticks, timers, pauses and trigger changes -------------------------


def tick_of(trigger: Trigger, occurrence: Occurrence) -> ScheduleTick:
    """The timer of `trigger`'s `occurrence` (its jitter added to when it goes off)."""
    assert isinstance(trigger, ScheduleTrigger)
    jitter = schedules.jitter_offset(trigger.id, trigger.schedule.jitter)
    return ScheduleTick(
        trigger_id=trigger.id,
        trigger_version=trigger.version,
        scheduled_at=occurrence.scheduled_at,
        due_at=occurrence.scheduled_at + jitter if jitter else None,
        skip=occurrence.skip,
        note=occurrence.note,
    )


def next_tick(
    trigger: Trigger | None, after: datetime, now: datetime, *, due_too: bool = False
) -> ScheduleTick | None:
    """The timer to park for `trigger`: its next occurrence after `after` that is not yet due
    (an occurrence already due is left behind, unless `due_too`: then its timer goes off at
    once and its tick decides it); None if the trigger is not armed or its schedule is
    over."""
    schedule = armed_schedule(trigger)
    if trigger is None or schedule is None:
        return None
    jitter = schedules.jitter_offset(trigger.id, schedule.jitter)
    if after + jitter < now and not due_too:
        after = now - jitter
    occurrence = next(iter(schedules.occurrences(schedule, after)), None)
    if occurrence is None:
        log.debug("trigger %s has no occurrence after %s", trigger.id, after.isoformat())
        return None
    return tick_of(trigger, occurrence)


@dataclass(frozen=True, slots=True)
class TriggerChange:
    """What a change of a trigger asks of the scheduler: its timer made to match the trigger
    (parked anew or cancelled), after deciding the fires of a pause it was resumed from."""

    paused_at: datetime | None = None
    """When the pause the trigger was resumed from began, or None when it was not resumed."""


def trigger_change(old: Trigger | None, new: Trigger | None) -> TriggerChange | None:
    """What the change from `old` to `new` asks of the scheduler; None when its timer stays."""
    new_schedule, old_schedule = armed_schedule(new), armed_schedule(old)
    if new_schedule is None and old_schedule is None:
        return None
    if (
        new is not None
        and old is not None
        and new_schedule == old_schedule
        and new.version == old.version
    ):
        return None
    if (
        new is not None
        and new_schedule is not None
        and old is not None
        and not old.enabled
        and isinstance(old, ScheduleTrigger)
        and old.schedule == new_schedule
    ):
        return TriggerChange(paused_at=new.paused_at or old.updated_at)
    return TriggerChange()


def judge_tick(tick: ScheduleTick, trigger: Trigger | None) -> TickStanding:
    """Whether `tick` is of `trigger`'s current armed version (`trigger` as the local store
    knows it, None when it does not)."""
    if trigger is not None and tick.trigger_version > trigger.version:
        return "store_behind"
    if (
        armed_schedule(trigger) is None
        or trigger is None
        or trigger.version != tick.trigger_version
    ):
        return "stale"
    return "current"


@dataclass(frozen=True, slots=True)
class Plan:
    """The decisions about a trigger's due occurrences, as of `now`."""

    due: Due
    decisions: list[Decision]
    now: datetime
    hold: float = 0.0
    """Seconds to wait before carrying it out (a tick that went off before its due time)."""

    @property
    def misses(self) -> bool:
        """Whether an occurrence was decided as missed (late): a decision another replica may
        have made differently, on time, before (see `Scheduler.fire`)."""
        return any(decision.status in ("missed", "caught_up") for decision in self.decisions)


def undecided(plan: Plan, decided_until: datetime) -> Plan:
    """`plan` without the occurrences up to `decided_until` (the ledger already holds them)."""
    decisions = [d for d in plan.decisions if d.occurrence.scheduled_at > decided_until]
    if len(decisions) == len(plan.decisions):
        return plan
    listed = [o for o in plan.due.listed if o.scheduled_at > decided_until]
    return Plan(dataclasses.replace(plan.due, listed=listed), decisions, plan.now, plan.hold)


def plan_tick(
    trigger: Trigger,
    tick: ScheduleTick,
    now: datetime,
    *,
    misfire_after: timedelta,
) -> Plan:
    """Decide a current tick and every other occurrence of its trigger due by now.

    A tick that went off before its due time is decided as of its due time, when it starts
    (`hold` says how long until then). Otherwise it is decided as of `now`, when it is handled,
    however many times it was delivered: only lateness beyond `misfire_after` is a misfire (a
    tick redelivered after a replica died comes back `TICK_ACK_WAIT` late, which is less).
    """
    assert isinstance(trigger, ScheduleTrigger)
    schedule = trigger.schedule
    jitter = schedules.jitter_offset(trigger.id, schedule.jitter)
    due_at = tick.scheduled_at + jitter
    hold = (due_at - now).total_seconds()
    if hold > 0:
        now = due_at
    first = Occurrence(
        tick.scheduled_at,
        tick.scheduled_at.astimezone(schedules.zone_of(schedule)),
        skip=tick.skip,
        note=tick.note,
    )
    due = scan_due(schedule, tick.scheduled_at, now, jitter, first=first)
    decisions = decide(
        due.listed,
        schedule=schedule,
        now=now,
        jitter=jitter,
        misfire_after=misfire_after,
    )
    return Plan(due, decisions, now, max(hold, 0.0))


def plan_pause(trigger: Trigger, paused_at: datetime) -> Plan | None:
    """Decide the occurrences due while `trigger` was paused (from `paused_at` until it was
    resumed): recorded as `paused`, or started by the misfire policy; None if there were none.
    """
    schedule = armed_schedule(trigger)
    if schedule is None:
        return None
    resumed_at = trigger.resumed_at or trigger.updated_at
    jitter = schedules.jitter_offset(trigger.id, schedule.jitter)
    first = next(iter(schedules.occurrences(schedule, paused_at)), None)
    if first is None or first.scheduled_at + jitter > resumed_at:
        return None
    due = scan_due(schedule, first.scheduled_at, resumed_at, jitter, first=first)
    decisions = decide(
        due.listed,
        schedule=schedule,
        now=resumed_at,
        jitter=jitter,
        misfire_after=None,
        missed_status="paused",
        why_missed="the trigger was paused",
    )
    return Plan(due, decisions, resumed_at)


def starts_of(
    trigger: Trigger, decisions: list[Decision], requested_at: datetime
) -> list[tuple[FlowStart, str]]:
    """The starts `decisions` make, each with its message id (`fire_key`)."""
    return [
        (
            flow_start(trigger, decision.occurrence.scheduled_at, requested_at),
            fire_key(trigger.id, decision.occurrence.scheduled_at),
        )
        for decision in decisions
        if decision.starts
    ]


def ledger_entries(
    trigger: Trigger, decisions: list[Decision], due: Due, now: datetime
) -> list[FireRecord]:
    """One ledger entry per decision; occurrences `due` only counted are summarised in the
    entry of the last one listed from the oldest."""
    assert isinstance(trigger, ScheduleTrigger)
    schedule = trigger.schedule
    entries = [
        FireRecord(
            trigger_id=trigger.id,
            workspace_id=trigger.workspace_id,
            flow_id=trigger.flow_id,
            trigger_version=trigger.version,
            scheduled_at=decision.occurrence.scheduled_at,
            local_time=decision.occurrence.local.isoformat(),
            timezone=schedule.timezone,
            status=decision.status,
            reason=decision.reason,
            run_id=fire_run_id(trigger.id, decision.occurrence.scheduled_at),
            recorded_at=now,
        )
        for decision in decisions
    ]
    if due.unlisted and due.unlisted_from is not None and due.unlisted_until is not None:
        # The entry of the last occurrence listed before the gap (it is the one at MAX_LISTED - 1
        # unless the ledger already held the oldest, see `undecided`).
        for index, entry in enumerate(entries):
            if entry.scheduled_at == due.unlisted_from:
                entries[index] = msgspec.structs.replace(
                    entry,
                    reason=entry.reason + f"; about {due.unlisted} more missed fires until"
                    f" {due.unlisted_until.isoformat()} are not listed one by one",
                )
                break
    return entries


def ledger_entry_id(entry: FireRecord) -> str:
    """The `Nats-Msg-Id` of a ledger entry: one per occurrence, whatever was decided, so the
    first decision stored is the only one (replicas, retried ticks, a replica deciding late
    after a pause: the stream drops every later one within its duplicate window). A run the
    runner skipped by overlap policy adds its own entry to the `started` one."""
    kind = "overlap_skipped" if entry.status == "overlap_skipped" else "decided"
    return f"{fire_key(entry.trigger_id, entry.scheduled_at)}:{kind}"


def overlap_skip_entry(run: Run, trigger: Trigger | None, now: datetime) -> FireRecord | None:
    """The ledger entry of a schedule fire whose run the runner skipped by overlap policy
    (`trigger` as known now, None if deleted); None for any other run."""
    if run.source != "schedule" or run.status != "skipped":
        return None
    if run.trigger_id is None or run.scheduled_at is None:
        return None
    schedule = trigger.schedule if isinstance(trigger, ScheduleTrigger) else None
    zone_name = schedule.timezone if schedule is not None else "UTC"
    try:
        local = run.scheduled_at.astimezone(schedules.zone_of(schedule) if schedule else UTC)
    except schedules.InvalidSchedule:
        local = run.scheduled_at.astimezone(UTC)
    return FireRecord(
        trigger_id=run.trigger_id,
        workspace_id=run.workspace_id,
        flow_id=run.flow_id,
        trigger_version=trigger.version if trigger is not None else 0,
        scheduled_at=run.scheduled_at.astimezone(UTC),
        local_time=local.isoformat(),
        timezone=zone_name,
        status="overlap_skipped",
        reason=run.error or "skipped by the trigger's overlap policy",
        run_id=run.id,
        recorded_at=now,
    )


# --- The scheduler: the decisions applied through the Protocols -----------------------------


async def _sleep_then(sleep: Sleep, seconds: float, then: Callable[[], None]) -> None:
    await sleep(seconds)
    then()


class _SendWhenDue:
    """Called the moment a held tick is due: sends its prepared starts if its trigger is still
    the one it was decided for and the moment is not long past (else the tick is decided
    again, as of then). Never raises: it runs in the alarm's callback, among other ticks'."""

    __slots__ = ("_clock", "_decided_at", "_starts", "_trigger", "_triggers", "error", "sent")

    def __init__(
        self,
        triggers: TriggerStore,
        trigger: Trigger,
        starts: list[Write],
        clock: Clock,
        decided_at: datetime,
    ) -> None:
        self._triggers = triggers
        self._trigger = trigger
        self._starts = starts
        self._clock = clock
        self._decided_at = decided_at
        self.sent: list[Awaitable[object]] | None = None
        """What awaits each start being stored, once sent; None when they were not sent."""
        self.error: Exception | None = None

    def __call__(self) -> None:
        trigger = self._trigger
        if self._triggers.get(trigger.id) is not trigger:
            return
        if self._clock() - self._decided_at > LATE_WAKE:
            return
        sent: list[Awaitable[object]] = []
        self.sent = sent
        try:
            for start in self._starts:
                sent.append(start.send())
        except Exception as error:  # the connection is closed, or its buffer is full
            self.error = error


class Scheduler:
    """Keeps the parked timers in line with the triggers and turns due ticks into decisions.

    Each tick lists the trigger's occurrences due by now, decides them (`plan_tick`), stores
    the starts, records every decision in the ledger, then parks the next occurrence.
    """

    def __init__(
        self,
        triggers: TriggerStore,
        timers: Timers,
        starts: StartPublisher,
        *,
        ledger: Ledger,
        clock: Clock = now_utc,
        sleep: Sleep = asyncio.sleep,
        wake_sleep: WakeSleep | None = None,
        concurrency: int = 512,
        misfire_after: float = 10.0,
    ) -> None:
        self._triggers = triggers
        self._timers = timers
        self._starts = starts
        self._ledger = ledger
        self._clock = clock
        self._sleep = sleep
        self._wake_sleep = wake_sleep or functools.partial(_sleep_then, sleep)
        self._concurrency = concurrency
        self._misfire_after = timedelta(seconds=misfire_after)
        self._following = False
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- Following trigger changes ---------------------------------------------------------

    def on_trigger_change(self, key: str, old: Trigger | None, new: Trigger | None) -> None:
        """Store callback (sync): re-park or cancel the trigger's timer in the background.

        Ignored until `reconcile` has started: the first replay of the store is reconciled
        against the parked timers instead, so a restart does not re-park every timer. A resume
        (paused before, armed now, same schedule) also decides the occurrences of the pause.
        """
        if not self._following:
            return
        change = trigger_change(old, new)
        if change is None:
            return
        if change.paused_at is not None and new is not None:
            resumed, paused_at = new, change.paused_at
            self._spawn(
                retried(
                    f"deciding the pause of trigger {key}",
                    lambda: self.catch_up_pause(resumed, paused_at),
                )
            )
        # A new trigger has no chain of timers yet: parking expects none instead of reading
        # the chain's head first (one round trip less per trigger created; a chain that does
        # exist makes the server refuse the park, and the head is read then).
        created = old is None
        self._spawn(
            retried(f"updating the timer of trigger {key}", lambda: self.sync(key, created))
        )

    async def sync(self, trigger_id: str, created: bool = False) -> None:
        """Make the trigger's timer match its current state: park a fresh one, or cancel it.
        `created`: the trigger is new, so it has no timer or tick yet (most likely)."""
        async with self._lock(trigger_id):
            trigger = self._triggers.get(trigger_id)
            if created and trigger is not None:
                # From its creation on: an occurrence due before this replica got to the
                # creation (a herd of creations ahead of it) is parked due, so its tick fires
                # it or records it missed; a replica that parked it in time has the chain.
                parked = await self._park_current(
                    trigger_id, trigger.created_at, seen=0, due_too=True
                )
            else:
                parked = await self._park_current(trigger_id, self._clock())
            if not parked and armed_schedule(self._triggers.get(trigger_id)) is None:
                # Only a disarmed trigger loses its chain. An armed one with nothing left to
                # park (a one-off whose time passed while this replica caught up with a herd
                # of creations) may have its last tick in flight, parked in time by another
                # replica: purging it would lose that fire.
                await self._timers.cancel(trigger_id)

    async def reconcile(self) -> None:
        """Park a timer for every armed trigger that has none, or one of an older version.

        A trigger whose timer went off with no newer one parked has its tick in flight: held
        until its due time, waiting for a replica, or held by a replica that died (it comes
        back after the ack wait). That tick decides everything due since and parks the next
        timer; parking one here too would start a second chain of timers beside it.

        A trigger with no timer at all that was resumed from a pause was resumed while no
        scheduler ran (a replica that sees a resume parks a timer at once): the fires of that
        pause are decided first, as a live replica would have (`catch_up_pause`).

        Timers of triggers that were deleted or paused while no scheduler ran are not looked
        for: such a timer fires once more, its tick is recognised as stale (once the store has
        caught up with the bucket: the trigger may be one created a moment ago) and dropped, and
        it is never parked again. That costs one wasted tick instead of listing every timer.
        """
        self._following = True
        # One pass over every parked timer rather than a lookup per trigger; a timer that goes
        # off meanwhile has its tick handled, which parks the next one.
        parked = await self._timers.head_versions()
        trigger_ids = iter(
            [
                trigger.id
                for trigger in self._triggers.values()
                if armed_schedule(trigger) and parked.get(trigger.id) != trigger.version
            ]
        )
        failures: list[str] = []

        async def work() -> None:
            for trigger_id in trigger_ids:
                trigger = self._triggers.get(trigger_id)
                headless = trigger_id not in parked
                try:
                    if (
                        headless
                        and trigger is not None
                        and trigger.paused_at is not None
                        and trigger.resumed_at is not None
                    ):
                        # Before parking: a failure parks nothing, so the next start decides
                        # the pause again instead of finding a timer and leaving it undecided.
                        await self.catch_up_pause(trigger, trigger.paused_at)
                    async with self._lock(trigger_id):
                        # No timer or tick at all: no need to read the chain's head.
                        await self._park_current(
                            trigger_id, self._clock(), seen=0 if headless else None
                        )
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

    async def catch_up_pause(self, trigger: Trigger, paused_at: datetime) -> None:
        """Decide the occurrences due while `trigger` was paused (`plan_pause`) and carry the
        decisions out.

        Every replica that sees the resume runs this; the decisions are the same, and the
        start's and the ledger's message ids make them count once.
        """
        plan = plan_pause(trigger, paused_at)
        if plan is None:
            return
        starts = self._prepare(starts_of(trigger, plan.decisions, plan.now))
        await self._carry_out(trigger, plan, [start.send() for start in starts])

    # --- Ticks -----------------------------------------------------------------------------

    async def fire(
        self,
        tick: ScheduleTick,
        *,
        redelivered: bool = False,
        seen: int | None = None,
        on_hold: Callable[[], None] | None = None,
        still_working: Callable[[], Awaitable[None]] | None = None,
    ) -> TickOutcome:
        """Handle a tick: decide it and every other occurrence due by now, park the next
        timer; or drop a stale tick.

        A tick that arrives before its due time is decided at once and held until then
        (`on_hold` is called when the hold begins); the trigger is checked again when it ends,
        and a hold that ended late is decided again. `redelivered` says a replica received this
        tick before; `seen` is the stream sequence of its message (see `Timers.park`);
        `still_working` is awaited while a ledger write is retried (to keep the tick from being
        redelivered meanwhile). Raises when a start could not be stored; the caller retries
        the tick later, which the fire key makes harmless.
        """
        trigger = self._triggers.get(tick.trigger_id)
        if trigger is None or tick.trigger_version > trigger.version:
            # This replica's copy of the triggers may be behind the bucket: the trigger was
            # created or edited a moment ago, and a replica that saw it first parked the timer.
            # Judged now, the tick of a trigger not seen yet would be dropped as one of a
            # deleted trigger, ending its chain of timers (no other replica parks it again).
            if await self._triggers.catch_up():
                trigger = self._triggers.get(tick.trigger_id)
            elif trigger is None:
                log.info(
                    "tick of trigger %s, which this replica does not know yet; retrying",
                    tick.trigger_id,
                )
                return "store_behind"
        match judge_tick(tick, trigger):
            case "store_behind":
                assert trigger is not None
                log.info(
                    "tick of trigger %s is from version %d, newer than the known %d; retrying",
                    tick.trigger_id,
                    tick.trigger_version,
                    trigger.version,
                )
                return "store_behind"
            case "stale":
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
        assert trigger is not None
        plan = plan_tick(trigger, tick, self._clock(), misfire_after=self._misfire_after)
        # Built and encoded before a tick is held, so that its due moment only sends them.
        starts = self._prepare(starts_of(trigger, plan.decisions, plan.now))
        sent: list[Awaitable[object]] | None = None
        if plan.hold > 0:
            if on_hold is not None:
                on_hold()
            if redelivered or plan.misses:
                # The ledger may hold some of its decisions already (see below): sent after.
                await self._sleep(plan.hold)
            else:
                sending = _SendWhenDue(self._triggers, trigger, starts, self._clock, plan.now)
                await self._wake_sleep(plan.hold, sending)
                sent = sending.sent
                if sending.error is not None:
                    if sent:
                        await asyncio.gather(*sent, return_exceptions=True)
                    raise sending.error
            if sent is None and (
                self._triggers.get(tick.trigger_id) is not trigger
                or self._clock() - plan.now > LATE_WAKE
            ):
                # Changed while held, or held far past its time (this process was paused or
                # starved): judged and decided again as of now (due, so not held twice).
                return await self.fire(
                    tick, redelivered=redelivered, seen=seen, still_working=still_working
                )
        carried = plan
        if sent is None and (redelivered or plan.misses):
            # Another replica may have decided these occurrences already: the one this tick
            # was delivered to first, or the chain that went on while this process was paused
            # (late, it would call missed what was started on time). What the ledger holds
            # stays as it is.
            decided = await self._ledger.last_decided(trigger.workspace_id, trigger.id)
            if decided is not None:
                carried = undecided(plan, decided)
                if not carried.decisions:
                    log.info(
                        "tick of trigger %s for %s was decided before (ledger up to %s)",
                        trigger.id,
                        tick.scheduled_at.isoformat(),
                        decided.isoformat(),
                    )
                    # Its decider may have died before parking the next timer.
                    await self._park_next(trigger, tick, plan.due, seen)
                    return "decided_before"
                if carried is not plan:
                    starts = self._prepare(starts_of(trigger, carried.decisions, carried.now))
        # The starts are stored first, then the ledger entries, then the next timer, and the
        # caller acks the tick only once all of them are acknowledged: a failed start parks
        # nothing (a parked timer would replace the tick before its retry) and records
        # nothing it did not do, and the next timer never replaces a tick whose decisions are
        # not all stored.
        if sent is None:
            sent = [start.send() for start in starts]
        await self._carry_out(trigger, carried, sent, still_working)
        await self._park_next(trigger, tick, plan.due, seen)
        return "started"

    async def _park_next(
        self, trigger: Trigger, tick: ScheduleTick, due: Due, seen: int | None
    ) -> None:
        """Park the occurrence after those `fire` decided, unless the trigger changed meanwhile
        (its change parks the timer of the new version) or the schedule is over; unless the
        chain of timers has gone past it meanwhile (`Timers.park`)."""
        if tick.skip == "after_end":
            return  # nothing more to park: the schedule is over
        async with self._lock(trigger.id):
            current = self._triggers.get(trigger.id)
            if current is None or current.version != tick.trigger_version:
                return
            if not due.upcoming_known:
                await self._park_current(trigger.id, due.listed[-1].scheduled_at, seen=seen)
                return
            if due.upcoming is not None:
                # Even if it fell due while the start was stored, it is parked (and goes off
                # at once), so a busy scheduler fires it late rather than never.
                await self._timers.park(tick_of(trigger, due.upcoming), seen=seen)

    async def record_overlap_skip(self, run: Run) -> None:
        """Ledger entry for a schedule fire whose run the runner skipped by overlap policy."""
        trigger = self._triggers.get(run.trigger_id) if run.trigger_id is not None else None
        entry = overlap_skip_entry(run, trigger, self._clock())
        if entry is not None:
            await self._ledger.record(entry)

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

    async def _carry_out(
        self,
        trigger: Trigger,
        plan: Plan,
        sent: list[Awaitable[object]],
        still_working: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Wait until the `sent` starts of `plan` are stored (raising if one was not), then
        record every decision, each retried until stored (`_record`)."""
        if len(sent) == 1:
            await sent[0]  # the usual case: no task to wrap it in
        elif sent:
            await asyncio.gather(*sent)  # each one's answer awaited, even after a failure
        due = plan.due
        if due.unlisted and due.unlisted_from is not None and due.unlisted_until is not None:
            log.warning(
                "trigger %s missed about %d more fires between %s and %s",
                trigger.id,
                due.unlisted,
                due.unlisted_from.isoformat(),
                due.unlisted_until.isoformat(),
            )
        entries = ledger_entries(trigger, plan.decisions, due, self._clock())
        if len(entries) == 1:  # the usual case: no task to wrap it in
            await self._record(entries[0], still_working)
        else:
            await asyncio.gather(*(self._record(entry, still_working) for entry in entries))
        for decision in plan.decisions:
            if decision.status != "started":
                log.info(
                    "trigger %s fire at %s: %s (%s)",
                    trigger.id,
                    decision.occurrence.scheduled_at.isoformat(),
                    decision.status,
                    decision.reason,
                )

    def _prepare(self, starts: list[tuple[FlowStart, str]]) -> list[Write]:
        return [self._starts.prepare(start, msg_id) for start, msg_id in starts]

    async def _record(
        self, entry: FireRecord, still_working: Callable[[], Awaitable[None]] | None
    ) -> None:
        """Store `entry`, retrying until the ledger takes it.

        Its start is stored already: giving up would leave a run with no entry, and a retry of
        the whole tick comes later, when lateness may decide it differently (or never, once
        the next timer's tick replaced it). The entry's message id makes every retry one entry.
        """
        backoff = RECORD_BACKOFF
        while True:
            try:
                await self._ledger.record(entry)
                return
            except Exception as error:
                log.warning(
                    "ledger entry of trigger %s for %s not stored (%s: %s); retrying in %.1fs",
                    entry.trigger_id,
                    entry.scheduled_at.isoformat(),
                    type(error).__name__,
                    error,
                    backoff,
                )
            if still_working is not None:
                with contextlib.suppress(Exception):
                    await still_working()
            await self._sleep(backoff)
            backoff = min(backoff * 2, RECORD_MAX_BACKOFF)

    async def _park_current(
        self, trigger_id: str, after: datetime, *, seen: int | None = None, due_too: bool = False
    ) -> bool:
        """Park the trigger's next occurrence after `after` that is not yet due (`next_tick`,
        with `due_too`), unless its chain of timers is already there or past it
        (`Timers.park`: a timer that went off for it has its tick held or waiting, and whoever
        handles it parks the next); False if the trigger is not armed or its schedule is over.
        `seen` as in `Timers.park`. Call with the trigger's lock held."""
        tick = next_tick(self._triggers.get(trigger_id), after, self._clock(), due_too=due_too)
        if tick is None:
            return False
        await self._timers.park(tick, seen=seen)
        return True

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
