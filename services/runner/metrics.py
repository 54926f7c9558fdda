"""The runner's Prometheus families: runs ended by status and source with their durations, and
starts refused by reason.

Runs are labelled by status and by how they started (api, schedule, manual, external), not by
flow: flow ids are made by users without bound, and a series per flow would grow the
scrape with every flow ever run. A flow's own numbers are the history's `GET /v1/runs/stats`.
"""

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import get_args

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from contracts.runs import TERMINAL_STATUSES, Run, StartSource
from services.runner.core import RunEvents
from shared.metrics import PREFIX

RUN_SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip


class _RunsEnded(Collector):
    """`trigger_plane_runs_total` by status and source and `trigger_plane_run_duration_seconds`
    by status, counted in plain numbers on the event loop and turned into families only when
    scraped: a run's end costs a few additions, not the three locked updates of
    prometheus-client's Counter and Histogram (both are only touched from the event loop,
    which also answers the scrape)."""

    def __init__(self) -> None:
        self.runs = {
            (status, source): 0 for status in TERMINAL_STATUSES for source in get_args(StartSource)
        }
        self.buckets = {
            status: [0] * (len(RUN_SECONDS_BUCKETS) + 1) for status in TERMINAL_STATUSES
        }
        """Per status, the count of durations in each bucket (not cumulative; the last: +Inf)."""
        self.sums = dict.fromkeys(TERMINAL_STATUSES, 0.0)

    def ended(self, status: str, source: str, seconds: float | None) -> None:
        key = (status, source)
        if key not in self.runs:
            return
        self.runs[key] += 1
        if seconds is not None:
            self.buckets[status][bisect_left(RUN_SECONDS_BUCKETS, seconds)] += 1
            self.sums[status] += seconds

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            f"{PREFIX}_runs",
            "Runs that ended, by final status and how they started",
            labels=["status", "source"],
        )
        for (status, source), count in self.runs.items():
            runs.add_metric([status, source], count)
        yield runs
        seconds = HistogramMetricFamily(
            f"{PREFIX}_run_duration_seconds",
            "Seconds from a run's first attempt to its end, by final status",
            labels=["status"],
        )
        bounds = [floatToGoString(bound) for bound in RUN_SECONDS_BUCKETS] + ["+Inf"]
        for status, counts in self.buckets.items():
            cumulative = list(accumulate(counts))
            seconds.add_metric(
                [status],
                buckets=list(zip(bounds, cumulative, strict=True)),
                sum_value=self.sums[status],
            )
        yield seconds


RUNS_ENDED = _RunsEnded()
REGISTRY.register(RUNS_ENDED)
REFUSED = Counter(
    f"{PREFIX}_runner_starts_refused",
    "Starts the runner dead-lettered instead of running, by reason",
    ["reason"],
)
REFUSAL_REASONS = ("undecodable", "misfiled", "unknown_flow", "max_deliver")

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

    def publish(self, run: Run, value: bytes | None = None) -> None:
        self._inner.publish(run, value)
        RUNS_ENDED.ended(run.status, run.source, run.duration_seconds)
