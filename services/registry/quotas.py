"""Per-workspace quotas: the limits, and the pure decisions over a workspace's `QuotaUse`.

A record (trigger, flow, API key) takes its share of a quota before it is written and gives it
back once it is deleted; a schedule trigger also holds its fires an hour while it is enabled.
Every change to a `QuotaUse` is one of the functions below, applied by compare-and-swap.
"""

import re
import typing
from dataclasses import dataclass, field

import msgspec

from contracts.registry import Held, QuotaExceeded, QuotaName, QuotaUse, ScheduleTrigger, Trigger
from shared import schedules
from shared.ids import minted_at_ms

QUOTAS: tuple[QuotaName, ...] = typing.get_args(QuotaName)
TRIGGERS: QuotaName = "triggers"
FLOWS: QuotaName = "flows"
API_KEYS: QuotaName = "api_keys"
SCHEDULE_FIRES: QuotaName = "schedule_fires_per_hour"

DEFAULT_LIMITS: dict[QuotaName, int] = {
    TRIGGERS: 1_000,
    FLOWS: 500,
    API_KEYS: 100,
    SCHEDULE_FIRES: 36_000,
}
"""Far above what a team's automation uses, far below what takes a shared stack down: the
trial's 5,000 every-second triggers were 18,000,000 fires an hour; 36,000 is 10 a second
(ten every-second schedules, or 600 every-minute ones)."""
SETTINGS: dict[QuotaName, str] = {
    TRIGGERS: "REGISTRY_MAX_TRIGGERS",
    FLOWS: "REGISTRY_MAX_FLOWS",
    API_KEYS: "REGISTRY_MAX_API_KEYS",
    SCHEDULE_FIRES: "REGISTRY_MAX_SCHEDULE_FIRES_PER_HOUR",
}
MAX_COUNTED = 20_000
"""Highest limit on records of one kind: a workspace's holdings are one KV record (about 35
bytes a record), which must stay well under NATS's 1 MiB payload."""
_OVERRIDE = re.compile(r"^([a-z]{2,4}_[0-9a-z]{21})\.([a-z_]+)=([0-9]+)$")


class QuotaRefused(Exception):
    """A change that would take a workspace over one of its limits."""

    def __init__(self, refused: QuotaExceeded) -> None:
        super().__init__(explain(refused))
        self.refused = refused


