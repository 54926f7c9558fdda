"""Flow functions for the benchmarks (`RUNNER_FLOWS=bench.flows`)."""

import time
from typing import Any

from services.runner.flows import FlowContext, flow


@flow("noop")
async def noop(input: Any, context: FlowContext) -> None:
    """Do nothing: what is measured is the runner around it."""


@flow("first_line")
async def first_line(input: Any, context: FlowContext) -> float:
    """Return the wall-clock time of its first line (for trigger-to-flow latency)."""
    return time.time()
