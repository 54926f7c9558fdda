"""Flows every runner has: handy for trying the trigger plane out and for tests."""

import asyncio
from typing import Annotated, Any

import msgspec

from services.runner.flows import FlowContext, flow

MAX_SLEEP_SECONDS = 3600


class SleepInput(msgspec.Struct, frozen=True):
    seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_SLEEP_SECONDS)]


class AddInput(msgspec.Struct, frozen=True):
    a: int | float
    b: int | float


@flow("echo")
def echo(input: Any, context: FlowContext) -> Any:
    """Return the input unchanged."""
    return input


@flow("sleep")
async def sleep(input: Any, context: FlowContext) -> dict[str, float]:
    """Wait `{"seconds": s}` (at most an hour), then return `{"slept": s}`."""
    seconds = msgspec.convert(input, SleepInput).seconds
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@flow("fail")
def fail(input: Any, context: FlowContext) -> None:
    """Fail with `{"message": ...}` as the error message."""
    message = input.get("message") if isinstance(input, dict) else None
    raise RuntimeError(message or "failed on purpose")


@flow("add")
def add(input: Any, context: FlowContext) -> int | float:
    """Return `a + b` for the input `{"a": number, "b": number}`."""
    numbers = msgspec.convert(input, AddInput)
    return numbers.a + numbers.b
