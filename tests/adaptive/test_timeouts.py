"""The adaptive timeout: quantile times factor, clamped, smoothed, holding on few samples."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sage_resilience.adaptive.controller import Bounds
from sage_resilience.adaptive.stats import LatencyHistogram
from sage_resilience.adaptive.timeouts import AdaptiveTimeout, TimeoutSample


def sample(now: float, latency: float | None = 0.1, samples: int = 100) -> TimeoutSample:
    return TimeoutSample(now=now, latency=latency, samples=samples)


def test_first_usable_sample_sets_quantile_times_factor() -> None:
    """p99 of 100 ms with factor 2: the timeout becomes 200 ms at once, from the initial 30 s."""
    timeout = AdaptiveTimeout()
    assert timeout.value == 30.0
    assert timeout.update(sample(0.0, latency=0.1)) == pytest.approx(0.2)


def test_holds_with_too_few_samples_or_no_latency() -> None:
    """Under min_samples, or with no quantile, the value holds (None)."""
    timeout = AdaptiveTimeout(initial=1.0)
    assert timeout.update(sample(0.0, samples=19)) is None
    assert timeout.update(sample(1.0, latency=None, samples=500)) is None
    assert timeout.value == 1.0


def test_clamps_to_its_bounds() -> None:
    """A tiny quantile gives the minimum, a huge one the maximum."""
    timeout = AdaptiveTimeout(bounds=Bounds(0.05, 5.0), fall_half_life=0.0)
    assert timeout.update(sample(0.0, latency=0.001)) == 0.05
    assert timeout.update(sample(1.0, latency=100.0)) == 5.0


def test_rises_at_once_by_default() -> None:
    """A slower dependency raises the timeout in one update."""
    timeout = AdaptiveTimeout()
    timeout.update(sample(0.0, latency=0.1))
    assert timeout.update(sample(0.5, latency=0.3)) == pytest.approx(0.6)


def test_falls_with_its_half_life() -> None:
    """After one fall half-life the value has gone half-way down to the target."""
    timeout = AdaptiveTimeout(fall_half_life=10.0)
    timeout.update(sample(0.0, latency=0.5))  # 1.0
    assert timeout.update(sample(10.0, latency=0.1)) == pytest.approx(0.6)
    assert timeout.update(sample(30.0, latency=0.1)) == pytest.approx(0.2 + 0.4 / 4)


def test_rise_half_life_smooths_increases() -> None:
    """With a rise half-life of 2 s, 2 s later the value is half-way up."""
    timeout = AdaptiveTimeout(rise_half_life=2.0)
    timeout.update(sample(0.0, latency=0.1))  # 0.2
    assert timeout.update(sample(2.0, latency=0.3)) == pytest.approx(0.4)


def test_small_changes_are_not_made() -> None:
    """A change under min_change (1 %) of the value returns None and keeps the value."""
    timeout = AdaptiveTimeout()
    timeout.update(sample(0.0, latency=0.1))
    assert timeout.update(sample(1.0, latency=0.1009)) is None
    assert timeout.value == pytest.approx(0.2)
    assert timeout.update(sample(2.0, latency=0.102)) == pytest.approx(0.204)


def test_no_time_elapsed_means_no_smoothed_step() -> None:
    """A falling target at the same instant does not move a smoothed value."""
    timeout = AdaptiveTimeout()
    timeout.update(sample(5.0, latency=0.5))
    assert timeout.update(sample(5.0, latency=0.1)) is None


def test_quantile_and_factor_are_parameters() -> None:
    """q 0.9 and factor 3: the sample holds the histogram's p90 and the timeout 3x it."""
    histogram = LatencyHistogram()
    for ms in range(1, 101):
        histogram.record(ms / 1000)
    timeout = AdaptiveTimeout(quantile=0.9, factor=3.0)
    s = timeout.sample(7.0, histogram)
    assert s.now == 7.0
    assert s.samples == 100
    assert s.latency is not None
    assert s.latency == histogram.quantile(0.9)
    assert s.latency == pytest.approx(0.090, rel=LatencyHistogram.RELATIVE_ERROR)
    assert timeout.update(s) == pytest.approx(3 * s.latency)
    inputs = timeout.inputs(s)
    assert (inputs["quantile"], inputs["factor"], inputs["samples"]) == (0.9, 3.0, 100.0)


