"""Runners as processes under load: killed, stopped and added while 1,000 runs are in flight,
and paused (SIGSTOP) past the ack wait while they hold runs."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts import subjects
from contracts.registry import RunnerAnnouncement
from contracts.runs import TERMINAL_STATUSES, FlowStart, Run, RunEvent
from shared.codec import decode, encode
from shared.ids import new_id
from shared.kv import read_prefix
from tests.integration.processes import stop_processes
from tests.integration.test_runner_app import put_flow

ROOT = Path(__file__).resolve().parents[2]
RUNS = 1000
ACK_WAIT = 2.0
"""Short, so the killed runner's runs come back within seconds."""


class Runners:
    """`python -m services.runner` processes against the test NATS server."""

    def __init__(self, nats_url: str, logs: Path) -> None:
        self._env = {
            **os.environ,
            "NATS_URL": nats_url,
            "RUNNER_FLOWS": "tests.flows",
            "RUNNER_ACK_WAIT": str(ACK_WAIT),
            "RUNNER_CONCURRENCY": "32",
            "RUNNER_STOP_GRACE": "0.3",
            "LOG_LEVEL": "INFO",
        }
        self._logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self._logs / f"runner-{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "services.runner"],
            cwd=ROOT,
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self._logs.glob("runner-*.log")))

    def log_of(self, index: int) -> str:
        """The log of the `index`th runner started."""
        return (self._logs / f"runner-{index}.log").read_text()

    def stop_all(self) -> None:
        stop_processes(self.processes)


