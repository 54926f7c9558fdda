"""Reading what a stream holds on a subject, once, with a consumer that counts it first."""

import contextlib
from collections.abc import AsyncGenerator

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

FETCH_BATCH = 1000
"""Most messages one pull asks for."""
INACTIVE_THRESHOLD = 30.0
"""Seconds after which the server removes a reading consumer this process failed to delete."""


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
                        batch = await subscription.fetch(
                            min(remaining, FETCH_BATCH), timeout=timeout
                        )
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
