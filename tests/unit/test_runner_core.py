"""The runner's start and cancel decisions, over in-memory fakes and a clock that stands still."""

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import msgspec
import pytest

from contracts import subjects
from contracts.registry import Flow, OverlapPolicy, Problem, PythonFlowSettings
from contracts.runs import FlowStart, Run, RunSlots
from services.runner.core import (
    ADMISSION_RETRY,
    MAX_RECORD_BYTES,
    CancelRuns,
    StartRuns,
    unrecorded_attempt,
)
from services.runner.executor import MAX_LOST_ATTEMPTS, begin, finish, queued
from services.runner.flows import FlowContext, FlowRegistry
from shared.ids import new_id
from shared.pull import Delivery
from tests.unit.fakes import (
    FixedClock,
    FlakyRunStore,
    InMemoryAdmission,
    InMemoryRunStore,
    KeepAliveLog,
    RecordingAborts,
    RecordingEvents,
    StartMessageLog,
)

WS = new_id("ws")
calls: Counter[str] = Counter()
"""How often a flow function ran, per run id."""
going: dict[str, asyncio.Event] = {}
"""Set when the `wait` flow of a run has started."""
released: dict[str, asyncio.Event] = {}
"""The `wait` flow of a run returns once its event is set."""

functions = FlowRegistry()


@functions.flow("echo")
async def echo(input: Any, context: FlowContext) -> Any:
    calls[context.run_id] += 1
    return input


@functions.flow("fail")
async def fail(input: Any, context: FlowContext) -> Any:
    calls[context.run_id] += 1
    raise RuntimeError("the cheese ran out")


@functions.flow("grow")
async def grow(input: Any, context: FlowContext) -> Any:
    calls[context.run_id] += 1
    return "x" * input


@functions.flow("stubborn")
async def stubborn(input: Any, context: FlowContext) -> Any:
    """Ignores being stopped (as a flow should not)."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        return "went on"
    return "slept"


@functions.flow("wait")
async def wait(input: Any, context: FlowContext) -> Any:
    calls[context.run_id] += 1
    going.setdefault(context.run_id, asyncio.Event()).set()
    await released.setdefault(context.run_id, asyncio.Event()).wait()
    return "released"


def flow_of(function: str, **limits: Any) -> Flow:
    return Flow(
        id=new_id("flw"),
        workspace_id=WS,
        name=function,
        settings=PythonFlowSettings(function=function),
        created_at=FixedClock().now,
        **limits,
    )


class Runner:
    """The core with fakes around it; `deliver` plays JetStream delivering a start."""

    def __init__(
        self, store: InMemoryRunStore | None = None, max_record_bytes: int = MAX_RECORD_BYTES
    ) -> None:
        self.clock = FixedClock()
        self.store = store or InMemoryRunStore()
        self.events = RecordingEvents()
        self.admission = InMemoryAdmission()
        self.aborts = RecordingAborts()
        self.cancel_runs = CancelRuns(self.store, self.events, self.aborts, self.clock)
        self.cancel_runs.admission = self.admission
        self.starts = StartRuns(
            store=self.store,
            events=self.events,
            admission=self.admission,
            keep_alive=KeepAliveLog(),  # type: ignore[arg-type]
            functions=functions,
            clock=self.clock,
            runner_id="rnr_test",
            record_running_after=60.0,
            rng=lambda: 0.5,
            max_record_bytes=max_record_bytes,
        )

    def other(self, runner_id: str) -> StartRuns:
        """Another replica's core over the same bucket, slots and events."""
        return StartRuns(
            store=self.store,
            events=self.events,
            admission=self.admission,
            keep_alive=KeepAliveLog(),  # type: ignore[arg-type]
            functions=functions,
            clock=self.clock,
            runner_id=runner_id,
            record_running_after=60.0,
            rng=lambda: 0.5,
        )

    def start_of(
        self,
        flow: Flow,
        input: Any = None,
        *,
        trigger_id: str | None = None,
        overlap: OverlapPolicy = "allow",
    ) -> FlowStart:
        """A start whose run id was made just now."""
        run_id = new_id("run", now_ms=int(self.clock.now.timestamp() * 1000))
        return FlowStart(
            run_id=run_id,
            workspace_id=WS,
            flow_id=flow.id,
            input=input,
            trigger_id=trigger_id,
            overlap=overlap,
        )

    async def deliver(
        self,
        start: FlowStart,
        flow: Flow,
        *,
        sequence: int = 1,
        delivered: int = 1,
        msg_id: str | None = "another-message-id",
    ) -> StartMessageLog:
        """Deliver the start (by default not keyed by its run id: not on the fast path)."""
        msg = StartMessageLog()
        seen = Delivery(sequence, delivered, self.clock.now.timestamp())
        await self.starts.start(msg, start, flow, seen, msg_id)
        return msg

    def record(self, start: FlowStart) -> Run:
        run = self.store.get(subjects.run_key(start.workspace_id, start.run_id))
        assert run is not None
        return run


