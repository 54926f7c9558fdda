"""Work retried with capped backoff: `retried` ends once the work succeeds, `supervised` never."""

import asyncio

import pytest

from shared.supervise import retried, supervised


async def test_retried_work_runs_again_after_each_failure_and_stops_once_it_succeeds():
    attempts: list[int] = []

    async def work() -> None:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise ConnectionError("not yet")

    await asyncio.wait_for(retried("work", work, initial_backoff=0.001), 5)
    assert attempts == [0, 1, 2]


async def test_a_supervised_loop_that_ends_is_started_again():
    runs: list[int] = []
    again = asyncio.Event()

    async def loop() -> None:
        runs.append(1)
        if len(runs) == 3:
            again.set()

    task = asyncio.create_task(supervised("loop", loop, initial_backoff=0.001))
    await asyncio.wait_for(again.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(runs) >= 3
