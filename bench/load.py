"""A small HTTP/1.1 keep-alive load generator: N connections, each sending one request at a time.

Run it in its own process (`python -m bench.load ...`) so it never shares an event loop with the
server it measures; it prints one JSON `LoadResult` on stdout. Requests are serialised once,
responses are parsed just enough (status line and `Content-Length`), and every latency is taken
with `time.perf_counter_ns`. Only requests sent after the warm-up and answered before the end of
the measured window count.
"""

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field

import msgspec

CONNECT_RETRY_DELAY = 0.05
"""Seconds before a failed connection is opened again (each failure counts as an error)."""
GRACE = 5.0
"""Seconds allowed after the measured window for the requests still in flight."""


class LoadResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one load run measured."""

    requests: int
    """2xx responses to requests sent and answered inside the measured window."""
    errors: int
    """Non-2xx responses and connection failures inside the measured window."""
    duration: float
    rps: float
    """2xx responses per second."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    """Every status seen in the window (`"failure"` for a broken connection)."""

    @property
    def error_rate(self) -> float:
        total = self.requests + self.errors
        return self.errors / total if total else 1.0


@dataclass
class Window:
    """The measured window and what fell inside it (shared by every connection)."""

    start_ns: int
    end_ns: int
    latencies_ns: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0

    def record(self, sent_ns: int, done_ns: int, status: int) -> None:
        if sent_ns < self.start_ns or done_ns > self.end_ns:
            return
        if 200 <= status < 300:
            self.latencies_ns.append(done_ns - sent_ns)
        else:
            self.errors += 1
        key = str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def record_failure(self, when_ns: int) -> None:
        if self.start_ns <= when_ns <= self.end_ns:
            self.errors += 1
            self.statuses["failure"] = self.statuses.get("failure", 0) + 1


class Connection(asyncio.Protocol):
    """One keep-alive connection sending `request` again as soon as each answer is complete."""

    def __init__(self, request: bytes, window: Window) -> None:
        self._request = request
        self._window = window
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._sent_ns = 0
        self.finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        """Resolves to True once the window is over, False if the connection broke first."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        self._sent_ns = time.perf_counter_ns()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            self._buffer = buffer
            return
        head = buffer[:head_end].lower()
        length_at = head.find(b"\r\ncontent-length:")
        if length_at < 0:
            # Chunked or close-delimited answers are not something these servers send.
            self._fail()
            return
        line_end = head.find(b"\r\n", length_at + 2)
        value = head[length_at + 17 : line_end if line_end >= 0 else len(head)]
        total = head_end + 4 + int(value)
        if len(buffer) < total:
            self._buffer = buffer
            return
        done_ns = time.perf_counter_ns()
        self._buffer = buffer[total:]
        self._window.record(self._sent_ns, done_ns, int(buffer[9:12]))
        if done_ns < self._window.end_ns:
            self._send()
        elif not self.finished.done():
            self.finished.set_result(True)
            assert self._transport is not None
            self._transport.close()

    def _fail(self) -> None:
        if not self.finished.done():
            self._window.record_failure(time.perf_counter_ns())
            self.finished.set_result(False)
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self._fail()


async def _drive(host: str, port: int, request: bytes, window: Window) -> None:
    """Keep one connection busy until the window ends, reopening it if it breaks."""
    loop = asyncio.get_running_loop()
    while time.perf_counter_ns() < window.end_ns:
        try:
            _, connection = await loop.create_connection(
                lambda: Connection(request, window), host, port
            )
        except OSError:
            window.record_failure(time.perf_counter_ns())
            await asyncio.sleep(CONNECT_RETRY_DELAY)
            continue
        if await connection.finished:
            return
        await asyncio.sleep(CONNECT_RETRY_DELAY)


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A serialised `POST` with a JSON body, ready to send again and again."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _percentile(ordered: list[int], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


async def run(
    host: str, port: int, request: bytes, connections: int, warmup: float, duration: float
) -> LoadResult:
    """Load `host:port` with `connections` connections for `warmup` + `duration` seconds."""
    start_ns = time.perf_counter_ns() + int(warmup * 1e9)
    window = Window(start_ns=start_ns, end_ns=start_ns + int(duration * 1e9))
    drivers = [asyncio.create_task(_drive(host, port, request, window)) for _ in range(connections)]
    _, late = await asyncio.wait(drivers, timeout=warmup + duration + GRACE)
    for task in late:
        task.cancel()
    await asyncio.gather(*drivers, return_exceptions=True)
    ordered = sorted(window.latencies_ns)
    return LoadResult(
        requests=len(ordered),
        errors=window.errors + len(late),
        duration=duration,
        rps=len(ordered) / duration,
        p50_ms=_percentile(ordered, 0.50),
        p90_ms=_percentile(ordered, 0.90),
        p99_ms=_percentile(ordered, 0.99),
        max_ms=ordered[-1] / 1e6 if ordered else 0.0,
        statuses=window.statuses,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", default='{"n":1}')
    parser.add_argument(
        "--header", action="append", default=[], help="`Name: value`, may be repeated"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    headers = dict(line.split(":", 1) for line in args.header)
    request = http_request(
        args.host,
        args.port,
        args.path,
        args.body.encode(),
        {name.strip(): value.strip() for name, value in headers.items()},
    )
    result = asyncio.run(
        run(args.host, args.port, request, args.connections, args.warmup, args.duration)
    )
    sys.stdout.buffer.write(msgspec.json.encode(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
