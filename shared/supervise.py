"""Keep long-running loops alive: a loop that fails or ends is logged and started again."""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    *,
    initial_backoff: float = 0.1,
    max_backoff: float = 5.0,
) -> None:
    """Run `loop()` until cancelled, restarting it with capped backoff when it fails or ends.

    nats-py subscriptions and watchers can stop after a server restart without raising; a loop
    that returns is treated like one that failed.
    """
    backoff = initial_backoff
    while True:
        try:
            await loop()
            log.warning("%s ended; restarting", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting in %.1fs", name, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` (if any) and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
