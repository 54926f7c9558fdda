"""Admission control across runner replicas: per-flow concurrency limits and overlap policies.

The state is `RunSlots` records in the KV bucket `run_slots`, changed only with
compare-and-swap, so every replica sees the same slots. A slot is held by a run id, which makes
taking it again (after a redelivery) harmless; a holder whose run is already final (its runner
died before giving the slot back) is dropped the next time someone finds the slots full.
The decisions themselves (`decide_overlap`, `decide_concurrency`) are pure functions.
"""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.registry import Flow, OverlapPolicy
from contracts.runs import RunSlots
from shared.codec import decode, encode

log = logging.getLogger(__name__)

MAX_CONFLICTS = 50

Verdict = Literal["admitted", "wait", "skip"]


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    slots: RunSlots
    """The slots to write (unchanged when nothing changes)."""
    reason: str = ""
    cancel: list[str] = field(default_factory=list)
    """Runs to cancel before this one starts (overlap policy `cancel_previous`)."""


def decide_overlap(
    slots: RunSlots, run_id: str, policy: OverlapPolicy, trigger_id: str
) -> Decision:
    """Whether run `run_id` of a trigger may go, given the trigger's runs still going."""
    if run_id in slots.active:
        return Decision("admitted", slots)
    others = [r for r in slots.active if r != run_id]
    if not others:
        if slots.buffered not in (None, run_id):
            # The buffered start goes first; this one came later.
            return _overlap_refusal(slots, run_id, policy, trigger_id, [slots.buffered or ""])
        return Decision("admitted", RunSlots(active=[run_id]))
    return _overlap_refusal(slots, run_id, policy, trigger_id, others)


def _overlap_refusal(
    slots: RunSlots, run_id: str, policy: OverlapPolicy, trigger_id: str, others: list[str]
) -> Decision:
    going = ", ".join(others)
    if policy == "cancel_previous":
        return Decision("admitted", RunSlots(active=[run_id]), cancel=list(slots.active))
    if policy == "buffer_one":
        if slots.buffered in (None, run_id):
            return Decision("wait", RunSlots(active=slots.active, buffered=run_id))
        reason = (
            f"skipped by the overlap policy buffer_one of trigger {trigger_id}: run "
            f"{slots.buffered} is already waiting for run {going} to finish"
        )
        return Decision("skip", slots, reason=reason)
    reason = (
        f"skipped by the overlap policy skip of trigger {trigger_id}: run {going} was still going"
    )
    return Decision("skip", slots, reason=reason)


def decide_concurrency(slots: RunSlots, run_id: str, limit: int) -> Decision:
    """Whether run `run_id` may take one of its flow's `limit` slots."""
    if run_id in slots.active:
        return Decision("admitted", slots)
    if len(slots.active) < limit:
        return Decision("admitted", RunSlots(active=[*slots.active, run_id]))
    return Decision("wait", slots)


def without(slots: RunSlots, run_id: str) -> RunSlots:
    return RunSlots(
        active=[r for r in slots.active if r != run_id],
        buffered=None if slots.buffered == run_id else slots.buffered,
    )


def takes_slots(flow: Flow, trigger_id: str | None, policy: OverlapPolicy) -> bool:
    """Whether a run of `flow` through `trigger_id` needs admission at all: without a
    concurrency limit and with overlap `allow` it holds no slot, so there is nothing to take or
    give back (and no `run_slots` round trip on the hot path)."""
    return flow.concurrency is not None or (trigger_id is not None and policy != "allow")


IsFinished = Callable[[str, str], Awaitable[bool]]
"""`(workspace_id, run_id)` → whether that run is final (or has no record)."""
Cancel = Callable[[str, str, str], Awaitable[None]]
"""`(workspace_id, run_id, reason)`: cancel a run."""


class Admission:
    """Takes and gives back slots in the `run_slots` bucket."""

    def __init__(self, slots: KeyValue, is_finished: IsFinished, cancel: Cancel) -> None:
        self._slots = slots
        self._is_finished = is_finished
        self._cancel = cancel

    async def admit(
        self,
        workspace_id: str,
        run_id: str,
        flow: Flow,
        trigger_id: str | None,
        policy: OverlapPolicy,
    ) -> Decision:
        """Admit the run through its trigger's overlap policy, then its flow's limit."""
        if trigger_id is not None and policy != "allow":
            key = subjects.trigger_slots_key(workspace_id, trigger_id)

            def overlap(slots: RunSlots) -> Decision:
                return decide_overlap(slots, run_id, policy, trigger_id)

            decision = await self._apply(workspace_id, key, overlap)
            if decision.verdict != "admitted":
                return decision
        if flow.concurrency is not None:
            limit = flow.concurrency
            key = subjects.flow_slots_key(workspace_id, flow.id)
            return await self._apply(
                workspace_id, key, lambda slots: decide_concurrency(slots, run_id, limit)
            )
        return Decision("admitted", RunSlots())

    async def release(
        self, workspace_id: str, run_id: str, flow_id: str, trigger_id: str | None
    ) -> None:
        """Give back every slot `run_id` holds (harmless when it holds none)."""
        keys = [subjects.flow_slots_key(workspace_id, flow_id)]
        if trigger_id is not None:
            keys.append(subjects.trigger_slots_key(workspace_id, trigger_id))
        for key in keys:
            for _ in range(MAX_CONFLICTS):
                slots, revision = await self._read(key)
                if revision is None:
                    break
                if run_id not in slots.active and slots.buffered != run_id:
                    break
                try:
                    await self._slots.update(key, encode(without(slots, run_id)), last=revision)
                    break
                except KeyWrongLastSequenceError:
                    continue

    async def _read(self, key: str) -> tuple[RunSlots, int | None]:
        try:
            entry = await self._slots.get(key)
        except KeyNotFoundError:
            return RunSlots(), None
        if not entry.value:
            return RunSlots(), entry.revision
        slots: RunSlots = decode(entry.value, RunSlots)
        return slots, entry.revision

    async def _apply(
        self, workspace_id: str, key: str, decide: Callable[[RunSlots], Decision]
    ) -> Decision:
        for _ in range(MAX_CONFLICTS):
            slots, revision = await self._read(key)
            decision = decide(slots)
            if decision.verdict != "admitted" or decision.cancel:
                # Blocked: drop holders whose runs are over (their runner died before giving
                # the slot back), and decide again.
                live = [r for r in slots.active if not await self._is_finished(workspace_id, r)]
                buffered = slots.buffered
                if buffered is not None and await self._is_finished(workspace_id, buffered):
                    buffered = None
                if live != slots.active or buffered != slots.buffered:
                    slots = RunSlots(active=live, buffered=buffered)
                    decision = decide(slots)
            for run_id in decision.cancel:
                await self._cancel(
                    workspace_id, run_id, "cancelled by a newer start (overlap cancel_previous)"
                )
            if decision.slots == slots and revision is not None:
                return decision
            try:
                if revision is None:
                    await self._slots.create(key, encode(decision.slots))
                else:
                    await self._slots.update(key, encode(decision.slots), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return decision
        raise RuntimeError(f"the slots {key} keep changing while this runner writes them")
