"""The ingress's synchronous wait against a real runner: run events are best effort, so the
wait must answer from the run record when an event never comes."""

import asyncio

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts import subjects
from contracts.runs import TERMINAL_STATUSES, FlowStart, Run
from services.ingress.adapters import Ingress
from services.ingress.settings import IngressSettings
from services.runner.adapters import NatsRunEvents
from tests.integration.test_runner_app import put_flow, start_of, started_runner


@pytest.fixture
def final_events_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runners publish every run event except the final ones (as if the runner crashed
    right after committing the final record)."""
    publish = NatsRunEvents.publish

    def publish_unless_final(self: NatsRunEvents, run: Run, value: bytes | None = None) -> None:
        if run.status not in TERMINAL_STATUSES:
            publish(self, run, value)

    monkeypatch.setattr(NatsRunEvents, "publish", publish_unless_final)


async def ingress_of(nats_url: str, nc: Client, js: JetStreamContext) -> Ingress:
    runs = await js.key_value(subjects.RUNS_BUCKET)
    return Ingress(IngressSettings(nats_url=nats_url), nc, None, runs)  # type: ignore[arg-type]


async def recorded(ingress: Ingress, start: FlowStart, statuses: set[str]) -> None:
    """Wait until the run's record has one of `statuses` (the shared session server may hold
    other tests' starts, which the runner drains first)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        run = await ingress.find_run(start.workspace_id, start.run_id)
        if run is not None and run.status in statuses:
            return
        assert asyncio.get_running_loop().time() < deadline, f"run never reached {statuses}"
        await asyncio.sleep(0.02)


async def test_a_run_whose_final_event_is_lost_is_answered_from_its_record(
    nats_url: str, nc: Client, js: JetStreamContext, final_events_lost: None
) -> None:
    ingress = await ingress_of(nats_url, nc, js)
    flow = await put_flow(js, "echo")
    start = start_of(flow, {"answer": 42})
    async with started_runner(nats_url):
        events = await ingress.follow(flow.workspace_id, start.run_id)
        await ingress.start(start)
        await recorded(ingress, start, {"succeeded"})
        run = await ingress.wait_for_end(events, flow.workspace_id, start.run_id, 0.5)
        await events.unsubscribe()

    assert run is not None
    assert run.status == "succeeded"  # answered 200 with the result
    assert run.result == {"answer": 42}


async def test_a_run_still_going_when_the_wait_ends_is_answered_with_its_recorded_status(
    nats_url: str, nc: Client, js: JetStreamContext, final_events_lost: None
) -> None:
    ingress = await ingress_of(nats_url, nc, js)
    flow = await put_flow(js, "nap")
    start = start_of(flow, 3.0)
    async with started_runner(nats_url):
        events = await ingress.follow(flow.workspace_id, start.run_id)
        await ingress.start(start)
        await recorded(ingress, start, {"running"})
        run = await ingress.wait_for_end(events, flow.workspace_id, start.run_id, 0.4)
        await events.unsubscribe()

    assert run is not None
    assert run.status == "running"  # answered 202, status running
