"""Pieces of the runner's message handling that need no broker."""

import asyncio

from services.runner.handlers import keep_in_progress


class FakeMsg:
    """Counts in-progress acks; `beating` is set from the third one on."""

    def __init__(self) -> None:
        self.beats = 0
        self.beating = asyncio.Event()

    async def in_progress(self) -> None:
        self.beats += 1
        if self.beats >= 3:
            self.beating.set()


async def test_a_message_is_kept_in_progress_while_its_run_lasts_and_not_after() -> None:
    msg = FakeMsg()

    async with keep_in_progress(msg, interval=0.001):  # type: ignore[arg-type]
        await asyncio.wait_for(msg.beating.wait(), timeout=2)
    beats = msg.beats
    await asyncio.sleep(0.01)  # ten intervals: no beat may come once the run is over

    assert msg.beats == beats
