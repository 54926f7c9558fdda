"""The runner's core: the life of a run record and running a flow's function.

Plain values in, plain values out: no NATS here, and time comes from an injected clock.
"""

import asyncio
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from contracts.registry import Flow
from contracts.runs import FlowStart, Run
from services.runner.flows import FlowContext, FlowFunction, FlowRegistry

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def queued(start: FlowStart, now: datetime) -> Run:
    """The first record of a run: accepted, not started yet."""
    return Run(
        id=start.run_id,
        workspace_id=start.workspace_id,
        flow_id=start.flow_id,
        status="queued",
        source=start.source,
        trigger_id=start.trigger_id,
        input=start.input,
        scheduled_at=start.scheduled_at,
        requested_at=start.requested_at,
        queued_at=now,
    )


def begin(record: Run, now: datetime) -> Run:
    """The record of a run starting; starting a run that was already running is a new attempt."""
    attempt = record.attempt + 1 if record.status == "running" else record.attempt
    return msgspec.structs.replace(
        record, status="running", attempt=attempt, started_at=now, finished_at=None
    )


def context_of(run: Run) -> FlowContext:
    return FlowContext(
        run_id=run.id,
        workspace_id=run.workspace_id,
        flow_id=run.flow_id,
        trigger_id=run.trigger_id,
        source=run.source,
        attempt=run.attempt,
        scheduled_at=run.scheduled_at,
    )


async def execute(run: Run, flow: Flow, functions: FlowRegistry, clock: Clock) -> Run:
    """Run the function of `flow` for the running record `run`; return its terminal record.

    Whatever the function does, this returns: an exception, an unknown function name or a
    result that is not JSON all become a failed run with an error a person can act on.
    """
    name = flow.settings.function
    function = functions.get(name)
    if function is None:
        known = ", ".join(functions.names()) or "none"
        error = f"flow function {name!r} is not registered in this runner (known: {known})"
        return _finish(run, clock(), error=error)
    try:
        result = await _call(function, run.input, context_of(run))
    # A flow calling sys.exit() fails its run; it must not stop the runner.
    except (Exception, SystemExit) as exception:
        return _finish(run, clock(), error=describe(exception))
    try:
        result = msgspec.json.decode(msgspec.json.encode(result))
    except Exception as exception:
        error = f"the result of flow function {name!r} is not JSON: {describe(exception)}"
        return _finish(run, clock(), error=error)
    return _finish(run, clock(), result=result)


async def _call(function: FlowFunction, input: Any, context: FlowContext) -> Any:
    if inspect.iscoroutinefunction(function):
        return await function(input, context)
    # A plain function may block (I/O, CPU): keep it off the event loop.
    return await asyncio.to_thread(function, input, context)


def describe(exception: BaseException) -> str:
    """`ExceptionType: message`, the way a run's error reads."""
    message = str(exception)
    return f"{type(exception).__name__}: {message}" if message else type(exception).__name__


def _finish(run: Run, now: datetime, *, result: Any = None, error: str | None = None) -> Run:
    return msgspec.structs.replace(
        run,
        status="failed" if error is not None else "succeeded",
        result=result,
        error=error,
        finished_at=now,
    )
