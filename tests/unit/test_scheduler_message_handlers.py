"""The scheduler's thin handlers: what a tick or run event message is acked, nakked or rejected
for, with a fake message and a fake core (no broker)."""

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.runs import DeadLetter, Run, RunEvent
from contracts.scheduling import ScheduleTick
from services.scheduler import adapters, handlers
from services.scheduler.core import TickOutcome
from services.scheduler.settings import SchedulerSettings
from shared import broker
from shared.codec import decode, encode

TICK = ScheduleTick(
    trigger_id="trg_1", trigger_version=1, scheduled_at=datetime(2026, 1, 1, 10, tzinfo=UTC)
)


class FakeMsg:
    def __init__(self, data: bytes, delivered: int = 1) -> None:
        self.data = data
        self.subject = "schedule.tick.trg_1"
        self.headers: dict[str, str] | None = None
        self.reply = f"$JS.ACK.SCHEDULES.scheduler.{delivered}.7.7.1767261600000000000.0"
        self.acked = self.termed = False
        self.nak_delays: list[float | None] = []
        self.kept_in_progress = 0

    async def in_progress(self) -> None:
        self.kept_in_progress += 1

    async def ack(self) -> None:
        self.acked = True

    async def nak(self, delay: float | None = None) -> None:
        self.nak_delays.append(delay)

    async def term(self) -> None:
        self.termed = True


class FakeJs:
    def __init__(self) -> None:
        self.published: list[str] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.published.append(subject)


class FakeScheduler:
    def __init__(self, outcome: TickOutcome | Exception = "started") -> None:
        self.outcome = outcome
        self.fired: list[tuple[ScheduleTick, bool]] = []
        self.runs: list[Run] = []

    async def fire(
        self, tick: ScheduleTick, *, redelivered: bool, seen: int, on_hold: Any, still_working: Any
    ) -> TickOutcome:
        self.fired.append((tick, redelivered))
        self.seen = seen
        await still_working()
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    async def record_overlap_skip(self, run: Run) -> None:
        self.runs.append(run)


async def handle(scheduler: FakeScheduler, msg: FakeMsg, js: FakeJs | None = None) -> None:
    await handlers.handle_tick(
        scheduler,  # type: ignore[arg-type]
        js or FakeJs(),  # type: ignore[arg-type]
        msg,  # type: ignore[arg-type]
        retry_delay=1.5,
    )


async def test_a_handled_tick_is_acked_and_a_redelivery_is_said_so():
    scheduler, first, again = FakeScheduler(), FakeMsg(encode(TICK)), FakeMsg(encode(TICK), 2)
    await handle(scheduler, first)
    await handle(scheduler, again)
    assert first.acked
    assert again.acked
    assert scheduler.fired == [(TICK, False), (TICK, True)]


async def test_a_tick_names_its_place_in_the_stream_and_can_be_kept_in_progress():
    scheduler, msg = FakeScheduler(), FakeMsg(encode(TICK))
    await handle(scheduler, msg)
    assert scheduler.seen == 7  # the stream sequence in its reply subject
    assert msg.kept_in_progress == 1


async def test_a_tick_whose_start_fails_is_nakked_for_a_retry():
    msg = FakeMsg(encode(TICK))
    await handle(FakeScheduler(ConnectionError("no PubAck")), msg)
    assert (msg.acked, msg.nak_delays) == (False, [1.5])


@pytest.mark.parametrize(
    ("delivered", "acked"), [(1, False), (handlers.MAX_DELIVERIES_WHILE_BEHIND, True)]
)
async def test_a_tick_ahead_of_the_store_waits_for_it_a_bounded_number_of_times(
    delivered: int, acked: bool
):
    msg = FakeMsg(encode(TICK), delivered)
    await handle(FakeScheduler("store_behind"), msg)
    assert msg.acked is acked
    assert msg.nak_delays == ([] if acked else [1.5])


async def test_an_undecodable_tick_is_dead_lettered_and_never_fired():
    scheduler, js, msg = FakeScheduler(), FakeJs(), FakeMsg(b"not a tick")
    await handle(scheduler, msg, js)
    assert msg.termed
    assert not msg.acked
    assert scheduler.fired == []
    assert len(js.published) == 1


async def test_a_run_event_is_recorded_then_acked_and_an_undecodable_one_only_acked():
    run = Run(
        id="run_1",
        workspace_id="wsp_1",
        flow_id="flw_1",
        status="skipped",
        source="schedule",
        queued_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    scheduler, event, junk = FakeScheduler(), FakeMsg(b""), FakeMsg(b"junk")
    event.data = encode(RunEvent(run=run))
    await handlers.handle_run_event(scheduler, event)  # type: ignore[arg-type]
    await handlers.handle_run_event(scheduler, junk)  # type: ignore[arg-type]
    assert scheduler.runs == [run]
    assert event.acked
    assert junk.acked


class SizedJs(FakeJs):
    """Keeps what is published, as NATS would refuse anything over its max payload."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        assert len(payload) <= 1024 * 1024, f"{len(payload)} bytes: over NATS's max payload"
        self.payloads.append(payload)
        await super().publish(subject, payload)


async def test_a_tick_failing_on_its_last_allowed_delivery_is_dead_lettered_not_handed_back():
    js, msg = SizedJs(), FakeMsg(encode(TICK), adapters.TICK_MAX_DELIVER)
    await handle(FakeScheduler(ConnectionError("no PubAck")), msg, js)
    assert msg.termed
    assert msg.nak_delays == []
    letter = decode(js.payloads[0], DeadLetter)
    assert "no PubAck" in letter.reason
    assert str(adapters.TICK_MAX_DELIVER) in letter.reason


def test_every_consumer_the_scheduler_creates_has_a_delivery_limit():
    assert adapters.run_events_consumer_config().max_deliver == adapters.RUN_EVENT_MAX_DELIVER
    tick_config = adapters.tick_consumer_config(SchedulerSettings())
    assert tick_config.max_deliver == adapters.TICK_MAX_DELIVER


async def test_a_run_event_failing_on_its_last_allowed_delivery_is_dead_lettered():
    class Broken(FakeScheduler):
        async def record_overlap_skip(self, run: Run) -> None:
            raise ConnectionError("ledger down")

    run = Run(
        id="run_1",
        workspace_id="wsp_1",
        flow_id="flw_1",
        status="skipped",
        source="schedule",
        queued_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    js = SizedJs()
    early = FakeMsg(encode(RunEvent(run=run)))
    last = FakeMsg(encode(RunEvent(run=run)), adapters.RUN_EVENT_MAX_DELIVER)
    with pytest.raises(ConnectionError):
        await handlers.handle_run_event(Broken(), early, js)  # type: ignore[arg-type]
    await handlers.handle_run_event(Broken(), last, js)  # type: ignore[arg-type]
    assert (early.termed, last.termed) == (False, True)
    assert "ledger down" in decode(js.payloads[0], DeadLetter).reason


async def test_a_dead_letter_of_a_300_kb_body_of_nul_bytes_fits_in_one_nats_message():
    js, msg = SizedJs(), FakeMsg(b"\x00" * 300_000)
    await handle(FakeScheduler(), msg, js)
    assert msg.termed
    letter = decode(js.payloads[0], DeadLetter)
    assert (letter.payload_bytes, letter.truncated) == (300_000, True)
    assert letter.payload == "\x00" * broker.MAX_QUOTED_CHARS
