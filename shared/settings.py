"""Typed settings read from environment variables: field `nats_url` is read from `NATS_URL`."""

import os
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


def from_environment(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build `cls` from the environment; unset variables keep the field's default."""
    env = os.environ if environ is None else environ
    given: dict[str, Any] = {}
    for field in msgspec.structs.fields(cls):
        value = env.get(field.name.upper())
        if value is not None and value != "":
            try:
                given[field.name] = msgspec.convert(value, field.type, strict=False)
            except msgspec.ValidationError as error:
                raise SettingsError(
                    f"invalid {field.name.upper()}={value!r} (setting `{field.name}`): {error}"
                ) from error
    try:
        return msgspec.convert(given, cls, strict=False)
    except msgspec.ValidationError as error:
        raise SettingsError(f"invalid setting in the environment: {error}") from error
