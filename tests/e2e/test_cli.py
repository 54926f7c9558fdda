"""`tp` against the whole stack started as processes: the README's CLI walkthrough, in-process
(Typer's runner, for speed) and as the installed `.venv/bin/tp` command."""

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cli.app import app
from tests.e2e.conftest import ROOT, Stack

TP = Path(sys.executable).with_name("tp")


@dataclass
class Tp:
    """`tp` with the stack's URL, a workspace's admin key and a profile file of its own."""

    stack: Stack
    config: Path
    key: str | None = None

    def env(self, **extra: str | None) -> dict[str, str | None]:
        return {
            "TP_URL": self.stack.url,
            "TP_KEY": self.key,
            "TP_OPERATOR_TOKEN": self.stack.operator_token,
            "TP_CONFIG": str(self.config),
            "TP_PROFILE": None,
            **extra,
        }

    def __call__(self, *args: str, code: int = 0, **env: str | None) -> Result:
        result = CliRunner().invoke(app, list(args), env=self.env(**env))
        assert result.exit_code == code, (
            f"tp {' '.join(args)} exited {result.exit_code}: {result.stderr}{result.stdout}"
        )
        return result

    def json(self, *args: str, **env: str | None) -> Any:
        return json.loads(self(*args, "--json", **env).stdout)


