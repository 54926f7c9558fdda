"""The HTTP API keeps the promises of its OpenAPI document: Schemathesis generates requests for
every operation (examples, coverage, fuzzing and stateful sequences), with every check on,
against a stack of its own, and finds no failure.

`SCHEMATHESIS_SECONDS` bounds the run (default 90); `SCHEMATHESIS_SEED` replays one.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Stack, running_stack

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack for this module alone: the triggers Schemathesis creates (schedules firing
    every second among them) must not load the other tests' stack."""
    with running_stack(tmp_path_factory.mktemp("contract")) as running:
        yield running


def seeded_admin_key(stack: Stack) -> str:
    """A workspace with a flow, an API trigger, a schedule and a finished run, so generated
    requests meet real records too."""
    operator = stack.client(stack.operator_token)
    created = operator.post("/v1/workspaces", json={"name": "contract"})
    assert created.status_code == 201, created.text
    key: str = created.json()["admin_key"]["secret"]
    admin = stack.client(key)
    flow = admin.post(
        "/v1/flows", json={"name": "echo", "settings": {"kind": "python", "function": "echo"}}
    )
    assert flow.status_code == 201, flow.text
    flow_id = flow.json()["id"]
    for trigger in (
        {"flow_id": flow_id, "type": "api"},
        {"flow_id": flow_id, "type": "schedule", "schedule": {"kind": "hourly", "minute": 5}},
    ):
        assert admin.post("/v1/triggers", json=trigger).status_code == 201
    assert admin.post(f"/trigger/{flow_id}", json={"hello": "world"}).status_code == 200
    return key


def test_every_operation_answers_as_its_openapi_document_says(own_stack: Stack) -> None:
    env = {
        **os.environ,
        "TRIGGER_PLANE_ADMIN_KEY": seeded_admin_key(own_stack),
        "TRIGGER_PLANE_OPERATOR_TOKEN": own_stack.operator_token,
    }
    seconds = os.environ.get("SCHEMATHESIS_SECONDS", "90")
    seed = os.environ.get("SCHEMATHESIS_SEED", "20261201")
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(CONFIG),
            "--no-color",
            "run",
            f"{own_stack.url}/schema/openapi.json",
            "--checks",
            "all",
            # A start answers within its wait (10 s by default, at most 60 s), then 202.
            "--max-response-time",
            "65",
            "--max-time",
            seconds,
            "--seed",
            seed,
            "--report-dir",
            str(own_stack.data / "schemathesis-report"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=float(seconds) + 120,
    )
    print(done.stdout[-20_000:])
    assert done.returncode == 0, f"Schemathesis found failures:\n{done.stdout[-20_000:]}"
    assert "Tested: " in done.stdout
