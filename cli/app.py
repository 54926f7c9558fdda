"""`tp`: the trigger plane's management API from the command line (Typer commands; each calls
`cli.client` and prints with `cli.output`)."""

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import httpx
import typer
from typer.core import TyperGroup

from cli import config
from cli.client import ApiError, CannotConnect, Client, MissingCredential
from cli.output import Column, ExitCode, Printer, cell, exit_code_of

APPEAR_SECONDS = 10.0
"""How long `watch` waits for a run just accepted to have a record (a runner receives it)."""
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "skipped"})
GLOBAL_OPTIONS = frozenset({"--url", "--key", "--operator-token", "--profile"})
"""Options of `tp` itself that may also be written after the command (`tp runs list --key K`)."""
OWN_CONNECTION_OPTIONS = frozenset({"profile", "login"})
"""Commands whose own `--url`/`--key` options are what they store: nothing is moved for them."""


class RunStatus(StrEnum):
    """A run's status, as a choice of `tp runs list --status` (repeatable)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class UsageProblem(Exception):
    """A command line that cannot be sent (bad JSON in --input, contradicting options)."""


class HoistingGroup(TyperGroup):
    """`tp`'s root: the connection options are read wherever they stand on the line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # Typer's own click Context
        return super().parse_args(ctx, hoist_global_options(args))


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
    cls=HoistingGroup,
    help="Manage the trigger plane over its HTTP API: workspaces, keys, flows, triggers, runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
workspaces_app = typer.Typer(help="Workspaces (the operator's; needs the operator token).")
keys_app = typer.Typer(help="API keys of the workspace.")
flows_app = typer.Typer(help="Flows: Python functions the runners serve, or HTTP requests.")
triggers_app = typer.Typer(help="Triggers: api, schedule, manual and webhook.")
create_trigger_app = typer.Typer(help="Create a trigger of one type.")
runs_app = typer.Typer(help="Runs: list, inspect, cancel, watch; figures.")
profile_app = typer.Typer(help="Profiles in the config file (URL, key, operator token).")
for group, name in (
    (workspaces_app, "workspaces"),
    (keys_app, "keys"),
    (flows_app, "flows"),
    (triggers_app, "triggers"),
    (runs_app, "runs"),
    (profile_app, "profile"),
):
    app.add_typer(group, name=name, no_args_is_help=True)
triggers_app.add_typer(create_trigger_app, name="create", no_args_is_help=True)


@dataclass(frozen=True)
class Connection:
    """The connection flags given to `tp` itself (None: not given)."""

    url: str | None = None
    key: str | None = None
    operator_token: str | None = None
    profile: str | None = None
    transport: httpx.BaseTransport | None = None
    """How requests travel (tests pass an `httpx.MockTransport` as the invocation's `obj`)."""

    def config(self) -> config.Config:
        flags = {"url": self.url, "key": self.key, "operator_token": self.operator_token}
        return config.resolve(flags, os.environ, self.profile)

    def client(self) -> Client:
        settings = self.config()
        assert settings.url.value is not None  # the default URL at least
        return Client(
            settings.url.value,
            settings.key.value,
            settings.operator_token.value,
            transport=self.transport,
        )


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


P = ParamSpec("P")
R = TypeVar("R")


