"""The runner against a real nats-server: this test plays the registry and the publishers."""

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from contracts import subjects
from contracts.registry import Flow, PythonFlowSettings
from contracts.runs import TERMINAL_STATUSES, DeadLetter, FlowStart, Run, RunEvent
from services.runner import builtin_flows
from services.runner.app import RunnerApp, create_app
from services.runner.executor import begin, queued
from services.runner.flows import FlowContext, FlowRegistry
from services.runner.settings import RunnerSettings
from shared import broker, logs
from shared.codec import decode, encode
from shared.ids import new_id

DEADLINE = 5.0

calls: Counter[str] = Counter()
"""How often the `count` flow ran, per run id."""

functions = FlowRegistry()
functions.flow("echo")(builtin_flows.echo)
functions.flow("fail")(builtin_flows.fail)


@functions.flow("count")
def count(input: Any, context: FlowContext) -> int:
    calls[context.run_id] += 1
    return calls[context.run_id]


stopped: set[str] = set()
"""Run ids whose `nap` flow was cancelled."""


@functions.flow("nap")
async def nap(input: Any, context: FlowContext) -> float:
    """Sleep `input` seconds."""
    try:
        await asyncio.sleep(float(input))
    except asyncio.CancelledError:
        stopped.add(context.run_id)
        raise
    return float(input)


@functions.flow("log_ids")
async def log_ids(input: Any, context: FlowContext) -> dict[str, str]:
    """Sleep `input` seconds (if any); return the ids its log lines carry."""
    if input:
        await asyncio.sleep(float(input))
    return dict(logs.bound_ids.get() or {})


@contextlib.asynccontextmanager
async def started_runner(nats_url: str, concurrency: int = 4) -> AsyncIterator[RunnerApp]:
    app = create_app(
        RunnerSettings(nats_url=nats_url, runner_concurrency=concurrency), functions=functions
    )
    try:
        await app.start()
        yield app
    finally:
        await app.stop()


@pytest.fixture
async def runner(nats_url: str, nc: Client) -> AsyncIterator[RunnerApp]:
    async with started_runner(nats_url) as app:
        yield app


async def put_flow(js: JetStreamContext, function: str, workspace_id: str | None = None) -> Flow:
    """Write a flow into the flows bucket, the way the registry does."""
    flow = Flow(
        id=new_id("flow"),
        workspace_id=workspace_id or new_id("ws"),
        name=f"a {function} flow",
        settings=PythonFlowSettings(function=function),
        created_at=datetime.now(UTC),
    )
    flows = await js.key_value(subjects.FLOWS_BUCKET)
    await flows.put(subjects.record_key(flow.workspace_id, flow.id), encode(flow))
    return flow


def start_of(flow: Flow, input: Any = None, run_id: str | None = None) -> FlowStart:
    return FlowStart(
        run_id=run_id or new_id("run"),
        workspace_id=flow.workspace_id,
        flow_id=flow.id,
        input=input,
        source="api",
    )


async def publish(
    js: JetStreamContext,
    body: FlowStart | bytes,
    msg_id: str | None = None,
    subject: str | None = None,
) -> int:
    """Publish a start (or any body) on its workspace's `flow.v1.start.<ws>` (or `subject`);
    return its stream sequence."""
    if isinstance(body, FlowStart):
        msg_id = msg_id or body.run_id
        subject = subject or subjects.flow_start(body.workspace_id)
        body = encode(body)
    ack = await js.publish(
        subject or subjects.flow_start("ws_unknown"),
        body,
        headers={"Nats-Msg-Id": msg_id or new_id("msg")},
    )
    return ack.seq


async def finished_run(js: JetStreamContext, workspace_id: str, run_id: str) -> Run:
    """Poll the runs bucket until the run is finished."""
    runs = await js.key_value(subjects.RUNS_BUCKET)
    key = subjects.run_key(workspace_id, run_id)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            run: Run = decode((await runs.get(key)).value or b"", Run)
        except KeyNotFoundError:
            pass
        else:
            if run.status in TERMINAL_STATUSES:
                return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {key} did not finish within {DEADLINE}s")


async def handled(js: JetStreamContext, *sequences: int) -> None:
    """Poll until the work-queue stream no longer holds these messages (they were acked)."""
    deadline = time.monotonic() + DEADLINE
    for sequence in sequences:
        while True:
            try:
                await js.get_msg(subjects.FLOW_STARTS_STREAM, sequence)
            except NotFoundError:
                break
            assert time.monotonic() < deadline, f"message {sequence} was never acknowledged"
            await asyncio.sleep(0.02)


