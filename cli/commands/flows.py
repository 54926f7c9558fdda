"""`tp flows`: the workspace's flows, Python functions or HTTP requests."""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import typer

from cli.options import CursorOption, FollowAll, JsonOutput, Limit, UsageProblem, json_option
from cli.output import Column
from cli.session import session
from cli.views import fields, show, show_pages

app = typer.Typer(help="Flows: Python functions the runners serve, or HTTP requests.")


def _flow_target(row: Mapping[str, Any]) -> str:
    settings = row.get("settings") or {}
    if settings.get("kind") == "http":
        return f"{settings.get('method', 'POST')} {settings.get('url')}"
    return str(settings.get("function", "-"))


FLOW_COLUMNS = [
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("KIND", lambda row: (row.get("settings") or {}).get("kind")),
    Column("RUNS", _flow_target),
    Column("TIMEOUT", "timeout_seconds"),
    Column("RETRIES", "retries"),
    Column("CREATED", "created_at"),
]
FUNCTION_COLUMNS = [
    Column("NAME", "name"),
    Column("RUNNER", "runner_id"),
    Column("ANNOUNCED", "announced_at"),
]


def flow_pairs(body: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return fields(body, flatten=("settings",))


@app.command("list")
def list_flows(
    ctx: typer.Context,
    limit: Limit = None,
    cursor: CursorOption = None,
    follow_all: FollowAll = False,
    json_output: JsonOutput = False,
) -> None:
    """List the workspace's flows, oldest first."""
    client, printer = session(ctx, json_output)
    show_pages(printer, lambda at: client.list_flows(limit, at), cursor, follow_all, FLOW_COLUMNS)


@app.command("get")
def get_flow(
    ctx: typer.Context,
    flow_id: Annotated[str, typer.Argument(help="The flow's id (flw_...).")],
    json_output: JsonOutput = False,
) -> None:
    """Show a flow."""
    client, printer = session(ctx, json_output)
    show(printer, client.get_flow(flow_id), flow_pairs)


@app.command("create")
@app.command("register", hidden=True)
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


@app.command("functions")
def list_flow_functions(ctx: typer.Context, json_output: JsonOutput = False) -> None:
    """List the Python functions the running runners serve (what --function may name)."""
    client, printer = session(ctx, json_output)
    functions = client.list_flow_functions()
    if printer.json_mode:
        printer.json(functions)
    else:
        printer.table(FUNCTION_COLUMNS, functions)
