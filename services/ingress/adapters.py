"""The ingress's NATS side: what it holds while it runs (its connection, the directory of
registry state, the registry and runner clients) and how it stores starts, follows runs and
reads the ledger. Errors that reach a caller become `ApiError`s here.
"""

import asyncio
import contextlib
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.history import ListRuns, RunPage, RunStats, RunStatsQuery
from contracts.registry import (
    MAX_LIST_LIMIT,
    ApiKey,
    Flow,
    KeyUsed,
    ListTriggers,
    Trigger,
    TriggerPage,
    WebhookTrigger,
)
from contracts.runs import TERMINAL_STATUSES, CancelRun, FlowStart, IdempotentStart, Run, RunEvent
from contracts.scheduling import FireRecord
from services.ingress import core, webhooks
from services.ingress.auth_guard import FailureLimits, TokenBuckets, UnknownKeys, address_of
from services.ingress.problems import ApiError, body_too_large
from services.ingress.settings import IngressSettings
from shared import api_keys, tracing
from shared.codec import decode, decoder, encode
from shared.ids import is_valid_id
from shared.kv import read_one
from shared.kv_mirror import KvMirror
from shared.rpc import RemoteProblem, ServiceClient, ServiceTimeout, ServiceUnavailable
from shared.stream_read import read_subject
from shared.supervise import retried_within
from shared.webhook_secrets import SecretBox

T = TypeVar("T")


class ServiceCalls:
    """A service's request/reply API, its errors as the `ApiError`s the HTTP API answers:
    the service's own problem, `503 <service>_unavailable`, `504 <service>_timeout`."""

    def __init__(self, client: ServiceClient) -> None:
        self._client = client

    async def call(self, subject: str, request: msgspec.Struct, result: type[T]) -> T:
        service = self._client.service
        try:
            return await self._client.call(subject, request, result)
        except RemoteProblem as error:
            raise ApiError.from_problem(error.problem) from error
        except ServiceUnavailable as error:
            raise ApiError(503, f"{service}_unavailable", f"{error}; retry later") from error
        except ServiceTimeout as error:
            raise ApiError(504, f"{service}_timeout", str(error)) from error

    async def tell(self, subject: str, event: msgspec.Struct) -> None:
        await self._client.tell(subject, event)


# --- the directory: registry state in memory, for the hot path ----------------------------


