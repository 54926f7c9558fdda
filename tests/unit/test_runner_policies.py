"""Pure runner policies: retries and backoff, timeouts, lost attempts, admission decisions."""

from datetime import UTC, datetime, timedelta
from typing import Any

from contracts.registry import Flow, PythonFlowSettings
from contracts.runs import FlowStart, Run, RunSlots
from services.runner.core import decide_concurrency, decide_overlap, without
from services.runner.executor import (
    MAX_LOST_ATTEMPTS,
    begin,
    conclude,
    execute_within,
    finish,
    queued,
    retry_delay,
)
from services.runner.flows import FlowContext, FlowRegistry

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def flow_of(**fields: Any) -> Flow:
    return Flow(
        id="flw_1",
        workspace_id="ws_1",
        name="a flow",
        settings=PythonFlowSettings(function="f"),
        created_at=T0,
        **fields,
    )


def running() -> Run:
    return begin(queued(FlowStart(run_id="run_1", workspace_id="ws_1", flow_id="flw_1"), T0), T0)


def failed(run: Run, at: datetime) -> Run:
    return Run(**{**{f: getattr(run, f) for f in run.__struct_fields__}, "status": "failed",
                  "error": "boom", "finished_at": at})  # fmt: skip


def test_the_retry_delay_doubles_with_jitter_between_half_and_all_of_it() -> None:
    flow = flow_of(retry_backoff_seconds=2)

    assert [retry_delay(flow, n, rng=lambda: 0.0) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert [retry_delay(flow, n, rng=lambda: 1.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert retry_delay(flow, 30, rng=lambda: 1.0) == 300.0  # capped


def test_a_failed_attempt_with_retries_left_is_queued_again_with_its_retry_time() -> None:
    flow = flow_of(retries=1, retry_backoff_seconds=4)
    at = T0 + timedelta(seconds=3)

    record, delay = conclude(failed(running(), at), flow, rng=lambda: 0.5)

    assert delay == 3.0
    assert record.status == "queued"
    assert record.retry_at == at + timedelta(seconds=3)
    assert record.error == "boom"
    assert [(a.outcome, a.error) for a in record.attempts] == [("failed", "boom")]


def test_a_failed_attempt_without_retries_left_fails_the_run_with_its_duration() -> None:
    flow = flow_of(retries=1)
    first, _ = conclude(failed(running(), T0 + timedelta(seconds=1)), flow)
    second = begin(first, T0 + timedelta(seconds=5))

    record, delay = conclude(failed(second, T0 + timedelta(seconds=6)), flow)

    assert delay is None
    assert record.status == "failed"
    assert record.attempt == 2
    assert record.duration_seconds == 6.0
    assert [a.outcome for a in record.attempts] == ["failed", "failed"]


def test_a_run_whose_runners_keep_going_silent_is_failed_after_the_lost_attempts_limit() -> None:
    record = running()
    for _ in range(MAX_LOST_ATTEMPTS - 1):
        record = begin(record, T0)
        assert record.status == "running"

    record = begin(record, T0)

    assert record.status == "failed"
    assert record.error is not None
    assert "taken over" in record.error
    assert [a.outcome for a in record.attempts] == ["superseded"] * MAX_LOST_ATTEMPTS


async def test_an_attempt_over_the_flow_timeout_is_timed_out() -> None:
    functions = FlowRegistry()

    @functions.flow("f")
    async def forever(input: Any, context: FlowContext) -> None:
        import asyncio

        await asyncio.sleep(60)

    record = await execute_within(running(), flow_of(timeout_seconds=0.05), functions, lambda: T0)

    assert record.status == "timed_out"
    assert record.error == "the attempt took longer than the flow's timeout of 0.05s"


def test_finishing_a_run_closes_its_running_attempt() -> None:
    record = finish(running(), "cancelled", T0 + timedelta(seconds=2), error="stop")

    assert record.status == "cancelled"
    assert [(a.outcome, a.error) for a in record.attempts] == [("cancelled", "stop")]


def test_overlap_skip_admits_the_first_run_and_skips_one_while_it_goes() -> None:
    first = decide_overlap(RunSlots(), "run_a", "skip", "trg_1")
    second = decide_overlap(first.slots, "run_b", "skip", "trg_1")

    assert (first.verdict, first.slots.active) == ("admitted", ["run_a"])
    assert second.verdict == "skip"
    assert "run run_a was still going" in second.reason
    assert decide_overlap(without(first.slots, "run_a"), "run_b", "skip", "trg_1").verdict == (
        "admitted"
    )


def test_overlap_buffer_one_keeps_one_successor_waiting_and_skips_the_next() -> None:
    slots = RunSlots(active=["run_a"])
    buffered = decide_overlap(slots, "run_b", "buffer_one", "trg_1")
    third = decide_overlap(buffered.slots, "run_c", "buffer_one", "trg_1")
    after = decide_overlap(without(buffered.slots, "run_a"), "run_b", "buffer_one", "trg_1")
    late = decide_overlap(without(buffered.slots, "run_a"), "run_c", "buffer_one", "trg_1")

    assert (buffered.verdict, buffered.slots.buffered) == ("wait", "run_b")
    assert third.verdict == "skip"
    assert (after.verdict, after.slots) == ("admitted", RunSlots(active=["run_b"]))
    assert late.verdict == "skip"  # the buffered start goes before a later one


def test_overlap_cancel_previous_takes_over_from_the_running_run() -> None:
    decision = decide_overlap(RunSlots(active=["run_a"]), "run_b", "cancel_previous", "trg_1")

    assert (decision.verdict, decision.cancel, decision.slots.active) == (
        "admitted",
        ["run_a"],
        ["run_b"],
    )


def test_a_concurrency_slot_is_taken_once_per_run_and_refused_when_all_are_held() -> None:
    one = decide_concurrency(RunSlots(), "run_a", 2)
    again = decide_concurrency(one.slots, "run_a", 2)
    two = decide_concurrency(one.slots, "run_b", 2)
    full = decide_concurrency(two.slots, "run_c", 2)

    assert one.slots.active == ["run_a"]
    assert (again.verdict, again.slots) == ("admitted", one.slots)
    assert two.slots.active == ["run_a", "run_b"]
    assert full.verdict == "wait"
