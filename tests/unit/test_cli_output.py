"""What `tp` prints: tables (plain when piped, coloured on a terminal), the API's JSON
unchanged with `--json`, problems on stderr, and an exit code per kind of failure."""

import io
import json

import httpx

from cli.client import ApiError
from cli.output import Column, Printer, cell, exit_code_of, plain_table
from tests.unit.cli_samples import PROBLEM, RUN


def printer(json_mode: bool = False, terminal: bool = False) -> tuple[Printer, io.StringIO]:
    out = io.StringIO()
    return Printer(json_mode=json_mode, out=out, err=io.StringIO(), terminal=terminal), out


def test_a_piped_table_is_aligned_plain_text_without_colour_or_boxes() -> None:
    shown, out = printer()
    columns = [Column("ID", "id"), Column("STATUS", "status", styled=True)]
    shown.table(columns, [{"id": "run_1", "status": "failed"}, {"id": "run_22", "status": "ok"}])
    assert out.getvalue() == "ID      STATUS\nrun_1   failed\nrun_22  ok\n"


def test_a_table_on_a_terminal_colours_the_statuses() -> None:
    shown, out = printer(terminal=True)
    columns = [Column("ID", "id"), Column("STATUS", "status", styled=True)]
    shown.table(
        columns, [{"id": "run_1", "status": "failed"}, {"id": "run_2", "status": "succeeded"}]
    )
    text = out.getvalue()
    assert "\x1b[1;31mfailed" in text  # bold red
    assert "\x1b[32msucceeded" in text  # green
    assert "\x1b[" not in text.split("failed")[0].splitlines()[-1].split("run_1")[0]  # ids plain


def test_cells_show_times_to_the_second_and_objects_as_compact_json() -> None:
    assert cell("2026-12-01T09:30:00.123456Z") == "2026-12-01T09:30:00Z"
    assert cell(None) == "-"
    assert cell(True) == "yes"
    assert cell(1.50) == "1.5"
    assert cell({"a": [1, 2]}) == '{"a":[1,2]}'
    assert cell(["mon", "thu"]) == "mon, thu"


def test_plain_tables_trim_trailing_spaces() -> None:
    assert plain_table(["A", "B"], [["x", ""]]) == "A  B\nx\n"


def test_json_mode_prints_the_api_json_unchanged() -> None:
    shown, out = printer(json_mode=True)
    shown.json(RUN)
    assert json.loads(out.getvalue()) == RUN


def test_a_problem_is_one_line_with_status_title_code_and_detail() -> None:
    err = io.StringIO()
    shown = Printer(out=io.StringIO(), err=err)
    shown.problem(ApiError(404, "trigger_not_found", "Not Found", PROBLEM["detail"], PROBLEM))
    assert err.getvalue() == (
        "error: 404 Not Found (trigger_not_found): no trigger 'trg_x' in this workspace\n"
    )


def test_with_json_a_problem_is_the_api_document_on_stderr() -> None:
    err = io.StringIO()
    shown = Printer(json_mode=True, out=io.StringIO(), err=err)
    shown.problem(ApiError(404, "trigger_not_found", "Not Found", PROBLEM["detail"], PROBLEM))
    assert json.loads(err.getvalue()) == PROBLEM


def test_a_run_that_did_not_succeed_has_its_own_exit_code() -> None:
    assert exit_code_of(ApiError(502, "run_failed", "Bad Gateway", "")) == 4
    assert exit_code_of(ApiError(409, "run_cancelled", "Conflict", "")) == 4
    assert exit_code_of(ApiError(409, "trigger_paused", "Conflict", "")) == 1


def test_a_response_without_a_problem_document_still_gives_a_message() -> None:
    request = httpx.Request("GET", "http://x/v1/flows")
    error = ApiError.from_response(
        httpx.Response(502, text="<html>bad gateway</html>", request=request)
    )
    assert (error.status, error.code, error.detail) == (
        502,
        "http_error",
        "<html>bad gateway</html>",
    )


def test_a_table_wider_than_the_terminal_never_folds_an_id() -> None:
    shown, out = printer(terminal=True)
    ids = [f"run_{index:021d}" for index in range(2)]
    rows = [{"id": run_id, "flow": "flw_" + "f" * 21, "reason": "x" * 90} for run_id in ids]
    shown.table([Column("ID", "id"), Column("FLOW", "flow"), Column("REASON", "reason")], rows)
    lines = out.getvalue().splitlines()
    assert [line for line in lines if ids[0] in line]  # whole, on one line
    assert [line for line in lines if ids[1] in line and "x" * 90 in line]
