"""How long `POST /trigger` waits, from the trigger's default and the `Prefer` header."""

import pytest

from services.ingress.core import sync_wait


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [
        (None, (10.0, None)),
        ("", (10.0, None)),
        ("respond-async", (0.0, "respond-async")),
        ("respond-async, wait=30", (0.0, "respond-async")),
        ("wait=3", (3.0, "wait=3")),
        ("handling=lenient, wait=2.5", (2.5, "wait=2.5")),
        ("wait=600", (60.0, "wait=60")),
        ("wait=soon", (10.0, None)),
        ("wait=-1", (10.0, None)),
        ("return=minimal", (10.0, None)),
    ],
)
def test_the_prefer_header_sets_the_wait_within_the_limit(
    prefer: str | None, expected: tuple[float, str | None]
) -> None:
    assert sync_wait(prefer, default=10.0, limit=60.0) == expected
