"""Pieces of the runner's message handling that need no broker."""

import asyncio

from services.runner.handlers import InProgress


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
    in_progress = InProgress(interval=0.001)
    beat = asyncio.create_task(in_progress.beat())
    msg, idle = FakeMsg(), FakeMsg()

    with in_progress.kept(msg):  # type: ignore[arg-type]
        await asyncio.wait_for(msg.beating.wait(), timeout=2)
    beats = msg.beats
    await asyncio.sleep(0.01)  # ten intervals: no beat may come once the run is over
    beat.cancel()

    assert msg.beats == beats
    assert idle.beats == 0
