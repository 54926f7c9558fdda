"""The options several `tp` commands share, declared once, and how their values are read."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

JSON_MODE = "json_output"
"""Where `--json`'s choice is kept in the context's `meta` (shared by every nested context)."""


class UsageProblem(Exception):
    """A command line that cannot be sent (bad JSON in --input, contradicting options)."""


def _remember_json_mode(ctx: typer.Context, value: bool) -> bool:
    # The root's error handling reads it, so that a failure is printed as JSON too.
    ctx.meta[JSON_MODE] = value
    return value


JsonOutput = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the API's JSON answer unchanged (for scripts).",
        callback=_remember_json_mode,
    ),
]

# A listing's paging, `tp ... list --limit N --cursor C --all` (see `views.show_pages`).
Limit = Annotated[int | None, typer.Option(min=1, help="Most items on one page (API default 50).")]
CursorOption = Annotated[
    str | None, typer.Option(help="Start after this position (a page's next_cursor).")
]
FollowAll = Annotated[
    bool, typer.Option("--all", help="Follow next_cursor to the last page and list everything.")
]

Since = Annotated[
    str | None, typer.Option(help="From this RFC 3339 time, e.g. 2026-12-01T09:30:00Z.")
]
Until = Annotated[str | None, typer.Option(help="Before this RFC 3339 time.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]

# Starting a flow (`tp call`, `tp triggers run`).
InputOption = Annotated[
    str | None,
    typer.Option(
        "--input",
        "-i",
        help="The flow's input: JSON text, @FILE for a file's JSON, or - for standard input.",
    ),
]
Async = Annotated[
    bool, typer.Option("--async", help="Answer as soon as the start is stored (202).")
]
Wait = Annotated[
    float | None,
    typer.Option(min=0, help="Wait up to this many seconds for the run (at most 60)."),
]


def prefer(run_async: bool, wait: float | None) -> str | None:
    """The `Prefer` header that `--async` or `--wait` ask for (None: the trigger's wait)."""
    if run_async and wait is not None:
        raise UsageProblem("give --async or --wait, not both")
    if run_async:
        return "respond-async"
    return None if wait is None else f"wait={wait:g}"


def confirm(question: str, yes: bool) -> None:
    """Ask on a terminal (never when the input is a pipe or `--yes` is given)."""
    if not yes and sys.stdin.isatty():
        typer.confirm(question, abort=True)


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
