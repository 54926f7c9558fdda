"""A start dead-lettered at its last delivery ends its run: against a real nats-server of the
test's own (the runner's consumer is made with a tiny `RUNNER_MAX_DELIVER` there)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from contracts import subjects
from contracts.runs import DeadLetter, Run, RunEvent
from services.runner.app import RunnerApp, create_app
from services.runner.settings import RunnerSettings
from shared.codec import decode
from tests.integration.conftest import RestartableServer
from tests.integration.test_runner_app import (
    finished_run,
    functions,
    handled,
    publish,
    put_flow,
    start_of,
)

MAX_DELIVER = 3


@pytest.fixture
async def runner(own_server: RestartableServer, own_client: Client) -> AsyncIterator[RunnerApp]:
    settings = RunnerSettings(
        nats_url=own_server.url, runner_max_deliver=MAX_DELIVER, runner_stop_grace=0.01
    )
    app = create_app(settings, functions=functions)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def running(js: JetStreamContext, workspace_id: str, run_id: str) -> None:
    """Poll until the run's record says `running`."""
    runs = await js.key_value(subjects.RUNS_BUCKET)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyNotFoundError):
            entry = await runs.get(subjects.run_key(workspace_id, run_id))
            if decode(entry.value or b"", Run).status == "running":
                return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} was not running within 5s")


async def test_a_queued_start_dead_lettered_at_its_last_delivery_ends_its_run_failed(
    own_client: Client, runner: RunnerApp
) -> None:
    js = own_client.jetstream()
    flow = msgspec.structs.replace(await put_flow(js, "nap"), concurrency=1)
    flows = await js.key_value(subjects.FLOWS_BUCKET)
    await flows.put(subjects.record_key(flow.workspace_id, flow.id), msgspec.json.encode(flow))
    holder, waiter = start_of(flow, 5), start_of(flow, 0)
    letters = await own_client.subscribe(subjects.dead_letter(subjects.FLOW_STARTS))
    events = await own_client.subscribe(subjects.run_events(flow.workspace_id, waiter.run_id))
    await publish(js, holder)
    await running(js, flow.workspace_id, holder.run_id)  # it holds the flow's one slot

    sequence = await publish(js, waiter)

    # Handed back every ~0.3 s while the slot is taken, until its last delivery.
    run = await finished_run(js, flow.workspace_id, waiter.run_id)
    assert run.status == "failed"
    assert run.error == (
        f"delivered {MAX_DELIVER} times without ending (the consumer's limit, RUNNER_MAX_DELIVER)"
    )
    assert run.attempts == []  # it never ran
    letter: DeadLetter = decode((await letters.next_msg(timeout=5)).data, DeadLetter)
    assert waiter.run_id in letter.payload
    assert letter.reason == run.error
    published = [decode((await events.next_msg(timeout=5)).data, RunEvent).run for _ in range(2)]
    assert [event.status for event in published if event is not None] == ["queued", "failed"]
    await handled(js, sequence)