def poll(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s; last value: {value}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tp(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Tp:
    """The operator creates a workspace with `tp` and saves its admin key as profile `e2e`."""
    runner = Tp(stack, tmp_path_factory.mktemp("tp") / "config.toml")
    created = runner.json("workspaces", "create", "cli-e2e", "--save-profile", "e2e")
    runner.key = created["admin_key"]["secret"]
    assert created["workspace"]["name"] == "cli-e2e"
    return runner


@pytest.fixture(scope="module")
def flow_id(tp: Tp) -> str:
    flow = tp.json("flows", "create", "greet", "--function", "echo")
    assert flow["settings"] == {"kind": "python", "function": "echo"}
    listed = tp("flows", "list").stdout
    assert flow["id"] in listed
    # The runners announce their functions once up, which may come after the ingress answers.
    poll(lambda: tp("flows", "functions").stdout, lambda listed: "echo" in listed)
    return str(flow["id"])


def test_each_trigger_type_is_created_previewed_paused_resumed_and_run_now(
    tp: Tp, flow_id: str
) -> None:
    api = tp.json("triggers", "create", "api", flow_id, "--sync-wait", "5")
    assert (api["type"], api["sync_wait_seconds"]) == ("api", 5)
    schedule = tp.json(
        "triggers", "create", "schedule", flow_id, "--daily", "09:30", "--tz", "Europe/Berlin",
        "--misfire", "skip", "--dst-gap", "skip", "--name", "morning",
    )  # fmt: skip
    assert schedule["schedule"] == {
        "kind": "daily",
        "at": "09:30",
        "timezone": "Europe/Berlin",
        "dst_gap": "skip",
        "misfire": "skip",
    }
    manual = tp.json("triggers", "create", "manual", flow_id, "--name", "by hand")
    table = tp("triggers", "list", "--flow", flow_id).stdout
    assert "daily at 09:30 (Europe/Berlin)" in table
    assert manual["id"] in table

    preview = tp.json("triggers", "preview", schedule["id"], "--count", "3")
    assert len(preview["fires"]) == 3
    assert all(
        fire["local_time"].endswith(("T09:30:00+01:00", "T09:30:00+02:00"))
        for fire in preview["fires"]
    )
    assert len(tp("triggers", "preview", schedule["id"], "--count", "3").stdout.splitlines()) == 4

    assert tp.json("triggers", "pause", schedule["id"])["enabled"] is False
    assert "paused" in tp("triggers", "list").stdout
    assert tp.json("triggers", "resume", schedule["id"])["enabled"] is True
    edited = tp.json("triggers", "edit", schedule["id"], "--cron", "0 7 * * MON-FRI")
    assert edited["schedule"]["cron"] == "0 7 * * MON-FRI"
    assert edited["schedule"]["timezone"] == "Europe/Berlin"  # an edit is a merge

    ran = tp("triggers", "run", manual["id"], "--input", '{"note": "run now"}')
    assert json.loads(ran.stdout) == {"note": "run now"}
    assert "succeeded" in ran.stderr

    deleted = tp.json("triggers", "delete", manual["id"], "--yes")
    assert deleted["id"] == manual["id"]
    tp("triggers", "get", manual["id"], code=1)


def test_a_schedule_fires_and_its_ledger_says_so(tp: Tp, flow_id: str) -> None:
    every_second = tp.json("triggers", "create", "schedule", flow_id, "--cron", "* * * * * *")
    try:
        fires = poll(
            lambda: tp.json("triggers", "fires", every_second["id"], "--limit", "5"),
            lambda page: any(item["status"] == "started" for item in page["items"]),
        )
    finally:
        tp("triggers", "pause", every_second["id"])
    started = next(item for item in fires["items"] if item["status"] == "started")
    assert started["run_id"] in tp("triggers", "fires", every_second["id"]).stdout


def test_a_trigger_key_calls_the_api_trigger_and_the_runs_are_listed_watched_and_filtered(
    tp: Tp, flow_id: str
) -> None:
    tp("triggers", "create", "api", flow_id)
    issued = tp("keys", "create", "producer", "--scope", "trigger")
    assert "shown only this once" in issued.stderr
    secret = next(
        line.split()[1] for line in issued.stdout.splitlines() if line.startswith("secret")
    )

    called = tp("call", flow_id, "--input", '{"hello": "world"}', TP_KEY=secret)
    assert json.loads(called.stdout) == {"hello": "world"}
    queued = tp.json("call", flow_id, "--input", '{"hello": "later"}', "--async", TP_KEY=secret)
    assert queued["status"] in ("queued", "running", "succeeded")
    watched = tp("runs", "watch", queued["run_id"], "--interval", "0.1", "--timeout", "15")
    assert "succeeded" in watched.stdout
    assert tp.json("runs", "get", queued["run_id"], TP_KEY=secret)["result"] == {"hello": "later"}

    listed = poll(
        lambda: tp.json(
            "runs", "list", "--flow", flow_id, "--source", "api", "--status", "succeeded"
        ),
        lambda page: queued["run_id"] in [run["id"] for run in page["items"]],
    )
    assert {run["source"] for run in listed["items"]} == {"api"}
    assert queued["run_id"] in tp("runs", "list", "--source", "api", "--limit", "1", "--all").stdout
    assert tp.json("runs", "stats", "--flow", flow_id)["counts"]["succeeded"] >= 2

    key_id = tp.json("keys", "list", "--all")["items"][-1]["id"]
    assert tp.json("keys", "revoke", key_id, "--yes")["id"] == key_id
    refused = tp("call", flow_id, "--async", TP_KEY=secret, code=1)
    assert "401" in refused.stderr
    assert "invalid_key" in refused.stderr
    assert "key.revoked" in tp("audit", "--resource-type", "key").stdout


def test_a_slow_run_is_cancelled_and_watch_exits_4(tp: Tp) -> None:
    slow = tp.json("flows", "create", "slow", "--function", "sleep")
    trigger = tp.json("triggers", "create", "manual", slow["id"])
    started = tp.json("triggers", "run", trigger["id"], "--input", '{"seconds": 30}', "--async")
    poll(
        lambda: CliRunner().invoke(app, ["runs", "get", started["run_id"], "--json"], env=tp.env()),
        lambda result: result.exit_code == 0 and json.loads(result.stdout)["status"] == "running",
    )
    assert tp.json("runs", "cancel", started["run_id"])["status"] == "cancelled"
    watched = tp("runs", "watch", started["run_id"], "--interval", "0.1", code=4)
    assert "cancelled" in watched.stderr


def test_a_bad_request_prints_the_api_problem_and_exits_1(tp: Tp, flow_id: str) -> None:
    refused = tp("triggers", "create", "schedule", flow_id, "--cron", "99 * * * *", code=1)
    assert refused.stdout == ""
    assert "422 Unprocessable Entity (invalid_schedule)" in refused.stderr
    assert "the minute field '99' is not valid" in refused.stderr
    as_json = tp(
        "triggers", "create", "schedule", flow_id, "--cron", "99 * * * *", "--json", code=1
    )
    assert json.loads(as_json.stderr)["code"] == "invalid_schedule"


def readme_cli_script() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, "the CLI section lost its walkthrough"
    return str(blocks[0])


def test_the_readme_cli_walkthrough_works_as_written_with_the_installed_tp(
    stack: Stack, tmp_path: Path
) -> None:
    script = readme_cli_script()
    for text in ("http://127.0.0.1:8000", ".data/operator-token", '"$PWD/.venv/bin'):
        assert text in script
    script = (
        script.replace("http://127.0.0.1:8000", stack.url)
        .replace(".data/operator-token", str(stack.data / "operator-token"))
        .replace('"$PWD/.venv/bin', f'"{TP.parent}')  # the installed `tp` of this interpreter
    )
    environ = {name: value for name, value in os.environ.items() if not name.startswith("TP_")}
    environ["TP_CONFIG"] = str(tmp_path / "config.toml")  # never the user's own profiles
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert '"hello": "world"' in done.stdout  # the call's result
    assert "succeeded" in done.stdout  # the watched run
    assert '"note": "run now"' in done.stdout
    assert "(invalid_schedule)" in done.stderr
    assert "(invalid_key)" in done.stderr
    assert "cannot connect to http://127.0.0.1:9" in done.stderr
    assert done.stdout.count("exit status 1") == 2
    assert "exit status 3" in done.stdout
    # The profile the walkthrough saved holds the admin key: readable by its owner only.
    assert (tmp_path / "config.toml").stat().st_mode & 0o077 == 0
    assert "[acme]" in (tmp_path / "config.toml").read_text()
