"""The figures of a run: the oracle on hand-made series, time to recover, false trips,
amplification, the 429 share, success per priority and time to detect."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from sage_resilience.benchmarks.sim import (
    SCENARIOS,
    DependencyConfig,
    Load,
    Phase,
    Recorder,
    capacity_per_bin,
    get_scenario,
    percentile,
    run_one,
)


def _recorder(offered: list[int], **kwargs: Any) -> Recorder:
    """A recorder over ``len(offered) - 1`` seconds with these arrivals per bin."""
    rec = Recorder(duration=float(len(offered) - 1), **kwargs)
    assert len(rec.offered) == len(offered)
    rec.offered[:] = offered
    return rec


def test_oracle_serves_the_backlog_oldest_first_within_the_deadline() -> None:
    """10 requests at once, capacity 2 per bin, 1 s deadline: the oracle serves 2 per bin while
    their clients still wait, then nothing (the rest gave up)."""
    rec = _recorder([10, 0, 0, 0, 0, 0])
    assert rec.oracle([2.0] * 6, deadline=1.0) == [2.0, 2.0, 2.0, 0.0, 0.0, 0.0]
    # A longer deadline keeps them waiting longer.
    assert rec.oracle([2.0] * 6, deadline=3.0) == [2.0, 2.0, 2.0, 2.0, 2.0, 0.0]
    # The min(offered, capacity) per bin when nothing is held up.
    assert rec.fresh_oracle([2.0] * 6) == [2.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_oracle_follows_capacity_and_offered_per_bin() -> None:
    """Per bin the oracle is min(work available, capacity); an outage bin (capacity 0) holds
    work back for the next bins."""
    rec = _recorder([5, 5, 5, 5, 5])
    assert rec.oracle([10.0, 3.0, 0.0, 10.0, 10.0], deadline=5.0) == [5.0, 3.0, 0.0, 10.0, 7.0]
    assert rec.fresh_oracle([10.0, 3.0, 0.0, 10.0, 10.0]) == [5.0, 3.0, 0.0, 5.0, 5.0]


def test_oracle_is_never_below_what_the_run_completed() -> None:
    """A bin where the run beat the nominal capacity (lucky service times) raises the oracle's
    capacity for that bin to what was actually done."""
    rec = _recorder([10, 0, 0, 0])
    rec.succeeded[:] = [2, 5, 0, 0]
    assert rec.oracle([2.0] * 4, deadline=5.0) == [2.0, 5.0, 2.0, 1.0]


def test_capacity_per_bin_follows_the_fault_schedule() -> None:
    """Nominal capacity is workers / mean service, scaled by the phase: halved workers, zero in
    an outage, times (1 - error rate), capped by the provider's limit."""
    dep = DependencyConfig(
        faults=(
            Phase(start=1, end=2, capacity_mult=0.5),
            Phase(start=2, end=3, outage="refuse"),
            Phase(start=3, end=4, error_prob=0.25),
            Phase(start=4, end=5, throttle_rate=20.0),
        )
    )
    scenario = dataclasses.replace(SCENARIOS["blips"], dependency=dep)
    cap = capacity_per_bin(scenario, 6)
    healthy = dep.capacity
    assert cap == pytest.approx([healthy, healthy / 2, 0.0, 0.75 * healthy, 20.0, healthy])


def test_time_to_recover() -> None:
    """Seconds from the fault's end to the first 3-bin stretch at 90 % of the oracle; ``None``
    when goodput never gets back."""
    rec = _recorder([10] * 11, fault_start=2.0, fault_end=4.0)
    rec.succeeded[:] = [10, 10, 0, 0, 0, 0, 5, 10, 10, 10, 10]
    fresh = [10.0] * 11
    assert rec.summary(fresh, fresh)["time_to_recover"] == 3.0
    rec.succeeded[:] = [10, 10, 0, 0, 9, 9, 9, 9, 9, 9, 9]
    assert rec.summary(fresh, fresh)["time_to_recover"] == 0.0
    rec.succeeded[:] = [10, 10, 0, 0, 8, 8, 8, 8, 8, 8, 8]
    assert rec.summary(fresh, fresh)["time_to_recover"] is None


def test_false_trips_count_openings_outside_the_fault() -> None:
    """An opening before the fault or after it plus the settling time is a false trip; one
    during the fault or while settling is not; other transitions never are."""
    rec = Recorder(duration=60.0, fault_start=10.0, fault_end=20.0, settle=5.0)
    for t, new in [(5.0, "open"), (15.0, "open"), (16.0, "half_open"), (24.0, "open")]:
        rec.transition(t, "b", "closed", new)
    rec.transition(26.0, "b", "closed", "open")
    rec.transition(30.0, "b", "open", "closed")
    oracle = [0.0] * len(rec.offered)
    assert rec.summary(oracle)["false_trips"] == 2
    no_fault = Recorder(duration=10.0)
    no_fault.transition(3.0, "b", "closed", "open")
    assert no_fault.summary([0.0] * 11)["false_trips"] == 1


def test_noisy_dependency_trips_the_seed_not_the_static_breaker() -> None:
    """Noisy scenario (10 % errors, no fault): the static failure-rate breaker never opens, the
    seed's count-in-60-s breakers do (false trips)."""
    static = run_one("noisy", "static", quick=True).summary
    seed = run_one("noisy", "seed", quick=True).summary
    assert static["false_trips"] == 0
    assert seed["false_trips"] > 0
    assert seed["time_to_detect"] is None  # no fault: nothing to detect


