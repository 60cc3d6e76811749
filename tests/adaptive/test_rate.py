"""Adaptive rates for throttled APIs: AIMD and CUBIC formulas, hints, convergence, invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sage_resilience.adaptive.controller import Bounds
from sage_resilience.adaptive.rate import AIMDRate, CubicRate, RateSample


def sample(
    now: float,
    sent: int = 50,
    throttled: int = 0,
    window: float = 0.5,
    retry_after: float | None = None,
) -> RateSample:
    return RateSample(
        now=now, sent=sent, throttled=throttled, window=window, retry_after=retry_after
    )


# -- the snapshot -------------------------------------------------------------------------------


def test_sample_derives_send_and_accepted_rates() -> None:
    """60 sent, 10 throttled in 0.5 s: 120/s sent, 100/s accepted."""
    s = sample(0.0, sent=60, throttled=10)
    assert (s.send_rate, s.accepted_rate) == (120.0, 100.0)


@pytest.mark.parametrize(
    ("kwargs", "field", "error"),
    [
        ({"window": 0.0}, "window", ValueError),
        ({"sent": -1}, "sent", ValueError),
        ({"throttled": 1.0}, "throttled", TypeError),
        ({"retry_after": -1.0}, "retry_after", ValueError),
        ({"retry_after": math.nan}, "retry_after", ValueError),
        ({"now": math.inf}, "now", ValueError),
    ],
)
def test_sample_rejects_bad_fields(kwargs: dict[str, object], field: str, error: type) -> None:
    """Each bad snapshot field raises an error naming it."""
    base: dict[str, object] = {"now": 0.0, "sent": 1, "window": 1.0}
    with pytest.raises(error, match=field):
        RateSample(**(base | kwargs))  # type: ignore[arg-type]


# -- AIMD ---------------------------------------------------------------------------------------


def test_aimd_rate_is_dormant_until_the_first_throttle() -> None:
    """No throttle yet: inactive, value = maximum (inf: no limit), updates return None."""
    rate = AIMDRate()
    assert not rate.active
    assert rate.value == math.inf
    assert rate.update(sample(0.5, sent=500)) is None
    assert rate.value == math.inf


def test_aimd_rate_first_throttle_sets_decrease_times_accepted_rate() -> None:
    """Accepted 100/s in a throttled window: rate 0.9 * 100 = 90, now active."""
    rate = AIMDRate()
    assert rate.update(sample(0.5, sent=60, throttled=10)) == pytest.approx(90.0)
    assert rate.active


def test_aimd_rate_decreases_from_the_lower_of_rate_and_accepted() -> None:
    """At 90/s with 120/s accepted, a throttle gives 0.9 * 90 = 81; at 40/s accepted, 36."""
    rate = AIMDRate(initial=90.0)
    assert rate.update(sample(0.5, sent=70, throttled=10)) == pytest.approx(81.0)
    assert rate.update(sample(1.0, sent=30, throttled=10)) == pytest.approx(36.0)


def test_aimd_rate_estimates_the_limit_over_its_estimate_window() -> None:
    """With ``estimate_window`` 2 s the throttle's estimate is the accepted rate of the last
    2 s of samples: a noisy low tick does not drag the rate below the provider's limit."""
    rate = AIMDRate(initial=60.0, decrease=0.99, estimate_window=2.0)
    for i in range(1, 8):  # 3.5 s at 50/s accepted, no throttle
        rate.update(sample(0.5 * i, sent=25))
    # A tick with only 15 of 20 accepted (30/s): alone it would say the limit is 30/s.
    assert rate.update(sample(4.0, sent=20, throttled=5)) == pytest.approx(
        0.99 * (25 * 3 + 15) / 2.0
    )
    alone = AIMDRate(initial=60.0, decrease=0.99)
    assert alone.update(sample(4.0, sent=20, throttled=5)) == pytest.approx(0.99 * 30.0)


def test_aimd_rate_first_throttle_estimates_from_its_own_window() -> None:
    """Dormant (unlimited) until the first throttle, the caller's earlier windows rode the
    provider's burst, which the throttled window may still hold: the first estimate is that
    window's alone, and the estimate window starts after it."""
    rate = AIMDRate(decrease=0.99, estimate_window=2.0)
    for i in range(1, 5):  # 2 s of 100/s all accepted (a provider's burst)
        assert rate.update(sample(0.5 * i, sent=50)) is None
    assert rate.update(sample(2.5, sent=50, throttled=25)) == pytest.approx(0.99 * 50.0)
    # The next throttle averages the windows after the first throttled one: (20 + 20) / 1 s.
    rate.update(sample(3.0, sent=20))
    assert rate.update(sample(3.5, sent=25, throttled=5)) == pytest.approx(0.99 * 40.0)


