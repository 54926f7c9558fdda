"""Pieces of the runner's message handling that need no broker: in-progress acks, events,
which starts take the fast path, and which are refused."""

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.msg import Msg

from contracts import subjects
from contracts.runs import FlowStart, RunEvent
from services.runner.adapters import InProgress, event_payload
from services.runner.core import FRESH_FOR, misfiled_start, runs_unrecorded
from services.runner.executor import begin, queued
from shared.codec import decode, encode
from shared.ids import new_id
from shared.pull import delivery
from tests.unit.fakes import subject_matches


class FakeMsg:
    """Counts in-progress acks; `beating` is set from the third one on."""

    def __init__(self) -> None:
        self.beats = 0
        self.beating = asyncio.Event()

    async def in_progress(self) -> None:
        self.beats += 1
        if self.beats >= 3:
            self.beating.set()


async def test_a_message_is_kept_in_progress_while_its_run_lasts_and_not_after() -> None:
    in_progress = InProgress(interval=0.001)
    beat = asyncio.create_task(in_progress.beat())
    msg, idle = FakeMsg(), FakeMsg()

    in_progress.keep(msg)  # type: ignore[arg-type]
    await asyncio.wait_for(msg.beating.wait(), timeout=2)
    in_progress.release(msg)  # type: ignore[arg-type]
    beats = msg.beats
    await asyncio.sleep(0.01)  # ten intervals: no beat may come once the run is over
    beat.cancel()

    assert msg.beats == beats
    assert idle.beats == 0


def fresh(
    start: FlowStart, *, delivered: int = 1, stored_at_ms: int, msg_id: str | None = None
) -> bool:
    """Whether the start, delivered as JetStream delivers it (the ack subject carries the
    metadata), runs before its record exists."""
    reply = f"$JS.ACK.FLOW_STARTS.runner.{delivered}.7.7.{stored_at_ms * 1_000_000}.0"
    msg = Msg(_client=None, subject=subjects.flow_start(start.workspace_id), reply=reply)  # type: ignore[arg-type]
    return runs_unrecorded(start, delivery(msg), msg_id or start.run_id)


def start_minted_at(ms: int) -> FlowStart:
    return FlowStart(run_id=new_id("run", now_ms=ms), workspace_id="ws_1", flow_id="flw_1")


NOW_MS = 1_800_000_000_000


def test_a_fresh_first_delivery_keyed_by_its_run_id_runs_before_its_record_exists() -> None:
    start = start_minted_at(NOW_MS)

    assert fresh(start, stored_at_ms=NOW_MS + 20)


def test_a_redelivery_reads_the_record_first() -> None:
    start = start_minted_at(NOW_MS)

    assert not fresh(start, delivered=2, stored_at_ms=NOW_MS)


def test_a_start_keyed_by_another_message_id_reads_the_record_first() -> None:
    start = start_minted_at(NOW_MS)
    assert not fresh(start, stored_at_ms=NOW_MS, msg_id="trg_1:2026-01-01T00:00:00Z")


def test_a_start_published_long_after_its_run_id_was_made_reads_the_record_first() -> None:
    # A twin of it published over the duplicate window earlier would not have been dropped.
    start = start_minted_at(NOW_MS)
    late = NOW_MS + int(FRESH_FOR * 1000) + 1

    assert not fresh(start, stored_at_ms=late)


def test_a_run_id_this_project_did_not_make_reads_the_record_first() -> None:
    start = FlowStart(run_id="my-own-run-42", workspace_id="ws_1", flow_id="flw_1")

    assert not fresh(start, stored_at_ms=NOW_MS)


@pytest.mark.parametrize("status", ["running", "succeeded", "failed"])
def test_an_event_built_around_the_encoded_record_is_the_encoded_run_event(status: str):
    start = FlowStart(
        run_id="run_1", workspace_id="wsp_1", flow_id="flw_1", input={"n": [1, "two"]}
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)
    run = msgspec.structs.replace(
        begin(queued(start, now, 7), now, "runner-1"), status=status, result={"ok": True}
    )
    assert event_payload(run, encode(run)) == encode(RunEvent(run=run))
    assert decode(event_payload(run, encode(run)), RunEvent).run == run


def test_a_start_on_its_own_workspace_s_subject_or_the_deprecated_one_may_run() -> None:
    start = FlowStart(run_id="run_1", workspace_id="ws_1", flow_id="flw_1")
    assert misfiled_start(subjects.flow_start("ws_1"), start) == ""
    assert misfiled_start(subjects.FLOW_START_UNVERSIONED, start) == ""


def test_a_start_on_another_workspace_s_subject_is_refused_with_the_right_subject() -> None:
    start = FlowStart(run_id="run_1", workspace_id="ws_1", flow_id="flw_1")
    assert misfiled_start(subjects.flow_start("ws_2"), start) == (
        "the start is for workspace 'ws_1' but was published to 'flow.v1.start.ws_2'; "
        "publish it to 'flow.v1.start.ws_1'"
    )


def test_a_run_event_subject_ends_with_the_status_so_filters_can_pick_one() -> None:
    skipped = subjects.run_event("ws_1", "run_1", "skipped")
    succeeded = subjects.run_event("ws_1", "run_1", "succeeded")
    assert subject_matches(subjects.RUN_EVENTS_SKIPPED, skipped)
    assert not subject_matches(subjects.RUN_EVENTS_SKIPPED, succeeded)
    assert subject_matches(subjects.run_events("ws_1", "run_1"), succeeded)
    assert not subject_matches(subjects.run_events("ws_1", "run_2"), succeeded)