def test_amplification_counts_attempts_per_request() -> None:
    """Amplification is attempts reaching the dependency per request: exactly 1 without
    retries, more with them during an outage."""
    rec = _recorder([2, 0, 0])
    rec.offered_total = 2
    for t in (0.1, 0.2, 0.3, 1.5, 1.6):
        rec.attempt(t, "accepted")
    assert rec.summary([0.0, 0.0, 0.0])["amplification"] == 2.5
    none = run_one("outage", "none", quick=True).summary
    retried = run_one("outage", "seed-retries", quick=True).summary
    assert none["amplification"] == 1.0
    assert none["amplification_fault"] == 1.0
    assert none["max_attempts_per_request"] == 1
    assert retried["amplification_fault"] > 5.0
    assert retried["amplification"] > none["amplification"]


def test_share_of_429s_in_the_throttled_scenario() -> None:
    """Offered 1.5 times the provider's limit without retries, about a third of the attempts are
    answered 429; the share is throttled answers over attempts."""
    result = run_one("throttled", "none", quick=True)
    s, series = result.summary, result.series
    assert s["share_429"] == pytest.approx(1 / 3, abs=0.05)
    assert s["share_429"] == sum(series["answers"]["throttled"]) / sum(series["attempts"])
    ok = run_one("blips", "none", quick=True).summary
    assert ok["share_429"] == 0.0


def test_settled_share_of_429s_counts_from_ten_seconds_on() -> None:
    """``share_429_settled`` is the same ratio over the bins from 10 s on: with a rate
    controller the first second's 429s (before it engaged) are not in it."""
    result = run_one("throttled", "adaptive")
    s, series = result.summary, result.series
    settled = sum(series["answers"]["throttled"][10:]) / sum(series["attempts"][10:])
    assert s["share_429_settled"] == pytest.approx(settled)
    assert s["share_429_settled"] < s["share_429"]


def test_success_ratio_per_priority() -> None:
    """Priority overload under ``none``: every level of the mix is counted, in its proportion,
    and its success ratio is its successes over its requests (no policy favours any level)."""
    s = run_one("priority-overload", "none", quick=True).summary
    by_priority = s["by_priority"]
    mix = dict(get_scenario("priority-overload", quick=True).load.mix)
    assert set(by_priority) == set(mix)
    for priority, c in by_priority.items():
        assert c["offered"] / s["offered"] == pytest.approx(mix[priority], abs=0.03)
        assert c["success_ratio"] == c["succeeded"] / c["offered"]
        assert c["success_ratio"] == pytest.approx(s["success_ratio"], abs=0.08)


def test_time_to_detect() -> None:
    """Time to detect is from the fault's start to the first local rejection or breaker
    opening (or limit reduction); events before the fault do not count, and a policy that
    never reacts has none."""
    rec = Recorder(duration=30.0, fault_start=10.0, fault_end=20.0)
    rec.local_rejection(5.0)  # before the fault: not a detection
    rec.setting(11.0, "limiter", "rate", 10.0, 20.0)  # a raise: not a detection
    rec.transition(12.5, "b", "closed", "open")
    rec.local_rejection(13.0)
    assert rec.summary([0.0] * 31)["time_to_detect"] == 2.5
    rec2 = Recorder(duration=30.0, fault_start=10.0, fault_end=20.0)
    rec2.setting(10.75, "limiter", "rate", 20.0, 10.0)
    assert rec2.summary([0.0] * 31)["time_to_detect"] == 0.75

    result = run_one("outage", "static", quick=True)
    start = get_scenario("outage", quick=True).fault_window
    assert start is not None
    first_open = min(t for t, _p, _o, new in result.series["transitions"] if new == "open")
    assert result.summary["time_to_detect"] == pytest.approx(first_open - start[0])
    assert 0 < result.summary["time_to_detect"] < 5
    assert run_one("outage", "none", quick=True).summary["time_to_detect"] is None


def test_success_ratios_are_per_request_by_arrival() -> None:
    """Success before/during/after the fault is the share of the requests arriving in the window
    that succeeded, wherever they completed."""
    rec = Recorder(duration=4.0, fault_start=2.0, fault_end=3.0)
    rec.request_started(0.5, "NORMAL")
    rec.request_started(2.5, "NORMAL")
    rec.request_started(2.6, "NORMAL")
    rec.request_finished(0.5, 0.6, "NORMAL", "success")
    rec.request_finished(2.5, 3.5, "NORMAL", "success")  # arrived during, done after
    rec.request_finished(2.6, 2.7, "NORMAL", "failed")
    s = rec.summary([0.0] * 5)
    assert (s["success_before"], s["success_during"], s["success_after"]) == (1.0, 0.5, None)
    assert s["by_priority"]["NORMAL"] == {
        "offered": 3,
        "succeeded": 2,
        "failed": 1,
        "rejected": 0,
        "success_ratio": 2 / 3,
    }


def test_percentile_interpolates() -> None:
    """Percentiles interpolate linearly between order statistics; none of nothing."""
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.99) == pytest.approx(9.9)


def test_latency_of_successes_rises_in_a_latency_spike() -> None:
    """The p99 latency of successes during a x10 latency spike is far above the healthy p99."""
    scenario = dataclasses.replace(get_scenario("latency-spike", quick=True), load=Load(rate=20.0))
    s = run_one(scenario, "none").summary
    assert s["latency_p99_healthy"] < 0.3
    assert s["latency_p99_fault"] > 1.0
