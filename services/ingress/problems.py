"""HTTP errors as RFC 9457 problem details with a machine code and a precise message."""

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.types import Send
from litestar.utils.scope.state import ScopeState

from contracts.http import ProblemDetails, UnusableProblem
from contracts.registry import Problem, QuotaExceeded
from services.ingress import bodies
from shared.codec import encode

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """Raised anywhere in a handler; answered as a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        quota: QuotaExceeded | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.quota = quota
        self.headers = headers or {}

    @classmethod
    def from_problem(cls, problem: Problem) -> "ApiError":
        return cls(problem.status, problem.code, problem.message, problem.quota)


def problem_response(
    status: int, code: str, detail: str, quota: QuotaExceeded | None = None
) -> Response[bytes]:
    title = HTTPStatus(status).phrase
    body = ProblemDetails(status=status, code=code, title=title, detail=detail)
    if quota is not None:  # an extension member (RFC 9457): the limit, as values
        body = UnusableProblem(status=status, code=code, title=title, detail=detail, quota=quota)
    return Response(content=encode(body), status_code=status, media_type=PROBLEM_JSON)


async def send_problem(send: Send, error: ApiError) -> None:
    """Answer `error` straight over ASGI (for middleware that answers before any handler)."""
    body = encode(
        ProblemDetails(
            status=error.status,
            code=error.code,
            title=HTTPStatus(error.status).phrase,
            detail=error.detail,
        )
    )
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def on_api_error(_: Request, error: ApiError) -> Response[bytes]:
    response = problem_response(error.status, error.code, error.detail, error.quota)
    if error.headers:
        response.headers.update(error.headers)
    return response


def on_validation_error(request: Request, error: ValidationException) -> Response[bytes]:
    items = [item for item in (error.extra if isinstance(error.extra, list) else []) if item]
    parameters = _parameters(request)
    data = parameters.get("data")
    if data is not None and any(
        isinstance(item, dict) and item.get("source") == "body" for item in items
    ):
        # Litestar keeps only msgspec's first message, without its path: decode the body again.
        body = ScopeState.from_scope(request.scope).body
        explained = bodies.explain(data.annotation, body if isinstance(body, bytes) else b"")
        if explained is not None:
            return problem_response(400, "invalid_request", explained)
    messages = []
    for item in items:
        if isinstance(item, dict):
            key = item.get("key")
            where = f" (at `{key}`)" if key and key != "data" else ""
            message = f"{item.get('message', 'invalid value')}{where}"
            parameter = parameters.get(str(key))
            allowed = bodies.literal_values(parameter.annotation) if parameter else []
            if allowed and "nvalid" in message:
                message += f"; allowed: {', '.join(allowed)}"
            messages.append(message)
    detail = "; ".join(messages) or str(error.detail)
    return problem_response(400, "invalid_request", detail)


def _parameters(request: Request) -> dict[str, Any]:
    """The route handler's parameters by name (their `annotation` is the declared type)."""
    try:
        return dict(request.route_handler.parsed_fn_signature.parameters)
    except Exception:  # no handler resolved (an error before routing)
        return {}


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def body_too_large(limit: int, what: str = "the body is larger") -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"{what}: the limit is {limit} bytes (the ingress's MAX_BODY_BYTES setting)",
    )


def on_http_error(request: Request, error: HTTPException) -> Response[bytes]:
    if isinstance(error.__cause__, SerializationException):
        return problem_response(400, "invalid_json", f"the body is not valid JSON: {error.detail}")
    status = error.status_code
    headers: dict[str, str] = {}
    if status == 404:
        detail = f"no such endpoint: {request.method} {request.url.path} (see /schema)"
    elif status == 405:
        methods = sorted(
            m.strip() for m in dict(error.headers or {}).get("allow", "").split(",") if m.strip()
        )
        headers["Allow"] = ", ".join(methods)
        allowed = [m for m in methods if m != "OPTIONS"]
        detail = (
            f"{request.method} is not allowed on {request.url.path}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    elif status == 413:
        return on_api_error(
            request, body_too_large(request.app.state.ingress.settings.max_body_bytes)
        )
    else:
        detail = str(error.detail)
    response = problem_response(status, _HTTP_CODES.get(status, "http_error"), detail)
    response.headers.update(headers)
    return response


def on_nats_error(request: Request, error: Exception) -> Response[bytes]:
    """NATS did not answer (a leader election, a reconnect): nothing this call needed could be
    read or stored, so it may be retried."""
    log.warning(
        "NATS error on %s %s: %s: %s", request.method, request.url.path, type(error).__name__, error
    )
    return problem_response(
        503,
        "nats_unavailable",
        f"NATS did not answer in time ({type(error).__name__}); retry (with the same "
        "Idempotency-Key, if you sent one)",
    )


def on_too_deep(_: Request, error: RecursionError) -> Response[bytes]:
    """A body too deeply nested to decode (a typed body, decoded before our handler runs)."""
    return problem_response(400, "invalid_json", "the body nests arrays and objects too deeply")


def on_unexpected_error(request: Request, error: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return problem_response(500, "internal_error", "the ingress failed; see its log")
