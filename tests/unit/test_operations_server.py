"""The metrics and health server of a NATS-only service: routes, readiness, bad requests."""

import asyncio

from prometheus_client import CollectorRegistry, Counter

from shared import healthcheck
from shared.metrics import OperationsServer, Readiness


async def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_readyz_is_503_naming_what_fails_until_every_check_holds() -> None:
    readiness = Readiness()
    server = OperationsServer(readiness, CollectorRegistry())
    port = await server.start("127.0.0.1", 0)
    try:
        assert await get(port, "/readyz") == (503, b'{"status":"not_ready","failing":["started"]}')
        connected = False
        readiness.require("nats", lambda: connected)
        readiness.require("broken", lambda: 1 / 0 == 0)  # a failing check is not ready
        assert (await get(port, "/readyz"))[
            1
        ] == b'{"status":"not_ready","failing":["nats","broken"]}'
        assert await get(port, "/healthz") == (200, b'{"status":"alive"}')
        connected = True
        readiness.require("broken", lambda: True)
        assert await get(port, "/readyz") == (200, b'{"status":"ready"}')
    finally:
        await server.stop()


async def test_metrics_serves_the_registry_and_other_paths_and_methods_are_refused() -> None:
    registry = CollectorRegistry()
    Counter("probe_things", "things", registry=registry).inc(3)
    server = OperationsServer(Readiness(), registry)
    port = await server.start("127.0.0.1", 0)
    try:
        status, body = await get(port, "/metrics?x=1")
        assert status == 200
        assert b"probe_things_total 3.0" in body
        assert (await get(port, "/nothing"))[0] == 404
        assert (await get(port, "/metrics", method="POST"))[0] == 405
        assert await get(port, "/healthz", method="HEAD") == (200, b"")
    finally:
        await server.stop()


async def test_the_container_healthcheck_passes_only_while_the_service_is_ready() -> None:
    readiness = Readiness()
    server = OperationsServer(readiness, CollectorRegistry())
    port = await server.start("127.0.0.1", 0)
    try:
        assert not await asyncio.to_thread(healthcheck.probe, port)
        assert await asyncio.to_thread(healthcheck.probe, port, "healthz")
        readiness.require("started", lambda: True)
        assert await asyncio.to_thread(healthcheck.probe, port)
    finally:
        await server.stop()
    assert not await asyncio.to_thread(healthcheck.probe, port)  # nothing listens any more
