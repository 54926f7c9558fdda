"""The drills' own ledger (what the test asked for and what it was told) and the checks that
hold the stack's records against it. The checks are plain functions over plain values."""

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from contracts.runs import TERMINAL_STATUSES, Run
from contracts.scheduling import FireRecord

PAUSE_MARGIN = timedelta(seconds=2)
"""Occurrences this close before a trigger's pause was asked for may or may not fire."""


@dataclass
class Answer:
    """One HTTP start request the drill made, and what came of it."""

    status: int | None
    """The HTTP status; None when no answer came (connection refused, timeout)."""
    run_id: str | None = None
    code: str | None = None
    """The problem document's `code`, or the transport error, for a failed start."""

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class ApiStart:
    """One start as a client makes it: an `Idempotency-Key`, retried until accepted."""

    key: str
    answers: list[Answer] = field(default_factory=list)

    @property
    def run_ids(self) -> set[str]:
        return {a.run_id for a in self.answers if a.accepted and a.run_id}


@dataclass
class ScheduledTrigger:
    """A per-second schedule trigger the drill created, and when it asked for its pause."""

    id: str
    first: datetime
    paused_at: datetime | None = None

    def expected(self) -> list[datetime]:
        """Every occurrence that must have exactly one ledger entry."""
        assert self.paused_at is not None, "the trigger was never paused"
        last = (self.paused_at - PAUSE_MARGIN).replace(microsecond=0)
        return [
            self.first + timedelta(seconds=n)
            for n in range(int((last - self.first).total_seconds()) + 1)
        ]


@dataclass
class Ledger:
    workspace_id: str = ""
    starts: list[ApiStart] = field(default_factory=list)
    triggers: list[ScheduledTrigger] = field(default_factory=list)

    def accepted_run_ids(self) -> set[str]:
        return {run_id for start in self.starts for run_id in start.run_ids}

    def answer_counts(self) -> Counter[str]:
        return Counter(
            str(a.status) if a.code is None or a.accepted else f"{a.status} {a.code}"
            for start in self.starts
            for a in start.answers
        )


@dataclass(frozen=True)
class Execution:
    """One line of the drill flow's notes: an execution that began."""

    run_id: str
    attempt: int
    pid: int


def parse_executions(text: str) -> list[Execution]:
    found = []
    for line in text.splitlines():
        run_id, attempt, pid = line.split()
        found.append(Execution(run_id, int(attempt), int(pid)))
    return found


class Problems:
    """Violations found, by criterion, each with a count and a few examples."""

    def __init__(self) -> None:
        self.found: dict[str, list[str]] = defaultdict(list)

    def add(self, criterion: str, example: str) -> None:
        self.found[criterion].append(example)

    def __bool__(self) -> bool:
        return bool(self.found)

    def named_ids(self, per_example: int = 2) -> list[str]:
        """The trigger and run ids (at most `per_example`) named by each criterion's first
        example."""
        return [
            found
            for items in self.found.values()
            for found in NAMED_ID.findall(items[0])[:per_example]
        ]

    def summary(self, examples: int = 5) -> str:
        return "\n".join(
            f"- {criterion}: {len(items)}, e.g. " + "; ".join(items[:examples])
            for criterion, items in self.found.items()
        )


NAMED_ID = re.compile(r"\b(?:trg|run)_[0-9a-z]+")
"""A trigger's or a run's id, as the examples name them."""

ONE_TERMINAL_RUN = "a 2xx start without exactly one terminal run"
NO_ORPHAN_RUN = "a run without an accepted start"
DOCUMENTED_ANSWERS = "a start answered other than 2xx or 503"
ONE_LEDGER_ENTRY = "a (trigger, second) without exactly one ledger entry"
ONE_RUN_PER_FIRE = "a (trigger, second) with more than one run"
FIRE_RUN = "a started fire without its terminal run"
TRUE_ATTEMPTS = "an execution missing from its run's attempts"


def check_starts(ledger: Ledger, runs: list[Run], problems: Problems) -> None:
    """Every 2xx start has one run id and ends in one terminal run; every API run was
    accepted; every answer that is not a 2xx is the documented `503`."""
    by_id = {run.id: run for run in runs}
    for start in ledger.starts:
        if len(start.run_ids) > 1:
            problems.add(ONE_TERMINAL_RUN, f"{start.key} answered run ids {sorted(start.run_ids)}")
        for run_id in start.run_ids:
            run = by_id.get(run_id)
            if run is None:
                problems.add(ONE_TERMINAL_RUN, f"{run_id}: no run record")
            elif run.status not in TERMINAL_STATUSES:
                problems.add(ONE_TERMINAL_RUN, f"{run_id}: still {run.status}")
        for answer in start.answers:
            if not answer.accepted and answer.status != 503:
                problems.add(DOCUMENTED_ANSWERS, f"{answer.status} {answer.code}")
    accepted = ledger.accepted_run_ids()
    for run in runs:
        if run.source == "api" and run.id not in accepted:
            problems.add(NO_ORPHAN_RUN, f"{run.id} ({run.status}) was never answered 2xx")
        elif run.source not in ("api", "schedule"):
            problems.add(NO_ORPHAN_RUN, f"{run.id} has source {run.source}")


