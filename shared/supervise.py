"""Keep work going through failures: retried with capped backoff until it is done, or for ever."""

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
    await _with_backoff(name, loop, initial_backoff, max_backoff, done_when_returns=False)


async def retried(
    name: str,
    work: Callable[[], Awaitable[None]],
    *,
    initial_backoff: float = 0.1,
    max_backoff: float = 5.0,
) -> None:
    """Run `work()` until it returns, retrying it with capped backoff while it fails."""
    await _with_backoff(name, work, initial_backoff, max_backoff, done_when_returns=True)


async def retried_within(
    name: str,
    work: Callable[[], Awaitable[None]],
    budget: float,
    *,
    initial_backoff: float = 0.05,
    max_backoff: float = 1.0,
) -> None:
    """Run `work()` until it returns, retrying it with capped backoff while it fails, for at
    most `budget` seconds in all (an attempt still going when the budget ends is cancelled);
    then the last failure is raised (`TimeoutError` for a cancelled attempt). For work a caller
    waits on (an HTTP request), through faults that pass within seconds (a leader election)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    backoff = initial_backoff
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:
            left = deadline - loop.time()
            if left <= 0:
                raise
            log.warning("%s failed (%s: %s); retrying", name, type(error).__name__, error)
            await asyncio.sleep(min(backoff, left))
            backoff = min(backoff * 2, max_backoff)


async def _with_backoff(
    name: str,
    work: Callable[[], Awaitable[None]],
    initial_backoff: float,
    max_backoff: float,
    *,
    done_when_returns: bool,
) -> None:
    backoff = initial_backoff
    while True:
        try:
            await work()
            if done_when_returns:
                return
            log.warning("%s ended; restarting", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying in %.1fs", name, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` (if any) and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
