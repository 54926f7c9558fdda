"""Workspace API keys: shape, checksum, digest and the part shown in lists."""

import string

import pytest

from shared import api_keys

BASE62 = set(string.digits + string.ascii_letters)


def test_a_generated_key_is_well_formed() -> None:
    secret = api_keys.generate()

    assert secret.startswith("tpk_")
    assert len(secret) == api_keys.LENGTH == 50
    assert set(secret.removeprefix("tpk_")) <= BASE62
    assert api_keys.is_well_formed(secret)


def test_generated_keys_are_unique() -> None:
    secrets = {api_keys.generate() for _ in range(1000)}

    assert len(secrets) == 1000


@pytest.mark.parametrize("position", [4, 20, 43, 44, 49])
def test_the_checksum_catches_a_changed_character(position: int) -> None:
    secret = api_keys.generate()
    replacement = "a" if secret[position] != "a" else "b"
    mistyped = secret[:position] + replacement + secret[position + 1 :]

    assert not api_keys.is_well_formed(mistyped)


def test_the_checksum_catches_two_swapped_characters() -> None:
    secret = api_keys.generate()
    i = next(i for i in range(4, 43) if secret[i] != secret[i + 1])
    swapped = secret[:i] + secret[i + 1] + secret[i] + secret[i + 2 :]

    assert not api_keys.is_well_formed(swapped)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "tpk_",
        "hello",
        "Bearer tpk_abc",
        "tpk_" + "a" * 46,
        "xyz_" + api_keys.generate()[4:],
        api_keys.generate()[:-1],
        api_keys.generate() + "x",
        " " + api_keys.generate()[1:],
    ],
    ids=[
        "empty",
        "prefix only",
        "no prefix",
        "header pasted",
        "bad checksum",
        "wrong prefix",
        "truncated",
        "one too many",
        "leading space",
    ],
)
def test_anything_without_a_key_s_shape_is_not_well_formed(candidate: str) -> None:
    assert not api_keys.is_well_formed(candidate)


def test_the_digest_is_stable_and_is_not_the_secret() -> None:
    secret = api_keys.generate()

    digest = api_keys.digest(secret)

    assert digest == api_keys.digest(secret)
    assert len(digest) == 64
    assert set(digest) <= set(string.hexdigits.lower())
    assert secret not in digest
    assert secret.removeprefix("tpk_")[:8] not in digest
    assert digest != api_keys.digest(api_keys.generate())


def test_the_shown_prefix_is_the_type_prefix_and_eight_characters_of_the_secret() -> None:
    secret = api_keys.generate()

    shown = api_keys.shown_prefix(secret)

    assert shown == secret[:12]
    assert shown.startswith("tpk_")
    assert not api_keys.is_well_formed(shown)
