"""Tracing is off unless an OTLP endpoint is configured, and off it adds nothing to messages."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from contracts.runs import FlowStart
from shared import tracing


@pytest.fixture
def off_afterwards() -> Iterator[None]:
    yield
    tracing.use(None)


def test_tracing_is_off_without_an_otlp_endpoint(off_afterwards: None) -> None:
    assert tracing.configure("runner", {}) is None
    assert tracing.configure("runner", {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}) is None
    assert tracing.tracer() is None


def test_the_sdk_switch_keeps_tracing_off_even_with_an_endpoint(off_afterwards: None) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
    assert tracing.configure("runner", environ) is None
    assert tracing.tracer() is None


def test_an_otlp_endpoint_receives_the_spans(off_afterwards: None) -> None:
    posted: list[str] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            posted.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{collector.server_address[1]}/"
        provider = tracing.configure("runner", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
        active = tracing.tracer()
        assert provider is not None
        assert active is not None
        with tracing.span(active, "run", SpanKind.CONSUMER):
            pass
        assert provider.force_flush(5_000)
    finally:
        collector.shutdown()
        collector.server_close()
    assert posted == ["/v1/traces"]


def test_off_a_message_carries_no_trace_context() -> None:
    headers = {"Nats-Msg-Id": "run_1"}
    tracing.carry(headers)
    assert headers == {"Nats-Msg-Id": "run_1"}


def test_on_a_message_carries_the_current_span_and_a_reader_continues_it(
    off_afterwards: None,
) -> None:
    tracing.use(TracerProvider())
    active = tracing.tracer()
    assert active is not None
    headers: dict[str, str] = {}
    with tracing.span(active, "publish", SpanKind.PRODUCER) as sent:
        tracing.carry(headers)
    with tracing.span(active, "process", SpanKind.CONSUMER, parent=headers) as received:
        pass
    assert headers["traceparent"].split("-")[1] == f"{sent.get_span_context().trace_id:032x}"
    assert received.get_span_context().trace_id == sent.get_span_context().trace_id
    assert received.parent is not None  # type: ignore[attr-defined]
    assert received.parent.span_id == sent.get_span_context().span_id  # type: ignore[attr-defined]


def test_a_schedule_fire_starts_a_trace_of_its_own_and_carries_it_in_the_start(
    off_afterwards: None,
) -> None:
    tracing.use(TracerProvider())
    active = tracing.tracer()
    assert active is not None
    start = FlowStart(run_id="run_1", workspace_id="ws_1", flow_id="flw_1", source="schedule")
    headers: dict[str, str] = {}
    with (
        tracing.span(active, "tick", SpanKind.CONSUMER) as tick,
        tracing.producer_span(active, "flow.v1.start.ws_1", start, headers, root=True) as sent,
    ):
        pass
    assert sent.get_span_context().trace_id != tick.get_span_context().trace_id
    assert headers["traceparent"].split("-")[2] == f"{sent.get_span_context().span_id:016x}"
    assert sent.attributes is not None  # type: ignore[attr-defined]
    assert sent.attributes["trigger_plane.run_id"] == "run_1"  # type: ignore[attr-defined]
