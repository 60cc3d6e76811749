"""``sage-resilience bench``: the quick suite end to end (table, results.json, one PNG per
scenario, report.md), subsets, and clear refusals of unknown names."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from sage_resilience.benchmarks import cli
from sage_resilience.benchmarks.report import format_table, write_report
from sage_resilience.benchmarks.sim import SCENARIOS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_quick_suite_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bench --quick`` runs every scenario under the default policies, prints the scenario x
    policy table, and writes results.json, one PNG per scenario and report.md."""
    out = tmp_path / "bench"
    start = time.perf_counter()
    status = cli.main(["bench", "--quick", "--out", str(out), "--jobs", "2"])
    wall = time.perf_counter() - start
    captured = capsys.readouterr()
    assert status == 0
    # The target for --quick is 10 s, measured by the command itself (it prints its
    # wall time; ~5 s on an idle machine). A test on a shared machine only guards against a
    # gross regression: three times the target.
    assert wall < 30.0, f"quick suite took {wall:.1f} s"

    policies = [p for p in ("none", "seed", "static", "adaptive") if p in cli.POLICIES]
    rows = [line.split() for line in captured.out.splitlines()]
    assert rows[0][:5] == ["scenario", "policy", "offered", "ok", "good/orc"]
    for scenario in SCENARIOS:
        for policy in policies:
            assert any(row[:2] == [scenario, policy] for row in rows), (scenario, policy)
    assert f"{len(SCENARIOS) * len(policies)}/{len(SCENARIOS) * len(policies)}" in captured.err

    doc = _strict_json((out / "results.json").read_text())
    assert doc["meta"]["quick"] is True
    runs = doc["runs"]
    assert {(r["scenario"], r["policy"]) for r in runs} == {
        (s, p) for s in SCENARIOS for p in policies
    }
    for r in runs:
        assert r["summary"]["offered"] > 0
        assert len(r["series"]["succeeded"]) == len(r["series"]["oracle"]) > 10

    report = (out / "report.md").read_text()
    for scenario in SCENARIOS:
        png = out / f"{scenario}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"![{scenario}]({scenario}.png)" in report
        assert f"## {scenario}" in report
    assert "| scenario | policy |" in report


def test_subset_of_scenarios_and_policies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--scenario outage --policy none seed`` runs just those two, plots just that scenario."""
    out = tmp_path / "subset"
    argv = ["bench", "--quick", "--scenario", "outage", "--policy", "none", "seed"]
    status = cli.main([*argv, "--out", str(out), "--jobs", "1", "--seed", "3", "--no-progress"])
    assert status == 0
    doc = _strict_json((out / "results.json").read_text())
    assert [(r["scenario"], r["policy"], r["seed"]) for r in doc["runs"]] == [
        ("outage", "none", 3),
        ("outage", "seed", 3),
    ]
    assert sorted(p.name for p in out.iterdir()) == ["outage.png", "report.md", "results.json"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenario", "outage", "earthquake"], "unknown scenario 'earthquake'"),
        (["--policy", "none", "magic"], "unknown policy 'magic'"),
    ],
)
def test_unknown_names_exit_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """An unknown scenario or policy exits with status 2, names it and lists the known ones,
    and writes nothing."""
    out = tmp_path / "never"
    assert cli.main(["bench", "--quick", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "choose from" in err
    assert "outage" in err or "static" in err
    assert not out.exists()


def test_report_writes_strict_json_for_non_finite_values(tmp_path: Path) -> None:
    """NaN and infinite figures become null in results.json (strict JSON), and show as ``-``
    in the table."""
    run = {
        "scenario": "s",
        "policy": "p",
        "summary": {"offered": 1, "succeeded": 1, "goodput_ratio": math.nan, "latency_p99": 0.5},
        "series": {"x": [1.0, math.inf]},
        "samples": [(0.0, {"limit": -math.inf})],
    }
    write_report([run], tmp_path, meta={"seed": 1}, plots=False)
    doc = _strict_json((tmp_path / "results.json").read_text())
    saved = doc["runs"][0]
    assert saved["summary"]["goodput_ratio"] is None
    assert saved["series"]["x"] == [1.0, None]
    assert saved["samples"] == [[0.0, {"limit": None}]]
    table = format_table([run]).splitlines()
    assert table[2].split()[4] == "-"
