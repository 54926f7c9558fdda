"""`shared.pull.delivery` reads the same facts as nats-py's `Msg.metadata`, for less."""

import pytest
from nats.aio.msg import Msg

from shared.pull import delivery

V1 = "$JS.ACK.FLOW_STARTS.runner.1.12345.12001.1795910401242000000.42"
V2 = "$JS.ACK._.ACCHASH.FLOW_STARTS.runner.3.12345.12300.1795910401242000000.42.xyz"


@pytest.mark.parametrize("reply", [V1, V2], ids=["v1", "v2 (domain and account)"])
def test_a_delivery_says_what_nats_py_metadata_says(reply: str):
    seen = delivery(Msg(None, subject="flow.start", reply=reply))  # type: ignore[arg-type]
    metadata = Msg(None, subject="flow.start", reply=reply).metadata  # type: ignore[arg-type]
    assert seen.stream_sequence == metadata.sequence.stream == 12345
    assert seen.delivered == metadata.num_delivered
    assert seen.stored_at == pytest.approx(metadata.timestamp.timestamp(), abs=1e-6)


@pytest.mark.parametrize("reply", ["", "_INBOX.abc.1", "$JS.ACK.too.short"])
def test_a_message_that_is_no_jetstream_delivery_is_refused(reply: str):
    with pytest.raises(ValueError, match="not a JetStream delivery"):
        delivery(Msg(None, subject="flow.start", reply=reply))  # type: ignore[arg-type]
