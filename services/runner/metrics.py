"""The runner's Prometheus families: runs ended by status and source with their durations, and
starts refused by reason.

Runs are labelled by status and by how they started (api, schedule, manual, external), not by
flow: flow ids are made by users without bound, and a series per flow would grow the
scrape with every flow ever run. A flow's own numbers are the history's `GET /v1/runs/stats`.
"""

from typing import get_args

from prometheus_client import Counter, Histogram

from contracts.runs import TERMINAL_STATUSES, Run, StartSource
from services.runner.core import RunEvents
from shared.metrics import PREFIX

RUNS = Counter(
    f"{PREFIX}_runs",
    "Runs that ended, by final status and how they started",
    ["status", "source"],
)
RUN_SECONDS = Histogram(
    f"{PREFIX}_run_duration_seconds",
    "Seconds from a run's first attempt to its end, by final status",
    ["status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
REFUSED = Counter(
    f"{PREFIX}_runner_starts_refused",
    "Starts the runner dead-lettered instead of running, by reason",
    ["reason"],
)
REFUSAL_REASONS = ("undecodable", "misfiled", "unknown_flow", "max_deliver")

_ended = {
    (status, source): (RUNS.labels(status, source), RUN_SECONDS.labels(status))
    for status in TERMINAL_STATUSES
    for source in get_args(StartSource)
}
"""Children bound once: the per-run path only looks one up."""
_refused = {reason: REFUSED.labels(reason) for reason in REFUSAL_REASONS}


def refused(reason: str) -> None:
    """Count a start refused for `reason` (one of `REFUSAL_REASONS`)."""
    _refused[reason].inc()


class CountedRunEvents:
    """`RunEvents` that counts every final event it publishes (a run's end) before handing it
    on. A duplicate start of a run that has ended publishes its final event again and is
    counted again: rare (a lost ack), and a count a little high beats a run never counted."""

    def __init__(self, inner: RunEvents) -> None:
        self._inner = inner

    async def publish(self, run: Run, value: bytes | None = None) -> None:
        await self._inner.publish(run, value)
        children = _ended.get((run.status, run.source))
        if children is not None:
            children[0].inc()
            if run.duration_seconds is not None:
                children[1].observe(run.duration_seconds)
