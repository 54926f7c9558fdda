"""What the ingress holds while it runs: its NATS connection, directory and registry client."""

import asyncio
import hashlib
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.registry import ApiKey, KeyUsed, Reply
from contracts.runs import TERMINAL_STATUSES, CancelRun, FlowStart, IdempotentStart, Run, RunEvent
from services.ingress import access
from services.ingress.directory import Directory
from services.ingress.problems import ApiError
from services.ingress.registry_client import RegistryClient
from services.ingress.settings import IngressSettings
from shared.codec import decode, decoder, encode
from shared.ids import is_valid_id
from shared.kv import read_one, read_prefix

KEY_TOUCH_INTERVAL = 60.0
"""Seconds between two `last used` reports for the same key."""
MAX_IDEMPOTENCY_KEY_LENGTH = 255


class Ingress:
    def __init__(
        self,
        settings: IngressSettings,
        nc: Client,
        directory: Directory,
        runs: KeyValue,
        idempotency: KeyValue | None = None,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.directory = directory
        self.runs = runs
        self.idempotency = idempotency
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
                subjects.flow_start(start.workspace_id),
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

    async def follow(self, workspace_id: str, run_id: str) -> Subscription:
        """Subscribe to a run's events; do it before publishing its start, so none is missed."""
        return await self.nc.subscribe(subjects.run_events(workspace_id, run_id))

    async def wait_for_end(
        self, events: Subscription, workspace_id: str, run_id: str, wait: float
    ) -> Run | None:
        """The run's final record if it ends within `wait` seconds, else its latest (or None)."""
        latest: Run | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await events.next_msg(timeout=left)
            except (NatsTimeoutError, TimeoutError):
                break
            try:
                latest = decode(msg.data, RunEvent).run
            except msgspec.DecodeError:
                continue
            if latest is not None and latest.status in TERMINAL_STATUSES:
                return latest
        # An event may have gone to a runner's crash: the record is the truth.
        return await self.find_run(workspace_id, run_id) or latest

    async def find_run(self, workspace_id: str, run_id: str) -> Run | None:
        found = await read_one(self.runs, subjects.run_key(workspace_id, run_id), Run)
        return found[0] if found is not None else None

    async def claim_idempotency_key(
        self, workspace_id: str, key: str, flow_id: str, body: bytes, run_id: str
    ) -> tuple[str, bool]:
        """The run id for this key: `(run_id, False)` for a new key, `(the original run id,
        True)` for a repeated one with the same flow and body; a different body is refused."""
        if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise ApiError(
                400,
                "invalid_idempotency_key",
                f"Idempotency-Key must hold 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters",
            )
        assert self.idempotency is not None
        storage_key = f"{workspace_id}.{hashlib.sha256(key.encode()).hexdigest()}"
        digest = hashlib.sha256(body).hexdigest()
        record = IdempotentStart(
            run_id=run_id, flow_id=flow_id, body_digest=digest, created_at=datetime.now(UTC)
        )
        try:
            await self.idempotency.create(storage_key, encode(record))
            return run_id, False
        except KeyWrongLastSequenceError:
            pass
        entry = await self.idempotency.get(storage_key)
        original: IdempotentStart = decode(entry.value or b"", IdempotentStart)
        if original.flow_id != flow_id or original.body_digest != digest:
            raise ApiError(
                422,
                "idempotency_key_reused",
                f"Idempotency-Key {key!r} was used at {original.created_at.isoformat()} for run "
                f"{original.run_id} with a different "
                f"{'flow' if original.flow_id != flow_id else 'body'}; use a new key for a new "
                "request",
            )
        return original.run_id, True

    async def cancel(self, workspace_id: str, run_id: str) -> Run:
        request = CancelRun(workspace_id=workspace_id, run_id=run_id)
        try:
            msg = await self.nc.request(
                subjects.RUN_CANCEL, encode(request), timeout=self.settings.registry_timeout
            )
        except NoRespondersError as error:
            raise ApiError(503, "runner_unavailable", "no runner is running") from error
        except NatsTimeoutError as error:
            raise ApiError(504, "runner_timeout", "no runner answered in time") from error
        reply: Reply[Any] = decoder(Reply[Run]).decode(msg.data)
        if reply.error is not None:
            raise ApiError.from_problem(reply.error)
        cancelled: Run = reply.ok
        return cancelled

    # --- runs ------------------------------------------------------------------------------

    async def run(self, workspace_id: str, run_id: str) -> Run:
        run = await self.find_run(workspace_id, run_id) if is_valid_id(run_id) else None
        if run is None:
            raise ApiError(
                404,
                "run_not_found",
                f"no run {run_id!r} in this workspace (a start accepted a moment ago appears "
                "once a runner has received it)",
            )
        return run

    async def runs_of(self, workspace_id: str) -> list[Run]:
        """Every run of a workspace, newest first."""
        runs = await read_prefix(self.js, subjects.RUNS_BUCKET, workspace_id, Run)
        runs.sort(key=lambda r: r.id, reverse=True)
        return runs
