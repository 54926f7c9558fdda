"""The runner's run counts and durations, as a scrape shows them."""

from datetime import UTC, datetime

import msgspec
import pytest
from prometheus_client import REGISTRY, generate_latest

from contracts.runs import FlowStart, Run
from services.runner.executor import begin, finish, queued
from services.runner.metrics import CountedRunEvents
from shared.ids import new_id


class Dropped:
    def publish(self, run: Run, value: bytes | None = None) -> None:
        pass


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def ended(status: str, seconds: float) -> Run:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    start = FlowStart(
        run_id=new_id("run"), workspace_id=new_id("ws"), flow_id=new_id("flw"), source="api"
    )
    running = begin(queued(start, now), now)
    return msgspec.structs.replace(finish(running, status, now), duration_seconds=seconds)  # type: ignore[arg-type]


async def test_a_run_s_end_is_counted_by_status_and_source_with_its_duration_in_its_bucket() -> (
    None
):
    runs = ("trigger_plane_runs_total", {"status": "failed", "source": "api"})
    within = ("trigger_plane_run_duration_seconds_bucket", {"status": "failed", "le": "0.01"})
    below = ("trigger_plane_run_duration_seconds_bucket", {"status": "failed", "le": "0.005"})
    count = ("trigger_plane_run_duration_seconds_count", {"status": "failed"})
    total = ("trigger_plane_run_duration_seconds_sum", {"status": "failed"})
    before = [sample(name, **labels) for name, labels in (runs, within, below, count, total)]
    events = CountedRunEvents(Dropped())
    events.publish(ended("failed", 0.007))
    events.publish(ended("failed", 7200.0))  # past the last bucket: only +Inf
    after = [sample(name, **labels) for name, labels in (runs, within, below, count, total)]
    assert [b - a for a, b in zip(before, after, strict=True)] == pytest.approx(
        [2, 1, 0, 2, 7200.007]
    )
    assert b'trigger_plane_run_duration_seconds_bucket{le="+Inf",status="failed"}' in (
        generate_latest(REGISTRY)
    )
