"""The runner's lean JetStream writes against a real nats-server: they keep KV semantics."""

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NoStreamResponseError

from contracts import subjects
from shared import jetstream
from shared.ids import new_id


async def test_a_compare_and_swap_write_holds_only_over_the_revision_it_expects(
    nc: Client, js: JetStreamContext
) -> None:
    runs = await js.key_value(subjects.RUNS_BUCKET)
    key = f"{new_id('ws')}.{new_id('run')}"

    first = await jetstream.put_if_last(nc, subjects.RUNS_BUCKET, key, b"one", last=0)
    with pytest.raises(KeyWrongLastSequenceError):
        await jetstream.put_if_last(nc, subjects.RUNS_BUCKET, key, b"again", last=0)
    second = await jetstream.put_if_last(nc, subjects.RUNS_BUCKET, key, b"two", last=first)
    with pytest.raises(KeyWrongLastSequenceError):
        await jetstream.put_if_last(nc, subjects.RUNS_BUCKET, key, b"stale", last=first)

    entry = await runs.get(key)
    assert (entry.value, entry.revision) == (b"two", second)


async def test_a_write_to_a_subject_no_stream_takes_is_refused(nc: Client) -> None:
    with pytest.raises(NoStreamResponseError):
        await jetstream.publish(nc, f"nowhere.{new_id('x')}", b"lost")