def handled(command: Callable[P, R]) -> Callable[P, R]:
    """Every failure of `command` printed on stderr with its exit code (`ExitCode`)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        printer = Printer(json_mode=bool(kwargs.get("json_output")))
        try:
            return command(*args, **kwargs)
        except ApiError as error:
            printer.problem(error)
            raise typer.Exit(exit_code_of(error)) from None
        except CannotConnect as error:
            printer.cannot_connect(error)
            raise typer.Exit(ExitCode.CANNOT_CONNECT) from None
        except (MissingCredential, config.ConfigError, UsageProblem) as error:
            printer.usage(str(error))
            raise typer.Exit(ExitCode.USAGE) from None

    return run


def session(ctx: typer.Context, json_output: bool) -> tuple[Client, Printer]:
    connection: Connection = ctx.find_root().obj or Connection()
    client = connection.client()
    ctx.call_on_close(client.close)
    return client, Printer(json_mode=json_output)


# --- options used by many commands ---------------------------------------------------------

JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print the API's JSON answer unchanged (for scripts).")
]
Limit = Annotated[int | None, typer.Option(min=1, help="Most items on one page (API default 50).")]
CursorOption = Annotated[
    str | None, typer.Option(help="Start after this position (a page's next_cursor).")
]
FollowAll = Annotated[
    bool, typer.Option("--all", help="Follow next_cursor to the last page and list everything.")
]
InputOption = Annotated[
    str | None,
    typer.Option(
        "--input",
        "-i",
        help="The flow's input: JSON text, @FILE for a file's JSON, or - for standard input.",
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


Overlap = Annotated[
    Literal["allow", "skip", "buffer_one", "cancel_previous"] | None,
    typer.Option(help="What a start does while a run of the trigger goes on."),
]
Since = Annotated[
    str | None, typer.Option(help="From this RFC 3339 time, e.g. 2026-12-01T09:30:00Z.")
]
Until = Annotated[str | None, typer.Option(help="Before this RFC 3339 time.")]


def read_input(text: str | None) -> bytes | None:
    """The flow input of `--input` as the JSON bytes to send (None: no input)."""
    if text is None:
        return None
    if text == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    elif text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise UsageProblem(f"cannot read the input file {path}: {error.strerror}") from error
    else:
        raw = text.encode()
    return raw if raw.strip() else None


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageProblem(f"{what} is not JSON: {error}") from error


def json_input(text: str | None) -> bytes | None:
    """`--input` checked to be JSON before it is sent (a typo is a usage error, not a 400)."""
    raw = read_input(text)
    if raw is None:
        return None
    parse_json(raw.decode("utf-8", errors="replace"), "the input")
    return raw


def json_option(text: str | None, what: str) -> Any:
    """An option holding JSON (or @FILE)."""
    if text is None:
        return None
    raw = read_input(text)
    return parse_json((raw or b"null").decode(), what)


def confirm(question: str, yes: bool) -> None:
    """Ask on a terminal (never when the input is a pipe or `--yes` is given)."""
    if not yes and sys.stdin.isatty():
        typer.confirm(question, abort=True)


def paged(fetch: Callable[[str | None], Any], cursor: str | None, follow_all: bool) -> Any:
    """One page, or with `follow_all` every page from `cursor` on, as one page."""
    page = fetch(cursor)
    if not follow_all:
        return page
    items = list(page["items"])
    while page.get("next_cursor"):
        page = fetch(page["next_cursor"])
        items.extend(page["items"])
    return {**page, "items": items, "next_cursor": None}


def show_page(printer: Printer, page: Any, columns: Sequence[Column]) -> None:
    if printer.json_mode:
        printer.json(page)
        return
    printer.table(columns, page["items"])
    if page.get("next_cursor"):
        printer.note(f"more: --cursor {page['next_cursor']} (or --all for every page)")
    lag = page.get("history_lag_seconds")
    if lag:
        printer.note(f"the run history is {lag:.1f}s behind the run records")


def show(printer: Printer, body: Any, pairs: Callable[[Any], Sequence[tuple[str, Any]]]) -> None:
    if printer.json_mode:
        printer.json(body)
    else:
        printer.record(pairs(body))


def fields(body: Mapping[str, Any], flatten: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """Every field of a record; the objects named in `flatten` one sub-field a line."""
    pairs: list[tuple[str, Any]] = []
    for name, value in body.items():
        if name in flatten and isinstance(value, dict):
            pairs.extend((f"{name}.{sub}", inner) for sub, inner in value.items())
        else:
            pairs.append((name, value))
    return pairs


# --- columns --------------------------------------------------------------------------------


def _duration(row: Mapping[str, Any]) -> str:
    seconds = row.get("duration_seconds")
    return "-" if seconds is None else f"{seconds:.2f}s"


def _flow_target(row: Mapping[str, Any]) -> str:
    settings = row.get("settings") or {}
    if settings.get("kind") == "http":
        return f"{settings.get('method', 'POST')} {settings.get('url')}"
    return str(settings.get("function", "-"))


def schedule_summary(schedule: Mapping[str, Any]) -> str:
    kind = schedule.get("kind")
    if kind == "cron":
        text = f"cron {schedule.get('cron')}"
    elif kind == "hourly":
        text = f"hourly at :{int(schedule.get('minute', 0)):02d}"
    elif kind == "daily":
        text = f"daily at {schedule.get('at')}"
    elif kind == "weekly":
        text = f"weekly {','.join(schedule.get('days', []))} at {schedule.get('at')}"
    elif kind == "interval":
        text = f"every {schedule.get('every')} {schedule.get('unit', 'seconds')}"
    elif kind == "once":
        text = f"once at {cell(schedule.get('at'))}"
    else:
        text = str(kind)
    zone = schedule.get("timezone")
    return f"{text} ({zone})" if zone and zone != "UTC" else text


def _trigger_detail(row: Mapping[str, Any]) -> str:
    kind = row.get("type")
    if kind == "schedule":
        return schedule_summary(row.get("schedule") or {})
    if kind == "api":
        return f"waits {cell(row.get('sync_wait_seconds'))}s ({row.get('response_mode')})"
    if kind == "webhook":
        return f"{row.get('scheme')} /hooks/{row.get('id')}"
    return "run now only"


def _state(row: Mapping[str, Any]) -> str:
    return "active" if row.get("enabled", True) else "paused"


def _changed(row: Mapping[str, Any]) -> str:
    before, after = row.get("before") or {}, row.get("after") or {}
    names = sorted(name for name in {*before, *after} if before.get(name) != after.get(name))
    return ", ".join(names) if before and after else "-"


KEY_COLUMNS = [
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("SCOPE", "scope"),
    Column("PREFIX", "prefix"),
    Column("CREATED", "created_at"),
    Column("LAST USED", "last_used_at"),
    Column("EXPIRES", "expires_at"),
    Column("FLOWS", "flow_ids"),
]
FLOW_COLUMNS = [
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("KIND", lambda row: (row.get("settings") or {}).get("kind")),
    Column("RUNS", _flow_target),
    Column("TIMEOUT", "timeout_seconds"),
    Column("RETRIES", "retries"),
    Column("CREATED", "created_at"),
]
TRIGGER_COLUMNS = [
    Column("ID", "id"),
    Column("TYPE", "type"),
    Column("FLOW", "flow_id"),
    Column("NAME", "name"),
    Column("STATE", _state, styled=True),
    Column("WHEN", _trigger_detail),
    Column("OVERLAP", "overlap"),
]
RUN_COLUMNS = [
    Column("ID", "id"),
    Column("STATUS", "status", styled=True),
    Column("FLOW", "flow_id"),
    Column("SOURCE", "source"),
    Column("TRIGGER", "trigger_id"),
    Column("QUEUED", "queued_at"),
    Column("DURATION", _duration),
]
FIRE_COLUMNS = [
    Column("SCHEDULED (UTC)", "scheduled_at"),
    Column("LOCAL TIME", "local_time"),
    Column("STATUS", "status", styled=True),
    Column("RUN", "run_id"),
    Column("REASON", "reason"),
]
PREVIEW_COLUMNS = [
    Column("SCHEDULED (UTC)", "scheduled_at"),
    Column("LOCAL TIME", "local_time"),
    Column("FIRES AT (UTC)", "fires_at"),
    Column("FIRES", "fires"),
    Column("NOTE", lambda row: " ".join(str(v) for v in (row.get("skip"), row.get("note")) if v)),
]
AUDIT_COLUMNS = [
    Column("AT", "at"),
    Column("ACTION", "action"),
    Column("ACTOR", "actor"),
    Column("RESOURCE", "resource_id"),
    Column("CHANGED", _changed),
]
FUNCTION_COLUMNS = [
    Column("NAME", "name"),
    Column("RUNNER", "runner_id"),
    Column("ANNOUNCED", "announced_at"),
]
ATTEMPT_COLUMNS = [
    Column("ATTEMPT", "number"),
    Column("OUTCOME", "outcome", styled=True),
    Column("RUNNER", "runner_id"),
    Column("STARTED", "started_at"),
    Column("FINISHED", "finished_at"),
    Column("ERROR", "error"),
]


def show_secret(printer: Printer, what: str) -> None:
    printer.warn(f"{what} is shown only this once: store it now (the API keeps only a digest).")


# --- workspaces (operator) ------------------------------------------------------------------


@workspaces_app.command("create")
@handled
def create_workspace(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The workspace's name.")],
    save_profile: Annotated[
        str | None,
        typer.Option(help="Also save the URL and the new admin key as this profile."),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Create a workspace and its first admin key (its secret is shown only here)."""
    client, printer = session(ctx, json_output)
    created = client.create_workspace(name)
    if save_profile:
        config.check_profile_name(save_profile)
    show(
        printer,
        created,
        lambda body: [
            ("workspace", body["workspace"]["id"]),
            ("name", body["workspace"]["name"]),
            ("admin key", body["admin_key"]["key"]["id"]),
            ("secret", body["admin_key"]["secret"]),
        ],
    )
    show_secret(printer, "The admin key's secret")
    if save_profile:
        path = ctx.find_root().obj.config().path
        secret = created["admin_key"]["secret"]
        config.write_profile(path, save_profile, {"url": client.url, "key": secret})
        printer.note(f"saved as profile {save_profile!r} in {path}")


