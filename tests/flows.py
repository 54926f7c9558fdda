"""Flow functions for tests that start runners as processes (`RUNNER_FLOWS=tests.flows`)."""

import asyncio
from typing import Any

from services.runner.flows import FlowContext, flow


@flow("nap")
async def nap(input: Any, context: FlowContext) -> dict[str, Any]:
    """Sleep `{"seconds": s}`, then return the run id and attempt."""
    await asyncio.sleep(float((input or {}).get("seconds", 0)))
    return {"run_id": context.run_id, "attempt": context.attempt}