async def dead_letter_with(subscription: Subscription, marker: str) -> DeadLetter:
    """The next dead letter whose original body contains `marker` (others may pass by)."""
    deadline = time.monotonic() + DEADLINE
    while (left := deadline - time.monotonic()) > 0:
        letter: DeadLetter = decode((await subscription.next_msg(timeout=left)).data, DeadLetter)
        if marker in letter.payload:
            return letter
    raise AssertionError(f"no dead letter for {marker} within {DEADLINE}s")


async def test_a_started_flow_runs_and_its_record_holds_the_result(
    js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "echo")
    start = start_of(flow, {"hello": ["world", 1]})

    await publish(js, start)

    run = await finished_run(js, flow.workspace_id, start.run_id)
    assert run.status == "succeeded"
    assert run.result == {"hello": ["world", 1]}
    assert run.attempt == 1
    assert run.queued_at <= (run.started_at or run.queued_at) <= (run.finished_at or run.queued_at)


async def test_a_run_started_as_another_ends_logs_with_its_own_ids_only(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "log_ids")
    first = msgspec.structs.replace(start_of(flow, 0.3), trigger_id=new_id("trg"))
    second = start_of(flow)  # no trigger
    await publish(js, first)
    await publish(js, second)
    # One pull brings both; of two slots, the second is kept for other workspaces: `second`
    # waits, and starts as `first` ends.
    async with started_runner(nats_url, concurrency=2):
        ended = await finished_run(js, flow.workspace_id, first.run_id)
        waited = await finished_run(js, flow.workspace_id, second.run_id)
    assert ended.result == {
        "run_id": first.run_id,
        "workspace_id": flow.workspace_id,
        "trigger_id": first.trigger_id,
    }
    assert waited.started_at is not None
    assert ended.finished_at is not None
    assert waited.started_at >= ended.finished_at
    assert waited.result == {"run_id": second.run_id, "workspace_id": flow.workspace_id}


async def statuses_of(events: Subscription) -> tuple[list[str], Run]:
    """The statuses a run's events went through, up to its final one, and its final record."""
    statuses = []
    while not statuses or statuses[-1] not in TERMINAL_STATUSES:
        event: RunEvent = decode((await events.next_msg(timeout=DEADLINE)).data, RunEvent)
        statuses.append(event.run.status)
    await events.unsubscribe()
    return statuses, event.run


async def echo_started(nc: Client, js: JetStreamContext) -> tuple[FlowStart, Subscription]:
    """A start of an `echo` flow published, and a subscription to its run's events made first."""
    flow = await put_flow(js, "echo")
    start = start_of(flow, "hi")
    events = await nc.subscribe(subjects.run_events(flow.workspace_id, start.run_id))
    await publish(js, start)
    return start, events


