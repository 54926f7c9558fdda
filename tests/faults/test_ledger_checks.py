"""The drills' checks themselves, on made-up records: each finds what it is there to find."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from contracts.runs import Attempt, Run
from contracts.scheduling import FireRecord
from tests.faults.ledger import (
    NO_ORPHAN_RUN,
    ONE_LEDGER_ENTRY,
    ONE_TERMINAL_RUN,
    TRUE_ATTEMPTS,
    Answer,
    ApiStart,
    Execution,
    Ledger,
    Meter,
    Problems,
    ScheduledTrigger,
    check_attempts,
    check_fires,
    check_starts,
)
from tests.faults.stack import Stack

pytestmark = pytest.mark.faults

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def run(run_id: str, status: str = "succeeded", **fields: object) -> Run:
    return Run(
        id=run_id,
        workspace_id="wsp",
        flow_id="flw",
        status=status,  # type: ignore[arg-type]
        source=fields.pop("source", "api"),  # type: ignore[arg-type]
        queued_at=T0,
        **fields,  # type: ignore[arg-type]
    )


def entry(second: int, status: str = "started", run_id: str | None = None) -> FireRecord:
    return FireRecord(
        trigger_id="trg",
        workspace_id="wsp",
        flow_id="flw",
        trigger_version=1,
        scheduled_at=T0 + timedelta(seconds=second),
        local_time="",
        timezone="UTC",
        status=status,  # type: ignore[arg-type]
        reason="",
        run_id=run_id,
        recorded_at=T0,
    )


def test_a_recovery_counts_only_once_throughput_stays_back() -> None:
    meter = Meter()
    start = 1000.0
    for second in range(20):
        rate = 100 if second < 5 or second in (9, 10, 11) or second >= 14 else 10
        for _ in range(rate):
            meter.count(start + second + 0.6)
    # Back at 9-11, down again at 12-13: recovered only from the windows after 14.
    assert meter.recovered_at(100, start + 5, start + 20) == pytest.approx(start + 17.5)
    assert meter.recovered_at(100, start + 5, start + 13.5) is None


def test_an_accepted_start_without_a_run_and_a_run_nobody_accepted_are_both_found() -> None:
    ledger = Ledger(starts=[ApiStart("k1", [Answer(202, "run_a")]), ApiStart("k2", [Answer(503)])])
    problems = Problems()
    check_starts(ledger, [run("run_b")], problems)
    assert set(problems.found) == {ONE_TERMINAL_RUN, NO_ORPHAN_RUN}


def test_a_second_with_two_entries_and_a_second_with_none_are_found() -> None:
    trigger = ScheduledTrigger("trg", first=T0, paused_at=T0 + timedelta(seconds=5))
    entries = [entry(0, run_id="r0"), entry(1, run_id="r1"), entry(1, "missed")]
    runs = [
        run(f"r{n}", source="schedule", trigger_id="trg", scheduled_at=T0 + timedelta(seconds=n))
        for n in (0, 1)
    ]
    problems = Problems()
    check_fires(Ledger(triggers=[trigger]), runs, entries, problems)
    assert set(problems.found) == {ONE_LEDGER_ENTRY}
    assert len(problems.found[ONE_LEDGER_ENTRY]) == 3  # second 1 twice; seconds 2 and 3 none


def test_an_execution_the_record_does_not_show_is_found_unless_its_runner_was_killed() -> None:
    attempt = Attempt(number=1, runner_id="rnr_b", started_at=T0, outcome="succeeded")
    runs = [run("run_a", attempts=[attempt])]
    problems = Problems()
    untraced = check_attempts(
        runs,
        [Execution("run_a", 1, 10), Execution("run_a", 1, 20)],
        {10: "rnr_a", 20: "rnr_b"},
        set(),
        problems,
    )
    assert untraced == 0
    assert list(problems.found) == [TRUE_ATTEMPTS]
    killed = Problems()
    untraced = check_attempts(
        runs,
        [Execution("run_a", 1, 10), Execution("run_a", 1, 20)],
        {10: "rnr_a", 20: "rnr_b"},
        {10},
        killed,
    )
    assert (untraced, bool(killed)) == (1, False)


def test_a_failed_drill_names_the_ids_of_its_first_examples():
    problems = Problems()
    problems.add(ONE_LEDGER_ENTRY, "trg_0mx725mni0hybmlk15wlk 04:31:54: ['nothing']")
    problems.add(ONE_LEDGER_ENTRY, "trg_second 04:31:55: ['nothing']")
    problems.add(ONE_TERMINAL_RUN, "key-1 answered run ids ['run_a1', 'run_b2', 'run_c3']")
    assert problems.named_ids() == ["trg_0mx725mni0hybmlk15wlk", "run_a1", "run_b2"]


def test_a_failed_drill_quotes_the_log_lines_naming_those_ids(tmp_path):
    stack = Stack(SimpleNamespace(url="nats://127.0.0.1:1", nodes=[None]), tmp_path)
    stack.service("scheduler-1").log.write_text(
        '{"message": "dropping stale tick of trigger trg_1"}\n{"message": "other"}\n'
    )
    long_line = '{"message": "run run_9 of trg_1 ' + "x" * 500 + '"}\n'
    stack.service("runner-2").log.write_text(long_line)

    quoted = stack.mentions(["trg_1"], width=60).splitlines()

    assert quoted == [
        "runner-2: " + long_line[:60],
        'scheduler-1: {"message": "dropping stale tick of trigger trg_1"}',
    ]
    assert stack.mentions(["trg_1"], limit=1).endswith("(1 more)")
