"""Why a request body was refused, in words that name the field and what it may be.

msgspec stops at the first problem and Litestar drops its path; this module decodes the body
again with the body's own type and says everything a caller needs to fix it: every unknown
field with the fields that object allows, the values an enum allows, or, for an empty body,
what the body must hold.
"""

import re
from collections.abc import Iterator
from typing import Any

import msgspec
from msgspec import inspect

from contracts.registry import (
    NewApiTrigger,
    NewManualTrigger,
    NewScheduleTrigger,
    NewWebhookTrigger,
    TriggerChanges,
)

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")

_WAIT = "`sync_wait_seconds` is a setting of `api` and `webhook` triggers"
_MODE = "`response_mode` is a setting of `api` and `webhook` triggers"
FIELD_HINTS: dict[tuple[type, str], str] = {
    (TriggerChanges, "enabled"): (
        "a trigger is paused and resumed with POST /v1/triggers/{id}/pause and "
        "POST /v1/triggers/{id}/resume, not with PATCH"
    ),
    (NewScheduleTrigger, "sync_wait_seconds"): _WAIT,
    (NewManualTrigger, "sync_wait_seconds"): _WAIT,
    (NewScheduleTrigger, "response_mode"): _MODE,
    (NewManualTrigger, "response_mode"): _MODE,
    (NewApiTrigger, "schedule"): 'only `"type": "schedule"` triggers take a `schedule`',
    (NewManualTrigger, "schedule"): 'only `"type": "schedule"` triggers take a `schedule`',
    (NewWebhookTrigger, "schedule"): 'only `"type": "schedule"` triggers take a `schedule`',
    (NewApiTrigger, "secret"): 'only `"type": "webhook"` triggers take a `secret`',
    (NewApiTrigger, "scheme"): 'only `"type": "webhook"` triggers take a `scheme`',
}
"""A sentence added when a known mistake shows up as an unknown field."""


def explain(body_type: Any, body: bytes) -> str | None:
    """What is wrong with `body` as a `body_type`; None when it decodes after all."""
    info = inspect.type_info(body_type)
    if not body.strip():
        return f"the request needs a JSON body: {describe(info)}"
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        return f"the body is not valid JSON: {error}"
    unknown = [_unknown_message(*found) for found in unknown_fields(info, value, "")]
    if unknown:
        return "; ".join(unknown)
    try:
        msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as error:
        return with_allowed_values(info, value, str(error))
    return None


def describe(info: inspect.Type) -> str:
    """What a body of this type must hold, for a caller who sent none."""
    info = _unwrap(info)
    structs = _structs(info)
    if not structs:
        return "a JSON value"
    required = [f.encode_name for f in structs[0].fields if f.required]
    required = [name for name in required if all(_requires(s, name) for s in structs)]
    tag_field = structs[0].tag_field
    if len(structs) > 1 and tag_field:
        parts = [f"`{tag_field}` (one of {_quoted([s.tag for s in structs])})"]
        parts += [f"`{name}`" for name in required]
        extra = [
            f"a `{s.tag}` one also {_quoted(needs, '`')}"
            for s in structs
            if (
                needs := [
                    f.encode_name for f in s.fields if f.required and f.encode_name not in required
                ]
            )
        ]
        return f"an object with {', '.join(parts)}" + (f"; {'; '.join(extra)}" if extra else "")
    names = [f.encode_name for f in structs[0].fields]
    if not required:
        return f"an object with the fields to change, any of {_quoted(names, '`')}"
    optional = [name for name in names if name not in required]
    text = f"an object with {_quoted(required, '`')}"
    return text + (f" (optional: {_quoted(optional, '`')})" if optional else "")


def unknown_fields(
    info: inspect.Type, value: Any, path: str
) -> Iterator[tuple[str, list[str], list[str], type]]:
    """Every object in `value` with fields its (strict) struct does not have:
    `(path, unknown, allowed, struct class)`."""
    info = _unwrap(info)
    if isinstance(value, dict):
        struct = _struct_for(info, value)
        if struct is None:
            if isinstance(info, inspect.DictType):
                for key, item in value.items():
                    yield from unknown_fields(info.value_type, item, f"{path}.{key}")
            return
        allowed = ([struct.tag_field] if struct.tag_field else []) + [
            f.encode_name for f in struct.fields
        ]
        extra = [name for name in value if name not in allowed]
        if extra and struct.forbid_unknown_fields:
            yield path, extra, allowed, struct.cls
        for field in struct.fields:
            if field.encode_name in value:
                yield from unknown_fields(
                    field.type, value[field.encode_name], f"{path}.{field.encode_name}"
                )
    elif isinstance(value, list):
        items = _items_of(info)
        if items is not None:
            for index, item in enumerate(value):
                yield from unknown_fields(items, item, f"{path}[{index}]")


