"""The runner's pull loop against a real nats-server: every message, never more than the free
slots at once."""

import asyncio
import contextlib

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from shared.ids import new_id
from shared.pull import Puller


async def test_every_message_is_dispatched_within_the_free_slots(
    nc: Client, js: JetStreamContext
) -> None:
    stream, subject = new_id("PULL"), new_id("pull")
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    await js.add_consumer(
        stream, ConsumerConfig(durable_name="workers", ack_policy=AckPolicy.EXPLICIT)
    )
    for number in range(200):
        await js.publish(subject, str(number).encode())
    working: set[asyncio.Task[None]] = set()
    seen: list[bytes] = []
    all_seen = asyncio.Event()
    most = 0

    async def work(msg: Msg) -> None:
        await asyncio.sleep(0.001)
        seen.append(msg.data)
        await msg.ack()
        if len(seen) == 200:
            all_seen.set()

    def dispatch(msg: Msg) -> None:
        nonlocal most
        task = asyncio.create_task(work(msg))
        working.add(task)
        most = max(most, len(working))
        task.add_done_callback(done)

    def done(task: asyncio.Task[None]) -> None:
        working.discard(task)
        puller.freed.set()

    puller = Puller(
        nc, stream, "workers", capacity=lambda: 8 - len(working), dispatch=dispatch, least=2
    )
    pulling = asyncio.create_task(puller.run())
    await asyncio.wait_for(all_seen.wait(), timeout=10)
    pulling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pulling

    assert sorted(int(data) for data in seen) == list(range(200))
    assert most <= 8
    await js.delete_stream(stream)
