"""The fair share of a replica's slots between workspaces, as pure decisions."""

from services.runner.fair_share import (
    HAND_BACK_MAX,
    FairShare,
    hand_back_delay,
    reserved_slots,
    workspace_of,
)


def run_all(fair: FairShare[str]) -> list[str]:
    started = []
    while (picked := fair.next()) is not None:
        started.append(picked[1])
    return started


def test_a_workspace_alone_fills_every_slot_but_the_reserved_ones() -> None:
    fair = FairShare[str](8, reserved=2, buffer=8)
    for n in range(10):
        fair.add("a", f"a{n}", now=0.0)
    assert run_all(fair) == [f"a{n}" for n in range(6)]
    assert fair.running("a") == 6
    assert fair.waiting("a") == 4


def test_another_workspace_s_start_takes_a_reserved_slot_at_once() -> None:
    fair = FairShare[str](8, reserved=2, buffer=8)
    for n in range(10):
        fair.add("a", f"a{n}", now=0.0)
    run_all(fair)
    fair.add("b", "b0", now=1.0)
    assert run_all(fair) == ["b0"]


def test_a_workspace_below_an_even_share_may_take_the_reserved_slots_but_the_last() -> None:
    fair = FairShare[str](8, reserved=3, buffer=16)
    for n in range(8):
        fair.add("a", f"a{n}", now=0.0)
    assert len(run_all(fair)) == 5
    # b counts a, itself and a newcomer: an even share is 8 // 3 = 2.
    for n in range(3):
        fair.add("b", f"b{n}", now=1.0)
    assert run_all(fair) == ["b0", "b1"]
    assert fair.running("b") == 2
    assert fair.waiting("b") == 1
    fair.add("c", "c0", now=2.0)  # the last slot: c has nothing running
    assert run_all(fair) == ["c0"]


def test_a_freed_slot_goes_to_the_waiting_workspace_holding_the_fewest() -> None:
    fair = FairShare[str](4, reserved=0, buffer=8)
    for n in range(4):
        fair.add("a", f"a{n}", now=0.0)
    run_all(fair)
    fair.add("a", "a4", now=1.0)
    fair.add("b", "b0", now=2.0)  # came later, but holds nothing
    fair.finished("a")
    assert run_all(fair) == ["b0"]
    fair.finished("a")
    assert run_all(fair) == ["a4"]


def test_with_no_reserved_slot_a_workspace_alone_takes_every_slot() -> None:
    fair = FairShare[str](3, reserved=0, buffer=3)
    for n in range(4):
        fair.add("a", f"a{n}", now=0.0)
    assert run_all(fair) == ["a0", "a1", "a2"]


def test_a_single_slot_replica_still_runs_a_workspace_alone() -> None:
    fair = FairShare[str](1, reserved=reserved_slots(1, None), buffer=1)
    fair.add("a", "a0", now=0.0)
    assert run_all(fair) == ["a0"]


def test_the_reserve_defaults_to_an_eighth_and_never_takes_every_slot() -> None:
    assert reserved_slots(16, None) == 2
    assert reserved_slots(4, None) == 1
    assert reserved_slots(4, 9) == 3
    assert reserved_slots(1, 5) == 0


def test_a_full_buffer_hands_back_the_newest_of_the_workspace_with_the_most_waiting() -> None:
    fair = FairShare[str](2, reserved=1, buffer=3)
    for n in range(4):
        fair.add("a", f"a{n}", now=0.0)
    assert run_all(fair) == ["a0"]
    fair.add("b", "b0", now=1.0)  # came last, but a holds the most waiting
    assert fair.overflow(lambda item: True) == ["a3"]
    assert run_all(fair) == ["b0"]
    assert fair.waiting("a") == 2


