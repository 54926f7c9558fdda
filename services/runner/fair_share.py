"""Fair share of one runner replica's slots between workspaces: which start runs next, which
waits in the replica's small buffer, and which is handed back to JetStream.

Runs cannot be preempted (a flow may run for a day), so fairness has to be decided before a
run starts, and the single consumer on `FLOW_STARTS` delivers in stream order. Three rules:

- **Idle capacity is anyone's**, but the last `reserved` slots of a replica go only to a
  workspace holding fewer runs than an even share of the slots (counted among the workspaces
  with work here plus one, a newcomer), and the very last one only to a workspace with nothing
  running here. A workspace alone fills all but `reserved` slots; a workspace that starts one
  echo while others hold the rest finds a slot free at once.
- **The next slot goes to the waiting workspace holding the fewest**, so two busy workspaces
  interleave instead of taking turns by the length of their queues.
- **The buffer is bounded** (`buffer` starts held here, kept alive with in-progress acks). When
  it is full of starts that cannot run (their workspaces are at their share) and its oldest has
  waited `patience` seconds, the replica pulls past them anyway, to reach other workspaces'
  starts behind them in the stream; what it cannot hold it hands back, taken from the workspace
  with the most waiting (`overflow`), for `hand_back_delay` seconds.

Pure: plain values in, decisions out; no NATS and no clock of its own.
"""

import random
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

from contracts import subjects

Item = TypeVar("Item")

PATIENCE = 0.1
"""Seconds a full buffer's oldest start waits before the replica pulls past the buffer."""
BATCH_WAIT = 0.02
"""Seconds a free slot waits for more to free up before the replica pulls for it alone."""
HAND_BACK_FIRST = 0.25
HAND_BACK_MAX = 5.0
"""Seconds a start handed back for fairness stays away: `HAND_BACK_FIRST` times its deliveries,
at most `HAND_BACK_MAX` (a long queue of a busy workspace is seen again less often)."""


