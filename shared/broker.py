"""NATS wiring common to every service: connecting, the JetStream topology, dead letters."""

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import ParseResult

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import AuthorizationError
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.audit import AUDIT_RETENTION_DAYS
from contracts.runs import DeadLetter
from shared import metrics, wire
from shared.codec import encode
from shared.settings import NatsConnectionSettings, from_environment

log = logging.getLogger(__name__)

DAY = timedelta(days=1).total_seconds()
HOUR = timedelta(hours=1).total_seconds()
FUNCTION_ANNOUNCEMENT_TTL = 120.0
"""Seconds an announced flow function stays listed after its last announcement."""


def server_urls(url: str) -> list[str]:
    """The servers named by a `NATS_URL`: one URL, or several separated by commas (the nodes
    of a cluster, so a service starts and reconnects while any one of them is down)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("NATS_URL names no server: use nats://host:4222[,nats://host2:4222]")
    for server in servers:
        scheme, separator, _ = server.partition("://")
        if separator and scheme not in ("nats", "tls", "ws", "wss"):
            raise ValueError(
                f"NATS_URL {server!r}: use nats://, tls://, ws:// or wss:// (or host:port)"
            )
    return servers


def inbox_prefix(settings: NatsConnectionSettings, name: str) -> str:
    """The prefix of a connection's reply subjects: `NATS_INBOX_PREFIX`, else `_INBOX_<name>`.

    A server can then let each service user subscribe to `_INBOX_<service>.>` only: with the
    shared `_INBOX.>`, any client could read every reply, the registry's new keys among them.
    """
    return settings.nats_inbox_prefix or f"_INBOX_{name}"


def tls_context(settings: NatsConnectionSettings) -> ssl.SSLContext | None:
    """The TLS context the settings describe; None when they name no TLS file (a `tls://`
    URL still gets TLS, with the system's CAs)."""
    if not settings.tls:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=settings.nats_tls_ca_file or None
    )
    if settings.nats_tls_cert_file:
        context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
    return context


def connect_options(settings: NatsConnectionSettings, name: str) -> dict[str, Any]:
    """The `nats.connect` arguments that authenticate and secure a connection: credentials,
    TLS and the inbox prefix (see `NatsConnectionSettings`)."""
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(settings, name)}
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    if settings.nats_token:
        options["token"] = settings.nats_token
    if settings.nats_nkey_seed_file:
        options["nkeys_seed"] = settings.nats_nkey_seed_file
    if settings.nats_creds_file:
        options["user_credentials"] = settings.nats_creds_file
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    if settings.nats_tls_hostname:
        options["tls_hostname"] = settings.nats_tls_hostname
    return options


class NatsRefused(ConnectionError):
    """NATS refused this service's TLS or credentials: a setting to fix, not a wait to retry."""


class _PlaintextServer(NatsError):
    """A server without TLS, for a client configured to use it."""


class _TlsOnlyClient(wire.Client):
    """A client that never sends its credentials in clear when TLS is configured.

    nats-py upgrades a connection to TLS only when the server's INFO says `tls_required`, even
    with a TLS context or a `tls://` URL: a server without TLS (or anyone in the middle
    rewriting INFO) would otherwise receive the CONNECT, password included, in plain text.
    """

    def _connect_command(self) -> bytes:
        server = self._current_server
        wants_tls = "tls" in self.options or (server is not None and server.uri.scheme == "tls")
        upgraded = self.options["tls_handshake_first"] or self._server_info.get("tls_required")
        if wants_tls and not upgraded:
            raise _PlaintextServer(
                "TLS is configured but the server offers no TLS: credentials not sent"
            )
        return super()._connect_command()


