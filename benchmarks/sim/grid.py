"""The grid search over static configurations, and the score policies are compared by.

**The score** of a run is its goodput against the oracle, discounted when successes are slow:
``score = goodput_ratio * min(1, 2 * healthy_p99 / p99)``, with ``healthy_p99`` the healthy
dependency's p99 service time and ``p99`` the run's p99 latency of successes. A policy that
serves everything a perfect client could, with a p99 no worse than twice the healthy one, scores
1; serving 90 % of it scores 0.9; serving it all but with a p99 four times the healthy one scores
0.5. So a policy cannot buy goodput with unbounded queueing, nor latency with refusals.

**The grid** crosses the knobs of the static database-layer configuration
(:class:`~.policies.StaticParams`): attempts 1/2/3, the breaker's failure-rate threshold
off/30 %/50 %, the per-attempt timeout off/1.5x/3x the healthy p99. The best configuration is
picked per scenario (with hindsight: no single static configuration is best everywhere).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from .policies import StaticParams
from .runner import run_suite
from .scenarios import get_scenario

__all__ = ["GRID", "grid_configs", "run_grid", "score"]

GRID: dict[str, Sequence[Any]] = {
    "attempts": (1, 2, 3),
    "breaker_rate": (None, 0.3, 0.5),
    "timeout_factor": (None, 1.5, 3.0),
}


def grid_configs() -> list[StaticParams]:
    """Every static configuration of :data:`GRID`."""
    keys = list(GRID)
    return [
        StaticParams(**dict(zip(keys, values, strict=True)))
        for values in itertools.product(*(GRID[k] for k in keys))
    ]


def score(summary: dict[str, Any], healthy_p99: float) -> float:
    """The documented score of one run (see the module docstring)."""
    goodput = float(summary.get("goodput_ratio") or 0.0)
    p99 = summary.get("latency_p99")
    if p99 is None or float(p99) <= 2.0 * healthy_p99:
        return goodput
    return goodput * (2.0 * healthy_p99 / float(p99))


def run_grid(
    scenarios: Sequence[str],
    policies: Sequence[str],
    *,
    seed: int = 1,
    quick: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Score every grid configuration and every named policy on every scenario."""
    configs = [c.name() for c in grid_configs()]
    names = list(dict.fromkeys([*configs, *policies]))
    results = run_suite(
        scenarios, names, seed=seed, quick=quick, workers=workers, progress=progress
    )
    table: dict[str, Any] = {}
    for scenario in scenarios:
        healthy = get_scenario(scenario, quick=quick).dependency.service_p99
        scores = {
            r["policy"]: score(r["summary"], healthy) for r in results if r["scenario"] == scenario
        }
        best = max(configs, key=lambda c: scores[c])
        table[scenario] = {
            "best_static": best,
            "best_static_score": scores[best],
            "scores": {p: scores[p] for p in policies},
        }
    return {"grid": GRID, "configs": len(configs), "scenarios": table}


def format_grid(doc: dict[str, Any], policies: Sequence[str]) -> str:
    """The grid table: per scenario, the best static configuration and each policy's score."""
    head = f"{'scenario':<18} {'best static (grid)':<44} {'score':>6}"
    head += "".join(f" {p:>9}" for p in policies)
    lines = [head, "-" * len(head)]
    for scenario, row in doc["scenarios"].items():
        line = f"{scenario:<18} {row['best_static']:<44} {row['best_static_score']:>6.3f}"
        for p in policies:
            s = row["scores"][p]
            mark = "+" if s >= row["best_static_score"] - 1e-9 else " "
            line += f" {s:>8.3f}{mark}"
        lines.append(line)
    lines.append("")
    lines.append(
        "score = goodput/oracle x min(1, 2 x healthy p99 / p99); '+': at least the best static"
    )
    return "\n".join(lines)
