"""What `tp` prints: the API's JSON unchanged (`--json`), else aligned tables (coloured on a
terminal, plain when piped); errors on stderr with the API's problem message; the exit codes."""

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.client import ApiError, CannotConnect


class ExitCode(IntEnum):
    """`tp`'s exit statuses (documented in the README's CLI section)."""

    OK = 0
    API_ERROR = 1
    """The API answered with a problem document (a refusal, a missing record, a server error)."""
    USAGE = 2
    """A bad command line or configuration (a missing key, an unknown profile, bad --input)."""
    CANNOT_CONNECT = 3
    """Nothing answered at the API's URL."""
    RUN_NOT_SUCCEEDED = 4
    """The run ended without succeeding (`watch`, and `call` or `run` that waited for it)."""
    STILL_RUNNING = 5
    """`watch --timeout` gave up before the run ended."""


RUN_NOT_SUCCEEDED_CODES = frozenset({"run_failed", "run_timed_out", "run_cancelled", "run_skipped"})
"""Problem codes of a start that waited for its run and saw it end without success."""

STATUS_STYLES = {
    "succeeded": "green",
    "started": "green",
    "caught_up": "green",
    "ok": "green",
    "running": "yellow",
    "queued": "cyan",
    "failed": "bold red",
    "timed_out": "red",
    "missed": "red",
    "cancelled": "magenta",
    "skipped": "dim",
    "paused": "dim",
    "overlap_skipped": "dim",
    "dst_gap": "dim",
    "dst_repeat": "dim",
    "ended": "dim",
}

Getter = str | Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Column:
    header: str
    value: Getter
    styled: bool = False
    """Whether the cell is coloured by its value (a status)."""

    def of(self, row: Mapping[str, Any]) -> Any:
        return row.get(self.value) if isinstance(self.value, str) else self.value(row)


_FRACTION = re.compile(r"(T\d\d:\d\d:\d\d)\.\d+")


def cell(value: Any) -> str:
    """A value as one table cell: times to the second, lists joined, objects as JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, str):
        return _FRACTION.sub(r"\1", value)
    if isinstance(value, list | tuple):
        return ", ".join(cell(item) for item in value) if value else "-"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass
class Printer:
    """One command's output: `json_mode` prints the API's JSON as it came."""

    json_mode: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    terminal: bool | None = None
    """Whether `out` is a terminal (colours and boxes); None: ask the stream."""

    def __post_init__(self) -> None:
        if self.terminal is None:
            self.terminal = is_terminal(self.out)

    # --- stdout -----------------------------------------------------------------------------

    def json(self, body: Any) -> None:
        self.out.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")

    def text(self, line: str) -> None:
        self.out.write(line + "\n")

    def table(self, columns: Sequence[Column], rows: Sequence[Mapping[str, Any]]) -> None:
        cells = [[cell(column.of(row)) for column in columns] for row in rows]
        if self.terminal:
            table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
            for column in columns:
                table.add_column(column.header, no_wrap=True)
            for values in cells:
                table.add_row(
                    *(
                        Text(value, style=STATUS_STYLES.get(value, "") if column.styled else "")
                        for column, value in zip(columns, values, strict=True)
                    )
                )
            # Never fold an id in two: a table wider than the terminal is drawn whole and the
            # terminal wraps its lines, as with plain text.
            widths = [
                max([len(column.header)] + [len(values[i]) for values in cells])
                for i, column in enumerate(columns)
            ]
            console = self._console(self.out, terminal=True)
            console.width = max(console.width, sum(widths) + 3 * len(widths))
            console.print(table)
            return
        self.out.write(plain_table([column.header for column in columns], cells))

    def record(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """One record, a field a line."""
        rows = [{"field": name, "value": value} for name, value in pairs]
        if self.terminal:
            table = Table(box=None, show_header=False, pad_edge=False)
            table.add_column(style="bold")
            table.add_column(overflow="fold")
            for name, value in pairs:
                text = cell(value)
                table.add_row(name, Text(text, style=STATUS_STYLES.get(text, "")))
            self._console(self.out, terminal=True).print(table)
            return
        self.out.write(plain_table(None, [[row["field"], cell(row["value"])] for row in rows]))

    # --- stderr -----------------------------------------------------------------------------

    def note(self, line: str) -> None:
        """A remark for the person at the terminal (stderr, so stdout stays the data)."""
        self.err.write(line + "\n")

    def warn(self, line: str) -> None:
        if is_terminal(self.err):
            self._console(self.err).print(Text(line, style="bold yellow"), soft_wrap=True)
        else:
            self.err.write(line + "\n")

    def problem(self, error: ApiError) -> None:
        """The API's problem: the document as it came (`--json`), or one line."""
        if self.json_mode:
            body = error.body if isinstance(error.body, dict) else problem_body(error)
            self.err.write(json.dumps(body, ensure_ascii=False) + "\n")
            return
        self._error(problem_line(error))

    def cannot_connect(self, error: CannotConnect) -> None:
        line = cannot_connect_line(error)
        if self.json_mode:
            body = {"code": "cannot_connect", "detail": line, "url": error.url}
            self.err.write(json.dumps(body) + "\n")
            return
        self._error(line)

    def usage(self, message: str) -> None:
        if self.json_mode:
            self.err.write(json.dumps({"code": "usage", "detail": message}) + "\n")
            return
        self._error(message)

    def _error(self, line: str) -> None:
        if is_terminal(self.err):
            console = self._console(self.err)
            console.print(Text.assemble(("error: ", "bold red"), line), soft_wrap=True)
        else:
            self.err.write(f"error: {line}\n")

    @staticmethod
    def _console(stream: TextIO, terminal: bool | None = None) -> Console:
        """A console on `stream`; `terminal` True draws colours even where Rich would not guess
        it (the caller decided); `NO_COLOR` is still honoured."""
        return Console(file=stream, highlight=False, soft_wrap=False, force_terminal=terminal)


def plain_table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with spaces, no colour or box (what a pipe or `grep`/`awk` wants)."""
    lines = [list(headers)] if headers is not None else []
    lines.extend(list(row) for row in rows)
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "".join(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
        + "\n"
        for line in lines
    )


def problem_line(error: ApiError) -> str:
    """`404 Not Found (trigger_not_found): no trigger ... in this workspace`."""
    line = f"{error.status} {error.title} ({error.code})"
    return f"{line}: {error.detail}" if error.detail else line


def problem_body(error: ApiError) -> dict[str, Any]:
    return {
        "status": error.status,
        "code": error.code,
        "title": error.title,
        "detail": error.detail,
    }


def cannot_connect_line(error: CannotConnect) -> str:
    return (
        f"cannot connect to {error.url} ({error.reason}). Is the API running there (`make run` "
        "starts it)? Set its URL with --url, TP_URL or `tp profile set --url URL`."
    )


def exit_code_of(error: ApiError) -> ExitCode:
    if error.code in RUN_NOT_SUCCEEDED_CODES:
        return ExitCode.RUN_NOT_SUCCEEDED
    return ExitCode.API_ERROR
