"""Fault drills on a 3-node NATS cluster (`NATS_REPLICAS=3`, every node in `NATS_URL`): the
node the services are connected to, then the leader of `FLOW_STARTS`, killed with SIGKILL
under load and left down while the drill goes on."""

import signal
import time

import pytest

from tests.faults.conftest import DrillStack
from tests.faults.drill import FaultDone, Workload
from tests.faults.stack import Stack

pytestmark = pytest.mark.faults

LOAD = Workload(api_rate=60, triggers=20)


async def kill_most_connected(stack: Stack) -> FaultDone:
    node = stack.nats.most_connected()
    node.stop(signal.SIGKILL)
    return FaultDone(ended_at=time.time(), note=f"killed {node.name} (most service connections)")


async def kill_start_stream_leader(stack: Stack) -> FaultDone:
    node = await stack.nats.stream_leader("FLOW_STARTS")
    node.stop(signal.SIGKILL)
    return FaultDone(ended_at=time.time(), note=f"killed {node.name} (FLOW_STARTS leader)")


async def test_the_node_the_services_use_killed_under_load(cluster: DrillStack) -> None:
    await cluster.drill("cluster: services' node SIGKILL", LOAD, kill_most_connected)


async def test_the_start_stream_leader_killed_under_load(cluster: DrillStack) -> None:
    await cluster.drill("cluster: FLOW_STARTS leader SIGKILL", LOAD, kill_start_stream_leader)
