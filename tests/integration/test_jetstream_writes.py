"""The runner's lean JetStream writes against a real nats-server: they keep KV semantics."""

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError

from contracts import subjects
from shared import jetstream
from shared.ids import new_id

EXPECTED_STREAM_DOES_NOT_MATCH = 10060


async def test_a_compare_and_swap_write_holds_only_over_the_revision_it_expects(
    nc: Client, js: JetStreamContext
) -> None:
    runs = await js.key_value(subjects.RUNS_BUCKET)
    writer = await jetstream.Writer.open(nc)
    key = f"{new_id('ws')}.{new_id('run')}"

    first = await writer.put_if_last(subjects.RUNS_BUCKET, key, b"one", last=0)
    with pytest.raises(KeyWrongLastSequenceError):
        await writer.put_if_last(subjects.RUNS_BUCKET, key, b"again", last=0)
    second = await writer.put_if_last(subjects.RUNS_BUCKET, key, b"two", last=first)
    with pytest.raises(KeyWrongLastSequenceError):
        await writer.put_if_last(subjects.RUNS_BUCKET, key, b"stale", last=first)

    entry = await runs.get(key)
    assert (entry.value, entry.revision) == (b"two", second)


async def test_a_write_to_a_subject_no_stream_takes_is_refused(nc: Client) -> None:
    writer = await jetstream.Writer.open(nc)
    with pytest.raises(NoStreamResponseError):
        await writer.publish(f"nowhere.{new_id('x')}", b"lost")


async def test_a_write_nobody_answers_times_out(nc: Client) -> None:
    subject = f"silent.{new_id('x')}"
    silent = await nc.subscribe(subject)  # takes the message, never answers
    writer = await jetstream.Writer.open(nc, timeout=0.1)

    with pytest.raises(NatsTimeoutError):
        await writer.publish(subject, b"unanswered")
    await silent.unsubscribe()


async def test_a_refusal_other_than_a_compare_and_swap_raises_the_server_s_error(
    nc: Client, js: JetStreamContext
) -> None:
    await js.key_value(subjects.RUNS_BUCKET)
    writer = await jetstream.Writer.open(nc)
    key = f"{new_id('ws')}.{new_id('run')}"

    with pytest.raises(APIError) as refused:
        await writer.publish(
            f"$KV.{subjects.RUNS_BUCKET}.{key}", b"one", {"Nats-Expected-Stream": "ELSEWHERE"}
        )
    assert refused.value.err_code == EXPECTED_STREAM_DOES_NOT_MATCH
    assert not isinstance(refused.value, KeyWrongLastSequenceError)


async def test_an_answer_that_is_not_a_jetstream_one_raises_an_api_error(nc: Client) -> None:
    subject = f"odd.{new_id('x')}"

    async def answer_oddly(msg: Msg) -> None:
        await msg.respond(b"not json")

    odd = await nc.subscribe(subject, cb=answer_oddly)
    writer = await jetstream.Writer.open(nc)

    with pytest.raises(APIError, match="not a JetStream answer"):
        await writer.publish(subject, b"payload")
    await odd.unsubscribe()
