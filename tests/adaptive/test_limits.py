"""Adaptive concurrency limits: AIMD, Vegas and Gradient2 formulas, convergence, invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sage_resilience.adaptive.controller import Bounds
from sage_resilience.adaptive.limits import (
    AIMDLimit,
    Gradient2Limit,
    LimitSample,
    LimitWindow,
    VegasLimit,
)


def window(
    now: float = 0.0,
    rtt: float | None = 0.01,
    inflight: int = 100,
    samples: int = 50,
    dropped: bool = False,
) -> LimitSample:
    return LimitSample(
        now=now, rtt=rtt, inflight=inflight, samples=0 if rtt is None else samples, dropped=dropped
    )


# -- the snapshot -------------------------------------------------------------------------------


def test_sample_requires_rtt_when_it_counts_samples() -> None:
    """A window with samples must say their rtt."""
    with pytest.raises(ValueError, match="rtt"):
        LimitSample(now=0.0, rtt=None, inflight=1, samples=3)


def test_sample_without_samples_has_no_rtt() -> None:
    """An rtt averaging no sample is refused."""
    with pytest.raises(ValueError, match="rtt"):
        LimitSample(now=0.0, rtt=0.01, inflight=1, samples=0)


@pytest.mark.parametrize(
    ("field", "kwargs", "error"),
    [
        ("now", {"now": math.nan}, ValueError),
        ("rtt", {"rtt": 0.0}, ValueError),
        ("rtt", {"rtt": math.inf}, ValueError),
        ("inflight", {"inflight": -1}, ValueError),
        ("inflight", {"inflight": 1.5}, TypeError),
        ("samples", {"samples": -1}, ValueError),
        ("dropped", {"dropped": 1}, TypeError),
    ],
)
def test_sample_rejects_bad_fields(field: str, kwargs: dict[str, object], error: type) -> None:
    """Each bad snapshot field raises an error naming it."""
    base: dict[str, object] = {"now": 0.0, "rtt": 0.01, "inflight": 1, "samples": 10}
    with pytest.raises(error, match=field):
        LimitSample(**(base | kwargs))  # type: ignore[arg-type]


# -- AIMD ---------------------------------------------------------------------------------------


def test_aimd_multiplies_by_backoff_on_a_drop() -> None:
    """A window with a drop takes the limit from 20 to 20 * 0.9 = 18."""
    limit = AIMDLimit()
    assert limit.update(window(dropped=True)) == pytest.approx(18.0)
    assert limit.value == pytest.approx(18.0)


def test_aimd_treats_rtt_over_timeout_as_a_drop() -> None:
    """An rtt above the timeout backs off as a drop does."""
    limit = AIMDLimit(timeout=0.5)
    assert limit.update(window(rtt=0.6)) == pytest.approx(18.0)


def test_aimd_adds_one_when_the_limit_is_used() -> None:
    """``inflight * 2 >= L`` grows the limit by one call."""
    limit = AIMDLimit()
    assert limit.update(window(inflight=10)) == 21.0


def test_aimd_holds_while_app_limited() -> None:
    """Using under half the limit leaves it unchanged (None)."""
    limit = AIMDLimit()
    assert limit.update(window(inflight=9)) is None
    assert limit.value == 20.0


def test_aimd_holds_on_a_window_with_too_few_samples() -> None:
    """A window under ``min_samples`` teaches nothing."""
    limit = AIMDLimit()
    assert limit.update(window(samples=9)) is None


def test_aimd_backs_off_on_a_window_of_drops_only() -> None:
    """A window where every call dropped (no rtt at all) still lowers the limit."""
    limit = AIMDLimit()
    assert limit.update(window(rtt=None, dropped=True)) == pytest.approx(18.0)


def test_aimd_clamps_to_its_bounds() -> None:
    """The limit never leaves [min, max]; at a bound the update returns None."""
    limit = AIMDLimit(bounds=Bounds(5.0, 21.0), initial=5.0)
    assert limit.update(window(dropped=True)) is None
    assert limit.value == 5.0
    limit = AIMDLimit(bounds=Bounds(5.0, 21.0), initial=20.5)
    assert limit.update(window()) == 21.0
    assert limit.update(window()) is None


# -- Vegas --------------------------------------------------------------------------------------


def primed_vegas(initial: float = 20.0, **kwargs: object) -> VegasLimit:
    """A Vegas limit whose rtt_noload is 10 ms, without probes."""
    vegas = VegasLimit(initial=initial, probe_interval=None, **kwargs)  # type: ignore[arg-type]
    assert vegas.update(window(rtt=0.01)) is None  # the first window sets rtt_noload
    assert vegas.rtt_noload == 0.01
    return vegas


def test_vegas_grows_by_beta_when_no_queue() -> None:
    """queue = ceil(20 (1 - 10/10)) = 0 <= log10 root (1): L + beta = 20 + 6."""
    vegas = primed_vegas()
    assert vegas.update(window(rtt=0.01)) == 26.0


def test_vegas_grows_by_one_step_under_alpha() -> None:
    """queue = ceil(20 (1 - 10/10.9)) = 2, in (1, alpha=3): L + 1."""
    vegas = primed_vegas()
    assert vegas.update(window(rtt=0.0109)) == 21.0
    assert vegas.inputs(window(rtt=0.0109))["queue"] == 2.0


def test_vegas_holds_between_alpha_and_beta() -> None:
    """queue = ceil(20 (1 - 10/12.3)) = 4, within [3, 6]: unchanged."""
    vegas = primed_vegas()
    assert vegas.update(window(rtt=0.0123)) is None


def test_vegas_shrinks_over_beta() -> None:
    """queue = ceil(20 (1 - 10/20)) = 10 > beta = 6: L - 1."""
    vegas = primed_vegas()
    assert vegas.update(window(rtt=0.02)) == 19.0


def test_vegas_step_is_floor_log10_of_the_limit() -> None:
    """At L = 1000 the step is 3: no queue grows it by beta = 18, a big queue shrinks it by 3."""
    vegas = primed_vegas(initial=1000.0, bounds=Bounds(1.0, 5000.0))
    assert vegas.update(window(rtt=0.01, inflight=1000)) == 1018.0
    vegas = primed_vegas(initial=1000.0, bounds=Bounds(1.0, 5000.0))
    assert vegas.update(window(rtt=0.05, inflight=1000)) == 997.0


def test_vegas_shrinks_by_one_step_on_a_drop() -> None:
    """A drop takes log10 root of the limit off it, whatever the rtt."""
    vegas = primed_vegas()
    assert vegas.update(window(rtt=0.01, dropped=True)) == 19.0


def test_vegas_holds_while_app_limited() -> None:
    """``inflight * 2 < L`` holds the limit even with no queue."""
    vegas = primed_vegas()
    assert vegas.update(window(rtt=0.01, inflight=9)) is None


def test_vegas_holds_on_a_new_minimum_rtt() -> None:
    """A window that lowers rtt_noload only records it."""
    vegas = primed_vegas()
    assert vegas.update(window(rtt=0.005)) is None
    assert vegas.rtt_noload == 0.005


def test_vegas_smoothing_moves_part_way() -> None:
    """With smoothing 0.5 the +6 step becomes +3."""
    vegas = primed_vegas(smoothing=0.5)
    assert vegas.update(window(rtt=0.01)) == 23.0


def test_vegas_probe_pins_the_limit_low_then_restores_it() -> None:
    """A due probe pins min(L/2, L - 2 beta), re-measures rtt_noload there, then restores L."""
    vegas = VegasLimit(initial=40.0, probe_interval=60.0)
    assert vegas.update(window(now=0.0, rtt=0.02)) is None  # first window: queued rtt
    assert vegas.update(window(now=1.0, rtt=0.02)) == 20.0  # probe: min(40/2, 40 - 12)
    assert vegas.inputs(window())["probing"] == 1.0
    # Calls admitted before the pin still in flight: not a probe window yet.
    assert vegas.update(window(now=2.0, rtt=0.015, inflight=40)) is None
    assert vegas.update(window(now=3.0, rtt=0.01, inflight=20)) == 40.0
    assert not vegas.probing
    assert vegas.inputs(window())["probing"] == 0.0
    assert vegas.rtt_noload == 0.01
    # The next probe is due 60 s after the measurement.
    assert vegas.update(window(now=62.0, rtt=0.0105, inflight=40)) == 41.0
    assert vegas.update(window(now=63.0, rtt=0.0105, inflight=41)) == 20.5


def test_vegas_probe_follows_a_dependency_that_became_slower() -> None:
    """After the base rtt doubles for good, a probe re-learns it (rtt_noload = 20 ms)."""
    vegas = VegasLimit(initial=1.0, probe_interval=10.0)
    run_limit(vegas, capacity=50, base=0.01, windows=100)
    values = run_limit(vegas, capacity=50, base=0.02, windows=100, start=100)
    assert vegas.rtt_noload == pytest.approx(0.02)
    # Every tenth window or so is a probe, pinned low; the rest sit just above capacity.
    settled = [v for v in values[-50:] if 50 <= v <= 57]
    assert len(settled) >= 40


def test_vegas_without_probes_keeps_the_old_minimum() -> None:
    """With probes off, a permanently slower dependency reads as queued and the limit sinks."""
    vegas = VegasLimit(initial=1.0, probe_interval=None)
    run_limit(vegas, capacity=50, base=0.01, windows=100)
    run_limit(vegas, capacity=50, base=0.02, windows=100, start=100)
    assert vegas.rtt_noload == pytest.approx(0.01)
    assert vegas.value < 25


# -- Gradient2 ----------------------------------------------------------------------------------


def test_gradient2_first_window_grows_by_smoothed_queue_size() -> None:
    """gradient = min(1, 1.5 * 1) = 1, new = 20 + 4, L = 0.8 * 20 + 0.2 * 24 = 20.8."""
    limit = Gradient2Limit()
    assert limit.update(window(rtt=0.01)) == pytest.approx(20.8)
    assert limit.inputs(window(rtt=0.01))["gradient"] == 1.0


def test_gradient2_shrinks_when_the_short_rtt_doubles() -> None:
    """long 10 ms, short 20 ms: gradient 0.75, L = 0.8 L + 0.2 (0.75 L + 4)."""
    limit = Gradient2Limit(warmup=1, long_window=1_000_000, initial=40.0)
    limit.update(window(rtt=0.01))
    before = limit.value
    long_rtt = 0.01 + (0.02 - 0.01) * 2 / 1_000_001
    gradient = 1.5 * long_rtt / 0.02
    expected = 0.8 * before + 0.2 * (before * gradient + 4.0)
    assert limit.update(window(rtt=0.02)) == pytest.approx(expected)
    assert limit.value < before


def test_gradient2_gradient_is_at_least_one_half() -> None:
    """A tenfold rtt is clamped to gradient 0.5: L = 0.8 L + 0.2 (0.5 L + 4)."""
    limit = Gradient2Limit(warmup=1, long_window=1_000_000, initial=100.0)
    limit.update(window(rtt=0.01))
    before = limit.value
    assert limit.update(window(rtt=0.1)) == pytest.approx(0.9 * before + 0.8)


def test_gradient2_long_rtt_is_a_warmup_mean_then_an_ema() -> None:
    """The first ``warmup`` rtts are averaged, then each moves it by 2 / (window + 1)."""
    limit = Gradient2Limit(warmup=2, long_window=9)
    limit.update(window(rtt=0.01))
    limit.update(window(rtt=0.02))
    assert limit.long_rtt == pytest.approx(0.015)
    limit.update(window(rtt=0.025))
    assert limit.long_rtt == pytest.approx(0.015 + 0.01 * 0.2)


def test_gradient2_decays_a_long_rtt_over_twice_the_short() -> None:
    """long / short > 2 multiplies the long rtt by 0.95 in that window."""
    limit = Gradient2Limit(warmup=1, long_window=1_000_000)
    limit.update(window(rtt=0.1))
    limit.update(window(rtt=0.01))
    expected = (0.1 + (0.01 - 0.1) * 2 / 1_000_001) * 0.95
    assert limit.long_rtt == pytest.approx(expected)


def test_gradient2_holds_while_app_limited_but_still_learns() -> None:
    """``inflight < L / 2`` holds the limit; the long rtt still takes the window in."""
    limit = Gradient2Limit()
    assert limit.update(window(rtt=0.01, inflight=9)) is None
    assert limit.long_rtt == 0.01


def test_gradient2_queue_size_may_depend_on_the_limit() -> None:
    """A callable queue_size is evaluated at the current limit."""
    limit = Gradient2Limit(queue_size=lambda lim: lim / 10)
    assert limit.update(window(rtt=0.01)) == pytest.approx(0.8 * 20 + 0.2 * (20 + 2))


def test_gradient2_ignores_drops_by_default() -> None:
    """Like Netflix's, a drop alone does not move Gradient2."""
    limit = Gradient2Limit()
    assert limit.update(window(rtt=None, dropped=True)) is None


