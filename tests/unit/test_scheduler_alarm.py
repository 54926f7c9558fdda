"""The scheduler's `Alarm`: one timer for every held tick, each sleep ending at its time."""

import asyncio

from services.scheduler.adapters import Alarm


async def test_sleeps_end_at_their_own_time_in_the_order_of_their_ends() -> None:
    alarm = Alarm()
    loop = asyncio.get_running_loop()
    began = loop.time()
    ended: dict[str, float] = {}

    async def sleep(name: str, seconds: float) -> None:
        await alarm.sleep(seconds)
        ended[name] = loop.time() - began

    await asyncio.gather(sleep("late", 0.15), sleep("early", 0.05), sleep("middle", 0.1))

    assert list(ended) == ["early", "middle", "late"]
    assert ended["early"] >= 0.05
    assert ended["middle"] >= 0.1
    assert ended["late"] >= 0.15
    assert ended["late"] < 1.0


async def test_a_sleep_added_after_a_later_one_still_ends_first() -> None:
    alarm = Alarm()
    later = asyncio.create_task(alarm.sleep(0.3))
    await asyncio.sleep(0)
    await asyncio.wait_for(alarm.sleep(0.02), timeout=0.2)
    assert not later.done()
    await asyncio.wait_for(later, timeout=1.0)


async def test_a_cancelled_sleep_leaves_the_others_on_time() -> None:
    alarm = Alarm()
    cancelled = asyncio.create_task(alarm.sleep(0.02))
    kept = asyncio.create_task(alarm.sleep(0.05))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.wait_for(kept, timeout=1.0)
    assert cancelled.cancelled()


async def test_many_sleeps_due_together_all_end_in_one_ring() -> None:
    alarm = Alarm()
    await asyncio.wait_for(asyncio.gather(*(alarm.sleep(0.01) for _ in range(5000))), timeout=2.0)


async def test_the_callbacks_of_sleeps_due_together_all_run_before_any_sleeper_resumes() -> None:
    alarm = Alarm()
    events: list[str] = []

    async def sleep(name: str) -> None:
        await alarm.sleep(0.01, lambda: events.append(f"due {name}"))
        events.append(f"resumed {name}")

    await asyncio.gather(*(sleep(name) for name in "abc"))

    assert events == ["due a", "due b", "due c", "resumed a", "resumed b", "resumed c"]


async def test_a_failing_callback_leaves_its_sleeper_and_the_others_on_time() -> None:
    alarm = Alarm()
    called: list[str] = []

    def fail() -> None:
        raise RuntimeError("no connection")

    await asyncio.wait_for(
        asyncio.gather(alarm.sleep(0.01, fail), alarm.sleep(0.01, lambda: called.append("b"))),
        timeout=1.0,
    )
    assert called == ["b"]


async def test_a_batch_due_together_is_flushed_a_chunk_at_a_time_and_at_its_end() -> None:
    called: list[int] = []
    flushed_after: list[int] = []
    alarm = Alarm(flush=lambda: flushed_after.append(len(called)), flush_every=4)

    await asyncio.gather(*(alarm.sleep(0.01, lambda: called.append(1)) for _ in range(10)))

    assert flushed_after == [4, 8, 10]