@pytest.fixture
def runner() -> Runner:
    return Runner()


async def test_a_fresh_start_runs_at_once_and_writes_only_its_final_record(runner: Runner) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow, "hello")

    msg = await runner.deliver(start, flow, sequence=7, msg_id=start.run_id)

    run = runner.record(start)
    assert (run.status, run.result, run.start_sequence) == ("succeeded", "hello", 7)
    assert runner.store.writes == 1
    assert runner.events.statuses(start.run_id) == ["succeeded"]
    assert msg.acked == 1
    assert msg.naks == []
    assert not msg.kept


async def test_a_start_that_is_not_fresh_records_its_run_running_before_it_runs(
    runner: Runner,
) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow, "hello")

    msg = await runner.deliver(start, flow, delivered=2, msg_id=start.run_id)

    assert runner.record(start).status == "succeeded"
    assert runner.events.statuses(start.run_id) == ["running", "succeeded"]
    assert msg.acked == 1


async def test_a_second_message_for_a_run_another_message_owns_runs_nothing(runner: Runner) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow)
    now = runner.clock.now
    owned = begin(queued(start, now, sequence=3), now, "rnr_other")  # running at another replica
    await runner.store.create(subjects.run_key(WS, start.run_id), owned)

    msg = await runner.deliver(start, flow, sequence=4)

    assert msg.acked == 1
    assert calls[start.run_id] == 0
    assert runner.record(start) == owned
    assert runner.events.published == []


async def test_a_duplicate_start_of_a_finished_run_publishes_its_final_event_again(
    runner: Runner,
) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow, "once")
    await runner.deliver(start, flow, sequence=1, msg_id=start.run_id)

    # Published again after the duplicate window: not fresh, so it reads the record first.
    msg = await runner.deliver(start, flow, sequence=2)

    assert msg.acked == 1
    assert calls[start.run_id] == 1
    assert runner.events.statuses(start.run_id) == ["succeeded", "succeeded"]


async def test_a_redelivery_after_a_silent_runner_records_its_attempt_superseded_and_runs_a_new_one(
    runner: Runner,
) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow, "again")
    now = runner.clock.now
    died = begin(queued(start, now, sequence=5), now, "rnr_dead")
    await runner.store.create(subjects.run_key(WS, start.run_id), died)
    runner.clock.advance(30)  # the ack wait

    msg = await runner.deliver(start, flow, sequence=5, delivered=2)

    run = runner.record(start)
    assert (run.status, run.attempt, run.result) == ("succeeded", 2, "again")
    assert [(a.runner_id, a.outcome) for a in run.attempts] == [
        ("rnr_dead", "superseded"),
        ("rnr_test", "succeeded"),
    ]
    assert run.attempts[0].superseded_by == 2
    assert msg.acked == 1


async def test_a_run_that_lost_too_many_attempts_is_failed_without_running_again(
    runner: Runner,
) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow)
    now = runner.clock.now
    record = queued(start, now, sequence=5)
    for _ in range(MAX_LOST_ATTEMPTS):  # each runner died during its attempt
        record = begin(record, now, "rnr_dead")
    await runner.store.create(subjects.run_key(WS, start.run_id), record)

    msg = await runner.deliver(start, flow, sequence=5, delivered=MAX_LOST_ATTEMPTS + 1)

    run = runner.record(start)
    assert run.status == "failed"
    assert run.error is not None
    assert "taken over" in run.error
    assert calls[start.run_id] == 0
    assert msg.acked == 1