def with_allowed_values(info: inspect.Type, value: Any, message: str) -> str:
    """msgspec's `message`, with the allowed values when it is about an enum or a tag."""
    found = _AT.search(message)
    if "Invalid" not in message or found is None:
        return message
    parts: list[str | int] = [
        name if name else int(index) for name, index in _PART.findall(found["path"])
    ]
    allowed = _allowed_at(info, value, parts)
    if not allowed:
        return message
    return f"{message}; allowed: {_quoted(allowed)}"


def literal_values(annotation: Any) -> list[str]:
    """The values of the Literal inside `annotation` (a query parameter's type), if any."""
    try:
        return _literals(inspect.type_info(annotation))
    except (TypeError, ValueError):
        return []


# --- walking msgspec's type info ---------------------------------------------------------------


def _unwrap(info: inspect.Type) -> inspect.Type:
    while isinstance(info, inspect.Metadata):
        info = info.type
    return info


def _structs(info: inspect.Type) -> list[inspect.StructType]:
    info = _unwrap(info)
    if isinstance(info, inspect.StructType):
        return [info]
    if isinstance(info, inspect.UnionType):
        return [t for t in map(_unwrap, info.types) if isinstance(t, inspect.StructType)]
    return []


def _struct_for(info: inspect.Type, value: dict[str, Any]) -> inspect.StructType | None:
    """The struct `value` decodes as: the only one, or the one its tag names."""
    structs = _structs(info)
    if len(structs) == 1:
        return structs[0]
    for struct in structs:
        if struct.tag_field and value.get(struct.tag_field) == struct.tag:
            return struct
    return None


def _items_of(info: inspect.Type) -> inspect.Type | None:
    info = _unwrap(info)
    if isinstance(info, inspect.UnionType):
        for member in info.types:
            if (items := _items_of(member)) is not None:
                return items
    if isinstance(info, (inspect.ListType, inspect.VarTupleType, inspect.SetType)):
        return info.item_type
    return None


def _literals(info: inspect.Type) -> list[str]:
    info = _unwrap(info)
    if isinstance(info, inspect.LiteralType):
        return [str(v) for v in info.values]
    if isinstance(info, inspect.UnionType):
        return [v for member in info.types for v in _literals(member)]
    return []


def _allowed_at(info: inspect.Type, value: Any, parts: list[str | int]) -> list[str]:
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(part, int):
            items = _items_of(info)
            if items is None:
                return []
            info = items
            value = value[part] if isinstance(value, list) and part < len(value) else None
            continue
        structs = _structs(info)
        tagged = [s for s in structs if s.tag_field == part]
        if tagged and last:
            return [str(s.tag) for s in tagged]
        struct = _struct_for(info, value) if isinstance(value, dict) else None
        if struct is None:
            return []
        field = next((f for f in struct.fields if f.encode_name == part), None)
        if field is None:
            return []
        info = field.type
        value = value.get(part)
    return _literals(info)


def _requires(struct: inspect.StructType, name: str) -> bool:
    return any(f.encode_name == name and f.required for f in struct.fields)


def _quoted(values: list[Any], mark: str = '"') -> str:
    return ", ".join(f"{mark}{v}{mark}" for v in values)


def _unknown_message(path: str, unknown: list[str], allowed: list[str], cls: type) -> str:
    where = f"`{path.lstrip('.')}`" if path else "the body"
    fields = "field" if len(unknown) == 1 else "fields"
    message = (
        f"unknown {fields} {_quoted(unknown, '`')} in {where} (allowed: {_quoted(allowed, '`')})"
    )
    hints = [FIELD_HINTS[cls, name] for name in unknown if (cls, name) in FIELD_HINTS]
    return message + "".join(f"; {hint}" for hint in hints)