def check_fires(
    ledger: Ledger, runs: list[Run], entries: list[FireRecord], problems: Problems
) -> None:
    """Every expected (trigger, second) has exactly one ledger entry and at most one run; no
    second has two entries; every run of a fire is one the ledger started, and ended."""
    by_fire: dict[tuple[str, datetime], list[FireRecord]] = defaultdict(list)
    for entry in entries:
        by_fire[(entry.trigger_id, entry.scheduled_at.astimezone(UTC))].append(entry)
    runs_by_fire: dict[tuple[str, datetime], list[Run]] = defaultdict(list)
    for run in runs:
        if run.source == "schedule" and run.trigger_id and run.scheduled_at:
            runs_by_fire[(run.trigger_id, run.scheduled_at.astimezone(UTC))].append(run)
    for trigger in ledger.triggers:
        for second in trigger.expected():
            found = by_fire.get((trigger.id, second), [])
            if len(found) != 1:
                statuses = sorted(e.status for e in found) or ["nothing"]
                problems.add(ONE_LEDGER_ENTRY, f"{trigger.id} {second:%H:%M:%S}: {statuses}")
    for (trigger_id, second), found in by_fire.items():
        if len(found) > 1 and not _expected(ledger, trigger_id, second):
            statuses = sorted(e.status for e in found)
            problems.add(ONE_LEDGER_ENTRY, f"{trigger_id} {second:%H:%M:%S}: {statuses}")
        for entry in found:
            if entry.status in ("started", "caught_up"):
                fire_runs = runs_by_fire.get((trigger_id, second), [])
                if not any(
                    r.id == entry.run_id and r.status in TERMINAL_STATUSES for r in fire_runs
                ):
                    problems.add(FIRE_RUN, f"{trigger_id} {second:%H:%M:%S} ({entry.status})")
    for (trigger_id, second), fire_runs in runs_by_fire.items():
        if len(fire_runs) > 1:
            problems.add(ONE_RUN_PER_FIRE, f"{trigger_id} {second:%H:%M:%S}: {len(fire_runs)}")
        started = {e.run_id for e in by_fire.get((trigger_id, second), [])}
        for run in fire_runs:
            if run.id not in started:
                problems.add(
                    NO_ORPHAN_RUN,
                    f"{run.id} of {trigger_id} {second:%H:%M:%S}: no ledger entry started it",
                )


def _expected(ledger: Ledger, trigger_id: str, second: datetime) -> bool:
    trigger = next((t for t in ledger.triggers if t.id == trigger_id), None)
    return trigger is not None and second in set(trigger.expected())


def check_attempts(
    runs: list[Run],
    executions: list[Execution],
    runner_ids: dict[int, str],
    killed: set[int],
    problems: Problems,
) -> int:
    """Every execution of a flow is an attempt of its run, numbered as the flow was told and
    made by the runner that ran it, and no attempt ran twice. Executions by a runner the drill
    killed with SIGKILL may be missing (README: a runner that dies in a run's first 0.1 s
    leaves no trace, and the next runner starts it again as attempt 1): returns how many."""
    by_id = {run.id: run for run in runs}
    seen: Counter[tuple[str, int]] = Counter()
    untraced = 0
    for execution in executions:
        run = by_id.get(execution.run_id)
        if run is None:
            continue  # not this drill's run
        runner_id = runner_ids.get(execution.pid, f"pid {execution.pid}")
        recorded = any(
            a.number == execution.attempt and a.runner_id == runner_id for a in run.attempts
        )
        if execution.pid in killed:
            untraced += not recorded
            continue
        seen[(execution.run_id, execution.attempt)] += 1
        if not recorded:
            made = [(a.number, a.runner_id[-6:], a.outcome) for a in run.attempts]
            problems.add(
                TRUE_ATTEMPTS,
                f"{run.id} attempt {execution.attempt} by {runner_id[-6:]}; record: {made}",
            )
    for (run_id, attempt), count in seen.items():
        if count > 1:
            problems.add(TRUE_ATTEMPTS, f"{run_id} ran attempt {attempt} {count} times")
    return untraced


# --- throughput ------------------------------------------------------------------------------

WINDOW = 3
"""Seconds of a throughput window."""
RECOVERED = 0.8
"""Share of the pre-fault rate that counts as recovered."""


class Meter:
    """Events per wall-clock second. A bucket runs from x.5 to x+1.5: schedule fires come in a
    burst just after each whole second, so every bucket holds exactly one burst."""

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()

    @staticmethod
    def bucket(moment: float) -> int:
        return math.floor(moment - 0.5)

    def count(self, moment: float) -> None:
        self.buckets[self.bucket(moment)] += 1

    def rate(self, start: float, end: float) -> float:
        """Mean per second over the whole buckets in [start, end)."""
        first, last = math.ceil(start - 0.5), self.bucket(end)
        if last <= first:
            return 0.0
        return sum(self.buckets[b] for b in range(first, last)) / (last - first)

    def recovered_at(self, baseline: float, since: float, now: float) -> float | None:
        """End of the first `WINDOW` after `since` from which every window up to `now` ran at
        `RECOVERED` of `baseline` or more; None if the last one did not."""
        first, last = math.ceil(since - 0.5), self.bucket(now)
        recovered: float | None = None
        for start in range(first, last - WINDOW + 1):
            rate = sum(self.buckets[b] for b in range(start, start + WINDOW)) / WINDOW
            if rate >= RECOVERED * baseline:
                if recovered is None:
                    recovered = start + WINDOW + 0.5
            else:
                recovered = None
        return recovered
