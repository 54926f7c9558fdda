"""Scheduler replicas against a real nats-server: SIGKILL, all replicas down, racing edits.

Replicas run as processes (`python -m services.scheduler`) where a kill is needed. Starts are
watched with a core subscription on `flow.start` (every publish, duplicates included: the
stream de-duplicates them by `Nats-Msg-Id`); the ledger is read back from its stream. Each test
checks, per trigger, that every occurrence has exactly one run id, and either a start or a
recorded reason.
"""

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from contracts.registry import CronSchedule, IntervalSchedule, MisfirePolicy, Trigger
from contracts.scheduling import FireRecord
from services.ingress.adapters import read_ledger
from services.scheduler.app import SchedulerApp, create_app
from services.scheduler.settings import SchedulerSettings
from tests.integration.test_scheduler_timers import (
    Registry,
    StartLog,
    changed,
    now,
    registry,  # noqa: F401  (fixture)
    schedule_trigger,
    starts,  # noqa: F401  (fixture)
)

ROOT = Path(__file__).resolve().parents[2]


class Replica:
    """One `python -m services.scheduler` process with its log."""

    def __init__(self, nats_url: str, log: Path, **env: str) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.scheduler"],
                cwd=ROOT,
                env={**os.environ, "NATS_URL": nats_url, "LOG_LEVEL": "INFO", **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def up(self, timeout: float = 20.0) -> "Replica":
        deadline = asyncio.get_running_loop().time() + timeout
        while "scheduler is up" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"replica did not come up:\n{self.log.read_text()}")
            await asyncio.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its connection and whatever it holds, and does nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def replicas(nats_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.kill()


def start_replica(replicas: list[Replica], nats_url: str, tmp_path: Path, **env: str) -> Replica:
    replica = Replica(nats_url, tmp_path / f"replica-{len(replicas)}.log", **env)
    replicas.append(replica)
    return replica


def per_second(misfire: MisfirePolicy = "run_once") -> Trigger:
    return schedule_trigger("* * * * * *", schedule=IntervalSchedule(every=1, misfire=misfire))


def runs_by_fire(log: StartLog, trigger_id: str) -> dict[datetime, set[str]]:
    fires: dict[datetime, set[str]] = defaultdict(set)
    for start in log.of(trigger_id):
        assert start.scheduled_at is not None
        fires[start.scheduled_at].add(start.run_id)
    return fires


def decisions(ledger: list[FireRecord]) -> dict[datetime, set[str]]:
    found: dict[datetime, set[str]] = defaultdict(set)
    for entry in ledger:
        found[entry.scheduled_at].add(entry.status)
    return found


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)  # the schedules under test need wall-clock time to pass


def every_second(first: datetime, last: datetime) -> list[datetime]:
    return [first + timedelta(seconds=n) for n in range(int((last - first).total_seconds()) + 1)]


async def test_killing_one_of_two_replicas_loses_no_fire_and_doubles_none(
    nats_url: str,
    tmp_path: Path,
    replicas: list[Replica],
    registry: Registry,  # noqa: F811
    starts: StartLog,  # noqa: F811
    js: JetStreamContext,
):
    first = await start_replica(replicas, nats_url, tmp_path).up()
    await start_replica(replicas, nats_url, tmp_path).up()
    triggers = [per_second() for _ in range(4)]
    for trigger in triggers:
        await registry.put(trigger)
    await settle(3)
    first.kill()  # SIGKILL, whatever it had in hand
    killed_at = now()
    await settle(8)  # past the tick ack wait (5 s): its ticks in hand came back
    for trigger in triggers:
        await registry.put(changed(trigger, enabled=False))
    await settle(1)

    for trigger in triggers:
        fires = runs_by_fire(starts, trigger.id)
        assert fires, "the trigger never fired"
        assert all(len(run_ids) == 1 for run_ids in fires.values()), fires
        ledger = decisions(await read_ledger(js, trigger.workspace_id, trigger.id))
        window = every_second(min(fires), killed_at.replace(microsecond=0) + timedelta(seconds=6))
        for second in window:
            assert second in fires, f"{second} of {trigger.id} has no start; ledger: {ledger}"
            assert ledger[second] <= {"started", "caught_up"}, ledger[second]