def reserved_slots(concurrency: int, setting: int | None) -> int:
    """The slots of a replica kept for workspaces below their share: `setting`, or by default
    an eighth of the replica's slots (at least one), never all of them."""
    wanted = max(1, concurrency // 8) if setting is None else setting
    return min(wanted, concurrency - 1) if concurrency > 1 else 0


def hand_back_delay(delivered: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds a start handed back for fairness on its delivery `delivered` stays away (with a
    jitter, so that a workspace's handed-back queue does not come back all at once)."""
    return min(HAND_BACK_MAX, HAND_BACK_FIRST * delivered) * (0.75 + 0.5 * rng())


class _Workspace(msgspec.Struct):
    workspace_id: str = ""


_workspace_decoder = msgspec.json.Decoder(_Workspace)


def workspace_of(subject: str, data: bytes) -> str:
    """The workspace a start belongs to: from its subject (`flow.v1.start.<ws>`, what NATS
    permissions scope), or from its body on the deprecated `flow.start`; "" if neither says."""
    workspace_id = subjects.flow_start_workspace(subject)
    if workspace_id is not None:
        return workspace_id
    try:
        return _workspace_decoder.decode(data).workspace_id
    except (msgspec.DecodeError, RecursionError):
        return ""


class FairShare(Generic[Item]):
    """The slots of one replica and the starts waiting for them, by workspace."""

    def __init__(
        self,
        slots: int,
        *,
        reserved: int,
        buffer: int,
        least: int = 1,
        patience: float = PATIENCE,
        batch_wait: float = BATCH_WAIT,
    ) -> None:
        self.slots = slots
        self.reserved = reserved
        self.least = least
        """Fewest starts worth a pull (a round trip) while the buffer has room."""
        self.buffer = buffer
        self.patience = patience
        self.batch_wait = batch_wait
        self._short_since: float | None = None
        """Since when fewer than `least` slots (but some) are free, outside the reserved ones."""
        self.running_total = 0
        self.waiting_total = 0
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[tuple[Item, float]]] = {}
        self._busy: dict[str, int] = {}
        """Runs going plus starts waiting, by workspace (only workspaces with some)."""

    def running(self, workspace: str) -> int:
        return self._running.get(workspace, 0)

    def waiting(self, workspace: str) -> int:
        queue = self._waiting.get(workspace)
        return len(queue) if queue else 0

    def may_run(self, workspace: str) -> bool:
        """Whether a start of `workspace` may take a slot now."""
        free = self.slots - self.running_total
        if free <= 0:
            return False
        if free > self.reserved:
            return True
        held = self.running(workspace)
        if free == 1:  # the last slot: for a workspace with nothing running here
            return held == 0
        busy = len(self._busy) + (workspace not in self._busy)
        return held < max(1, self.slots // (busy + 1))

    def add(self, workspace: str, item: Item, now: float) -> None:
        """A start of `workspace` came: it waits until `next` picks it."""
        queue = self._waiting.get(workspace)
        if queue is None:
            queue = self._waiting[workspace] = deque()
        queue.append((item, now))
        self.waiting_total += 1
        self._busy[workspace] = self._busy.get(workspace, 0) + 1

    def run_now(self, workspace: str) -> bool:
        """Whether a start of `workspace` that just came runs at once, counted as running:
        when nothing waits and it may take a slot (`add` then `next` would pick it)."""
        if self.waiting_total or not self.may_run(workspace):
            return False
        self._running[workspace] = self._running.get(workspace, 0) + 1
        self.running_total += 1
        self._busy[workspace] = self._busy.get(workspace, 0) + 1
        return True

    def next(self) -> tuple[str, Item] | None:
        """The waiting start to run now, counted as running (None: none may run): of the
        workspaces that may take a slot, the one holding the fewest, the longest waiting first."""
        if self.running_total >= self.slots or not self.waiting_total:
            return None
        best: str | None = None
        best_key = (0, 0.0)
        for workspace, queue in self._waiting.items():
            key = (self.running(workspace), queue[0][1])
            if (best is None or key < best_key) and self.may_run(workspace):
                best, best_key = workspace, key
        if best is None:
            return None
        item = self._take(best, newest=False)
        self._running[best] = self._running.get(best, 0) + 1
        self.running_total += 1
        self._busy[best] = self._busy.get(best, 0) + 1
        return best, item

    def finished(self, workspace: str) -> None:
        """A run of `workspace` ended: its slot is free."""
        held = self._running[workspace] - 1
        if held:
            self._running[workspace] = held
        else:
            del self._running[workspace]
        self.running_total -= 1
        self._less_busy(workspace)

    def overflow(self, may_hand_back: Callable[[Item], bool]) -> list[Item]:
        """The starts to hand back so that the buffer holds at most `buffer`: each the newest
        of the workspace with the most waiting. A start `may_hand_back` refuses (one more
        delivery would be its last) stays, past the bound."""
        handed: list[Item] = []
        spared: list[tuple[str, Item, float]] = []
        while self.waiting_total and self.waiting_total + len(spared) > self.buffer:
            workspace = max(self._waiting, key=lambda w: (len(self._waiting[w]), self.running(w)))
            since = self._waiting[workspace][-1][1]
            item = self._take(workspace, newest=True)
            if may_hand_back(item):
                handed.append(item)
            else:
                spared.append((workspace, item, since))
        for workspace, item, since in reversed(spared):
            self.add(workspace, item, since)
        return handed

    def wanted(self, now: float) -> int:
        """How many starts to pull now (0: wait for a run to end, or until `wake_at`).

        As many as there are free slots and room to hold, once `least` slots are free or a
        free slot has waited `batch_wait` for more (a pull is a round trip: one per finished
        short run would cost more than the runs, but a long run may not end for hours), or at
        once in the reserved slots (a busy workspace leaves only those free, and other
        workspaces' starts must still be pulled). At least `least` even past the room: the
        buffer is a soft bound. With the buffer full of starts that waited `patience`, as many
        as there are free slots. What arrives and can neither run nor wait is handed back
        (`overflow`)."""
        free = self.slots - self.running_total
        if free <= 0:
            self._short_since = None
            return 0
        if self.reserved < free < self.least:
            if self._short_since is None:
                self._short_since = now
            if now < self._short_since + self.batch_wait:
                return 0
        self._short_since = None
        room = self.buffer - self.waiting_total
        if room > 0:
            return min(free, max(room, self.least))
        stuck = self.stuck_at()
        return free if stuck is not None and now >= stuck else 0

    def wake_at(self) -> float | None:
        """When `wanted` may say more than it just did without a run ending (None: only when
        a run ends): a full buffer counts as stuck, or a free slot waited for more."""
        times = [self.stuck_at()]
        if self._short_since is not None:
            times.append(self._short_since + self.batch_wait)
        found = [at for at in times if at is not None]
        return min(found) if found else None

    def stuck_at(self) -> float | None:
        """When a full buffer counts as stuck (its oldest start waited `patience`)."""
        if self.waiting_total < self.buffer or not self.waiting_total:
            return None
        return min(queue[0][1] for queue in self._waiting.values()) + self.patience

    def drain(self) -> list[Item]:
        """Every waiting start, taken out (stopping: they go back to JetStream)."""
        items: list[Item] = []
        for workspace in list(self._waiting):
            while workspace in self._waiting:
                items.append(self._take(workspace, newest=False))
        return items

    def _take(self, workspace: str, *, newest: bool) -> Item:
        queue = self._waiting[workspace]
        item, _ = queue.pop() if newest else queue.popleft()
        if not queue:
            del self._waiting[workspace]
        self.waiting_total -= 1
        self._less_busy(workspace)
        return item

    def _less_busy(self, workspace: str) -> None:
        left = self._busy[workspace] - 1
        if left:
            self._busy[workspace] = left
        else:
            del self._busy[workspace]
