"""Tracing is off unless an OTLP endpoint is configured, and off it adds nothing to messages."""

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from shared import tracing


@pytest.fixture
def off_afterwards() -> Iterator[None]:
    yield
    tracing.use(None)


def test_tracing_is_off_without_an_otlp_endpoint(off_afterwards: None) -> None:
    assert not tracing.configure("runner", {})
    assert not tracing.configure("runner", {"OTEL_EXPORTER_OTLP_ENDPOINT": "  "})
    assert tracing.tracer() is None


def test_the_sdk_switch_keeps_tracing_off_even_with_an_endpoint(off_afterwards: None) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
    assert not tracing.configure("runner", environ)
    assert tracing.tracer() is None


def test_an_otlp_endpoint_turns_tracing_on(off_afterwards: None) -> None:
    assert tracing.configure("runner", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9"})
    assert tracing.tracer() is not None


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
