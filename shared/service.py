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


PYTHON_GC_THRESHOLD = 700
"""Python's own allocations between two collections of the youngest generation."""


class CollectorSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Python's cyclic garbage collector in a running service (read from the environment)."""

    gc_threshold: int | None = None
    """Allocations between two collections of the youngest generation (`GC_THRESHOLD`); unset:
    the service's own (the runner 50,000, the others Python's 700); 0 leaves the collector as
    Python set it, start-up's objects included."""


def tune_collector(settings: CollectorSettings, default: int = PYTHON_GC_THRESHOLD) -> None:
    """Once started: what start-up made (modules, settings, caches, the mirrors' first
    contents) moves to the collector's permanent generation, so that full collections no
    longer go through it; the youngest generation is collected every `gc_threshold` (else
    `default`) allocations.

    The runs in flight in a runner survive young collections and make full collections
    frequent: fewer, larger collections cost a runner about a tenth less CPU per run (see the
    README's `make bench-runner`). They also pause longer, which a service holding many
    objects that live a while feels: at 50,000 the scheduler's fire lag p99 went from 61 to
    160 ms with 100,000 schedules, so it keeps Python's threshold. Objects still go as soon as
    nothing refers to them; only reference cycles among start-up's objects are never freed.
    """
    threshold = settings.gc_threshold if settings.gc_threshold is not None else default
    if threshold <= 0:
        return
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)


def configure_logging(service: str) -> None:
    """Logs on stderr: JSON lines, or text on a terminal (`LOG_FORMAT`, `LOG_LEVEL`)."""
    logs.configure(service)


async def serve(app: Service, name: str, gc_threshold: int = PYTHON_GC_THRESHOLD) -> None:
    """Start `app`, log that it is up, and stop it cleanly on SIGINT or SIGTERM; meanwhile
    serve its metrics and health on `METRICS_PORT` (see `shared.metrics`). Once started, the
    garbage collector is tuned (`tune_collector`, `gc_threshold` unless `GC_THRESHOLD` says)."""
    operations = await _serve_operations(app, name)
    try:
        await _serve(app, name, gc_threshold)
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


async def _serve(app: Service, name: str, gc_threshold: int) -> None:
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
    tune_collector(from_environment(CollectorSettings), gc_threshold)
    logging.getLogger(name).info("%s is up", name)
    await stopping.wait()
    logging.getLogger(name).info("%s is stopping", name)
    await app.stop()
