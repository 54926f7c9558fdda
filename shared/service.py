"""The life cycle every NATS-only service shares: start, run until SIGINT/SIGTERM, stop."""

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Protocol

HEARTBEAT_SECONDS = 5.0
"""How often a running service touches its `HEALTH_FILE`."""


class Service(Protocol):
    """What a service's `create_app` returns."""

    async def start(self) -> None:
        """Connect and start every loop; return once the service is serving."""

    async def stop(self) -> None:
        """Stop taking work, finish or hand back what is in flight, drain and close."""


def configure_logging(service: str) -> None:
    """Plain line logs on stderr, level from `LOG_LEVEL` (default INFO)."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )


async def serve(app: Service, name: str) -> None:
    """Start `app`, log that it is up, and stop it cleanly on SIGINT or SIGTERM."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    # A signal during start-up (say, NATS unreachable) must stop the service too.
    starting = asyncio.create_task(app.start())
    stop_requested = asyncio.create_task(stopping.wait())
    await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await app.stop()
        return
    stop_requested.cancel()
    starting.result()  # a failed start fails the service
    logging.getLogger(name).info("%s is up", name)
    health_file = os.environ.get("HEALTH_FILE", "")
    beating = asyncio.create_task(heartbeat(Path(health_file))) if health_file else None
    await stopping.wait()
    logging.getLogger(name).info("%s is stopping", name)
    if beating is not None:
        beating.cancel()
        _remove(Path(health_file))  # a stopping service is not healthy
    await app.stop()


async def heartbeat(path: Path) -> None:
    """Touch `path` every `HEARTBEAT_SECONDS` while the service runs: a container healthcheck
    (`python -m shared.healthcheck`) then tells a started service with a live event loop from
    one still starting (say, waiting for NATS), stopped or stuck."""
    while True:
        _touch(path)  # a local file: too quick to be worth a thread
        await asyncio.sleep(HEARTBEAT_SECONDS)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