# --- keys -----------------------------------------------------------------------------------


def key_pairs(body: Mapping[str, Any]) -> list[tuple[str, Any]]:
    if "secret" in body:  # an issued key
        return [*fields(body["key"]), ("secret", body["secret"])]
    return fields(body)


@keys_app.command("list")
@handled
def list_keys(
    ctx: typer.Context,
    limit: Limit = None,
    cursor: CursorOption = None,
    follow_all: FollowAll = False,
    json_output: JsonOutput = False,
) -> None:
    """List the workspace's API keys, oldest first (never their secrets)."""
    client, printer = session(ctx, json_output)
    page = paged(lambda at: client.list_keys(limit, at), cursor, follow_all)
    show_page(printer, page, KEY_COLUMNS)


@keys_app.command("create")
@handled
def create_key(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name saying who uses the key.")],
    scope: Annotated[
        Literal["admin", "trigger"],
        typer.Option(
            help="admin manages the workspace; trigger only calls triggers and reads runs.",
        ),
    ] = "trigger",
    expires_at: Annotated[
        str | None, typer.Option(help="When the key stops working (RFC 3339).")
    ] = None,
    flow: Annotated[
        list[str] | None,
        typer.Option(help="A flow a trigger key may start (repeat it); default: every flow."),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Create an API key (its secret is shown only here)."""
    client, printer = session(ctx, json_output)
    body: dict[str, Any] = {"name": name, "scope": scope}
    if expires_at:
        body["expires_at"] = expires_at
    if flow:
        body["flow_ids"] = flow
    issued = client.create_key(body)
    show(printer, issued, key_pairs)
    show_secret(printer, "The key's secret")


@keys_app.command("rotate")
@handled
def rotate_key(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    grace: Annotated[
        int | None,
        typer.Option(
            min=0, help="Seconds the old secret keeps working (API default 86400, at most 7 days)."
        ),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Give a key a new secret (shown only here); the old one works for the grace period."""
    client, printer = session(ctx, json_output)
    show(printer, client.rotate_key(key_id, grace), key_pairs)
    show_secret(printer, "The new secret")


@keys_app.command("update")
@handled
def update_key(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    expires_at: Annotated[str | None, typer.Option(help="A new expiry (RFC 3339).")] = None,
    no_expiry: Annotated[bool, typer.Option(help="The key never expires.")] = False,
    flow: Annotated[
        list[str] | None, typer.Option(help="Limit a trigger key to these flows (repeat it).")
    ] = None,
    any_flow: Annotated[bool, typer.Option(help="Let a trigger key start every flow.")] = False,
    json_output: JsonOutput = False,
) -> None:
    """Change a key's expiry or the flows a trigger key may start."""
    changes: dict[str, Any] = {}
    if expires_at and no_expiry:
        raise UsageProblem("give --expires-at or --no-expiry, not both")
    if flow and any_flow:
        raise UsageProblem("give --flow or --any-flow, not both")
    if expires_at or no_expiry:
        changes["expires_at"] = expires_at
    if flow or any_flow:
        changes["flow_ids"] = flow or None
    if not changes:
        raise UsageProblem(
            "nothing to change: give --expires-at, --no-expiry, --flow or --any-flow"
        )
    client, printer = session(ctx, json_output)
    show(printer, client.update_key(key_id, changes), key_pairs)


@keys_app.command("revoke")
@handled
def revoke_key(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    yes: Yes = False,
    json_output: JsonOutput = False,
) -> None:
    """Revoke a key (it stops working at once; the last admin key cannot be revoked)."""
    confirm(f"Revoke {key_id}?", yes)
    client, printer = session(ctx, json_output)
    show(printer, client.revoke_key(key_id), key_pairs)


# --- flows ----------------------------------------------------------------------------------


def flow_pairs(body: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return fields(body, flatten=("settings",))


@flows_app.command("list")
@handled
def list_flows(
    ctx: typer.Context,
    limit: Limit = None,
    cursor: CursorOption = None,
    follow_all: FollowAll = False,
    json_output: JsonOutput = False,
) -> None:
    """List the workspace's flows, oldest first."""
    client, printer = session(ctx, json_output)
    show_page(
        printer, paged(lambda at: client.list_flows(limit, at), cursor, follow_all), FLOW_COLUMNS
    )


@flows_app.command("get")
@handled
def get_flow(
    ctx: typer.Context,
    flow_id: Annotated[str, typer.Argument(help="The flow's id (flw_...).")],
    json_output: JsonOutput = False,
) -> None:
    """Show a flow."""
    client, printer = session(ctx, json_output)
    show(printer, client.get_flow(flow_id), flow_pairs)


@flows_app.command("create")
@flows_app.command("register", hidden=True)
@handled
def create_flow(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The flow's name.")],
    function: Annotated[
        str | None,
        typer.Option(help="A Python flow: the function's name (see `tp flows functions`)."),
    ] = None,
    http_url: Annotated[
        str | None, typer.Option("--http-url", help="An HTTP flow: the URL it requests.")
    ] = None,
    method: Annotated[
        Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | None,
        typer.Option(
            help="An HTTP flow's method (default POST).",
        ),
    ] = None,
    header: Annotated[
        list[str] | None, typer.Option(help="An HTTP flow's header, NAME:VALUE (repeat it).")
    ] = None,
    body: Annotated[
        str | None,
        typer.Option(help="An HTTP flow's body template, JSON or @FILE (default: the input)."),
    ] = None,
    request_timeout: Annotated[
        float | None, typer.Option(help="An HTTP flow's timeout per request, seconds.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Longest an attempt may take, seconds (default 300).")
    ] = None,
    retries: Annotated[int | None, typer.Option(help="Retries of a failed attempt.")] = None,
    retry_backoff: Annotated[
        float | None, typer.Option(help="Seconds before the first retry (doubled after).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Most runs of the flow at once (default: no limit).")
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Register a flow: a Python function (--function) or an HTTP request (--http-url)."""
    if (function is None) == (http_url is None):
        raise UsageProblem("give exactly one of --function (a Python flow) or --http-url")
    settings: dict[str, Any]
    if function is not None:
        if method or header or body is not None or request_timeout is not None:
            raise UsageProblem(
                "--method, --header, --body and --request-timeout are for --http-url"
            )
        settings = {"kind": "python", "function": function}
    else:
        settings = {"kind": "http", "url": http_url}
        if method:
            settings["method"] = method
        if header:
            settings["headers"] = dict(_header(item) for item in header)
        if body is not None:
            settings["body"] = json_option(body, "--body")
        if request_timeout is not None:
            settings["timeout_seconds"] = request_timeout
    flow: dict[str, Any] = {"name": name, "settings": settings}
    for field, value in (
        ("timeout_seconds", timeout),
        ("retries", retries),
        ("retry_backoff_seconds", retry_backoff),
        ("concurrency", concurrency),
    ):
        if value is not None:
            flow[field] = value
    client, printer = session(ctx, json_output)
    show(printer, client.create_flow(flow), flow_pairs)


def _header(item: str) -> tuple[str, str]:
    name, colon, value = item.partition(":")
    if not colon or not name.strip():
        raise UsageProblem(f"--header {item!r}: write NAME:VALUE")
    return name.strip(), value.strip()


@flows_app.command("functions")
@handled
def list_flow_functions(ctx: typer.Context, json_output: JsonOutput = False) -> None:
    """List the Python functions the running runners serve (what --function may name)."""
    client, printer = session(ctx, json_output)
    functions = client.list_flow_functions()
    if printer.json_mode:
        printer.json(functions)
    else:
        printer.table(FUNCTION_COLUMNS, functions)


# --- triggers -------------------------------------------------------------------------------


def trigger_pairs(body: Mapping[str, Any]) -> list[tuple[str, Any]]:
    pairs = [pair for pair in fields(body, flatten=("schedule", "hmac")) if pair[0] != "secrets"]
    for secret in body.get("secrets") or []:
        pairs.append(("secret", f"{secret.get('id')} fingerprint {secret.get('fingerprint')}"))
    return pairs


TriggerId = Annotated[str, typer.Argument(help="The trigger's id (trg_...).")]
FlowArgument = Annotated[str, typer.Argument(help="The flow it starts (flw_...).")]
TriggerName = Annotated[str | None, typer.Option(help="A name for the trigger.")]
Paused = Annotated[bool, typer.Option("--paused", help="Create it paused.")]
SyncWait = Annotated[
    float | None,
    typer.Option(help="Seconds a call waits for the run before answering 202 (at most 60)."),
]
ResponseMode = Annotated[
    Literal["accepted", "result"] | None,
    typer.Option(help="result: wait for the run; accepted: 202 at once."),
]

# The schedule's options, shared by `create schedule` and `edit`.
Cron = Annotated[str | None, typer.Option(help="A cron: 5 fields, or 6 with seconds first.")]
Hourly = Annotated[bool, typer.Option("--hourly", help="Every hour, at --minute.")]
Minute = Annotated[int | None, typer.Option(help="The minute of an hourly schedule.")]
Daily = Annotated[str | None, typer.Option(help="Every day at this time, HH:MM or HH:MM:SS.")]
Weekly = Annotated[str | None, typer.Option(help="On these days (mon,thu), at --at.")]
At = Annotated[str | None, typer.Option(help="The time of a weekly (or daily) schedule.")]
Every = Annotated[int | None, typer.Option(help="A fixed interval of --unit.")]
Unit = Annotated[
    Literal["seconds", "minutes", "hours"] | None,
    typer.Option(help="The interval's unit."),
]
Once = Annotated[str | None, typer.Option(help="Once, at this time (RFC 3339 or local time).")]
Timezone = Annotated[
    str | None, typer.Option("--timezone", "--tz", help="The IANA zone it follows (UTC).")
]
Start = Annotated[str | None, typer.Option(help="No fire before this time.")]
End = Annotated[str | None, typer.Option(help="No fire after this time.")]
Jitter = Annotated[int | None, typer.Option(help="Delay every fire by up to this many seconds.")]
DstGap = Annotated[
    Literal["shift", "skip"] | None,
    typer.Option(help="A wall time that does not exist."),
]
DstRepeat = Annotated[
    Literal["once", "twice"] | None,
    typer.Option(help="A wall time that happens twice."),
]
Misfire = Annotated[
    Literal["skip", "run_once", "run_all"] | None,
    typer.Option(
        help="Fires missed while schedulers were down or the trigger paused.",
    ),
]
CatchUpWindow = Annotated[
    int | None, typer.Option(help="Seconds: an older missed fire is never started.")
]
ScheduleJson = Annotated[
    str | None,
    typer.Option(
        "--schedule",
        help="The whole schedule (or, for edit, a merge patch) as JSON or @FILE; "
        "the options above are added to it.",
    ),
]


@dataclass(frozen=True)
class ScheduleOptions:
    cron: str | None = None
    hourly: bool = False
    minute: int | None = None
    daily: str | None = None
    weekly: str | None = None
    at: str | None = None
    every: int | None = None
    unit: str | None = None
    once: str | None = None
    timezone: str | None = None
    start: str | None = None
    end: str | None = None
    jitter: int | None = None
    dst_gap: str | None = None
    dst_repeat: str | None = None
    misfire: str | None = None
    catch_up_window: int | None = None
    raw: str | None = None

    def body(self, *, patch: bool) -> dict[str, Any] | None:
        """The schedule (or with `patch`, the merge patch) these options describe; None when
        they name nothing."""
        schedule: dict[str, Any] = {}
        if self.raw is not None:
            given = json_option(self.raw, "--schedule")
            if not isinstance(given, dict):
                raise UsageProblem("--schedule must be a JSON object")
            schedule.update(given)
        kinds = [
            kind
            for kind, given in (
                ("cron", self.cron is not None),
                ("hourly", self.hourly or (self.minute is not None and not patch)),
                ("daily", self.daily is not None),
                ("weekly", self.weekly is not None),
                ("interval", self.every is not None),
                ("once", self.once is not None),
            )
            if given
        ]
        if len(kinds) > 1:
            raise UsageProblem(f"a schedule is one kind; got {', '.join(kinds)}")
        if kinds:
            schedule["kind"] = kinds[0]
        if self.cron is not None:
            schedule["cron"] = self.cron
        if self.daily is not None:
            schedule["at"] = self.daily
        if self.weekly is not None:
            schedule["days"] = [day.strip().lower() for day in self.weekly.split(",") if day]
        if self.once is not None:
            schedule["at"] = self.once
        if self.every is not None:
            schedule["every"] = self.every
        for name in (
            "minute",
            "at",
            "unit",
            "timezone",
            "start",
            "end",
            "jitter",
            "dst_gap",
            "dst_repeat",
            "misfire",
            "catch_up_window",
        ):
            value = getattr(self, name)
            if value is not None:
                schedule[name] = value
        return schedule or None


def create_trigger(
    ctx: typer.Context, json_output: bool, body: dict[str, Any], name: str | None, paused: bool
) -> Any:
    if name:
        body["name"] = name
    if paused:
        body["enabled"] = False
    client, printer = session(ctx, json_output)
    created = client.create_trigger(body)
    show(printer, created, trigger_pairs)
    return created


@create_trigger_app.command("api")
@handled
def create_api_trigger(
    ctx: typer.Context,
    flow_id: FlowArgument,
    name: TriggerName = None,
    overlap: Overlap = None,
    paused: Paused = False,
    sync_wait: SyncWait = None,
    response_mode: ResponseMode = None,
    json_output: JsonOutput = False,
) -> None:
    """An API trigger: `tp call FLOW_ID` (POST /trigger/FLOW_ID) starts the flow."""
    body: dict[str, Any] = {"type": "api", "flow_id": flow_id}
    _put(body, overlap=overlap, sync_wait_seconds=sync_wait, response_mode=response_mode)
    created = create_trigger(ctx, json_output, body, name, paused)
    if not json_output:
        url = ctx.find_root().obj.config().url.value.rstrip("/")
        Printer().note(
            f"call it: tp call {flow_id} --input '{{...}}'   or   curl -X POST {url}/trigger/"
            f"{created['flow_id']} -H 'Authorization: Bearer $KEY' -H 'Content-Type: "
            "application/json' -d '{...}'"
        )


@create_trigger_app.command("schedule")
@handled
def create_schedule_trigger(
    ctx: typer.Context,
    flow_id: FlowArgument,
    cron: Cron = None,
    hourly: Hourly = False,
    minute: Minute = None,
    daily: Daily = None,
    weekly: Weekly = None,
    at: At = None,
    every: Every = None,
    unit: Unit = None,
    once: Once = None,
    timezone: Timezone = None,
    start: Start = None,
    end: End = None,
    jitter: Jitter = None,
    dst_gap: DstGap = None,
    dst_repeat: DstRepeat = None,
    misfire: Misfire = None,
    catch_up_window: CatchUpWindow = None,
    schedule: ScheduleJson = None,
    name: TriggerName = None,
    overlap: Overlap = None,
    paused: Paused = False,
    json_output: JsonOutput = False,
) -> None:
    """A schedule trigger: one of --cron, --hourly, --daily, --weekly, --every, --once."""
    options = ScheduleOptions(
        cron, hourly, minute, daily, weekly, at, every, unit, once, timezone, start, end,
        jitter, dst_gap, dst_repeat, misfire, catch_up_window, schedule,
    )  # fmt: skip
    body_schedule = options.body(patch=False)
    if body_schedule is None or "kind" not in body_schedule:
        raise UsageProblem(
            "a schedule trigger needs one of --cron, --hourly, --daily, --weekly, --every or "
            "--once (or --schedule with its kind)"
        )
    body: dict[str, Any] = {"type": "schedule", "flow_id": flow_id, "schedule": body_schedule}
    _put(body, overlap=overlap)
    create_trigger(ctx, json_output, body, name, paused)


@create_trigger_app.command("manual")
@handled
def create_manual_trigger(
    ctx: typer.Context,
    flow_id: FlowArgument,
    name: TriggerName = None,
    overlap: Overlap = None,
    paused: Paused = False,
    json_output: JsonOutput = False,
) -> None:
    """A manual trigger: only Run now (`tp triggers run ID`) starts it."""
    body: dict[str, Any] = {"type": "manual", "flow_id": flow_id}
    _put(body, overlap=overlap)
    create_trigger(ctx, json_output, body, name, paused)


WebhookEvents = Annotated[
    list[str] | None, typer.Option("--event", help="Accept only this event (repeat it).")
]
IncludeHeaders = Annotated[
    list[str] | None,
    typer.Option("--include-header", help="Pass this header to the flow (repeat it)."),
]
Tolerance = Annotated[
    int | None, typer.Option(help="Seconds a signed timestamp may be old (default 300).")
]


@create_trigger_app.command("webhook")
@handled
def create_webhook_trigger(
    ctx: typer.Context,
    flow_id: FlowArgument,
    scheme: Annotated[
        Literal["standard_webhooks", "github", "stripe", "hmac"],
        typer.Option(
            help="How the sender signs its deliveries.",
        ),
    ],
    secret: Annotated[
        str | None, typer.Option(help="The signing secret (default: one is generated).")
    ] = None,
    event: WebhookEvents = None,
    include_header: IncludeHeaders = None,
    hmac_header: Annotated[
        str | None, typer.Option(help="hmac: the header holding the signature.")
    ] = None,
    hmac_encoding: Annotated[
        Literal["hex", "base64"] | None,
        typer.Option(help="hmac: the signature's encoding."),
    ] = None,
    hmac_prefix: Annotated[
        str | None, typer.Option(help="hmac: text before the signature (sha256=).")
    ] = None,
    hmac_delivery_id_header: Annotated[
        str | None, typer.Option(help="hmac: the header holding the delivery id.")
    ] = None,
    hmac_event_header: Annotated[
        str | None, typer.Option(help="hmac: the header holding the event name.")
    ] = None,
    tolerance: Tolerance = None,
    response_mode: ResponseMode = None,
    sync_wait: SyncWait = None,
    name: TriggerName = None,
    overlap: Overlap = None,
    paused: Paused = False,
    json_output: JsonOutput = False,
) -> None:
    """A webhook trigger: signed deliveries to POST /hooks/TRIGGER_ID start the flow."""
    body: dict[str, Any] = {"type": "webhook", "flow_id": flow_id, "scheme": scheme}
    hmac = {
        name: value
        for name, value in (
            ("signature_header", hmac_header),
            ("encoding", hmac_encoding),
            ("prefix", hmac_prefix),
            ("delivery_id_header", hmac_delivery_id_header),
            ("event_header", hmac_event_header),
        )
        if value is not None
    }
    _put(
        body,
        secret=secret,
        events=event,
        include_headers=include_header,
        hmac=hmac or None,
        tolerance_seconds=tolerance,
        response_mode=response_mode,
        sync_wait_seconds=sync_wait,
        overlap=overlap,
    )
    created = create_trigger(ctx, json_output, body, name, paused)
    if created.get("new_secret"):
        show_secret(Printer(), "The signing secret (new_secret)")


def _put(body: dict[str, Any], **values: Any) -> None:
    body.update({name: value for name, value in values.items() if value is not None})


@triggers_app.command("list")
@handled
def list_triggers(
    ctx: typer.Context,
    flow: Annotated[str | None, typer.Option(help="Only this flow's triggers.")] = None,
    limit: Limit = None,
    cursor: CursorOption = None,
    follow_all: FollowAll = False,
    json_output: JsonOutput = False,
) -> None:
    """List triggers, oldest first."""
    client, printer = session(ctx, json_output)
    page = paged(lambda at: client.list_triggers(flow, limit, at), cursor, follow_all)
    show_page(printer, page, TRIGGER_COLUMNS)


@triggers_app.command("get")
@handled
def get_trigger(ctx: typer.Context, trigger_id: TriggerId, json_output: JsonOutput = False) -> None:
    """Show a trigger."""
    client, printer = session(ctx, json_output)
    show(printer, client.get_trigger(trigger_id), trigger_pairs)


@triggers_app.command("edit")
@handled
def edit_trigger(
    ctx: typer.Context,
    trigger_id: TriggerId,
    name: TriggerName = None,
    flow: Annotated[str | None, typer.Option(help="Start this flow instead.")] = None,
    type_: Annotated[
        Literal["api", "schedule", "manual", "webhook"] | None,
        typer.Option(
            "--type",
            help="Change the trigger's type (schedule needs a whole schedule).",
        ),
    ] = None,
    overlap: Overlap = None,
    sync_wait: SyncWait = None,
    response_mode: ResponseMode = None,
    event: WebhookEvents = None,
    include_header: IncludeHeaders = None,
    tolerance: Tolerance = None,
    cron: Cron = None,
    hourly: Hourly = False,
    minute: Minute = None,
    daily: Daily = None,
    weekly: Weekly = None,
    at: At = None,
    every: Every = None,
    unit: Unit = None,
    once: Once = None,
    timezone: Timezone = None,
    start: Start = None,
    end: End = None,
    jitter: Jitter = None,
    dst_gap: DstGap = None,
    dst_repeat: DstRepeat = None,
    misfire: Misfire = None,
    catch_up_window: CatchUpWindow = None,
    schedule: ScheduleJson = None,
    json_output: JsonOutput = False,
) -> None:
    """Edit a trigger: the options given change; a schedule is merged (the rest stays)."""
    options = ScheduleOptions(
        cron, hourly, minute, daily, weekly, at, every, unit, once, timezone, start, end,
        jitter, dst_gap, dst_repeat, misfire, catch_up_window, schedule,
    )  # fmt: skip
    changes: dict[str, Any] = {}
    _put(
        changes,
        name=name,
        flow_id=flow,
        type=type_,
        overlap=overlap,
        sync_wait_seconds=sync_wait,
        response_mode=response_mode,
        events=event,
        include_headers=include_header,
        tolerance_seconds=tolerance,
        schedule=options.body(patch=True),
    )
    if not changes:
        raise UsageProblem("nothing to change: give an option (tp triggers edit --help)")
    client, printer = session(ctx, json_output)
    show(printer, client.update_trigger(trigger_id, changes), trigger_pairs)


@triggers_app.command("pause")
@handled
def pause_trigger(
    ctx: typer.Context, trigger_id: TriggerId, json_output: JsonOutput = False
) -> None:
    """Pause a trigger (its fires are recorded as paused, or caught up on resume)."""
    client, printer = session(ctx, json_output)
    show(printer, client.pause_trigger(trigger_id), trigger_pairs)


@triggers_app.command("resume")
@handled
def resume_trigger(
    ctx: typer.Context, trigger_id: TriggerId, json_output: JsonOutput = False
) -> None:
    """Resume a paused trigger."""
    client, printer = session(ctx, json_output)
    show(printer, client.resume_trigger(trigger_id), trigger_pairs)


@triggers_app.command("delete")
@handled
def delete_trigger(
    ctx: typer.Context, trigger_id: TriggerId, yes: Yes = False, json_output: JsonOutput = False
) -> None:
    """Delete a trigger."""
    confirm(f"Delete {trigger_id}?", yes)
    client, printer = session(ctx, json_output)
    show(printer, client.delete_trigger(trigger_id), trigger_pairs)


@triggers_app.command("preview")
@handled
def preview_trigger(
    ctx: typer.Context,
    trigger_id: TriggerId,
    count: Annotated[
        int | None, typer.Option(min=1, max=100, help="How many (default 10).")
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """The next fires of a schedule trigger, in its time zone and in UTC."""
    client, printer = session(ctx, json_output)
    preview = client.preview_trigger(trigger_id, count)
    if printer.json_mode:
        printer.json(preview)
        return
    state = "" if preview.get("enabled", True) else " (paused)"
    printer.note(
        f"{preview['trigger_id']}: time zone {preview['timezone']}, jitter "
        f"{preview['jitter_seconds']}s{state}"
    )
    printer.table(PREVIEW_COLUMNS, preview["fires"])


@triggers_app.command("fires")
@handled
def list_trigger_fires(
    ctx: typer.Context,
    trigger_id: TriggerId,
    limit: Limit = None,
    cursor: CursorOption = None,
    follow_all: FollowAll = False,
    json_output: JsonOutput = False,
) -> None:
    """A schedule trigger's ledger: every fire and non-fire with its reason, newest first."""
    client, printer = session(ctx, json_output)
    page = paged(lambda at: client.list_trigger_fires(trigger_id, limit, at), cursor, follow_all)
    show_page(printer, page, FIRE_COLUMNS)


Async = Annotated[
    bool, typer.Option("--async", help="Answer as soon as the start is stored (202).")
]
Wait = Annotated[
    float | None,
    typer.Option(min=0, help="Wait up to this many seconds for the run (at most 60)."),
]


def prefer(run_async: bool, wait: float | None) -> str | None:
    if run_async and wait is not None:
        raise UsageProblem("give --async or --wait, not both")
    if run_async:
        return "respond-async"
    return None if wait is None else f"wait={wait:g}"


def show_start(printer: Printer, status: int, body: Any) -> None:
    """The answer of a start: the result of a run that succeeded, else the run id."""
    if printer.json_mode:
        printer.json(body)
        return
    if status == 200:
        printer.json(body.get("result"))
        printer.note(f"run {body['run_id']} succeeded in {_duration(body)}")
        return
    printer.record(
        [("run", body["run_id"]), ("status", body["status"]), ("url", body["status_url"])]
    )
    printer.note(f"the run goes on: tp runs watch {body['run_id']}")


@triggers_app.command("run")
@handled
def run_trigger_now(
    ctx: typer.Context,
    trigger_id: TriggerId,
    flow_input: InputOption = None,
    overlap: Overlap = None,
    run_async: Async = False,
    wait: Wait = None,
    json_output: JsonOutput = False,
) -> None:
    """Run now: start the trigger's flow once, whatever its type or state.

    Prints the result if the run succeeds within the wait (10 s, or an API trigger's), else
    the run id; exits 4 if the run ended without succeeding.
    """
    content = json_input(flow_input)
    client, printer = session(ctx, json_output)
    status, body = client.run_trigger_now(
        trigger_id, content, overlap=overlap, prefer=prefer(run_async, wait)
    )
    show_start(printer, status, body)


@triggers_app.command("rotate-secret")
@handled
def rotate_webhook_secret(
    ctx: typer.Context,
    trigger_id: TriggerId,
    previous_valid: Annotated[
        int | None,
        typer.Option(min=0, help="Seconds the previous secret keeps verifying (default 86400)."),
    ] = None,
    secret: Annotated[str | None, typer.Option(help="Your own new secret.")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Give a webhook trigger a new signing secret (shown only here, in new_secret)."""
    body: dict[str, Any] = {}
    _put(body, previous_valid_seconds=previous_valid, secret=secret)
    client, printer = session(ctx, json_output)
    show(printer, client.rotate_webhook_secret(trigger_id, body), trigger_pairs)
    show_secret(printer, "The new signing secret (new_secret)")


@triggers_app.command("refusals")
@handled
def list_webhook_refusals(
    ctx: typer.Context, trigger_id: TriggerId, json_output: JsonOutput = False
) -> None:
    """A webhook trigger's refused deliveries: counts by code and the latest ones."""
    client, printer = session(ctx, json_output)
    refusals = client.list_webhook_refusals(trigger_id)
    if printer.json_mode:
        printer.json(refusals)
        return
    counts = ", ".join(f"{code} {count}" for code, count in refusals.get("by_code", {}).items())
    printer.note(f"{refusals.get('total', 0)} refused" + (f": {counts}" if counts else ""))
    columns = [
        Column("AT", "at"),
        Column("STATUS", "status"),
        Column("CODE", "code"),
        Column("DELIVERY", "delivery_id"),
        Column("FROM", "remote"),
        Column("DETAIL", "detail"),
    ]
    printer.table(columns, refusals.get("latest", []))


# --- calling an API trigger -----------------------------------------------------------------


@app.command("call")
@handled
def call_trigger(
    ctx: typer.Context,
    flow_id: Annotated[str, typer.Argument(help="The flow whose API trigger to call.")],
    flow_input: InputOption = None,
    run_async: Async = False,
    wait: Wait = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Retries with the same key return the same run.")
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Start a flow through its API trigger (POST /trigger/FLOW_ID), as a caller would.

    Prints the result when the run succeeds within the trigger's wait, else the run id
    (--async: at once); exits 4 if the run ended without succeeding.
    """
    content = json_input(flow_input)
    client, printer = session(ctx, json_output)
    status, body = client.call_trigger(
        flow_id, content, prefer=prefer(run_async, wait), idempotency_key=idempotency_key
    )
    show_start(printer, status, body)


# --- runs -----------------------------------------------------------------------------------


RunId = Annotated[str, typer.Argument(help="The run's id (run_...).")]


def show_run(printer: Printer, run: Mapping[str, Any]) -> None:
    if printer.json_mode:
        printer.json(run)
        return
    printer.record([pair for pair in fields(run) if pair[0] != "attempts"])
    if run.get("attempts"):
        printer.text("")
        printer.table(ATTEMPT_COLUMNS, run["attempts"])


@runs_app.command("list")
@handled
def list_runs(
    ctx: typer.Context,
    flow: Annotated[str | None, typer.Option(help="Only this flow's runs.")] = None,
    trigger: Annotated[str | None, typer.Option(help="Only this trigger's runs.")] = None,
    status: Annotated[
        list[RunStatus] | None,
        typer.Option(
            help="Only runs in this status (repeat it for several).",
        ),
    ] = None,
    source: Annotated[
        Literal["api", "schedule", "manual", "webhook", "external"] | None,
        typer.Option(
            help="Only runs started this way.",
        ),
    ] = None,
    since: Since = None,
    until: Until = None,
    query: Annotated[
        str | None,
        typer.Option(
            "--query", "-q", help="A run id (or its start), an Idempotency-Key, or error text."
        ),
    ] = None,
    limit: Limit = None,
    cursor: CursorOption = None,
    follow_all: FollowAll = False,
    json_output: JsonOutput = False,
) -> None:
    """List runs, newest first (from the run history)."""
    client, printer = session(ctx, json_output)

    def fetch(at: str | None) -> Any:
        return client.list_runs(
            flow_id=flow,
            trigger_id=trigger,
            statuses=[choice.value for choice in status or ()],
            source=source,
            since=since,
            until=until,
            q=query,
            limit=limit,
            cursor=at,
        )

    show_page(printer, paged(fetch, cursor, follow_all), RUN_COLUMNS)


@runs_app.command("get")
@handled
def get_run(ctx: typer.Context, run_id: RunId, json_output: JsonOutput = False) -> None:
    """Show a run: input, result or error, and every attempt."""
    client, printer = session(ctx, json_output)
    show_run(printer, client.get_run(run_id))


@runs_app.command("cancel")
@handled
def cancel_run(ctx: typer.Context, run_id: RunId, json_output: JsonOutput = False) -> None:
    """Cancel a queued or running run."""
    client, printer = session(ctx, json_output)
    show_run(printer, client.cancel_run(run_id))


@runs_app.command("watch")
@handled
def watch_run(
    ctx: typer.Context,
    run_id: RunId,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between two looks.")] = 1.0,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Give up after this many seconds (exit 5).")
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Follow a run until it ends; exit 0 if it succeeded, 4 if not, 5 on --timeout."""
    client, printer = session(ctx, json_output)
    deadline = None if timeout is None else time.monotonic() + timeout
    appear_by = time.monotonic() + APPEAR_SECONDS
    seen = None
    while True:
        try:
            run = client.get_run(run_id)
        except ApiError as error:
            # A start accepted a moment ago has no record until a runner receives it.
            if error.code != "run_not_found" or time.monotonic() > appear_by:
                raise
            if deadline is not None and time.monotonic() >= deadline:
                raise
            time.sleep(min(interval, 0.2))
            continue
        if run["status"] != seen and not printer.json_mode:
            seen = run["status"]
            printer.note(f"{run_id} {seen}")
        if run["status"] in TERMINAL_STATUSES:
            break
        if deadline is not None and time.monotonic() >= deadline:
            show_run(printer, run)
            printer.note(f"gave up after {timeout:g}s: the run is {run['status']}")
            raise typer.Exit(ExitCode.STILL_RUNNING)
        time.sleep(
            interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
        )
    show_run(printer, run)
    if run["status"] != "succeeded":
        raise typer.Exit(ExitCode.RUN_NOT_SUCCEEDED)


@runs_app.command("stats")
@handled
def run_stats(
    ctx: typer.Context,
    flow: Annotated[str | None, typer.Option(help="Only this flow's runs.")] = None,
    trigger: Annotated[str | None, typer.Option(help="Only this trigger's runs.")] = None,
    since: Since = None,
    until: Until = None,
    json_output: JsonOutput = False,
) -> None:
    """Counts by status, success rate and durations over a window (default: the last 24 h)."""
    client, printer = session(ctx, json_output)
    stats = client.run_stats(flow_id=flow, trigger_id=trigger, since=since, until=until)
    if printer.json_mode:
        printer.json(stats)
        return
    pairs = [
        (name, value)
        for name, value in stats.items()
        if name not in ("counts", "per_minute") and value is not None
    ]
    pairs.extend((f"count.{status}", count) for status, count in stats.get("counts", {}).items())
    printer.record(pairs)


# --- audit log ------------------------------------------------------------------------------


@app.command("audit")
@handled
def list_audit(
    ctx: typer.Context,
    resource_type: Annotated[
        Literal["workspace", "key", "flow", "trigger"] | None,
        typer.Option(
            help="Only changes of this kind of record.",
        ),
    ] = None,
    resource_id: Annotated[str | None, typer.Option(help="Only changes of this record.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, such as key.rotated.")
    ] = None,
    actor: Annotated[
        str | None, typer.Option(help="Only changes made with this key id, or by operator.")
    ] = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
    cursor: CursorOption = None,
    follow_all: FollowAll = False,
    json_output: JsonOutput = False,
) -> None:
    """The audit log: key, flow and trigger changes, who made them, newest first."""
    client, printer = session(ctx, json_output)

    def fetch(at: str | None) -> Any:
        return client.list_audit(
            resource_type=resource_type,
            resource_id=resource_id,
            action=action,
            actor=actor,
            since=since,
            until=until,
            limit=limit,
            cursor=at,
        )

    show_page(printer, paged(fetch, cursor, follow_all), AUDIT_COLUMNS)


@app.command("health")
@handled
def health(ctx: typer.Context, json_output: JsonOutput = False) -> None:
    """Whether the API is up and has loaded its state (no key needed)."""
    client, printer = session(ctx, json_output)
    answer = client.health()
    show(printer, answer, fields)
    if answer.get("status") != "ok":
        raise typer.Exit(ExitCode.API_ERROR)


# --- profiles -------------------------------------------------------------------------------


ProfileName = Annotated[
    str | None, typer.Argument(help="The profile's name (default: TP_PROFILE, else default).")
]


def _profile_name(name: str | None) -> str:
    return name or os.environ.get("TP_PROFILE") or config.DEFAULT_PROFILE


@profile_app.command("set")
@handled
def set_profile(
    name: ProfileName = None,
    url: Annotated[str | None, typer.Option(help="The API's URL.")] = None,
    key: Annotated[str | None, typer.Option(help="A workspace API key ('' removes it).")] = None,
    operator_token: Annotated[
        str | None, typer.Option(help="The operator token ('' removes it).")
    ] = None,
) -> None:
    """Save settings in a profile (the file is written readable by you only, mode 0600)."""
    if url is None and key is None and operator_token is None:
        raise UsageProblem("nothing to save: give --url, --key or --operator-token")
    path = config.config_path(os.environ)
    profile = _profile_name(name)
    config.write_profile(path, profile, {"url": url, "key": key, "operator_token": operator_token})
    Printer().note(f"saved profile {profile!r} in {path}")


@profile_app.command("list")
@handled
def list_profiles(json_output: JsonOutput = False) -> None:
    """List the profiles (secrets shortened)."""
    path = config.config_path(os.environ)
    profiles = config.read_profiles(path)
    rows = [
        {
            "name": name,
            "url": values.get("url"),
            "key": config.masked(values.get("key")),
            "operator_token": config.masked(values.get("operator_token")),
        }
        for name, values in profiles.items()
    ]
    printer = Printer(json_mode=json_output)
    if json_output:
        printer.json(rows)
        return
    columns = [
        Column("NAME", "name"),
        Column("URL", "url"),
        Column("KEY", "key"),
        Column("OPERATOR TOKEN", "operator_token"),
    ]
    printer.table(columns, rows)
    printer.note(f"profiles in {path}")


@profile_app.command("show")
@handled
def show_profile(name: ProfileName = None, json_output: JsonOutput = False) -> None:
    """The settings a command would use now, and where each comes from."""
    settings = config.resolve({}, os.environ, name)
    rows = [
        ("profile", settings.profile, str(settings.path)),
        ("url", settings.url.value, settings.url.source),
        ("key", config.masked(settings.key.value), settings.key.source),
        (
            "operator_token",
            config.masked(settings.operator_token.value),
            settings.operator_token.source,
        ),
    ]
    printer = Printer(json_mode=json_output)
    if json_output:
        printer.json({name: {"value": value, "from": source} for name, value, source in rows})
        return
    printer.table(
        [Column("SETTING", "setting"), Column("VALUE", "value"), Column("FROM", "source")],
        [{"setting": name, "value": value, "source": source} for name, value, source in rows],
    )


@profile_app.command("delete")
@handled
def delete_profile(name: Annotated[str, typer.Argument(help="The profile to delete.")]) -> None:
    """Delete a profile from the file."""
    path = config.config_path(os.environ)
    config.delete_profile(path, name)
    Printer().note(f"deleted profile {name!r} from {path}")


@app.command("login")
@handled
def login(
    ctx: typer.Context,
    name: ProfileName = None,
    url: Annotated[str | None, typer.Option(help="The API's URL (default: the profile's).")] = None,
    key: Annotated[
        str | None, typer.Option(help="The API key (asked for, hidden, when not given).")
    ] = None,
) -> None:
    """Check an API key against the API, then save it (and the URL) in a profile."""
    path = config.config_path(os.environ)
    profile = _profile_name(name)
    stored = config.read_profiles(path).get(profile, {})
    target = url or os.environ.get("TP_URL") or stored.get("url") or config.DEFAULT_URL
    secret = key or typer.prompt("API key", hide_input=True)
    printer = Printer()
    transport = ctx.find_root().obj.transport if ctx.find_root().obj else None
    with Client(target, secret, transport=transport) as client:
        try:
            client.list_keys(limit=1)
            kind = "an admin key"
        except ApiError as error:
            if error.code != "admin_key_required" and error.status != 403:
                raise
            kind = "a trigger key (it calls triggers and reads runs)"
    config.write_profile(path, profile, {"url": target, "key": secret})
    printer.note(f"{kind} of {target}: saved as profile {profile!r} in {path}")


def main() -> None:
    """`tp` (and `python -m cli`)."""
    app(prog_name="tp")
