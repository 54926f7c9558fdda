"""`tp call`: start a flow through its API trigger, as a caller would."""

from typing import Annotated

import typer

from cli.options import Async, InputOption, JsonOutput, Wait, json_input, prefer
from cli.session import session
from cli.views import show_start

app = typer.Typer()
"""Its command stands at the top of `tp` (`tp call`)."""


@app.command("call")
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
