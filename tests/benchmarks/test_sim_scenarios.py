"""The scenario catalogue, its quick variants, and the policies' registration."""

from __future__ import annotations

import dataclasses

import pytest
from sage_resilience.benchmarks.sim import (
    POLICIES,
    SCENARIOS,
    DependencyConfig,
    Load,
    Phase,
    Scenario,
    get_scenario,
    run_one,
)

# The scenarios issue 4 asks for, at least.
REQUIRED = {
    "blips",
    "outage",
    "blackhole",
    "brownout",
    "latency-spike",
    "throttled",
    "metastable",
    "noisy",
    "flapping",
    "priority-overload",
}


def test_the_issue_scenarios_and_policies_are_registered() -> None:
    """Every scenario of the issue exists, with its fault inside the run; the compared
    policies are registered by name with a description."""
    assert set(SCENARIOS) >= REQUIRED
    for scenario in SCENARIOS.values():
        assert scenario.description
        if scenario.fault_window is not None:
            start, end = scenario.fault_window
            assert 0 <= start < end <= scenario.duration, scenario.name
    for name in ("none", "seed", "seed-retries", "static"):
        assert POLICIES[name].description


def test_quick_scales_times_load_workers_and_queue_together() -> None:
    """``scaled(1/3, 0.5)`` divides every time by 3 and halves the load, the workers, the queue
    and the provider's limit, so a full queue means the same wait as in the full scenario."""
    full = dataclasses.replace(
        SCENARIOS["throttled"],
        duration=90.0,
        dependency=DependencyConfig(
            workers=10,
            queue_limit=100,
            baseline=Phase(name="baseline", throttle_rate=50.0),
            faults=(Phase(start=30, end=60, throttle_rate=20.0),),
        ),
        load=Load(rate=80.0, schedule=((30.0, 60.0, 120.0),)),
        fault_window=(30.0, 60.0),
    )
    quick = full.scaled(1 / 3, 0.5)
    assert quick.duration == pytest.approx(30.0)
    assert quick.fault_window == pytest.approx((10.0, 20.0))
    dep = quick.dependency
    assert (dep.workers, dep.queue_limit) == (5, 50)
    assert dep.baseline.throttle_rate == 25.0
    assert (dep.faults[0].start, dep.faults[0].end) == pytest.approx((10.0, 20.0))
    assert dep.faults[0].throttle_rate == 10.0
    assert quick.load.rate == 40.0
    assert len(quick.load.schedule) == 1
    assert quick.load.schedule[0] == pytest.approx((10.0, 20.0, 60.0))
    # The same queueing delay when the queue is full, and the same load per worker.
    assert dep.queue_limit / dep.capacity == pytest.approx(
        full.dependency.queue_limit / full.dependency.capacity
    )
    assert get_scenario("outage", quick=True) == SCENARIOS["outage"].scaled(1 / 3, 0.5)


def test_unknown_names_are_refused() -> None:
    """An unknown scenario or policy is a ``ValueError`` that lists the known ones."""
    with pytest.raises(ValueError, match=r"unknown scenario 'nope'.*outage"):
        get_scenario("nope")
    with pytest.raises(ValueError, match=r"unknown policy 'nope'.*static"):
        run_one("outage", "nope", quick=True)


def test_seed_policy_retries_even_permanent_errors() -> None:
    """The seed retried every exception, 4xx-like ones included: in a phase of permanent errors
    ``seed-retries`` makes 27 attempts per request where ``static`` (classifying them) makes
    one."""
    scenario = Scenario(
        "permanent",
        "every answer a 400 from t=5 to t=35",
        duration=40.0,
        dependency=DependencyConfig(
            faults=(Phase(start=5, end=35, permanent_prob=1.0, name="400s"),)
        ),
        load=Load(rate=5.0, deadline=60.0),
        fault_window=(5.0, 35.0),
    )
    seed = run_one(scenario, "seed-retries").summary
    static = run_one(scenario, "static").summary
    assert seed["max_attempts_per_request"] == 27
    assert static["max_attempts_per_request"] == 1
    assert static["amplification_fault"] == 1.0