def test_gradient2_drop_backoff_lowers_the_limit_on_a_drop() -> None:
    """With drop_backoff 0.9 a window with a drop takes 20 to 18."""
    limit = Gradient2Limit(drop_backoff=0.9)
    assert limit.update(window(rtt=0.01, dropped=True)) == pytest.approx(18.0)


# -- windows from per-call records -------------------------------------------------------------


def test_limit_window_waits_for_min_samples() -> None:
    """take() returns None until min_samples calls are recorded, then their mean and max."""
    w = LimitWindow(min_samples=3)
    w.record(0.01, 2)
    w.record(0.03, 5)
    assert w.take(1.0) is None
    w.record(0.02, 3)
    sample = w.take(2.0)
    assert sample is not None
    assert (sample.now, sample.inflight, sample.samples, sample.dropped) == (2.0, 5, 3, False)
    assert sample.rtt == pytest.approx(0.02)
    assert w.take(3.0) is None  # a fresh window


def test_limit_window_ignores_calls_under_100_microseconds() -> None:
    """A 50 µs call counts toward in-flight but not as a latency sample."""
    w = LimitWindow(min_samples=1)
    w.record(50e-6, 7)
    assert w.take(1.0) is None
    w.record(0.001, 1)
    sample = w.take(1.0)
    assert sample is not None
    assert (sample.samples, sample.rtt, sample.inflight) == (1, 0.001, 7)


