"""Fixtures of the fault drills: the single-node stack and the 3-node cluster stack, each
started once per module (NATS from the pinned binary, the services as processes), and healed
before every drill: what a drill killed is started again, and after a failed drill every
service is restarted, so one drill's damage does not fail the next."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.drill import REPORTS, Fault, Report, Workload, run_drill
from tests.faults.nats_nodes import Nats
from tests.faults.stack import Stack


class DrillStack(Stack):
    tainted = False
    """The last drill failed or broke off: restart every service before the next."""

    async def drill(self, name: str, workload: Workload, fault: Fault) -> Report:
        """Heal, run drill `name`, record its report; fail with its problems."""
        await self.prepare()
        self.tainted = True
        report = await run_drill(self, name, workload, fault)
        REPORTS.append(report)
        self.tainted = bool(report.problems)
        assert not report.problems, (
            f"{report.line()}\n{report.problems.summary()}\nlogs: {self.root}\n"
            f"what the services logged of the first examples:\n"
            f"{self.mentions(report.problems.named_ids())}"
        )
        return report

    async def prepare(self) -> None:
        for node in self.nats.nodes:
            if not node.running:
                node.start()
        await self.nats.wait_ready()
        if self.tainted:
            self.restart(list(self.services.values()))
        else:
            self.heal()


async def _stack(root: Path, size: int) -> AsyncIterator[DrillStack]:
    nats = Nats(root / "nats", size)
    nats.start()
    stack: DrillStack | None = None
    try:
        await nats.wait_ready()
        stack = DrillStack(nats, root)
        stack.start()
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        nats.stop()


@pytest.fixture(scope="module")
async def single_node(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DrillStack]:
    """One NATS server and the services (2 runners, 2 schedulers) against it."""
    async for stack in _stack(tmp_path_factory.mktemp("single-node"), 1):
        yield stack


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DrillStack]:
    """A 3-node NATS cluster and the services against all three (`NATS_REPLICAS=3`)."""
    async for stack in _stack(tmp_path_factory.mktemp("cluster"), 3):
        yield stack


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORTS:
        terminalreporter.section("fault drills")
        for report in REPORTS:
            terminalreporter.write_line(report.line())
            if report.problems:
                terminalreporter.write_line(report.problems.summary())
