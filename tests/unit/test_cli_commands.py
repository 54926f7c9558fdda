"""`tp`'s commands end to end against an `httpx.MockTransport`: the routes and bodies they send,
what they print, and their exit codes."""

import json
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli.app import Connection, app
from cli.client import Client
from cli.output import ExitCode
from tests.unit.cli_samples import PROBLEM, RUN

Handler = Callable[[httpx.Request], httpx.Response]


def invoke(handler: Handler, *args: str, **env: str | None) -> Any:
    environ = {"TP_URL": "http://api.test", "TP_KEY": "tpk_test", "TP_CONFIG": "/nonexistent/c"}
    environ.update(env)
    connection = Connection(transport=httpx.MockTransport(handler))
    return CliRunner().invoke(app, list(args), env=environ, obj=connection)


def answer(body: Any, status: int = 200, problem: bool = False) -> Handler:
    content_type = "application/problem+json" if problem else "application/json"

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers={"content-type": content_type})

    return handle


def test_a_list_without_json_is_a_table_and_with_json_the_page_as_sent() -> None:
    page = {"items": [RUN], "next_cursor": None, "history_lag_seconds": 0.0}
    table = invoke(answer(page), "runs", "list")
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].split() == [
        "ID", "STATUS", "FLOW", "SOURCE", "TRIGGER", "QUEUED", "DURATION"
    ]  # fmt: skip
    assert "run_1  failed" in table.stdout
    raw = invoke(answer(page), "runs", "list", "--json")
    assert json.loads(raw.stdout) == page


def test_an_api_refusal_exits_1_with_the_problem_on_stderr_and_nothing_on_stdout() -> None:
    result = invoke(answer(PROBLEM, 404, problem=True), "triggers", "get", "trg_x")
    assert result.exit_code == ExitCode.API_ERROR == 1
    assert result.stdout == ""
    assert "404 Not Found (trigger_not_found): no trigger 'trg_x'" in result.stderr
    as_json = invoke(answer(PROBLEM, 404, problem=True), "triggers", "get", "trg_x", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stderr) == PROBLEM


def test_connection_refused_exits_3_naming_the_url_and_how_to_set_it() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    result = invoke(refuse, "flows", "list")
    assert result.exit_code == ExitCode.CANNOT_CONNECT == 3
    assert "cannot connect to http://api.test (connection refused)" in result.stderr
    assert "TP_URL" in result.stderr
    assert "--url" in result.stderr


def test_a_missing_key_or_bad_input_is_a_usage_error_sent_nowhere() -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={})

    no_key = invoke(record, "flows", "list", TP_KEY=None)
    assert no_key.exit_code == ExitCode.USAGE == 2
    assert "TP_KEY" in no_key.stderr
    bad_input = invoke(record, "call", "flw_1", "--input", "{nope")
    assert bad_input.exit_code == 2
    assert "not JSON" in bad_input.stderr
    assert invoke(record, "runs", "list", "--status", "done").exit_code == 2  # not a status
    assert sent == []


