"""One fault drill: a workload over HTTP, a fault in the middle, then every record checked.

The workload is what users do: API starts at a steady rate (each with an `Idempotency-Key`,
retried on failure as a client would) and per-second schedule triggers. Throughput is the rate
at which the workspace's runs end (terminal run events), measured before the fault and after.
"""

import asyncio
import contextlib
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import ServiceUnavailableError

from contracts import subjects
from contracts.runs import TERMINAL_STATUSES, Run
from contracts.scheduling import FireRecord
from shared.codec import decoder
from shared.kv import read_prefix
from shared.stream_read import read_subject
from tests.faults.ledger import (
    RECOVERED,
    Answer,
    ApiStart,
    Ledger,
    Meter,
    Problems,
    ScheduledTrigger,
    check_attempts,
    check_fires,
    check_starts,
    parse_executions,
)
from tests.faults.stack import OPERATOR_TOKEN, Service, Stack

NAP = 0.1
"""Seconds an API-started run sleeps: long enough to be in flight when a runner is hit."""
PRE_FAULT = 4.0
"""Seconds of steady load the pre-fault rate is measured over."""
RECOVERY_LIMIT = 30.0
"""Seconds after the fault ends within which throughput must be back."""
HOLD = 3.0
"""Seconds throughput must stay recovered before the load stops."""
MIN_AFTER = 5.0
"""Seconds the load goes on after the fault at least."""
RETRY_FOR = 25.0
"""Seconds a client retries one start (same Idempotency-Key) before giving up on it."""
SETTLE = 30.0
"""Seconds allowed, after the load stops, for every accepted start to end in a run."""
MAX_IN_FLIGHT = 300


@dataclass(frozen=True)
class Workload:
    api_rate: float
    """API starts per second (open loop: a slow answer does not slow the offered load)."""
    triggers: int
    """Per-second schedule triggers."""


@dataclass
class FaultDone:
    """What a fault did: when it ended (the moment recovery is measured from) and which
    processes it killed (their executions may be unrecorded)."""

    ended_at: float
    killed: list[Service] = field(default_factory=list)
    note: str = ""


Fault = Callable[[Stack], Awaitable[FaultDone]]

REPORTS: list["Report"] = []
"""Every drill's report in this session, for the summary at the end."""


@dataclass
class Report:
    name: str
    problems: Problems = field(default_factory=Problems)
    timings: dict[str, float] = field(default_factory=dict)
    pre_rate: float = 0.0
    pre_accept_rate: float = 0.0
    recovery: float | None = None
    accept_recovery: float | None = None
    answers: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def line(self) -> str:
        verdict = "FAIL" if self.problems else "pass"
        recovery = "never" if self.recovery is None else f"{self.recovery:.1f}s"
        accepts = (
            "" if self.accept_recovery is None else f", 2xx back in {self.accept_recovery:.1f}s"
        )
        phases = " ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        return (
            f"{verdict} {self.name}: runs/s before {self.pre_rate:.0f}, back in {recovery}"
            f"{accepts}; {phases}; {self.counts}; answers {self.answers}"
            + (f"; {self.note}" if self.note else "")
        )


