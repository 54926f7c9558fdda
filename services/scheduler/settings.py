"""Scheduler settings, read from the environment (`NATS_URL`, `NATS_REPLICAS`, ...)."""

from typing import Annotated

import msgspec


class SchedulerSettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server to connect to (`NATS_URL`)."""
    nats_replicas: int = 1
    """Replicas of the streams and buckets this service creates; 3 in production."""
    tick_batch: int = 256
    """Most ticks one pull request asks the shared `scheduler` consumer for (`TICK_BATCH`)."""
    ticks_in_flight: int = 1024
    """Most ticks one replica handles at once, not counting those held until their due time
    (`TICKS_IN_FLIGHT`); their publishes are pipelined on the one connection. Ticks beyond it
    wait in the stream for any replica."""
    tick_retry_delay: float = 1.0
    """Seconds before a tick whose handling failed is delivered again (`TICK_RETRY_DELAY`)."""
    misfire_after: float = 10.0
    """Seconds after its due time a fire counts as missed and its trigger's misfire policy
    decides it (`MISFIRE_AFTER`); above the normal tick lag, below a real outage."""
    tick_ack_wait: float = 5.0
    """Seconds after its due time a tick may stay unacknowledged before another replica gets
    it (`TICK_ACK_WAIT`; applied to the shared consumer at start); keep it below
    `misfire_after`."""
    timer_lead: Annotated[float, msgspec.Meta(ge=0, le=30)] = 2.5
    """Seconds before its due time a timer goes off (`TIMER_LEAD`). The replica that gets the
    tick decides it then and publishes the start at the due time, so a second with thousands
    of fires starts them all within tens of milliseconds. The half second keeps arriving ticks
    away from the whole seconds most fires are due at. 0 fires on delivery."""
