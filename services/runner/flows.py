"""The registry of flow functions: user modules register Python functions with `@flow(name)`.

A flow function takes `(input, context)`: the start's JSON input and a `FlowContext`. It may be
a plain function (run in a worker thread) or a coroutine function (run on the event loop); what
it returns is the run's result and must be encodable as JSON.
"""

import importlib
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from contracts.runs import StartSource

FlowFunction = Callable[[Any, "FlowContext"], Any]
F = TypeVar("F", bound=FlowFunction)

BUILTIN_MODULE = "services.runner.builtin_flows"


class FlowContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a flow function knows about the run it is part of."""

    run_id: str
    workspace_id: str
    flow_id: str
    trigger_id: str | None
    source: StartSource
    attempt: int
    """1 for the first start, more when a runner died and another one started it again."""
    scheduled_at: datetime | None
    """For schedule triggers: the fire time this run belongs to."""


class FlowRegistry:
    """`name -> function`: the flow functions one runner can run."""

    def __init__(self) -> None:
        self._functions: dict[str, FlowFunction] = {}

    def flow(self, name: str) -> Callable[[F], F]:
        """Register the decorated function under `name`; it is returned unchanged."""
        if not name:
            raise ValueError("a flow function needs a name")

        def register(function: F) -> F:
            known = self._functions.get(name)
            if known is not None and known is not function:
                raise ValueError(f"flow function {name!r} is already registered ({known!r})")
            self._functions[name] = function
            return function

        return register

    def get(self, name: str) -> FlowFunction | None:
        return self._functions.get(name)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._functions)

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __len__(self) -> int:
        return len(self._functions)


flows = FlowRegistry()
"""The registry the runner serves; `RUNNER_FLOWS` modules register into it."""
flow = flows.flow
"""`@flow("name")`: register a function in the runner's registry."""


class FlowModuleError(Exception):
    """A flow module could not be imported: the runner must not start without its flows."""


def load_modules(names: Iterable[str]) -> None:
    """Import the built-in flows and then every module in `names`, which register theirs."""
    for name in [BUILTIN_MODULE, *names]:
        try:
            importlib.import_module(name)
        except Exception as error:
            raise FlowModuleError(
                f"cannot import flow module {name!r} (listed in RUNNER_FLOWS): "
                f"{type(error).__name__}: {error}"
            ) from error
