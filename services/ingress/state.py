"""What the ingress holds while it runs: its NATS connection, directory and registry client."""

import asyncio
import secrets
import time
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.registry import ApiKey, KeyUsed
from contracts.runs import FlowStart, Run
from services.ingress import access
from services.ingress.directory import Directory
from services.ingress.problems import ApiError
from services.ingress.registry_client import RegistryClient
from services.ingress.settings import IngressSettings
from shared.codec import decode, encode
from shared.ids import is_valid_id
from shared.kv import read_prefix

KEY_TOUCH_INTERVAL = 60.0
"""Seconds between two `last used` reports for the same key."""


class Ingress:
    def __init__(
        self, settings: IngressSettings, nc: Client, directory: Directory, runs: KeyValue
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.directory = directory
        self.runs = runs
        self.registry = RegistryClient(nc, settings.registry_timeout)
        self._touched: dict[str, float] = {}
        self.background: set[asyncio.Task[None]] = set()

    # --- authentication --------------------------------------------------------------------

    async def key_from(self, authorization: str | None) -> ApiKey:
        try:
            key = access.authenticate(authorization, self.directory.key)
        except ApiError as error:
            if error.code not in access.MAYBE_STALE:
                raise
            await self.directory.catch_up()
            key = access.authenticate(authorization, self.directory.key)
        self._note_use(key)
        return key

    def check_operator(self, authorization: str | None) -> None:
        expected = self.settings.operator_token
        if not expected:
            raise ApiError(
                403, "operator_disabled", "set OPERATOR_TOKEN on the ingress to create workspaces"
            )
        secret = access.bearer_secret(authorization)
        if not secrets.compare_digest(secret.encode(), expected.encode()):
            raise ApiError(401, "invalid_operator_token", "the operator token is not valid")

    def _note_use(self, key: ApiKey) -> None:
        now = time.monotonic()
        if now - self._touched.get(key.id, -KEY_TOUCH_INTERVAL) < KEY_TOUCH_INTERVAL:
            return
        self._touched[key.id] = now
        event = KeyUsed(workspace_id=key.workspace_id, key_id=key.id, used_at=datetime.now(UTC))
        task = asyncio.create_task(self.registry.tell(subjects.KEY_TOUCH, event))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # --- starting flows --------------------------------------------------------------------

    async def start(self, start: FlowStart) -> None:
        """Store the start durably in JetStream (deduplicated on the run id)."""
        try:
            await self.js.publish(
                subjects.FLOW_START,
                encode(start),
                stream=subjects.FLOW_STARTS_STREAM,
                headers={"Nats-Msg-Id": start.run_id},
            )
        except Exception as error:
            raise ApiError(
                503,
                "start_not_stored",
                f"the start could not be stored ({type(error).__name__}); nothing was started, "
                "retry",
            ) from error

    # --- runs ------------------------------------------------------------------------------

    async def run(self, workspace_id: str, run_id: str) -> Run:
        entry = None
        if is_valid_id(run_id):
            try:
                entry = await self.runs.get(subjects.run_key(workspace_id, run_id))
            except KeyNotFoundError:
                entry = None
        if entry is None or not entry.value:
            raise ApiError(
                404,
                "run_not_found",
                f"no run {run_id!r} in this workspace (a start accepted a moment ago appears "
                "once a runner has received it)",
            )
        run: Run = decode(entry.value, Run)
        return run

    async def runs_of(self, workspace_id: str) -> list[Run]:
        """Every run of a workspace, newest first."""
        runs = await read_prefix(self.runs, workspace_id, Run)
        runs.sort(key=lambda r: r.id, reverse=True)
        return runs
