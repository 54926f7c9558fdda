"""HTTP errors as RFC 9457 problem details with a machine code and a precise message."""

import logging
from http import HTTPStatus

from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from contracts.http import ProblemDetails
from contracts.registry import Problem
from shared.codec import encode

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """Raised anywhere in a handler; answered as a problem document."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail

    @classmethod
    def from_problem(cls, problem: Problem) -> "ApiError":
        return cls(problem.status, problem.code, problem.message)


def problem_response(status: int, code: str, detail: str) -> Response[bytes]:
    body = ProblemDetails(status=status, code=code, title=HTTPStatus(status).phrase, detail=detail)
    return Response(content=encode(body), status_code=status, media_type=PROBLEM_JSON)


def on_api_error(_: Request, error: ApiError) -> Response[bytes]:
    return problem_response(error.status, error.code, error.detail)


def on_validation_error(_: Request, error: ValidationException) -> Response[bytes]:
    messages = []
    for item in error.extra if isinstance(error.extra, list) else []:
        if isinstance(item, dict):
            key = item.get("key")
            where = f" (at `{key}`)" if key and key != "data" else ""
            messages.append(f"{item.get('message', 'invalid value')}{where}")
    detail = "; ".join(messages) or str(error.detail)
    return problem_response(400, "invalid_request", detail)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def on_http_error(request: Request, error: HTTPException) -> Response[bytes]:
    if isinstance(error.__cause__, SerializationException):
        return problem_response(400, "invalid_json", f"the body is not valid JSON: {error.detail}")
    status = error.status_code
    if status == 404:
        detail = f"no such endpoint: {request.method} {request.url.path} (see /schema)"
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    else:
        detail = str(error.detail)
    return problem_response(status, _HTTP_CODES.get(status, "http_error"), detail)


def on_unexpected_error(request: Request, error: Exception) -> Response[bytes]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return problem_response(500, "internal_error", "the ingress failed; see its log")