class ApiLoad:
    """Open-loop API starts against one flow, each retried with its key until a 2xx."""

    def __init__(self, client: httpx.AsyncClient, flow_id: str, ledger: Ledger, rate: float):
        self._client = client
        self._flow_id = flow_id
        self._ledger = ledger
        self._rate = rate
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepts = Meter()
        self.skipped = 0

    async def run(self, stop: asyncio.Event) -> None:
        if self._rate <= 0:
            return
        loop = asyncio.get_running_loop()
        interval = 1 / self._rate
        next_at = loop.time()
        while not stop.is_set():
            if len(self._tasks) < MAX_IN_FLIGHT:
                task = asyncio.create_task(self._start())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self.skipped += 1
            next_at += interval
            if loop.time() - next_at > 1:  # the loop was busy: do not catch up in a burst
                next_at = loop.time()
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def finish(self) -> None:
        """Wait for every start in flight (each ends accepted or after `RETRY_FOR`)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _start(self) -> None:
        start = ApiStart(key=uuid.uuid4().hex)
        self._ledger.starts.append(start)
        first = time.monotonic()
        while True:
            answer = await self._ask(start.key)
            start.answers.append(answer)
            if answer.accepted:
                self.accepts.count(time.time())
                return
            if time.monotonic() - first > RETRY_FOR:
                return
            await asyncio.sleep(0.5)

    async def _ask(self, key: str) -> Answer:
        try:
            response = await self._client.post(
                f"/trigger/{self._flow_id}",
                json={"seconds": NAP},
                headers={"Idempotency-Key": key},
            )
        except httpx.HTTPError as error:
            return Answer(status=None, code=type(error).__name__)
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            body = response.json()
        if 200 <= response.status_code < 300:
            return Answer(status=response.status_code, run_id=body.get("run_id"))
        return Answer(status=response.status_code, code=str(body.get("code")))


class RunEnds:
    """Counts the workspace's runs as they end, from the run events (each run once)."""

    def __init__(self) -> None:
        self.meter = Meter()
        self._ended: set[str] = set()

    async def follow(self, nc: Client, workspace_id: str) -> Any:
        async def on_event(msg: Msg) -> None:
            _, _, run_id, status = msg.subject.rsplit(".", 3)
            if status in TERMINAL_STATUSES and run_id not in self._ended:
                self._ended.add(run_id)
                self.meter.count(time.time())

        return await nc.subscribe(subjects.run_events(workspace_id, "*"), cb=on_event)


