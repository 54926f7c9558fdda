"""The runner's settings, read from the environment (`NATS_URL`, `RUNNER_FLOWS`, ...)."""

from typing import Annotated

import msgspec

AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]


class RunnerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the runner can be configured with."""

    nats_url: str = "nats://127.0.0.1:4222"
    """Where the NATS server (or cluster) with JetStream listens."""
    runner_flows: str = ""
    """Comma-separated modules to import for their flows, such as `mypkg.flows,other.flows`."""
    runner_concurrency: AtLeastOne = 16
    """How many `flow.start` messages one replica works on at the same time."""
    nats_replicas: AtLeastOne = 1
    """Replicas of every stream and bucket this service creates (3 in production)."""

    @property
    def flow_modules(self) -> list[str]:
        """`runner_flows` as a list of module names."""
        return [name.strip() for name in self.runner_flows.split(",") if name.strip()]
