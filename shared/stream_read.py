"""Reading what a stream holds on a subject, once, with consumers that count it first: all of
it oldest first, or the newest few by windows of stream positions."""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Protocol

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError

FETCH_BATCH = 1000
"""Most messages one pull asks for."""
INACTIVE_THRESHOLD = 30.0
"""Seconds after which the server removes a reading consumer this process failed to delete."""
UNSERVED_TRIES = 5
UNSERVED_PAUSE = 0.05
"""Pulls of a consumer just created that are answered `503` (nothing serves it yet) are asked
again, this many times in all, after this many seconds, doubled each time."""


class _Pull(Protocol):
    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list[Msg]: ...


async def fetched(subscription: _Pull, count: int, timeout: float) -> list[Msg]:
    """`subscription.fetch(count, timeout)`, asked again while the server answers that nothing
    serves the consumer (a registry's first read after its start got that `503` for the
    consumer it had just created, and failed a request). Nothing was delivered to such a pull,
    so asking again loses and repeats nothing."""
    pause = UNSERVED_PAUSE
    for _ in range(UNSERVED_TRIES - 1):
        try:
            return await subscription.fetch(count, timeout=timeout)
        except ServiceUnavailableError:
            await asyncio.sleep(pause)
            pause *= 2
    return await subscription.fetch(count, timeout=timeout)


async def read_subject(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    last_per_subject: bool = False,
    timeout: float = 5.0,
    partial: bool = False,
) -> AsyncGenerator[list[Msg], None]:
    """Every message `stream` holds on `subject` (wildcards allowed), oldest first, in
    batches; with `last_per_subject`, only the newest of each subject. Iterate it under
    `contextlib.aclosing`, so that leaving early deletes the consumer at once.

    A consumer counts what it has to deliver when it is created, so the read ends exactly
    after that many, with no guess at when the stream is done. (A KV watch cannot be used for
    this: nats-py marks the end of its replay from a count taken after delivery has begun, and
    under load it marks the end before the first entry.) A pull that waits `timeout` seconds
    for nothing raises TimeoutError, or with `partial` ends the read with what came: messages
    counted and then removed (a timer that went off, a purge) never come.
    """
    consumer = await js.add_consumer(
        stream,
        ConsumerConfig(
            filter_subject=subject,
            deliver_policy=(
                DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else DeliverPolicy.ALL
            ),
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE_THRESHOLD,
            mem_storage=True,
        ),
    )
    remaining = consumer.num_pending or 0
    try:
        if remaining:
            subscription = await js.pull_subscribe_bind(stream=stream, name=consumer.name)
            try:
                while remaining > 0:
                    try:
                        batch = await fetched(subscription, min(remaining, FETCH_BATCH), timeout)
                    except TimeoutError:
                        if partial:
                            break
                        raise
                    remaining -= len(batch)
                    yield batch
            finally:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, consumer.name)


# --- Newest first, in bounded windows ------------------------------------------------------

FIRST_WINDOW = 256
"""Stream positions the first window of `read_newest` spans (it doubles while they hold too
few matches)."""
DENSE = 4
"""A window holding more than this many times the matches still wanted is split first: a
read never holds more than that many messages of one window."""


class _Window:
    """A consumer that starts at one stream position: it counts, when created, the messages on
    its subject from there on, and hands them out oldest first."""

    def __init__(self, js: JetStreamContext, stream: str, subject: str, start: int) -> None:
        self._js, self._stream, self._subject, self._start = js, stream, subject, start
        self._name: str | None = None
        self.pending = 0

    async def __aenter__(self) -> "_Window":
        consumer = await self._js.add_consumer(
            self._stream,
            ConsumerConfig(
                filter_subject=self._subject,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self._start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=INACTIVE_THRESHOLD,
                mem_storage=True,
            ),
        )
        self._name = consumer.name
        self.pending = consumer.num_pending or 0
        return self

    async def read(self, count: int, last: int, timeout: float) -> list[Msg]:
        """Up to `count` messages, none after position `last`."""
        subscription = await self._js.pull_subscribe_bind(stream=self._stream, name=self._name)
        found: list[Msg] = []
        try:
            while len(found) < count:
                try:
                    batch = await fetched(
                        subscription, min(count - len(found), FETCH_BATCH), timeout
                    )
                except TimeoutError:
                    return found  # counted, then removed (aged out): what came is all there is
                for message in batch:
                    if message.metadata.sequence.stream > last:
                        return found
                    found.append(message)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        return found

    async def __aexit__(self, *_: object) -> None:
        if self._name is not None:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self._stream, self._name)


async def read_newest(
    js: JetStreamContext,
    stream: str,
    subject: str,
    want: int,
    *,
    below: int | None = None,
    floor: int = 1,
    accept: Callable[[Msg], bool] = lambda _: True,
    timeout: float = 5.0,
) -> list[Msg]:
    """The newest `want` messages on `subject` (wildcards allowed) that `accept` takes, at
    stream positions from `floor` up to before `below`, newest first.

    The stream is read backwards, a window of positions at a time. Each window is a consumer
    starting at its first position, which counts on creation the matches from there to the
    end; less the count of the window after it, that is how many the window holds, so a
    window without matches costs one consumer and no read, and windows double while they hold
    too few. A window denser than `DENSE` times what is still wanted is narrowed before it is
    read: a read holds O(`want`) messages, however many the stream has.
    """
    state = (await js.stream_info(stream)).state
    top = state.last_seq if below is None else min(state.last_seq, below - 1)
    bottom = max(state.first_seq, floor)
    if top < bottom or want <= 0:
        return []
    above = 0
    if top < state.last_seq:
        async with _Window(js, stream, subject, top + 1) as after:
            above = after.pending
    found: list[Msg] = []
    size = FIRST_WINDOW
    while len(found) < want and top >= bottom:
        start = max(bottom, top - size + 1)
        async with _Window(js, stream, subject, start) as window:
            held = window.pending - above
            still = want - len(found)
            if held > DENSE * still and top > start:
                size = max(1, (top - start + 1) // DENSE)
                continue
            if held > 0:
                messages = await window.read(held, top, timeout)
                found.extend(m for m in reversed(messages) if accept(m))
            above = window.pending
        top = start - 1
        if held < still:
            size *= 2
    return found[:want]


async def first_position_from(
    js: JetStreamContext, stream: str, subject: str, moment: datetime
) -> int | None:
    """The stream position of the first message on `subject` stored at or after `moment`
    (None: none was)."""
    consumer = await js.add_consumer(
        stream,
        ConsumerConfig(
            filter_subject=subject,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=moment,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE_THRESHOLD,
            mem_storage=True,
        ),
    )
    try:
        if not consumer.num_pending:
            return None
        subscription = await js.pull_subscribe_bind(stream=stream, name=consumer.name)
        try:
            (first,) = await fetched(subscription, 1, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        position: int = first.metadata.sequence.stream
        return position
    finally:
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, consumer.name)
