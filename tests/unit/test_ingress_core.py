"""Who may do what at the ingress: pure decisions over plain records."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from contracts.registry import (
    ApiKey,
    ApiTrigger,
    CronSchedule,
    Flow,
    KeyScope,
    ManualTrigger,
    OnceSchedule,
    PythonFlowSettings,
    ScheduleTrigger,
    Trigger,
)
from contracts.runs import Run, RunStatus
from services.ingress import core, handlers
from services.ingress.problems import ApiError
from shared import api_keys
from shared.ids import new_id

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WORKSPACE = new_id("ws")
OTHER_WORKSPACE = new_id("ws")


def key_for(secret: str, scope: KeyScope = "trigger", workspace_id: str = WORKSPACE) -> ApiKey:
    return ApiKey(
        id=new_id("key"),
        workspace_id=workspace_id,
        name="ci",
        scope=scope,
        prefix=api_keys.shown_prefix(secret),
        digest=api_keys.digest(secret),
        created_at=NOW,
    )


def flow_in(workspace_id: str = WORKSPACE) -> Flow:
    return Flow(
        id=new_id("flw"),
        workspace_id=workspace_id,
        name="nightly",
        settings=PythonFlowSettings(function="echo"),
        created_at=NOW,
    )


TRIGGER_KINDS: dict[str, type[Trigger]] = {
    "api": ApiTrigger,
    "schedule": ScheduleTrigger,
    "manual": ManualTrigger,
}


def trigger_of(flow: Flow, type: str = "api", **fields: Any) -> Trigger:
    return TRIGGER_KINDS[type](
        id=new_id("trg"),
        workspace_id=flow.workspace_id,
        flow_id=flow.id,
        created_at=NOW,
        updated_at=NOW,
        **fields,
    )


def refusal_of(decision: Callable[..., object], *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decision(*args)
    return caught.value


SECRET = api_keys.generate()
KEY = key_for(SECRET)
DIRECTORY = {KEY.digest: KEY}


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_header_is_missing_key(header: str | None) -> None:
    error = refusal_of(core.authenticate, header, DIRECTORY.get)

    assert (error.status, error.code) == (401, "missing_key")
    assert "Authorization: Bearer" in error.detail


@pytest.mark.parametrize(
    "header", [f"Basic {SECRET}", f"Token {SECRET}", SECRET, "Bearer ", "Bearer"]
)
def test_a_header_that_is_not_a_bearer_token_is_missing_key(header: str) -> None:
    error = refusal_of(core.authenticate, header, DIRECTORY.get)

    assert (error.status, error.code) == (401, "missing_key")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    assert core.authenticate(f"{scheme} {SECRET}", DIRECTORY.get) == KEY


def test_a_mistyped_key_is_malformed_key_not_a_revoked_one() -> None:
    mistyped = SECRET[:10] + ("x" if SECRET[10] != "x" else "y") + SECRET[11:]
    error = refusal_of(core.authenticate, f"Bearer {mistyped}", DIRECTORY.get)

    assert (error.status, error.code) == (401, "malformed_key")
    assert "tpk_" in error.detail


def test_a_well_formed_key_nobody_issued_is_invalid_key() -> None:
    error = refusal_of(core.authenticate, f"Bearer {api_keys.generate()}", DIRECTORY.get)

    assert (error.status, error.code) == (401, "invalid_key")


def test_a_valid_key_authenticates_as_its_record() -> None:
    assert core.authenticate(f"Bearer {SECRET}", DIRECTORY.get) == KEY


def test_a_malformed_key_may_not_be_explained_by_a_stale_directory_but_an_unknown_one_may() -> None:
    assert "malformed_key" not in core.MAYBE_STALE
    assert "missing_key" not in core.MAYBE_STALE
    assert "invalid_key" in core.MAYBE_STALE


# --- scopes ---------------------------------------------------------------------------------


def test_an_admin_key_is_admin() -> None:
    admin = key_for(api_keys.generate(), scope="admin")

    assert core.require_admin(admin) == admin


def test_a_trigger_key_is_refused_with_admin_key_required_naming_its_prefix() -> None:
    error = refusal_of(core.require_admin, KEY)

    assert (error.status, error.code) == (403, "admin_key_required")
    assert KEY.prefix in error.detail


# --- the API trigger of a flow --------------------------------------------------------------


def test_a_flow_with_an_enabled_api_trigger_may_be_started() -> None:
    flow = flow_in()
    hook = trigger_of(flow)

    assert core.api_trigger_for(KEY, flow, [hook]) == hook


def test_a_foreign_workspace_s_flow_looks_exactly_like_a_missing_one() -> None:
    foreign = flow_in(OTHER_WORKSPACE)

    missing = refusal_of(core.api_trigger_for, KEY, None, [])
    hidden = refusal_of(core.api_trigger_for, KEY, foreign, [trigger_of(foreign)])

    assert (missing.status, missing.code) == (404, "flow_not_found")
    assert (hidden.status, hidden.code, hidden.detail) == (
        missing.status,
        missing.code,
        missing.detail,
    )
    assert foreign.id not in hidden.detail


def test_a_flow_without_an_api_trigger_is_no_api_trigger_with_how_to_add_one() -> None:
    flow = flow_in()

    error = refusal_of(core.api_trigger_for, KEY, flow, [])

    assert (error.status, error.code) == (403, "no_api_trigger")
    assert flow.id in error.detail
    assert "POST /v1/triggers" in error.detail


def test_schedule_and_manual_triggers_do_not_make_a_flow_startable_over_the_api() -> None:
    flow = flow_in()
    others = [
        trigger_of(flow, type="schedule", schedule=CronSchedule(cron="* * * * *")),
        trigger_of(flow, type="manual"),
    ]

    error = refusal_of(core.api_trigger_for, KEY, flow, others)

    assert error.code == "no_api_trigger"


def test_a_paused_api_trigger_is_trigger_paused_naming_the_trigger() -> None:
    flow = flow_in()
    paused = trigger_of(flow, enabled=False)

    error = refusal_of(core.api_trigger_for, KEY, flow, [paused])

    assert (error.status, error.code) == (409, "trigger_paused")
    assert paused.id in error.detail
    assert f"/v1/triggers/{paused.id}/resume" in error.detail


def test_one_enabled_api_trigger_among_several_is_enough() -> None:
    flow = flow_in()
    paused = [trigger_of(flow, enabled=False) for _ in range(3)]
    enabled = trigger_of(flow)
    schedule = trigger_of(flow, type="schedule", schedule=CronSchedule(cron="* * * * *"))

    for order in [[*paused, enabled, schedule], [enabled, *paused], [schedule, *paused, enabled]]:
        assert core.api_trigger_for(KEY, flow, order) == enabled


def test_the_chosen_api_trigger_does_not_depend_on_the_listing_order() -> None:
    flow = flow_in()
    first, second = trigger_of(flow), trigger_of(flow)

    assert core.api_trigger_for(KEY, flow, [first, second]) == core.api_trigger_for(
        KEY, flow, [second, first]
    )


def test_run_now_waits_as_long_as_an_api_trigger_would_and_ten_seconds_otherwise() -> None:
    flow = flow_in()

    waits = [
        core.run_now_wait(trigger_of(flow, sync_wait_seconds=3.0)),
        core.run_now_wait(trigger_of(flow, "manual")),
        core.run_now_wait(trigger_of(flow, "schedule", schedule=CronSchedule(cron="* * * * *"))),
    ]

    assert waits == [3.0, 10.0, 10.0]


@pytest.mark.parametrize(
    ("run_status", "http_status", "code"),
    [
        ("failed", 502, "run_failed"),
        ("timed_out", 504, "run_timed_out"),
        ("cancelled", 409, "run_cancelled"),
        ("skipped", 409, "run_skipped"),
    ],
)
def test_a_run_that_ended_without_succeeding_is_answered_as_an_upstream_problem_not_a_500(
    run_status: RunStatus, http_status: int, code: str
) -> None:
    run = Run(
        id=new_id("run"),
        workspace_id=WORKSPACE,
        flow_id=new_id("flw"),
        status=run_status,
        source="api",
        error="RuntimeError: no cheese",
        queued_at=NOW,
    )

    response = handlers._answer(run, "http://x/v1/runs/r", {})

    assert response.status_code == http_status
    body = msgspec.json.decode(response.content)
    assert (body["status"], body["code"], body["run_status"]) == (http_status, code, run_status)
    assert (body["error"], body["status_url"]) == ("RuntimeError: no cheese", "http://x/v1/runs/r")


@pytest.mark.parametrize("depth", [core.MAX_JSON_DEPTH + 1, 1_000, 100_000])
def test_json_nested_deeper_than_the_limit_is_invalid_json_400(depth: int) -> None:
    body = b"[" * depth + b"]" * depth

    with pytest.raises(ApiError) as refused:
        core.json_body(body)

    assert (refused.value.status, refused.value.code) == (400, "invalid_json")
    assert str(core.MAX_JSON_DEPTH) in refused.value.detail or "deeply" in refused.value.detail


def test_json_at_the_depth_limit_or_with_many_shallow_brackets_is_accepted() -> None:
    deepest = b'{"a":' * (core.MAX_JSON_DEPTH - 1) + b"[]" + b"}" * (core.MAX_JSON_DEPTH - 1)
    many = b"[" + b",".join([b"[{}]"] * 10_000) + b"]"

    assert core.depth_over(core.json_body(deepest), core.MAX_JSON_DEPTH) is False
    assert len(core.json_body(many)) == 10_000


def test_a_draft_schedule_previews_its_next_fires_on_its_own_wall_clock() -> None:
    draft = CronSchedule(cron="30 9 * * *", timezone="Europe/Berlin")
    preview = core.draft_preview(draft, 2, NOW)
    assert preview.timezone == "Europe/Berlin"
    assert [fire.local_time for fire in preview.fires] == [
        "2026-03-02T09:30:00+01:00",
        "2026-03-03T09:30:00+01:00",
    ]
    assert all(fire.fires_at == fire.scheduled_at for fire in preview.fires)


@pytest.mark.parametrize(
    ("draft", "words"),
    [
        (CronSchedule(cron="61 * * * *"), "minute field '61'"),
        (CronSchedule(cron="* * * * *", timezone="Mars/Olympus"), "Mars/Olympus"),
        (OnceSchedule(at=datetime(2026, 1, 1, tzinfo=UTC)), "in the past"),
        (CronSchedule(cron="0 0 * * *", start=datetime(9999, 12, 31, 23, tzinfo=UTC)), "year"),
    ],
)
def test_a_draft_schedule_that_could_not_be_saved_is_refused_with_the_reason(
    draft: Any, words: str
) -> None:
    with pytest.raises(ApiError) as refused:
        core.draft_preview(draft, 3, NOW)
    assert (refused.value.status, refused.value.code) == (422, "invalid_schedule")
    assert words in refused.value.detail
