"""Traces: one API call is one trace across the ingress, the runner and the HTTP flow's request
(real NATS, the services in process, spans kept by the SDK's in-memory exporter)."""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.ingress.app import create_app as create_ingress
from services.ingress.settings import IngressSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from services.runner.app import create_app as create_runner
from services.runner.settings import RunnerSettings
from shared import tracing
from tests.integration.conftest import RestartableServer

OPERATOR = {"Authorization": "Bearer op-test"}


class Recorder(BaseHTTPRequestHandler):
    """The HTTP flow's endpoint: answers 200 and keeps the headers of every request."""

    received: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Recorder.received.append({name.lower(): value for name, value in self.headers.items()})
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every ended span kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


@pytest.fixture
async def client(
    own_server: RestartableServer, exported: InMemorySpanExporter
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The ingress in process with a registry and a runner on its loop (see
    test_ingress_api's `client` for why they share the app's loop); the runner may call
    loopback HTTP endpoints."""
    registry = create_registry(RegistrySettings(nats_url=own_server.url))
    runner = create_runner(
        RunnerSettings(nats_url=own_server.url, runner_http_allowed_networks="127.0.0.1/32")
    )
    app = create_ingress(IngressSettings(nats_url=own_server.url, operator_token="op-test"))
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as test_client:
        test_client.blocking_portal.call(registry.start)
        test_client.blocking_portal.call(runner.start)
        try:
            yield test_client
        finally:
            test_client.blocking_portal.call(runner.stop)
            test_client.blocking_portal.call(registry.stop)


def one_of(spans: list[ReadableSpan], kind: SpanKind, name: str) -> ReadableSpan:
    found = [s for s in spans if s.kind == kind and s.name.startswith(name)]
    assert len(found) == 1, [(s.kind, s.name) for s in spans]
    return found[0]


async def test_one_api_call_is_one_trace_from_the_ingress_through_the_runner_to_the_flows_request(
    client: AsyncTestClient[Any], exported: InMemorySpanExporter, endpoint: str
) -> None:
    answer = await client.post("/v1/workspaces", json={"name": "traced"}, headers=OPERATOR)
    admin = {"Authorization": f"Bearer {answer.json()['admin_key']['secret']}"}
    flow = {"name": "hook", "settings": {"kind": "http", "url": endpoint}}
    flow_id = (await client.post("/v1/flows", json=flow, headers=admin)).json()["id"]
    trigger = {"flow_id": flow_id, "type": "api", "sync_wait_seconds": 20}
    assert (await client.post("/v1/triggers", json=trigger, headers=admin)).status_code == 201
    exported.clear()

    answer = await client.post(f"/trigger/{flow_id}", json={"n": 1}, headers=admin)

    assert answer.status_code == 200, answer.text
    # The runner's span ends after its last write, a moment after the run's event answered.
    deadline = time.monotonic() + 10
    while not any(s.kind == SpanKind.CONSUMER for s in exported.get_finished_spans()):
        assert time.monotonic() < deadline, "the runner's span never ended"
        await asyncio.sleep(0.02)  # the services run on the client's own thread and loop
    spans = list(exported.get_finished_spans())
    request = one_of(spans, SpanKind.SERVER, "POST /trigger/{flow_id}")
    run = one_of(spans, SpanKind.CONSUMER, "process flow.v1.start.")
    call = one_of(spans, SpanKind.CLIENT, "POST")
    trace_id = request.context.trace_id
    assert request.parent is None  # the caller sent no trace context: the ingress began it
    assert run.context.trace_id == trace_id
    assert run.parent is not None
    assert run.parent.span_id == request.context.span_id
    assert call.context.trace_id == trace_id
    assert call.parent is not None
    assert call.parent.span_id == run.context.span_id
    assert call.attributes is not None
    assert call.attributes["http.response.status_code"] == 200
    # The flow's endpoint was told the trace and its caller: the client span of the runner.
    assert len(Recorder.received) == 1
    _, received_trace, received_parent, _ = Recorder.received[0]["traceparent"].split("-")
    assert int(received_trace, 16) == trace_id
    assert int(received_parent, 16) == call.context.span_id
