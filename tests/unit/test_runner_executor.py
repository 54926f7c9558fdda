"""The runner's core: run records and running flow functions, with a fake clock."""

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.registry import Flow, PythonFlowSettings
from contracts.runs import Attempt, FlowStart, Run
from services.runner.executor import begin, execute, queued
from services.runner.flows import FlowContext, FlowRegistry

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """Every reading is one second after the previous one."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def flow_of(function: str) -> Flow:
    return Flow(
        id="flow_1",
        workspace_id="ws_1",
        name="a flow",
        settings=PythonFlowSettings(function=function),
        created_at=T0,
    )


def running(input: Any = None, **start: Any) -> Run:
    fields: dict[str, Any] = {"run_id": "run_1", "workspace_id": "ws_1", "flow_id": "flow_1"}
    return begin(queued(FlowStart(**fields, input=input, **start), T0), T0)


functions = FlowRegistry()


@functions.flow("double")
async def double(input: Any, context: FlowContext) -> int:
    return int(input["n"]) * 2


@functions.flow("thread_name")
def thread_name(input: Any, context: FlowContext) -> str:
    return threading.current_thread().name


@functions.flow("explode")
async def explode(input: Any, context: FlowContext) -> None:
    raise ValueError(f"no {input}")


@functions.flow("exit")
def exit_(input: Any, context: FlowContext) -> None:
    raise SystemExit(3)


@functions.flow("not_json")
def not_json(input: Any, context: FlowContext) -> object:
    return {"value": object()}


@functions.flow("context")
def context_of_run(input: Any, context: FlowContext) -> FlowContext:
    return context


async def test_a_function_that_returns_gives_a_succeeded_run_with_its_result() -> None:
    clock = FakeClock()

    run = await execute(running({"n": 21}), flow_of("double"), functions, clock)

    assert run.status == "succeeded"
    assert run.result == 42
    assert run.error is None
    assert run.finished_at == T0 + timedelta(seconds=1)


async def test_a_sync_function_runs_in_a_worker_thread_not_on_the_event_loop() -> None:
    run = await execute(running(), flow_of("thread_name"), functions, FakeClock())

    assert run.status == "succeeded"
    assert run.result != threading.current_thread().name


async def test_an_exception_gives_a_failed_run_with_its_type_and_message() -> None:
    run = await execute(running("cheese"), flow_of("explode"), functions, FakeClock())

    assert run.status == "failed"
    assert run.error == "ValueError: no cheese"
    assert run.result is None
    assert run.finished_at is not None


async def test_a_function_calling_sys_exit_fails_its_run_and_not_the_runner() -> None:
    run = await execute(running(), flow_of("exit"), functions, FakeClock())

    assert run.status == "failed"
    assert run.error == "SystemExit: 3"


async def test_a_result_that_is_not_json_gives_a_failed_run_that_says_so() -> None:
    run = await execute(running(), flow_of("not_json"), functions, FakeClock())

    assert run.status == "failed"
    assert run.error is not None
    assert run.error.startswith("the result of flow function 'not_json' is not JSON: ")
    assert "object" in run.error


async def test_an_unknown_function_gives_a_failed_run_that_lists_the_known_ones() -> None:
    run = await execute(running(), flow_of("missing"), functions, FakeClock())

    assert run.status == "failed"
    assert run.error == (
        "flow function 'missing' is not registered in this runner "
        "(known: context, double, exit, explode, not_json, thread_name)"
    )


async def test_the_function_gets_the_context_of_its_run() -> None:
    scheduled = T0 - timedelta(minutes=1)
    record = running(source="schedule", trigger_id="trg_1", scheduled_at=scheduled)

    run = await execute(record, flow_of("context"), functions, FakeClock())

    assert run.result == {
        "run_id": "run_1",
        "workspace_id": "ws_1",
        "flow_id": "flow_1",
        "trigger_id": "trg_1",
        "source": "schedule",
        "attempt": 1,
        "scheduled_at": scheduled.isoformat().replace("+00:00", "Z"),
    }


async def test_a_function_that_is_cancelled_is_not_recorded_as_failed() -> None:
    started = asyncio.Event()
    slow = FlowRegistry()

    @slow.flow("wait")
    async def wait(input: Any, context: FlowContext) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(execute(running(), flow_of("wait"), slow, FakeClock()))
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_start_becomes_a_queued_record_with_everything_it_carried() -> None:
    start = FlowStart(
        run_id="run_1",
        workspace_id="ws_1",
        flow_id="flow_1",
        input={"a": 1},
        source="api",
        trigger_id="trg_1",
        requested_at=T0,
    )

    record = queued(start, T0)

    assert record.status == "queued"
    assert (record.id, record.workspace_id, record.flow_id) == ("run_1", "ws_1", "flow_1")
    assert (record.input, record.source, record.trigger_id) == ({"a": 1}, "api", "trg_1")
    assert record.attempt == 1
    assert record.queued_at == T0
    assert record.requested_at == T0


def test_beginning_a_queued_run_is_its_first_attempt() -> None:
    later = T0 + timedelta(seconds=5)

    record = begin(queued(FlowStart(run_id="r", workspace_id="w", flow_id="f"), T0), later, "rnr_1")

    assert record.status == "running"
    assert record.attempt == 1
    assert record.started_at == later
    assert record.attempts == [Attempt(number=1, runner_id="rnr_1", started_at=later)]
    assert (record.finished_at, record.retry_at, record.queued_at) == (None, None, T0)


def test_beginning_a_run_left_running_by_a_dead_runner_is_a_new_attempt() -> None:
    first = begin(queued(FlowStart(run_id="r", workspace_id="w", flow_id="f"), T0), T0)

    again = begin(first, T0 + timedelta(minutes=1))

    assert again.status == "running"
    assert again.attempt == 2
    assert again.started_at == T0  # the run's first start; each attempt keeps its own
    assert [(a.outcome, a.superseded_by) for a in again.attempts] == [
        ("superseded", 2),
        ("running", None),
    ]
    assert again.attempts[1].started_at == T0 + timedelta(minutes=1)