@pytest.fixture
def runners(nats_url: str, tmp_path: Path) -> Iterator[Runners]:
    group = Runners(nats_url, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


async def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


async def test_every_accepted_start_ends_in_exactly_one_final_run_while_runners_die_and_scale(
    nc: Client, js: JetStreamContext, runners: Runners
) -> None:
    flow = await put_flow(js, "nap")
    finals: dict[str, set[str]] = defaultdict(set)

    async def on_event(msg: Msg) -> None:
        run: Run = decode(msg.data, RunEvent).run
        if run.status in TERMINAL_STATUSES:
            finals[run.id].add(run.status)

    events = await nc.subscribe(subjects.run_events(flow.workspace_id, "*"), cb=on_event)
    # A runner announces its functions once its consumer loop runs: the sign it is taking work.
    consuming: set[str] = set()

    async def on_announcement(msg: Msg) -> None:
        consuming.add(decode(msg.data, RunnerAnnouncement).runner_id)

    announcements = await nc.subscribe(subjects.RUNNER_ANNOUNCE, cb=on_announcement)
    first = runners.start()

    # The ledger: every start JetStream acknowledged, published 100 at a time.
    ledger: list[str] = []
    for _ in range(RUNS // 100):
        starts = [
            FlowStart(
                run_id=new_id("run"),
                workspace_id=flow.workspace_id,
                flow_id=flow.id,
                # Short runs end before their running record is written, long ones after.
                input={"seconds": 0.3 if i % 2 else 0.05},
            )
            for i in range(100)
        ]
        acks = await asyncio.gather(
            *(
                js.publish(
                    subjects.flow_start(s.workspace_id),
                    encode(s),
                    headers={"Nats-Msg-Id": s.run_id},
                )
                for s in starts
            )
        )
        ledger.extend(s.run_id for s, ack in zip(starts, acks, strict=True) if ack.seq)
    assert len(ledger) == RUNS

    # Scale from 1 to 3 under load, kill one with SIGKILL, stop another with SIGTERM.
    second, third = runners.start(), runners.start()
    await wait_until(lambda: len(consuming) >= 3, 60, "three runners to take work")
    await announcements.unsubscribe()
    settled = len(finals)
    assert settled < RUNS - 400, "the first runner alone finished too much to test a kill"
    await wait_until(lambda: len(finals) >= settled + 100, 60, "100 more runs to finish")
    second.send_signal(signal.SIGKILL)
    await wait_until(lambda: len(finals) >= settled + 300, 60, "300 more runs to finish")
    first.send_signal(signal.SIGTERM)
    await wait_until(lambda: len(finals) >= RUNS, 90, f"all runs to finish ({len(finals)} so far)")
    try:
        code = first.wait(timeout=15)
    except subprocess.TimeoutExpired:
        first.send_signal(signal.SIGQUIT)
        raise AssertionError(runners.logs()) from None
    assert code == 0, runners.logs()
    assert third.poll() is None, runners.logs()
    await events.unsubscribe()

    runs = await read_prefix(js, subjects.RUNS_BUCKET, flow.workspace_id, Run)
    assert sorted(r.id for r in runs) == sorted(ledger), "one run record per accepted start"
    assert {r.status for r in runs} == {"succeeded"}
    assert all(finals[run_id] == {"succeeded"} for run_id in ledger), "one final status each"
    # The killed runner's runs in flight were taken over by the others: as new attempts when
    # they were recorded running (the others are run again from scratch).
    taken_over = [r for r in runs if any(a.outcome == "superseded" for a in r.attempts)]
    assert taken_over, "the killed runner had no run in flight"
    assert all(r.attempts[-1].outcome == "succeeded" for r in taken_over)
    assert "Traceback" not in runners.logs()


PAUSED_RUNS = 20
"""Fewer than one runner's concurrency: the paused runner holds every one of them."""


async def test_a_runner_paused_past_the_ack_wait_leaves_one_final_run_and_truthful_attempts(
    nc: Client, js: JetStreamContext, runners: Runners
) -> None:
    flow = await put_flow(js, "nap")
    finals: dict[str, list[str]] = defaultdict(list)
    running: set[str] = set()

    async def on_event(msg: Msg) -> None:
        run: Run = decode(msg.data, RunEvent).run
        if run.status in TERMINAL_STATUSES:
            finals[run.id].append(run.status)
        elif run.status == "running":
            running.add(run.id)

    events = await nc.subscribe(subjects.run_events(flow.workspace_id, "*"), cb=on_event)
    announced: list[str] = []

    async def on_announcement(msg: Msg) -> None:
        runner_id = decode(msg.data, RunnerAnnouncement).runner_id
        if runner_id not in announced:
            announced.append(runner_id)

    announcements = await nc.subscribe(subjects.RUNNER_ANNOUNCE, cb=on_announcement)
    paused = runners.start()
    await wait_until(lambda: len(announced) >= 1, 60, "the first runner to take work")
    ledger = [new_id("run") for _ in range(PAUSED_RUNS)]
    for run_id in ledger:  # flows of 1 s, recorded running after 0.1 s
        start = FlowStart(
            run_id=run_id, workspace_id=flow.workspace_id, flow_id=flow.id, input={"seconds": 1}
        )
        await js.publish(
            subjects.flow_start(start.workspace_id), encode(start), headers={"Nats-Msg-Id": run_id}
        )
    await wait_until(lambda: running >= set(ledger), 20, "every run to be recorded running")

    # Paused mid-flow for longer than the ack wait: its starts go to the other runner.
    paused.send_signal(signal.SIGSTOP)
    try:
        taker = runners.start()
        await wait_until(lambda: len(finals) >= PAUSED_RUNS, 30, "the takeover to finish them")
    finally:
        paused.send_signal(signal.SIGCONT)
    # Woken, the paused runner finishes its flows and finds every run taken over and final.
    await wait_until(
        lambda: all(run_id in runners.log_of(0) for run_id in ledger),
        15,
        "the woken runner to account for each of its runs",
    )
    await asyncio.sleep(0.5)  # time for a wrong final event or record, had there been one
    await announcements.unsubscribe()
    await events.unsubscribe()

    paused_id, taker_id = announced[:2]
    runs = {r.id: r for r in await read_prefix(js, subjects.RUNS_BUCKET, flow.workspace_id, Run)}
    assert sorted(runs) == sorted(ledger), "one run record per accepted start"
    assert all(finals[run_id] == ["succeeded"] for run_id in ledger), "one final status each"
    for run in runs.values():
        told = [(a.number, a.runner_id, a.outcome, a.superseded_by) for a in run.attempts]
        assert run.status == "succeeded", told
        # The paused runner did not die: its attempt names the attempt that took it over, and
        # once the runner is back it says what the attempt did (it finished its flow, or
        # stopped it on finding the start had gone to another runner); the taker's attempt is
        # the one that ended the run.
        assert len(told) == 2, told
        assert told[0][:2] == (1, paused_id), told
        assert told[0][3] == 2, told
        assert told[0][2] in ("succeeded", "cancelled"), told
        assert told[1] == (2, taker_id, "succeeded", None), told
        assert f"{flow.workspace_id}.{run.id}" in runners.log_of(0)
    logs = runners.log_of(0)
    assert "taken over" in logs, logs
    assert "Traceback" not in runners.logs()
    assert paused.poll() is None, runners.logs()
    assert taker.poll() is None, runners.logs()
