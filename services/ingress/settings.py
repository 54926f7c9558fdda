"""Ingress settings, read from the environment."""

import msgspec


class IngressSettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server to connect to (`NATS_URL`)."""
    nats_replicas: int = 1
    """Replicas of the streams and buckets this service creates; 3 in production."""
    ingress_host: str = "127.0.0.1"
    """Address the HTTP server listens on."""
    ingress_port: int = 8000
    """Port the HTTP server listens on."""
    ingress_workers: int = 1
    """HTTP worker processes (each holds its own NATS connection and caches)."""
    operator_token: str = ""
    """Bearer token for `POST /v1/workspaces`; empty disables that endpoint."""
    registry_timeout: float = 5.0
    """Seconds to wait for a registry reply before answering 504."""
    history_timeout: float = 5.0
    """Seconds to wait for a history reply (run lists and stats) before answering 504."""
    max_body_bytes: int = 1_048_576
    """Largest accepted request body (the flow input of a trigger call)."""
    store_retry_seconds: float = 10.0
    """How long storing a start is retried (a JetStream leader election takes 5-7 s) before
    the call answers `503 start_not_stored`."""
