"""Client-side adaptive throttling: the SRE formula, the per-request decision, invariants."""

from __future__ import annotations

import math
import random
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sage_resilience.adaptive.controller import Bounds
from sage_resilience.adaptive.throttle import AdaptiveThrottle, ThrottleSample, should_reject


def sample(requests: int, accepts: int, now: float = 0.0) -> ThrottleSample:
    return ThrottleSample(now=now, requests=requests, accepts=accepts)


def test_zero_while_accepts_keep_up() -> None:
    """requests <= k * accepts: no rejection (value stays 0, update None)."""
    throttle = AdaptiveThrottle()
    assert throttle.update(sample(100, 50)) is None
    assert throttle.value == 0.0


def test_sre_formula_on_a_hand_computed_case() -> None:
    """100 requests, 30 accepts, k 2: (100 - 60) / 101."""
    throttle = AdaptiveThrottle()
    assert throttle.update(sample(100, 30)) == pytest.approx(40 / 101)


def test_k_sets_the_aggressiveness() -> None:
    """k 1.5 rejects more for the same counts: (100 - 45) / 101."""
    throttle = AdaptiveThrottle(k=1.5)
    assert throttle.update(sample(100, 30)) == pytest.approx(55 / 101)


def test_capped_at_the_maximum_rejection() -> None:
    """Nothing accepted: 100/101, capped at 0.8; a repeat returns None."""
    throttle = AdaptiveThrottle()
    assert throttle.update(sample(100, 0)) == 0.8
    assert throttle.update(sample(200, 0)) is None


def test_falls_back_to_zero_on_recovery() -> None:
    """Once accepts catch up again the probability returns to 0."""
    throttle = AdaptiveThrottle()
    throttle.update(sample(100, 10))
    assert throttle.update(sample(100, 60)) == 0.0


def test_inputs_carry_the_counts() -> None:
    """inputs() names requests, accepts and k."""
    throttle = AdaptiveThrottle()
    assert throttle.inputs(sample(10, 4)) == {"requests": 10.0, "accepts": 4.0, "k": 2.0}


def test_should_reject_compares_a_draw_with_the_probability() -> None:
    """A draw under the probability rejects; at or over it admits."""
    assert should_reject(0.5, random=lambda: 0.4)
    assert not should_reject(0.5, random=lambda: 0.5)
    assert not should_reject(0.5, random=lambda: 0.9)


def test_should_reject_does_not_draw_at_zero() -> None:
    """Probability 0 admits without calling the random source."""

    def boom() -> float:
        raise AssertionError("drew")

    assert not should_reject(0.0, random=boom)


def test_should_reject_rejects_the_given_share() -> None:
    """Over 20 000 draws from a seeded source, about 30 % are rejected."""
    rng = random.Random(99)
    rejected = sum(should_reject(0.3, random=rng.random) for _ in range(20_000))
    assert rejected / 20_000 == pytest.approx(0.3, abs=0.01)


def test_sent_requests_settle_near_k_times_what_the_dependency_accepts() -> None:
    """Demand 1000/s on a dependency accepting 100/s: the client sends ~k * 100/s."""
    rng = random.Random(5)
    throttle = AdaptiveThrottle(bounds=Bounds(0.0, 0.99))
    window: deque[tuple[int, int]] = deque(maxlen=120)  # one-second buckets, 2 minutes
    sent_per_second = []
    for second in range(600):
        requests = accepts = sent = 0
        for _ in range(1000):
            requests += 1
            if should_reject(throttle.value, random=rng.random):
                continue
            sent += 1
            if accepts < 100:
                accepts += 1
        window.append((requests, accepts))
        throttle.update(
            ThrottleSample(
                now=float(second),
                requests=sum(r for r, _ in window),
                accepts=sum(a for _, a in window),
            )
        )
        sent_per_second.append(sent)
    late = sent_per_second[-120:]
    assert sum(late) / len(late) == pytest.approx(200, rel=0.1)


@given(
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.floats(1.0, 10.0),
    st.lists(
        st.builds(
            ThrottleSample,
            now=st.floats(-1e6, 1e6),
            requests=st.integers(0, 10**9),
            accepts=st.integers(0, 10**9),
        ),
        max_size=60,
    ),
)
def test_probability_stays_within_bounds_and_reports_exactly_its_changes(
    a: float, b: float, k: float, snapshots: list[ThrottleSample]
) -> None:
    """For any counts: values in [min, max], never NaN, None exactly when unchanged."""
    low, high = min(a, b), max(a, b)
    throttle = AdaptiveThrottle(bounds=Bounds(low, high), initial=low, k=k)
    for snapshot in snapshots:
        before = throttle.value
        result = throttle.update(snapshot)
        after = throttle.value
        assert not math.isnan(after)
        assert low <= after <= high
        if result is None:
            assert after == before
        else:
            assert result == after != before


@pytest.mark.parametrize(
    ("kwargs", "field", "error"),
    [
        ({"k": 0.5}, "k", ValueError),
        ({"k": "2"}, "k", TypeError),
        ({"bounds": Bounds(0.0, 1.5)}, "bounds", ValueError),
        ({"bounds": Bounds(-0.5, 0.5)}, "bounds", ValueError),
        ({"initial": 0.9}, "initial", ValueError),
        ({"name": ""}, "name", ValueError),
    ],
)
def test_bad_parameters_raise_naming_them(
    kwargs: dict[str, object], field: str, error: type
) -> None:
    """Each bad parameter is refused at construction, by name."""
    with pytest.raises(error, match=field):
        AdaptiveThrottle(**kwargs)  # type: ignore[arg-type]


def test_sample_rejects_negative_counts() -> None:
    """Negative requests or accepts are refused, by name."""
    with pytest.raises(ValueError, match="requests"):
        ThrottleSample(now=0.0, requests=-1, accepts=0)
    with pytest.raises(ValueError, match="accepts"):
        ThrottleSample(now=0.0, requests=0, accepts=-1)


def test_throttle_exposes_the_controller_attributes() -> None:
    """name, setting ("reject_probability"), bounds [0, 0.8] and value 0."""
    throttle = AdaptiveThrottle()
    assert (throttle.name, throttle.setting, throttle.value) == (
        "throttle",
        "reject_probability",
        0.0,
    )
    assert throttle.bounds == Bounds(0.0, 0.8)
