"""`tp keys`: the workspace's API keys."""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import typer

from cli.options import CursorOption, FollowAll, JsonOutput, Limit, UsageProblem, Yes, confirm
from cli.output import Column
from cli.session import session
from cli.views import fields, show, show_pages, show_secret

app = typer.Typer(help="API keys of the workspace.")

KeyId = Annotated[str, typer.Argument(help="The key's id (key_...).")]

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


def key_pairs(body: Mapping[str, Any]) -> list[tuple[str, Any]]:
    if "secret" in body:  # an issued key
        return [*fields(body["key"]), ("secret", body["secret"])]
    return fields(body)


@app.command("list")
def list_keys(
    ctx: typer.Context,
    limit: Limit = None,
    cursor: CursorOption = None,
    follow_all: FollowAll = False,
    json_output: JsonOutput = False,
) -> None:
    """List the workspace's API keys, oldest first (never their secrets)."""
    client, printer = session(ctx, json_output)
    show_pages(printer, lambda at: client.list_keys(limit, at), cursor, follow_all, KEY_COLUMNS)


@app.command("create")
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


@app.command("rotate")
def rotate_key(
    ctx: typer.Context,
    key_id: KeyId,
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


@app.command("update")
def update_key(
    ctx: typer.Context,
    key_id: KeyId,
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


@app.command("revoke")
def revoke_key(
    ctx: typer.Context,
    key_id: KeyId,
    yes: Yes = False,
    json_output: JsonOutput = False,
) -> None:
    """Revoke a key (it stops working at once; the last admin key cannot be revoked)."""
    confirm(f"Revoke {key_id}?", yes)
    client, printer = session(ctx, json_output)
    show(printer, client.revoke_key(key_id), key_pairs)