def test_limit_window_closes_on_a_drop_and_keeps_its_rtt_out() -> None:
    """A drop closes the window at once, and its latency is not averaged."""
    w = LimitWindow()
    w.record(0.01, 1)
    w.record_drop(4)
    sample = w.take(1.0)
    assert sample == LimitSample(now=1.0, rtt=0.01, inflight=4, samples=1, dropped=True)


def test_limit_window_of_drops_only_has_no_rtt() -> None:
    """Only drops: rtt None, samples 0, dropped."""
    w = LimitWindow()
    w.record_drop(3)
    assert w.take(1.0) == LimitSample(now=1.0, rtt=None, inflight=3, samples=0, dropped=True)


def test_limit_window_rejects_bad_parameters() -> None:
    """min_samples and min_rtt are validated by name."""
    with pytest.raises(ValueError, match="min_samples"):
        LimitWindow(min_samples=0)
    with pytest.raises(ValueError, match="min_rtt"):
        LimitWindow(min_rtt=-1.0)


# -- convergence against a synthetic dependency ------------------------------------------------


def run_limit(
    limit: AIMDLimit | VegasLimit | Gradient2Limit,
    *,
    capacity: int,
    base: float = 0.01,
    windows: int,
    start: int = 0,
    queue: int | None = None,
) -> list[float]:
    """One-second windows against ``capacity`` workers with ample demand (L calls in flight).

    The rtt is ``base`` up to the capacity and grows in proportion beyond it (the extra calls
    queue); with ``queue`` set, the dependency refuses calls beyond ``capacity + queue``.
    """
    values = []
    for w in range(start, start + windows):
        inflight = max(1, int(limit.value))
        rtt = base * max(1.0, inflight / capacity)
        served = int(min(inflight, capacity) / base)
        dropped = queue is not None and inflight > capacity + queue
        limit.update(
            LimitSample(now=float(w), rtt=rtt, inflight=inflight, samples=served, dropped=dropped)
        )
        values.append(limit.value)
    return values


