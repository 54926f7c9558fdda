"""Prometheus families every service shares, readiness checks, and the small HTTP server that
serves `/metrics`, `/healthz` and `/readyz` on a NATS-only service's `METRICS_PORT`.

Label values are always bounded (a stream, a consumer, a bucket, a status, a reason code),
never an id a user chooses: a label per flow or run would grow the series without end.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from time import monotonic

import msgspec
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest
from prometheus_client.registry import CollectorRegistry

from shared.settings import from_environment

log = logging.getLogger(__name__)

PREFIX = "trigger_plane"

NATS_RECONNECTS = Counter(
    f"{PREFIX}_nats_reconnects", "Times the NATS connection came back after a loss", ["connection"]
)
NATS_DISCONNECTS = Counter(
    f"{PREFIX}_nats_disconnects", "Times the NATS connection was lost", ["connection"]
)
CONSUMER_PENDING = Gauge(
    f"{PREFIX}_consumer_pending_messages",
    "Messages of the stream the durable consumer has not delivered yet (sampled)",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    f"{PREFIX}_consumer_ack_pending_messages",
    "Messages delivered and not acknowledged yet (sampled)",
    ["stream", "consumer"],
)
CONSUMER_REDELIVERED = Gauge(
    f"{PREFIX}_consumer_redelivered_messages",
    "Messages delivered more than once and still unacknowledged (sampled)",
    ["stream", "consumer"],
)
MIRROR_AGE = Gauge(
    f"{PREFIX}_kv_mirror_age_seconds",
    "Seconds since a local KV mirror was last seen caught up with its bucket",
    ["bucket"],
)
MIRROR_LAG = Gauge(
    f"{PREFIX}_kv_mirror_lag_revisions",
    "Writes to the bucket the mirror had not received at its last check",
    ["bucket"],
)
READY = Gauge(f"{PREFIX}_ready", "1 when this process answers /readyz with 200")
AUDIT_ENTRIES_LOST = Counter(
    f"{PREFIX}_audit_entries_lost",
    "Changes the registry stored but could not record in the audit log (JetStream down)",
)


class MetricsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where a NATS-only service serves its metrics and health (read from the environment)."""

    metrics_port: int = 0
    """Port of `/metrics`, `/healthz` and `/readyz` (`METRICS_PORT`); 0: not served."""
    metrics_host: str = "127.0.0.1"
    """Address that port listens on (`0.0.0.0` in a container)."""
    metrics_sample_seconds: float = 5.0
    """Seconds between two samples of each JetStream consumer's pending counts."""


class Readiness:
    """Named checks `/readyz` runs; ready when every one of them holds."""

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}

    def require(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def failing(self) -> list[str]:
        """The names of the checks that do not hold (all of them before any is added)."""
        if not self._checks:
            return ["started"]
        failing = []
        for name, check in self._checks.items():
            try:
                holds = check()
            except Exception:
                holds = False
            if not holds:
                failing.append(name)
        return failing


def health_body(failing: Sequence[str]) -> tuple[int, bytes]:
    """The status and JSON body of `/readyz` for the `failing` checks."""
    if failing:
        return 503, msgspec.json.encode({"status": "not_ready", "failing": list(failing)})
    return 200, b'{"status":"ready"}'


ALIVE = b'{"status":"alive"}'


def watch_age(bucket: str, caught_up_at: Callable[[], float]) -> None:
    """Report `bucket`'s mirror age as seconds since `caught_up_at()` (a `monotonic` time)."""
    MIRROR_AGE.labels(bucket).set_function(lambda: monotonic() - caught_up_at())


async def sample_consumers(
    js: JetStreamContext, consumers: Sequence[tuple[str, str]], every: float | None = None
) -> None:
    """Sample the pending counts of the durable `consumers` ((stream, name) pairs) every
    `every` seconds (default `METRICS_SAMPLE_SECONDS`): one request per consumer and period,
    nothing per message. Run it under `supervised`."""
    if every is None:
        every = from_environment(MetricsSettings).metrics_sample_seconds
    gauges = [
        (
            stream,
            name,
            CONSUMER_PENDING.labels(stream, name),
            CONSUMER_ACK_PENDING.labels(stream, name),
            CONSUMER_REDELIVERED.labels(stream, name),
        )
        for stream, name in consumers
    ]
    while True:
        for stream, name, pending, ack_pending, redelivered in gauges:
            try:
                info = await js.consumer_info(stream, name)
            except Exception as error:  # a sample missed is no reason to stop sampling
                log.debug("no info on consumer %s/%s: %s", stream, name, error)
                continue
            pending.set(info.num_pending or 0)
            ack_pending.set(info.num_ack_pending or 0)
            redelivered.set(info.num_redelivered or 0)
        await asyncio.sleep(every)


class OperationsServer:
    """`/metrics`, `/healthz` and `/readyz` over a minimal HTTP/1.0 server on the service's
    own event loop (prometheus-client's server cannot route, and a thread would read the
    readiness checks off the loop). One request per connection; scrapes are rare."""

    def __init__(
        self, readiness: Readiness, registry: CollectorRegistry = REGISTRY, timeout: float = 5.0
    ) -> None:
        self._readiness = readiness
        self._registry = registry
        self._timeout = timeout
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on `host`:`port` (0: any free port); returns the port."""
        self._server = await asyncio.start_server(self._serve, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a GET of `path`."""
        path = path.split("?", 1)[0]
        if path == "/metrics":
            READY.set(0 if self._readiness.failing() else 1)
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return 200, "application/json", ALIVE
        if path == "/readyz":
            status, body = health_body(self._readiness.failing())
            return status, "application/json", body
        return 404, "application/json", b'{"status":"not_found"}'

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                request = await reader.readuntil(b"\r\n\r\n")
                method, _, rest = request.decode("latin-1").partition(" ")
                path = rest.partition(" ")[0]
                if method not in ("GET", "HEAD"):
                    status, kind, body = 405, "application/json", b'{"status":"get_only"}'
                else:
                    status, kind, body = self.answer(path)
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                    f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode("latin-1")
                writer.write(head if method == "HEAD" else head + body)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
