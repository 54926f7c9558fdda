"""`make bench-all`'s table: rows recorded by each benchmark process, read back as one table."""

from pathlib import Path

import pytest

from bench import summary
from bench.summary import Row


def test_rows_are_recorded_only_while_a_summary_is_collected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rows.jsonl"
    row = Row(stage="runner x1", ours="1/s", bare="2/s", ratio="0.50", target=">= 0.60", met=False)
    monkeypatch.delenv(summary.SUMMARY_FILE, raising=False)
    summary.record(row)
    assert summary.rows(path) == []
    monkeypatch.setenv(summary.SUMMARY_FILE, str(path))
    summary.record(row)
    summary.record(Row(stage="stats", ours="2 ms", bare="", ratio="", target="< 50 ms"))
    assert [r.stage for r in summary.rows(path)] == ["runner x1", "stats"]


def test_the_table_is_markdown_with_one_line_a_row_and_says_whether_each_target_was_met() -> None:
    lines = summary.table(
        [
            Row(stage="herd", ours="0.4 s", bare="1.2 s", ratio="0.35", target="< 0.5 s", met=True),
            Row(stage="ingest", ours="9/s", bare="", ratio="", target=">= 15/s", met=False),
            Row(stage="rebuild", ours="3 s", bare="", ratio="", target="< 60 s"),
        ]
    ).splitlines()
    assert lines[0].split("|")[1:-1] == [
        " stage   ",
        " ours  ",
        " bare  ",
        " ratio ",
        " target  ",
        " met ",
    ]
    assert set(lines[1]) <= {"|", "-"}
    assert [line.split("|")[-2].strip() for line in lines[2:]] == ["yes", "no", ""]
    assert len({len(line) for line in lines}) == 1  # columns aligned
