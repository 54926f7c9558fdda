"""The drills' flow (`RUNNER_FLOWS=tests.faults.flows`): it notes every execution it begins.

One line per execution, `<run id> <attempt> <pid>`, appended to the file `FAULT_EXECUTIONS`
names (an `O_APPEND` write of one short line is atomic), so a drill can hold every run record
against what really ran.
"""

import asyncio
import os
from typing import Any

from services.runner.flows import FlowContext, flow


@flow("tally")
async def tally(input: Any, context: FlowContext) -> dict[str, Any]:
    """Note this execution, then sleep `{"seconds": s}`."""
    path = os.environ.get("FAULT_EXECUTIONS")
    if path:
        line = f"{context.run_id} {context.attempt} {os.getpid()}\n".encode()
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)
    await asyncio.sleep(float((input or {}).get("seconds", 0)))
    return {"attempt": context.attempt}
