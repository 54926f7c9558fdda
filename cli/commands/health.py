"""`tp health`: whether the API is up and has loaded its state."""

import typer

from cli.options import JsonOutput
from cli.output import ExitCode
from cli.session import session
from cli.views import fields, show

app = typer.Typer()
"""Its command stands at the top of `tp` (`tp health`)."""


@app.command("health")
def health(ctx: typer.Context, json_output: JsonOutput = False) -> None:
    """Whether the API is up and has loaded its state (no key needed)."""
    client, printer = session(ctx, json_output)
    answer = client.health()
    show(printer, answer, fields)
    if answer.get("status") != "ok":
        raise typer.Exit(ExitCode.API_ERROR)
