"""The ingress's local, read-only view of registry state, fed by watching the registry's KV.

It answers the hot path's questions (whose key is this? whose flow? which API triggers?) with
dictionary lookups, never a round trip.
"""

from nats.js import JetStreamContext

from contracts import subjects
from contracts.registry import ApiKey, Flow, Trigger
from shared.kv_mirror import KvMirror


class Directory:
    def __init__(self) -> None:
        self._key_by_digest: dict[str, ApiKey] = {}
        self._flow_by_id: dict[str, Flow] = {}
        self._triggers_by_flow: dict[str, dict[str, Trigger]] = {}
        self.mirrors: list[KvMirror[ApiKey] | KvMirror[Flow] | KvMirror[Trigger]] = []

    async def open(self, js: JetStreamContext) -> None:
        """Create the mirrors (run each one's `follow` under supervision)."""
        self.mirrors = [
            KvMirror(js, subjects.API_KEYS_BUCKET, ApiKey, self._on_key),
            KvMirror(js, subjects.FLOWS_BUCKET, Flow, self._on_flow),
            KvMirror(js, subjects.TRIGGERS_BUCKET, Trigger, self._on_trigger),
        ]

    @property
    def ready(self) -> bool:
        return bool(self.mirrors) and all(m.ready.is_set() for m in self.mirrors)

    async def catch_up(self, timeout: float = 1.0) -> None:
        """Wait until every write the registry made before now is visible here."""
        for mirror in self.mirrors:
            await mirror.catch_up(timeout)

    def key(self, digest: str) -> ApiKey | None:
        return self._key_by_digest.get(digest)

    def flow(self, flow_id: str) -> Flow | None:
        return self._flow_by_id.get(flow_id)

    def triggers_of(self, flow_id: str) -> list[Trigger]:
        return list(self._triggers_by_flow.get(flow_id, {}).values())

    def _on_key(self, _: str, old: ApiKey | None, new: ApiKey | None) -> None:
        if old is not None:
            self._key_by_digest.pop(old.digest, None)
        if new is not None:
            self._key_by_digest[new.digest] = new

    def _on_flow(self, _: str, old: Flow | None, new: Flow | None) -> None:
        if old is not None:
            self._flow_by_id.pop(old.id, None)
        if new is not None:
            self._flow_by_id[new.id] = new

    def _on_trigger(self, _: str, old: Trigger | None, new: Trigger | None) -> None:
        if old is not None:
            self._triggers_by_flow.get(old.flow_id, {}).pop(old.id, None)
        if new is not None:
            self._triggers_by_flow.setdefault(new.flow_id, {})[new.id] = new