async def _call(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    """One setup call, retried briefly (a cluster may still be electing a leader)."""
    for _ in range(20):
        response = await client.request(method, path, json=body)
        if response.status_code < 500:
            assert response.status_code < 300, f"{method} {path}: {response.text}"
            return response.json()
        await asyncio.sleep(0.5)
    raise AssertionError(f"{method} {path}: {response.status_code} {response.text}")


async def _workspace(stack: Stack, ledger: Ledger, name: str) -> str:
    async with httpx.AsyncClient(base_url=stack.url, timeout=15) as operator:
        operator.headers["Authorization"] = f"Bearer {OPERATOR_TOKEN}"
        created = await _call(operator, "POST", "/v1/workspaces", {"name": name})
    ledger.workspace_id = created["workspace"]["id"]
    return str(created["admin_key"]["secret"])


async def _schedule_triggers(
    admin: httpx.AsyncClient, flow_id: str, count: int, first: datetime
) -> list[ScheduledTrigger]:
    body = {
        "flow_id": flow_id,
        "type": "schedule",
        "schedule": {"kind": "interval", "every": 1, "start": first.isoformat()},
    }
    gate = asyncio.Semaphore(16)

    async def create() -> ScheduledTrigger:
        async with gate:
            created = await _call(admin, "POST", "/v1/triggers", body)
        # A schedule fires only after its trigger exists: one created after `first` (a slow
        # set-up on a busy machine) owes nothing for the seconds before its creation.
        created_at = datetime.fromisoformat(created["created_at"])
        after_creation = created_at.replace(microsecond=0) + timedelta(seconds=1)
        return ScheduledTrigger(id=created["id"], first=max(first, after_creation))

    return list(await asyncio.gather(*(create() for _ in range(count))))


async def _pause(admin: httpx.AsyncClient, triggers: list[ScheduledTrigger]) -> None:
    gate = asyncio.Semaphore(16)

    async def pause(trigger: ScheduledTrigger) -> None:
        async with gate:
            trigger.paused_at = datetime.now(UTC)
            await _call(admin, "POST", f"/v1/triggers/{trigger.id}/pause")

    await asyncio.gather(*(pause(t) for t in triggers))


async def _read(nc: Client, workspace_id: str) -> tuple[list[Run], list[FireRecord]]:
    js = nc.jetstream()
    runs = await read_prefix(js, subjects.RUNS_BUCKET, workspace_id, Run)
    decode = decoder(FireRecord).decode
    entries: list[FireRecord] = []
    reads = read_subject(
        js,
        subjects.SCHEDULE_FIRES_STREAM,
        f"{subjects.SCHEDULE_FIRE_PREFIX}.{workspace_id}.>",
        timeout=5,
        partial=True,
    )
    async with contextlib.aclosing(reads) as batches:
        async for batch in batches:
            for msg in batch:
                with contextlib.suppress(msgspec.DecodeError):
                    entries.append(decode(msg.data))
    return runs, entries


READ_ATTEMPTS = 20


async def _read_retried(nc: Client, workspace_id: str) -> tuple[list[Run], list[FireRecord]]:
    """`_read`, retried as a client would while the cluster is still electing leaders after
    the fault (JetStream answers 503 or not at all meanwhile)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return await _read(nc, workspace_id)
        except (ServiceUnavailableError, NoRespondersError, NatsTimeoutError, TimeoutError):
            if attempt == READ_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def _settled(ledger: Ledger, runs: list[Run], entries: list[FireRecord]) -> bool:
    ended = {run.id for run in runs if run.status in TERMINAL_STATUSES}
    if not ledger.accepted_run_ids() <= ended:
        return False
    decided = {(e.trigger_id, e.scheduled_at.astimezone(UTC)) for e in entries}
    return all((t.id, s) in decided for t in ledger.triggers for s in t.expected())


async def run_drill(stack: Stack, name: str, workload: Workload, fault: Fault) -> Report:
    """Set up a workspace, load it, apply `fault` after `PRE_FAULT` s of steady load, keep
    the load on until throughput is back (or `RECOVERY_LIMIT` passed), then check."""
    report = Report(name)
    began = time.monotonic()
    ledger = Ledger()
    admin_key = await _workspace(stack, ledger, name)
    nc = await stack.nats.connect()
    ends = RunEnds()
    events = await ends.follow(nc, ledger.workspace_id)
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with (
        httpx.AsyncClient(base_url=stack.url, timeout=30, limits=limits) as admin,
        httpx.AsyncClient(base_url=stack.url, timeout=30, limits=limits) as caller,
    ):
        admin.headers["Authorization"] = f"Bearer {admin_key}"
        flow = await _call(
            admin,
            "POST",
            "/v1/flows",
            {"name": "tally", "settings": {"kind": "python", "function": "tally"}},
        )
        await _call(
            admin,
            "POST",
            "/v1/triggers",
            {"flow_id": flow["id"], "type": "api", "sync_wait_seconds": 0},
        )
        key = await _call(admin, "POST", "/v1/keys", {"name": "load", "scope": "trigger"})
        caller.headers["Authorization"] = f"Bearer {key['secret']}"
        first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        ledger.triggers = await _schedule_triggers(admin, flow["id"], workload.triggers, first)
        report.timings["setup"] = time.monotonic() - began

        load = ApiLoad(caller, flow["id"], ledger, workload.api_rate)
        stop = asyncio.Event()
        loading = asyncio.create_task(load.run(stop))
        steady_from = (
            max(time.time(), first.timestamp() + 1) if workload.triggers else time.time() + 1
        )
        await asyncio.sleep(max(0.0, steady_from + PRE_FAULT - time.time()))
        fault_at = time.time()
        report.pre_rate = ends.meter.rate(fault_at - PRE_FAULT, fault_at)
        report.pre_accept_rate = load.accepts.rate(fault_at - PRE_FAULT, fault_at)
        report.timings["before fault"] = time.monotonic() - began - report.timings["setup"]

        done = await fault(stack)
        report.note = done.note
        report.timings["fault"] = done.ended_at - fault_at
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            recovered = ends.meter.recovered_at(report.pre_rate, done.ended_at, now)
            accepted = (
                load.accepts.recovered_at(report.pre_accept_rate, done.ended_at, now)
                if workload.api_rate
                else done.ended_at
            )
            back = recovered is not None and accepted is not None
            if back and now - max(recovered, accepted) >= HOLD and now - done.ended_at >= MIN_AFTER:  # type: ignore[type-var]
                break
            if now - done.ended_at >= RECOVERY_LIMIT + HOLD:
                break
        report.recovery = None if recovered is None else max(0.0, recovered - done.ended_at)
        if workload.api_rate:
            report.accept_recovery = (
                None if accepted is None else max(0.0, accepted - done.ended_at)
            )
        report.timings["after fault"] = time.time() - done.ended_at
        settle_began = time.monotonic()
        stop.set()
        await loading
        await _pause(admin, ledger.triggers)
        await load.finish()

        deadline = time.monotonic() + SETTLE
        while True:
            runs, entries = await _read_retried(nc, ledger.workspace_id)
            if _settled(ledger, runs, entries) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        await asyncio.sleep(1.0)  # anything still on its way (a late duplicate) lands
        runs, entries = await _read_retried(nc, ledger.workspace_id)
        report.timings["settle"] = time.monotonic() - settle_began
    await events.unsubscribe()
    await nc.close()

    problems = report.problems
    check_starts(ledger, runs, problems)
    check_fires(ledger, runs, entries, problems)
    killed = {service.pid for service in done.killed}
    runner_ids = {
        service.pid: service.runner_ids[-1]
        for service in stack.of("runner")
        if service.is_up() and service.runner_ids
    }
    executions = parse_executions(stack.executions.read_text())
    untraced = check_attempts(runs, executions, runner_ids, killed, problems)
    if untraced:
        report.note += f"{untraced} executions by the killed runner left no attempt (documented)"
    _check_services(stack, done, runs, report)
    report.answers = dict(ledger.answer_counts())
    report.counts = {
        "starts": len(ledger.starts),
        "accepted": len(ledger.accepted_run_ids()),
        "runs": len(runs),
        "ledger entries": len(entries),
        "skipped by the load": load.skipped,
        **{f"ledger {status}": n for status, n in Counter(e.status for e in entries).items()},
    }
    report.timings["total"] = time.monotonic() - began
    return report


def _check_services(stack: Stack, done: FaultDone, runs: list[Run], report: Report) -> None:
    """No service needs a restart: all but the killed run, the ingress is healthy, every
    runner did work after the fault, and throughput came back within `RECOVERY_LIMIT`."""
    problems = report.problems
    killed = {id(service) for service in done.killed}
    for service in stack.services.values():
        if id(service) not in killed and not service.alive:
            problems.add(
                "a service that died",
                f"{service.name} exited {service.process.returncode if service.process else ''}",
            )
    if not stack.healthy():
        problems.add("a service that died", "the ingress is not healthy")
    worked_after = {
        attempt.runner_id
        for run in runs
        for attempt in run.attempts
        if attempt.finished_at is not None and attempt.finished_at.timestamp() > done.ended_at + 1
    }
    for service in stack.of("runner"):
        if id(service) in killed or not service.runner_ids:
            continue
        if service.runner_ids[-1] not in worked_after:
            problems.add("a runner that took no work after the fault", service.name)
    if report.recovery is None or report.recovery > RECOVERY_LIMIT:
        problems.add(
            "throughput not back within 30 s",
            f"runs/s before the fault {report.pre_rate:.0f}; never back to {RECOVERED:.0%} of it",
        )
    if report.pre_accept_rate and (
        report.accept_recovery is None or report.accept_recovery > RECOVERY_LIMIT
    ):
        problems.add(
            "throughput not back within 30 s",
            f"2xx/s before the fault {report.pre_accept_rate:.0f};"
            f" never back to {RECOVERED:.0%} of it",
        )
    if math.isclose(report.pre_rate, 0.0):
        problems.add("no load before the fault", "no run ended in the pre-fault window")
