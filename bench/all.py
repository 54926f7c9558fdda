"""`make bench-all`: every benchmark in sequence, then one summary table of their rows.

Each benchmark runs as its own process (as its `make` target would run it) and adds its rows to
a shared file (`bench.summary`); its own output is shown as it goes. The table gives, for each
stage, our figure, the bare baseline's measured in the same run, their ratio and the target.
Every measurement is taken at least twice, so the table shows the noise of the machine.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.summary import SUMMARY_FILE, rows, table

BENCHMARKS = [
    ("API trigger (make bench)", "bench.trigger_api", ["--quick"]),
    ("runner (make bench-runner)", "bench.runner_throughput", ["--runs", "10000"]),
    ("scheduler (make bench-scheduler)", "bench.scheduler", ["--quick"]),
    ("history (make bench-history)", "bench.history", ["--runs", "10000"]),
]
"""Title, module, and the arguments of a quick smoke run (`--quick`: figures not to quote)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__)
    parser.add_argument(
        "--only", action="append", default=[], help="run only the benchmark modules named"
    )
    parser.add_argument("--quick", action="store_true", help="small runs, to smoke the table")
    args = parser.parse_args(argv)
    chosen = [
        (title, [module, *(quick if args.quick else [])])
        for title, module, quick in BENCHMARKS
        if not args.only or module in args.only or module.removeprefix("bench.") in args.only
    ]
    if not chosen:
        names = ", ".join(module.removeprefix("bench.") for _, module, _ in BENCHMARKS)
        parser.error(f"--only names none of the benchmarks: {names}")
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-all-") as folder:
        summary = Path(folder) / "rows.jsonl"
        env = {**os.environ, SUMMARY_FILE: str(summary)}
        for title, command in chosen:
            print(f"\n=== {title}", flush=True)
            began = time.monotonic()
            done = subprocess.run([sys.executable, "-m", *command], env=env, check=False)
            print(f"=== {title}: {time.monotonic() - began:.0f} s", flush=True)
            if done.returncode != 0:
                failed.append(f"{title} (exit code {done.returncode})")
        print("\n" + table(rows(summary)))
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
