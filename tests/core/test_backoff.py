"""Backoff: the strategy's delay, capped at max_delay, then jitter on the capped value."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from sage_resilience.core import Backoff, Jitter, RetryStrategy

GROWING = [RetryStrategy.LINEAR, RetryStrategy.EXPONENTIAL, RetryStrategy.FIBONACCI]
SCHEDULED = [RetryStrategy.FIXED, *GROWING]


def fib(n: int) -> int:
    """F(1) = F(2) = 1, F(n) = F(n-1) + F(n-2)."""
    a, b = 1, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return a


def formula(strategy: RetryStrategy, d0: float, base: float, n: int) -> float:
    """The uncapped delay before retry n, straight from the module's table."""
    if strategy is RetryStrategy.FIXED:
        return d0
    if strategy is RetryStrategy.LINEAR:
        return d0 * n
    if strategy is RetryStrategy.EXPONENTIAL:
        try:
            return d0 * base ** (n - 1)
        except OverflowError:
            return math.inf if d0 > 0 else 0.0
    try:
        return d0 * fib(n)
    except OverflowError:
        return math.inf


def constant(value: float) -> Callable[[], float]:
    """A random source that always draws ``value``."""
    return lambda: value


def forbidden() -> float:
    """A random source that must not be consulted."""
    raise AssertionError("random() was called although no randomness applies")


def draws(values: list[float]) -> Callable[[], float]:
    """A random source returning ``values`` in order."""
    it: Iterator[float] = iter(values)
    return lambda: next(it)


# -- the seed's table ------------------------------------------------------------------------------

SEED_TABLE = {
    RetryStrategy.FIXED: [1.0, 1.0, 1.0, 1.0, 1.0],
    RetryStrategy.LINEAR: [1.0, 2.0, 3.0, 4.0, 5.0],
    RetryStrategy.EXPONENTIAL: [1.0, 2.0, 4.0, 8.0, 16.0],
    RetryStrategy.FIBONACCI: [1.0, 1.0, 2.0, 3.0, 5.0],
}


@pytest.mark.parametrize("strategy", SCHEDULED, ids=lambda s: s.name)
def test_seed_delay_table_without_jitter(strategy: RetryStrategy) -> None:
    """initial 1.0, base 2, no jitter: the seed's table exactly, via delay() and base_delay()."""
    backoff = Backoff(
        strategy=strategy, initial_delay=1.0, exponential_base=2.0, jitter=Jitter.NONE
    )
    previous = 0.0
    got = []
    for n in range(1, 6):
        previous = backoff.delay(n, previous, forbidden)
        got.append(previous)
    assert got == SEED_TABLE[strategy]
    assert [backoff.base_delay(n) for n in range(1, 6)] == SEED_TABLE[strategy]


@pytest.mark.parametrize("strategy", SCHEDULED, ids=lambda s: s.name)
def test_seed_delay_table_is_capped_at_max_delay(strategy: RetryStrategy) -> None:
    """With max_delay=3 every entry of the seed's table is min(3, entry)."""
    backoff = Backoff(strategy=strategy, initial_delay=1.0, max_delay=3.0, jitter=Jitter.NONE)
    got = [backoff.delay(n, 0.0, forbidden) for n in range(1, 8)]
    assert got == [min(3.0, formula(strategy, 1.0, 2.0, n)) for n in range(1, 8)]
    assert max(got) <= 3.0


def test_exponential_uses_the_base() -> None:
    """EXPONENTIAL with base 3 and initial 0.5 gives 0.5 * 3**(n-1)."""
    backoff = Backoff(
        strategy=RetryStrategy.EXPONENTIAL, initial_delay=0.5, exponential_base=3.0, jitter=False
    )
    assert [backoff.delay(n, 0.0, forbidden) for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]


def test_defaults_are_the_seeds() -> None:
    """Backoff() is exponential from 1 s, base 2, capped at 60 s, with EQUAL jitter."""
    backoff = Backoff()
    assert backoff.strategy is RetryStrategy.EXPONENTIAL
    assert backoff.initial_delay == 1.0
    assert backoff.max_delay == 60.0
    assert backoff.exponential_base == 2.0
    assert backoff.jitter is Jitter.EQUAL


def test_long_schedules_stay_at_the_cap() -> None:
    """Far past the point where the cap is reached (and past float overflow): the cap."""
    backoff = Backoff(strategy=RetryStrategy.EXPONENTIAL, max_delay=60.0, jitter=Jitter.NONE)
    assert [backoff.delay(n, 0.0, forbidden) for n in (7, 8, 100, 1100, 10_000)] == [60.0] * 5
    fibo = Backoff(strategy=RetryStrategy.FIBONACCI, max_delay=60.0, jitter=Jitter.NONE)
    assert fibo.delay(5000, 0.0, forbidden) == 60.0


