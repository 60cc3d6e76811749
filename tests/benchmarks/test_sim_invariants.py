"""The invariants of the issue, checked on every quick scenario under every registered policy:
goodput never above the oracle, every request counted exactly once, the same seed gives the
same results (and another seed different ones), and every policy faces the same arrivals."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from sage_resilience.benchmarks.sim import POLICIES, SCENARIOS, run_one, run_suite

Runs = dict[tuple[str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def quick_runs() -> Runs:
    """Every quick scenario under every registered policy, seed 1 (two processes)."""
    scenarios, policies = list(SCENARIOS), sorted(POLICIES)
    results = run_suite(scenarios, policies, seed=1, quick=True, workers=2)
    return {(r["scenario"], r["policy"]): r for r in results}


def test_the_suite_covers_every_scenario_and_policy(quick_runs: Runs) -> None:
    """The fixture holds one run per scenario x policy, each with traffic."""
    assert set(quick_runs) == set(itertools.product(SCENARIOS, POLICIES))
    assert {"none", "seed", "seed-retries", "static"} <= set(POLICIES)
    for run in quick_runs.values():
        assert run["summary"]["offered"] > 300


def test_cumulative_goodput_never_exceeds_the_cumulative_oracle(quick_runs: Runs) -> None:
    """At every bin of every run, the successes so far are at most the oracle's so far."""
    for (scenario, policy), run in quick_runs.items():
        series = run["series"]
        good = list(itertools.accumulate(series["succeeded"]))
        oracle = list(itertools.accumulate(series["oracle"]))
        assert len(good) == len(oracle)
        for b, (g, o) in enumerate(zip(good, oracle, strict=True)):
            # The oracle is rounded to 3 decimals per bin in the series.
            assert g <= o + 1e-3 * (b + 1), (scenario, policy, b, g, o)
        assert run["summary"]["goodput_ratio"] <= 1.0 + 1e-9


def test_every_request_is_exactly_one_outcome(quick_runs: Runs) -> None:
    """offered == succeeded + failed + rejected, in total, in the series and per priority."""
    for key, run in quick_runs.items():
        s, series = run["summary"], run["series"]
        assert s["offered"] == s["succeeded"] + s["failed"] + s["rejected"], key
        assert sum(series["offered"]) == s["offered"], key
        assert sum(series["succeeded"]) == s["succeeded"], key
        assert sum(series["failed"]) == s["failed"], key
        assert sum(series["rejected"]) == s["rejected"], key
        by_priority = s["by_priority"]
        assert sum(c["offered"] for c in by_priority.values()) == s["offered"], key
        for priority, c in by_priority.items():
            assert c["offered"] == c["succeeded"] + c["failed"] + c["rejected"], (key, priority)


def test_success_ratios_are_ratios(quick_runs: Runs) -> None:
    """Success ratios before, during and after the fault and per priority lie in [0, 1]."""
    for key, run in quick_runs.items():
        s = run["summary"]
        ratios = [s[k] for k in ("success_before", "success_during", "success_after")]
        ratios += [c["success_ratio"] for c in s["by_priority"].values()]
        for ratio in ratios:
            assert ratio is None or 0.0 <= ratio <= 1.0, (key, ratio)


def test_every_policy_faces_the_same_arrivals(quick_runs: Runs) -> None:
    """For one scenario and seed, the offered series and the priority mix are identical
    across policies."""
    for scenario in SCENARIOS:
        runs = [quick_runs[scenario, p] for p in sorted(POLICIES)]
        offered = {tuple(r["series"]["offered"]) for r in runs}
        assert len(offered) == 1, scenario
        mixes = {
            tuple((p, c["offered"]) for p, c in sorted(r["summary"]["by_priority"].items()))
            for r in runs
        }
        assert len(mixes) == 1, scenario


def _canonical(result: dict[str, Any]) -> str:
    return json.dumps(result, sort_keys=True)


@pytest.mark.parametrize(("scenario", "policy"), [("metastable", "seed"), ("blips", "static")])
def test_same_seed_gives_identical_results(scenario: str, policy: str) -> None:
    """Two runs with one seed give the same JSON, figure for figure; another seed does not."""
    first = run_one(scenario, policy, seed=11, quick=True).as_dict()
    again = run_one(scenario, policy, seed=11, quick=True).as_dict()
    other = run_one(scenario, policy, seed=12, quick=True).as_dict()
    assert _canonical(first) == _canonical(again)
    assert first["series"]["offered"] != other["series"]["offered"]
    assert _canonical(first["summary"]) != _canonical(other["summary"])


def test_results_do_not_depend_on_the_process(quick_runs: Runs) -> None:
    """A run in this process equals the same run made in the suite's worker process."""
    local = run_one("outage", "static", seed=1, quick=True).as_dict()
    pooled = quick_runs["outage", "static"]
    assert _canonical(json.loads(json.dumps(local))) == _canonical(pooled)
