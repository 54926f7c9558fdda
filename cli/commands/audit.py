"""`tp audit`: who changed which key, flow and trigger, and how."""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import typer

from cli.options import CursorOption, FollowAll, JsonOutput, Limit, Since, Until
from cli.output import Column
from cli.session import session
from cli.views import show_pages

app = typer.Typer()
"""Its command stands at the top of `tp` (`tp audit`)."""


def _changed(row: Mapping[str, Any]) -> str:
    before, after = row.get("before") or {}, row.get("after") or {}
    names = sorted(name for name in {*before, *after} if before.get(name) != after.get(name))
    return ", ".join(names) if before and after else "-"


AUDIT_COLUMNS = [
    Column("AT", "at"),
    Column("ACTION", "action"),
    Column("ACTOR", "actor"),
    Column("RESOURCE", "resource_id"),
    Column("CHANGED", _changed),
]


@app.command("audit")
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

    show_pages(printer, fetch, cursor, follow_all, AUDIT_COLUMNS)
