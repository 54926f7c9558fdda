"""`tp workspaces`: the operator's commands (they need the operator token)."""

from typing import Annotated

import typer

from cli import config
from cli.options import JsonOutput
from cli.session import connection, session
from cli.views import show, show_secret

app = typer.Typer(help="Workspaces (the operator's; needs the operator token).")


@app.command("create")
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
        path = connection(ctx).config().path
        secret = created["admin_key"]["secret"]
        config.write_profile(path, save_profile, {"url": client.url, "key": secret})
        printer.note(f"saved as profile {save_profile!r} in {path}")
