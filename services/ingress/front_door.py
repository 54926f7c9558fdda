"""The ingress's outermost ASGI layer: on `POST /trigger/{flow_id}`, a key refused without any
lookup (malformed, over a limit of failed authentications, known not to exist) is answered here,
before the framework routes the request or builds anything for it.

A flood of forged keys lands on that route, and each refusal takes CPU that valid calls need: on
the server, a request the framework answers costs about twice one answered here (measured with
`make bench-flood`). Everything else goes on to the app unchanged, with what the key lookup found
left in the request's state for the route's middleware (`handlers.authenticated`), so a key is
looked up, and its failure counted, once. With tracing on, every request goes on to the app, so
that each refusal keeps its server span. A `HEAD` request is answered as its `GET`, without the
body.
"""

from time import perf_counter

from litestar import Litestar
from litestar._asgi.utils import is_valid_host
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from services.ingress import operations
from services.ingress.problems import ApiError, send_problem
from shared import tracing

PREFIX = "/trigger/"
ROUTE = "/trigger/{flow_id}"
"""The route template the router would give the request (the metrics' label)."""
FOUND = "trigger_plane.key_found"
"""Where the front door leaves `Ingress.key_now`'s answer in the request's state."""


def _routed_to_trigger(scope: Scope) -> bool:
    """Whether the router would send this request to `POST /trigger/{flow_id}` (only the plain
    form of its path: any other goes on to the router, which decides as always)."""
    path: str = scope["path"]
    return (
        scope["method"] == "POST"
        and path.startswith(PREFIX)
        and len(path) > len(PREFIX)
        and "/" not in path[len(PREFIX) :]
        and not scope.get("root_path")
    )


def _headers_only(send: Send) -> Send:
    """`send` for a `HEAD` answered as its `GET`: the same status and headers (its
    `Content-Length` included), no body."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return send_head


def front_door(app: Litestar) -> ASGIApp:
    """`app` behind the front door (see the module's docstring)."""

    async def door(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            # Answered as its GET without the body (RFC 9110 9.3.2: `curl -I`, link checkers,
            # load balancers' probes); the framework routes GET only.
            await app({**scope, "method": "GET"}, receive, _headers_only(send))  # type: ignore[arg-type]
            return
        if scope["type"] == "http" and _routed_to_trigger(scope) and tracing.tracer() is None:
            ingress = getattr(app.state, "ingress", None)
            if ingress is not None:
                started = perf_counter()
                authorization = host = None
                for name, value in scope["headers"]:
                    if name == b"authorization" and authorization is None:
                        authorization = value.decode("latin-1")
                    elif name == b"host" and host is None:
                        host = value
                if host is None or is_valid_host(host):  # else the router answers 400
                    client = scope.get("client")
                    try:
                        found = ingress.key_now(authorization, client[0] if client else None)
                    except ApiError as error:
                        await send_problem(send, error)
                        seconds = perf_counter() - started
                        operations.count("POST", ROUTE, error.status, seconds, error.code)
                        return
                    scope.setdefault("state", {})[FOUND] = found
        await app(scope, receive, send)  # type: ignore[arg-type]

    return door
