"""The flow registry, the built-in flows, module loading and the runner's settings."""

import re
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from services.runner import builtin_flows
from services.runner.flows import FlowContext, FlowModuleError, FlowRegistry, flows, load_modules
from services.runner.settings import RunnerSettings
from shared.settings import SettingsError, from_environment

CONTEXT = FlowContext(
    run_id="run_1",
    workspace_id="ws_1",
    flow_id="flow_1",
    trigger_id=None,
    source="api",
    attempt=1,
    scheduled_at=datetime(2026, 1, 1, tzinfo=UTC),
)


def test_the_decorator_registers_the_function_under_its_name_and_returns_it() -> None:
    registry = FlowRegistry()

    @registry.flow("greet")
    def greet(input: Any, context: FlowContext) -> str:
        return f"hello {input}"

    assert registry.get("greet") is greet
    assert "greet" in registry
    assert greet("you", CONTEXT) == "hello you"


def test_registering_another_function_under_a_taken_name_is_refused() -> None:
    registry = FlowRegistry()
    registry.flow("greet")(lambda input, context: 1)

    with pytest.raises(ValueError, match="'greet' is already registered"):
        registry.flow("greet")(lambda input, context: 2)


def test_registering_the_same_function_twice_is_harmless() -> None:
    registry = FlowRegistry()

    def greet(input: Any, context: FlowContext) -> None:
        return None

    registry.flow("greet")(greet)
    registry.flow("greet")(greet)

    assert registry.names() == ["greet"]


def test_an_unknown_name_is_not_found() -> None:
    assert FlowRegistry().get("nope") is None


def test_loading_modules_registers_the_builtin_flows() -> None:
    load_modules([])

    assert {"echo", "sleep", "fail", "add"} <= set(flows.names())


def test_loading_a_user_module_registers_its_flows(tmp_path: Any, monkeypatch: Any) -> None:
    module = tmp_path / "runner_test_user_flows.py"
    module.write_text(
        "from services.runner.flows import flow\n\n"
        "@flow('runner_test_user_flow')\n"
        "def user_flow(input, context):\n"
        "    return input\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "runner_test_user_flows", raising=False)

    load_modules(["runner_test_user_flows"])

    assert "runner_test_user_flow" in flows


def test_a_module_that_cannot_be_imported_is_a_clear_startup_error() -> None:
    with pytest.raises(
        FlowModuleError, match=re.escape("cannot import flow module 'no_such.flows'")
    ):
        load_modules(["no_such.flows"])


def test_echo_returns_its_input() -> None:
    assert builtin_flows.echo({"a": [1, 2]}, CONTEXT) == {"a": [1, 2]}


def test_add_adds_a_and_b() -> None:
    assert builtin_flows.add({"a": 2, "b": 3.5}, CONTEXT) == 5.5


def test_add_explains_an_input_that_is_not_two_numbers() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.b"):
        builtin_flows.add({"a": 2, "b": "3"}, CONTEXT)


def test_fail_raises_with_the_message_of_its_input() -> None:
    with pytest.raises(RuntimeError, match=r"^boom$"):
        builtin_flows.fail({"message": "boom"}, CONTEXT)


async def test_sleep_returns_how_long_it_slept() -> None:
    assert await builtin_flows.sleep({"seconds": 0}, CONTEXT) == {"slept": 0}


async def test_sleep_refuses_more_than_an_hour() -> None:
    with pytest.raises(msgspec.ValidationError, match="<= 3600"):
        await builtin_flows.sleep({"seconds": 3601}, CONTEXT)


def test_settings_read_the_environment_and_split_the_flow_modules() -> None:
    environ = {"RUNNER_FLOWS": "a.flows, b.flows,", "RUNNER_CONCURRENCY": "4"}

    settings = from_environment(RunnerSettings, environ)

    assert settings.flow_modules == ["a.flows", "b.flows"]
    assert settings.runner_concurrency == 4
    assert settings.nats_url == "nats://127.0.0.1:4222"


def test_a_concurrency_below_one_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="runner_concurrency"):
        from_environment(RunnerSettings, {"RUNNER_CONCURRENCY": "0"})