def test_sample_of_an_empty_histogram_holds() -> None:
    """An empty histogram gives latency None and the value holds."""
    timeout = AdaptiveTimeout(initial=2.0)
    s = timeout.sample(0.0, LatencyHistogram())
    assert (s.latency, s.samples) == (None, 0)
    assert timeout.update(s) is None


def test_follows_latency_shifts_to_about_twice_the_p99() -> None:
    """Latency means 10, 50, then 20 ms: each minute ends within [0.95, 1.25] x 2 p99.

    The excess is the noise of a per-second p99 (rises are taken at once, falls slowly, so the
    value rides the upper envelope of the estimates) and the histogram's bucket error.
    """
    rng = random.Random(7)
    timeout = AdaptiveTimeout()
    now = 0.0
    for mean in (0.01, 0.05, 0.02):
        for _ in range(60):
            now += 1.0
            histogram = LatencyHistogram()
            for _ in range(1000):
                histogram.record(rng.expovariate(1 / mean))
            timeout.update(timeout.sample(now, histogram))
        exact = 2 * mean * math.log(100)  # p99 of an exponential is mean * ln(100)
        assert 0.95 * exact <= timeout.value <= 1.25 * exact


@given(
    st.floats(0.001, 1.0),
    st.floats(1.0, 100.0),
    st.floats(0.0, 30.0),
    st.floats(0.0, 30.0),
    st.lists(
        st.builds(
            TimeoutSample,
            now=st.floats(-1e6, 1e6),
            latency=st.none() | st.floats(0.0, 1e6),
            samples=st.integers(0, 1000),
        ),
        max_size=60,
    ),
)
def test_timeout_stays_within_bounds_and_reports_exactly_its_changes(
    low: float, high: float, rise: float, fall: float, snapshots: list[TimeoutSample]
) -> None:
    """For any samples: values in [min, max], never NaN, None exactly when unchanged."""
    timeout = AdaptiveTimeout(bounds=Bounds(low, high), rise_half_life=rise, fall_half_life=fall)
    for snapshot in snapshots:
        before = timeout.value
        result = timeout.update(snapshot)
        after = timeout.value
        assert not math.isnan(after)
        assert low <= after <= high
        if result is None:
            assert after == before
        else:
            assert result == after != before
        for value in timeout.inputs(snapshot).values():
            assert not math.isnan(value)


@pytest.mark.parametrize(
    ("kwargs", "field", "error"),
    [
        ({"quantile": 0.0}, "quantile", ValueError),
        ({"quantile": 1.5}, "quantile", ValueError),
        ({"factor": 0.0}, "factor", ValueError),
        ({"min_samples": 0}, "min_samples", ValueError),
        ({"rise_half_life": -1.0}, "rise_half_life", ValueError),
        ({"fall_half_life": math.inf}, "fall_half_life", ValueError),
        ({"min_change": 2.0}, "min_change", ValueError),
        ({"initial": 60.0}, "initial", ValueError),
        ({"bounds": Bounds(0.0, 1.0)}, "bounds.minimum", ValueError),
        ({"bounds": (0.1, 1.0)}, "bounds", TypeError),
        ({"name": ""}, "name", ValueError),
    ],
)
def test_bad_parameters_raise_naming_them(
    kwargs: dict[str, object], field: str, error: type
) -> None:
    """Each bad parameter is refused at construction, by name."""
    with pytest.raises(error, match=field):
        AdaptiveTimeout(**kwargs)  # type: ignore[arg-type]


def test_sample_rejects_bad_fields() -> None:
    """A negative latency or sample count is refused, by name."""
    with pytest.raises(ValueError, match="latency"):
        TimeoutSample(now=0.0, latency=-1.0, samples=1)
    with pytest.raises(ValueError, match="samples"):
        TimeoutSample(now=0.0, latency=1.0, samples=-1)


def test_timeout_exposes_the_controller_attributes() -> None:
    """name, setting ("timeout"), bounds and value."""
    timeout = AdaptiveTimeout(name="db")
    assert (timeout.name, timeout.setting) == ("db", "timeout")
    assert timeout.bounds == Bounds(0.01, 30.0)
