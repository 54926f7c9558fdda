"""Fault drills on one NATS server: runners and schedulers killed (SIGKILL) and paused
(SIGSTOP), and the NATS server restarted (SIGTERM, SIGKILL), each under load and each checked
against the drill's own ledger (see tests/faults/drill.py and ledger.py)."""

import asyncio
import signal
import time

import pytest

from tests.faults.conftest import DrillStack
from tests.faults.drill import FaultDone, Workload
from tests.faults.stack import Stack

pytestmark = pytest.mark.faults

API_LOAD = Workload(api_rate=100, triggers=20)
SCHEDULES = Workload(api_rate=20, triggers=200)
RUNNER_PAUSE = 6.0
"""Twice the runners' ack wait: its runs in flight are handed to the other runner."""
SCHEDULER_PAUSE = 8.0
"""Past the tick ack wait and the misfire threshold: the other replica takes its ticks over,
and the paused one wakes with ticks and timers decided before the pause."""


def kill(name: str):
    async def fault(stack: Stack) -> FaultDone:
        service = stack.service(name)
        service.send(signal.SIGKILL)
        return FaultDone(ended_at=time.time(), killed=[service])

    return fault


def pause(name: str, seconds: float):
    async def fault(stack: Stack) -> FaultDone:
        service = stack.service(name)
        service.send(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            service.send(signal.SIGCONT)
        return FaultDone(ended_at=time.time())

    return fault


def restart_nats(signum: int):
    async def fault(stack: Stack) -> FaultDone:
        node = stack.nats.nodes[0]
        began = time.monotonic()
        await asyncio.to_thread(node.stop, signum)
        await asyncio.to_thread(node.start)
        return FaultDone(ended_at=time.time(), note=f"NATS down {time.monotonic() - began:.1f}s")

    return fault


async def test_a_runner_killed_under_api_load(single_node: DrillStack) -> None:
    await single_node.drill("runner SIGKILL", API_LOAD, kill("runner-1"))


async def test_a_runner_paused_under_api_load(single_node: DrillStack) -> None:
    await single_node.drill("runner SIGSTOP", API_LOAD, pause("runner-1", RUNNER_PAUSE))


async def test_a_scheduler_killed_with_200_per_second_schedules(single_node: DrillStack) -> None:
    await single_node.drill("scheduler SIGKILL", SCHEDULES, kill("scheduler-1"))


async def test_a_scheduler_paused_with_200_per_second_schedules(single_node: DrillStack) -> None:
    await single_node.drill("scheduler SIGSTOP", SCHEDULES, pause("scheduler-1", SCHEDULER_PAUSE))


async def test_the_nats_server_restarted_with_sigterm_under_load(single_node: DrillStack) -> None:
    await single_node.drill("NATS restart (SIGTERM)", API_LOAD, restart_nats(signal.SIGTERM))


async def test_the_nats_server_restarted_after_sigkill_under_load(
    single_node: DrillStack,
) -> None:
    await single_node.drill("NATS restart (SIGKILL)", API_LOAD, restart_nats(signal.SIGKILL))
