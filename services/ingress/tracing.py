"""The ingress's server spans: one per HTTP request, continuing a caller's `traceparent`, made
current while the request is handled so the start it publishes carries the trace on."""

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry.trace import SpanKind, StatusCode

from shared import tracing

_CARRIED = (b"traceparent", b"tracestate")


def middleware() -> list[ASGIApp | type]:
    """The app's tracing middleware: none when tracing is off, so requests pay nothing."""
    return [] if tracing.tracer() is None else [server_spans]


def server_spans(app: ASGIApp) -> ASGIApp:
    """Wrap `app` (one route's handler, after routing) in a server span named by its route."""

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        active = tracing.tracer()
        if active is None or scope["type"] != "http":
            await app(scope, receive, send)
            return
        carried = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CARRIED
        }
        method = scope["method"]
        route = scope.get("path_template") or scope["path"]
        attributes = {"http.request.method": method, "http.route": route, "url.path": scope["path"]}
        with tracing.span(
            active, f"{method} {route}", SpanKind.SERVER, attributes, carried
        ) as span:

            async def answered(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                await send(message)

            await app(scope, receive, answered)

    return traced
