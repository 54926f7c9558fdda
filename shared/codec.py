"""JSON encoding of contracts: one encoder, one cached typed decoder per type."""

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    """Encode a contract (or any msgspec-supported value) as JSON."""
    return _encoder.encode(value)


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    """A reusable strict decoder for `type_` (built once per type)."""
    found = _decoders.get(type_)
    if found is None:
        found = _decoders[type_] = msgspec.json.Decoder(type_)
    return found


def decode(data: bytes | str, type_: type[Any]) -> Any:
    """Decode JSON into `type_`; raises `msgspec.ValidationError` / `DecodeError` with a reason."""
    return decoder(type_).decode(data)
