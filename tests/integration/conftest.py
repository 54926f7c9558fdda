"""A watchdog for the integration tests: a test still running after `STUCK_AFTER` seconds
prints the stack of every asyncio task, which pytest-timeout's thread dump cannot show."""

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

STUCK_AFTER = 120.0


@pytest.fixture(autouse=True)
async def stuck_tasks_report() -> AsyncIterator[None]:
    async def report() -> None:
        await asyncio.sleep(STUCK_AFTER)
        print(f"--- still running after {STUCK_AFTER:.0f}s; asyncio tasks:", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)

    watchdog = asyncio.create_task(report())
    yield
    watchdog.cancel()
