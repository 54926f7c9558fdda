"""Work retried with capped backoff: `retried` ends once the work succeeds, `supervised` never."""

import asyncio

import pytest

from shared.supervise import retried, retried_within, supervised


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


async def test_work_retried_within_a_budget_succeeds_when_the_fault_passes_in_time():
    attempts: list[int] = []

    async def work() -> None:
        attempts.append(len(attempts))
        if len(attempts) < 3:
            raise ConnectionError("leader election")

    await retried_within("store", work, budget=5.0, initial_backoff=0.001)
    assert attempts == [0, 1, 2]


async def test_work_retried_within_a_budget_raises_the_last_failure_once_it_is_spent():
    attempts: list[int] = []

    async def work() -> None:
        attempts.append(len(attempts))
        raise ConnectionError(f"down {len(attempts)}")

    with pytest.raises(ConnectionError, match=r"down \d+"):
        await retried_within("store", work, budget=0.05, initial_backoff=0.001, max_backoff=0.01)
    assert len(attempts) >= 2