def test_every_run_filter_reaches_the_query_and_all_follows_the_cursors() -> None:
    seen: list[httpx.URL] = []

    def pages(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        cursor = request.url.params.get("cursor")
        following = {None: "c1", "c1": "c2", "c2": None}[cursor]
        item = {**RUN, "id": f"run_{cursor}"}
        return httpx.Response(200, json={"items": [item], "next_cursor": following})

    result = invoke(
        pages,
        "runs", "list", "--flow", "flw_1", "--trigger", "trg_1", "--status", "failed",
        "--status", "timed_out", "--source", "schedule", "--since", "2026-12-01T00:00:00Z",
        "--until", "2026-12-02T00:00:00Z", "-q", "boom", "--limit", "1", "--all", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    first = seen[0].params
    assert first.get_list("status") == ["failed", "timed_out"]
    assert (first["flow_id"], first["trigger_id"], first["source"]) == (
        "flw_1",
        "trg_1",
        "schedule",
    )
    assert (first["since"], first["until"], first["q"], first["limit"]) == (
        "2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "boom", "1"
    )  # fmt: skip
    assert [url.params.get("cursor") for url in seen] == [None, "c1", "c2"]
    body = json.loads(result.stdout)
    assert [item["id"] for item in body["items"]] == ["run_None", "run_c1", "run_c2"]
    assert body["next_cursor"] is None


def test_one_page_tells_how_to_get_the_next_on_stderr() -> None:
    result = invoke(answer({"items": [], "next_cursor": "5.key_abc"}), "keys", "list")
    assert "--cursor 5.key_abc" in result.stderr
    assert "--cursor" not in result.stdout


def test_watch_polls_until_the_run_ends_and_exits_by_its_outcome() -> None:
    def statuses(*sequence: str) -> Handler:
        remaining = list(sequence)

        def handle(request: httpx.Request) -> httpx.Response:
            status = remaining.pop(0) if len(remaining) > 1 else remaining[0]
            return httpx.Response(200, json={**RUN, "status": status})

        return handle

    ok = invoke(
        statuses("queued", "running", "succeeded"), "runs", "watch", "run_1", "--interval", "0.05"
    )
    assert ok.exit_code == 0, ok.stderr
    assert ok.stderr.splitlines() == ["run_1 queued", "run_1 running", "run_1 succeeded"]
    failed = invoke(statuses("running", "failed"), "runs", "watch", "run_1", "--interval", "0.05")
    assert failed.exit_code == ExitCode.RUN_NOT_SUCCEEDED == 4
    appearing = iter([404, 404, 200])

    def not_yet(request: httpx.Request) -> httpx.Response:
        if next(appearing) == 404:
            problem = {**PROBLEM, "code": "run_not_found", "detail": "no run 'run_1'"}
            return httpx.Response(404, json=problem)
        return httpx.Response(200, json={**RUN, "status": "succeeded"})

    appeared = invoke(not_yet, "runs", "watch", "run_1", "--interval", "0.05")
    assert appeared.exit_code == 0, appeared.stderr  # a start a moment old has no record yet
    gone = invoke(
        answer({**PROBLEM, "code": "run_not_found"}, 404, problem=True), "runs", "get", "x"
    )
    assert gone.exit_code == 1
    gave_up = invoke(
        statuses("running"), "runs", "watch", "run_1", "--interval", "0.05", "--timeout", "0.2"
    )
    assert gave_up.exit_code == ExitCode.STILL_RUNNING == 5


def test_call_prints_the_result_or_the_run_id_and_exits_4_for_a_failed_run() -> None:
    sent: list[httpx.Request] = []

    def start(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.headers.get("prefer") == "respond-async":
            return httpx.Response(
                202, json={"run_id": "run_2", "status": "queued", "status_url": "http://x"}
            )
        if json.loads(request.content) == {"fail": True}:
            failure = {
                **PROBLEM,
                "status": 502,
                "code": "run_failed",
                "title": "Bad Gateway",
                "detail": "run run_3 failed: boom",
            }
            return httpx.Response(502, json=failure)
        body = {
            "run_id": "run_1",
            "status": "succeeded",
            "status_url": "http://x",
            "result": {"a": 1},
        }
        return httpx.Response(200, json=body)

    done = invoke(start, "call", "flw_1", "--input", '{"a": 1}')
    assert done.exit_code == 0
    assert json.loads(done.stdout) == {"a": 1}
    assert sent[0].url.path == "/trigger/flw_1"
    assert sent[0].headers["authorization"] == "Bearer tpk_test"
    queued = invoke(start, "call", "flw_1", "--async", "--idempotency-key", "order-7")
    assert "run_2" in queued.stdout
    assert "tp runs watch run_2" in queued.stderr
    assert sent[1].headers["idempotency-key"] == "order-7"
    assert sent[1].content == b""
    failed = invoke(start, "call", "flw_1", "--input", '{"fail": true}')
    assert failed.exit_code == 4
    assert "502 Bad Gateway (run_failed): run run_3 failed: boom" in failed.stderr


def test_input_is_read_from_a_file_with_an_at_sign(tmp_path: Any) -> None:
    path = tmp_path / "input.json"
    path.write_text('{"from": "file"}')
    sent: list[bytes] = []

    def start(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(202, json={"run_id": "r", "status": "queued", "status_url": "u"})

    result = invoke(start, "triggers", "run", "trg_1", "--input", f"@{path}", "--wait", "2")
    assert result.exit_code == 0, result.stderr
    assert sent == [b'{"from": "file"}']


def test_a_schedule_trigger_takes_every_schedule_option() -> None:
    bodies: list[Any] = []

    def create(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={"id": "trg_1", "type": "schedule", **bodies[-1]})

    result = invoke(
        create,
        "triggers", "create", "schedule", "flw_1", "--weekly", "mon,THU", "--at", "18:00",
        "--tz", "Europe/Berlin", "--start", "2027-01-01T00:00:00", "--end", "2028-01-01T00:00:00",
        "--jitter", "30", "--dst-gap", "skip", "--dst-repeat", "twice", "--misfire", "run_all",
        "--catch-up-window", "3600", "--overlap", "skip", "--name", "weekly", "--paused",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert bodies == [
        {
            "type": "schedule",
            "flow_id": "flw_1",
            "schedule": {
                "kind": "weekly",
                "days": ["mon", "thu"],
                "at": "18:00",
                "timezone": "Europe/Berlin",
                "start": "2027-01-01T00:00:00",
                "end": "2028-01-01T00:00:00",
                "jitter": 30,
                "dst_gap": "skip",
                "dst_repeat": "twice",
                "misfire": "run_all",
                "catch_up_window": 3600,
            },
            "overlap": "skip",
            "name": "weekly",
            "enabled": False,
        }
    ]
    both = invoke(
        create, "triggers", "create", "schedule", "flw_1", "--cron", "* * * * *", "--every", "5"
    )
    assert both.exit_code == 2
    assert "one kind" in both.stderr


def test_an_edit_sends_only_what_changes_as_a_schedule_merge_patch() -> None:
    bodies: list[Any] = []

    def edit(request: httpx.Request) -> httpx.Response:
        bodies.append((request.method, request.url.path, json.loads(request.content)))
        return httpx.Response(200, json={"id": "trg_1", "type": "schedule"})

    result = invoke(edit, "triggers", "edit", "trg_1", "--minute", "20", "--tz", "UTC")
    assert result.exit_code == 0, result.stderr
    assert bodies == [
        ("PATCH", "/v1/triggers/trg_1", {"schedule": {"minute": 20, "timezone": "UTC"}})
    ]
    assert invoke(edit, "triggers", "edit", "trg_1").exit_code == 2


def test_creating_a_workspace_uses_the_operator_token_and_warns_the_secret_is_shown_once() -> None:
    sent: list[httpx.Request] = []

    def create(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        issued = {"key": {"id": "key_1"}, "secret": "tpk_new"}
        return httpx.Response(
            201, json={"workspace": {"id": "ws_1", "name": "acme"}, "admin_key": issued}
        )

    missing = invoke(create, "workspaces", "create", "acme")
    assert missing.exit_code == 2
    assert "TP_OPERATOR_TOKEN" in missing.stderr
    result = invoke(create, "workspaces", "create", "acme", TP_OPERATOR_TOKEN="op-token")
    assert result.exit_code == 0, result.stderr
    assert sent[0].headers["authorization"] == "Bearer op-token"
    assert "tpk_new" in result.stdout
    assert "shown only this once" in result.stderr


@pytest.mark.parametrize(
    ("args", "method", "path"),
    [
        (["keys", "revoke", "key_1"], "DELETE", "/v1/keys/key_1"),
        (["keys", "rotate", "key_1", "--grace", "60"], "POST", "/v1/keys/key_1/rotate"),
        (["keys", "update", "key_1", "--no-expiry"], "PATCH", "/v1/keys/key_1"),
        (["flows", "get", "flw_1"], "GET", "/v1/flows/flw_1"),
        (["flows", "functions"], "GET", "/v1/flow-functions"),
        (["triggers", "pause", "trg_1"], "POST", "/v1/triggers/trg_1/pause"),
        (["triggers", "resume", "trg_1"], "POST", "/v1/triggers/trg_1/resume"),
        (["triggers", "delete", "trg_1"], "DELETE", "/v1/triggers/trg_1"),
        (["triggers", "preview", "trg_1", "--count", "3"], "GET", "/v1/triggers/trg_1/preview"),
        (["triggers", "fires", "trg_1"], "GET", "/v1/triggers/trg_1/fires"),
        (["triggers", "rotate-secret", "trg_1"], "POST", "/v1/triggers/trg_1/secrets"),
        (["triggers", "refusals", "trg_1"], "GET", "/v1/triggers/trg_1/refusals"),
        (["runs", "get", "run_1"], "GET", "/v1/runs/run_1"),
        (["runs", "cancel", "run_1"], "POST", "/v1/runs/run_1/cancel"),
        (["runs", "stats", "--flow", "flw_1"], "GET", "/v1/runs/stats"),
        (["audit", "--action", "key.rotated"], "GET", "/v1/audit"),
        (["flows", "create", "f", "--http-url", "https://x.test/hook"], "POST", "/v1/flows"),
    ],
)
def test_each_command_calls_its_route_and_prints_the_answer_as_json(
    args: list[str], method: str, path: str
) -> None:
    sent: list[httpx.Request] = []
    body = {"id": "x", "items": [], "fires": [], "counts": {}}

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=body)

    result = invoke(handle, *args, "--json")
    assert result.exit_code == 0, result.stderr
    assert [(request.method, request.url.path) for request in sent] == [(method, path)]
    assert json.loads(result.stdout) == body


def test_an_id_with_a_slash_stays_one_path_segment() -> None:
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.raw_path.decode())
        return httpx.Response(200, json={})

    client = Client("http://x", "k", transport=httpx.MockTransport(handle))
    client.get_run("../keys")
    assert sent == ["/v1/runs/..%2Fkeys"]


def test_a_webhook_trigger_takes_its_scheme_events_and_hmac_settings() -> None:
    bodies: list[Any] = []

    def create(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={"id": "trg_1", "type": "webhook", "new_secret": "whsec_x"})

    result = invoke(
        create,
        "triggers", "create", "webhook", "flw_1", "--scheme", "hmac", "--hmac-header",
        "X-Signature", "--hmac-encoding", "base64", "--hmac-prefix", "sha256=", "--event", "push",
        "--event", "ping", "--include-header", "X-Request-Id", "--tolerance", "60",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert bodies == [
        {
            "type": "webhook",
            "flow_id": "flw_1",
            "scheme": "hmac",
            "events": ["push", "ping"],
            "include_headers": ["X-Request-Id"],
            "hmac": {"signature_header": "X-Signature", "encoding": "base64", "prefix": "sha256="},
            "tolerance_seconds": 60,
        }
    ]
    assert "whsec_x" in result.stdout
    assert "shown only this once" in result.stderr


def test_an_http_flow_takes_its_method_headers_and_body_template() -> None:
    bodies: list[Any] = []

    def create(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={"id": "flw_1", **bodies[-1]})

    result = invoke(
        create,
        "flows", "create", "notify", "--http-url", "https://hooks.test/x", "--method", "PUT",
        "--header", "X-Token: abc", "--body", '{"run": "{{run_id}}", "input": "{{input}}"}',
        "--timeout", "60", "--retries", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert bodies[0] == {
        "name": "notify",
        "settings": {
            "kind": "http",
            "url": "https://hooks.test/x",
            "method": "PUT",
            "headers": {"X-Token": "abc"},
            "body": {"run": "{{run_id}}", "input": "{{input}}"},
        },
        "timeout_seconds": 60.0,
        "retries": 2,
    }
    neither = invoke(create, "flows", "create", "f")
    assert neither.exit_code == 2
    assert "--function" in neither.stderr


def test_login_saves_a_key_the_api_accepts_and_not_one_it_refuses(tmp_path: Any) -> None:
    path = tmp_path / "config.toml"

    def keys(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer tpk_good":
            return httpx.Response(200, json={"items": [], "next_cursor": None})
        problem = {**PROBLEM, "status": 401, "code": "invalid_key", "title": "Unauthorized"}
        return httpx.Response(401, json=problem)

    refused = invoke(keys, "login", "work", "--key", "tpk_bad", TP_CONFIG=str(path))
    assert refused.exit_code == 1
    assert "(invalid_key)" in refused.stderr
    assert not path.exists()
    saved = invoke(keys, "login", "work", "--key", "tpk_good", TP_CONFIG=str(path))
    assert saved.exit_code == 0, saved.stderr
    assert "admin key" in saved.stderr
    assert 'key = "tpk_good"' in path.read_text()
    assert 'url = "http://api.test"' in path.read_text()


def test_shell_completion_completes_commands_and_option_values() -> None:
    def complete(words: str) -> str:
        env = {"_TP_COMPLETE": "complete_bash", "COMP_WORDS": words}
        env["COMP_CWORD"] = str(len(words.split()) - 1)
        return CliRunner().invoke(app, [], prog_name="tp", env=env).stdout

    assert complete("tp triggers cre").split() == ["create"]
    assert complete("tp runs list --status ti").split() == ["timed_out"]
    script = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="tp")
    assert "_TP_COMPLETE=complete_bash" in script.stdout


def test_the_curl_hint_of_a_new_api_trigger_sends_the_key_the_shell_holds() -> None:
    trigger = {"id": "trg_1", "type": "api", "flow_id": "flw_1", "name": None, "enabled": True}
    created = invoke(answer(trigger, 201), "triggers", "create", "api", "flw_1")
    assert created.exit_code == 0, created.stderr
    curl = created.stderr[created.stderr.index("curl ") :].split("\n")[0]
    # The hint as a user pastes it, with `curl` swapped for a command that prints its arguments.
    shown = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + curl.removeprefix("curl ")],
        env={"KEY": "tpk_from_the_shell", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "Authorization: Bearer tpk_from_the_shell" in shown
    assert "http://api.test/trigger/flw_1" in shown