async def test_a_replica_paused_while_the_other_runs_leaves_one_decision_per_fire(
    nats_url: str,
    tmp_path: Path,
    replicas: list[Replica],
    registry: Registry,  # noqa: F811
    starts: StartLog,  # noqa: F811
    js: JetStreamContext,
):
    # Ticks held by the paused replica come back to the other one TICK_ACK_WAIT after their
    # due time, within MISFIRE_AFTER; the pause lasts longer than MISFIRE_AFTER, so whatever
    # the paused replica decided before it, or decides on waking, is late by then.
    env = {"MISFIRE_AFTER": "5", "TICK_ACK_WAIT": "1"}
    paused = await start_replica(replicas, nats_url, tmp_path, **env).up()
    await start_replica(replicas, nats_url, tmp_path, **env).up()
    triggers = [per_second() for _ in range(50)]
    for trigger in triggers:
        await registry.put(trigger)
    await settle(3)
    paused.pause()
    try:
        await settle(8)
    finally:
        paused.resume()
    await settle(4)
    disabled_at = now()
    for trigger in triggers:
        await registry.put(changed(trigger, enabled=False))
    await settle(1.5)

    for trigger in triggers:
        fires = runs_by_fire(starts, trigger.id)
        assert all(len(run_ids) == 1 for run_ids in fires.values()), fires
        entries = await read_ledger(js, trigger.workspace_id, trigger.id)
        by_second: dict[datetime, list[str]] = defaultdict(list)
        for entry in entries:
            by_second[entry.scheduled_at].append(f"{entry.status}: {entry.reason}")
        assert by_second, f"{trigger.id} has no ledger entry"
        doubled = {second: found for second, found in by_second.items() if len(found) > 1}
        assert not doubled, f"{trigger.id} has two decisions about a fire: {doubled}"
        # A scheduler ran all the time: every second was started on time, and only once.
        for second in every_second(min(by_second), disabled_at - timedelta(seconds=2)):
            assert second in by_second, f"{second} of {trigger.id} has no entry"
            assert by_second[second][0].startswith("started"), (second, by_second[second])
            assert second in fires, f"{second} of {trigger.id} has no start"


@pytest.mark.parametrize(
    ("misfire", "starts_after_outage"),
    [("skip", "none"), ("run_once", "one"), ("run_all", "all")],
)
async def test_after_every_replica_was_down_the_misfire_policy_decides_at_once(
    nats_url: str,
    tmp_path: Path,
    replicas: list[Replica],
    registry: Registry,  # noqa: F811
    starts: StartLog,  # noqa: F811
    js: JetStreamContext,
    misfire: MisfirePolicy,
    starts_after_outage: str,
):
    # A killed replica's ticks (the one it holds until its due time included) come back
    # TICK_ACK_WAIT after their due time: well within the outage below, as in a real one.
    env = {"MISFIRE_AFTER": "1.5", "TICK_ACK_WAIT": "1"}
    only = await start_replica(replicas, nats_url, tmp_path, **env).up()
    trigger = per_second(misfire)
    await registry.put(trigger)
    await starts.wait_for(lambda start: start.trigger_id == trigger.id, timeout=4)
    await settle(1.3)  # between two fires: the replica holds the tick of the next one
    only.kill()
    down_at = now()
    await settle(5)  # five periods with no scheduler at all
    back_at = now()
    await start_replica(replicas, nats_url, tmp_path, **env).up()
    await settle(2.5)
    await registry.put(changed(trigger, enabled=False))
    await settle(0.5)

    fires = runs_by_fire(starts, trigger.id)
    assert all(len(run_ids) == 1 for run_ids in fires.values()), fires
    ledger = decisions(await read_ledger(js, trigger.workspace_id, trigger.id))
    # From the first second after the kill: the replica held its tick when it died, and that
    # tick, redelivered on return, is as late as the rest of the outage.
    outage = [
        second
        for second in every_second(down_at.replace(microsecond=0), back_at)
        if down_at < second < back_at - timedelta(seconds=1.5)
    ]
    for second in outage:
        assert ledger[second] & {"missed", "caught_up", "started"}, (second, ledger)
    started_in_outage = [second for second in outage if second in fires]
    missed = [second for second in outage if "missed" in ledger[second]]
    match starts_after_outage:
        case "none":
            assert started_in_outage == []
            assert missed == outage
        case "one":
            # The most recent missed fire: MISFIRE_AFTER before the returning replica decided,
            # which is a little after `back_at` (its start-up), so maybe just past `outage`.
            caught_up = [second for second, found in ledger.items() if "caught_up" in found]
            assert len(caught_up) == 1, ledger
            assert down_at < caught_up[0] < back_at + timedelta(seconds=3), (caught_up, back_at)
            assert len(started_in_outage) <= 1
        case "all":
            assert started_in_outage == outage
            assert missed == []
    # Every start has a ledger entry saying it started.
    for second in fires:
        assert ledger[second] & {"started", "caught_up"}, (second, ledger[second])


