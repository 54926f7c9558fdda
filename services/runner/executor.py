"""The runner's core: the life of a run record and running a flow's function.

Plain values in, plain values out: no NATS here, and time comes from an injected clock.
A run record goes `queued` → `running` (one `Attempt` each time) → a terminal status; between
attempts of a flow with retries it is `queued` again with `retry_at` and the last `error`. A run
that needs no admission (no concurrency limit, overlap `allow`) is created `running` at once, or,
on the runner's fast path, created only once it has run a moment or ended.
"""

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from contracts.registry import Flow, HttpFlowSettings
from contracts.runs import TERMINAL_STATUSES, Attempt, AttemptOutcome, FlowStart, Run, RunStatus
from services.runner.flows import FlowContext, FlowFunction, FlowRegistry

Clock = Callable[[], datetime]
HttpCaller = Callable[[HttpFlowSettings, Run], Awaitable[Any]]
"""Makes an HTTP flow's request for a running record; returns the result or raises."""

MAX_LOST_ATTEMPTS = 3
"""Attempts a run may lose to takeovers (their runners went silent: died, paused, cut off)
before it is failed: a flow that kills its runner every time must not take the next runner down
forever."""
MAX_RETRY_DELAY = 300.0
"""Cap of the exponential backoff between retries, in seconds."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def queued(start: FlowStart, now: datetime, sequence: int | None = None) -> Run:
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
        overlap=start.overlap,
        start_sequence=sequence,
    )


def begin(record: Run, now: datetime, runner_id: str = "") -> Run:
    """The record of a new attempt starting.

    Starting a run that is still `running` means its start came back: its runner went silent
    for the ack wait (died, paused, or cut off from NATS). That attempt is `superseded` by the
    new one; whether it finished is for its runner to say, if it comes back (`AttemptOutcome`).
    After `MAX_LOST_ATTEMPTS` such attempts the run is failed instead (check the status).
    """
    if record.status == "queued" and not record.attempts:  # the first attempt: most runs
        return _running(record, [Attempt(number=1, runner_id=runner_id, started_at=now)], now)
    attempts = list(record.attempts)
    taken_over: int | None = None
    if record.status == "running":
        if not attempts:  # a record written before attempts were kept
            attempts.append(Attempt(number=record.attempt, started_at=record.started_at or now))
        if attempts[-1].outcome == "running":
            taken_over = len(attempts) - 1
    lost = sum(1 for a in attempts if a.outcome in ("lost", "superseded"))
    number = len(attempts) + 1
    if taken_over is not None:
        lost += 1
        gone = attempts[taken_over]
        silent = (
            f"runner {gone.runner_id or '(unknown)'} went silent for the ack wait (stopped, "
            "paused or cut off from NATS)"
        )
        giving_up = lost >= MAX_LOST_ATTEMPTS
        attempts[taken_over] = msgspec.structs.replace(
            gone,
            outcome="superseded",
            superseded_by=None if giving_up else number,
            error=silent if giving_up else f"{silent}; attempt {number} took over",
        )
    if lost >= MAX_LOST_ATTEMPTS:
        error = (
            f"{lost} attempts were taken over after their runners went silent during them; "
            "giving up"
        )
        return finish(
            msgspec.structs.replace(record, attempts=attempts), "failed", now, error=error
        )
    attempts.append(Attempt(number=number, runner_id=runner_id, started_at=now))
    return _running(record, attempts, now)


def _running(record: Run, attempts: list[Attempt], now: datetime) -> Run:
    """`record` running its last attempt of `attempts`."""
    return msgspec.structs.replace(
        record,
        status="running",
        attempt=attempts[-1].number,
        attempts=attempts,
        started_at=record.started_at or now,
        finished_at=None,
        retry_at=None,
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


async def execute(
    run: Run,
    flow: Flow,
    functions: FlowRegistry,
    clock: Clock,
    *,
    http: HttpCaller | None = None,
) -> Run:
    """Run `flow` once for the running record `run`; return it `succeeded` or `failed`.

    Whatever the flow does, this returns: an exception, an unknown function name or a result
    that is not JSON all become a failed run with an error a person can act on. Only a
    cancellation (timeout, cancel, shutdown) goes through.
    """
    settings = flow.settings
    if isinstance(settings, HttpFlowSettings):
        if http is None:
            return _finish_attempt(run, clock(), error="this runner cannot make HTTP flow calls")
        try:
            result = await http(settings, run)
        except Exception as exception:
            return _finish_attempt(run, clock(), error=describe(exception))
        return _finish_attempt(run, clock(), result=result)
    name = settings.function
    function = functions.get(name)
    if function is None:
        known = ", ".join(functions.names()) or "none"
        error = f"flow function {name!r} is not registered in this runner (known: {known})"
        return _finish_attempt(run, clock(), error=error)
    try:
        result = await _call(function, run.input, context_of(run))
    # A flow calling sys.exit() fails its run; it must not stop the runner.
    except (Exception, SystemExit) as exception:
        return _finish_attempt(run, clock(), error=describe(exception))
    try:
        if result is not None:  # None is JSON already (most flows that return nothing)
            result = msgspec.json.decode(msgspec.json.encode(result))
    except Exception as exception:
        error = f"the result of flow function {name!r} is not JSON: {describe(exception)}"
        return _finish_attempt(run, clock(), error=error)
    return _finish_attempt(run, clock(), result=result)


async def execute_within(
    run: Run,
    flow: Flow,
    functions: FlowRegistry,
    clock: Clock,
    *,
    http: HttpCaller | None = None,
) -> Run:
    """`execute`, stopped after the flow's timeout: then the attempt is `timed_out`.

    A sync function keeps its worker thread until it returns (Python cannot stop a thread);
    its result is ignored.
    """
    try:
        # `asyncio.timeout`, not `wait_for`: no second task per run.
        async with asyncio.timeout(flow.timeout_seconds):
            return await execute(run, flow, functions, clock, http=http)
    except TimeoutError:
        return timed_out(run, flow, clock())


def timed_out(run: Run, flow: Flow, now: datetime) -> Run:
    """The attempt `run` stopped by its flow's timeout at `now` (as `execute` returns one)."""
    error = f"the attempt took longer than the flow's timeout of {flow.timeout_seconds:g}s"
    return msgspec.structs.replace(
        run, status="timed_out", result=None, error=error, finished_at=now
    )


