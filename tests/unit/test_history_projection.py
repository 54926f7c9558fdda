"""The history's projection on a real SQLite file: which changes it takes, retention, pages,
filters, text search and stats."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contracts.history import ListRuns
from contracts.runs import Run, RunStatus, StartSource
from services.history import core
from services.history.adapters import SqliteRunStore
from services.history.core import Change
from shared.codec import encode
from shared.ids import new_id

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(days=365)
WS = "wsp_000000000000000000000"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRunStore]:
    opened = SqliteRunStore(tmp_path / "history.sqlite")
    yield opened
    opened.close()


def a_run(
    minutes_ago: float = 1.0,
    *,
    status: RunStatus = "succeeded",
    flow_id: str = "flw_a",
    trigger_id: str | None = None,
    source: StartSource = "api",
    error: str | None = None,
    duration: float | None = None,
    run_id: str | None = None,
    workspace_id: str = WS,
) -> Run:
    queued_at = NOW - timedelta(minutes=minutes_ago)
    return Run(
        id=run_id or new_id("run", now_ms=int(queued_at.timestamp() * 1000)),
        workspace_id=workspace_id,
        flow_id=flow_id,
        trigger_id=trigger_id,
        status=status,
        source=source,
        error=error,
        queued_at=queued_at,
        duration_seconds=duration,
    )


def put(run: Run, revision: int) -> Change:
    return Change(run_id=run.id, revision=revision, record=encode(run))


def apply(store: SqliteRunStore, *changes: Change) -> None:
    store.apply(list(changes), max(c.revision for c in changes), LONG_AGO)


def listed(store: SqliteRunStore, **filters: object) -> list[Run]:
    items, _ = store.list_runs(ListRuns(workspace_id=WS, **filters))  # type: ignore[arg-type]
    return items


def test_a_later_change_replaces_the_run_and_the_position_moves_on(store: SqliteRunStore) -> None:
    run = a_run(status="running")
    apply(store, put(run, 1))
    apply(store, put(Run(**{**_fields(run), "status": "succeeded"}), 7))

    assert [r.status for r in listed(store)] == ["succeeded"]
    assert store.applied_sequence() == 7


def test_a_run_that_would_go_back_is_refused(store: SqliteRunStore) -> None:
    run = a_run(status="running")
    finished = Run(**{**_fields(run), "status": "succeeded"})
    apply(store, put(finished, 9))

    apply(store, put(run, 4))  # an older change delivered again, late

    assert [r.status for r in listed(store)] == ["succeeded"]


def test_a_duplicate_change_counts_once(store: SqliteRunStore) -> None:
    run = a_run()
    apply(store, put(run, 3))
    apply(store, put(run, 3), put(run, 3))

    assert [r.id for r in listed(store)] == [run.id]
    assert store.stats_rows(WS, None, None, LONG_AGO, NOW)[0][0] == "succeeded"
    assert len(store.stats_rows(WS, None, None, LONG_AGO, NOW)) == 1


def test_out_of_order_changes_in_one_batch_leave_the_newest(store: SqliteRunStore) -> None:
    run = a_run(status="queued")
    running = Run(**{**_fields(run), "status": "running"})
    failed = Run(**{**_fields(run), "status": "failed"})

    apply(store, put(failed, 12), put(run, 10), put(running, 11))

    assert [r.status for r in listed(store)] == ["failed"]


def test_a_removed_run_leaves_but_an_older_removal_does_not_remove_a_newer_record(
    store: SqliteRunStore,
) -> None:
    kept, removed = a_run(), a_run()
    apply(store, put(kept, 5), put(removed, 6))

    apply(store, Change(run_id=kept.id, revision=4, record=None))
    apply(store, Change(run_id=removed.id, revision=8, record=None))

    assert [r.id for r in listed(store)] == [kept.id]


def test_retention_forgets_runs_queued_before_the_cutoff_and_refuses_new_ones(
    store: SqliteRunStore,
) -> None:
    old, recent, late_old = a_run(60 * 24 * 40), a_run(60), a_run(60 * 24 * 31)
    apply(store, put(old, 1), put(recent, 2))
    cutoff = core.retention_cutoff(NOW, 30)

    gone = store.forget_before(cutoff)
    store.apply([put(late_old, 3)], 3, cutoff)

    assert gone == 1
    assert [r.id for r in listed(store)] == [recent.id]
    assert store.applied_sequence() == 3


def test_pages_follow_each_other_newest_first_even_while_runs_are_added(
    store: SqliteRunStore,
) -> None:
    runs = [a_run(minutes) for minutes in range(10, 0, -1)]  # oldest first
    apply(store, *(put(run, n + 1) for n, run in enumerate(runs)))
    first, cursor = store.list_runs(ListRuns(workspace_id=WS, limit=4))

    apply(store, put(a_run(0.5), 20), put(a_run(0.1), 21))  # newer runs come meanwhile
    pages = [first]
    while cursor is not None:
        page, cursor = store.list_runs(ListRuns(workspace_id=WS, limit=4, cursor=cursor))
        pages.append(page)

    assert [len(page) for page in pages] == [4, 4, 2]
    assert [r.id for page in pages for r in page] == [r.id for r in reversed(runs)]


def test_runs_queued_at_the_same_moment_are_paged_by_id_without_loss(
    store: SqliteRunStore,
) -> None:
    runs = [a_run(5, run_id=new_id("run")) for _ in range(5)]
    apply(store, *(put(run, n + 1) for n, run in enumerate(runs)))

    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = store.list_runs(ListRuns(workspace_id=WS, limit=2, cursor=cursor))
        seen += [r.id for r in page]
        if cursor is None:
            break

    assert seen == sorted((r.id for r in runs), reverse=True)


def test_a_window_is_paged_from_its_cursor_and_a_cursor_past_its_end_keeps_to_the_window(
    store: SqliteRunStore,
) -> None:
    runs = [a_run(minutes) for minutes in range(20, 0, -1)]  # oldest first
    apply(store, *(put(run, n + 1) for n, run in enumerate(runs)))
    since, until = runs[3].queued_at, runs[15].queued_at
    window = ListRuns(workspace_id=WS, limit=5, since=since, until=until)

    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = store.list_runs(ListRuns(**{**_fields(window), "cursor": cursor}))
        seen += [r.id for r in page]
        if cursor is None:
            break
    late = core.cursor_of(core.microseconds(runs[18].queued_at), runs[18].id)
    after_the_end, _ = store.list_runs(ListRuns(**{**_fields(window), "cursor": late}))

    assert seen == [r.id for r in reversed(runs[3:15])]
    assert [r.id for r in after_the_end] == seen[:5]


def test_every_filter_narrows_the_list(store: SqliteRunStore) -> None:
    a = a_run(5, flow_id="flw_a", trigger_id="trg_1", status="failed", source="schedule")
    b = a_run(4, flow_id="flw_b", trigger_id="trg_2", status="succeeded", source="api")
    c = a_run(3, flow_id="flw_a", trigger_id="trg_2", status="running", source="manual")
    other = a_run(2, workspace_id="wsp_111111111111111111111")
    apply(store, put(a, 1), put(b, 2), put(c, 3), put(other, 4))

    def ids(**filters: object) -> list[str]:
        return [r.id for r in listed(store, **filters)]

    assert ids() == [c.id, b.id, a.id]
    assert ids(flow_id="flw_a") == [c.id, a.id]
    assert ids(trigger_id="trg_2") == [c.id, b.id]
    assert ids(statuses=["failed", "running"]) == [c.id, a.id]
    assert ids(statuses=["succeeded"]) == [b.id]
    assert ids(source="schedule") == [a.id]
    assert ids(flow_id="flw_a", statuses=["failed"]) == [a.id]
    assert ids(flow_id="flw_a", trigger_id="trg_2") == [c.id]
    assert ids(since=b.queued_at) == [c.id, b.id]
    assert ids(until=b.queued_at) == [a.id]


def test_q_matches_a_run_id_its_beginning_or_text_in_the_error(store: SqliteRunStore) -> None:
    broken = a_run(3, status="failed", error="upstream said 502 Bad Gateway")
    fine, other = a_run(2), a_run(1)
    apply(store, put(broken, 1), put(fine, 2), put(other, 3))

    assert [r.id for r in listed(store, q="Bad Gateway")] == [broken.id]
    assert [r.id for r in listed(store, q=fine.id)] == [fine.id]
    assert [r.id for r in listed(store, q=other.id[:-3])] == [other.id]
    assert [r.id for r in listed(store, q="nothing", q_run_id=fine.id)] == [fine.id]
    assert listed(store, q="%") == []


def test_stats_count_statuses_rates_percentiles_and_minutes(store: SqliteRunStore) -> None:
    runs = [
        a_run(1.5, status="succeeded", duration=1.0),
        a_run(1.4, status="succeeded", duration=2.0),
        a_run(1.3, status="failed", duration=3.0),
        a_run(0.5, status="skipped"),
        a_run(0.4, status="running"),
        a_run(0.3, status="succeeded", duration=10.0, flow_id="flw_b"),
        a_run(60 * 25, status="failed", duration=99.0),  # outside the default window
    ]
    apply(store, *(put(run, n + 1) for n, run in enumerate(runs)))
    since, until = core.stats_window(None, None, NOW)

    stats = core.summarize(
        store.stats_rows(WS, "flw_a", None, since, until), since, until, flow_id="flw_a"
    )

    assert stats.total == 5
    assert stats.counts == {"succeeded": 2, "failed": 1, "skipped": 1, "running": 1}
    assert stats.success_rate == pytest.approx(2 / 3)
    assert (stats.duration_p50, stats.duration_p99) == (2.0, 3.0)
    assert [(m.minute, m.runs) for m in stats.per_minute] == [
        (NOW - timedelta(minutes=2), 3),
        (NOW - timedelta(minutes=1), 2),
    ]


def test_stats_of_an_empty_window_have_no_rate_and_no_percentiles() -> None:
    stats = core.summarize([], NOW - timedelta(hours=1), NOW)

    assert (stats.total, stats.success_rate, stats.duration_p95) == (0, None, None)


def test_a_stream_that_ends_before_what_was_applied_was_recreated() -> None:
    assert core.must_rebuild(applied_sequence=500, stream_last_sequence=20)
    assert not core.must_rebuild(applied_sequence=20, stream_last_sequence=500)


def test_lag_is_zero_when_caught_up_and_the_age_of_what_may_be_missing_otherwise() -> None:
    assert core.lag_seconds(NOW, None) == 0.0
    assert core.lag_seconds(NOW, NOW - timedelta(seconds=3)) == 3.0
    assert core.lag_seconds(NOW, NOW + timedelta(seconds=1)) == 0.0


def test_a_reopened_store_keeps_its_runs_and_position(tmp_path: Path) -> None:
    first = SqliteRunStore(tmp_path / "h.sqlite")
    run = a_run()
    apply(first, put(run, 42))
    first.close()

    again = SqliteRunStore(tmp_path / "h.sqlite")

    assert again.applied_sequence() == 42
    assert [r.id for r in listed(again)] == [run.id]
    again.close()


def _fields(run: Run) -> dict[str, object]:
    return {name: getattr(run, name) for name in run.__struct_fields__}


def test_the_stats_window_defaults_to_the_last_day_and_survives_the_first_year() -> None:
    assert core.stats_window(None, None, NOW) == (NOW - timedelta(hours=24), NOW)
    start = datetime(1, 1, 1, 3, tzinfo=UTC)
    assert core.stats_window(None, start, NOW) == (datetime.min.replace(tzinfo=UTC), start)


def test_records_of_a_batch_come_back_byte_for_byte_whatever_their_text(
    store: SqliteRunStore,
) -> None:
    # Several records travel in one blob, cut by byte offsets: multi-byte text must not shift them.
    runs = [
        a_run(3, status="failed", error='échec: 数据库 🚫 "quoted" \\ back'),
        a_run(2, error=None),
        a_run(1, status="failed", error="x" * 5000),
    ]
    changes = [put(run, n + 1) for n, run in enumerate(runs)]

    apply(store, *changes)

    assert listed(store) == runs[::-1]
    assert listed(store, q="数据库") == [runs[0]]


def test_batches_left_open_are_seen_once_committed_and_lost_with_their_position_on_a_crash(
    tmp_path: Path,
) -> None:
    store = SqliteRunStore(tmp_path / "h.sqlite")
    first, second, third = a_run(3), a_run(2), a_run(1)
    store.apply([put(first, 1)], 1, LONG_AGO, commit=False)
    store.apply([put(second, 2)], 2, LONG_AGO, commit=False)

    assert listed(store) == []  # queries read another connection: not committed, not seen

    store.commit()
    assert listed(store) == [second, first]

    store.apply([put(third, 3)], 3, LONG_AGO, commit=False)
    store.close()  # a crash before the commit: the batch and its position go together
    again = SqliteRunStore(tmp_path / "h.sqlite")

    assert again.applied_sequence() == 2
    assert listed(again) == [second, first]
    again.close()