@pytest.mark.parametrize("capacity", [3, 10, 100])
def test_aimd_settles_near_the_point_where_the_dependency_refuses(capacity: int) -> None:
    """AIMD saw-tooths between 0.9x and 1x the refusal point (capacity plus a 20 % queue)."""
    queue = max(1, capacity // 5)
    values = run_limit(AIMDLimit(initial=1.0), capacity=capacity, windows=400, queue=queue)
    tail = values[-100:]
    assert min(tail) >= 0.8 * capacity
    assert max(tail) < capacity + queue + 2  # int(L) calls in flight


@pytest.mark.parametrize("capacity", [3, 10, 100])
@pytest.mark.parametrize("initial", [1.0, 20.0])
def test_vegas_settles_a_few_calls_above_capacity(capacity: int, initial: float) -> None:
    """Vegas keeps alpha..beta calls queued: C + 3 l <= L <= C + 6 l + 1, from below or above."""
    values = run_limit(VegasLimit(initial=initial), capacity=capacity, windows=400)
    step = max(1, math.floor(math.log10(capacity)))
    tail = [v for v in values[-100:] if v >= capacity]  # probe windows pin it lower
    assert len(tail) >= 95
    assert all(capacity + 3 * step - 1 <= v <= capacity + 6 * step + 1 for v in tail)


@pytest.mark.parametrize("capacity", [10, 100])
def test_gradient2_settles_near_capacity_with_tolerance_one(capacity: int) -> None:
    """With tolerance 1 Gradient2 stops where rtt/long_rtt ~ 1 + queue/L: within [C, 1.6 C + 4]."""
    values = run_limit(Gradient2Limit(initial=1.0, tolerance=1.0), capacity=capacity, windows=300)
    tail = values[-50:]
    assert min(tail) >= capacity
    assert max(tail) <= 1.6 * capacity + 4


def test_gradient2_default_tolerance_admits_half_again_the_latency() -> None:
    """With tolerance 1.5 the limit passes capacity until the rtt is ~1.5x the long rtt."""
    limit = Gradient2Limit(initial=1.0)
    values = run_limit(limit, capacity=10, windows=120)
    assert 1.5 * 10 <= values[-1] <= 3 * 10
    assert limit.long_rtt is not None
    rtt = 0.01 * max(1.0, int(values[-2]) / 10)
    assert rtt / limit.long_rtt >= 1.3


# -- invariants ---------------------------------------------------------------------------------

samples_st = st.builds(
    lambda now, rtt, inflight, samples, dropped: LimitSample(
        now=now,
        rtt=None if samples == 0 else rtt,
        inflight=inflight,
        samples=samples,
        dropped=dropped,
    ),
    now=st.floats(-1e6, 1e6),
    rtt=st.floats(1e-7, 1e4),
    inflight=st.integers(0, 10_000),
    samples=st.integers(0, 40),
    dropped=st.booleans(),
)


@st.composite
def limits(draw: st.DrawFn) -> AIMDLimit | VegasLimit | Gradient2Limit:
    low = draw(st.floats(1.0, 100.0))
    high = draw(st.floats(low, 5000.0))
    initial = draw(st.floats(low, high))
    bounds = Bounds(low, high)
    kind = draw(st.sampled_from(["aimd", "vegas", "gradient2"]))
    if kind == "aimd":
        return AIMDLimit(bounds=bounds, initial=initial, timeout=draw(st.floats(1e-3, 100.0)))
    if kind == "vegas":
        return VegasLimit(
            bounds=bounds,
            initial=initial,
            smoothing=draw(st.floats(0.01, 1.0)),
            probe_interval=draw(st.none() | st.floats(0.1, 100.0)),
        )
    return Gradient2Limit(
        bounds=bounds,
        initial=initial,
        long_window=draw(st.integers(1, 1000)),
        warmup=draw(st.integers(0, 20)),
        drop_backoff=draw(st.floats(0.1, 1.0)),
    )


@given(limits(), st.lists(samples_st, max_size=60))
def test_limits_stay_within_bounds_and_report_exactly_their_changes(
    limit: AIMDLimit | VegasLimit | Gradient2Limit, snapshots: list[LimitSample]
) -> None:
    """For any windows: values in [min, max], never NaN, None exactly when unchanged."""
    for snapshot in snapshots:
        before = limit.value
        result = limit.update(snapshot)
        after = limit.value
        assert not math.isnan(after)
        assert limit.bounds.minimum <= after <= limit.bounds.maximum
        if result is None:
            assert after == before
        else:
            assert result == after != before
        for value in limit.inputs(snapshot).values():
            assert not math.isnan(value)


# -- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "field", "error"),
    [
        (lambda: AIMDLimit(backoff=1.0), "backoff", ValueError),
        (lambda: AIMDLimit(backoff=0.0), "backoff", ValueError),
        (lambda: AIMDLimit(timeout=0.0), "timeout", ValueError),
        (lambda: AIMDLimit(min_samples=0), "min_samples", ValueError),
        (lambda: AIMDLimit(initial=2000.0), "initial", ValueError),
        (lambda: AIMDLimit(bounds=Bounds(0.5, 10.0), initial=1.0), "bounds.minimum", ValueError),
        (lambda: AIMDLimit(bounds=(1, 10)), "bounds", TypeError),  # type: ignore[arg-type]
        (lambda: AIMDLimit(name=""), "name", ValueError),
        (lambda: VegasLimit(smoothing=0.0), "smoothing", ValueError),
        (lambda: VegasLimit(smoothing=1.5), "smoothing", ValueError),
        (lambda: VegasLimit(probe_interval=0.0), "probe_interval", ValueError),
        (lambda: VegasLimit(initial=math.nan), "initial", ValueError),
        (lambda: Gradient2Limit(tolerance=0.9), "tolerance", ValueError),
        (lambda: Gradient2Limit(long_window=0), "long_window", ValueError),
        (lambda: Gradient2Limit(warmup=-1), "warmup", ValueError),
        (lambda: Gradient2Limit(queue_size=-1.0), "queue_size", ValueError),
        (lambda: Gradient2Limit(queue_size="4"), "queue_size", TypeError),  # type: ignore[arg-type]
        (lambda: Gradient2Limit(drop_backoff=0.0), "drop_backoff", ValueError),
        (lambda: Gradient2Limit(smoothing=2.0), "smoothing", ValueError),
    ],
)
def test_bad_parameters_raise_naming_them(factory: object, field: str, error: type) -> None:
    """Each bad parameter is refused at construction, by name."""
    with pytest.raises(error, match=field):
        factory()  # type: ignore[operator]


def test_limits_expose_the_controller_attributes() -> None:
    """name, setting ("limit"), bounds and value, as the Controller protocol asks."""
    for limit in (AIMDLimit(), VegasLimit(), Gradient2Limit(name="db")):
        assert limit.setting == "limit"
        assert limit.bounds == Bounds(1.0, 1000.0)
        assert limit.value == 20.0
    assert Gradient2Limit(name="db").name == "db"
    assert (AIMDLimit().name, VegasLimit().name) == ("aimd", "vegas")
