"""The runner's settings, read from the environment (`NATS_URL`, `RUNNER_FLOWS`, ...)."""

from typing import Annotated

import msgspec

AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
Positive = Annotated[float, msgspec.Meta(gt=0)]


class RunnerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the runner can be configured with."""

    nats_url: str = "nats://127.0.0.1:4222"
    """Where the NATS server (or cluster) with JetStream listens."""
    runner_flows: str = ""
    """Comma-separated modules to import for their flows, such as `mypkg.flows,other.flows`."""
    runner_concurrency: AtLeastOne = 16
    """How many flow start messages one replica works on at the same time."""
    runner_reserved_slots: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Slots of one replica that only a workspace holding less than an even share of the slots
    may take (see the README's "Fair share between workspaces"): a workspace alone fills the
    others, and another workspace's start finds one of these free. Unset: an eighth of
    `runner_concurrency`, at least one; 0: any workspace may take every slot."""
    runner_workspace_concurrency: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Runs of one workspace going at the same time across every replica (0: no limit); a
    start over it waits for a slot like a start over its flow's `concurrency`. Give every
    replica the same value."""
    runner_workspace_limits: str = ""
    """Per-workspace exceptions to `runner_workspace_concurrency`, such as
    `ws_a=4,ws_b=0` (0: no limit for that workspace)."""
    runner_ack_wait: Positive = 30.0
    """Seconds JetStream waits for an ack or an in-progress beat before it hands a start to
    another replica (runs beat every third of it). Give every replica the same value: the last
    one to start sets it on the shared consumer."""
    runner_stop_grace: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """Seconds a stopping runner (SIGTERM) lets its runs finish before handing them back."""
    runner_record_running_after: Annotated[float, msgspec.Meta(ge=0)] = 0.1
    """Seconds a fresh start that needs no admission runs before its `running` record is
    written: a run that ends sooner gets one write, its final record (see the README's
    "Exactly one final run per accepted start")."""
    runner_http_allowed_networks: str = ""
    """Comma-separated networks (CIDR) HTTP flows may call although they are loopback,
    private or link-local, such as `10.0.0.0/8,127.0.0.1/32`. Empty: public addresses only."""
    runner_http_max_response_bytes: AtLeastOne = 262_144
    """Bytes of a response body (after decompression) an HTTP flow reads; a larger one fails
    the attempt before it is all read. Keep it well below NATS's max payload: it becomes the
    run's result."""
    runner_announce_interval: Positive = 30.0
    """Seconds between two announcements of this runner's flow functions to the registry."""
    runner_max_deliver: AtLeastOne = 100_000
    """Deliveries of one start the runner's consumer allows (`max_deliver`); the last one is
    dead-lettered with its reason instead of handed back. A run waiting for a concurrency slot
    is handed back about every 0.3 s and each counts: the default lets one wait about 8 hours."""
    nats_replicas: AtLeastOne = 1
    """Replicas of every stream and bucket this service creates (3 in production)."""

    @property
    def workspace_limits(self) -> dict[str, int]:
        """`runner_workspace_limits` as a dict (raises ValueError for a malformed entry)."""
        limits: dict[str, int] = {}
        for entry in self.runner_workspace_limits.split(","):
            if not entry.strip():
                continue
            workspace_id, separator, limit = entry.partition("=")
            if not separator or not workspace_id.strip() or int(limit) < 0:
                raise ValueError(f"RUNNER_WORKSPACE_LIMITS: not `<workspace>=<limit>`: {entry!r}")
            limits[workspace_id.strip()] = int(limit)
        return limits

    @property
    def flow_modules(self) -> list[str]:
        """`runner_flows` as a list of module names."""
        return [name.strip() for name in self.runner_flows.split(",") if name.strip()]