def test_aimd_rate_probes_multiplicatively_after_a_quiet_spell() -> None:
    """After ``probe_after`` seconds without a throttle the rate grows by ``probe_growth`` of
    itself per second: a limit lifted from 20/s to 100/s is found in seconds, not a minute."""
    rate = AIMDRate(initial=20.0, increase=1.0, probe_after=5.0, probe_growth=0.2)
    linear = AIMDRate(initial=20.0, increase=1.0)
    t, quick, slow = 0.0, None, None
    while t < 60.0:
        t += 0.25
        value = rate.update(sample(t, sent=1000, window=0.25))
        plain = linear.update(sample(t, sent=1000, window=0.25))
        if quick is None and value is not None and value >= 54.0:
            quick = t
        if slow is None and plain is not None and plain >= 54.0:
            slow = t
    assert slow == pytest.approx(34.0, abs=0.3)  # 1/s per second
    assert quick is not None and 8.0 < quick < 11.0  # 5 s, then +20 % per second
    # Before probe_after, the step is the plain one; a throttle restarts the quiet spell.
    fresh = AIMDRate(initial=20.0, increase=1.0, probe_after=5.0, probe_growth=0.2)
    assert fresh.update(sample(1.0, sent=1000, window=1.0)) == pytest.approx(21.0)
    fresh.update(sample(2.0, sent=20, throttled=1, window=1.0))
    assert fresh.update(sample(6.0, sent=1000, window=1.0)) < 25.0


def test_aimd_rate_grows_by_increase_per_second_elapsed() -> None:
    """No throttle for 0.5 s at a used rate: 90 + 0.5 * 0.5 = 90.25; then 2 s: + 1."""
    rate = AIMDRate(initial=90.0)
    assert rate.update(sample(10.0, sent=45)) == pytest.approx(90.25)
    assert rate.update(sample(12.0, sent=45)) == pytest.approx(91.25)


def test_aimd_rate_first_update_counts_its_window_as_elapsed() -> None:
    """With no previous update, the elapsed time is the sample's window."""
    rate = AIMDRate(initial=10.0, increase=2.0)
    assert rate.update(sample(100.0, sent=5, window=1.0)) == pytest.approx(12.0)


def test_aimd_rate_does_not_grow_while_app_limited() -> None:
    """Sending under half the rate leaves it unchanged."""
    rate = AIMDRate(initial=90.0)
    assert rate.update(sample(1.0, sent=22)) is None  # 44/s < 45/s


def test_aimd_rate_clamps_to_the_minimum() -> None:
    """Everything throttled (nothing accepted) drops the rate to the bounds' minimum."""
    rate = AIMDRate(initial=10.0)
    assert rate.update(sample(1.0, sent=10, throttled=10)) == 0.5


def test_aimd_rate_retry_after_caps_and_holds() -> None:
    """A 4 s hint caps the rate at 1/4 for 4 s; echoes do not lower it; then it resumes."""
    rate = AIMDRate(bounds=Bounds(0.1, math.inf), initial=100.0)
    assert rate.update(sample(0.0, sent=60, throttled=10, retry_after=4.0)) == 0.25
    assert rate.update(sample(1.0, sent=1)) is None  # holding
    assert rate.update(sample(2.0, sent=5, throttled=5)) is None  # an echo: base kept
    assert rate.update(sample(3.0, sent=5, throttled=5, retry_after=5.0)) == 0.2
    assert rate.inputs(sample(3.0))["hold_until"] == 8.0
    assert rate.update(sample(7.9, sent=1)) is None
    assert rate.update(sample(8.0, sent=1)) == pytest.approx(90.0)  # 0.9 * min(100, 100)


def test_aimd_rate_inputs_carry_the_window_and_the_estimate() -> None:
    """inputs() names the counts, the send rate and the provider-limit estimate."""
    rate = AIMDRate()
    s = sample(0.5, sent=60, throttled=10, retry_after=1.0)
    rate.update(s)
    inputs = rate.inputs(s)
    assert inputs["send_rate"] == 120.0
    assert inputs["limit_estimate"] == 100.0
    assert inputs["retry_after"] == 1.0
    assert inputs["hint_cap"] == 1.0


# -- CUBIC --------------------------------------------------------------------------------------


def test_cubic_is_dormant_until_the_first_throttle() -> None:
    """Before any throttle: inactive, value = maximum, updates return None."""
    cubic = CubicRate()
    assert cubic.update(sample(0.5, sent=50)) is None
    assert not cubic.active
    assert cubic.value == math.inf