async def test_a_failed_attempt_with_retries_left_is_handed_back_until_its_backoff_ends(
    runner: Runner,
) -> None:
    flow = flow_of("fail", retries=1, retry_backoff_seconds=4.0)
    start = runner.start_of(flow)

    first = await runner.deliver(start, flow, delivered=1)
    # Equal jitter with rng 0.5: half of 4 s fixed, a quarter of it random.
    assert first.naks == [3.0]
    assert first.acked == 0
    waiting = runner.record(start)
    assert waiting.status == "queued"
    assert waiting.retry_at is not None
    assert (waiting.retry_at - runner.clock.now).total_seconds() == 3.0

    early = await runner.deliver(start, flow, delivered=2)  # back before its retry is due
    assert early.naks == [3.0]
    assert calls[start.run_id] == 1

    runner.clock.advance(3.0)
    last = await runner.deliver(start, flow, delivered=3)

    run = runner.record(start)
    assert run.status == "failed"
    assert [attempt.outcome for attempt in run.attempts] == ["failed", "failed"]
    assert last.acked == 1
    assert calls[start.run_id] == 2
    assert runner.events.statuses(start.run_id) == ["running", "queued", "running", "failed"]


async def test_a_run_waits_queued_while_its_flow_s_slots_are_full_and_runs_once_one_is_free(
    runner: Runner,
) -> None:
    flow = flow_of("echo", concurrency=1)
    start = runner.start_of(flow, "my turn")
    slots = f"flow.{WS}.{flow.id}"
    runner.admission.slots[slots] = RunSlots(active=["run_other"])

    full = await runner.deliver(start, flow, delivered=1)

    assert full.naks == [ADMISSION_RETRY * (0.5 + 0.5)]
    assert full.acked == 0
    assert runner.record(start).status == "queued"
    assert calls[start.run_id] == 0

    await runner.admission.release(WS, "run_other", flow.id, None)
    free = await runner.deliver(start, flow, delivered=2)

    assert runner.record(start).result == "my turn"
    assert free.acked == 1
    assert runner.admission.slots[slots] == RunSlots()  # its slot given back


async def test_a_start_of_a_trigger_with_overlap_skip_is_skipped_while_another_run_goes(
    runner: Runner,
) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow, trigger_id="trg_1", overlap="skip")
    runner.admission.slots[f"trigger.{WS}.trg_1"] = RunSlots(active=["run_other"])

    msg = await runner.deliver(start, flow)

    run = runner.record(start)
    assert run.status == "skipped"
    assert run.error == (
        "skipped by the overlap policy skip of trigger trg_1: run run_other was still going"
    )
    assert runner.events.statuses(start.run_id) == ["queued", "skipped"]
    assert calls[start.run_id] == 0
    assert msg.acked == 1


async def test_a_cancelled_queued_run_is_final_and_its_next_delivery_does_not_run_it(
    runner: Runner,
) -> None:
    flow = flow_of("echo", concurrency=1)
    start = runner.start_of(flow)
    runner.admission.slots[f"flow.{WS}.{flow.id}"] = RunSlots(active=["run_other"])
    await runner.deliver(start, flow)  # queued, waiting for a slot

    cancelled = await runner.cancel_runs.cancel(WS, start.run_id, "not needed any more")

    assert isinstance(cancelled, Run)
    assert (cancelled.status, cancelled.error) == ("cancelled", "not needed any more")
    assert runner.record(start) == cancelled
    assert runner.aborts.aborted == [(WS, start.run_id)]
    msg = await runner.deliver(start, flow, delivered=2)
    assert msg.acked == 1
    assert calls[start.run_id] == 0


async def test_cancelling_a_running_run_stops_its_flow_and_acknowledges_its_start(
    runner: Runner,
) -> None:
    flow = flow_of("wait")
    start = runner.start_of(flow)
    msg = StartMessageLog()
    seen = Delivery(1, 1, runner.clock.now.timestamp())
    handling = asyncio.create_task(runner.starts.start(msg, start, flow, seen, None))
    await asyncio.wait_for(going.setdefault(start.run_id, asyncio.Event()).wait(), timeout=2)
    assert msg.kept

    await runner.cancel_runs.cancel(WS, start.run_id, "stop it")
    runner.starts.abort(WS, start.run_id)  # the abort broadcast reaching this replica
    await asyncio.wait_for(handling, timeout=2)

    assert runner.record(start).status == "cancelled"
    assert msg.acked == 1
    assert not msg.kept
    assert runner.events.statuses(start.run_id) == ["running", "cancelled"]