def test_regression_zero_initial_delay_stays_zero_after_float_overflow() -> None:
    """initial_delay=0 stays 0 for every retry, even where base**n overflows a float."""
    # Before the fix EXPONENTIAL with initial_delay 0 returned max_delay from retry 1026 on.
    for strategy in SCHEDULED:
        backoff = Backoff(strategy=strategy, initial_delay=0.0, max_delay=10.0, jitter=Jitter.NONE)
        assert [backoff.delay(n, 0.0, forbidden) for n in (1, 64, 65, 1100, 5000)] == [0.0] * 5


def test_regression_tiny_initial_delay_fibonacci_does_not_overflow() -> None:
    """A subnormal initial_delay: F(n) past float range gives the cap, not OverflowError."""
    # Found by Hypothesis: d0 * F(n) raised once F(n) no longer fitted in a float.
    backoff = Backoff(
        strategy=RetryStrategy.FIBONACCI, initial_delay=5e-324, max_delay=1.0, jitter=Jitter.NONE
    )
    assert backoff.delay(1477, 0.0, forbidden) == 1.0
    assert backoff.delay(1, 0.0, forbidden) == 5e-324


def test_beyond_the_precomputed_table_the_formula_still_holds() -> None:
    """Schedules that never reach the cap follow the formula past the internal table (n > 64)."""
    linear = Backoff(
        strategy=RetryStrategy.LINEAR, initial_delay=0.01, max_delay=60.0, jitter=Jitter.NONE
    )
    assert linear.delay(100, 0.0, forbidden) == pytest.approx(1.0)
    assert linear.delay(1000, 0.0, forbidden) == pytest.approx(10.0)
    flat = Backoff(
        strategy=RetryStrategy.EXPONENTIAL,
        exponential_base=1.0,
        initial_delay=2.0,
        jitter=Jitter.NONE,
    )
    assert flat.delay(500, 0.0, forbidden) == 2.0


# -- jitter ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.999])
def test_full_jitter_is_d_times_u(r: float) -> None:
    """FULL jitter draws U(0, d): d * random()."""
    backoff = Backoff(strategy=RetryStrategy.EXPONENTIAL, jitter=Jitter.FULL)
    assert backoff.delay(3, 0.0, constant(r)) == pytest.approx(4.0 * r)


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.999])
def test_equal_jitter_is_half_plus_half_u(r: float) -> None:
    """EQUAL jitter draws d/2 + U(0, d/2)."""
    backoff = Backoff(strategy=RetryStrategy.EXPONENTIAL, jitter=Jitter.EQUAL)
    assert backoff.delay(3, 0.0, constant(r)) == pytest.approx(2.0 + 2.0 * r)


def test_jitter_applies_after_the_cap() -> None:
    """The delay is min(max_delay, strategy) first, then jitter on that value (not the reverse)."""
    backoff = Backoff(strategy=RetryStrategy.EXPONENTIAL, max_delay=5.0, jitter=Jitter.FULL)
    # Retry 10 is 512 s uncapped; capped it is 5, and half of that is 2.5.
    assert backoff.delay(10, 0.0, constant(0.5)) == pytest.approx(2.5)
    equal = Backoff(strategy=RetryStrategy.EXPONENTIAL, max_delay=5.0, jitter=Jitter.EQUAL)
    assert equal.delay(10, 0.0, constant(0.0)) == pytest.approx(2.5)


def test_no_jitter_never_draws() -> None:
    """Jitter.NONE never calls the random source."""
    backoff = Backoff(jitter=Jitter.NONE)
    assert backoff.delay(2, 0.0, forbidden) == 2.0


def test_zero_delay_needs_no_draw() -> None:
    """A zero delay stays zero under any jitter, without consulting the random source."""
    for jitter in Jitter:
        backoff = Backoff(initial_delay=0.0, jitter=jitter)
        assert backoff.delay(1, 0.0, forbidden) == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, Jitter.EQUAL),
        (False, Jitter.NONE),
        ("full", Jitter.FULL),
        ("EQUAL", Jitter.EQUAL),
        ("None", Jitter.NONE),
        (Jitter.FULL, Jitter.FULL),
    ],
)
def test_jitter_coercion(value: object, expected: Jitter) -> None:
    """The seed's True is EQUAL (multiplier in [0.5, 1]), False is NONE; names are accepted."""
    assert Jitter.coerce(value) is expected  # type: ignore[arg-type]
    assert Backoff(jitter=value).jitter is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["sometimes", 1, 0.5, None])
def test_bad_jitter_is_rejected_naming_the_field(value: object) -> None:
    """A jitter that is not a Jitter, bool or known name raises ValueError naming jitter."""
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=value)  # type: ignore[arg-type]


