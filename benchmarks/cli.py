"""The ``sage-resilience`` command.

``sage-resilience bench`` runs the fault scenarios under each policy in the virtual-time
simulator and writes the table, ``results.json``, plots and ``report.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .report import LEGEND, format_table, write_report
from .sim.grid import format_grid, grid_configs, run_grid
from .sim.policies import POLICIES
from .sim.runner import run_suite
from .sim.scenarios import SCENARIOS

__all__ = ["main"]

DEFAULT_POLICIES = ("none", "seed", "static")


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / total)
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r[{bar}] {done}/{total} {label:<40.40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _bench(args: argparse.Namespace) -> int:
    scenarios = args.scenario or list(SCENARIOS)
    policies = args.policy or [p for p in (*DEFAULT_POLICIES, "adaptive") if p in POLICIES]
    for name in scenarios:
        if name not in SCENARIOS:
            print(
                f"unknown scenario {name!r}; choose from: {', '.join(SCENARIOS)}", file=sys.stderr
            )
            return 2
    for name in policies:
        if name not in POLICIES:
            print(f"unknown policy {name!r}; choose from: {', '.join(POLICIES)}", file=sys.stderr)
            return 2
    start = time.perf_counter()
    results = run_suite(
        scenarios,
        policies,
        seed=args.seed,
        quick=args.quick,
        workers=args.jobs,
        progress=None if args.no_progress else _progress,
    )
    for r in results:
        r["description"] = SCENARIOS[r["scenario"]].description
    wall = time.perf_counter() - start
    print(format_table(results))
    print()
    print(LEGEND)
    meta = {
        "seed": args.seed,
        "quick": args.quick,
        "scenarios": scenarios,
        "policies": policies,
        "wall_seconds": wall,
    }
    workers = args.jobs if args.jobs is not None else os.cpu_count() or 1
    written = write_report(
        results, args.out, meta=meta, plots=not args.no_plots, workers=max(1, workers)
    )
    plots = sum(1 for key in written if key not in ("json", "report"))
    print(
        f"\n{len(results)} runs in {wall:.1f} s; wrote {args.out / 'results.json'}, "
        f"{args.out / 'report.md'} and {plots} plots"
    )
    if args.grid:
        return _grid(args, scenarios, policies)
    return 0


def _grid(args: argparse.Namespace, scenarios: list[str], policies: list[str]) -> int:
    start = time.perf_counter()
    configs = len(grid_configs())
    print(f"\ngrid search: {configs} static configurations x {len(scenarios)} scenarios")
    doc = run_grid(
        scenarios,
        policies,
        seed=args.seed,
        quick=args.quick,
        workers=args.jobs,
        progress=None if args.no_progress else _progress,
    )
    doc["wall_seconds"] = time.perf_counter() - start
    print(format_grid(doc, policies))
    (args.out / "grid.json").write_text(json.dumps(doc, indent=1, default=str))
    print(f"\ngrid in {doc['wall_seconds']:.1f} s; wrote {args.out / 'grid.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sage-resilience", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run the fault scenarios in the simulator")
    bench.add_argument(
        "--scenario", nargs="+", metavar="NAME", help="default all: " + ", ".join(SCENARIOS)
    )
    bench.add_argument(
        "--policy",
        nargs="+",
        metavar="NAME",
        help=f"default {', '.join(DEFAULT_POLICIES)} and adaptive; known: {', '.join(POLICIES)}",
    )
    bench.add_argument("--seed", type=int, default=1)
    bench.add_argument("--out", type=Path, default=Path("bench-results"))
    bench.add_argument("--quick", action="store_true", help="shorter, lighter scenarios (< 10 s)")
    bench.add_argument("--jobs", type=int, default=None, help="parallel processes (default: CPUs)")
    bench.add_argument("--no-plots", action="store_true")
    bench.add_argument(
        "--grid",
        action="store_true",
        help="also search a grid of static configurations and compare every policy's score "
        "with the best one per scenario (minutes)",
    )
    bench.add_argument("--no-progress", action="store_true")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
