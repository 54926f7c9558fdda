"""`tp runs`: list, inspect, cancel and watch runs; their figures."""

import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

import typer

from cli.client import ApiError
from cli.options import CursorOption, FollowAll, JsonOutput, Limit, Since, Until
from cli.output import Column, ExitCode, Printer
from cli.session import session
from cli.views import duration, fields, show_pages

app = typer.Typer(help="Runs: list, inspect, cancel, watch; figures.")

APPEAR_SECONDS = 10.0
"""How long `watch` waits for a run just accepted to have a record (a runner receives it)."""
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "timed_out", "cancelled", "skipped"})


class RunStatus(StrEnum):
    """A run's status, as a choice of `tp runs list --status` (repeatable)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


RunId = Annotated[str, typer.Argument(help="The run's id (run_...).")]
FlowFilter = Annotated[str | None, typer.Option(help="Only this flow's runs.")]
TriggerFilter = Annotated[str | None, typer.Option(help="Only this trigger's runs.")]

RUN_COLUMNS = [
    Column("ID", "id"),
    Column("STATUS", "status", styled=True),
    Column("FLOW", "flow_id"),
    Column("SOURCE", "source"),
    Column("TRIGGER", "trigger_id"),
    Column("QUEUED", "queued_at"),
    Column("DURATION", duration),
]
ATTEMPT_COLUMNS = [
    Column("ATTEMPT", "number"),
    Column("OUTCOME", "outcome", styled=True),
    Column("RUNNER", "runner_id"),
    Column("STARTED", "started_at"),
    Column("FINISHED", "finished_at"),
    Column("ERROR", "error"),
]


def show_run(printer: Printer, run: Mapping[str, Any]) -> None:
    if printer.json_mode:
        printer.json(run)
        return
    printer.record([pair for pair in fields(run) if pair[0] != "attempts"])
    if run.get("attempts"):
        printer.text("")
        printer.table(ATTEMPT_COLUMNS, run["attempts"])


@app.command("list")
def list_runs(
    ctx: typer.Context,
    flow: FlowFilter = None,
    trigger: TriggerFilter = None,
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

    show_pages(printer, fetch, cursor, follow_all, RUN_COLUMNS)


@app.command("get")
def get_run(ctx: typer.Context, run_id: RunId, json_output: JsonOutput = False) -> None:
    """Show a run: input, result or error, and every attempt."""
    client, printer = session(ctx, json_output)
    show_run(printer, client.get_run(run_id))


@app.command("cancel")
def cancel_run(ctx: typer.Context, run_id: RunId, json_output: JsonOutput = False) -> None:
    """Cancel a queued or running run."""
    client, printer = session(ctx, json_output)
    show_run(printer, client.cancel_run(run_id))


@app.command("watch")
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


@app.command("stats")
def run_stats(
    ctx: typer.Context,
    flow: FlowFilter = None,
    trigger: TriggerFilter = None,
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
