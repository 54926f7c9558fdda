"""JSON log lines: one object a line with the ids a line is about; text on a terminal."""

import asyncio
import io
import json
import logging
import sys

import pytest

from shared import logs


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("runner.core", logging.INFO, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_a_line_is_one_json_object_with_time_level_service_and_message() -> None:
    line = logs.JsonFormatter("runner").format(record("run %s %s", "run_1", "succeeded"))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["service"] == "runner"
    assert parsed["level"] == "info"
    assert parsed["message"] == "run run_1 succeeded"
    assert parsed["logger"] == "runner.core"
    assert parsed["time"].endswith("+00:00")
    assert "run_id" not in parsed


def test_ids_given_as_extras_are_carried_and_empty_ones_left_out() -> None:
    line = logs.JsonFormatter("ingress").format(
        record("started", run_id="run_9", workspace_id="ws_1", trigger_id=None)
    )
    parsed = json.loads(line)
    assert (parsed["run_id"], parsed["workspace_id"]) == ("run_9", "ws_1")
    assert "trigger_id" not in parsed


async def test_bound_ids_stay_in_the_task_that_bound_them() -> None:
    formatter = logs.JsonFormatter("runner")

    async def handle(run_id: str) -> dict[str, str]:
        logs.bind(run_id=run_id, workspace_id="ws_1", trace_id=None)
        await asyncio.sleep(0)
        parsed: dict[str, str] = json.loads(formatter.format(record("working")))
        return parsed

    first, second = await asyncio.gather(handle("run_a"), handle("run_b"))
    assert (first["run_id"], second["run_id"]) == ("run_a", "run_b")
    assert "trace_id" not in first
    assert "run_id" not in json.loads(formatter.format(record("outside any run")))


def test_an_extra_wins_over_a_bound_id() -> None:
    token = logs.bound_ids.set({"run_id": "run_bound"})
    try:
        parsed = json.loads(logs.JsonFormatter("x").format(record("m", run_id="run_extra")))
    finally:
        logs.bound_ids.reset(token)
    assert parsed["run_id"] == "run_extra"


def test_an_exception_is_kept_in_the_same_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    line = logs.JsonFormatter("x").format(made)
    assert "\n" not in line
    assert "ValueError: bad" in json.loads(line)["exception"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert not isinstance(logs.formatter_for("x", "auto", Terminal()), logs.JsonFormatter)
    assert isinstance(logs.formatter_for("x", "auto", io.StringIO()), logs.JsonFormatter)
    assert isinstance(logs.formatter_for("x", "json", Terminal()), logs.JsonFormatter)
    assert not isinstance(logs.formatter_for("x", "text", io.StringIO()), logs.JsonFormatter)


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.configure("x", {"LOG_FORMAT": "xml"})
