"""Fair share between workspaces, against a real nats-server and a real runner: one workspace's
long runs never make another's short one wait behind them, and a per-workspace cap holds."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from contracts import subjects
from contracts.registry import Flow
from contracts.runs import TERMINAL_STATUSES, Run
from services.runner import builtin_flows
from services.runner.app import RunnerApp, create_app
from services.runner.flows import FlowContext, FlowRegistry
from services.runner.settings import RunnerSettings
from shared.codec import decode
from tests.integration.conftest import RestartableServer
from tests.integration.test_runner_app import publish, put_flow, start_of

NAP = 3.0
"""Seconds one of the busy workspace's runs takes: long next to an echo, short for a test."""

functions = FlowRegistry()
functions.flow("echo")(builtin_flows.echo)

going: dict[str, int] = {}
"""Runs of the `nap` flow going right now, by workspace."""
most_going: dict[str, int] = {}
"""The most runs of the `nap` flow that went at once, by workspace."""


@functions.flow("nap")
async def nap(input: Any, context: FlowContext) -> float:
    """Sleep `input` seconds, counting the runs of the workspace going meanwhile."""
    workspace_id = context.workspace_id
    going[workspace_id] = going.get(workspace_id, 0) + 1
    most_going[workspace_id] = max(most_going.get(workspace_id, 0), going[workspace_id])
    try:
        await asyncio.sleep(float(input))
    finally:
        going[workspace_id] -= 1
    return float(input)


@contextlib.asynccontextmanager
async def started_runner(url: str, **settings: Any) -> AsyncIterator[RunnerApp]:
    app = create_app(
        RunnerSettings(nats_url=url, runner_stop_grace=0.1, **settings), functions=functions
    )
    try:
        await app.start()
        yield app
    finally:
        await app.stop()


async def eventually(check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


async def final_run(js: JetStreamContext, workspace_id: str, run_id: str, within: float) -> Run:
    runs = await js.key_value(subjects.RUNS_BUCKET)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            entry = await runs.get(subjects.run_key(workspace_id, run_id))
            run: Run = decode(entry.value or b"", Run)
            if run.status in TERMINAL_STATUSES:
                return run
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} did not end within {within}s")


async def echo_latency(js: JetStreamContext, flow: Flow) -> float:
    """Seconds from publishing a start of the echo flow `flow` to its final record."""
    start = start_of(flow, input={"hello": "b"})
    began = time.monotonic()
    await publish(js, start)
    run = await final_run(js, flow.workspace_id, start.run_id, within=3 * NAP)
    assert run.status == "succeeded"
    return time.monotonic() - began


async def test_a_busy_workspace_never_makes_another_wait_behind_its_queue(
    own_server: RestartableServer, own_client: Client
) -> None:
    js = own_client.jetstream()
    async with started_runner(own_server.url, runner_concurrency=4):
        busy = await put_flow(js, "nap")
        quiet = await put_flow(js, "echo")
        idle = await echo_latency(js, quiet)
        # The busy workspace queues three times the replica's slots of long runs...
        for _ in range(12):
            await publish(js, start_of(busy, input=NAP))
        # ...and uses the idle capacity: all but the slot kept for other workspaces.
        await eventually(lambda: going.get(busy.workspace_id) == 3, NAP)
        # The quiet workspace's echo, behind those twelve in the stream, runs at once.
        loaded = await echo_latency(js, quiet)
        assert going[busy.workspace_id] == 3  # the busy workspace's runs are still going
        assert loaded < max(1.0, 10 * idle), (idle, loaded)
        # A second echo goes just as fast: the kept slot serves the quiet workspace again.
        assert await echo_latency(js, quiet) < max(1.0, 10 * idle)


async def test_a_workspace_alone_uses_every_slot_when_no_slot_is_kept(
    own_server: RestartableServer, own_client: Client
) -> None:
    js = own_client.jetstream()
    async with started_runner(own_server.url, runner_concurrency=3, runner_reserved_slots=0):
        busy = await put_flow(js, "nap")
        starts = [start_of(busy, input=0.5) for _ in range(6)]
        for start in starts:
            await publish(js, start)
        for start in starts:
            await final_run(js, busy.workspace_id, start.run_id, within=5.0)
        assert most_going[busy.workspace_id] == 3


async def test_a_workspace_cap_holds_across_replicas_and_every_run_still_ends(
    own_server: RestartableServer, own_client: Client
) -> None:
    js = own_client.jetstream()
    capped = {"runner_concurrency": 4, "runner_workspace_concurrency": 2}
    async with started_runner(own_server.url, **capped), started_runner(own_server.url, **capped):
        busy = await put_flow(js, "nap")
        other = await put_flow(js, "nap")
        starts = [start_of(busy, input=0.5) for _ in range(6)]
        others = [start_of(other, input=0.5) for _ in range(2)]
        for start in [*starts, *others]:
            await publish(js, start)
        for start in [*starts, *others]:
            run = await final_run(js, start.workspace_id, start.run_id, within=10.0)
            assert run.status == "succeeded"
        # Two replicas with four slots each, but never more than two runs of one workspace.
        assert most_going[busy.workspace_id] == 2
        assert most_going[other.workspace_id] == 2