def refusal(error: Exception) -> str | None:
    """What to fix when `error` ends a first connection for good (a certificate, TLS or the
    credentials); None when it may pass (no server listening yet, a timeout)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate was not accepted ({error.verify_message}): "
            "check NATS_TLS_CA_FILE and NATS_TLS_HOSTNAME"
        )
    if isinstance(error, ssl.SSLError) and "ALERT" in (getattr(error, "reason", None) or ""):
        # The server ended the handshake with an alert: it wants a (different) client certificate.
        return (
            f"TLS: the server refused the handshake ({error.reason}): "
            "check NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE"
        )
    if isinstance(error, _PlaintextServer):
        return f"TLS: {error}: check NATS_URL and the server's tls block"
    if isinstance(error, AuthorizationError) or (
        isinstance(error, NatsError) and "authorization violation" in str(error).lower()
    ):
        return (
            "the server refused the credentials (authorization violation): check NATS_USER and "
            "NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED_FILE or NATS_CREDS_FILE"
        )
    return None


PROBE_WITHIN = 2.0
"""Seconds `tls_refusal_of` may take to ask a server why it dropped a TLS connection."""


def dropped(error: Exception) -> bool:
    """Whether `error` is a connection the server closed (a broken pipe, a reset)."""
    return isinstance(error, BrokenPipeError | ConnectionResetError)


async def tls_refusal_of(
    uri: ParseResult, context: ssl.SSLContext, hostname: str | None = None
) -> str | None:
    """Why the server at `uri` dropped a TLS connection, asked directly: what to fix (as
    `refusal` says it), or None if it sends no alert (it went away for another reason).

    With TLS 1.3 a server checks the client's certificate after the client's side of the
    handshake is over, then sends an alert and closes. nats-py writes its CONNECT at once, and
    when the server has closed by then it sees a broken pipe, not the alert: the refusal
    looked like a server going away and was retried until the first connection's deadline.
    Here the client reads after the handshake instead, and gets the alert.
    """
    try:
        async with asyncio.timeout(PROBE_WITHIN):
            reader, writer = await asyncio.open_connection(uri.hostname, uri.port or 4222)
            try:
                await reader.readline()  # the server's INFO, in clear
                await writer.start_tls(context, server_hostname=hostname or uri.hostname)
                await reader.read(1)
            finally:
                writer.close()
    except ssl.SSLError as error:
        return refusal(error)
    except (OSError, TimeoutError):
        return None
    return None


async def connect(
    url: str,
    name: str,
    first_attempt_for: float = 30.0,
    *,
    on_reconnected: Callable[[], None] | None = None,
    settings: NatsConnectionSettings | None = None,
) -> Client:
    """Connect to any server of `url` (see `server_urls`), retrying the first connection for
    `first_attempt_for` seconds, and reconnecting forever afterwards (to whichever server
    answers).

    Credentials and TLS come from `settings`, by default from the environment (`NATS_USER`,
    `NATS_PASSWORD`, `NATS_TOKEN`, `NATS_NKEY_SEED_FILE`, `NATS_CREDS_FILE`, `NATS_TLS_*`).
    A first connection that a server refuses for its certificate, TLS or credentials raises
    `NatsRefused` at once, saying which; one no server answers in time raises `TimeoutError`.
    """
    servers = server_urls(url)
    security = connect_options(
        from_environment(NatsConnectionSettings) if settings is None else settings, name
    )
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    last_error: list[Exception] = []

    async def on_error(error: Exception) -> None:
        log.warning("nats connection error (%s): %s", name, error)
        if not attempt.done() and not refused.done():  # the first connection only
            last_error[:] = [error]
            reason = refusal(error)
            server = client._current_server
            if reason is None and "tls" in security and server is not None and dropped(error):
                reason = await tls_refusal_of(
                    server.uri, security["tls"], security.get("tls_hostname")
                )
            if reason is not None and not refused.done():
                refused.set_result(reason)

    async def on_disconnected() -> None:
        log.warning("nats disconnected (%s)", name)
        metrics.NATS_DISCONNECTS.labels(name).inc()

    async def reconnected() -> None:
        log.info("nats reconnected (%s)", name)
        metrics.NATS_RECONNECTS.labels(name).inc()
        if on_reconnected is not None:
            on_reconnected()

    _count_connection_events_of(name)
    client = _TlsOnlyClient()
    # nats-py retries a first connection forever when reconnects are unbounded (and says why
    # only to `error_cb`), so the deadline and the refusals are watched here.
    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        # Bounds a shutdown: draining waits for in-flight callbacks at most this long.
        "drain_timeout": 5,
        "allow_reconnect": True,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": reconnected,
        **security,
    }
    attempt = asyncio.ensure_future(client.connect(**options))
    watched: set[asyncio.Future[Any]] = {attempt, refused}
    await asyncio.wait(watched, timeout=first_attempt_for, return_when=asyncio.FIRST_COMPLETED)
    if attempt.done():
        attempt.result()
        return client
    attempt.cancel()
    with contextlib.suppress(asyncio.CancelledError, NatsError):
        await attempt
    with contextlib.suppress(NatsError, OSError):
        await client.close()
    if refused.done():
        raise NatsRefused(f"{name} cannot connect to NATS at {url}: {refused.result()}")
    refused.cancel()
    cause = f": {last_error[0]}" if last_error else ""
    raise TimeoutError(
        f"no NATS server of {url} accepted {name!r} in {first_attempt_for:.0f}s{cause}"
    )


def _count_connection_events_of(name: str) -> None:
    """Show the connection's reconnect and disconnect counts from the start (at 0)."""
    metrics.NATS_RECONNECTS.labels(name)
    metrics.NATS_DISCONNECTS.labels(name)


