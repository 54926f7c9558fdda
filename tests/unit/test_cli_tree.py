"""`tp`'s command tree as users know it, and its failures as JSON under `--json` whichever
command module they come from."""

import json
from typing import Any

import httpx
import typer
from typer.testing import CliRunner

from cli.app import Connection, app
from cli.output import ExitCode

COMMANDS = """
audit
call
flows create
flows functions
flows get
flows list
flows register
health
keys create
keys list
keys revoke
keys rotate
keys update
login
profile delete
profile list
profile set
profile show
runs cancel
runs get
runs list
runs stats
runs watch
triggers create api
triggers create manual
triggers create schedule
triggers create webhook
triggers delete
triggers edit
triggers fires
triggers get
triggers list
triggers pause
triggers preview
triggers refusals
triggers resume
triggers rotate-secret
triggers run
workspaces create
"""


def command_paths(command: Any, path: tuple[str, ...] = ()) -> list[str]:
    if not hasattr(command, "commands"):
        return [" ".join(path)]
    return [
        line
        for name, sub in sorted(command.commands.items())
        for line in command_paths(sub, (*path, name))
    ]


def invoke(handler: Any, *args: str) -> Any:
    environ = {"TP_URL": "http://api.test", "TP_KEY": "tpk_test", "TP_CONFIG": "/nonexistent/c"}
    connection = Connection(transport=httpx.MockTransport(handler))
    return CliRunner().invoke(app, list(args), env=environ, obj=connection)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def test_every_command_keeps_its_name_and_place_in_the_tree() -> None:
    assert command_paths(typer.main.get_command(app)) == COMMANDS.split("\n")[1:-1]


def test_the_top_help_lists_the_commands_then_the_groups_in_their_order() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
    listed = [
        line.strip("│ ").split()[0]
        for line in result.stdout.split("Commands")[1].splitlines()[1:]
        if line.startswith("│")
    ]
    assert listed == [
        "call", "audit", "health", "login",
        "workspaces", "keys", "flows", "triggers", "runs", "profile",
    ]  # fmt: skip


def test_with_json_a_usage_problem_found_before_any_request_is_json_on_stderr() -> None:
    result = invoke(refuse, "keys", "update", "key_1", "--json")
    assert result.exit_code == ExitCode.USAGE
    assert json.loads(result.stderr) == {
        "code": "usage",
        "detail": "nothing to change: give --expires-at, --no-expiry, --flow or --any-flow",
    }
    without = invoke(refuse, "keys", "update", "key_1")
    assert without.stderr.startswith("error: nothing to change")


def test_with_json_a_refused_connection_is_json_on_stderr_from_every_module() -> None:
    for line in (
        ("audit", "--json"),
        ("runs", "stats", "--json"),
        ("triggers", "create", "manual", "flw_1", "--json"),
        ("flows", "get", "flw_1", "--json"),
    ):
        result = invoke(refuse, *line)
        assert result.exit_code == ExitCode.CANNOT_CONNECT, line
        assert json.loads(result.stderr)["code"] == "cannot_connect", line
