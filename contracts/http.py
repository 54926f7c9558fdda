"""HTTP bodies of the ingress that are not registry records (those live in `registry`)."""

from datetime import datetime
from typing import Any, Literal

from msgspec import Struct

# The bodies of the run history (answered by the history service) are HTTP bodies too.
from contracts.history import RunPage as RunPage
from contracts.history import RunStats as RunStats
from contracts.registry import QuotaExceeded
from contracts.runs import RunStatus


class ProblemDetails(Struct, frozen=True, kw_only=True):
    """Every HTTP error (RFC 9457 problem details, `application/problem+json`)."""

    status: int
    code: str
    """Stable machine-readable code, such as `flow_not_found` or `invalid_key`."""
    title: str
    detail: str
    type: str = "about:blank"


class UnusableProblem(ProblemDetails, frozen=True, kw_only=True):
    """A `422` problem: well-formed values that cannot be used. When a workspace limit refused
    the request (`quota_exceeded`), `quota` names it, with its value and the workspace's use."""

    quota: QuotaExceeded | None = None


class StartAccepted(Struct, frozen=True, kw_only=True):
    """`202` answer of `POST /trigger/{flow_id}` and of Run now: the start is durably stored
    (and the run did not end within the wait)."""

    run_id: str
    status: RunStatus
    status_url: str


class RunSucceeded(Struct, frozen=True, kw_only=True):
    """`200` answer of `POST /trigger/{flow_id}` and of Run now when the run succeeded within
    the wait."""

    run_id: str
    status: RunStatus
    status_url: str
    result: Any = None
    duration_seconds: float | None = None


class RunNotSucceeded(Struct, frozen=True, kw_only=True):
    """The answer of `POST /trigger/{flow_id}` and of Run now when the run ended within the
    wait without succeeding: a problem document (`application/problem+json`) with the run's
    details.

    `502 run_failed` (the flow raised or answered an error; `error` says what: the upstream the
    ingress waited for failed, not the platform), `504 run_timed_out` (longer than the flow's
    timeout), `409 run_cancelled`, `409 run_skipped` (the trigger's overlap policy skipped it).
    The run is not started again by the platform; a caller that retries every 5xx should send
    `Prefer: respond-async` and read the run from `status_url`.
    """

    status: int
    code: str
    title: str
    detail: str
    type: str = "about:blank"
    run_id: str
    run_status: RunStatus
    status_url: str
    error: str | None = None


class HealthStatus(Struct, frozen=True, kw_only=True):
    """`GET /health`: `200` with `ok` once the ingress has loaded the registry's state and is
    connected to NATS, else `503` with `starting`."""

    status: Literal["ok", "starting"]
    nats: bool
    """Whether the ingress is connected to NATS right now."""


# --- webhook deliveries (`POST /hooks/{trigger_id}`) -------------------------------------------


class DeliveryIgnored(Struct, frozen=True, kw_only=True):
    """`200` answer to a verified delivery that starts nothing: an event the trigger does not
    accept, or a GitHub `ping`."""

    ignored: Literal[True] = True
    reason: Literal["event_not_accepted", "ping"]
    event: str | None = None


class DeliveryRepeated(Struct, frozen=True, kw_only=True):
    """`200` answer to a delivery whose id the trigger has seen before (a sender's retry): no
    new run; `run_id` is the run the first delivery started."""

    repeated: Literal[True] = True
    run_id: str
    status: RunStatus | None = None
    """The run's status now (None while no runner has taken the start yet)."""
    status_url: str


WebhookRefusalCode = Literal["invalid_signature", "stale_timestamp", "missing_header"]


class WebhookRefusal(Struct, frozen=True, kw_only=True):
    """One refused delivery (never with its body or signature)."""

    at: datetime
    status: int
    code: WebhookRefusalCode
    detail: str
    delivery_id: str | None = None
    remote: str | None = None
    """The sender's address as the ingress saw it."""


class WebhookRefusals(Struct, frozen=True, kw_only=True):
    """`GET /v1/triggers/{id}/refusals`: how many deliveries the trigger refused, by code,
    and the latest ones, newest first (written by the ingress; the bucket keeps a trigger's
    record 30 days after its last refusal)."""

    trigger_id: str
    total: int = 0
    by_code: dict[str, int] = {}
    latest: list[WebhookRefusal] = []
