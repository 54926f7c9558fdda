"""Messages on the hot paths, read and written below nats-py's per-message machinery.

nats-py hands each message of a callback subscription to that subscription's task through a
queue (a task step and a coroutine per message) and builds every command it sends through
checks meant for any caller's headers. For the runner's three writes and two reads per run
that machinery cost more than the run. Here:

- `Client` hands the messages of a `subscribe`d subject to a plain function from the
  connection's read loop itself, decoded as nats-py would (its header parsing, done here by
  `header_lines` for blocks without a status), with no queue, task or `Msg` in between. Every
  other subscription works as in nats-py.
- `command` builds a `PUB`/`HPUB` command and `send` buffers it for the connection's flusher,
  the way nats-py's `publish` does once it built one (and with its refusals while closed,
  draining or reconnecting with a full buffer). No await: commands sent in one turn of the
  event loop leave in one socket write, or in writes of `FLUSH_AT` bytes in a busy turn.
- `Delivered` is a JetStream delivery whose acks are such commands.

A client that is not a `Client` (a test's, from `nats.connect`) still works: `subscribe` then
falls back to an ordinary callback subscription. These use nats-py 2.16's internals (its
`_process_msg` and `_process_headers`, its `_status`, its command buffer `_pending` and
`_flush_queue`, a subscription's `_id`), pinned in pyproject.toml;
tests/integration/test_wire.py runs them against a real server through both kinds of client.
"""

import asyncio
import re
from collections.abc import Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    OutboundBufferLimitError,
)

Handler = Callable[[str, str, bytes, dict[str, str] | None], None]
"""`(subject, reply, data, headers)` of one message, called as the connection reads it."""

ACK = b"+ACK"
NAK = b"-NAK"
PROGRESS = b"+WPI"
TERM = b"+TERM"
STATUS = "Status"
"""The header nats-py puts a message's inline status in (`404`, `408`, `503`, `100`...)."""
_STATUS_AT = len(b"NATS/1.0")
_SPACE = ord(" ")
"""A header block with an inline status has a space after `NATS/1.0` (`NATS/1.0 408 ...`)."""
_WHITESPACE = re.compile(r"\s")
_CONNECTED = NatsClient.CONNECTED
FLUSH_AT = 64 * 1024
"""Bytes of commands a connection holds before `send` writes them out itself, rather than
leaving them all to nats-py's flusher at the end of the event loop's turn: the server then
works on the first commands of a busy turn while the rest are built. Measured on the runner
(three alternated rounds each, as `make bench-runner-pairs` takes them): one runner 0.63 of the
bare consumer at 64 KiB and 0.64 at 16 KiB against 0.47 without; but two runners, which keep
both cores busy, 0.63 at 64 KiB, 0.48 at 16 KiB and 0.77 without (each write is a system call
on both sides)."""


