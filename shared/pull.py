"""Pulling from a durable JetStream consumer as work slots free up, without nats-py's `fetch`.

nats-py's `fetch` takes each message off a queue with `next_msg`, which creates two tasks, a
uuid and a timer per message (about 40 µs on this machine, more than a no-op run's own work).
Here one pull request at a time asks for as many messages as there are free slots; the server
delivers them to a `wire` subscription, which hands each to `dispatch` as it is read (a
`wire.Delivered`, whose acks cost no nats-py publish). The request ends when all its messages
came, or with the server's status (404/408 when it expires, 409 or 503 on trouble), or locally
after `expires` plus a margin (its server restarted and forgot it).

`delivery` reads what a handler needs of a delivered message (sequence, deliveries, stored
time) without nats-py's `Msg.metadata` objects.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg

from shared import wire
from shared.codec import encode

log = logging.getLogger(__name__)

HEARTBEAT = "100"
DESCRIPTION = "Description"
REFUSALS = frozenset({"409", "503"})
"""Statuses that end a pull request without its messages because of trouble (a consumer
setting, a leader change, JetStream not ready yet), not because it ran out of time or work."""
MARGIN = 1.0
"""Seconds past a request's expiry after which it is given up without its status."""


class Puller:
    """Keeps a durable consumer's messages flowing into `dispatch`, at most `capacity()` at a
    time (the slots free for new work). `freed` is set whenever a slot frees up."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        *,
        capacity: Callable[[], int],
        dispatch: Callable[[Msg], None],
        least: int = 1,
        expires: float = 0.5,
    ) -> None:
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._capacity = capacity
        self._dispatch = dispatch
        self._least = least
        self._expires = expires
        self.freed = asyncio.Event()
        self._asked = 0
        self._answered = asyncio.Event()
        self._stopping = False
        self._request = 0
        """Number of the current pull request: its answers come to `<inbox>.<number>`."""
        self._refusal: str | None = None
        """Why the server refused the current request (its 409 or 503), or None."""

    def _on_message(
        self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None
    ) -> None:
        if headers:
            status = headers.get(wire.STATUS)
            if status is not None:
                # A status comes to the request's own reply subject (messages keep their own
                # subject): the status of an earlier request, given up locally, says nothing
                # of this one.
                current = subject.endswith(f".{self._request}")
                if current and status != HEARTBEAT:  # over: expired, nothing left, or refused
                    if status in REFUSALS:
                        self._refusal = f"{status} {headers.get(DESCRIPTION) or ''}".strip()
                    self._asked = 0
                    self._answered.set()
                return
        self._asked -= 1
        if self._asked <= 0:
            self._answered.set()
        msg = wire.delivered(self._nc, subject, reply, data, headers)
        if self._stopping:
            # Stopping: hand it straight back rather than let it sit out its ack wait.
            with contextlib.suppress(Exception):
                msg.nak_now()
            return
        self._dispatch(msg)

    async def run(self) -> None:
        """Pull until cancelled; then let the last request run out, handing back what it
        brings."""
        inbox = self._nc.new_inbox()
        subscription = await wire.subscribe(self._nc, f"{inbox}.*", self._on_message)
        expires_ns = int(self._expires * 1e9)
        refused_in_a_row = 0
        try:
            while True:
                free = self._capacity()
                if free < self._least:
                    self.freed.clear()
                    await self.freed.wait()
                    continue
                self._request += 1
                self._asked = free
                self._refusal = None
                self._answered.clear()
                request = encode({"batch": free, "expires": expires_ns})
                await self._nc.publish(self._subject, request, reply=f"{inbox}.{self._request}")
                await self._answer()
                if self._refusal is None:
                    refused_in_a_row = 0
                    continue
                # Refused (a 409, or a 503 while JetStream comes back after a restart): pause,
                # longer while it lasts, then ask again. Each request starts with a clean slate.
                pause = min(self._expires, 0.01 * 2**refused_in_a_row)
                refused_in_a_row += 1
                if refused_in_a_row in (1, 10) or refused_in_a_row % 100 == 0:
                    log.warning(
                        "pull request refused by the server (%s), %d in a row; pulling again",
                        self._refusal,
                        refused_in_a_row,
                    )
                await asyncio.sleep(pause)
        finally:
            self._stopping = True
            if self._asked > 0:
                with contextlib.suppress(BaseException):
                    await self._answer()
            with contextlib.suppress(Exception):
                await wire.unsubscribe(self._nc, subscription)

    async def _answer(self) -> None:
        """Wait for the current request to end (locally given up if its answer never comes)."""
        # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` swallows a cancellation
        # that lands as the event is set, and the pull loop then never stopped (a stop hung
        # now and then in the tests, seen in an asyncio task dump).
        try:
            async with asyncio.timeout(self._expires + MARGIN):
                await self._answered.wait()
        except TimeoutError:
            self._asked = 0


class Delivery(NamedTuple):
    """What the server says of one delivery of a JetStream message (from its reply subject)."""

    stream_sequence: int
    delivered: int
    """How many times the message has been delivered, this time included (1: the first)."""
    stored_at: float
    """When the server stored the message, in seconds since the epoch."""


_V1_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>


def delivery(msg: Msg) -> Delivery:
    """`msg`'s delivery facts: the few `msg.metadata` fields a hot path needs, for a third of
    its cost (no datetime, no nested objects). Raises ValueError for a non-JetStream message."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) < _V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError(f"not a JetStream delivery: {msg.reply!r}")
    # v2 adds the domain and the account hash after `ACK` (and a random token at the end).
    first = 4 if len(tokens) == _V1_TOKENS else 6
    return Delivery(
        stream_sequence=int(tokens[first + 1]),
        delivered=int(tokens[first]),
        stored_at=int(tokens[first + 3]) / 1e9,
    )