@dataclass(frozen=True)
class QuotaLimits:
    """Every workspace's limits: the operator's defaults, and overrides for some workspaces."""

    defaults: dict[QuotaName, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    overrides: dict[str, dict[QuotaName, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        limits = [*self.defaults.items()]
        limits += [item for limits in self.overrides.values() for item in limits.items()]
        for quota, limit in limits:
            if limit < 0 or (quota != SCHEDULE_FIRES and limit > MAX_COUNTED):
                raise ValueError(
                    f"the {quota} limit {limit} is not between 0 and {MAX_COUNTED}"
                    if quota != SCHEDULE_FIRES
                    else f"the {quota} limit {limit} is negative"
                )

    def of(self, workspace_id: str, quota: QuotaName) -> int:
        own = self.overrides.get(workspace_id, {})
        return own.get(quota, self.defaults.get(quota, DEFAULT_LIMITS[quota]))


def parse_overrides(text: str) -> dict[str, dict[QuotaName, int]]:
    """`REGISTRY_QUOTA_OVERRIDES`: comma-separated `<workspace id>.<quota>=<limit>` pairs, such
    as `ws_0mx0vlscmhe76pclymsbg.triggers=5000,ws_0mx0vlscmhe76pclymsbg.flows=2000`."""
    overrides: dict[str, dict[QuotaName, int]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        found = _OVERRIDE.match(item)
        quota = found[2] if found else ""
        if found is None or quota not in QUOTAS:
            raise ValueError(
                f"{item!r} is not `<workspace id>.<quota>=<limit>` with a quota among "
                f"{', '.join(QUOTAS)} (such as `ws_0mx0vlscmhe76pclymsbg.triggers=5000`)"
            )
        overrides.setdefault(found[1], {})[typing.cast(QuotaName, quota)] = int(found[3])
    return overrides


def used(use: QuotaUse) -> int:
    return sum(held.amount for held in use.held.values())


def schedule_load(trigger: Trigger) -> int:
    """The fires an hour `trigger` holds: its schedule's busiest hour while it is enabled."""
    if isinstance(trigger, ScheduleTrigger) and trigger.enabled:
        return schedules.fires_per_hour(trigger.schedule)
    return 0


def take(use: QuotaUse, holder: str, amount: int, limit: int, version: int = 0) -> QuotaUse:
    """`holder` holds at least `amount` (what it holds already counts towards it); refused
    when that takes the workspace over `limit`. Never lowers a holding: a change that needs
    less settles with `settle` once it is written."""
    held = use.held.get(holder)
    before = held.amount if held is not None else 0
    if amount <= before:
        return use
    total = used(use)
    if total - before + amount > limit:
        raise QuotaRefused(
            QuotaExceeded(
                quota=use.quota,
                limit=limit,
                used=total,
                requested=amount - before,
                setting=SETTINGS[use.quota],
            )
        )
    kept = held.version if held is not None else version
    return _with(use, holder, Held(amount=amount, version=kept))


def settle(use: QuotaUse, holder: str, amount: int, version: int) -> QuotaUse:
    """What `holder` holds once a change of version `version` is written: exactly `amount`
    (nothing when 0). A settle of an older version than the holding's is ignored (two edits of
    one trigger may settle in either order), and so is a holder no longer here (it was
    deleted meanwhile)."""
    held = use.held.get(holder)
    if held is None or version < held.version:
        return use
    if amount == 0:
        return give_back(use, holder)
    return _with(use, holder, Held(amount=amount, version=version))


def give_back(use: QuotaUse, holder: str) -> QuotaUse:
    if holder not in use.held:
        return use
    return msgspec.structs.replace(
        use, held={name: held for name, held in use.held.items() if name != holder}
    )


def without_dead(use: QuotaUse, live: set[str], minted_before_ms: int) -> QuotaUse:
    """`use` without the holders whose record does not exist and is not being written (its id
    was minted before `minted_before_ms`): a step cut short between taking a share and
    writing the record, or between deleting the record and giving the share back."""
    dead = {
        name
        for name in use.held
        if name not in live and (minted_at_ms(name) or 0) < minted_before_ms
    }
    if not dead:
        return use
    return msgspec.structs.replace(
        use, held={name: held for name, held in use.held.items() if name not in dead}
    )


def explain(refused: QuotaExceeded) -> str:
    """The refusal for people: the limit, the use, and what to do."""
    raise_it = (
        f"or ask the operator to raise {refused.setting} (or this workspace's limit in "
        "REGISTRY_QUOTA_OVERRIDES)"
    )
    match refused.quota:
        case "schedule_fires_per_hour":
            return (
                f"this needs {refused.requested} more schedule fires an hour, and the "
                f"workspace's enabled schedules already use {refused.used} of its "
                f"{refused.limit} (each schedule counts the fires of its busiest hour): make a "
                f"schedule fire less often, pause or delete one, {raise_it}"
            )
        case "flows":
            return (
                f"the workspace has {refused.used} of its {refused.limit} flows: reuse a flow "
                f"(a flow can have many triggers), {raise_it}"
            )
        case "api_keys":
            what, how = "API keys", "revoke one it no longer needs (DELETE /v1/keys/{id})"
        case _:
            what, how = "triggers", "delete one it no longer needs (DELETE /v1/triggers/{id})"
    return f"the workspace has {refused.used} of its {refused.limit} {what}: {how}, {raise_it}"


def _with(use: QuotaUse, holder: str, held: Held) -> QuotaUse:
    return msgspec.structs.replace(use, held={**use.held, holder: held})