class Client(NatsClient):
    """nats-py's client, handing the messages of `subscribe`d subjects to their `Handler`."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, Handler] = {}

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        if not headers:
            parsed = None
        elif headers[_STATUS_AT] != _SPACE:  # no inline status: `Name: Value` lines only
            parsed = header_lines(headers)
        else:  # a status (404, 408, 409, a heartbeat...): nats-py's own parsing
            parsed = await self._process_headers(headers)
        handler(subject.decode(), reply.decode(), data, parsed)


def header_lines(block: bytes) -> dict[str, str] | None:
    """The headers of a `NATS/1.0` block without an inline status, as nats-py's
    `_process_headers` reads them (its `_parse_header_lines`: a name that is not ASCII or holds
    whitespace is skipped, values are stripped, invalid UTF-8 is replaced; no headers: None),
    without its coroutine and its generator per header name."""
    found: dict[str, str] = {}
    for line in block.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if _WHITESPACE.search(key) is None:
            found[key] = value.strip().decode("utf-8", "replace")
    return found or None


async def subscribe(nc: NatsClient, subject: str, handler: Handler) -> Subscription:
    """Subscribe `handler` to `subject`: called from the read loop on a `Client`, from an
    ordinary callback subscription on any other client. A handler must not block; what it
    starts that awaits is its own task."""

    async def as_callback(msg: Msg) -> None:  # only a plain client's messages come here
        handler(msg.subject, msg.reply, msg.data, msg.headers)

    subscription = await nc.subscribe(subject, cb=as_callback)
    if isinstance(nc, Client):
        nc._direct[subscription._id] = handler
    return subscription


async def unsubscribe(nc: NatsClient, subscription: Subscription) -> None:
    if isinstance(nc, Client):
        nc._direct.pop(subscription._id, None)
    await subscription.unsubscribe()


def command(
    subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
) -> bytes:
    """The `PUB` (or with `headers`, `HPUB`) command publishing `payload` to `subject`.

    Header names and values are written as given: ours (ids, times, subjects) hold no line
    breaks, which nats-py strips and checks with a regular expression on every write.
    """
    if not headers:
        if reply:
            return b"PUB %s %s %d\r\n%s\r\n" % (
                subject.encode(),
                reply.encode(),
                len(payload),
                payload,
            )
        return b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
    lines = "NATS/1.0\r\n"
    for name, value in headers.items():  # on every write's path: no generator
        lines += f"{name}: {value}\r\n"
    return headed(subject, payload, reply, (lines + "\r\n").encode())


def headed(subject: str, payload: bytes, reply: str, head: bytes) -> bytes:
    """The `HPUB` command publishing `payload` to `subject` with `head`, a header block built
    already (as `command` builds one from a dict): a hot path that always sends the same header
    formats its block in one step instead."""
    if reply:
        return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
            subject.encode(),
            reply.encode(),
            len(head),
            len(head) + len(payload),
            head,
            payload,
        )
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        len(head),
        len(head) + len(payload),
        head,
        payload,
    )


def send(nc: NatsClient, command: bytes) -> None:
    """Buffer `command` for the connection's flusher and wake it: what nats-py's `publish`
    does once it built the command (it keeps the buffer while reconnecting); once `FLUSH_AT`
    bytes are held, write them now (`flush`). Raises as `publish` does while the connection is
    closed or draining, or reconnecting with its buffer full (a payload over the server's limit
    is the caller's to refuse: `check_size`)."""
    size = len(command)
    connected = nc._status == _CONNECTED  # the usual case, in one comparison
    if not connected:
        if nc.is_closed:
            raise ConnectionClosedError
        if nc.is_draining_pubs:
            raise ConnectionDrainingError
        connected = nc.is_connected
        if not connected and (
            nc._max_pending_size <= 0 or nc._pending_data_size + size > nc._max_pending_size
        ):
            raise OutboundBufferLimitError
    nc._pending.append(command)
    nc._pending_data_size += size
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += size
    if connected and nc._pending_data_size >= FLUSH_AT:
        flush(nc)
        return
    flush_queue = nc._flush_queue
    if flush_queue is not None and flush_queue.empty():
        # nats-py's flusher resolves what it takes off its queue.
        flush_queue.put_nowait(asyncio.get_running_loop().create_future())


def check_size(nc: NatsClient, payload: bytes) -> None:
    """Raise nats-py's `MaxPayloadError` for a payload over the server's limit (which would
    close the connection)."""
    if len(payload) > nc._max_payload:
        raise MaxPayloadError


def flush(nc: NatsClient) -> None:
    """Write what the connection holds now, without waiting for its flusher (which runs only
    once the current turn of the event loop is over): the first writes of a large batch are
    then stored while the rest are sent. Kept for the flusher while reconnecting."""
    if nc._pending_data_size and nc.is_connected and nc._transport is not None:
        nc._transport.writelines(nc._pending)
        nc._pending = []
        nc._pending_data_size = 0


class Delivered(Msg):
    """A JetStream message whose acks are sent as `send` commands (nats-py's `Msg` otherwise:
    `subject`, `reply`, `data`, `headers`, `metadata`)."""

    def _answer(self, answer: bytes) -> None:
        send(self._client, b"PUB %s %d\r\n%s\r\n" % (self.reply.encode(), len(answer), answer))

    async def ack(self) -> None:
        self._check_reply()  # nats-py's errors: no reply subject, acknowledged already
        self._answer(ACK)
        self._ackd = True

    async def nak(self, delay: int | float | None = None) -> None:
        self.nak_now(delay)

    def nak_now(self, delay: int | float | None = None) -> None:
        """`nak`, from code that cannot await."""
        self._check_reply()
        self._answer(NAK if not delay else b'%s {"delay":%d}' % (NAK, int(delay * 1e9)))
        self._ackd = True

    async def in_progress(self) -> None:
        if not self.reply:
            self._check_reply()
        self._answer(PROGRESS)

    async def term(self) -> None:
        self._check_reply()
        self._answer(TERM)
        self._ackd = True


def delivered(
    nc: NatsClient, subject: str, reply: str, data: bytes, headers: dict[str, str] | None
) -> Delivered:
    return Delivered(_client=nc, subject=subject, reply=reply, data=data, headers=headers)