def test_cubic_measured_rate_is_an_ema_of_send_rates() -> None:
    """m = 0.8 * send_rate + 0.2 * m, the first update taking the send rate as it is."""
    cubic = CubicRate()
    cubic.update(sample(0.5, sent=50))
    assert cubic.measured_rate == 100.0
    cubic.update(sample(1.0, sent=25))
    assert cubic.measured_rate == pytest.approx(0.8 * 50 + 0.2 * 100)


def test_cubic_throttle_sets_beta_w_max_and_k() -> None:
    """Sending 100/s: W_max = 100, rate = 0.7 * 100, K = cbrt(100 * 0.3 / 0.4)."""
    cubic = CubicRate()
    cubic.update(sample(0.5, sent=50))
    assert cubic.update(sample(1.0, sent=50, throttled=5)) == pytest.approx(70.0)
    assert cubic.w_max == 100.0
    assert cubic.k == pytest.approx(75.0 ** (1 / 3))
    assert cubic.active


def test_cubic_climbs_back_to_w_max_after_k_seconds() -> None:
    """Half-way, C (-K/2)^3 + W_max = 100 - 0.4 * 75 / 8; at K, W_max; then beyond it."""
    cubic = CubicRate()
    cubic.update(sample(0.5, sent=50))
    cubic.update(sample(1.0, sent=50, throttled=5))
    k = cubic.k
    assert cubic.update(sample(1.0 + k / 2, sent=50)) == pytest.approx(100.0 - 0.4 * 75.0 / 8)
    assert cubic.update(sample(1.0 + k, sent=50)) == pytest.approx(100.0)
    assert cubic.update(sample(2.0 + k, sent=50)) == pytest.approx(100.4)


def test_cubic_rate_is_capped_at_twice_the_measured_rate() -> None:
    """Sending little after a throttle, the rate may not exceed 2 m."""
    cubic = CubicRate()
    cubic.update(sample(0.5, sent=50))
    cubic.update(sample(1.0, sent=50, throttled=5))
    value = cubic.update(sample(1.5, sent=5))  # m = 0.8 * 10 + 0.2 * 100 = 28
    assert value == pytest.approx(56.0)


def test_cubic_later_throttle_uses_the_lower_of_measured_and_current_rate() -> None:
    """At rate 96.25 with m = 100, W_max = 96.25 and the rate becomes 0.7 of it."""
    cubic = CubicRate()
    cubic.update(sample(0.5, sent=50))
    cubic.update(sample(1.0, sent=50, throttled=5))
    k = cubic.k
    cubic.update(sample(1.0 + k / 2, sent=50))
    assert cubic.update(sample(2.0 + k / 2, sent=50, throttled=1)) == pytest.approx(0.7 * 96.25)
    assert cubic.w_max == pytest.approx(96.25)


def test_cubic_retry_after_caps_holds_and_then_starts_the_curve() -> None:
    """A 2 s hint: rate 1/2 for 2 s, then the curve from beta * W_max at the hint's end."""
    cubic = CubicRate(bounds=Bounds(0.1, math.inf))
    cubic.update(sample(0.5, sent=50))
    assert cubic.update(sample(1.0, sent=50, throttled=5, retry_after=2.0)) == 0.5
    assert cubic.update(sample(2.0, sent=50, throttled=5)) is None  # an echo
    # The hold ends at 3.0; the curve starts there from 0.7 * 100 (2 m allows it).
    assert cubic.update(sample(3.0, sent=50)) == pytest.approx(70.0)
    assert cubic.inputs(sample(3.0))["since_throttle"] == 0.0


def test_cubic_clamps_to_its_bounds() -> None:
    """The post-throttle rate is clamped to the minimum."""
    cubic = CubicRate(bounds=Bounds(5.0, 50.0))
    cubic.update(sample(0.5, sent=2))
    assert cubic.update(sample(1.0, sent=2, throttled=1)) == 5.0


# -- convergence against a synthetic provider --------------------------------------------------


def run_provider(
    controller: AIMDRate | CubicRate, *, limit: float, demand: float, seconds: float = 120.0
) -> list[tuple[float, float, int, int]]:
    """A provider with a token bucket (``limit``/s, 1 s of burst) and a caller wanting
    ``demand``/s, sending at the controller's rate; one update per 0.5 s tick."""
    tick, steps = 0.5, 10
    dt = tick / steps
    tokens, carry, t = limit, 0.0, 0.0
    rows = []
    while t < seconds:
        sent = throttled = 0
        for _ in range(steps):
            t += dt
            tokens = min(limit, tokens + limit * dt)
            rate = min(demand, controller.value)
            due = rate * dt + carry
            n = int(due)
            carry = due - n
            for _ in range(n):
                sent += 1
                if tokens >= 1.0:
                    tokens -= 1.0
                else:
                    throttled += 1
        controller.update(RateSample(now=t, sent=sent, throttled=throttled, window=tick))
        rows.append((t, controller.value, sent, throttled))
    return rows


