"""The scheduler's timer and tick message."""

from datetime import datetime

from msgspec import Struct


class ScheduleTick(Struct, frozen=True, kw_only=True):
    """A schedule trigger's fire, parked as a NATS `@at` message schedule until it is due.

    Subject: parked on `schedule.timer.<trigger_id>` (stream `SCHEDULES`, one per trigger, a new
    one replaces the old); the server republishes it to `schedule.tick.<trigger_id>` at
    `scheduled_at`. Published and consumed by: the scheduler only (durable consumer
    `scheduler` shared by its replicas). A tick whose `trigger_version` is not the trigger's
    current version is stale and never fires.
    """

    trigger_id: str
    trigger_version: int
    scheduled_at: datetime