async def test_only_a_queued_or_running_run_can_be_cancelled(runner: Runner) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow)
    await runner.deliver(start, flow, msg_id=start.run_id)

    finished = await runner.cancel_runs.cancel(WS, start.run_id, "too late")
    unknown = await runner.cancel_runs.cancel(WS, "run_nobody", "never was")

    assert isinstance(finished, Problem)
    assert finished.code == "run_finished"
    assert isinstance(unknown, Problem)
    assert unknown.code == "run_not_found"
    assert runner.aborts.aborted == []


# --- Takeovers and writes that fail: every execution is an attempt, told truthfully -------


async def until(condition: Any, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def attempts_of(run: Run) -> list[tuple[int, str, str, int | None]]:
    return [(a.number, a.runner_id, a.outcome, a.superseded_by) for a in run.attempts]


async def test_a_runner_taken_over_records_its_finished_attempt_as_its_own_beside_the_newer_one(
    runner: Runner,
) -> None:
    flow = flow_of("wait")
    start = runner.start_of(flow, "hi")
    first = asyncio.create_task(runner.deliver(start, flow, sequence=5))
    await asyncio.wait_for(going.setdefault(start.run_id, asyncio.Event()).wait(), timeout=2)
    # Its runner went silent for the ack wait (paused): JetStream gave the start to another.
    runner.clock.advance(30)
    second_msg = StartMessageLog()
    redelivered = Delivery(5, 2, runner.clock.now.timestamp())
    second = asyncio.create_task(
        runner.other("rnr_b").start(second_msg, start, flow, redelivered, None)
    )
    await until(lambda: runner.record(start).attempt == 2, "the other runner's attempt")

    released[start.run_id].set()  # both flows finish; the silent runner commits first
    first_msg = await asyncio.wait_for(first, timeout=2)
    await asyncio.wait_for(second, timeout=2)

    run = runner.record(start)
    assert (run.status, run.result) == ("succeeded", "released")
    assert attempts_of(run) == [(1, "rnr_test", "succeeded", 2), (2, "rnr_b", "succeeded", None)]
    assert calls[start.run_id] == 2  # at least once: both ran it, and the record says so
    # The start's message is the other runner's now: only its ack counts.
    assert (first_msg.acked, first_msg.naks) == (0, [])
    assert second_msg.acked == 1
    assert runner.events.statuses(start.run_id) == ["running", "running", "succeeded"]


async def test_a_runner_taken_over_by_a_run_that_ended_meanwhile_only_tells_its_attempt(
    runner: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    flow = flow_of("wait")
    start = runner.start_of(flow, "late")
    first = asyncio.create_task(runner.deliver(start, flow, sequence=5))
    await asyncio.wait_for(going.setdefault(start.run_id, asyncio.Event()).wait(), timeout=2)
    key = subjects.run_key(WS, start.run_id)
    # Another runner took over after the ack wait and finished the run.
    running, revision = await runner.store.read(key) or (None, 0)
    assert running is not None
    runner.clock.advance(30)
    took_over = begin(running, runner.clock.now, "rnr_b")
    done = finish(took_over, "succeeded", runner.clock.advance(1), result="theirs")
    assert (await runner.store.swap(key, done, revision))[0] is not None

    released[start.run_id].set()
    await asyncio.wait_for(first, timeout=2)

    run = runner.record(start)
    assert (run.status, run.result, run.attempt) == (done.status, done.result, done.attempt)
    assert attempts_of(run) == [(1, "rnr_test", "succeeded", 2), (2, "rnr_b", "succeeded", None)]
    assert any(
        start.run_id in r.getMessage() and "recorded as this attempt" in r.getMessage()
        for r in caplog.records
    )


async def test_a_taken_over_runner_whose_write_fails_a_while_starts_no_new_work() -> None:
    runner = Runner(FlakyRunStore())
    flow = flow_of("wait")
    start = runner.start_of(flow, "mine")
    first = asyncio.create_task(runner.deliver(start, flow, sequence=5))
    await asyncio.wait_for(going.setdefault(start.run_id, asyncio.Event()).wait(), timeout=2)
    key = subjects.run_key(WS, start.run_id)
    running, revision = await runner.store.read(key) or (None, 0)
    assert running is not None
    runner.clock.advance(30)
    took_over = begin(running, runner.clock.now, "rnr_b")  # still running at the other runner
    assert (await runner.store.swap(key, took_over, revision))[0] is not None
    runner.store.failures = 1  # NATS drops the first try of the final write

    released[start.run_id].set()
    msg = await asyncio.wait_for(first, timeout=5)

    run = runner.record(start)
    assert run.status == "running"
    assert run.attempts[1] == took_over.attempts[1], "the newer attempt is never written over"
    assert attempts_of(run) == [(1, "rnr_test", "succeeded", 2), (2, "rnr_b", "running", None)]
    # Neither acknowledged (the other runner's ack counts) nor handed back for a new attempt.
    assert (msg.acked, msg.naks) == (0, [])


async def test_a_fresh_run_whose_final_write_fails_while_nats_is_down_is_retried_until_stored() -> (
    None
):
    runner = Runner(FlakyRunStore(failures=2))
    flow = flow_of("echo")
    start = runner.start_of(flow, "once")

    msg = await runner.deliver(start, flow, msg_id=start.run_id)  # the fast path

    run = runner.record(start)
    assert (run.status, run.result) == ("succeeded", "once")
    assert attempts_of(run) == [(1, "rnr_test", "succeeded", None)]
    assert calls[start.run_id] == 1
    assert (msg.acked, msg.naks) == (1, [])
    assert runner.events.statuses(start.run_id) == ["succeeded"]


async def test_a_final_write_stored_but_unanswered_is_known_as_this_runner_s_own() -> None:
    runner = Runner(FlakyRunStore(failures=1, landed=True))
    flow = flow_of("echo")
    start = runner.start_of(flow, "once")

    msg = await runner.deliver(start, flow, msg_id=start.run_id)

    run = runner.record(start)
    assert (run.status, run.result) == ("succeeded", "once")
    assert attempts_of(run) == [(1, "rnr_test", "succeeded", None)]
    assert (msg.acked, msg.naks) == (1, [])
    assert runner.events.statuses(start.run_id) == ["succeeded"]


async def test_a_running_run_whose_final_write_fails_a_while_is_recorded_once_and_not_lost() -> (
    None
):
    store = FlakyRunStore()
    runner = Runner(store)
    flow = flow_of("wait")
    start = runner.start_of(flow, "slow")
    handling = asyncio.create_task(runner.deliver(start, flow, sequence=5))
    await asyncio.wait_for(going.setdefault(start.run_id, asyncio.Event()).wait(), timeout=2)
    store.failures = 2

    released[start.run_id].set()
    msg = await asyncio.wait_for(handling, timeout=5)

    run = runner.record(start)
    assert (run.status, run.result) == ("succeeded", "released")
    assert attempts_of(run) == [(1, "rnr_test", "succeeded", None)]
    assert store.failed == 2
    assert (msg.acked, msg.naks) == (1, [])
    assert runner.events.statuses(start.run_id) == ["running", "succeeded"]


async def test_a_redelivered_start_that_finds_no_record_numbers_its_attempt_after_an_unnamed_one(
    runner: Runner,
) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow, "again")

    await runner.deliver(start, flow, sequence=7, delivered=2)

    run = runner.record(start)
    assert run.status == "succeeded"
    assert attempts_of(run) == [(1, "", "superseded", 2), (2, "rnr_test", "succeeded", None)]


async def test_a_fast_path_runner_that_comes_back_names_the_attempt_the_record_left_unnamed(
    runner: Runner,
) -> None:
    flow = flow_of("wait")
    start = runner.start_of(flow, "paused")
    # On the fast path (keyed by its run id, first delivery) and silent in its first moments:
    # no record yet.
    first = asyncio.create_task(runner.deliver(start, flow, sequence=5, msg_id=start.run_id))
    await asyncio.wait_for(going.setdefault(start.run_id, asyncio.Event()).wait(), timeout=2)
    # Meanwhile the start came back to another runner, which found no record.
    seen = Delivery(5, 2, runner.clock.now.timestamp())
    other = runner.other("rnr_b")
    second = asyncio.create_task(other.start(StartMessageLog(), start, flow, seen, start.run_id))
    await asyncio.sleep(0.05)
    released[start.run_id].set()
    await asyncio.wait_for(asyncio.gather(first, second), timeout=5)

    run = runner.record(start)
    assert run.status == "succeeded"
    assert [(a.number, a.runner_id, a.outcome) for a in run.attempts] == [
        (1, "rnr_test", "succeeded"),
        (2, "rnr_b", "succeeded"),
    ]


async def test_a_fast_path_runner_stopped_by_a_record_it_did_not_write_names_its_attempt_there(
    runner: Runner,
) -> None:
    flow = flow_of("wait")
    start = runner.start_of(flow, "stopped")
    key = subjects.run_key(WS, start.run_id)
    # Another runner, given the start again, found no record and ran it to the end.
    now = runner.clock.now
    record = msgspec.structs.replace(queued(start, now, 5), attempts=[unrecorded_attempt(now)])
    theirs = finish(begin(record, now, "rnr_b"), "succeeded", now, result="theirs")
    runner.starts._record_running_after = 0.05  # the running record is written soon
    first = asyncio.create_task(runner.deliver(start, flow, sequence=5, msg_id=start.run_id))
    await asyncio.wait_for(going.setdefault(start.run_id, asyncio.Event()).wait(), timeout=2)
    assert await runner.store.create(key, theirs) is not None

    await asyncio.wait_for(first, timeout=5)

    run = runner.record(start)
    assert (run.status, run.result) == ("succeeded", "theirs")
    assert [(a.number, a.runner_id, a.outcome) for a in run.attempts] == [
        (1, "rnr_test", "cancelled"),
        (2, "rnr_b", "succeeded"),
    ]


async def test_a_start_stored_before_the_runner_reconnected_is_taken_as_a_redelivery() -> None:
    # The server restarted meanwhile and may have forgotten an earlier delivery of the start:
    # no fast path, and the attempt is numbered after an unnamed one.
    runner = Runner()
    runner.starts._reconnected_at = lambda: runner.clock.now.timestamp() + 1
    flow = flow_of("echo")
    start = runner.start_of(flow, "after a restart")

    await runner.deliver(start, flow, sequence=9, msg_id=start.run_id)

    run = runner.record(start)
    assert run.status == "succeeded"
    assert attempts_of(run) == [(1, "", "superseded", 2), (2, "rnr_test", "succeeded", None)]


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_result_too_large_to_record_fails_the_run_once_without_a_retry(
    fast_path: bool,
) -> None:
    runner = Runner(max_record_bytes=4096)
    flow = flow_of("grow", retries=2)
    start = runner.start_of(flow, 10_000)

    msg = await runner.deliver(start, flow, msg_id=start.run_id if fast_path else "other")

    run = runner.record(start)
    assert (run.status, run.result) == ("failed", None)
    assert run.error is not None
    assert "too large to record" in run.error
    assert [a.outcome for a in run.attempts] == ["failed"]
    assert calls[start.run_id] == 1
    assert (msg.acked, msg.naks) == (1, [])
    assert runner.events.statuses(start.run_id)[-1] == "failed"


async def test_a_start_too_large_to_record_fails_its_run_without_running_it(
    runner: Runner,
) -> None:
    flow = flow_of("echo")
    start = runner.start_of(flow, "x" * 2000)
    msg = StartMessageLog()

    await runner.starts.fail_too_large(msg, start, Delivery(3, 1, 0.0), 1_040_000)

    run = runner.record(start)
    assert (run.status, run.input, run.start_sequence) == ("failed", None, 3)
    assert run.error is not None
    assert "1040000 bytes" in run.error
    assert calls[start.run_id] == 0
    assert msg.acked == 1


@pytest.mark.parametrize("run_id", ["*", ">", "run_1.x", ""])
async def test_cancelling_a_run_id_that_is_no_id_is_run_not_found_without_a_read(
    runner: Runner, run_id: str
) -> None:
    outcome = await runner.cancel_runs.cancel(WS, run_id, "by hand")

    assert isinstance(outcome, Problem)
    assert (outcome.status, outcome.code) == (404, "run_not_found")


async def test_cancelling_in_a_workspace_id_that_is_no_id_is_run_not_found(runner: Runner) -> None:
    outcome = await runner.cancel_runs.cancel(">", new_id("run"), "by hand")

    assert isinstance(outcome, Problem)
    assert outcome.status == 404


async def test_a_fast_path_run_that_outlasts_its_flow_s_timeout_is_timed_out_after_its_record(
    runner: Runner,
) -> None:
    # Its timeout is armed only once the run has gone on long enough for a `running` record.
    runner.starts._record_running_after = 0.05
    flow = msgspec.structs.replace(flow_of("wait"), timeout_seconds=1.1)
    start = runner.start_of(flow, "never released")
    key = subjects.run_key(WS, start.run_id)
    began = asyncio.get_running_loop().time()

    msg = await asyncio.wait_for(
        runner.deliver(start, flow, sequence=3, msg_id=start.run_id), timeout=5
    )

    took = asyncio.get_running_loop().time() - began
    assert 1.1 <= took < 2.0
    run = runner.record(start)
    assert run.status == "timed_out"
    assert [e.status for e in runner.events.published if e.id == start.run_id] == [
        "running",
        "timed_out",
    ]
    assert msg.acked
    assert runner.store.get(key) == run


def late_timed_run(
    runner: Runner, function: str
) -> tuple[FlowStart, StartMessageLog, "asyncio.Task[None]"]:
    """A fast-path run of `function` handled in a task of its own, its flow's 1.1 s timeout armed
    late (when its `running` record is written, 0.05 s in): the start, its message, the task."""
    runner.starts._record_running_after = 0.05
    flow = msgspec.structs.replace(flow_of(function), timeout_seconds=1.1)
    start = runner.start_of(flow, "never released")
    msg = StartMessageLog()
    seen = Delivery(3, 1, runner.clock.now.timestamp())
    handling = asyncio.create_task(runner.starts.start(msg, start, flow, seen, start.run_id))
    return start, msg, handling


async def recorded_running(runner: Runner, start: FlowStart) -> None:
    """Wait until the fast-path run of `start` has its `running` record."""
    deadline = asyncio.get_running_loop().time() + 5
    while runner.events.statuses(start.run_id) != ["running"]:
        assert asyncio.get_running_loop().time() < deadline, "no running record"
        await asyncio.sleep(0.01)


async def test_a_fast_path_run_stopped_with_its_runner_is_handed_back_and_never_timed_out(
    runner: Runner,
) -> None:
    start, msg, handling = late_timed_run(runner, "wait")
    await recorded_running(runner, start)

    handling.cancel()  # the runner stopping: its runs go back to JetStream
    with pytest.raises(asyncio.CancelledError):
        await handling
    await asyncio.sleep(1.2)  # past the flow's timeout, armed when its record was written

    run = runner.record(start)
    assert run.status == "queued"
    assert run.attempts[-1].outcome == "interrupted"
    assert runner.events.statuses(start.run_id) == ["running"]
    assert not msg.acked


async def test_a_fast_path_run_cancelled_as_its_timeout_expires_ends_cancelled(
    runner: Runner,
) -> None:
    start, msg, handling = late_timed_run(runner, "wait")
    await recorded_running(runner, start)

    # The loop held past the flow's deadline (on purpose): its timeout is due at once.
    time.sleep(1.2)  # noqa: ASYNC251
    await runner.cancel_runs.cancel(WS, start.run_id, "stop it")
    runner.starts.abort(WS, start.run_id)  # the abort broadcast reaching this replica
    await asyncio.wait_for(handling, timeout=2)

    run = runner.record(start)
    assert run.status == "cancelled"
    assert runner.events.statuses(start.run_id) == ["running", "cancelled"]
    assert msg.acked == 1


async def test_a_fast_path_flow_that_ignores_its_timeout_keeps_its_result_and_its_task_is_clear(
    runner: Runner,
) -> None:
    # As with `asyncio.timeout`: a flow that swallows the cancellation ends as it ends.
    start, msg, handling = late_timed_run(runner, "stubborn")

    await asyncio.wait_for(handling, timeout=5)

    run = runner.record(start)
    assert (run.status, run.result) == ("succeeded", "went on")
    assert handling.cancelling() == 0  # no cancellation left pending on the task
    assert msg.acked == 1
