"""Reading a schedule trigger's ledger (`schedule.fire.<ws>.<trigger>`) and its preview."""

import contextlib
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts import subjects
from contracts.registry import ScheduleTrigger, Trigger
from contracts.scheduling import FirePage, FireRecord, PreviewFire, SchedulePreview
from services.ingress.problems import ApiError
from shared import schedules
from shared.codec import decoder
from shared.stream_read import read_subject

READ_TIMEOUT = 2.0
"""Seconds to wait for the stored entries of one trigger."""


async def read_ledger(js: JetStreamContext, workspace_id: str, trigger_id: str) -> list[FireRecord]:
    """Every stored entry of the trigger (at most `LEDGER_ENTRIES_PER_TRIGGER`), oldest first;
    what came within `READ_TIMEOUT` if the rest is slow to come."""
    subject = subjects.schedule_fire(workspace_id, trigger_id)
    decode = decoder(FireRecord).decode
    entries: list[FireRecord] = []
    reads = read_subject(
        js, subjects.SCHEDULE_FIRES_STREAM, subject, timeout=READ_TIMEOUT, partial=True
    )
    try:
        async with contextlib.aclosing(reads) as batches:
            async for batch in batches:
                for message in batch:
                    with contextlib.suppress(msgspec.DecodeError):
                        entries.append(decode(message.data))
    except NotFoundError:
        return []  # no ledger stream yet: nothing was ever decided
    return entries


def fire_page(entries: list[FireRecord], limit: int, cursor: str | None) -> FirePage:
    """Newest occurrence first (a later decision on the same occurrence before an earlier one);
    `cursor` is the `next_cursor` of the previous page."""
    ordered = sorted(
        enumerate(entries), key=lambda pair: (pair[1].scheduled_at, pair[0]), reverse=True
    )
    keyed = [(f"{entry.scheduled_at.isoformat()}|{index:06d}", entry) for index, entry in ordered]
    if cursor is not None:
        keyed = [(key, entry) for key, entry in keyed if key < cursor]
    page = keyed[:limit]
    next_cursor = page[-1][0] if len(keyed) > limit else None
    return FirePage(items=[entry for _, entry in page], next_cursor=next_cursor)


def schedule_preview(trigger: Trigger, count: int, now: datetime | None = None) -> SchedulePreview:
    """The trigger's next `count` occurrences, with their local and UTC times."""
    if not isinstance(trigger, ScheduleTrigger):
        raise ApiError(409, "not_a_schedule", f"trigger {trigger.id} is a `{trigger.type}` trigger")
    schedule = trigger.schedule
    jitter = schedules.jitter_offset(trigger.id, schedule.jitter)
    moment = now or datetime.now(UTC)
    try:
        found = schedules.preview(schedule, moment, count)
    except schedules.InvalidSchedule as error:
        raise ApiError(422, "invalid_schedule", str(error)) from error
    return SchedulePreview(
        trigger_id=trigger.id,
        timezone=schedule.timezone,
        jitter_seconds=int(jitter.total_seconds()),
        enabled=trigger.enabled,
        fires=[
            PreviewFire(
                scheduled_at=occurrence.scheduled_at,
                local_time=occurrence.local.isoformat(),
                fires_at=occurrence.scheduled_at + jitter,
                fires=occurrence.skip is None,
                skip=occurrence.skip,
                note=occurrence.note,
            )
            for occurrence in found
        ],
    )
