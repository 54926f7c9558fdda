"""compose.yaml describes the same stack as `make run` (checked by parsing it: no Docker here)."""

import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"registry", "runner", "scheduler", "history", "ingress"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services.items() if name != "nats"}


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


def test_all_five_services_and_nats_are_present(services):
    assert set(services) == SERVICES | {"nats"}


def test_every_service_runs_its_own_package_and_that_package_has_a_main(services):
    for name, service in app_services(services).items():
        assert command_of(service) == ["python", "-m", f"services.{name}"], name
        assert (ROOT / "services" / name / "__main__.py").is_file(), name


def test_every_service_depends_on_nats(services):
    for name, service in app_services(services).items():
        assert "nats" in service.get("depends_on", []), name


def test_every_service_connects_to_the_nats_container(services):
    for name, service in app_services(services).items():
        assert service["environment"]["NATS_URL"] == "nats://nats:4222", name


def test_the_ingress_publishes_port_8000_and_listens_on_every_interface(services):
    ingress = services["ingress"]
    assert 8000 in published_container_ports(ingress)
    assert ingress["environment"]["INGRESS_HOST"] == "0.0.0.0"


def test_the_operator_token_must_be_given_rather_than_defaulted(services):
    assert (
        services["ingress"]["environment"]["OPERATOR_TOKEN"]
        == "${OPERATOR_TOKEN:?set OPERATOR_TOKEN}"
    )


def test_nats_runs_jetstream_on_a_named_volume(compose, services):
    nats = services["nats"]
    assert nats["image"] == "nats:2.12-alpine"
    assert command_of(nats) == ["-js", "-sd", "/data"]
    volume, _, mount = nats["volumes"][0].partition(":")
    assert mount == "/data"
    assert volume in compose["volumes"]


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