def test_seed_jitter_true_is_a_multiplier_between_half_and_one() -> None:
    """jitter=True scales the capped delay by a factor in [0.5, 1.0] (seed meaning)."""
    backoff = Backoff(strategy=RetryStrategy.LINEAR, jitter=True)  # type: ignore[arg-type]
    assert backoff.delay(4, 0.0, constant(0.0)) == 2.0
    assert backoff.delay(4, 0.0, constant(0.5)) == 3.0


# -- DECORRELATED ----------------------------------------------------------------------------------


def test_decorrelated_first_delay_is_uniform_between_base_and_three_base() -> None:
    """The first DECORRELATED delay is U(base, 3 * base): base + 2 * base * random()."""
    backoff = Backoff(strategy=RetryStrategy.DECORRELATED, initial_delay=2.0, max_delay=100.0)
    assert backoff.delay(1, 0.0, constant(0.0)) == 2.0
    assert backoff.delay(1, 0.0, constant(0.5)) == pytest.approx(4.0)
    assert backoff.delay(1, 0.0, constant(0.75)) == pytest.approx(5.0)


def test_decorrelated_next_delay_grows_from_the_previous_one() -> None:
    """Each next delay is min(cap, U(base, 3 * previous)) with previous the last delay used."""
    backoff = Backoff(strategy=RetryStrategy.DECORRELATED, initial_delay=1.0, max_delay=10.0)
    # U(1, 3 * 2) at 0.5 is 1 + 5 * 0.5.
    assert backoff.delay(2, 2.0, constant(0.5)) == pytest.approx(3.5)
    # U(1, 3 * 8) at 0.9 is 21.7, capped at 10.
    assert backoff.delay(3, 8.0, constant(0.9)) == 10.0


def test_decorrelated_ignores_jitter_and_exponential_base() -> None:
    """jitter and exponential_base do not change a DECORRELATED delay."""
    plain = Backoff(strategy=RetryStrategy.DECORRELATED, jitter=Jitter.NONE)
    other = Backoff(strategy=RetryStrategy.DECORRELATED, jitter=Jitter.FULL, exponential_base=7.0)
    for previous, r in [(0.0, 0.3), (2.0, 0.6), (5.0, 0.1)]:
        assert plain.delay(2, previous, constant(r)) == other.delay(2, previous, constant(r))


@given(
    initial=st.floats(min_value=0.0, max_value=10.0),
    extra=st.floats(min_value=0.0, max_value=100.0),
    rs=st.lists(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), min_size=1, max_size=30),
)
def test_decorrelated_chain_stays_within_bounds(
    initial: float, extra: float, rs: list[float]
) -> None:
    """Each DECORRELATED delay lies in [initial, min(max, 3 * previous)]."""
    cap = initial + extra
    backoff = Backoff(strategy=RetryStrategy.DECORRELATED, initial_delay=initial, max_delay=cap)
    previous = 0.0
    for n, r in enumerate(rs, start=1):
        d = backoff.delay(n, previous, constant(r))
        upper = min(cap, 3.0 * (previous if n > 1 else initial))
        assert initial <= d <= upper * (1 + 1e-12) + 1e-300
        previous = d


# -- invariants over every strategy and jitter -----------------------------------------------------

configs = st.builds(
    lambda strategy, initial, extra, base, jitter: Backoff(
        strategy=strategy,
        initial_delay=initial,
        max_delay=initial + extra,
        exponential_base=base,
        jitter=jitter,
    ),
    strategy=st.sampled_from(list(RetryStrategy)),
    initial=st.floats(min_value=0.0, max_value=100.0),
    extra=st.floats(min_value=0.0, max_value=1000.0),
    base=st.floats(min_value=1.0, max_value=10.0),
    jitter=st.sampled_from(list(Jitter)),
)
unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(backoff=configs, n=st.integers(min_value=1, max_value=2000), r=unit, previous=unit)
def test_every_delay_is_within_zero_and_max_delay(
    backoff: Backoff, n: int, r: float, previous: float
) -> None:
    """For every strategy and jitter, any delay lies in [0, max_delay]."""
    prev = previous * backoff.max_delay
    d = backoff.delay(n, prev, constant(r))
    assert 0.0 <= d <= backoff.max_delay


@given(
    strategy=st.sampled_from(SCHEDULED),
    initial=st.floats(min_value=0.0, max_value=100.0),
    extra=st.floats(min_value=0.0, max_value=1000.0),
    base=st.floats(min_value=1.0, max_value=10.0),
    n=st.integers(min_value=1, max_value=300),
)
def test_unjittered_delay_is_the_capped_formula(
    strategy: RetryStrategy, initial: float, extra: float, base: float, n: int
) -> None:
    """Without jitter the delay before retry n is min(max_delay, formula(n))."""
    cap = initial + extra
    backoff = Backoff(
        strategy=strategy,
        initial_delay=initial,
        max_delay=cap,
        exponential_base=base,
        jitter=Jitter.NONE,
    )
    expected = min(cap, formula(strategy, initial, base, n))
    assert backoff.delay(n, 0.0, forbidden) == pytest.approx(expected, rel=1e-9)


