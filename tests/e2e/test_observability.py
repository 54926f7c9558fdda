"""Metrics, health and readiness of every service of the stack started as processes, after a
few runs: each family an operator's questions need is there, with values that add up."""

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack
from tests.e2e.test_walkthrough import create_flow, create_workspace, poll

Samples = dict[str, list[tuple[dict[str, str], float]]]
RUNS = 5


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    return sum(
        found
        for have, found in samples.get(name, [])
        if all(have.get(key) == wanted for key, wanted in labels.items())
    )


def scrape_until(url: str, holds: Callable[[Samples], bool], timeout: float = 20.0) -> Samples:
    return poll(lambda: scrape(url), holds, timeout)  # type: ignore[no-any-return]


def service_url(stack: Stack, service: str) -> str:
    return f"http://127.0.0.1:{stack.metrics_ports[service]}"


def test_every_service_answers_healthz_and_readyz(stack: Stack) -> None:
    urls = [stack.url] + [service_url(stack, name) for name in stack.metrics_ports]
    assert len(urls) == 5
    for url in urls:
        alive = httpx.get(f"{url}/healthz", timeout=5)
        assert (alive.status_code, alive.json()) == (200, {"status": "alive"}), url
        ready = poll(
            lambda url=url: httpx.get(f"{url}/readyz", timeout=5), lambda r: r.status_code == 200
        )
        assert ready.json() == {"status": "ready"}, url
    assert httpx.get(f"{stack.url}/health", timeout=5).status_code == 200  # kept working
    missing = httpx.get(f"{service_url(stack, 'runner')}/nothing", timeout=5)
    assert missing.status_code == 404


def test_after_a_few_runs_each_service_reports_its_families(stack: Stack) -> None:
    admin_key = create_workspace(stack, "observed")
    with stack.client(admin_key) as admin:
        flow_id = create_flow(admin, "echo")
        trigger = admin.post("/v1/triggers", json={"flow_id": flow_id, "type": "api"})
        assert trigger.status_code == 201, trigger.text
        for index in range(RUNS):
            answered = admin.post(f"/trigger/{flow_id}", json={"n": index})
            assert answered.status_code == 200, answered.text
        refused = admin.post("/trigger/flw_nosuchflow", json={})
        assert refused.status_code == 404, refused.text
        every_second = {"kind": "cron", "cron": "* * * * * *", "timezone": "UTC"}
        schedule = admin.post(
            "/v1/triggers", json={"flow_id": flow_id, "type": "schedule", "schedule": every_second}
        )
        assert schedule.status_code == 201, schedule.text
        try:
            _check_families(stack, flow_id)
        finally:
            admin.delete(f"/v1/triggers/{schedule.json()['id']}")


def _check_families(stack: Stack, flow_id: str) -> None:
    ingress = scrape(f"{stack.url}/metrics")
    route = "/trigger/{flow_id}"
    assert value(ingress, "trigger_plane_starts_accepted_total", route=route) >= RUNS
    assert (
        value(ingress, "trigger_plane_starts_refused_total", route=route, reason="flow_not_found")
        >= 1
    )
    assert (
        value(
            ingress, "trigger_plane_http_requests_total", method="POST", route=route, status="200"
        )
        >= RUNS
    )
    assert (
        value(
            ingress, "trigger_plane_http_request_duration_seconds_count", method="POST", route=route
        )
        >= RUNS + 1
    )
    assert value(ingress, "trigger_plane_kv_mirror_age_seconds", bucket="api_keys") < 60
    assert "trigger_plane_nats_reconnects_total" in ingress
    assert value(ingress, "trigger_plane_ready") == 1
    # No series per flow id or per raw path: the route template only.
    assert not any(flow_id in str(labels) for samples in ingress.values() for labels, _ in samples)

    runner = scrape_until(
        f"{service_url(stack, 'runner')}/metrics",
        lambda s: value(s, "trigger_plane_runs_total", status="succeeded", source="schedule") >= 1,
    )
    assert value(runner, "trigger_plane_runs_total", status="succeeded", source="api") >= RUNS
    assert value(runner, "trigger_plane_run_duration_seconds_count", status="succeeded") >= RUNS + 1
    assert "trigger_plane_runner_starts_refused_total" in runner
    assert (
        value(
            runner,
            "trigger_plane_consumer_pending_messages",
            stream="FLOW_STARTS",
            consumer="runner",
        )
        >= 0
    )
    assert "trigger_plane_consumer_redelivered_messages" in runner
    assert value(runner, "trigger_plane_kv_mirror_lag_revisions", bucket="flows") >= 0
    assert value(runner, "trigger_plane_nats_reconnects_total", connection="runner") == 0

    scheduler = scrape_until(
        f"{service_url(stack, 'scheduler')}/metrics",
        lambda s: value(s, "trigger_plane_schedule_fires_total", status="started") >= 1,
    )
    lag_count = value(scheduler, "trigger_plane_schedule_fire_lag_seconds_count")
    lag_sum = value(scheduler, "trigger_plane_schedule_fire_lag_seconds_sum")
    assert lag_count >= 1
    assert lag_sum / lag_count < 5, "fires are stored within seconds of their time"
    assert "trigger_plane_consumer_ack_pending_messages" in scheduler

    history_url = f"{service_url(stack, 'history')}/metrics"
    history = scrape_until(
        history_url, lambda s: value(s, "trigger_plane_history_applied_sequence") >= RUNS
    )
    assert 0 <= value(history, "trigger_plane_history_projection_lag_seconds") < 30

    registry = scrape(f"{service_url(stack, 'registry')}/metrics")
    assert value(registry, "trigger_plane_ready") == 1
    assert "trigger_plane_nats_disconnects_total" in registry


def test_scraping_is_quick(stack: Stack) -> None:
    started = time.monotonic()
    for name in stack.metrics_ports:
        scrape(f"{service_url(stack, name)}/metrics")
    assert time.monotonic() - started < 2
