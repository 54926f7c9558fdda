"""Registry settings, read from the environment."""

import msgspec


class RegistrySettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server to connect to (`NATS_URL`)."""
    nats_replicas: int = 1
    """Replicas of the streams and buckets this service creates; 3 in production."""
