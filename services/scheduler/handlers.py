"""The scheduler's message handlers: decode a tick or a run event, call the core, ack.

Trigger changes need no handler of their own: the trigger mirror decodes them and calls
`Scheduler.on_trigger_change` (wired in `app.py`).
"""

import logging
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.runs import RunEvent
from contracts.scheduling import ScheduleTick
from services.scheduler.adapters import RUN_EVENT_MAX_DELIVER, TICK_MAX_DELIVER
from services.scheduler.core import Scheduler
from shared.broker import is_last_delivery, reject
from shared.codec import decode
from shared.pull import delivery

log = logging.getLogger(__name__)

SERVICE = "scheduler"

MAX_DELIVERIES_WHILE_BEHIND = 10
"""After this many deliveries a tick of a trigger version (or a trigger) the store never shows
is dropped."""


async def handle_tick(
    scheduler: Scheduler,
    js: JetStreamContext,
    msg: Msg,
    *,
    retry_delay: float,
    on_hold: Callable[[], None] | None = None,
) -> None:
    """Decode a tick, fire it, then ack; nak (retry later) on any failure before the ack.

    The tick's stream sequence tells the core where the trigger's chain of timers stood when
    the tick went off; while a ledger write is retried, the tick is kept in progress so that
    no other replica gets it and decides its occurrences a second time, later.
    """
    try:
        tick = decode(msg.data, ScheduleTick)
    except msgspec.DecodeError as error:
        await reject(js, msg, f"undecodable schedule tick: {error}", SERVICE)
        return
    delivered = delivery(msg)
    try:
        outcome = await scheduler.fire(
            tick,
            redelivered=delivered.delivered > 1,
            seen=delivered.stream_sequence,
            on_hold=on_hold,
            still_working=msg.in_progress,
        )
    except Exception as error:
        if is_last_delivery(delivered.delivered, TICK_MAX_DELIVER):
            reason = (
                f"tick failed on each of its {TICK_MAX_DELIVER} deliveries; the last failure: "
                f"{type(error).__name__}: {error}"
            )
            await reject(js, msg, reason, SERVICE)
            return
        log.exception("tick of trigger %s for %s failed", tick.trigger_id, tick.scheduled_at)
        await msg.nak(delay=retry_delay)
        return
    if outcome == "store_behind" and delivered.delivered < MAX_DELIVERIES_WHILE_BEHIND:
        await msg.nak(delay=retry_delay)
        return
    await msg.ack()


async def handle_run_event(
    scheduler: Scheduler, msg: Msg, js: JetStreamContext | None = None
) -> None:
    """Record a schedule fire's run skipped by overlap policy in its ledger, then ack; a
    failure leaves the event unacknowledged (it comes back after the ack wait), until its last
    delivery, which is dead-lettered (with `js`) instead."""
    try:
        event = decode(msg.data, RunEvent)
    except msgspec.DecodeError:
        await msg.ack()  # not ours to dead-letter: the runner wrote it
        return
    try:
        await scheduler.record_overlap_skip(event.run)
    except Exception as error:
        if js is None or not is_last_delivery(delivery(msg).delivered, RUN_EVENT_MAX_DELIVER):
            raise
        reason = (
            f"run event failed on each of its {RUN_EVENT_MAX_DELIVER} deliveries; the last "
            f"failure: {type(error).__name__}: {error}"
        )
        await reject(js, msg, reason, SERVICE)
        return
    await msg.ack()
