"""What an operator asks the ingress: `/metrics` (Prometheus), `/healthz` (alive), `/readyz`
(connected and its caches loaded), and the HTTP families behind `/metrics`.

Requests are labelled by method, route template (`/trigger/{flow_id}`, never the path a client
sent: ids would grow the series without end) and status. Starts (`POST /trigger/{flow_id}` and
`POST /v1/triggers/{trigger_id}/run`) are also counted as accepted, or refused by the problem
code the client got. A request that matches no route is not counted (the router answers it
before any middleware runs).
"""

import contextlib
from collections.abc import Callable
from time import perf_counter
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from shared.metrics import ALIVE, PREFIX, READY, health_body

REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by route and status",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Seconds from a request's arrival at its route to the end of its answer",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STARTS_ACCEPTED = Counter(
    f"{PREFIX}_starts_accepted", "Starts the ingress stored, by route", ["route"]
)
STARTS_REFUSED = Counter(
    f"{PREFIX}_starts_refused",
    "Starts the ingress refused, by route and problem code (invalid_key, flow_not_found, ...)",
    ["route", "reason"],
)

START_ROUTES = frozenset({"/trigger/{flow_id}", "/v1/triggers/{trigger_id}/run"})
PROBLEM = "trigger_plane.problem"
"""Scope key under which an exception handler leaves the problem code it answered with."""

_Children = tuple[Any, Any, Any]
_children: dict[tuple[str, str, int], _Children] = {}
"""The label children of each (method, route, status) seen, bound once and kept."""


def _bound(method: str, route: str, status: int) -> _Children:
    found = _children[(method, route, status)] = (
        REQUESTS.labels(method, route, str(status)),
        REQUEST_SECONDS.labels(method, route),
        STARTS_ACCEPTED.labels(route) if route in START_ROUTES else None,
    )
    return found


def count(method: str, route: str, status: int, seconds: float, problem: str | None) -> None:
    """One request answered on `route` with `status` (and `problem`, its problem code, if any)
    after `seconds`: a dictionary lookup, a counter increment and a histogram observation."""
    key = (method, route, status)
    requests, duration, accepted = _children.get(key) or _bound(*key)
    requests.inc()
    duration.observe(seconds)
    if accepted is not None:
        if problem is None:
            # Answered without a problem: stored (a synchronous answer of a run that failed
            # is an accepted start too).
            accepted.inc()
        else:
            STARTS_REFUSED.labels(route, problem).inc()


def http_metrics(app: ASGIApp) -> ASGIApp:
    """Middleware counting and timing every routed request (see the module's docstring)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = perf_counter()
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_noting_status)
        finally:
            route = scope.get("path_template") or scope["path"]
            seconds = perf_counter() - started
            count(scope["method"], route, status, seconds, scope.get(PROBLEM))  # type: ignore[arg-type]

    return middleware


class _Coded(msgspec.Struct):
    code: str = ""


_coded = msgspec.json.Decoder(_Coded)


def noting_problem(
    handler: Callable[[Request[Any, Any, Any], Any], Response[Any]],
) -> Callable[[Request[Any, Any, Any], Any], Response[Any]]:
    """`handler` (an exception handler), leaving the problem code of its answer in the scope
    for `http_metrics` (only errors pay for reading it back)."""

    def handle(request: Request[Any, Any, Any], error: Any) -> Response[Any]:
        response = handler(request, error)
        code = f"http_{response.status_code}"
        if isinstance(response.content, bytes):
            with contextlib.suppress(msgspec.DecodeError):
                code = _coded.decode(response.content).code or code
        request.scope[PROBLEM] = code  # type: ignore[literal-required]
        return response

    return handle


def noting_problems(handlers: dict[Any, Any]) -> dict[Any, Any]:
    """Every exception handler of `handlers` wrapped by `noting_problem`."""
    return {kind: noting_problem(handler) for kind, handler in handlers.items()}


def _ready(request: Request[Any, Any, Any]) -> list[str]:
    ingress = getattr(request.app.state, "ingress", None)
    if ingress is None:
        return ["started"]
    failing = []
    if not ingress.nc.is_connected:
        failing.append("nats")
    if not ingress.directory.ready:
        failing.append("mirrors")
    return failing


@get("/healthz", include_in_schema=False, sync_to_thread=False)
def healthz() -> Response[bytes]:
    """Alive: the process answers (says nothing of NATS)."""
    return Response(content=ALIVE, media_type="application/json")


@get("/readyz", include_in_schema=False, sync_to_thread=False)
def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Ready: connected to NATS and the key, flow and trigger mirrors loaded."""
    status, body = health_body(_ready(request))
    return Response(content=body, status_code=status, media_type="application/json")


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """This worker process's metrics in Prometheus's text format."""
    READY.set(0 if _ready(request) else 1)
    return Response(content=generate_latest(), media_type=CONTENT_TYPE_LATEST)


ROUTES = [healthz, readyz, metrics]
