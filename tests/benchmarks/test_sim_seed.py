"""What is known from measuring the seed's code, shown again on the simulator (issue 4's
checks): nested retries multiply attempts by 3 x 3 x 3 in an outage, the breakers' 60 s recovery
timeout delays the first success after the dependency returns, and in the metastable scenario the
seed stays down long after the dip while no protection at all recovers."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from sage_resilience.benchmarks.sim import (
    SCENARIOS,
    DependencyConfig,
    Load,
    Phase,
    Scenario,
    run_one,
)

# A 40 s refusing outage under light load (10 rps) with a patient client (60 s deadline), so
# every request that starts early in the outage can make all its nested attempts inside it.
LONG_OUTAGE = dataclasses.replace(
    SCENARIOS["outage"],
    name="outage-patient",
    duration=60.0,
    dependency=DependencyConfig(faults=(Phase(start=5, end=45, outage="refuse", name="outage"),)),
    load=Load(rate=10.0, deadline=60.0),
    fault_window=(5.0, 45.0),
)

LAYERS = ("manager", "storage", "database")


def _openings(transitions: list[tuple[float, str, str, str]]) -> dict[str, float]:
    """The first time each breaker opened."""
    opened: dict[str, float] = {}
    for t, policy, _old, new in transitions:
        if new == "open":
            opened.setdefault(policy, t)
    return opened


def test_nested_retries_make_27_attempts_per_request_in_an_outage() -> None:
    """``seed-retries`` (the seed's three nested retry layers, its breakers not holding, as
    in the seed's measurement): a request in a full outage makes 3 x 3 x 3 = 27 attempts, and
    requests starting in the outage average well above 10."""
    summary = run_one(LONG_OUTAGE, "seed-retries").summary
    assert summary["max_attempts_per_request"] == 27
    # No breaker: the mean over every request that started during the outage.
    assert summary["amplification_until_open"] > 15
    assert summary["amplification_fault"] > 15
    assert summary["rejected"] == 0


def test_seed_breakers_open_at_every_layer_and_stop_the_multiplication() -> None:
    """``seed``: its breakers (5 failures in 60 s, every exception counted) open at all three
    layers early in the outage, so no request gets near 27 attempts."""
    result = run_one(LONG_OUTAGE, "seed")
    opened = _openings(result.series["transitions"])
    assert set(opened) == {f"{layer}.breaker" for layer in LAYERS}
    start = LONG_OUTAGE.fault_window[0] if LONG_OUTAGE.fault_window else 0.0
    assert all(start <= t < start + 5.0 for t in opened.values()), opened
    # Inner breakers trip first: the outer layers count the inner ones' refusals.
    assert opened["database.breaker"] < opened["storage.breaker"] < opened["manager.breaker"]
    assert result.summary["max_attempts_per_request"] <= 3
    # From then on to the end of the run (the 60 s recovery timeout), requests are refused.
    assert result.summary["rejected"] > 0.75 * result.summary["offered"]


def test_seed_first_success_after_the_outage_waits_for_the_recovery_timeout() -> None:
    """``seed`` in the 30 s outage: the first success after the dependency returns comes only
    when the breakers' 60 s recovery timeout has run out (from when the database breaker
    opened), not when the database is back. Full-size timing (the quick run is shorter than the
    60 s timeout), at a tenth of the load to stay fast."""
    scenario: Scenario = dataclasses.replace(SCENARIOS["outage"], load=Load(rate=10.0))
    start, end = scenario.fault_window or (0.0, 0.0)
    result = run_one(scenario, "seed")
    opened = _openings(result.series["transitions"])
    first_ok = result.summary["first_success_after_fault"]
    assert first_ok is not None
    db_open = opened["database.breaker"]
    assert start <= db_open < start + 2.0
    # 60 - (fault length - time the breaker took to open): about 30 s after the return.
    assert first_ok >= db_open + 60.0 - end
    assert first_ok >= 60.0 - (end - start)
    # ...and as soon as the last layer's timeout is over (the next arrival, give or take).
    assert first_ok <= max(opened.values()) + 60.0 - end + 1.0
    assert result.summary["time_to_recover"] is not None


@pytest.fixture(scope="module")
def metastable() -> dict[str, dict[str, Any]]:
    return {p: run_one("metastable", p, quick=True).summary for p in ("none", "seed")}


def test_metastable_seed_stays_down_long_after_the_dip(
    metastable: dict[str, dict[str, Any]],
) -> None:
    """Quick metastable scenario, ``seed``: after the capacity dip ends fewer than 10 % of the
    requests succeed, to the end of the run; it never recovers. (In this model its breakers
    are what hold it down: open 60 s, the outer layers counting the inner ones' refusals.)"""
    seed = metastable["seed"]
    assert seed["success_before"] > 0.95
    assert seed["success_after"] < 0.10
    assert seed["time_to_recover"] is None


def test_metastable_none_drains_its_backlog_and_recovers(
    metastable: dict[str, dict[str, Any]],
) -> None:
    """Quick metastable scenario, ``none``: at least 90 % of the requests after the dip succeed
    and goodput is back at 90 % of the oracle within 2 s of the dip's end."""
    none = metastable["none"]
    assert none["success_after"] >= 0.90
    recover = none["time_to_recover"]
    assert recover is not None
    assert 0.0 <= recover <= 2.0
