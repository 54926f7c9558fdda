"""JetStream writes confirmed by the server, for hot paths.

The same request as nats-py's `js.publish` and `kv.create`/`kv.update`, for less CPU: the
runner writes every run record this way, the scheduler its timers, ticks and ledger. The
request is a `wire` command and its answer comes to a `wire` subscription; it is decoded by one
reused msgspec decoder instead of `json.loads` plus a dataclass built field by field, and a
request costs neither a NUID nor a `wait_for` (see `Writer`).
"""

import asyncio
import itertools
from typing import Any, NamedTuple

import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError

from shared import wire

WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
"""JetStream error codes of a failed compare-and-swap (`Nats-Expected-Last-Subject-Sequence`)."""
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
_IF_LAST = f"NATS/1.0\r\n{EXPECTED_LAST_SUBJECT_SEQUENCE}: %d\r\n\r\n".encode()
"""The header block of `put_if_last`, for its expected revision."""
NO_RESPONDERS = "503"
TIMEOUT = 5.0
"""Seconds to wait for the server's answer (nats-py's JetStream default)."""
DEADLINE_SLOT = 0.25
"""Seconds of deadlines that share one timer (how late a timeout may fire)."""


class Prepared(NamedTuple):
    """A write in its wire form (`Writer.prepare`), with the token its answer comes back to."""

    token: str
    command: bytes


class _Error(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    error: _Error | None = None


_answer = msgspec.json.Decoder(_PubAck)


class Writer:
    """Confirmed JetStream writes over one connection, with one reply subscription.

    nats-py's `request` spends a NUID, random bytes, a `wait_for` (a second future and
    callbacks) and a callback closure on every request; here a request is a counter and a
    future. Deadlines are kept per `DEADLINE_SLOT`: one timer expires every request of its slot
    still unanswered, instead of a timer per request. Open it with `await Writer.open(nc)`.
    """

    def __init__(self, nc: Client, prefix: str, timeout: float = TIMEOUT) -> None:
        self._loop = asyncio.get_running_loop()
        """The loop it runs on (asking for it on each write costs a system call, `getpid`)."""
        self._nc = nc
        self._prefix = prefix
        self._timeout = timeout
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._counter = itertools.count()
        self._slots: dict[int, list[str]] = {}
        """Deadline slot -> the tokens of the requests that time out with it."""

    @classmethod
    async def open(cls, nc: Client, timeout: float = TIMEOUT) -> "Writer":
        writer = cls(nc, f"{nc.new_inbox()}.", timeout)
        await wire.subscribe(nc, f"{writer._prefix}*", writer._on_reply)
        return writer

    def _on_reply(
        self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None
    ) -> None:
        future = self._pending.pop(subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if headers and headers.get(wire.STATUS) == NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            answer = _answer.decode(data)
        except msgspec.DecodeError as error:
            future.set_exception(APIError(description=f"not a JetStream answer: {error}"))
            return
        if answer.error is None:
            future.set_result(answer.seq)
        elif answer.error.err_code in WRONG_LAST_SEQUENCE:
            future.set_exception(KeyWrongLastSequenceError(description=answer.error.description))
        else:
            future.set_exception(
                APIError(
                    code=answer.error.code,
                    err_code=answer.error.err_code,
                    description=answer.error.description,
                )
            )

    def publish(
        self, subject: str, payload: bytes, headers: dict[str, Any] | None = None
    ) -> "asyncio.Future[int]":
        """Store `payload` on `subject` in its stream; await what this returns for its stream
        sequence (the write is sent at once, as `send` does: await it, even when giving up).

        Raises nats-py's `MaxPayloadError` for a payload over the server's limit (nothing is
        sent). What it returns raises `KeyWrongLastSequenceError` when an expected last
        sequence did not hold, nats-py's `APIError` for any other refusal,
        `NoStreamResponseError` when no stream takes the subject and nats-py's `TimeoutError`
        without an answer in time. A future, not a coroutine: on the runner's path, every
        coroutine between a write and its answer is stepped through twice per run.
        """
        wire.check_size(self._nc, payload)
        return self.send(self.prepare(subject, payload, headers))

    def _awaited(self, token: str) -> "asyncio.Future[int]":
        """The future the answer to `token` resolves, failed by `_expire` if none comes in time
        (between `timeout` and `timeout + DEADLINE_SLOT` from now)."""
        loop = self._loop
        future: asyncio.Future[int] = loop.create_future()
        self._pending[token] = future
        slot = int((loop.time() + self._timeout) / DEADLINE_SLOT) + 1
        tokens = self._slots.get(slot)
        if tokens is None:
            tokens = self._slots[slot] = []
            loop.call_at(slot * DEADLINE_SLOT, self._expire, slot)
        tokens.append(token)
        return future

    def put_if_last(self, bucket: str, key: str, value: bytes, last: int) -> "asyncio.Future[int]":
        """KV compare-and-swap: write `value` under `key` if its revision is `last` (0: if
        the key has no value); what this returns gives the new revision, or raises
        `KeyWrongLastSequenceError` (see `publish`). Every run record is written this way:
        its command is built in one step, not through `publish`'s layers."""
        wire.check_size(self._nc, value)
        token = str(next(self._counter))
        head = _IF_LAST % last
        wire.send(self._nc, wire.headed(f"$KV.{bucket}.{key}", value, self._prefix + token, head))
        return self._awaited(token)

    def prepare(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> "Prepared":
        """The wire form of a `publish`, built ahead of the moment it is sent (`send`)."""
        token = str(next(self._counter))
        return Prepared(token, wire.command(subject, payload, self._prefix + token, headers))

    def send(self, prepared: "Prepared") -> "asyncio.Future[int]":
        """Put a prepared write on the wire now (no await: a batch of them due at the same
        moment leaves in one socket write) and return what awaits its answer (as `publish`).

        Each prepared write is sent once. Await what it returns, even when giving up on it.
        """
        wire.send(self._nc, prepared.command)
        return self._awaited(prepared.token)

    def flush(self) -> None:
        """See `wire.flush`."""
        wire.flush(self._nc)

    def _expire(self, slot: int) -> None:
        """Fail the requests of deadline `slot` that are still unanswered."""
        for token in self._slots.pop(slot, ()):
            future = self._pending.pop(token, None)
            if future is not None and not future.done():
                future.set_exception(NatsTimeoutError())