async def test_a_resume_while_every_replica_was_down_is_decided_on_return(
    nats_url: str,
    tmp_path: Path,
    replicas: list[Replica],
    registry: Registry,  # noqa: F811
    starts: StartLog,  # noqa: F811
    js: JetStreamContext,
):
    only = await start_replica(replicas, nats_url, tmp_path).up()
    trigger = per_second("run_once")
    await registry.put(trigger)
    await starts.wait_for(lambda start: start.trigger_id == trigger.id, timeout=4)
    # Paused as the registry does it, seen by the replica (which cancels the timer)...
    paused = changed(trigger, enabled=False, paused_at=now())
    await registry.put(paused)
    await settle(1)
    only.kill()
    await settle(3)
    # ... then resumed while no replica runs.
    resumed = changed(paused, enabled=True, resumed_at=now())
    await registry.put(resumed)
    await settle(1)
    await start_replica(replicas, nats_url, tmp_path).up()
    await settle(1.5)
    await registry.put(changed(resumed, enabled=False, paused_at=now(), resumed_at=None))
    await settle(0.5)

    assert paused.paused_at is not None
    assert resumed.resumed_at is not None
    pause = every_second(
        paused.paused_at.replace(microsecond=0) + timedelta(seconds=1),
        resumed.resumed_at - timedelta(seconds=1),
    )
    ledger = decisions(await read_ledger(js, trigger.workspace_id, trigger.id))
    for second in pause:
        assert ledger[second] & {"paused", "caught_up"}, (second, ledger[second])
    caught_up = [second for second in pause if "caught_up" in ledger[second]]
    assert len(caught_up) <= 1
    assert len([s for s, found in ledger.items() if "caught_up" in found]) == 1
    fires = runs_by_fire(starts, trigger.id)
    assert all(len(run_ids) == 1 for run_ids in fires.values()), fires


async def _two_in_process(nats_url: str) -> list[SchedulerApp]:
    apps = [create_app(SchedulerSettings(nats_url=nats_url)) for _ in range(2)]
    for app in apps:
        await app.start()
    return apps


@pytest.fixture
async def two_replicas(nats_url: str) -> AsyncIterator[list[SchedulerApp]]:
    apps = await _two_in_process(nats_url)
    try:
        yield apps
    finally:
        for app in apps:
            await app.stop()


@pytest.mark.usefixtures("two_replicas")
async def test_edits_racing_with_ticks_never_fire_an_old_version(
    registry: Registry,  # noqa: F811
    starts: StartLog,  # noqa: F811
    js: JetStreamContext,
):
    every_second_cron = CronSchedule(cron="* * * * * *")
    even_seconds = CronSchedule(cron="*/2 * * * * *")
    trigger = schedule_trigger("* * * * * *")
    await registry.put(trigger)
    written: dict[int, tuple[CronSchedule, datetime]] = {1: (every_second_cron, now())}
    for edit in range(16):
        await asyncio.sleep(0.23 + 0.05 * (edit % 3))  # lands at every point of a second
        schedule = even_seconds if edit % 2 == 0 else every_second_cron
        trigger = changed(trigger, schedule=schedule)
        await registry.put(trigger)
        written[trigger.version] = (schedule, now())
    paused = changed(trigger, enabled=False)
    await registry.put(paused)
    paused_at = now()
    await settle(2)

    fires = runs_by_fire(starts, trigger.id)
    assert fires
    assert all(len(run_ids) == 1 for run_ids in fires.values()), fires
    ledger = await read_ledger(js, trigger.workspace_id, trigger.id)
    for entry in ledger:
        if entry.status not in ("started", "caught_up"):
            continue
        schedule, written_at = written[entry.trigger_version]
        # A fire of version v belongs to v's schedule and comes after v was written.
        assert entry.scheduled_at >= written_at.replace(microsecond=0), entry
        if schedule is even_seconds:
            assert entry.scheduled_at.second % 2 == 0, entry
        assert entry.scheduled_at <= paused_at + timedelta(seconds=1), entry
    assert {entry.scheduled_at for entry in ledger if entry.status == "started"} == set(fires)
    assert not [
        start
        for start in starts.of(trigger.id)
        if start.scheduled_at > paused_at + timedelta(seconds=1)
    ]  # type: ignore[operator]
