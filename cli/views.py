"""How commands show what the API answered: records, pages (all of them with --all), secrets
and the answer of a start."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cli.output import Column, Printer


def show(printer: Printer, body: Any, pairs: Callable[[Any], Sequence[tuple[str, Any]]]) -> None:
    if printer.json_mode:
        printer.json(body)
    else:
        printer.record(pairs(body))


def fields(body: Mapping[str, Any], flatten: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """Every field of a record; the objects named in `flatten` one sub-field a line."""
    pairs: list[tuple[str, Any]] = []
    for name, value in body.items():
        if name in flatten and isinstance(value, dict):
            pairs.extend((f"{name}.{sub}", inner) for sub, inner in value.items())
        else:
            pairs.append((name, value))
    return pairs


def show_pages(
    printer: Printer,
    fetch: Callable[[str | None], Any],
    cursor: str | None,
    follow_all: bool,
    columns: Sequence[Column],
) -> None:
    """A listing's `--cursor`/`--all`: the page at `cursor` (or with `follow_all` every page
    from there on, as one page) as a table, or as JSON."""
    page = _pages(fetch, cursor, follow_all)
    if printer.json_mode:
        printer.json(page)
        return
    printer.table(columns, page["items"])
    if page.get("next_cursor"):
        printer.note(f"more: --cursor {page['next_cursor']} (or --all for every page)")
    lag = page.get("history_lag_seconds")
    if lag:
        printer.note(f"the run history is {lag:.1f}s behind the run records")


def _pages(fetch: Callable[[str | None], Any], cursor: str | None, follow_all: bool) -> Any:
    page = fetch(cursor)
    if not follow_all:
        return page
    items = list(page["items"])
    while page.get("next_cursor"):
        page = fetch(page["next_cursor"])
        items.extend(page["items"])
    return {**page, "items": items, "next_cursor": None}


def show_secret(printer: Printer, what: str) -> None:
    printer.warn(f"{what} is shown only this once: store it now (the API keeps only a digest).")


def duration(row: Mapping[str, Any]) -> str:
    seconds = row.get("duration_seconds")
    return "-" if seconds is None else f"{seconds:.2f}s"


def show_start(printer: Printer, status: int, body: Any) -> None:
    """The answer of a start: the result of a run that succeeded, else the run id."""
    if printer.json_mode:
        printer.json(body)
        return
    if status == 200:
        printer.json(body.get("result"))
        printer.note(f"run {body['run_id']} succeeded in {duration(body)}")
        return
    printer.record(
        [("run", body["run_id"]), ("status", body["status"]), ("url", body["status_url"])]
    )
    printer.note(f"the run goes on: tp runs watch {body['run_id']}")
