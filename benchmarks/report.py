"""Turn simulation results into the terminal table, ``results.json``, PNG plots and a
``report.md`` that embeds them."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "format_table", "write_report"]

# (key in the summary, header, format)
COLUMNS: list[tuple[str, str, str]] = [
    ("goodput_ratio", "good/orc", "{:.3f}"),
    ("goodput_ratio_fresh", "good/min", "{:.3f}"),
    ("goodput_ratio_fault", "fault", "{:.3f}"),
    ("success_during", "ok-dur", "{:.3f}"),
    ("success_after", "ok-aft", "{:.3f}"),
    ("latency_p50", "p50 s", "{:.3f}"),
    ("latency_p99", "p99 s", "{:.3f}"),
    ("amplification_fault", "ampl", "{:.2f}"),
    ("time_to_detect", "detect", "{:.1f}"),
    ("time_to_recover", "recover", "{:.1f}"),
    ("first_success_after_fault", "1st ok", "{:.2f}"),
    ("false_trips", "false", "{:d}"),
    ("share_429", "429%", "{:.1%}"),
    ("share_429_settled", "429%>10s", "{:.1%}"),
]


def _fmt(value: Any, pattern: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_table(results: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """Scenario x policy with the headline figures (ratios are to the oracle)."""
    headers = ["scenario", "policy", "offered", "ok", *[h for _k, h, _f in COLUMNS]]
    rows = []
    for r in results:
        s = r["summary"]
        rows.append(
            [
                r["scenario"],
                r["policy"],
                str(s["offered"]),
                str(s["succeeded"]),
                *[_fmt(s.get(k), f) for k, _h, f in COLUMNS],
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(headers), "  ".join("-" * w for w in widths)]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            out.append("")
        previous = row[0]
        out.append(line(row))
    return "\n".join(out)


LEGEND = """\
Columns: offered requests; ok = successes; good/orc = goodput / oracle (what a perfect client
could have got, holding requests a fault delays within their deadline); good/min = goodput /
sum over bins of min(offered, capacity) (the bins' own arrivals only); fault = good/orc during
the fault window; ok-dur / ok-aft = share of the requests arriving during / after the fault
that succeeded; p50 / p99 latency of successes; ampl = attempts reaching the dependency per
request during the fault; detect = seconds from the fault's start to the first local rejection
or limit reduction; recover = seconds from the fault's end until goodput is back above 90 % of
min(offered, capacity); 1st ok = seconds from the fault's end to the first success; false =
breaker openings while the dependency was healthy; 429% = share of attempts answered 429
(429%>10s: from 10 s on, once a rate controller has had time to converge)."""


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or ``None`` without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415 - optional (the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def _plot(scenario: str, runs: list[dict[str, Any]], path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    ax_good, ax_lat, ax_state = axes
    first = runs[0]["series"]
    width = first["bin_width"]
    xs = [i * width for i in range(len(first["oracle"]))]
    ax_good.plot(xs, first["oracle"], color="black", lw=2, ls="--", label="oracle (perfect client)")
    if first.get("oracle_fresh"):
        ax_good.plot(
            xs,
            first["oracle_fresh"],
            color="black",
            lw=1,
            ls=":",
            label="min(offered, capacity)",
        )
    ax_good.plot(xs, first["offered"], color="grey", lw=1, alpha=0.6, label="offered")
    for run in runs:
        s = run["series"]
        ax_good.plot(xs, s["succeeded"], lw=1.2, label=run["policy"])
        p99 = [math.nan if v is None else v for v in s["latency_p99"]]
        ax_lat.plot(xs, p99, lw=1.0, label=f"{run['policy']} p99")
    ax_good.set_ylabel("successes / s")
    ax_good.set_title(f"{scenario}: goodput against the oracle")
    ax_good.legend(loc="upper right", fontsize=8)
    ax_lat.set_ylabel("latency of successes (s)")
    ax_lat.set_yscale("log")
    ax_lat.legend(loc="upper right", fontsize=8)
    for run in runs:
        samples = run["samples"]
        if not samples:
            continue
        keys = sorted({k for _t, values in samples for k in values if not k.endswith(".calls")})
        for key in keys:
            if key == "server.queue":
                continue
            ts = [t for t, v in samples if key in v]
            vs = [v[key] for _t, v in samples if key in v]
            if vs and max(vs) != min(vs):
                ax_state.step(ts, vs, where="post", lw=1.0, label=f"{run['policy']}: {key}")
    ax_state.set_ylabel("policy state\n(breaker 0/1/2 = closed/half/open; limits)")
    ax_state.set_xlabel("simulated time (s)")
    handles, _labels = ax_state.get_legend_handles_labels()
    if handles:
        ax_state.legend(loc="upper right", fontsize=7, ncol=2)
    # Fixed margins: tight_layout would cost a third of the plot's time (it lays the text out
    # twice), and these three panels never change shape.
    fig.subplots_adjust(left=0.09, right=0.98, top=0.965, bottom=0.06, hspace=0.12)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _plot_job(job: tuple[str, list[dict[str, Any]], Path]) -> bool:
    return _plot(*job)


def _plot_all(jobs: list[tuple[str, list[dict[str, Any]], Path]], workers: int) -> list[bool]:
    """Draw the plots, in ``workers`` processes when there are several (a plot takes about a
    quarter of a second: as long as a quick simulation run)."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [_plot_job(job) for job in jobs]
    if _pyplot() is None:  # imported once here, so that forked workers share it (1 s)
        return [False] * len(jobs)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_plot_job, jobs))


def write_report(
    results: Sequence[dict[str, Any]],
    out: Path,
    *,
    meta: dict[str, Any],
    plots: bool = True,
    workers: int = 1,
) -> dict[str, Path]:
    """Write ``results.json``, one PNG per scenario and ``report.md`` into ``out`` (the plots
    in ``workers`` processes)."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    doc = _finite({"meta": meta, "runs": list(results)})
    # Strict JSON: NaN and infinities (which json.dumps would write as bare NaN/Infinity, and
    # never passes to ``default``) are null.
    (out / "results.json").write_text(json.dumps(doc, indent=1, allow_nan=False))
    written["json"] = out / "results.json"
    scenarios: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        scenarios.setdefault(r["scenario"], []).append(r)
    images: dict[str, str] = {}
    if plots:
        jobs = [(name, runs, out / f"{name}.png") for name, runs in scenarios.items()]
        for (name, _runs, png), drawn in zip(jobs, _plot_all(jobs, workers), strict=True):
            if drawn:
                images[name] = png.name
                written[name] = png
    lines = [
        "# sage-resilience bench",
        "",
        f"Seed {meta.get('seed')}, {'quick' if meta.get('quick') else 'full'} suite, "
        f"{len(results)} runs in {meta.get('wall_seconds', 0):.1f} s of wall time.",
        "",
        format_table(results, markdown=True),
        "",
        LEGEND,
        "",
    ]
    for name, runs in scenarios.items():
        description = runs[0].get("description", "")
        lines += [f"## {name}", "", description, ""]
        if name in images:
            lines += [f"![{name}]({images[name]})", ""]
    (out / "report.md").write_text("\n".join(lines))
    written["report"] = out / "report.md"
    return written


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (tuples become lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
