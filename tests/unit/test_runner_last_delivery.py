"""What the runner's core makes of a start dead-lettered at its last delivery: its run ends
`failed` with the reason, once, whatever state the record was left in."""

from contracts import subjects
from contracts.runs import FlowStart, RunSlots
from services.runner.core import StartRuns
from services.runner.executor import begin, finish, queued
from services.runner.flows import FlowRegistry
from shared.ids import new_id
from tests.unit.fakes import (
    FixedClock,
    InMemoryAdmission,
    InMemoryRunStore,
    KeepAliveLog,
    RecordingEvents,
)

REASON = "delivered 3 times without ending (the consumer's limit, RUNNER_MAX_DELIVER)"


def core() -> tuple[StartRuns, InMemoryRunStore, RecordingEvents, InMemoryAdmission]:
    store, events, admission = InMemoryRunStore(), RecordingEvents(), InMemoryAdmission()
    starts = StartRuns(
        store=store,
        events=events,
        admission=admission,
        keep_alive=KeepAliveLog(),  # type: ignore[arg-type]
        functions=FlowRegistry(),
        clock=FixedClock(),
    )
    return starts, store, events, admission


def a_start() -> FlowStart:
    return FlowStart(
        run_id=new_id("run"),
        workspace_id=new_id("ws"),
        flow_id=new_id("flw"),
        trigger_id=new_id("trg"),
        input={"a": 1},
    )


async def test_a_queued_run_waiting_in_a_buffer_ends_failed_and_gives_its_place_back() -> None:
    starts, store, events, admission = core()
    start = a_start()
    key = subjects.run_key(start.workspace_id, start.run_id)
    await store.create(key, queued(start, FixedClock().now, 7))
    slot = f"trigger.{start.workspace_id}.{start.trigger_id}"
    admission.slots[slot] = RunSlots(active=["run_other"], buffered=start.run_id)

    ended = await starts.fail_dead_lettered(start, REASON, create=True)

    assert ended is not None
    assert store.get(key) == ended
    assert (ended.status, ended.error) == ("failed", REASON)
    assert events.statuses(start.run_id) == ["failed"]
    assert admission.slots[slot] == RunSlots(active=["run_other"])


async def test_a_running_run_ends_failed_with_its_attempt_closed() -> None:
    starts, store, _, _ = core()
    start = a_start()
    key = subjects.run_key(start.workspace_id, start.run_id)
    now = FixedClock().now
    await store.create(key, begin(queued(start, now), now, "rnr_gone"))

    ended = await starts.fail_dead_lettered(start, REASON, create=False)

    assert ended is not None
    assert ended.status == "failed"
    assert ended.attempts[-1].outcome != "running"


async def test_a_final_run_is_left_as_it_is() -> None:
    starts, store, events, _ = core()
    start = a_start()
    key = subjects.run_key(start.workspace_id, start.run_id)
    now = FixedClock().now
    done = finish(queued(start, now), "succeeded", now, result=1)
    await store.create(key, done)

    assert await starts.fail_dead_lettered(start, REASON, create=True) is None
    assert store.get(key) == done
    assert events.published == []


async def test_a_run_without_a_record_gets_a_failed_one_only_when_its_flow_is_known() -> None:
    starts, store, events, _ = core()
    unknown, known = a_start(), a_start()

    assert await starts.fail_dead_lettered(unknown, REASON, create=False) is None
    ended = await starts.fail_dead_lettered(known, REASON, create=True, sequence=9)

    assert store.get(subjects.run_key(unknown.workspace_id, unknown.run_id)) is None
    assert ended is not None
    assert (ended.status, ended.error, ended.start_sequence) == ("failed", REASON, 9)
    assert store.get(subjects.run_key(known.workspace_id, known.run_id)) == ended
    assert events.statuses(known.run_id) == ["failed"]
