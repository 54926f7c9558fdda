"""Wiring of the registry: NATS connection, KV store, request subscriptions."""

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts import subjects
from services.registry.adapters import JetStreamAuditLog, KvRegistryStore
from services.registry.core import Registry
from services.registry.handlers import answer, routes
from services.registry.settings import RegistrySettings
from shared import broker
from shared.metrics import Readiness
from shared.webhook_secrets import SecretBox

log = logging.getLogger(__name__)

MAX_CONCURRENT_REQUESTS = 256


class RegistryApp:
    """Answers `registry.v1.*` requests in the `registry` queue group (run as many as you like)."""

    def __init__(self, settings: RegistrySettings) -> None:
        self.settings = settings
        self.limits = settings.quota_limits()  # an unusable limit stops the start, not a request
        self._nc: Client | None = None
        self._subscription: Subscription | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self.readiness = Readiness()

    async def start(self) -> None:
        self._nc = await broker.connect(self.settings.nats_url, "registry")
        js = self._nc.jetstream()
        await broker.ensure_topology(js, self.settings.nats_replicas)
        box = SecretBox.from_setting(self.settings.webhook_secret_key)
        registry = Registry(
            KvRegistryStore(js),
            limits=self.limits,
            secret_box=box,
            audit_log=JetStreamAuditLog(js),
        )
        table = routes(registry)

        async def on_request(msg: Msg) -> None:
            # Requests are answered concurrently: a slow one never holds up the others.
            await self._slots.acquire()
            task = asyncio.create_task(answer(table, msg))
            self._in_flight.add(task)
            task.add_done_callback(self._done)

        self._subscription = await self._nc.subscribe(
            f"{subjects.REGISTRY_PREFIX}.>", queue=subjects.REGISTRY_QUEUE, cb=on_request
        )
        self._observe(self._nc)

    def _observe(self, nc: Client) -> None:
        """Readiness checks (`/readyz`): connected, and answering requests."""
        self.readiness.require("nats", lambda: nc.is_connected)
        self.readiness.require("subscribed", lambda: self._subscription is not None)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=10)
        if self._nc is not None:
            await self._nc.drain()


def create_app(settings: RegistrySettings) -> RegistryApp:
    return RegistryApp(settings)