@given(
    strategy=st.sampled_from(GROWING),
    initial=st.floats(min_value=0.0, max_value=100.0),
    extra=st.floats(min_value=0.0, max_value=1000.0),
    base=st.floats(min_value=1.0, max_value=10.0),
    count=st.integers(min_value=2, max_value=200),
)
def test_unjittered_delays_never_decrease(
    strategy: RetryStrategy, initial: float, extra: float, base: float, count: int
) -> None:
    """Without jitter LINEAR, EXPONENTIAL and FIBONACCI delays are non-decreasing in n."""
    backoff = Backoff(
        strategy=strategy,
        initial_delay=initial,
        max_delay=initial + extra,
        exponential_base=base,
        jitter=Jitter.NONE,
    )
    delays = [backoff.delay(n, 0.0, forbidden) for n in range(1, count + 1)]
    assert all(a <= b for a, b in itertools.pairwise(delays))


@given(backoff=configs, n=st.integers(min_value=1, max_value=500), r=unit)
def test_full_jitter_within_zero_and_d(backoff: Backoff, n: int, r: float) -> None:
    """FULL jitter keeps the delay within [0, d], d the capped unjittered delay."""
    assume(backoff.strategy is not RetryStrategy.DECORRELATED)
    full = dataclasses.replace(backoff, jitter=Jitter.FULL)
    d = full.base_delay(n)
    assert 0.0 <= full.delay(n, 0.0, constant(r)) <= d


@given(backoff=configs, n=st.integers(min_value=1, max_value=500), r=unit)
def test_equal_jitter_within_half_d_and_d(backoff: Backoff, n: int, r: float) -> None:
    """EQUAL jitter keeps the delay within [d/2, d], d the capped unjittered delay."""
    assume(backoff.strategy is not RetryStrategy.DECORRELATED)
    equal = dataclasses.replace(backoff, jitter=Jitter.EQUAL)
    d = equal.base_delay(n)
    assert d / 2 <= equal.delay(n, 0.0, constant(r)) <= d


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("initial_delay", -0.1, ValueError),
        ("initial_delay", math.nan, ValueError),
        ("initial_delay", math.inf, ValueError),
        ("initial_delay", "1", TypeError),
        ("initial_delay", True, TypeError),
        ("max_delay", -1.0, ValueError),
        ("max_delay", math.nan, ValueError),
        ("max_delay", math.inf, ValueError),
        ("max_delay", None, TypeError),
        ("exponential_base", 0.5, ValueError),
        ("exponential_base", math.nan, ValueError),
        ("exponential_base", "2", TypeError),
        ("strategy", "quadratic", ValueError),
        ("strategy", 3, ValueError),
        ("jitter", "lots", ValueError),
    ],
)
def test_bad_fields_are_rejected_naming_the_field(field: str, value: object, error: type) -> None:
    """Every out-of-range or mistyped field raises at construction, naming the field."""
    kwargs: dict[str, object] = {"initial_delay": 0.5, "max_delay": 10.0}
    kwargs[field] = value
    with pytest.raises(error, match=field):
        Backoff(**kwargs)  # type: ignore[arg-type]


def test_initial_delay_above_max_delay_is_rejected() -> None:
    """initial_delay > max_delay raises ValueError naming both fields."""
    with pytest.raises(ValueError, match="initial_delay") as info:
        Backoff(initial_delay=5.0, max_delay=2.0)
    assert "max_delay" in str(info.value)


def test_strategy_names_are_accepted() -> None:
    """A strategy may be given by its value, case-insensitively."""
    assert Backoff(strategy="Fibonacci").strategy is RetryStrategy.FIBONACCI  # type: ignore[arg-type]


def test_numbers_are_normalised_to_float() -> None:
    """Integer delays and bases are stored as floats."""
    backoff = Backoff(initial_delay=1, max_delay=30, exponential_base=3)
    assert (backoff.initial_delay, backoff.max_delay, backoff.exponential_base) == (1.0, 30.0, 3.0)
    assert all(type(v) is float for v in (backoff.initial_delay, backoff.max_delay))


def test_backoff_is_frozen() -> None:
    """A Backoff cannot be changed after construction; variants come from replace()."""
    backoff = Backoff()
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.max_delay = 5.0  # type: ignore[misc]
    assert dataclasses.replace(backoff, max_delay=5.0).delay(10, 0.0, constant(0.999)) <= 5.0
