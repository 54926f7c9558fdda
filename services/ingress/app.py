"""Wiring of the ingress: the Litestar app, its NATS connection and directory."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components
from litestar.types import ASGIApp
from nats.errors import Error as NatsError

from contracts import subjects
from services.ingress import (
    audit,
    console,
    docs,
    handlers,
    hooks,
    operations,
    problems,
    tracing,
)
from services.ingress.adapters import Directory, Ingress
from services.ingress.auth_guard import UnknownKeys
from services.ingress.front_door import front_door
from services.ingress.settings import IngressSettings
from shared import broker
from shared import tracing as shared_tracing
from shared.service import CollectorSettings, configure_logging, tune_collector
from shared.settings import from_environment
from shared.supervise import supervised
from shared.webhook_secrets import SecretBox

READY_TIMEOUT = 30.0


def create_app(settings: IngressSettings) -> Litestar:
    @asynccontextmanager
    async def connected(app: Litestar) -> AsyncIterator[None]:
        nc = await broker.connect(settings.nats_url, "ingress")
        js = nc.jetstream()
        await broker.ensure_topology(js, settings.nats_replicas)
        directory = Directory(
            UnknownKeys(
                settings.unknown_key_seconds, settings.auth_tracked_entries, time.monotonic
            ),
            SecretBox.from_setting(settings.webhook_secret_key),
        )
        await directory.open(js)
        loops = [
            asyncio.create_task(supervised(f"ingress mirror {i}", mirror.follow))
            for i, mirror in enumerate(directory.mirrors)
        ]
        await asyncio.wait_for(
            asyncio.gather(*(m.ready.wait() for m in directory.mirrors)), READY_TIMEOUT
        )
        app.state.ingress = Ingress(
            settings,
            nc,
            directory,
            await js.key_value(subjects.RUNS_BUCKET),
            await js.key_value(subjects.IDEMPOTENCY_BUCKET),
        )
        app.state.hooks = hooks.Hooks(
            hooks.RefusalLog(await js.key_value(subjects.WEBHOOK_REFUSALS_BUCKET))
        )
        try:
            yield
        finally:
            await app.state.hooks.refusals.settled()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await nc.drain()

    app = Litestar(
        route_handlers=[
            *handlers.ROUTES,
            *hooks.ROUTES,
            *audit.ROUTES,
            *operations.ROUTES,
            docs.assets_router(),
            docs.asyncapi_document,
            docs.redoc_bundle,
            *console.ROUTES,
        ],
        # Tracing outermost, so that a request's span covers the time the metrics count.
        middleware=[*tracing.middleware(), operations.http_metrics],
        lifespan=[connected],
        dependencies={
            "ingress": Provide(handlers.provide_ingress, sync_to_thread=False),
        },
        exception_handlers=operations.noting_problems(
            {
                problems.ApiError: problems.on_api_error,
                ValidationException: problems.on_validation_error,
                HTTPException: problems.on_http_error,
                NatsError: problems.on_nats_error,
                RecursionError: problems.on_too_deep,
                Exception: problems.on_unexpected_error,
            }
        ),
        openapi_config=OpenAPIConfig(
            title="Trigger plane",
            version="1.0.0",
            path=docs.SCHEMA_PATH,
            render_plugins=docs.render_plugins(),
            components=Components(security_schemes=docs.SECURITY_SCHEMES),
            description="Workspaces, API keys, flows, triggers and runs; `POST /trigger/{flow_id}`"
            " starts a flow through its API trigger.",
        ),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
    )
    docs.close_strict_bodies(app)
    docs.state_retry_after(app)
    return app


def create_app_from_environment() -> ASGIApp:
    """Factory for the HTTP server (each worker process builds its own app), behind the front
    door that refuses forged keys before the framework sees them."""
    configure_logging("ingress")  # a worker process does not inherit the server's handlers
    shared_tracing.configure("ingress")
    app = front_door(create_app(from_environment(IngressSettings)))
    tune_collector(from_environment(CollectorSettings))  # what the worker imported and built
    return app
