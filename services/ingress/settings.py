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
    public_url: str = ""
    """The address clients reach the ingress at, such as `https://flows.example.com`: the base
    of `Location` and `status_url`. Empty: `http://<INGRESS_HOST>:<INGRESS_PORT>`. Never taken
    from a request's `Host` header, which the client chooses."""
    operator_token: str = ""
    """Bearer token for `POST /v1/workspaces`; empty disables that endpoint."""
    registry_timeout: float = 5.0
    """Seconds to wait for a registry reply before answering 504."""
    history_timeout: float = 5.0
    """Seconds to wait for a history reply (run lists and stats) before answering 504."""
    max_body_bytes: int = 524_288
    """Largest accepted request body (the flow input of a trigger call), answered `413` above.
    Half of NATS's max payload (1 MiB) less room: a run record holds the input and a result
    as large (an `echo`), with its own fields; raise it only with the server's `max_payload`."""
    auth_failures_per_minute: float = 60.0
    """Failed authentications with a well-formed key that is not valid one source address
    (an IPv6 one by its /64) may make a minute, after a burst of `auth_failure_burst`; more
    answer `429` with `Retry-After` until the budget refills, without any lookup. Valid keys
    from that address keep working. Per ingress worker process; 0: no limit."""
    auth_failure_burst: int = 30
    """Failed authentications one source address may make at once before its rate applies."""
    key_failures_per_minute: float = 6.0
    """Failed authentications one key (revoked or never issued) may make a minute, from any
    address, after a burst of `key_failure_burst`; more answer `429`. 0: no limit."""
    key_failure_burst: int = 10
    """Failed authentications one key may make at once before its rate applies."""
    unknown_key_seconds: float = 60.0
    """Seconds a key found not to exist is answered `401` from memory, with no round trip; a
    key created meanwhile works at once (its arrival clears it). 0: never remembered."""
    auth_tracked_entries: int = 100_000
    """Most addresses, keys and unknown keys each of the tables above remembers (the least
    recently used is forgotten first): the memory they take is bounded."""
    store_retry_seconds: float = 10.0
    """How long storing a start is retried (a JetStream leader election takes 5-7 s) before
    the call answers `503 start_not_stored`."""

    webhook_secret_key: str = ""
    """Key that opens the webhook triggers' signing secrets (the registry's
    `WEBHOOK_SECRET_KEY`); without it a delivery is answered `503`."""

    @property
    def base_url(self) -> str:
        """`public_url` without its trailing slash, or the one the listening address gives."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.ingress_host
        if host in ("0.0.0.0", "::", ""):  # listening everywhere: no address names us
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.ingress_port}"
