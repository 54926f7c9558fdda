"""`tp`: the trigger plane's management API from the command line. The root: its connection
options, what a failure prints and exits with, and where every command group is wired in
(the commands themselves live in `cli.commands`, a module per resource)."""

from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli import config
from cli.client import ApiError, CannotConnect, MissingCredential
from cli.commands import audit, call, flows, health, keys, profiles, runs, triggers, workspaces
from cli.options import JSON_MODE, UsageProblem
from cli.output import ExitCode, Printer, exit_code_of
from cli.session import Connection

__all__ = ["Connection", "app", "hoist_global_options", "main"]

GLOBAL_OPTIONS = frozenset({"--url", "--key", "--operator-token", "--profile"})
"""Options of `tp` itself that may also be written after the command (`tp runs list --key K`)."""
OWN_CONNECTION_OPTIONS = frozenset({"profile", "login"})
"""Commands whose own `--url`/`--key` options are what they store: nothing is moved for them."""


class RootGroup(TyperGroup):
    """`tp`'s root: the connection options are read wherever they stand on the line, and every
    command's failure is printed on stderr (as JSON with `--json`) with its exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Typer's own click Context
        return super().parse_args(ctx, hoist_global_options(args))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as error:
            printer(ctx).problem(error)
            raise typer.Exit(exit_code_of(error)) from None
        except CannotConnect as error:
            printer(ctx).cannot_connect(error)
            raise typer.Exit(ExitCode.CANNOT_CONNECT) from None
        except (MissingCredential, config.ConfigError, UsageProblem) as error:
            printer(ctx).usage(str(error))
            raise typer.Exit(ExitCode.USAGE) from None


def printer(ctx: Any) -> Printer:
    """The printer of a failure, in the mode the command's `--json` chose."""
    return Printer(json_mode=bool(ctx.meta.get(JSON_MODE)))


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """`args` with `--url`, `--key`, `--operator-token` and `--profile` (and their values)
    moved before the command, so that they reach `tp` itself; `--` ends the search, and the
    line of `tp profile ...` and `tp login` stays as it is (those options are theirs)."""
    command = next((arg for arg in args if not arg.startswith("-")), None)
    if command in OWN_CONNECTION_OPTIONS:
        return list(args)
    front: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest.extend(args[index:])
            break
        name, equals, _ = arg.partition("=")
        if name in GLOBAL_OPTIONS and (equals or index + 1 < len(args)):
            taken = 1 if equals else 2
            front.extend(args[index : index + taken])
            index += taken
            continue
        rest.append(arg)
        index += 1
    return front + rest


app = typer.Typer(
    name="tp",
    cls=RootGroup,
    help="Manage the trigger plane over its HTTP API: workspaces, keys, flows, triggers, runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# `tp --help` lists the commands in this order: those at the top first, then the groups.
app.add_typer(call.app)
app.add_typer(audit.app)
app.add_typer(health.app)
app.add_typer(profiles.login_app)
app.add_typer(workspaces.app, name="workspaces", no_args_is_help=True)
app.add_typer(keys.app, name="keys", no_args_is_help=True)
app.add_typer(flows.app, name="flows", no_args_is_help=True)
app.add_typer(triggers.app, name="triggers", no_args_is_help=True)
app.add_typer(runs.app, name="runs", no_args_is_help=True)
app.add_typer(profiles.app, name="profile", no_args_is_help=True)


@app.callback()
def connection_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(help="The API's URL (else TP_URL, the profile's, http://127.0.0.1:8000)."),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="A workspace API key (else TP_KEY, the profile's).")
    ] = None,
    operator_token: Annotated[
        str | None,
        typer.Option(help="The operator token, for workspaces (else TP_OPERATOR_TOKEN)."),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="The profile of the config file to use (else TP_PROFILE, `default`)."),
    ] = None,
) -> None:
    """Manage the trigger plane over its HTTP API.

    Settings: a flag wins over the environment (TP_URL, TP_KEY, TP_OPERATOR_TOKEN,
    TP_PROFILE), which wins over the profile file (TP_CONFIG, else ~/.config/tp/config.toml).
    Exit codes: 0 ok, 1 API error, 2 usage or configuration, 3 cannot connect, 4 the run did
    not succeed, 5 watch gave up.
    """
    given = ctx.obj if isinstance(ctx.obj, Connection) else Connection()
    ctx.obj = replace(given, url=url, key=key, operator_token=operator_token, profile=profile)


def main() -> None:
    """`tp` (and `python -m cli`)."""
    app(prog_name="tp")
