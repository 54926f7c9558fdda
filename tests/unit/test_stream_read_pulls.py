"""`stream_read.fetched`: a pull the server answers `503` (nothing serves the consumer yet) is
asked again; any other answer is the caller's."""

import pytest
from nats.aio.msg import Msg
from nats.js.errors import ServiceUnavailableError

from shared import stream_read


class Pulls:
    """A pull subscription whose first `unserved` pulls are answered `503`."""

    def __init__(self, unserved: int) -> None:
        self.unserved = unserved
        self.asked: list[tuple[int, float | None]] = []

    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list[Msg]:
        self.asked.append((batch, timeout))
        if len(self.asked) <= self.unserved:
            raise ServiceUnavailableError
        return [Msg(_client=None, subject="s", data=b"x")] * batch  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_read, "UNSERVED_PAUSE", 0.0)


async def test_a_pull_answered_that_nothing_serves_the_consumer_yet_is_asked_again() -> None:
    pulls = Pulls(unserved=2)

    got = await stream_read.fetched(pulls, 3, 1.5)

    assert len(got) == 3
    assert pulls.asked == [(3, 1.5)] * 3


async def test_a_consumer_nothing_serves_after_every_try_fails_the_read() -> None:
    pulls = Pulls(unserved=stream_read.UNSERVED_TRIES)

    with pytest.raises(ServiceUnavailableError):
        await stream_read.fetched(pulls, 1, 1.0)
    assert len(pulls.asked) == stream_read.UNSERVED_TRIES


async def test_a_pull_that_times_out_is_not_asked_again() -> None:
    class Silent(Pulls):
        async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list[Msg]:
            self.asked.append((batch, timeout))
            raise TimeoutError

    pulls = Silent(unserved=0)

    with pytest.raises(TimeoutError):
        await stream_read.fetched(pulls, 1, 1.0)
    assert len(pulls.asked) == 1
