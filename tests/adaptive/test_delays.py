"""Adaptive retry delays: one delay from its inputs; the controller of base delay and attempts."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sage_resilience.adaptive.breaker import AdaptiveCircuitBreaker
from sage_resilience.adaptive.controller import Decision
from sage_resilience.adaptive.delays import (
    AdaptiveDelays,
    AdaptiveDelaysConfig,
    DelayJitter,
    DelaySettings,
    DelaySnapshot,
    hint_from,
    retry_delay,
)
from sage_resilience.core import CircuitBreakerOpenError, CircuitState, FakeClock, ThrottledError


def down() -> None:
    raise ConnectionError("down")


draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
seconds = st.floats(min_value=0.0, max_value=100.0)


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("latency_multiple", -1.0),
        ("recovery_fraction", -0.5),
        ("min_base_delay", -0.1),
        ("max_base_delay", 0.001),
        ("initial_base_delay", 5.0),
        ("max_delay", 0.5),
        ("max_attempts", 0),
        ("degraded_failure_rate", 0.0),
        ("futile_failure_rate", 0.1),
        ("hysteresis", 1.5),
        ("min_calls", 0),
        ("change", -0.1),
        ("jitter", "sideways"),
        ("hint_spread", -1.0),
    ],
)
def test_bad_settings_raise_naming_the_field(field: str, value: Any) -> None:
    """Each bad setting is refused at construction with its name in the message."""
    with pytest.raises(ValueError, match=field):
        AdaptiveDelaysConfig(**{field: value})


def test_jitter_by_name() -> None:
    """The jitter can be named."""
    assert AdaptiveDelaysConfig(jitter="decorrelated").jitter is DelayJitter.DECORRELATED  # type: ignore[arg-type]


# -- one delay ----------------------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    base=st.floats(min_value=0.0, max_value=5.0),
    extra=st.floats(min_value=0.0, max_value=10.0),
    draw=draws,
)
def test_full_and_equal_jitter_stay_under_the_exponential_cap(
    attempt: int, base: float, extra: float, draw: float
) -> None:
    """Full jitter is in [0, e], equal jitter in [e/2, e], with e = min(cap, base * 2**(n-1))."""
    cap = base + extra
    e = float(min(Fraction(cap), Fraction(base) * 2 ** (attempt - 1)))  # exact
    full = retry_delay(attempt, 0.0, None, draw, base=base, cap=cap)
    equal = retry_delay(attempt, 0.0, None, draw, base=base, cap=cap, jitter=DelayJitter.EQUAL)
    assert 0.0 <= full <= e * (1 + 1e-12)
    assert e / 2 * (1 - 1e-12) <= equal <= e * (1 + 1e-12)


@given(
    previous=seconds,
    base=st.floats(min_value=0.0, max_value=5.0),
    extra=st.floats(min_value=0.0, max_value=10.0),
    draw=draws,
)
def test_decorrelated_jitter_stays_between_base_and_cap(
    previous: float, base: float, extra: float, draw: float
) -> None:
    """Decorrelated jitter is in [base, min(cap, 3 * max(previous, base))]."""
    cap = base + extra
    d = retry_delay(3, previous, None, draw, base=base, cap=cap, jitter=DelayJitter.DECORRELATED)
    assert base * (1 - 1e-12) <= d <= min(cap, 3 * max(previous, base)) * (1 + 1e-12)


@given(
    attempt=st.integers(min_value=1, max_value=20),
    hint=seconds,
    draw=draws,
    jitter=st.sampled_from(list(DelayJitter)),
)
def test_a_hint_is_a_floor(attempt: int, hint: float, draw: float, jitter: DelayJitter) -> None:
    """With a hint the delay is at least the hint, and at most 10 % above it or the cap."""
    d = retry_delay(attempt, 0.2, hint, draw, base=0.1, cap=2.0, jitter=jitter)
    assert d >= hint
    assert d <= max(2.0, hint * 1.1)


def test_a_short_hint_changes_nothing() -> None:
    """A hint below the drawn delay leaves it as it is."""
    assert retry_delay(3, 0.0, 0.01, 0.5, base=0.1, cap=2.0) == pytest.approx(0.2)
    assert retry_delay(3, 0.0, None, 0.5, base=0.1, cap=2.0) == pytest.approx(0.2)
    assert retry_delay(3, 0.0, 0.5, 0.5, base=0.1, cap=2.0) == pytest.approx(0.525)


def test_hints_are_read_from_throttling_and_our_own_rejections(clock: FakeClock) -> None:
    """A 429's retry_after and an open breaker's retry_after are hints; junk is not."""
    assert hint_from(ThrottledError(retry_after=1.5)) == 1.5
    assert hint_from(ThrottledError()) is None
    assert hint_from(ConnectionError()) is None
    assert hint_from(None) is None
    for junk in (True, -1.0, math.nan, math.inf, "2"):
        error = ThrottledError()
        error.retry_after = junk  # type: ignore[assignment]
        assert hint_from(error) is None
    breaker = AdaptiveCircuitBreaker("db", clock=clock)
    while breaker.state is CircuitState.CLOSED:
        with pytest.raises(ConnectionError):
            breaker.call(down)
    clock.advance(0.1)
    with pytest.raises(CircuitBreakerOpenError) as info:
        breaker.acquire()
    hint = hint_from(info.value)
    assert hint == pytest.approx(0.15)  # open for 0.25 s, 0.1 s of it gone
    assert AdaptiveDelays().delay(1, 0.0, hint, 0.0) >= hint


# -- the controller -----------------------------------------------------------------------------


def test_base_delay_follows_latency_and_recovery() -> None:
    """Base = max(2 x median latency, recovery / 2), clamped to [10 ms, 1 s]."""
    cases = [
        (DelaySnapshot(time=1.0, median_latency=0.02), 0.04),
        (DelaySnapshot(time=2.0, median_latency=0.001), 0.01),
        (DelaySnapshot(time=3.0, median_latency=2.0), 1.0),
        (DelaySnapshot(time=4.0, median_latency=0.02, recovery_time=0.6), 0.3),
    ]
    for snapshot, expected in cases:
        controller = AdaptiveDelays()
        settings = controller.update(snapshot)
        assert settings is not None
        assert settings.base_delay == pytest.approx(expected)
        assert controller.value == settings.base_delay


def test_small_changes_are_not_updates() -> None:
    """Under 10 % of movement, or with nothing known, update() returns None."""
    controller = AdaptiveDelays()
    assert controller.update(DelaySnapshot(time=0.0)) is None
    assert controller.update(DelaySnapshot(time=0.0, median_latency=0.052)) is None
    assert controller.update(DelaySnapshot(time=0.0, median_latency=0.056)) is not None
    assert controller.value == pytest.approx(0.112)


@pytest.mark.parametrize(
    ("rate", "attempts"), [(0.0, 3), (0.19, 3), (0.2, 2), (0.49, 2), (0.5, 1), (1.0, 1)]
)
def test_attempts_shrink_when_retrying_is_futile(rate: float, attempts: int) -> None:
    """3 attempts below 20 % failures, 2 below 50 %, 1 from 50 % up."""
    controller = AdaptiveDelays()
    controller.update(DelaySnapshot(time=0.0, failure_rate=rate, calls=100))
    assert controller.settings.max_attempts == attempts


def test_attempts_loosen_only_clearly_below_the_threshold() -> None:
    """Back from 1 attempt needs < 40 % failures; back from 2 needs < 16 %."""
    controller = AdaptiveDelays()

    def at(rate: float) -> int:
        controller.update(DelaySnapshot(time=0.0, failure_rate=rate, calls=100))
        return controller.settings.max_attempts

    assert at(0.9) == 1
    assert at(0.45) == 1
    assert at(0.39) == 2
    assert at(0.17) == 2
    assert at(0.15) == 3
    assert at(0.25) == 2


def test_too_few_calls_leave_the_attempts_alone() -> None:
    """A failure rate behind fewer than 20 calls does not move the attempts."""
    controller = AdaptiveDelays()
    assert controller.update(DelaySnapshot(time=0.0, failure_rate=1.0, calls=19)) is None
    assert controller.settings.max_attempts == 3


@given(
    snapshots=st.lists(
        st.builds(
            DelaySnapshot,
            time=st.floats(min_value=0.0, max_value=1e6),
            failure_rate=st.floats(min_value=0.0, max_value=1.0),
            calls=st.integers(min_value=0, max_value=10_000),
            median_latency=st.none() | st.floats(min_value=0.0, max_value=1e4),
            recovery_time=st.none() | st.floats(min_value=0.0, max_value=1e4),
        ),
        max_size=50,
    )
)
def test_settings_stay_within_bounds(snapshots: list[DelaySnapshot]) -> None:
    """Whatever it reads, the base delay stays in its bounds and the attempts in [1, 3]."""
    controller = AdaptiveDelays()
    config = controller.config
    for snapshot in snapshots:
        result = controller.update(snapshot)
        settings = controller.settings
        assert result is None or result == settings
        assert config.min_base_delay <= settings.base_delay <= config.max_base_delay
        assert controller.bounds.clamp(settings.base_delay) == settings.base_delay
        assert 1 <= settings.max_attempts <= config.max_attempts
        assert settings.max_delay == config.max_delay


def test_decisions_describe_each_change() -> None:
    """decisions() builds one Decision per changed setting, with the inputs."""
    controller = AdaptiveDelays(name="db.delays")
    old = controller.settings
    snapshot = DelaySnapshot(time=5.0, failure_rate=0.6, calls=50, median_latency=0.2)
    new = controller.update(snapshot)
    assert new == DelaySettings(base_delay=0.4, max_delay=2.0, max_attempts=1)
    events = controller.decisions(old, new, snapshot, policy="db")
    assert [(e.setting, e.old, e.new) for e in events] == [
        ("base_delay", 0.1, 0.4),
        ("max_attempts", 3.0, 1.0),
    ]
    for e in events:
        assert isinstance(e, Decision)
        assert e.policy == "db" and e.controller == "db.delays" and e.time == 5.0
        assert e.inputs == {"failure_rate": 0.6, "calls": 50.0, "median_latency": 0.2}
    assert controller.decisions(new, new, snapshot, policy="db") == []


def test_delay_uses_the_current_settings() -> None:
    """delay() applies the learned base and the configured jitter and cap."""
    controller = AdaptiveDelays(AdaptiveDelaysConfig(jitter=DelayJitter.EQUAL))
    controller.update(DelaySnapshot(time=0.0, median_latency=0.25))
    assert controller.delay(1, 0.0, None, 0.0) == pytest.approx(0.25)
    assert controller.delay(3, 0.0, None, 0.99) == pytest.approx(2.0 * 0.995)
    with pytest.raises(TypeError, match="config"):
        AdaptiveDelays(object())  # type: ignore[arg-type]