class Directory:
    """The ingress's local, read-only view of registry state, fed by watching the registry's
    KV buckets: the hot path's questions (whose key is this? whose flow? which API triggers?)
    are dictionary lookups, never a round trip."""

    def __init__(
        self, unknown_keys: UnknownKeys | None = None, secret_box: SecretBox | None = None
    ) -> None:
        if unknown_keys is None:  # remembers nothing
            unknown_keys = UnknownKeys(0.0, 0, time.monotonic)
        self.unknown_keys = unknown_keys
        """Keys found not to exist (see `auth_guard`): a key that appears leaves it at once."""
        self._key_by_digest: dict[str, ApiKey] = {}
        self._flow_by_id: dict[str, Flow] = {}
        self._triggers_by_flow: dict[str, dict[str, Trigger]] = {}
        self._secret_box = secret_box
        self._hooks: dict[str, webhooks.Endpoint] = {}
        """Webhook triggers by id, their secrets opened once here, never per delivery."""
        self.mirrors: list[KvMirror[ApiKey] | KvMirror[Flow] | KvMirror[Trigger]] = []

    async def open(self, js: JetStreamContext) -> None:
        """Create the mirrors (run each one's `follow` under supervision)."""
        self._keys = KvMirror(js, subjects.API_KEYS_BUCKET, ApiKey, self._on_key)
        self.mirrors = [
            self._keys,
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

    async def catch_up_keys(self, timeout: float = 1.0) -> bool:
        """Wait until every key the registry wrote before now is visible here (one round trip:
        the keys bucket only); False if that took longer than `timeout`."""
        return await self._keys.catch_up(timeout)

    def key(self, digest: str) -> ApiKey | None:
        return self._key_by_digest.get(digest)

    def flow(self, flow_id: str) -> Flow | None:
        return self._flow_by_id.get(flow_id)

    def triggers_of(self, flow_id: str) -> list[Trigger]:
        return list(self._triggers_by_flow.get(flow_id, {}).values())

    def hook(self, trigger_id: str) -> webhooks.Endpoint | None:
        return self._hooks.get(trigger_id)

    def _on_key(self, _: str, old: ApiKey | None, new: ApiKey | None) -> None:
        if old is not None:
            self._key_by_digest.pop(old.digest, None)
            if old.previous_digest is not None:
                self._key_by_digest.pop(old.previous_digest, None)
        if new is not None:
            self._key_by_digest[new.digest] = new
            self.unknown_keys.discard(new.digest)
            if new.previous_digest is not None:
                # The secret a rotation replaced, until its grace ends (checked per request).
                self._key_by_digest[new.previous_digest] = new

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
        if old is not None:
            self._hooks.pop(old.id, None)
        if isinstance(new, WebhookTrigger):
            self._hooks[new.id] = webhooks.open_endpoint(new, self._secret_box)


# --- the ledger of a schedule trigger --------------------------------------------------------

READ_TIMEOUT = 2.0
"""Seconds to wait for the stored entries of one trigger."""


async def read_ledger(js: JetStreamContext, workspace_id: str, trigger_id: str) -> list[FireRecord]:
    """Every stored entry of the trigger (at most `LEDGER_ENTRIES_PER_TRIGGER`), oldest first;
    what came within `READ_TIMEOUT` if the rest is slow to come."""
    subject = subjects.schedule_fire(workspace_id, trigger_id)
    decode = decoder(FireRecord).decode
    entries: list[FireRecord] = []
    reads = read_subject(
        js, subjects.SCHEDULE_FIRES_STREAM, subject, timeout=READ_TIMEOUT, partial=True
    )
    try:
        async with contextlib.aclosing(reads) as batches:
            async for batch in batches:
                for message in batch:
                    with contextlib.suppress(msgspec.DecodeError):
                        entries.append(decode(message.data))
    except NotFoundError:
        return []  # no ledger stream yet: nothing was ever decided
    return entries


# --- the ingress's connection and what it does with it -------------------------------------

PUBLISH_TIMEOUT = 5.0
START_FIELDS = 4096
"""Bytes a start adds to its input (ids, times): its input may take `max_body_bytes`."""
"""Seconds one JetStream publish waits for its acknowledgement (nats-py's default)."""
KEY_TOUCH_INTERVAL = 60.0
"""Seconds between two `last used` reports for the same key."""
MAX_IDEMPOTENCY_KEY_LENGTH = 255


@dataclass(frozen=True, kw_only=True)
class Unsettled:
    """A well-formed key the directory misses, admitted by the failure limits (a token of each
    spent): only a lookup settles it (`Ingress.key_after_lookup`)."""

    secret: str
    digest: str
    address: str
    refusal: ApiError
    """The answer if it turns out not to exist."""


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
        self.runs_url = f"{settings.base_url}/v1/runs/"
        """The base of a run's status URL (worked out once: every start answers with one)."""
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.directory = directory
        self.runs = runs
        self.idempotency = idempotency
        self.registry = ServiceCalls(ServiceClient(nc, "registry", settings.registry_timeout))
        self.runner = ServiceCalls(ServiceClient(nc, "runner", settings.registry_timeout))
        self.history = ServiceCalls(ServiceClient(nc, "history", settings.history_timeout))
        self._touched: dict[str, float] = {}
        self.failures = FailureLimits(
            TokenBuckets(
                settings.auth_failures_per_minute,
                settings.auth_failure_burst,
                settings.auth_tracked_entries,
                time.monotonic,
            ),
            TokenBuckets(
                settings.key_failures_per_minute,
                settings.key_failure_burst,
                settings.auth_tracked_entries,
                time.monotonic,
            ),
        )
        self._flows: KeyValue | None = None
        self.background: set[asyncio.Task[None]] = set()

    # --- authentication --------------------------------------------------------------------

    async def key_from(self, authorization: str | None, client: str | None = None) -> ApiKey:
        """The key behind the header, from the directory (no round trip); a well-formed key it
        misses is looked up once more after the key mirror caught up, unless `client` (the
        source address) or the key is over its limit of failures, or the key is known not to
        exist: see `auth_guard`."""
        found = self.key_now(authorization, client)
        return found if isinstance(found, ApiKey) else await self.key_after_lookup(found)

    def key_now(self, authorization: str | None, client: str | None = None) -> ApiKey | Unsettled:
        """`key_from` as far as it goes without a round trip: the key the directory holds, or
        the refusal raised (malformed, over a limit of failures, known not to exist), or the
        key only a lookup can settle (admitted by the limits: `key_after_lookup` goes on)."""
        secret = core.bearer_secret(authorization)
        digest = api_keys.digest(secret)
        key = self.directory.key(digest)
        if key is None:
            refusal = core.refusal_of_unknown(secret)  # a malformed key is refused here, for free
            address = address_of(client)
            # Decided before any round trip: a request over the limit costs none.
            limited = self.failures.admit(address, digest)
            if limited is not None:
                raise core.too_many_failures(limited, datetime.now(UTC))
            if digest in self.directory.unknown_keys:
                raise refusal
            return Unsettled(secret=secret, digest=digest, address=address, refusal=refusal)
        return self._in_use(key, digest)

    async def key_after_lookup(self, unsettled: Unsettled) -> ApiKey:
        """The key `key_now` could not settle, once the key mirror caught up, or its refusal."""
        caught_up = await self.directory.catch_up_keys()
        key = self.directory.key(unsettled.digest)
        if key is not None:  # created a moment ago: not a failure
            self.failures.refund(unsettled.address, unsettled.digest)
            return self._in_use(key, unsettled.digest)
        if caught_up:  # a mirror that could not catch up proves nothing
            self.directory.unknown_keys.add(unsettled.digest)
        raise unsettled.refusal

    def _in_use(self, key: ApiKey, digest: str) -> ApiKey:
        if key.expires_at is not None or key.digest != digest:  # time decides: no round trip
            key = core.unexpired(key, digest, datetime.now(UTC))
        self._note_use(key)
        return key

    def check_operator(self, authorization: str | None) -> None:
        expected = self.settings.operator_token
        if not expected:
            raise ApiError(
                403, "operator_disabled", "set OPERATOR_TOKEN on the ingress to create workspaces"
            )
        secret = core.bearer_secret(authorization)
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
        """Store the start durably in JetStream (deduplicated on the run id), retrying for up to
        `store_retry_seconds` through faults that pass (a leader election, a reconnect): a
        repeated publish with the same `Nats-Msg-Id` stores it once."""
        subject = subjects.flow_start(start.workspace_id)
        payload = encode(start)
        if len(payload) > self.settings.max_body_bytes + START_FIELDS:
            # The input grew when encoded again (`1e9` is written `1000000000.0`).
            raise body_too_large(
                self.settings.max_body_bytes,
                f"the input, encoded as the start stores it, is {len(payload)} bytes",
            )
        headers = {"Nats-Msg-Id": start.run_id}
        tracing.carry(headers)

        async def publish(timeout: float) -> None:
            await self.js.publish(
                subject,
                payload,
                timeout=timeout,
                stream=subjects.FLOW_STARTS_STREAM,
                headers=headers,
            )

        budget = self.settings.store_retry_seconds
        started = time.monotonic()
        try:
            # The usual case: one publish, no retry machinery on the hot path.
            await publish(min(budget, PUBLISH_TIMEOUT))
        except Exception:
            left = budget - (time.monotonic() - started)
            try:
                await retried_within(
                    f"storing start {start.run_id}", lambda: publish(PUBLISH_TIMEOUT), left
                )
            except Exception as error:
                raise ApiError(
                    503,
                    "start_not_stored",
                    f"the start could not be stored ({type(error).__name__}) within "
                    f"{self.settings.store_retry_seconds:g}s; nothing was started, retry",
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

    async def flow_and_triggers(
        self, workspace_id: str, flow_id: str
    ) -> tuple[Flow | None, list[Trigger]]:
        """A flow and its triggers read from their source, not the directory: the flows bucket
        and the registry (for a miss the directory cannot settle)."""
        if not is_valid_id(flow_id) or not is_valid_id(workspace_id):
            return None, []
        if self._flows is None:
            self._flows = await self.js.key_value(subjects.FLOWS_BUCKET)
        found = await read_one(self._flows, subjects.record_key(workspace_id, flow_id), Flow)
        if found is None:
            return None, []
        request = ListTriggers(workspace_id=workspace_id, flow_id=flow_id, limit=MAX_LIST_LIMIT)
        page = await self.registry.call(subjects.TRIGGER_LIST, request, TriggerPage)
        return found[0], page.items

    async def find_run(self, workspace_id: str, run_id: str) -> Run | None:
        found = await read_one(self.runs, subjects.run_key(workspace_id, run_id), Run)
        return found[0] if found is not None else None

    async def claim_start(
        self, storage_key: str, record: IdempotentStart, not_stored: str
    ) -> IdempotentStart | None:
        """Store `record` under `storage_key` in the idempotency bucket unless one is there
        already: None when ours is new, else the record found (a repeat). Retried like the
        start itself: a create whose answer was lost finds its own record on the next try,
        with the same run id, and goes on as a repeat. `503 start_not_stored` (`not_stored`,
        with `%s` for the error's kind) when NATS does not take it in time."""
        assert self.idempotency is not None
        idempotency = self.idempotency
        stored: bytes | None = None

        async def claim() -> None:
            nonlocal stored
            try:
                await idempotency.create(storage_key, encode(record))
                stored = None
            except KeyWrongLastSequenceError:
                stored = (await idempotency.get(storage_key)).value or b""

        try:
            await retried_within(
                f"storing the start of run {record.run_id} under {storage_key}",
                claim,
                self.settings.store_retry_seconds,
            )
        except Exception as error:  # NATS trouble: nothing was started
            raise ApiError(503, "start_not_stored", not_stored % type(error).__name__) from error
        return None if stored is None else decode(stored, IdempotentStart)

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
        storage_key = f"{workspace_id}.{hashlib.sha256(key.encode()).hexdigest()}"
        digest = hashlib.sha256(body).hexdigest()
        record = IdempotentStart(
            run_id=run_id, flow_id=flow_id, body_digest=digest, created_at=datetime.now(UTC)
        )
        original = await self.claim_start(
            storage_key,
            record,
            f"the Idempotency-Key could not be stored (%s) within "
            f"{self.settings.store_retry_seconds:g}s; nothing was started, retry with the "
            "same key",
        )
        if original is None:
            return run_id, False
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
        return await self.runner.call(subjects.RUN_CANCEL, request, Run)

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

    async def list_runs(self, query: ListRuns) -> RunPage:
        """A page of runs from the history service (never a read of the whole bucket)."""
        if query.q and self.idempotency is not None:
            # An Idempotency-Key is not in the run record: the run it started is found here.
            run_id = await self.idempotent_run(query.workspace_id, query.q)
            if run_id is not None:
                query = msgspec.structs.replace(query, q_run_id=run_id)
        return await self.history.call(subjects.HISTORY_RUNS_LIST, query, RunPage)

    async def run_stats(self, query: RunStatsQuery) -> RunStats:
        return await self.history.call(subjects.HISTORY_RUNS_STATS, query, RunStats)

    async def idempotent_run(self, workspace_id: str, key: str) -> str | None:
        """The run an Idempotency-Key started (within the 25 hours keys are kept), or None."""
        if self.idempotency is None or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            return None
        storage_key = f"{workspace_id}.{hashlib.sha256(key.encode()).hexdigest()}"
        try:
            found = await read_one(self.idempotency, storage_key, IdempotentStart)
        except Exception:  # a search without the key is still an answer
            return None
        return found[0].run_id if found is not None else None
