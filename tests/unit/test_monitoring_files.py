"""The shipped Grafana dashboard and Prometheus configuration match the metrics the code has."""

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import services.history.metrics
import services.ingress.operations
import services.runner.metrics
import services.scheduler.metrics
import shared.metrics

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
MODULES = (shared.metrics, services.ingress.operations, services.runner.metrics)
MODULES += (services.scheduler.metrics, services.history.metrics)


def exposed_names() -> set[str]:
    """Every sample name the processes can expose (`_total`, `_bucket`, ... included)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("trigger_plane_"):
            names.add(family.name)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            names.update(family.name + suffix for suffix in suffixes.get(family.type, []))
    return names


def test_every_metric_the_dashboard_queries_exists() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    queried = {name for expr in expressions for name in re.findall(r"trigger_plane_\w+", expr)}
    assert queried, "the dashboard queries no metric"
    assert queried <= exposed_names(), sorted(queried - exposed_names())


def test_the_scrape_configuration_has_a_job_per_service() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    services = ("ingress", "registry", "runner", "scheduler", "history")
    assert jobs == {f"trigger-plane-{service}" for service in services}