def test_a_start_one_delivery_from_its_limit_is_held_past_the_bound() -> None:
    fair = FairShare[str](1, reserved=0, buffer=1)
    fair.add("a", "a0", now=0.0)
    run_all(fair)
    fair.add("a", "a1", now=0.0)
    fair.add("a", "last", now=0.0)
    assert fair.overflow(lambda item: item != "last") == ["a1"]
    assert fair.waiting("a") == 1
    assert fair.drain() == ["last"]


def test_the_replica_pulls_for_free_slots_and_room_then_past_a_stuck_buffer() -> None:
    fair = FairShare[str](4, reserved=1, buffer=2, patience=0.1)
    assert fair.wanted(now=0.0) == 2  # four free slots, room for two
    for n in range(5):
        fair.add("a", f"a{n}", now=0.0)
    run_all(fair)  # three run, two wait: the buffer is full
    assert fair.wanted(now=0.05) == 0
    assert fair.stuck_at() == 0.1
    assert fair.wanted(now=0.1) == 1  # the free slot: whatever cannot run goes back


def test_no_slot_free_means_nothing_to_pull() -> None:
    fair = FairShare[str](2, reserved=0, buffer=2)
    for n in range(2):
        fair.add("a", f"a{n}", now=0.0)
    run_all(fair)
    assert fair.wanted(now=10.0) == 0


def test_stopping_takes_every_waiting_start_out() -> None:
    fair = FairShare[str](1, reserved=0, buffer=4)
    for name in ["a0", "a1", "b0"]:
        fair.add(name[0], name, now=0.0)
    run_all(fair)
    assert sorted(fair.drain()) == ["a1", "b0"]
    assert fair.waiting_total == 0
    fair.finished("a")
    assert fair.running_total == 0


def test_a_start_handed_back_stays_away_longer_the_more_it_was_delivered() -> None:
    assert hand_back_delay(1, rng=lambda: 0.5) == 0.25
    assert hand_back_delay(4, rng=lambda: 0.5) == 1.0
    assert hand_back_delay(1000, rng=lambda: 0.5) == HAND_BACK_MAX


def test_the_workspace_comes_from_the_subject_or_the_deprecated_subject_s_body() -> None:
    assert workspace_of("flow.v1.start.ws_a", b"not json") == "ws_a"
    assert workspace_of("flow.start", b'{"workspace_id":"ws_b","run_id":"r"}') == "ws_b"
    assert workspace_of("flow.start", b"\x00" * 10) == ""


def test_a_few_free_slots_wait_briefly_for_more_before_a_pull() -> None:
    fair = FairShare[str](8, reserved=1, buffer=8, least=4, batch_wait=0.02)
    for n in range(6):
        fair.add("a", f"a{n}", now=0.0)
    run_all(fair)  # two free: fewer than `least`, more than the reserve
    assert fair.wanted(now=1.0) == 0
    assert fair.wake_at() == 1.02
    assert fair.wanted(now=1.02) == 2  # a long run may not end for hours


def test_the_reserved_slots_are_pulled_for_at_once() -> None:
    fair = FairShare[str](8, reserved=2, buffer=8, least=4)
    for n in range(6):
        fair.add("a", f"a{n}", now=0.0)
    run_all(fair)  # a busy workspace holds all but the reserved two
    assert fair.wanted(now=0.0) == 2


def test_the_last_slot_goes_only_to_a_workspace_with_nothing_running() -> None:
    fair = FairShare[str](8, reserved=2, buffer=32)
    for workspace in "abc":  # three busy workspaces share the six slots anyone may take
        for n in range(8):
            fair.add(workspace, f"{workspace}{n}", now=0.0)
    run_all(fair)
    assert [fair.running(w) for w in "abc"] == [2, 2, 2]
    fair.add("d", "d0", now=1.0)
    fair.add("d", "d1", now=1.0)
    assert run_all(fair) == ["d0"]  # below an even share (8 // 5)
    fair.add("e", "e0", now=2.0)
    assert run_all(fair) == ["e0"]
