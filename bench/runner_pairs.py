"""`python -m bench.runner_pairs OTHER [OTHER ...]`: this checkout's runner against the runners
of other checkouts (a `git worktree` of an earlier commit, say), in turn, each next to a bare
consumer measured just before it.

`make bench-runner` measures one commit; on a shared 2-core machine its figures move by a third
between rounds, so a change of a tenth is told only by runs taken close together, many times.
Here each round measures, for every checkout in turn, the bare consumer and then one runner
started from that checkout (its code, this checkout's Python and packages), on the same
nats-server; the output is every pair's ratio and CPU per run, then each checkout's medians.
It measures, it does not assert.
"""

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

from bench.runner_throughput import (
    FLOW,
    add_store_option,
    bare_consumer,
    publish_starts,
    runners,
    stage,
)

REPO = Path(__file__).resolve().parent.parent


class Pair(NamedTuple):
    ratio: float
    """The runners' runs per second over the bare consumer's messages per second."""
    runner_us: float
    """Runner CPU per run (all replicas), in microseconds."""
    busy: float
    """The runners' CPU over the measured time (1.0: one core)."""
    server_us: float
    """nats-server CPU per run, in microseconds."""
    bare_us: float
    """The bare consumer's CPU per message, in microseconds."""


async def run(
    checkouts: list[Path], count: int, rounds: int, replicas: int, store: Path | None
) -> None:
    pairs: dict[Path, list[Pair]] = {checkout: [] for checkout in checkouts}
    async with stage(store, "bench-pairs-") as on:
        for round_number in range(1, rounds + 1):
            for checkout in checkouts:
                await publish_starts(on.js, FLOW, count)
                cpu_before = time.process_time()
                bare = await bare_consumer(on.js, count)
                bare_us = (time.process_time() - cpu_before) / count * 1e6
                got = await runners(on, replicas, count, checkout)
                busy = sum(got.shares)
                pair = Pair(got.rate / bare, got.runner_us, busy, got.server_us, bare_us)
                pairs[checkout].append(pair)
                print(
                    f"#{round_number} {checkout}: {pair.ratio:.2f} of the bare consumer "
                    f"({got.rate:.0f} runs/s, {bare:.0f} msgs/s); runner {got.runner_us:.0f} us "
                    f"per run, busy {busy * 100:.0f}%; nats-server {got.server_us:.0f} us per "
                    f"run; bare consumer {bare_us:.0f} us per message",
                    flush=True,
                )
    for checkout, measured in pairs.items():
        median = statistics.median
        print(
            f"{checkout}: median {median(p.ratio for p in measured):.2f} of the bare consumer "
            f"(each: {', '.join(f'{p.ratio:.2f}' for p in measured)}); runner "
            f"{median(p.runner_us for p in measured):.0f} us per run (each: "
            f"{', '.join(f'{p.runner_us:.0f}' for p in measured)}); nats-server "
            f"{median(p.server_us for p in measured):.0f} us per run"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runner_pairs", description=__doc__)
    parser.add_argument("others", nargs="+", type=Path, help="other checkouts to compare with")
    parser.add_argument("--runs", type=int, default=40000, help="starts per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements of each checkout")
    parser.add_argument("--replicas", type=int, default=1, help="runners per measurement")
    add_store_option(parser)
    args = parser.parse_args(argv)
    checkouts = [REPO, *(other.resolve() for other in args.others)]
    asyncio.run(run(checkouts, args.runs, args.rounds, args.replicas, args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
