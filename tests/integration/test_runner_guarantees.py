"""The runner's guarantees against a real nats-server: in-progress acks, retries, timeouts,
dead letters, concurrency limits and overlap policies across replicas, cancel, shutdown."""

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts import subjects
from contracts.registry import Flow, OverlapPolicy, PythonFlowSettings, Reply
from contracts.runs import CancelRun, DeadLetter, FlowStart, Run
from services.runner.app import RunnerApp, create_app
from services.runner.flows import FlowContext, FlowRegistry
from services.runner.settings import RunnerSettings
from shared.codec import decode, decoder, encode
from shared.ids import new_id
from tests.integration.test_runner_app import handled, publish

calls: Counter[str] = Counter()
running_now: Counter[str] = Counter()
most_at_once: Counter[str] = Counter()
cancelled: set[str] = set()

functions = FlowRegistry()


@functions.flow("slow")
async def slow(input: Any, context: FlowContext) -> int:
    """Sleep `input` seconds; count calls and how many runs of the flow run at once."""
    calls[context.run_id] += 1
    running_now[context.flow_id] += 1
    most_at_once[context.flow_id] = max(most_at_once[context.flow_id], running_now[context.flow_id])
    try:
        await asyncio.sleep(float(input))
    except asyncio.CancelledError:
        cancelled.add(context.run_id)
        raise
    finally:
        running_now[context.flow_id] -= 1
    return calls[context.run_id]


@functions.flow("flaky")
def flaky(input: Any, context: FlowContext) -> str:
    """Fail until attempt `input`, then succeed."""
    if context.attempt < int(input):
        raise ConnectionError(f"attempt {context.attempt} hit a flaky network")
    return f"worked on attempt {context.attempt}"


@contextlib.asynccontextmanager
async def runner(nats_url: str, **settings: Any) -> AsyncIterator[RunnerApp]:
    app = create_app(RunnerSettings(nats_url=nats_url, **settings), functions=functions)
    try:
        await app.start()
        yield app
    finally:
        await app.stop()


async def put_flow(js: JetStreamContext, function: str, **fields: Any) -> Flow:
    flow = Flow(
        id=new_id("flw"),
        workspace_id=new_id("ws"),
        name=function,
        settings=PythonFlowSettings(function=function),
        created_at=datetime.now(UTC),
        **fields,
    )
    flows = await js.key_value(subjects.FLOWS_BUCKET)
    await flows.put(subjects.record_key(flow.workspace_id, flow.id), encode(flow))
    return flow


def start_of(
    flow: Flow, input: Any = None, trigger_id: str | None = None, overlap: OverlapPolicy = "allow"
) -> FlowStart:
    return FlowStart(
        run_id=new_id("run"),
        workspace_id=flow.workspace_id,
        flow_id=flow.id,
        input=input,
        source="api",
        trigger_id=trigger_id,
        overlap=overlap,
    )


async def run_record(js: JetStreamContext, start: FlowStart) -> Run | None:
    runs = await js.key_value(subjects.RUNS_BUCKET)
    try:
        entry = await runs.get(subjects.run_key(start.workspace_id, start.run_id))
    except Exception:
        return None
    run: Run = decode(entry.value or b"", Run)
    return run


async def until_status(
    js: JetStreamContext, start: FlowStart, status: str, timeout: float = 10
) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run = await run_record(js, start)
        if run is not None and run.status == status:
            return run
        assert time.monotonic() < deadline, f"run never became {status}: {run}"
        await asyncio.sleep(0.02)


async def test_a_flow_longer_than_the_ack_wait_is_kept_in_progress_not_redelivered(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "slow")
    start = start_of(flow, 3.5)  # more than three ack waits
    async with runner(nats_url, runner_ack_wait=1.0):
        sequence = await publish(js, start)
        run = await finished_run_within(js, start, 15)
        await handled(js, sequence)

    assert run.status == "succeeded"
    assert calls[start.run_id] == 1
    assert [a.outcome for a in run.attempts] == ["succeeded"]


async def finished_run_within(js: JetStreamContext, start: FlowStart, timeout: float) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run = await run_record(js, start)
        if run is not None and run.finished_at is not None:
            return run
        assert time.monotonic() < deadline, f"run did not finish in {timeout}s: {run}"
        await asyncio.sleep(0.05)


async def test_a_flaky_flow_is_retried_with_backoff_until_it_succeeds(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "flaky", retries=3, retry_backoff_seconds=0.2)
    start = start_of(flow, 3)
    async with runner(nats_url):
        await publish(js, start)
        run = await finished_run_within(js, start, 10)

    assert run.status == "succeeded"
    assert run.result == "worked on attempt 3"
    assert [a.outcome for a in run.attempts] == ["failed", "failed", "succeeded"]
    assert run.attempts[0].error == "ConnectionError: attempt 1 hit a flaky network"
    assert run.error is None
    assert run.duration_seconds is not None
    assert run.duration_seconds >= 0.3


async def test_a_flow_that_exhausts_its_retries_is_a_failed_run_with_the_last_error(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "flaky", retries=1, retry_backoff_seconds=0.1)
    start = start_of(flow, 5)
    async with runner(nats_url):
        await publish(js, start)
        run = await finished_run_within(js, start, 10)

    assert run.status == "failed"
    assert run.error == "ConnectionError: attempt 2 hit a flaky network"
    assert len(run.attempts) == 2