@pytest.mark.parametrize("factory", [AIMDRate, CubicRate])
@pytest.mark.parametrize("limit", [20.0, 50.0, 200.0])
def test_rate_settles_near_the_provider_limit(factory: type, limit: float) -> None:
    """Within 10 % of the limit in 10 s; after 30 s, < 2 % throttled and >= 90 % accepted."""
    rows = run_provider(factory(), limit=limit, demand=3 * limit)
    first_close = next(t for t, value, _, _ in rows if abs(value - limit) <= 0.1 * limit)
    assert first_close <= 10.0
    late = [row for row in rows if row[0] > 30.0]
    sent = sum(row[2] for row in late)
    throttled = sum(row[3] for row in late)
    assert throttled / sent < 0.02
    accepted_rate = (sent - throttled) / (len(late) * 0.5)
    assert accepted_rate >= 0.9 * limit


# -- invariants ---------------------------------------------------------------------------------

rate_samples = st.builds(
    RateSample,
    now=st.floats(-1e6, 1e6),
    sent=st.integers(0, 100_000),
    throttled=st.integers(0, 1000),
    window=st.floats(1e-3, 100.0),
    retry_after=st.none() | st.floats(0.0, 1000.0),
)


@st.composite
def rate_controllers(draw: st.DrawFn) -> AIMDRate | CubicRate:
    low = draw(st.floats(0.01, 100.0))
    high = draw(st.just(math.inf) | st.floats(low, 1e6))
    bounds = Bounds(low, high)
    if draw(st.booleans()):
        return CubicRate(
            bounds=bounds, scale=draw(st.floats(0.01, 10.0)), beta=draw(st.floats(0.05, 0.95))
        )
    finite_high = min(high, 1e6)
    initial = draw(st.none() | st.floats(low, finite_high))
    return AIMDRate(
        bounds=bounds,
        initial=initial,
        increase=draw(st.floats(0.01, 100.0)),
        decrease=draw(st.floats(0.05, 0.95)),
    )


@given(rate_controllers(), st.lists(rate_samples, max_size=60))
def test_rates_stay_within_bounds_and_report_exactly_their_changes(
    controller: AIMDRate | CubicRate, snapshots: list[RateSample]
) -> None:
    """For any windows: values in [min, max], never NaN, None exactly when unchanged."""
    for snapshot in snapshots:
        before = controller.value
        result = controller.update(snapshot)
        after = controller.value
        assert not math.isnan(after)
        assert controller.bounds.minimum <= after <= controller.bounds.maximum
        if result is None:
            assert after == before
        else:
            assert result == after != before
            assert controller.active
        for value in controller.inputs(snapshot).values():
            assert not math.isnan(value)


# -- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "field", "error"),
    [
        (lambda: AIMDRate(increase=0.0), "increase", ValueError),
        (lambda: AIMDRate(decrease=1.0), "decrease", ValueError),
        (lambda: AIMDRate(decrease=0.0), "decrease", ValueError),
        (lambda: AIMDRate(estimate_window=-1.0), "estimate_window", ValueError),
        (lambda: AIMDRate(probe_after=-1.0), "probe_after", ValueError),
        (lambda: AIMDRate(probe_growth=0.0), "probe_growth", ValueError),
        (lambda: AIMDRate(initial=0.1), "initial", ValueError),
        (lambda: AIMDRate(bounds=Bounds(0.0, 10.0)), "bounds.minimum", ValueError),
        (lambda: AIMDRate(bounds=[1, 2]), "bounds", TypeError),  # type: ignore[arg-type]
        (lambda: AIMDRate(name=3), "name", TypeError),  # type: ignore[arg-type]
        (lambda: CubicRate(scale=0.0), "scale", ValueError),
        (lambda: CubicRate(beta=1.0), "beta", ValueError),
        (lambda: CubicRate(beta="0.7"), "beta", TypeError),  # type: ignore[arg-type]
        (lambda: CubicRate(bounds=Bounds(-1.0, 10.0)), "bounds.minimum", ValueError),
    ],
)
def test_bad_parameters_raise_naming_them(factory: object, field: str, error: type) -> None:
    """Each bad parameter is refused at construction, by name."""
    with pytest.raises(error, match=field):
        factory()  # type: ignore[operator]


def test_rates_expose_the_controller_attributes() -> None:
    """name, setting ("rate"), bounds and value, as the Controller protocol asks."""
    for controller in (AIMDRate(), CubicRate(name="embeddings")):
        assert controller.setting == "rate"
        assert controller.bounds == Bounds(0.5, math.inf)
    assert CubicRate(name="embeddings").name == "embeddings"
    assert AIMDRate(initial=3.0).value == 3.0