START_DUPLICATE_WINDOW = timedelta(minutes=10)
"""How long `FLOW_STARTS` remembers a `Nats-Msg-Id` to drop a repeated publish of it."""


def stream_configs(replicas: int = 1) -> list[StreamConfig]:
    """Every stream of the trigger plane (KV buckets come from `bucket_configs`)."""
    return [
        StreamConfig(
            name=subjects.FLOW_STARTS_STREAM,
            # The unversioned subject is deprecated; kept one more version for outside publishers.
            subjects=[subjects.FLOW_STARTS, subjects.FLOW_START_UNVERSIONED],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=START_DUPLICATE_WINDOW.total_seconds(),
        ),
        StreamConfig(
            name=subjects.RUN_EVENTS_STREAM,
            subjects=[f"{subjects.RUN_EVENT_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=DAY,
        ),
        StreamConfig(
            name=subjects.DEAD_LETTERS_STREAM,
            subjects=[f"{subjects.DEAD_LETTER_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=30 * DAY,
        ),
        StreamConfig(
            name=subjects.SCHEDULES_STREAM,
            subjects=[f"{subjects.SCHEDULE_TIMER_PREFIX}.>", f"{subjects.SCHEDULE_TICK_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            allow_msg_schedules=True,
            # One parked timer per trigger: parking a new one replaces the old.
            max_msgs_per_subject=1,
        ),
        StreamConfig(
            name=subjects.SCHEDULE_FIRES_STREAM,
            subjects=[f"{subjects.SCHEDULE_FIRE_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=30 * DAY,
            # One subject per trigger: this bounds every trigger's ledger.
            max_msgs_per_subject=subjects.LEDGER_ENTRIES_PER_TRIGGER,
            duplicate_window=timedelta(minutes=10).total_seconds(),
        ),
        StreamConfig(
            name=subjects.AUDIT_STREAM,
            subjects=[f"{subjects.AUDIT_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=AUDIT_RETENTION_DAYS * DAY,
            # Longer than the registry retries a publish: a retried entry is stored once.
            duplicate_window=timedelta(minutes=2).total_seconds(),
        ),
    ]


def bucket_configs(replicas: int = 1) -> list[KeyValueConfig]:
    """Every KV bucket of the trigger plane."""
    registry_buckets = [
        subjects.WORKSPACES_BUCKET,
        subjects.API_KEYS_BUCKET,
        subjects.FLOWS_BUCKET,
        subjects.TRIGGERS_BUCKET,
    ]
    return [
        *(KeyValueConfig(bucket=name, history=1, replicas=replicas) for name in registry_buckets),
        KeyValueConfig(bucket=subjects.RUNS_BUCKET, history=1, replicas=replicas, ttl=30 * DAY),
        KeyValueConfig(bucket=subjects.RUN_SLOTS_BUCKET, history=1, replicas=replicas),
        KeyValueConfig(
            bucket=subjects.IDEMPOTENCY_BUCKET, history=1, replicas=replicas, ttl=25 * HOUR
        ),
        KeyValueConfig(
            bucket=subjects.WEBHOOK_REFUSALS_BUCKET, history=1, replicas=replicas, ttl=30 * DAY
        ),
        KeyValueConfig(
            bucket=subjects.FLOW_FUNCTIONS_BUCKET,
            history=1,
            replicas=replicas,
            ttl=FUNCTION_ANNOUNCEMENT_TTL,
        ),
    ]


async def ensure_topology(js: JetStreamContext, replicas: int = 1) -> None:
    """Create (or bring up to date) every stream and bucket; safe for every replica to call.

    A stream an older version created with other settings (the unversioned subjects of
    `FLOW_STARTS` and `RUN_EVENTS`, for instance) is updated in place: the server refuses to
    create it again with a different configuration, and `update_stream` takes the new one.
    """
    for config in stream_configs(replicas):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
    for bucket in bucket_configs(replicas):
        await js.create_key_value(bucket)


async def bucket(js: JetStreamContext, name: str) -> KeyValue:
    """An existing KV bucket (see `ensure_topology`)."""
    return await js.key_value(name)


MAX_QUOTED_CHARS = 16 * 1024
"""Characters of a rejected body a dead letter quotes. Escaped as JSON a character takes at
most six bytes (`\\u0000`), so a letter stays far below NATS's max payload whatever it quotes:
a letter too large to publish would leave its message handed back forever."""
MAX_QUOTED_HEADERS = 32
"""Headers a dead letter quotes, each value cut to `MAX_QUOTED_HEADER_CHARS`."""
MAX_QUOTED_HEADER_CHARS = 1024
MAX_REASON_CHARS = 4096

MAX_DELIVER = 20
"""Deliveries of a message a consumer allows (its `max_deliver`) when handing a message back
is a failure (ticks, run events): the handler dead-letters it on the last one, so it ends."""


def is_last_delivery(delivered: int, max_deliver: int) -> bool:
    """Whether a delivery counted `delivered` (1: the first) is the last one `max_deliver`
    allows: a message handed back now would never come back, so it is dead-lettered instead."""
    return max_deliver > 0 and delivered >= max_deliver


def dead_letter(msg: Msg, reason: str, service: str, now: datetime | None = None) -> DeadLetter:
    """The dead letter recording `msg`: what it quotes is cut so it always fits in one NATS
    message (see `MAX_QUOTED_CHARS`)."""
    text = msg.data.decode("utf-8", errors="replace")
    headers = {
        name: value[:MAX_QUOTED_HEADER_CHARS]
        for name, value in list((msg.headers or {}).items())[:MAX_QUOTED_HEADERS]
    }
    return DeadLetter(
        subject=msg.subject[:MAX_QUOTED_HEADER_CHARS],
        reason=reason[:MAX_REASON_CHARS],
        payload=text[:MAX_QUOTED_CHARS],
        headers=headers,
        service=service,
        rejected_at=now or datetime.now(UTC),
        payload_bytes=len(msg.data),
        truncated=len(text) > MAX_QUOTED_CHARS,
    )


async def reject(js: JetStreamContext, msg: Msg, reason: str, service: str) -> None:
    """Record `msg` with `reason` as a dead letter, then terminate it so it never comes back."""
    letter = dead_letter(msg, reason, service)
    await js.publish(subjects.dead_letter(msg.subject), encode(letter))
    log.warning("rejected a message on %s: %s", letter.subject, letter.reason[:200])
    await msg.term()
