"""Messages read and written below nats-py's per-message machinery (`shared.wire`), against a
real nats-server: the same subjects, headers and JetStream acks as nats-py's own."""

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError, MsgAlreadyAckdError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, StreamConfig

from shared import jetstream, wire
from shared.ids import new_id

Received = tuple[str, str, bytes, dict[str, str] | None]


@pytest.fixture(params=["wire client", "plain nats-py client"])
async def client(
    request: pytest.FixtureRequest, nc: Client, nats_url: str
) -> AsyncIterator[Client]:
    if request.param == "wire client":
        assert isinstance(nc, wire.Client)
        yield nc
        return
    plain = await nats.connect(nats_url)
    yield plain
    await plain.drain()


async def test_a_message_reaches_its_handler_with_its_subject_reply_and_headers(
    client: Client,
) -> None:
    subject = f"wire.{new_id('x')}"
    received: asyncio.Queue[Received] = asyncio.Queue()
    subscription = await wire.subscribe(
        client, f"{subject}.*", lambda *message: received.put_nowait(message)
    )

    wire.send(client, wire.command(f"{subject}.a", b"plain"))
    wire.send(client, wire.command(f"{subject}.b", b"with", "answer.here", {"Trace": "t-1"}))
    wire.send(client, wire.command(f"{subject}.c", b"", headers={"Nats-Msg-Id": "m-1"}))

    got = [await asyncio.wait_for(received.get(), 5) for _ in range(3)]
    assert got == [
        (f"{subject}.a", "", b"plain", None),
        (f"{subject}.b", "answer.here", b"with", {"Trace": "t-1"}),
        (f"{subject}.c", "", b"", {"Nats-Msg-Id": "m-1"}),
    ]
    await wire.unsubscribe(client, subscription)
    wire.send(client, wire.command(f"{subject}.d", b"after"))
    await client.flush()
    await asyncio.sleep(0.05)
    assert received.empty()


HEADER_BLOCKS = [
    b"NATS/1.0\r\nA: 1\r\nB:  two words \r\n\r\n",
    b"NATS/1.0\r\nBad Name: skipped\r\nGood: kept\r\n\r\n",
    b"NATS/1.0\r\nUrl: http://host:1/path\r\nTight:no-space\r\n\r\n",
    b"NATS/1.0\r\nRaw: \xff\xfe\r\nN\xc3\xa4me: skipped\r\n\r\n",
    b"NATS/1.0\r\nno colon here\r\nK: 1\r\nK: 2\r\n\r\n",
    b"NATS/1.0\r\n\r\n",
    b"NATS/1.0 503\r\n\r\n",
    b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Stream: 7\r\n\r\n",
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
async def test_a_handler_reads_every_header_block_as_nats_py_does(nc: Client, block: bytes) -> None:
    subject = f"wire.{new_id('x')}"
    by_wire: asyncio.Queue[Received] = asyncio.Queue()
    by_nats_py: asyncio.Queue[dict[str, str] | None] = asyncio.Queue()
    direct = await wire.subscribe(nc, subject, lambda *message: by_wire.put_nowait(message))

    async def plain(msg: Msg) -> None:
        by_nats_py.put_nowait(msg.headers)

    ordinary = await nc.subscribe(subject, cb=plain)
    await nc.flush()

    payload = b"body"
    wire.send(nc, b"HPUB %s %d %d\r\n%s%s\r\n" % (
        subject.encode(), len(block), len(block) + len(payload), block, payload
    ))  # fmt: skip

    _, _, data, headers = await asyncio.wait_for(by_wire.get(), 5)
    assert data == payload
    assert headers == await asyncio.wait_for(by_nats_py.get(), 5)
    await wire.unsubscribe(nc, direct)
    await ordinary.unsubscribe()


async def test_commands_past_the_flush_size_leave_before_the_turn_of_the_event_loop_ends(
    client: Client,
) -> None:
    subject = f"wire.{new_id('x')}"
    received: asyncio.Queue[Received] = asyncio.Queue()
    subscription = await wire.subscribe(
        client, subject, lambda *message: received.put_nowait(message)
    )
    await client.flush()
    body = b"x" * 1000
    count = wire.FLUSH_AT // len(body) + 1

    held = []
    for _ in range(count):  # no await: one turn of the event loop
        wire.send(client, wire.command(subject, body))
        held.append(client.pending_data_size)

    assert 0 in held  # handed to the socket by `send` itself, not left to the flusher
    assert max(held) < wire.FLUSH_AT
    got = [await asyncio.wait_for(received.get(), 5) for _ in range(count)]
    assert [data for _, _, data, _ in got] == [body] * count
    wire.send(client, wire.command(subject, b"small"))
    assert client.pending_data_size > 0  # below the size: left to the flusher
    assert (await asyncio.wait_for(received.get(), 5))[2] == b"small"
    await wire.unsubscribe(client, subscription)


async def _one_delivery(js: JetStreamContext, stream: str, subject: str) -> wire.Delivered:
    subscription = await js.pull_subscribe_bind(durable="workers", stream=stream)
    [msg] = await subscription.fetch(1, timeout=5)
    return wire.delivered(js._nc, msg.subject, msg.reply, msg.data, msg.headers)


async def _stream(js: JetStreamContext) -> tuple[str, str]:
    stream, subject = new_id("WIRE"), new_id("wire")
    await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
    await js.add_consumer(
        stream,
        ConsumerConfig(durable_name="workers", ack_policy=AckPolicy.EXPLICIT, ack_wait=30),
    )
    await js.publish(subject, b"work")
    return stream, subject


async def _settled(js: JetStreamContext, stream: str) -> ConsumerInfo:
    """The consumer's state once it has taken in the acks sent (within 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        info: ConsumerInfo = await js.consumer_info(stream, "workers")
        if not info.num_ack_pending or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.01)


async def test_an_acknowledged_delivery_is_done_and_cannot_be_acknowledged_twice(
    client: Client,
) -> None:
    js = client.jetstream()
    stream, subject = await _stream(js)
    msg = await _one_delivery(js, stream, subject)

    await msg.in_progress()  # as often as wanted, before the ack
    await msg.ack()
    with pytest.raises(MsgAlreadyAckdError):
        await msg.ack()
    info = await _settled(js, stream)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_a_delivery_handed_back_with_a_delay_comes_back_after_it(client: Client) -> None:
    js = client.jetstream()
    stream, subject = await _stream(js)
    msg = await _one_delivery(js, stream, subject)

    handed_back = time.monotonic()
    await msg.nak(delay=0.6)
    again = await _one_delivery(js, stream, subject)
    assert time.monotonic() - handed_back >= 0.5
    assert again.data == b"work"
    assert again.metadata.num_delivered == 2
    await again.term()  # terminated: never delivered again
    info = await _settled(js, stream)
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


async def test_a_write_over_the_servers_payload_limit_is_refused_before_it_is_sent(
    client: Client,
) -> None:
    writer = await jetstream.Writer.open(client)
    with pytest.raises(MaxPayloadError):
        await writer.publish(f"wire.{new_id('x')}", b"x" * (client.max_payload + 1))
    assert client.is_connected
