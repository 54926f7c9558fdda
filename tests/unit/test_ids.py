"""Identifiers: time-ordered, safe as KV key parts, and reproducible when derived."""

import pytest

from shared.ids import derived_id, is_valid_id, new_id


def test_a_new_id_has_its_prefix_and_is_valid() -> None:
    made = new_id("run")

    assert made.startswith("run_")
    assert len(made) == len("run_") + 21
    assert is_valid_id(made)


def test_ids_sort_by_their_creation_time() -> None:
    times = [0, 1, 999, 1_000, 1_767_225_600_000, 1_767_225_600_001, 36**9 - 1]

    made = [new_id("run", now_ms=ms) for ms in reversed(times)]

    assert sorted(made) == list(reversed(made))


def test_ids_made_in_the_same_millisecond_differ() -> None:
    made = {new_id("trg", now_ms=1_767_225_600_000) for _ in range(1000)}

    assert len(made) == 1000


def test_ids_made_now_sort_after_ids_of_the_past() -> None:
    assert new_id("run", now_ms=1_700_000_000_000) < new_id("run")


def test_a_derived_id_is_deterministic() -> None:
    first = derived_id("run", 1_767_225_600_000, b"trg_x:2026-01-01T00:00:00Z")
    again = derived_id("run", 1_767_225_600_000, b"trg_x:2026-01-01T00:00:00Z")

    assert first == again
    assert is_valid_id(first)


def test_a_derived_id_changes_with_its_seed_and_time() -> None:
    base = derived_id("run", 1_767_225_600_000, b"a")

    assert derived_id("run", 1_767_225_600_000, b"b") != base
    assert derived_id("run", 1_767_225_600_001, b"a") > base


SAMPLE = "run_0m3k2x9a1b7qz4c8d2e5f"
"""A well-shaped id: a 2-4 letter prefix, `_`, then 21 base-36 characters."""


def test_a_well_shaped_id_is_accepted() -> None:
    assert is_valid_id(SAMPLE)
    assert is_valid_id("ws_000000000000000000000")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "run",
        "run_",
        "*",
        ">",
        SAMPLE + ".x",
        "ws_a." + SAMPLE,
        SAMPLE.replace("_", "."),
        SAMPLE[:-1] + "*",
        SAMPLE[:-1] + ">",
        SAMPLE[:-1],
        SAMPLE + "0",
        SAMPLE.upper(),
        SAMPLE.replace("0m3k", "0M3K"),
        "r" + SAMPLE[3:],
        "runsx" + SAMPLE[3:],
        SAMPLE.replace("_", "-"),
        SAMPLE + "\n",
        " " + SAMPLE,
    ],
    ids=[
        "empty",
        "prefix only",
        "prefix and separator",
        "star",
        "chevron",
        "trailing token",
        "two ids joined",
        "dot separator",
        "star inside",
        "chevron inside",
        "too short",
        "too long",
        "upper case",
        "mixed case",
        "one-letter prefix",
        "five-letter prefix",
        "dash separator",
        "trailing newline",
        "leading space",
    ],
)
def test_values_that_are_not_ids_are_rejected(value: str) -> None:
    assert not is_valid_id(value)
