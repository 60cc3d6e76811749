"""The ``sage-resilience`` command.

``sage-resilience bench`` runs the fault scenarios under each policy in the virtual-time
simulator and writes the table, ``results.json``, plots and ``report.md``.
``sage-resilience demo`` runs a Sage-shaped workload against the real PostgreSQL and the
embedding stub under a fault schedule, through the adaptive wrappers and through the seed's
decorators, and prints what it measured (needs the ``sage`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
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


def _demo(args: argparse.Namespace) -> int:
    try:
        from . import demo  # noqa: PLC0415 - needs the sage extra; bench does not
    except ImportError as exc:  # asyncpg or httpx missing
        print(
            f"sage-resilience demo needs the 'sage' extra (pip install -e '.[sage]'): {exc}",
            file=sys.stderr,
        )
        return 2
    try:
        config = demo.demo_config(
            quick=args.quick,
            dsn=args.dsn,
            duration=args.duration,
            rate=args.rate,
            save_share=args.save_share,
            deadline=args.deadline,
            seed=args.seed,
            compare_seed=not args.no_seed,
        )
    except ValueError as exc:
        print(f"sage-resilience demo: error: {exc}", file=sys.stderr)
        return 2

    def progress(message: str) -> None:
        if not args.no_progress:
            print(f"[demo] {message}", file=sys.stderr, flush=True)

    try:
        doc = asyncio.run(demo.run_demo(config, progress=progress))
    except demo.DemoError as exc:
        print(f"sage-resilience demo: error: {exc}", file=sys.stderr)
        return 1
    print(demo.format_report(doc))
    if args.json is not None:
        demo.write_json(doc, args.json)
        print(f"wrote {args.json}")
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

    demo = sub.add_parser(
        "demo",
        help="a Sage-shaped workload on the real PostgreSQL and embedding stub under faults",
        description="Run saves and searches at a steady rate against a temporary database on "
        "the PostgreSQL server (through a fault proxy) and an embedding stub, inject a fault "
        "schedule, and print the success ratio, auto-recovery rate, time to recover, data "
        "integrity and per-call overhead, for the adaptive wrappers and for the seed's "
        "decorators.",
    )
    demo.add_argument(
        "--dsn",
        default=None,
        help="admin DSN of the PostgreSQL server (default $SAGE_RESILIENCE_PG_DSN or "
        "postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    demo.add_argument(
        "--duration", type=float, default=None, help="seconds per configuration (default 30)"
    )
    demo.add_argument(
        "--rate", type=float, default=None, help="operations started per second (default 40)"
    )
    demo.add_argument(
        "--save-share",
        type=float,
        default=None,
        help="share of saves among operations, the rest searches (default 0.7)",
    )
    demo.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="the client's deadline per operation, seconds (default 5)",
    )
    demo.add_argument("--seed", type=int, default=None, help="seed of the workload (default 1)")
    demo.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a run of about 10 s: 4 s per configuration, a 1.5 s deadline, fewer overhead calls",
    )
    demo.add_argument("--no-seed", action="store_true", help="skip the seed configuration's run")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