async def test_a_fresh_run_that_needs_no_admission_and_ends_at_once_gets_one_write_its_final(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    _, events = await echo_started(nc, js)

    statuses, final = await statuses_of(events)
    assert statuses == ["succeeded"]
    assert final.result == "hi"
    assert final.queued_at == final.started_at
    assert [a.outcome for a in final.attempts] == ["succeeded"]


async def test_a_run_event_carries_the_id_its_stream_drops_a_repeated_publish_by(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    start, events = await echo_started(nc, js)

    event = await events.next_msg(timeout=DEADLINE)
    await events.unsubscribe()
    # One id per run, status and attempt: `RUN_EVENTS` stores a retried publish of it once.
    assert event.headers == {"Nats-Msg-Id": f"{start.run_id}.succeeded.1.1"}
    assert event.subject == subjects.run_event(start.workspace_id, start.run_id, "succeeded")


async def test_a_fresh_run_still_going_after_a_moment_is_recorded_running_then_final(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "nap")
    start = start_of(flow, 0.4)
    events = await nc.subscribe(subjects.run_events(flow.workspace_id, start.run_id))

    await publish(js, start)

    statuses, final = await statuses_of(events)
    assert statuses == ["running", "succeeded"]
    assert final.result == 0.4
    assert final.queued_at == final.started_at


async def test_a_fresh_start_of_a_run_recorded_meanwhile_drops_its_result_unpublished(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    # Another start of the run (published with another Nats-Msg-Id) got its record in first.
    flow = await put_flow(js, "echo")
    start = start_of(flow, "mine")
    now = datetime.now(UTC)
    theirs = msgspec.structs.replace(
        begin(queued(start, now, 1), now), status="succeeded", result="theirs"
    )
    runs = await js.key_value(subjects.RUNS_BUCKET)
    key = subjects.run_key(flow.workspace_id, start.run_id)
    await runs.create(key, encode(theirs))
    events = await nc.subscribe(subjects.run_events(flow.workspace_id, start.run_id))

    sequence = await publish(js, start)

    await handled(js, sequence)
    assert decode((await runs.get(key)).value or b"", Run) == theirs
    with pytest.raises(Exception, match="timeout"):
        await events.next_msg(timeout=0.2)
    await events.unsubscribe()


async def test_a_fresh_start_that_finds_another_start_s_record_stops_its_flow(
    js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "nap")
    start = start_of(flow, 30)
    now = datetime.now(UTC)
    theirs = begin(queued(start, now, 1), now, "another-runner")
    runs = await js.key_value(subjects.RUNS_BUCKET)
    key = subjects.run_key(flow.workspace_id, start.run_id)
    await runs.create(key, encode(theirs))

    sequence = await publish(js, start)

    await handled(js, sequence)
    assert start.run_id in stopped
    assert decode((await runs.get(key)).value or b"", Run) == theirs


async def test_a_run_that_waits_for_admission_is_queued_first(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "echo")
    start = msgspec.structs.replace(start_of(flow, "hi"), trigger_id=new_id("trg"), overlap="skip")
    events = await nc.subscribe(subjects.run_events(flow.workspace_id, start.run_id))

    await publish(js, start)

    statuses, final = await statuses_of(events)
    assert statuses == ["queued", "running", "succeeded"]
    assert final.result == "hi"


async def test_a_failing_flow_is_recorded_as_failed_with_its_error(
    js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "fail")
    start = start_of(flow, {"message": "the cheese ran out"})

    await publish(js, start)

    run = await finished_run(js, flow.workspace_id, start.run_id)
    assert run.status == "failed"
    assert run.error == "RuntimeError: the cheese ran out"


async def test_a_malformed_message_is_dead_lettered_and_the_next_one_still_runs(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    letters = await nc.subscribe(subjects.dead_letter(subjects.FLOW_STARTS))
    marker = new_id("marker")
    flow = await put_flow(js, "echo")

    await publish(js, f'{{"run_id": "{marker}", "workspace_id": 7}}'.encode())
    await publish(js, f"not json {marker}".encode())
    start = start_of(flow, "still here")
    await publish(js, start)

    wrong_type = await dead_letter_with(letters, f'"run_id": "{marker}"')
    assert wrong_type.reason == (
        "not a valid FlowStart: Expected `str`, got `int` - at `$.workspace_id`"
    )
    assert wrong_type.service == "runner"
    not_json = await dead_letter_with(letters, f"not json {marker}")
    assert not_json.reason.startswith("not a valid FlowStart: JSON is malformed")
    assert (await finished_run(js, flow.workspace_id, start.run_id)).result == "still here"
    await letters.unsubscribe()


async def test_a_message_for_an_unknown_flow_is_dead_lettered_with_its_reason(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    letters = await nc.subscribe(subjects.dead_letter(subjects.FLOW_STARTS))
    workspace_id, flow_id, run_id = new_id("ws"), new_id("flow"), new_id("run")
    start = FlowStart(run_id=run_id, workspace_id=workspace_id, flow_id=flow_id)

    await publish(js, start)

    letter = await dead_letter_with(letters, run_id)
    assert letter.reason == f"unknown flow {flow_id} in workspace {workspace_id}"
    assert letter.subject == subjects.flow_start(workspace_id)
    assert letter.headers["Nats-Msg-Id"] == run_id
    await letters.unsubscribe()


async def test_a_flow_of_another_workspace_is_unknown(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    letters = await nc.subscribe(subjects.dead_letter(subjects.FLOW_STARTS))
    flow = await put_flow(js, "count")
    other_workspace = new_id("ws")
    start = FlowStart(run_id=new_id("run"), workspace_id=other_workspace, flow_id=flow.id)

    sequence = await publish(js, start)

    letter = await dead_letter_with(letters, start.run_id)
    assert letter.reason == f"unknown flow {flow.id} in workspace {other_workspace}"
    await handled(js, sequence)
    assert calls[start.run_id] == 0
    await letters.unsubscribe()


async def test_a_start_published_to_another_workspace_s_subject_is_dead_lettered_unrun(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    letters = await nc.subscribe(subjects.dead_letter(subjects.FLOW_STARTS))
    flow = await put_flow(js, "count")
    start = start_of(flow)
    intruder = new_id("ws")

    sequence = await publish(js, start, subject=subjects.flow_start(intruder))

    letter = await dead_letter_with(letters, start.run_id)
    assert letter.subject == subjects.flow_start(intruder)
    assert letter.reason == (
        f"the start is for workspace {flow.workspace_id!r} but was published to "
        f"{subjects.flow_start(intruder)!r}; publish it to "
        f"{subjects.flow_start(flow.workspace_id)!r}"
    )
    await handled(js, sequence)
    assert calls[start.run_id] == 0
    await letters.unsubscribe()


async def test_a_start_on_the_deprecated_unversioned_subject_still_runs(
    js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "echo")
    start = start_of(flow, "from an old publisher")

    await publish(js, start, subject=subjects.FLOW_START_UNVERSIONED)

    assert (await finished_run(js, flow.workspace_id, start.run_id)).result == (
        "from an old publisher"
    )


async def test_the_topology_brings_the_unversioned_streams_of_an_older_version_up_to_date(
    js: JetStreamContext,
) -> None:
    # As an earlier version left them: one unversioned subject each.
    (starts, events) = (
        next(c for c in broker.stream_configs() if c.name == name)
        for name in (subjects.FLOW_STARTS_STREAM, subjects.RUN_EVENTS_STREAM)
    )
    await js.update_stream(starts.evolve(subjects=["flow.start"]))
    await js.update_stream(events.evolve(subjects=["run.event.>"]))

    await broker.ensure_topology(js)

    info = await js.stream_info(subjects.FLOW_STARTS_STREAM)
    assert info.config.subjects == ["flow.v1.start.*", "flow.start"]
    info = await js.stream_info(subjects.RUN_EVENTS_STREAM)
    assert info.config.subjects == ["run.v1.event.>"]


async def test_the_same_start_published_twice_at_once_runs_once(
    js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "count")
    start = start_of(flow)

    first = await publish(js, start, msg_id=new_id("msg"))
    second = await publish(js, start, msg_id=new_id("msg"))

    await handled(js, first, second)
    run = await finished_run(js, flow.workspace_id, start.run_id)
    assert run.status == "succeeded"
    assert calls[start.run_id] == 1


async def test_a_start_of_a_finished_run_is_acknowledged_without_running_again(
    js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "count")
    start = start_of(flow)
    await publish(js, start, msg_id=new_id("msg"))
    await finished_run(js, flow.workspace_id, start.run_id)

    again = await publish(js, start, msg_id=new_id("msg"))

    await handled(js, again)
    assert calls[start.run_id] == 1
    assert (await finished_run(js, flow.workspace_id, start.run_id)).result == 1


async def test_a_run_left_running_by_a_runner_that_died_is_started_again_as_a_new_attempt(
    nats_url: str, js: JetStreamContext
) -> None:
    flow = await put_flow(js, "count")
    start = start_of(flow)
    await publish(js, start)
    # Play a runner that took the message, recorded the run as running, then died.
    dying = await js.pull_subscribe(
        subjects.FLOW_STARTS, durable=subjects.RUNNER_CONSUMER, stream=subjects.FLOW_STARTS_STREAM
    )
    while True:
        (msg,) = await dying.fetch(1, timeout=DEADLINE)
        if decode(msg.data, FlowStart) == start:
            break
        await msg.nak()  # someone else's start: leave it to the runner
    runs = await js.key_value(subjects.RUNS_BUCKET)
    now = datetime.now(UTC)
    await runs.create(
        subjects.run_key(flow.workspace_id, start.run_id), encode(begin(queued(start, now), now))
    )
    await msg.nak()  # what its ack wait running out would do, without the wait
    await dying.unsubscribe()

    async with started_runner(nats_url):
        run = await finished_run(js, flow.workspace_id, start.run_id)

    assert run.status == "succeeded"
    assert run.attempt == 2
    assert calls[start.run_id] == 1


async def test_a_start_of_300_kb_of_nul_bytes_is_dead_lettered_not_handed_back_forever(
    nc: Client, js: JetStreamContext, runner: RunnerApp
) -> None:
    letters = await nc.subscribe(subjects.dead_letter(subjects.FLOW_STARTS))
    marker = new_id("marker")

    sequence = await publish(js, marker.encode() + b"\x00" * 300_000)

    letter = await dead_letter_with(letters, marker)
    assert letter.reason.startswith("not a valid FlowStart")
    assert letter.truncated
    assert letter.payload_bytes == len(marker) + 300_000
    await handled(js, sequence)
    await letters.unsubscribe()


async def test_a_result_too_large_to_record_fails_the_run_once_without_running_it_again(
    js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "echo")
    start = start_of(flow, "x" * 600_000)

    sequence = await publish(js, start)

    run = await finished_run(js, flow.workspace_id, start.run_id)
    assert (run.status, run.result) == ("failed", None)
    assert run.error is not None
    assert "too large to record" in run.error
    assert len(run.attempts) == 1
    await handled(js, sequence)


async def test_a_start_too_large_to_record_fails_its_run_without_running_it(
    js: JetStreamContext, runner: RunnerApp
) -> None:
    flow = await put_flow(js, "count")
    start = start_of(flow, "x" * 1_030_000)

    await publish(js, start)

    run = await finished_run(js, flow.workspace_id, start.run_id)
    assert (run.status, run.input) == ("failed", None)
    assert run.error is not None
    assert "too large to record" in run.error
    assert run.attempts == []
