"""Fit time of two versions of the package, as ``benchmarks/overhead.py`` measures it: after / before a change.

Each pair runs ``overhead.py`` once on the "before" checkout and once on the "after" checkout (order alternating
from pair to pair, each in a fresh process with ``PYTHONPATH`` pointing at its checkout), one repeat of its fits
with and without FilterMonitor + ActivationMonitor. The figure is the median over the pairs of the after/before
ratio of the fit time with the monitors (and, as a check on the machine, without them).

    git worktree add /tmp/before <commit>
    python benchmarks/compare_versions.py /tmp/before . --pairs 9
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIME = re.compile(r"repeat 0 (with   |without) monitors:\s+([0-9.]+) s")


def fit_times(checkout: Path, options: list[str]) -> dict[str, float]:
    """One ``overhead.py`` run of ``checkout``: seconds of the fit "with" and "without" the monitors."""
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    command = [sys.executable, str(checkout / "benchmarks" / "overhead.py"), "--repeats", "1",
               "--memory-repeats", "0", *options]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return {kind.strip(): float(seconds) for kind, seconds in TIME.findall(result.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path, nargs="?", default=ROOT)
    parser.add_argument("--pairs", type=int, default=9)
    parser.add_argument("--steps", type=int, default=300)
    args, passed = parser.parse_known_args()
    options = ["--steps", str(args.steps), *passed]
    ratios: dict[str, list[float]] = {"with": [], "without": []}
    for pair in range(args.pairs):
        order = ("before", "after") if pair % 2 == 0 else ("after", "before")
        found = {which: fit_times(getattr(args, which), options) for which in order}
        for kind in ratios:
            ratios[kind].append(found["after"][kind] / found["before"][kind])
        print(f"pair {pair} ({order[0]} first): with monitors {found['before']['with']:.2f} s -> "
              f"{found['after']['with']:.2f} s, without {found['before']['without']:.2f} s -> "
              f"{found['after']['without']:.2f} s", flush=True)  # fmt: skip
    for kind, values in ratios.items():
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        print(f"after/before fit time {kind} the monitors: median {statistics.median(values):.3f} "
              f"(quartiles {quartiles[0]:.3f} .. {quartiles[2]:.3f}, {len(values)} pairs)")  # fmt: skip


if __name__ == "__main__":
    main()
