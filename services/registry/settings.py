"""Registry settings, read from the environment."""

import msgspec

from services.registry.quotas import QuotaLimits, parse_overrides


class RegistrySettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server to connect to (`NATS_URL`)."""
    nats_replicas: int = 1
    """Replicas of the streams and buckets this service creates; 3 in production."""
    registry_max_triggers: int = 1_000
    """Most triggers a workspace may have (`REGISTRY_MAX_TRIGGERS`)."""
    registry_max_flows: int = 500
    """Most flows a workspace may have."""
    registry_max_api_keys: int = 100
    """Most API keys a workspace may have, admin keys included."""
    registry_max_schedule_fires_per_hour: int = 36_000
    """Most fires an hour of a workspace's enabled schedules, each counted at its busiest hour
    (36,000 is 10 a second: ten every-second schedules, or 600 every-minute ones)."""
    registry_quota_overrides: str = ""
    """Limits of some workspaces that differ from the above: comma-separated
    `<workspace id>.<quota>=<limit>` (quotas: triggers, flows, api_keys,
    schedule_fires_per_hour)."""

    webhook_secret_key: str = ""
    """Key that seals webhook signing secrets at rest (AES-GCM; 32 bytes in base64, the same
    on the registry and the ingress; several comma-separated keys: the first seals, each
    opens). Empty: webhook triggers cannot be created (`make run` makes one)."""

    def quota_limits(self) -> QuotaLimits:
        """The limits these settings give (raises ValueError for an unusable one)."""
        return QuotaLimits(
            defaults={
                "triggers": self.registry_max_triggers,
                "flows": self.registry_max_flows,
                "api_keys": self.registry_max_api_keys,
                "schedule_fires_per_hour": self.registry_max_schedule_fires_per_hour,
            },
            overrides=parse_overrides(self.registry_quota_overrides),
        )
