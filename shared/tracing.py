"""Traces: OpenTelemetry spans from an HTTP request through NATS to a run, exported with OTLP.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. Off
means no tracer provider at all: `tracer()` is None, and the hot paths test that one value and
build no span, no header and no context. On, the W3C trace context (`traceparent`,
`tracestate`) travels in NATS message headers and outgoing HTTP headers, so one API call is one
trace across the ingress, the runner and the flow's own HTTP calls.
"""

import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from contracts.runs import FlowStart

INSTRUMENTATION = "trigger-plane"

_propagator = TraceContextTextMapPropagator()
_tracer: Tracer | None = None


def tracer() -> Tracer | None:
    """The tracer spans are made with; None when tracing is off (the hot paths' one test)."""
    return _tracer


def use(provider: TracerProvider | None) -> None:
    """Trace with `provider` from now on (None: stop tracing). Tests pass one whose exporter
    keeps the spans in memory; services call `configure` instead."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION)


def configure(service: str, environ: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """Export spans of `service` with OTLP over HTTP when an endpoint is configured; the
    provider, or None when tracing stays off.

    `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is the full URL, else `OTEL_EXPORTER_OTLP_ENDPOINT`
    plus `/v1/traces`; the exporter reads the other `OTEL_EXPORTER_OTLP_*` variables (headers,
    timeout) itself. `OTEL_SERVICE_NAME` overrides the service name and
    `OTEL_SDK_DISABLED=true` keeps tracing off.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint and base:
        endpoint = f"{base.rstrip('/')}/v1/traces"  # the OTLP/HTTP path of traces
    if not endpoint:
        return None
    # Imported only when on: the exporter pulls in protobuf and an HTTP client.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    name = environ.get("OTEL_SERVICE_NAME", "").strip() or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    use(provider)
    return provider


def inject(headers: MutableMapping[str, str]) -> None:
    """Write the current span's trace context into `headers` (NATS or HTTP)."""
    _propagator.inject(headers)


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context `headers` carry (an empty context when they carry none)."""
    return _propagator.extract(headers or {})


@contextmanager
def span(
    active: Tracer,
    name: str,
    kind: SpanKind,
    attributes: Mapping[str, AttributeValue] | None = None,
    parent: Mapping[str, str] | None = None,
) -> Iterator[Span]:
    """A span made current for the block; its parent is the trace context in the headers
    `parent` when given, the current span otherwise. An exception ends it as an error."""
    context = extract(parent) if parent is not None else None
    with active.start_as_current_span(name, context, kind, attributes) as current:
        yield current


def carry(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context to `headers` when tracing is on (nothing when off)."""
    if _tracer is not None:
        _propagator.inject(headers)


@contextmanager
def producer_span(
    active: Tracer,
    subject: str,
    start: FlowStart,
    headers: MutableMapping[str, str],
    *,
    root: bool = False,
) -> Iterator[Span]:
    """The span of publishing `start` to `subject`, its context carried in `headers`; `root`
    starts a new trace instead of continuing the current one."""
    attributes = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.destination.name": subject,
        **start_attributes(start),
    }
    context = Context() if root else None
    with active.start_as_current_span(
        f"send {subject}", context, SpanKind.PRODUCER, attributes
    ) as current:
        _propagator.inject(headers)
        yield current


def start_attributes(start: FlowStart) -> dict[str, AttributeValue]:
    """What a span says of the start it is about: the ids an operator searches by."""
    attributes: dict[str, AttributeValue] = {
        "trigger_plane.run_id": start.run_id,
        "trigger_plane.workspace_id": start.workspace_id,
        "trigger_plane.flow_id": start.flow_id,
        "trigger_plane.source": start.source,
    }
    if start.trigger_id:
        attributes["trigger_plane.trigger_id"] = start.trigger_id
    return attributes


async def consumed(active: Tracer, msg: Msg, handle: Callable[[Msg], Awaitable[None]]) -> None:
    """`handle(msg)` in a consumer span continuing the trace the message's headers carry: what
    the handler does (a run, its HTTP calls) joins the trace of whoever published it."""
    attributes: dict[str, AttributeValue] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.destination.name": msg.subject,
    }
    msg_id = msg.headers.get("Nats-Msg-Id") if msg.headers else None
    if msg_id:
        attributes["messaging.message.id"] = msg_id
    with span(active, f"process {msg.subject}", SpanKind.CONSUMER, attributes, msg.headers or {}):
        await handle(msg)