_is_coroutine_function: dict[FlowFunction, bool] = {}
"""`inspect.iscoroutinefunction` of each flow function called so far (a few, and asked on
every run)."""


def _call(function: FlowFunction, input: Any, context: FlowContext) -> Awaitable[Any]:
    """What awaits `function`'s result: its own coroutine, or a worker thread's."""
    try:
        is_async = _is_coroutine_function[function]
    except KeyError:
        is_async = _is_coroutine_function[function] = inspect.iscoroutinefunction(function)
    except TypeError:  # an unhashable callable: asked every time
        is_async = inspect.iscoroutinefunction(function)
    if is_async:
        return function(input, context)  # type: ignore[no-any-return]
    # A plain function may block (I/O, CPU): keep it off the event loop.
    return asyncio.to_thread(function, input, context)


def describe(exception: BaseException) -> str:
    """`ExceptionType: message`, the way a run's error reads."""
    message = str(exception)
    return f"{type(exception).__name__}: {message}" if message else type(exception).__name__


def retry_delay(flow: Flow, retry: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `retry` (1, 2, ...): exponential, capped, with jitter.

    Half the delay is fixed and half is random ("equal jitter"), so retries of many runs that
    failed together spread out without any of them coming back at once.
    """
    delay = min(MAX_RETRY_DELAY, flow.retry_backoff_seconds * 2 ** (retry - 1))
    return delay / 2 + rng() * delay / 2


def conclude(
    finished: Run, flow: Flow, rng: Callable[[], float] = random.random
) -> tuple[Run, float | None]:
    """What an attempt's end makes of the run: final, or queued for a retry after a delay.

    `finished` is `execute_within`'s record (status succeeded, failed or timed_out). Returns
    the record to commit and, for a retry, the seconds to wait before it.
    """
    now = finished.finished_at or finished.started_at or finished.queued_at
    outcome: AttemptOutcome = _outcome(finished.status)
    attempts = list(finished.attempts)
    if attempts:
        attempts[-1] = msgspec.structs.replace(
            attempts[-1], finished_at=now, outcome=outcome, error=finished.error
        )
    if finished.status != "succeeded":  # most runs succeed: no attempts to count
        failures = sum(1 for a in attempts if a.outcome in ("failed", "timed_out"))
        if failures <= flow.retries:
            delay = retry_delay(flow, failures, rng)
            waiting = msgspec.structs.replace(
                finished,
                status="queued",
                result=None,
                attempts=attempts,
                finished_at=None,
                retry_at=now + timedelta(seconds=delay),
            )
            return waiting, delay
    final = _final(finished, finished.status, now, finished.result, finished.error, attempts)
    return final, None


def finish(
    record: Run,
    status: RunStatus,
    now: datetime,
    *,
    result: Any = None,
    error: str | None = None,
) -> Run:
    """The final record of a run with `status` (terminal): no further change is allowed."""
    attempts = list(record.attempts)
    if attempts and attempts[-1].outcome == "running":
        attempts[-1] = msgspec.structs.replace(
            attempts[-1], finished_at=now, outcome=_outcome(status), error=error
        )
    return _final(record, status, now, result, error, attempts)


def _final(
    record: Run,
    status: RunStatus,
    now: datetime,
    result: Any,
    error: str | None,
    attempts: list[Attempt],
) -> Run:
    """`record` ended with `status` at `now`, its attempts told already (`attempts`)."""
    assert status in TERMINAL_STATUSES, status
    began = record.started_at
    return msgspec.structs.replace(
        record,
        status=status,
        result=result,
        error=error,
        attempts=attempts,
        finished_at=now,
        retry_at=None,
        duration_seconds=(now - began).total_seconds() if began is not None else None,
    )


def interrupted(record: Run, now: datetime) -> Run:
    """The record of a running attempt handed back by a runner that shuts down."""
    attempts = list(record.attempts)
    if attempts and attempts[-1].outcome == "running":
        attempts[-1] = msgspec.structs.replace(
            attempts[-1],
            finished_at=now,
            outcome="interrupted",
            error="the runner shut down and handed the run back",
        )
    return msgspec.structs.replace(record, status="queued", attempts=attempts)


def _outcome(status: RunStatus) -> AttemptOutcome:
    if status in ("succeeded", "failed", "timed_out", "cancelled"):
        return status  # type: ignore[return-value]
    return "cancelled"


def _finish_attempt(
    run: Run, now: datetime, *, result: Any = None, error: str | None = None
) -> Run:
    return msgspec.structs.replace(
        run,
        status="failed" if error is not None else "succeeded",
        result=result,
        error=error,
        finished_at=now,
    )
