"""The life cycle every NATS-only service shares: start, run until SIGINT/SIGTERM, stop."""

import asyncio
import contextlib
import gc
import logging
import signal
from typing import Protocol

import msgspec

from shared import logs, metrics
from shared.settings import from_environment


class Service(Protocol):
    """What a service's `create_app` returns."""

    async def start(self) -> None:
        """Connect and start every loop; return once the service is serving."""

    async def stop(self) -> None:
        """Stop taking work, finish or hand back what is in flight, drain and close."""


class CollectorSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Python's cyclic garbage collector in a running service (read from the environment)."""

    gc_threshold: int = 50_000
    """Allocations between two collections of the youngest generation (`GC_THRESHOLD`; Python's
    default is 700; 0 keeps Python's settings and collects what start-up made too)."""


def tune_collector(settings: CollectorSettings) -> None:
    """Once started: what start-up made (modules, settings, caches, the mirrors' first
    contents) moves to the collector's permanent generation, and the youngest generation is
    collected every `gc_threshold` allocations instead of 700.

    A no-op run allocates a few dozen tracked objects (its records, its task, futures), and
    the runs in flight keep thousands alive across collections: with Python's defaults the
    collector ran every few runs and promoted survivors made full collections of the whole
    heap frequent (a third of the runner's CPU; see the README's `make bench-runner`).
    Objects still go as soon as nothing refers to them; only reference cycles wait longer.
    """
    if settings.gc_threshold <= 0:
        return
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(settings.gc_threshold, middle, oldest)


def configure_logging(service: str) -> None:
    """Logs on stderr: JSON lines, or text on a terminal (`LOG_FORMAT`, `LOG_LEVEL`)."""
    logs.configure(service)


async def serve(app: Service, name: str) -> None:
    """Start `app`, log that it is up, and stop it cleanly on SIGINT or SIGTERM; meanwhile
    serve its metrics and health on `METRICS_PORT` (see `shared.metrics`)."""
    operations = await _serve_operations(app, name)
    try:
        await _serve(app, name)
    finally:
        if operations is not None:
            await operations.stop()


async def _serve_operations(app: Service, name: str) -> metrics.OperationsServer | None:
    """`/metrics`, `/healthz` and `/readyz` of `app` (its `readiness`, if it has one), on
    `METRICS_PORT` when that is set; started before `app` so a slow start shows as not ready."""
    settings = from_environment(metrics.MetricsSettings)
    if not settings.metrics_port:
        return None
    readiness = getattr(app, "readiness", None) or metrics.Readiness()
    server = metrics.OperationsServer(readiness)
    log = logging.getLogger(name)
    try:
        port = await server.start(settings.metrics_host, settings.metrics_port)
    except OSError as error:
        # The service itself can still work: run without metrics (its scrape shows it down)
        # rather than stop a whole `make run` over a port something else holds.
        log.error("no metrics or health served on port %d: %s", settings.metrics_port, error)
        return None
    log.info("metrics and health on http://%s:%d", settings.metrics_host, port)
    return server


async def _serve(app: Service, name: str) -> None:
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
    tune_collector(from_environment(CollectorSettings))
    logging.getLogger(name).info("%s is up", name)
    await stopping.wait()
    logging.getLogger(name).info("%s is stopping", name)
    await app.stop()
