"""JSON encoding of contracts: one encoder, one cached typed decoder per type."""

from functools import cache
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    """Encode a contract (or any msgspec-supported value) as JSON."""
    return _encoder.encode(value)


@cache
def decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    """A reusable strict decoder for `type_`."""
    return msgspec.json.Decoder(type_)


def decode(data: bytes | str, type_: type[Any]) -> Any:
    """Decode JSON into `type_`; raises `msgspec.ValidationError` / `DecodeError` with a reason."""
    return decoder(type_).decode(data)
