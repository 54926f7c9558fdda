"""The rows of `make bench-all`'s summary table: each benchmark adds its own (`record`) to the
file named by `BENCH_SUMMARY`, and `bench.all` prints them in one table (`table`).

A benchmark run alone (no `BENCH_SUMMARY`) records nothing and prints as before.
"""

import os
from pathlib import Path

import msgspec

SUMMARY_FILE = "BENCH_SUMMARY"
"""The environment variable naming the file of rows (JSON lines)."""


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One measurement of one stage, as the table shows it."""

    stage: str
    ours: str
    bare: str
    ratio: str
    target: str
    met: bool | None = None
    """Whether `ratio` meets `target` (None: not judged, such as a figure with no target)."""


def record(row: Row) -> None:
    """Add `row` to the summary file, if a summary is being collected."""
    path = os.environ.get(SUMMARY_FILE)
    if path:
        with Path(path).open("ab") as out:
            out.write(msgspec.json.encode(row) + b"\n")


def rows(path: Path) -> list[Row]:
    if not path.exists():
        return []
    decoder = msgspec.json.Decoder(Row)
    return [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


def table(items: list[Row]) -> str:
    """A Markdown table of `items` (so that it can be pasted into the README as it is)."""
    header = ("stage", "ours", "bare", "ratio", "target", "met")
    lines = [header]
    for item in items:
        met = "" if item.met is None else ("yes" if item.met else "no")
        lines.append((item.stage, item.ours, item.bare, item.ratio, item.target, met))
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]

    def render(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])
