"""HTTP bodies of the ingress that are not registry records (those live in `registry`)."""

from msgspec import Struct

from contracts.runs import Run, RunStatus


class ProblemDetails(Struct, frozen=True, kw_only=True):
    """Every HTTP error (RFC 9457 problem details, `application/problem+json`)."""

    status: int
    code: str
    """Stable machine-readable code, such as `flow_not_found` or `invalid_key`."""
    title: str
    detail: str
    type: str = "about:blank"


class StartAccepted(Struct, frozen=True, kw_only=True):
    """`202` answer of `POST /trigger/{flow_id}` and of Run now: the start is durably stored."""

    run_id: str
    status: RunStatus
    status_url: str


class RunPage(Struct, frozen=True, kw_only=True):
    """`GET /v1/runs`: runs newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[Run]
    next_cursor: str | None = None
