"""The scheduler core's pure decisions, on plain values: trigger changes, ticks, pauses."""

from datetime import UTC, datetime, timedelta

import msgspec

from contracts.registry import ApiTrigger, CronSchedule, ScheduleTrigger, Trigger
from contracts.scheduling import ScheduleTick
from services.scheduler.core import (
    MAX_LISTED,
    judge_tick,
    ledger_entries,
    ledger_entry_id,
    next_tick,
    plan_pause,
    plan_tick,
    supersedes,
    trigger_change,
    undecided,
)

CREATED = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
MISFIRE_AFTER = timedelta(seconds=10)


def trigger(**changes: object) -> Trigger:
    base = ScheduleTrigger(
        id="trg_1",
        workspace_id="wsp_1",
        flow_id="flw_1",
        schedule=CronSchedule(cron="*/15 * * * *"),
        created_at=CREATED,
        updated_at=CREATED,
    )
    return msgspec.structs.replace(base, **changes)


def tick(version: int = 1, at: str = "2026-01-01T10:15:00+00:00") -> ScheduleTick:
    return ScheduleTick(
        trigger_id="trg_1", trigger_version=version, scheduled_at=datetime.fromisoformat(at)
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_change_that_keeps_schedule_and_version_asks_for_nothing():
    assert trigger_change(trigger(), trigger(flow_id="flw_other")) is None
    api_trigger = ApiTrigger(
        id="trg_2", workspace_id="wsp_1", flow_id="flw_1", created_at=CREATED, updated_at=CREATED
    )
    assert trigger_change(api_trigger, None) is None


def test_an_edit_a_pause_or_a_delete_asks_for_the_timer_to_be_synced_without_a_catch_up():
    for old, new in [
        (trigger(), trigger(version=2)),
        (trigger(), trigger(enabled=False, version=2)),
        (trigger(), None),
        (None, trigger()),
    ]:
        change = trigger_change(old, new)
        assert change is not None
        assert change.paused_at is None


def test_a_resume_of_the_same_schedule_asks_for_the_pause_to_be_decided():
    paused = trigger(enabled=False, version=2, updated_at=at("2026-01-01T10:05:00+00:00"))
    resumed = trigger(version=3, paused_at=at("2026-01-01T10:01:00+00:00"))
    change = trigger_change(paused, resumed)
    assert change is not None
    assert change.paused_at == at("2026-01-01T10:01:00+00:00")
    # No paused_at on record: the pause is taken to start at the paused version's update.
    change = trigger_change(paused, trigger(version=3))
    assert change is not None
    assert change.paused_at == at("2026-01-01T10:05:00+00:00")
    # Resumed with another schedule: no fire of the old schedule is decided.
    edited = trigger(version=3, schedule=CronSchedule(cron="0 * * * *"))
    change = trigger_change(paused, edited)
    assert change is not None
    assert change.paused_at is None


def test_a_tick_is_judged_against_the_known_version_of_its_trigger():
    assert judge_tick(tick(2), trigger(version=2)) == "current"
    assert judge_tick(tick(1), trigger(version=2)) == "stale"
    assert judge_tick(tick(2), trigger(version=2, enabled=False)) == "stale"
    assert judge_tick(tick(2), None) == "stale"
    assert judge_tick(tick(3), trigger(version=2)) == "store_behind"


def test_an_early_tick_is_planned_as_of_its_due_time_with_the_hold_until_then():
    plan = plan_tick(
        trigger(), tick(), at("2026-01-01T10:14:57.500000+00:00"), misfire_after=MISFIRE_AFTER
    )
    assert plan.hold == 2.5
    assert plan.now == at("2026-01-01T10:15:00+00:00")
    assert [(d.occurrence.scheduled_at, d.status) for d in plan.decisions] == [
        (at("2026-01-01T10:15:00+00:00"), "started")
    ]
    assert plan.due.upcoming is not None
    assert plan.due.upcoming.scheduled_at == at("2026-01-01T10:30:00+00:00")


def test_a_late_tick_is_planned_with_no_hold_and_its_lateness_decided_by_misfire():
    now = at("2026-01-01T10:15:20+00:00")
    late = plan_tick(trigger(), tick(), now, misfire_after=MISFIRE_AFTER)
    assert late.hold == 0.0
    assert [d.status for d in late.decisions] == ["caught_up"]  # run_once starts the latest
    assert late.misses


def test_dropping_what_the_ledger_holds_keeps_the_later_occurrences_and_the_next_timer():
    every_second = trigger(schedule=CronSchedule(cron="* * * * * *"))
    plan = plan_tick(
        every_second,
        tick(at="2026-01-01T10:15:00+00:00"),
        at("2026-01-01T10:15:30+00:00"),
        misfire_after=MISFIRE_AFTER,
    )
    kept = undecided(plan, at("2026-01-01T10:15:28+00:00"))
    assert [d.occurrence.scheduled_at.second for d in kept.decisions] == [29, 30]
    assert [d.status for d in kept.decisions] == ["started", "started"]
    assert kept.due.upcoming == plan.due.upcoming
    assert undecided(plan, at("2026-01-01T10:14:59+00:00")) is plan


def test_timers_of_a_trigger_only_move_forward():
    assert supersedes(tick(1, "2026-01-01T10:30:00+00:00"), tick(1))
    assert not supersedes(tick(1), tick(1))
    assert not supersedes(tick(1, "2026-01-01T10:00:00+00:00"), tick(1))
    # A new version's timer replaces an old version's, earlier or not; never the reverse.
    assert supersedes(tick(2, "2026-01-01T10:00:00+00:00"), tick(1))
    assert not supersedes(tick(1, "2026-01-01T10:30:00+00:00"), tick(2))


def test_every_decision_about_one_occurrence_has_one_ledger_message_id():
    on_time = plan_tick(
        trigger(), tick(), at("2026-01-01T10:15:01+00:00"), misfire_after=MISFIRE_AFTER
    )
    late = plan_tick(
        trigger(), tick(), at("2026-01-01T10:15:40+00:00"), misfire_after=MISFIRE_AFTER
    )
    (started,) = ledger_entries(trigger(), on_time.decisions, on_time.due, on_time.now)
    (caught_up,) = ledger_entries(trigger(), late.decisions, late.due, late.now)
    assert (started.status, caught_up.status) == ("started", "caught_up")
    assert ledger_entry_id(started) == ledger_entry_id(caught_up)
    overlap = msgspec.structs.replace(started, status="overlap_skipped")
    assert ledger_entry_id(overlap) != ledger_entry_id(started)


def test_a_pause_with_no_occurrence_due_while_it_lasted_plans_nothing():
    resumed = trigger(resumed_at=at("2026-01-01T10:10:00+00:00"))
    assert plan_pause(resumed, at("2026-01-01T10:01:00+00:00")) is None
    assert plan_pause(trigger(enabled=False), at("2026-01-01T09:01:00+00:00")) is None


def test_the_next_tick_leaves_an_occurrence_already_due_behind():
    now = at("2026-01-01T10:20:00+00:00")
    assert next_tick(trigger(version=4), at("2026-01-01T10:00:00+00:00"), now) == tick(
        4, "2026-01-01T10:30:00+00:00"
    )
    assert next_tick(trigger(enabled=False), now, now) is None
    assert next_tick(None, now, now) is None


def test_a_long_outage_summarises_the_unlisted_fires_in_one_ledger_entry():
    every_second = trigger(schedule=CronSchedule(cron="* * * * * *", misfire="skip"))
    outage = tick(at="2026-01-01T10:00:00+00:00")
    plan = plan_tick(
        every_second, outage, at("2026-01-01T12:00:00+00:00"), misfire_after=MISFIRE_AFTER
    )
    entries = ledger_entries(every_second, plan.decisions, plan.due, plan.now)
    assert len(entries) == len(plan.decisions) < 2 * 3600
    assert plan.due.unlisted > 0
    assert f"about {plan.due.unlisted} more missed fires" in entries[MAX_LISTED - 1].reason
    assert all(
        "more missed fires" not in e.reason for i, e in enumerate(entries) if i != MAX_LISTED - 1
    )
    assert len({ledger_entry_id(entry) for entry in entries}) == len(entries)
