"""`tp triggers`: api, schedule, manual and webhook triggers; `tp triggers create TYPE`."""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import typer

from cli.options import (
    Async,
    CursorOption,
    FollowAll,
    InputOption,
    JsonOutput,
    Limit,
    UsageProblem,
    Wait,
    Yes,
    confirm,
    json_input,
    prefer,
)
from cli.output import Column, Printer, cell
from cli.schedule import (
    At,
    CatchUpWindow,
    Cron,
    Daily,
    DstGap,
    DstRepeat,
    End,
    Every,
    Hourly,
    Jitter,
    Minute,
    Misfire,
    Once,
    ScheduleJson,
    ScheduleOptions,
    Start,
    Timezone,
    Unit,
    Weekly,
    schedule_summary,
)
from cli.session import connection, session
from cli.views import fields, show, show_pages, show_secret, show_start

app = typer.Typer(help="Triggers: api, schedule, manual and webhook.")
create_app = typer.Typer(help="Create a trigger of one type.")
app.add_typer(create_app, name="create", no_args_is_help=True)


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


TRIGGER_COLUMNS = [
    Column("ID", "id"),
    Column("TYPE", "type"),
    Column("FLOW", "flow_id"),
    Column("NAME", "name"),
    Column("STATE", _state, styled=True),
    Column("WHEN", _trigger_detail),
    Column("OVERLAP", "overlap"),
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
REFUSAL_COLUMNS = [
    Column("AT", "at"),
    Column("STATUS", "status"),
    Column("CODE", "code"),
    Column("DELIVERY", "delivery_id"),
    Column("FROM", "remote"),
    Column("DETAIL", "detail"),
]


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
Overlap = Annotated[
    Literal["allow", "skip", "buffer_one", "cancel_previous"] | None,
    typer.Option(help="What a start does while a run of the trigger goes on."),
]
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


@create_app.command("api")
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
        url = connection(ctx).api_url()
        Printer().note(
            f"call it: tp call {flow_id} --input '{{...}}'   or   curl -X POST {url}/trigger/"
            f'{created["flow_id"]} -H "Authorization: Bearer $KEY" -H \'Content-Type: '
            "application/json' -d '{...}'"
        )


@create_app.command("schedule")
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


@create_app.command("manual")
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


@create_app.command("webhook")
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


@app.command("list")
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
    show_pages(
        printer,
        lambda at: client.list_triggers(flow, limit, at),
        cursor,
        follow_all,
        TRIGGER_COLUMNS,
    )


@app.command("get")
def get_trigger(ctx: typer.Context, trigger_id: TriggerId, json_output: JsonOutput = False) -> None:
    """Show a trigger."""
    client, printer = session(ctx, json_output)
    show(printer, client.get_trigger(trigger_id), trigger_pairs)


@app.command("edit")
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


@app.command("pause")
def pause_trigger(
    ctx: typer.Context, trigger_id: TriggerId, json_output: JsonOutput = False
) -> None:
    """Pause a trigger (its fires are recorded as paused, or caught up on resume)."""
    client, printer = session(ctx, json_output)
    show(printer, client.pause_trigger(trigger_id), trigger_pairs)


@app.command("resume")
def resume_trigger(
    ctx: typer.Context, trigger_id: TriggerId, json_output: JsonOutput = False
) -> None:
    """Resume a paused trigger."""
    client, printer = session(ctx, json_output)
    show(printer, client.resume_trigger(trigger_id), trigger_pairs)


@app.command("delete")
def delete_trigger(
    ctx: typer.Context, trigger_id: TriggerId, yes: Yes = False, json_output: JsonOutput = False
) -> None:
    """Delete a trigger."""
    confirm(f"Delete {trigger_id}?", yes)
    client, printer = session(ctx, json_output)
    show(printer, client.delete_trigger(trigger_id), trigger_pairs)


@app.command("preview")
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


@app.command("fires")
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
    show_pages(
        printer,
        lambda at: client.list_trigger_fires(trigger_id, limit, at),
        cursor,
        follow_all,
        FIRE_COLUMNS,
    )


@app.command("run")
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


@app.command("rotate-secret")
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


@app.command("refusals")
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
    printer.table(REFUSAL_COLUMNS, refusals.get("latest", []))