async def test_an_attempt_longer_than_the_flow_timeout_is_timed_out(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "slow", timeout_seconds=0.3)
    start = start_of(flow, 5)
    async with runner(nats_url):
        await publish(js, start)
        run = await finished_run_within(js, start, 10)

    assert run.status == "timed_out"
    assert run.error == "the attempt took longer than the flow's timeout of 0.3s"
    assert start.run_id in cancelled


async def test_a_poison_message_is_dead_lettered_once_and_never_redelivered(
    nats_url: str, nc: Client, js: JetStreamContext
) -> None:
    letters = await nc.subscribe(subjects.dead_letter(subjects.FLOW_STARTS))
    marker = new_id("poison")
    async with runner(nats_url, runner_ack_wait=0.5):
        sequence = await publish(js, f"poison {marker}".encode())
        await handled(js, sequence)
        await asyncio.sleep(1.5)  # three ack waits: a redelivery would have come by now

    seen = []
    with contextlib.suppress(Exception):
        while True:
            letter: DeadLetter = decode((await letters.next_msg(timeout=0.2)).data, DeadLetter)
            if marker in letter.payload:
                seen.append(letter)
    await letters.unsubscribe()
    assert len(seen) == 1
    assert seen[0].reason.startswith("not a valid FlowStart")


async def test_the_concurrency_limit_of_a_flow_holds_across_runner_replicas(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "slow", concurrency=2)
    starts = [start_of(flow, 0.3) for _ in range(8)]
    async with runner(nats_url), runner(nats_url), runner(nats_url):
        for start in starts:
            await publish(js, start)
        runs = [await finished_run_within(js, start, 20) for start in starts]

    assert {run.status for run in runs} == {"succeeded"}
    assert most_at_once[flow.id] == 2
    slots = await (await js.key_value(subjects.RUN_SLOTS_BUCKET)).get(
        subjects.flow_slots_key(flow.workspace_id, flow.id)
    )
    assert b'"active":[]' in (slots.value or b"")  # every slot was given back


async def test_a_running_run_is_cancelled_and_its_flow_stopped(
    nats_url: str, nc: Client, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "slow")
    start = start_of(flow, 30)
    async with runner(nats_url), runner(nats_url):
        sequence = await publish(js, start)
        await until_status(js, start, "running")
        request = CancelRun(workspace_id=flow.workspace_id, run_id=start.run_id)
        reply = decoder(Reply[Run]).decode(
            (await nc.request(subjects.RUN_CANCEL, encode(request), timeout=5)).data
        )
        assert reply.ok is not None
        assert reply.ok.status == "cancelled"
        await handled(js, sequence)
        again = decoder(Reply[Run]).decode(
            (await nc.request(subjects.RUN_CANCEL, encode(request), timeout=5)).data
        )

    run = await until_status(js, start, "cancelled")
    assert run.error == "cancelled on request"
    assert [a.outcome for a in run.attempts] == ["cancelled"]
    assert start.run_id in cancelled
    assert again.error is not None
    assert again.error.code == "run_finished"


async def test_overlap_skip_records_a_start_during_a_running_run_as_skipped_with_the_reason(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "slow")
    trigger_id = new_id("trg")
    first = start_of(flow, 1, trigger_id, "skip")
    second = start_of(flow, 0, trigger_id, "skip")
    async with runner(nats_url):
        await publish(js, first)
        await until_status(js, first, "running")
        await publish(js, second)
        skipped = await until_status(js, second, "skipped")
        assert (await finished_run_within(js, first, 10)).status == "succeeded"
        third = start_of(flow, 0, trigger_id, "skip")
        await publish(js, third)
        assert (await finished_run_within(js, third, 10)).status == "succeeded"

    assert skipped.error == (
        f"skipped by the overlap policy skip of trigger {trigger_id}: run {first.run_id} was "
        "still going"
    )
    assert calls[second.run_id] == 0


async def test_overlap_buffer_one_queues_one_successor_and_skips_the_rest(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "slow")
    trigger_id = new_id("trg")
    first, second, third = (start_of(flow, 0.8, trigger_id, "buffer_one") for _ in range(3))
    async with runner(nats_url):
        await publish(js, first)
        await until_status(js, first, "running")
        await publish(js, second)
        await asyncio.sleep(0.3)
        await publish(js, third)
        runs = [await finished_run_within(js, start, 15) for start in (first, second, third)]

    assert [run.status for run in runs] == ["succeeded", "succeeded", "skipped"]
    assert runs[1].started_at is not None
    assert runs[0].finished_at is not None
    assert runs[1].started_at >= runs[0].finished_at


async def test_overlap_cancel_previous_cancels_the_running_run_then_starts(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "slow")
    trigger_id = new_id("trg")
    first = start_of(flow, 30, trigger_id, "cancel_previous")
    second = start_of(flow, 0, trigger_id, "cancel_previous")
    async with runner(nats_url):
        await publish(js, first)
        await until_status(js, first, "running")
        await publish(js, second)
        newer = await finished_run_within(js, second, 10)
        older = await until_status(js, first, "cancelled")

    assert newer.status == "succeeded"
    assert older.error == "cancelled by a newer start (overlap cancel_previous)"
    assert first.run_id in cancelled


async def test_a_stopping_runner_hands_its_unfinished_run_back_to_another(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "slow")
    start = start_of(flow, 1.5)
    async with runner(nats_url, runner_stop_grace=0.2):
        await publish(js, start)
        await until_status(js, start, "running")
    handed_back = await run_record(js, start)
    async with runner(nats_url):
        run = await finished_run_within(js, start, 10)

    assert handed_back is not None
    assert handed_back.status == "queued"
    assert [a.outcome for a in run.attempts] == ["interrupted", "succeeded"]
    assert run.status == "succeeded"
