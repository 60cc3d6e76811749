"""The circuit breaker: when it trips, how it recovers, what it counts, and what it tells."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from sage_resilience.core import (
    BreakerOutcome,
    BreakerStateChanged,
    CallRejected,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitState,
    Event,
    FakeClock,
    PermanentError,
    RejectedError,
    TimeWindow,
    TransientError,
    WindowType,
    circuit_breaker,
    register_classifier,
    unregister_classifier,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


# -- helpers ------------------------------------------------------------------------------------


def raiser(exc: BaseException) -> Callable[[], Any]:
    def fn() -> Any:
        raise exc

    return fn


def ok() -> str:
    return "ok"


def succeed(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        assert b.call(ok) == "ok"


def fail(b: CircuitBreaker, n: int = 1, exc_type: type[Exception] = ConnectionError) -> None:
    for _ in range(n):
        with pytest.raises(exc_type):
            b.call(raiser(exc_type("down")))


def trip(b: CircuitBreaker) -> None:
    """Open ``b`` with consecutive failures (its failure_threshold must be set)."""
    threshold = b.config.failure_threshold
    assert threshold is not None
    fail(b, threshold)
    assert b.state is OPEN


def to_half_open(b: CircuitBreaker, clock: FakeClock) -> None:
    trip(b)
    clock.advance(b.config.recovery_timeout)
    assert b.state is HALF_OPEN


def check_sums(b: CircuitBreaker) -> None:
    s = b.stats()
    assert s.calls == s.successes + s.failures + s.ignored + s.rejected


# -- defaults and construction ------------------------------------------------------------------


def test_defaults_are_the_seeds() -> None:
    """The config's defaults are the pinned ones (seed's values, rates off, time window)."""
    c = CircuitBreakerConfig()
    assert c.failure_threshold == 5
    assert c.recovery_timeout == 60.0
    assert c.success_threshold == 2
    assert c.monitoring_window == 60.0
    assert c.failure_rate_threshold is None
    assert c.minimum_calls == 20
    assert c.window_type is WindowType.TIME
    assert c.expected_exception is Exception
    assert c.max_half_open_calls == c.success_threshold


def test_constructor_overrides_replace_config_fields(clock: FakeClock) -> None:
    """Keyword overrides replace the given config's fields; the rest is kept."""
    base = CircuitBreakerConfig(failure_threshold=7, recovery_timeout=3.0)
    b = CircuitBreaker("o", base, clock=clock, failure_threshold=2)
    assert b.config.failure_threshold == 2
    assert b.config.recovery_timeout == 3.0
    assert b.clock is clock


@pytest.mark.parametrize("name", ["", None, 3])
def test_breaker_name_must_be_a_nonempty_string(name: object) -> None:
    """A breaker without a usable name is refused."""
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker(name)  # type: ignore[arg-type]


def test_config_must_be_a_config() -> None:
    """Passing something else as the config is a TypeError."""
    with pytest.raises(TypeError, match="config"):
        CircuitBreaker("x", {"failure_threshold": 3})  # type: ignore[arg-type]


def test_window_type_accepts_its_string_value() -> None:
    """window_type may be given as 'time' or 'count' (any case)."""
    assert CircuitBreakerConfig(window_type="COUNT").window_type is WindowType.COUNT  # type: ignore[arg-type]


def test_single_exception_tuple_is_normalised() -> None:
    """A one-class tuple of expected exceptions equals the class itself."""
    assert CircuitBreakerConfig(expected_exception=(OSError,)) == CircuitBreakerConfig(
        expected_exception=OSError
    )


_BAD_FIELDS: list[tuple[str, object, type[Exception]]] = [
    ("failure_threshold", 0, ValueError),
    ("failure_threshold", -1, ValueError),
    ("failure_threshold", 1.5, TypeError),
    ("failure_threshold", True, TypeError),
    ("failure_threshold", "5", TypeError),
    ("recovery_timeout", -0.1, ValueError),
    ("recovery_timeout", float("nan"), ValueError),
    ("recovery_timeout", float("inf"), ValueError),
    ("recovery_timeout", "60", TypeError),
    ("expected_exception", (), ValueError),
    ("expected_exception", int, TypeError),
    ("expected_exception", "ValueError", TypeError),
    ("expected_exception", (ValueError, 3), TypeError),
    ("success_threshold", 0, ValueError),
    ("success_threshold", 2.0, TypeError),
    ("monitoring_window", 0.0, ValueError),
    ("monitoring_window", -60.0, ValueError),
    ("monitoring_window", float("inf"), ValueError),
    ("monitoring_window", None, TypeError),
    ("on_open", 5, TypeError),
    ("on_open", lambda a, b: None, TypeError),
    ("on_close", "close", TypeError),
    ("on_close", lambda a, b: None, TypeError),
    ("on_half_open", object(), TypeError),
    ("on_half_open", lambda a, b, c: None, TypeError),
    ("failure_rate_threshold", 0.0, ValueError),
    ("failure_rate_threshold", 1.01, ValueError),
    ("failure_rate_threshold", -0.5, ValueError),
    ("failure_rate_threshold", float("nan"), ValueError),
    ("failure_rate_threshold", "0.5", TypeError),
    ("minimum_calls", 0, ValueError),
    ("minimum_calls", 10.0, TypeError),
    ("slow_call_duration", 0.0, ValueError),
    ("slow_call_duration", -1.0, ValueError),
    ("slow_call_duration", "1", TypeError),
    ("half_open_max_calls", 0, ValueError),
    ("half_open_max_calls", 1.0, TypeError),
    ("ignore_exceptions", (int,), TypeError),
    ("ignore_exceptions", "KeyError", TypeError),
    ("failure_condition", 5, TypeError),
    ("window_type", "sliding", ValueError),
    ("window_type", 5, TypeError),
    ("window_size", 0, ValueError),
    ("window_size", 10.0, TypeError),
]


@pytest.mark.parametrize(
    ("field", "value", "error"), _BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in _BAD_FIELDS]
)
def test_bad_config_field_raises_naming_it(
    field: str, value: object, error: type[Exception]
) -> None:
    """Every field out of range or of the wrong type raises at construction, naming the field."""
    with pytest.raises(error, match=field):
        CircuitBreakerConfig(**{field: value})


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1])
def test_bad_slow_call_rate_threshold_raises(value: float) -> None:
    """slow_call_rate_threshold outside (0, 1] raises, naming it."""
    with pytest.raises(ValueError, match="slow_call_rate_threshold"):
        CircuitBreakerConfig(slow_call_duration=1.0, slow_call_rate_threshold=value)


def test_slow_rate_without_slow_duration_is_an_error() -> None:
    """A slow-call rate threshold needs a slow-call duration."""
    with pytest.raises(ValueError, match="slow_call_duration"):
        CircuitBreakerConfig(slow_call_rate_threshold=0.5)


def test_bad_config_through_the_decorator_and_replace() -> None:
    """Validation also runs for the decorator's arguments and for dataclasses.replace."""
    with pytest.raises(ValueError, match="failure_threshold"):
        circuit_breaker("bad", failure_threshold=0)
    with pytest.raises(ValueError, match="recovery_timeout"):
        dataclasses.replace(CircuitBreakerConfig(), recovery_timeout=-1.0)


# -- consecutive failures -----------------------------------------------------------------------


def test_seed_scenario_opens_after_three_failures(clock: FakeClock) -> None:
    """The seed's test: 3 failures open it, the 4th call is rejected, half-open after recovery."""
    b = CircuitBreaker("seed", clock=clock, failure_threshold=3, recovery_timeout=2.0)
    calls = []

    def dependency() -> None:
        calls.append(1)
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            b.call(dependency)
    assert b.state is OPEN
    with pytest.raises(CircuitBreakerOpenError):
        b.call(dependency)
    assert len(calls) == 3
    clock.advance(2.0)
    assert b.state is HALF_OPEN


def test_opens_exactly_at_failure_threshold(clock: FakeClock) -> None:
    """threshold - 1 consecutive failures keep it closed; one more opens it."""
    b = CircuitBreaker("t", clock=clock, failure_threshold=4)
    fail(b, 3)
    assert b.state is CLOSED
    fail(b)
    assert b.state is OPEN


def test_regression_successes_reset_failure_count(clock: FakeClock) -> None:
    """Regression (seed): 800 successes between short failure runs never open it."""
    # The seed counted failures in its window and ignored successes: it opened after ~800
    # successes and 5 failures. Here a success resets the count of consecutive failures.
    b = CircuitBreaker("busy", clock=clock, failure_threshold=5)
    threshold = 5
    failures = 0
    for i in range(800):
        succeed(b)
        if i % 100 == 49:
            fail(b, threshold - 1)
            failures += threshold - 1
        if i % 160 == 159:
            fail(b)
            failures += 1
        clock.advance(0.05)
    assert b.state is CLOSED
    assert failures > threshold
    s = b.stats()
    assert (s.successes, s.failures) == (800, failures)
    succeed(b)
    fail(b, threshold - 1)
    assert b.state is CLOSED
    fail(b)  # but a run of `threshold` still opens it
    assert b.state is OPEN


def test_a_success_breaks_the_failure_run(clock: FakeClock) -> None:
    """Failures separated by a success never add up to the threshold."""
    b = CircuitBreaker("run", clock=clock, failure_threshold=3)
    for _ in range(10):
        fail(b, 2)
        succeed(b)
    assert b.state is CLOSED


def test_ignored_calls_neither_break_nor_extend_the_run(clock: FakeClock) -> None:
    """An ignored exception counts as neither outcome: the failure run continues across it."""
    b = CircuitBreaker("ign", clock=clock, failure_threshold=3, ignore_exceptions=(KeyError,))
    fail(b, 2)
    fail(b, 5, KeyError)
    assert b.state is CLOSED
    fail(b)
    assert b.state is OPEN
    assert b.stats().ignored == 5


def test_failure_threshold_none_never_trips_on_count(clock: FakeClock) -> None:
    """Without a failure threshold (and no rates) no number of failures opens it."""
    b = CircuitBreaker("none", clock=clock, failure_threshold=None)
    fail(b, 200)
    assert b.state is CLOSED


# -- failure rate -------------------------------------------------------------------------------


def test_failure_rate_needs_minimum_calls_in_time_window(clock: FakeClock) -> None:
    """The rate trips only once the time window holds minimum_calls calls."""
    b = CircuitBreaker(
        "rate", clock=clock, failure_threshold=None, failure_rate_threshold=0.5, minimum_calls=10
    )
    fail(b, 9)
    assert b.state is CLOSED
    fail(b)
    assert b.state is OPEN


def test_failure_rate_below_threshold_stays_closed(clock: FakeClock) -> None:
    """A rate just under the threshold does not trip; reaching it does."""
    b = CircuitBreaker(
        "rate", clock=clock, failure_threshold=None, failure_rate_threshold=0.5, minimum_calls=10
    )
    succeed(b, 6)
    fail(b, 5)  # 5 / 11 < 0.5
    assert b.state is CLOSED
    fail(b)  # 6 / 12 == 0.5
    assert b.state is OPEN


@pytest.mark.parametrize(
    ("threshold", "calls"), [(0.5, 10), (0.07, 100), (0.14, 50), (0.28, 25), (0.55, 100)]
)
def test_regression_failure_rate_exactly_at_threshold_trips(
    clock: FakeClock, threshold: float, calls: int
) -> None:
    """Regression: a failure rate exactly at the threshold trips it (0.28 * 25 > 7 in floats)."""
    # `failures >= threshold * calls` missed exact hits when the product rounded up.
    failures = round(threshold * calls)
    assert failures / calls == threshold
    b = CircuitBreaker(
        "exact",
        clock=clock,
        failure_threshold=None,
        failure_rate_threshold=threshold,
        minimum_calls=calls,
    )
    succeed(b, calls - failures)
    fail(b, failures - 1)
    assert b.state is CLOSED
    fail(b)
    assert b.state is OPEN


@pytest.mark.parametrize(("gap_windows", "expected"), [(0, OPEN), (1, CLOSED)])
def test_failure_rate_forgets_failures_older_than_the_window(
    clock: FakeClock, gap_windows: int, expected: CircuitState
) -> None:
    """Failures older than monitoring_window no longer count towards the rate."""
    window = 30.0
    b = CircuitBreaker(
        "age",
        clock=clock,
        failure_threshold=None,
        failure_rate_threshold=0.5,
        minimum_calls=10,
        monitoring_window=window,
    )
    fail(b, 9)
    clock.advance(gap_windows * window)
    succeed(b, 9)
    fail(b)  # 10 / 19 in the window without the gap; 1 / 10 after it
    assert b.state is expected


def test_failure_rate_over_count_window(clock: FakeClock) -> None:
    """With a count window the rate is over the last window_size calls, whatever their age."""
    b = CircuitBreaker(
        "count",
        clock=clock,
        failure_threshold=None,
        failure_rate_threshold=0.5,
        minimum_calls=10,
        window_type=WindowType.COUNT,
        window_size=10,
    )
    fail(b, 4)
    clock.advance(10_000.0)  # time does not age a count window
    succeed(b, 20)  # ... but newer calls push the failures out
    fail(b, 4)  # last 10: 6 successes, 4 failures
    assert b.state is CLOSED
    fail(b)  # last 10: 5 successes, 5 failures
    assert b.state is OPEN


def test_count_window_minimum_calls_below_size(clock: FakeClock) -> None:
    """minimum_calls smaller than the count window trips before the window is full."""
    b = CircuitBreaker(
        "count",
        clock=clock,
        failure_threshold=None,
        failure_rate_threshold=1.0,
        minimum_calls=3,
        window_type="count",  # type: ignore[arg-type]
        window_size=50,
    )
    fail(b, 2)
    assert b.state is CLOSED
    fail(b)
    assert b.state is OPEN


def test_regression_count_window_minimum_calls_clamped_to_size(clock: FakeClock) -> None:
    """Regression: a count window smaller than minimum_calls can still trip on its rate."""
    # minimum_calls (default 20) > window_size: the window could never hold enough calls.
    b = CircuitBreaker(
        "small",
        clock=clock,
        failure_threshold=None,
        failure_rate_threshold=0.5,
        window_type=WindowType.COUNT,
        window_size=10,
    )
    assert b.config.minimum_calls > 10
    succeed(b, 5)
    fail(b, 4)
    assert b.state is CLOSED
    fail(b)  # 5 of the last 10
    assert b.state is OPEN


def test_window_is_cleared_when_the_breaker_closes(clock: FakeClock) -> None:
    """Failures from before an open do not count against the freshly closed breaker."""
    b = CircuitBreaker(
        "clear",
        clock=clock,
        failure_threshold=None,
        failure_rate_threshold=0.5,
        minimum_calls=4,
        recovery_timeout=1.0,
        success_threshold=1,
    )
    fail(b, 4)
    assert b.state is OPEN
    clock.advance(1.0)
    succeed(b)
    assert b.state is CLOSED
    assert b.stats().failure_rate == 0.0
    succeed(b, 2)
    fail(b)  # 1 of 4 since closing
    assert b.state is CLOSED


# -- slow calls ---------------------------------------------------------------------------------


def test_slow_call_rate_trips(clock: FakeClock) -> None:
    """A slow call bringing the slow-call rate to its threshold (minimum_calls met) trips it."""
    b = CircuitBreaker(
        "slow",
        clock=clock,
        failure_threshold=None,
        slow_call_duration=2.0,
        slow_call_rate_threshold=0.5,
        minimum_calls=4,
    )

    def lasting(seconds: float) -> Callable[[], str]:
        def fn() -> str:
            clock.advance(seconds)
            return "done"

        return fn

    b.call(lasting(1.99))  # not slow
    b.call(lasting(2.0))
    b.call(lasting(0.5))
    assert b.state is CLOSED  # 3 calls < minimum
    assert b.stats().slow_calls == 1
    b.call(lasting(5.0))  # 2 of 4 slow: rate reached
    assert b.state is OPEN
    assert b.stats().slow_calls == 2


def test_slow_failures_count_as_slow(clock: FakeClock) -> None:
    """A failure that took long is both a failure and a slow call."""
    b = CircuitBreaker("slowfail", clock=clock, slow_call_duration=1.0)

    def slow_failure() -> None:
        clock.advance(3.0)
        raise ConnectionError("late and down")

    with pytest.raises(ConnectionError):
        b.call(slow_failure)
    s = b.stats()
    assert (s.failures, s.slow_calls) == (1, 1)


async def test_slow_calls_are_measured_for_async_calls(clock: FakeClock) -> None:
    """acall measures durations with the breaker's clock too."""
    b = CircuitBreaker(
        "aslow",
        clock=clock,
        failure_threshold=None,
        slow_call_duration=1.0,
        slow_call_rate_threshold=1.0,
        minimum_calls=2,
    )

    async def slow() -> int:
        await clock.asleep(1.5)
        return 1

    await b.acall(slow)
    assert b.state is CLOSED
    await b.acall(slow)
    assert b.state is OPEN
    assert b.stats().slow_calls == 2


# -- what counts as a failure -------------------------------------------------------------------


def test_unexpected_exceptions_pass_through_as_ignored(clock: FakeClock) -> None:
    """Exceptions outside expected_exception are re-raised, counted as ignored, never trip."""
    b = CircuitBreaker("exp", clock=clock, failure_threshold=2, expected_exception=ConnectionError)
    for _ in range(10):
        with pytest.raises(ValueError, match="bad input"):
            b.call(raiser(ValueError("bad input")))
    assert b.state is CLOSED
    s = b.stats()
    assert (s.failures, s.ignored, s.calls) == (0, 10, 10)
    fail(b, 2, ConnectionRefusedError)  # a subclass of the expected one counts
    assert b.state is OPEN


def test_expected_exception_tuple(clock: FakeClock) -> None:
    """expected_exception may be a tuple; each class in it counts."""
    b = CircuitBreaker(
        "tuple", clock=clock, failure_threshold=2, expected_exception=(TimeoutError, KeyError)
    )
    fail(b, 1, TimeoutError)
    fail(b, 1, KeyError)
    assert b.state is OPEN


def test_ignore_exceptions_count_as_neither(clock: FakeClock) -> None:
    """ignore_exceptions are re-raised and counted as ignored even when expected."""
    b = CircuitBreaker("ig", clock=clock, failure_threshold=1, ignore_exceptions=(LookupError,))
    fail(b, 3, KeyError)
    assert b.state is CLOSED
    assert b.stats().ignored == 3


def test_failure_condition_decides_for_expected_exceptions(clock: FakeClock) -> None:
    """With failure_condition, an expected exception counts only if the condition is true."""

    class HTTPError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(status)
            self.status = status

    b = CircuitBreaker(
        "cond",
        clock=clock,
        failure_threshold=2,
        failure_condition=lambda e: getattr(e, "status", 0) >= 500,
    )
    for _ in range(5):
        with pytest.raises(HTTPError):
            b.call(raiser(HTTPError(404)))
    assert b.state is CLOSED
    for _ in range(2):
        with pytest.raises(HTTPError):
            b.call(raiser(HTTPError(503)))
    assert b.state is OPEN
    s = b.stats()
    assert (s.ignored, s.failures) == (5, 2)


def test_regression_raising_failure_condition_does_not_leak_half_open_permit(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: a raising failure_condition keeps the caller's error and frees the trial slot."""
    # A leaked trial slot would wedge the breaker half-open and full until reset().

    def broken_condition(exc: BaseException) -> bool:
        raise RuntimeError("condition bug")

    b = CircuitBreaker(
        "cond",
        clock=clock,
        failure_threshold=1,
        recovery_timeout=1.0,
        half_open_max_calls=1,
        failure_condition=broken_condition,
    )
    with caplog.at_level(logging.ERROR, logger="sage_resilience"):
        with pytest.raises(ConnectionError):
            b.call(raiser(ConnectionError("down")))
    assert "condition bug" in caplog.text
    assert b.state is OPEN  # an expected exception with an unusable condition counts
    clock.advance(1.0)
    with pytest.raises(ConnectionError):
        b.call(raiser(ConnectionError("still down")))
    assert b.state is OPEN  # the trial failed and re-opened the breaker, no slot held
    clock.advance(1.0)
    assert b.call(ok) == "ok"


def test_raising_classifier_keeps_the_callers_exception(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A registered classifier that raises is logged; the call's error stands and counts."""

    class Odd(Exception):
        pass

    def classifier(exc: BaseException) -> None:
        if isinstance(exc, Odd):
            raise RuntimeError("classifier bug")

    b = CircuitBreaker("cls", clock=clock, failure_threshold=1)
    register_classifier(classifier)
    try:
        with caplog.at_level(logging.ERROR, logger="sage_resilience"):
            fail(b, 1, Odd)
    finally:
        unregister_classifier(classifier)
    assert "classifier bug" in caplog.text
    assert b.state is OPEN


@pytest.mark.parametrize(
    "exc",
    [
        type("BadRequest", (PermanentError,), {})("400"),
        type("Refused", (RejectedError,), {})("nope", name="inner", reason="test"),
        CircuitBreakerOpenError("inner", 3.0),
    ],
    ids=["permanent", "rejected", "breaker_open"],
)
def test_permanent_and_rejected_errors_never_count(clock: FakeClock, exc: Exception) -> None:
    """PermanentError and RejectedError (e.g. an inner breaker's refusal) count as ignored."""
    b = CircuitBreaker("outer", clock=clock, failure_threshold=1)
    for _ in range(3):
        with pytest.raises(type(exc)):
            b.call(raiser(exc))
    assert b.state is CLOSED
    s = b.stats()
    assert (s.failures, s.ignored) == (0, 3)


def test_transient_marker_counts_as_failure(clock: FakeClock) -> None:
    """An exception marked TransientError is a failure."""
    b = CircuitBreaker("tr", clock=clock, failure_threshold=1)
    fail(b, 1, type("Flaky", (TransientError,), {}))
    assert b.state is OPEN


# -- cancellation -------------------------------------------------------------------------------


async def _cancel_inside(b: CircuitBreaker, *, decorated: bool = False) -> None:
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    runner = b(hang)() if decorated else b.acall(hang)
    task = asyncio.ensure_future(runner)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("listen", [False, True], ids=["fast", "general"])
@pytest.mark.parametrize("decorated", [False, True], ids=["acall", "decorator"])
async def test_cancelled_call_counts_as_neither(
    clock: FakeClock, listen: bool, decorated: bool
) -> None:
    """A cancelled call is not a success, failure nor ignored: the call total is unchanged."""
    events: list[Event] = []
    b = CircuitBreaker("cancel", clock=clock, listeners=[events.append] if listen else [])
    succeed(b)
    before = b.stats()
    await _cancel_inside(b, decorated=decorated)
    after = b.stats()
    assert after == before
    assert not any(isinstance(e, BreakerOutcome) and e.outcome != "success" for e in events)


def test_sync_cancellation_and_interrupts_count_as_neither(clock: FakeClock) -> None:
    """CancelledError, KeyboardInterrupt and SystemExit raised through call() count nowhere."""
    b = CircuitBreaker("abort", clock=clock, failure_threshold=1)
    for exc in (asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1)):
        with pytest.raises(type(exc)):
            b.call(raiser(exc))
    assert b.state is CLOSED
    assert b.stats().calls == 0


async def test_cancelled_trial_releases_its_half_open_slot(clock: FakeClock) -> None:
    """A trial cancelled in half-open gives its slot back, so the next caller gets a trial."""
    b = CircuitBreaker(
        "trial", clock=clock, failure_threshold=1, recovery_timeout=5.0, half_open_max_calls=1
    )
    to_half_open(b, clock)
    before = b.stats()
    await _cancel_inside(b)
    assert b.state is HALF_OPEN
    assert b.stats().calls == before.calls
    assert await b.acall(asyncio.sleep, 0, "trial") == "trial"


# -- half-open ----------------------------------------------------------------------------------


def test_half_open_admits_success_threshold_trials_by_default(clock: FakeClock) -> None:
    """Half-open admits success_threshold calls at once; the next gets retry_after 0.0."""
    b = CircuitBreaker("ho", clock=clock, failure_threshold=1, success_threshold=3)
    to_half_open(b, clock)
    permits = [b.acquire() for _ in range(b.config.success_threshold)]
    with pytest.raises(CircuitBreakerOpenError) as info:
        b.acquire()
    err = info.value
    assert err.retry_after == 0.0
    assert err.reason == "half_open_full"
    assert err.name == "ho"
    assert b.state is HALF_OPEN
    for p in permits:
        b.on_success(p)
    assert b.state is CLOSED


def test_half_open_max_calls_overrides_the_default(clock: FakeClock) -> None:
    """half_open_max_calls sets the number of concurrent trials independently."""
    b = CircuitBreaker(
        "ho1", clock=clock, failure_threshold=1, success_threshold=3, half_open_max_calls=1
    )
    to_half_open(b, clock)
    p = b.acquire()
    assert b.try_acquire() is None
    b.on_success(p)
    assert b.state is HALF_OPEN  # 1 of 3 successes
    p = b.acquire()  # the slot was freed
    b.on_success(p)
    b.on_success(b.acquire())
    assert b.state is CLOSED


def test_any_failure_in_half_open_reopens(clock: FakeClock) -> None:
    """One failed trial re-opens the breaker, even after a successful one."""
    b = CircuitBreaker("reopen", clock=clock, failure_threshold=1, recovery_timeout=7.0)
    to_half_open(b, clock)
    p1, p2 = b.acquire(), b.acquire()
    b.on_success(p1)
    b.on_failure(p2)
    assert b.state is OPEN
    assert b.retry_after == 7.0


def test_ignored_trial_frees_its_slot_without_counting(clock: FakeClock) -> None:
    """An ignored trial neither closes nor re-opens, and frees its slot."""
    b = CircuitBreaker(
        "igtrial",
        clock=clock,
        failure_threshold=1,
        half_open_max_calls=1,
        success_threshold=1,
        expected_exception=ConnectionError,
    )
    to_half_open(b, clock)
    with pytest.raises(ValueError):
        b.call(raiser(ValueError("bad input")))
    assert b.state is HALF_OPEN
    succeed(b)
    assert b.state is CLOSED


def test_success_threshold_successes_close(clock: FakeClock) -> None:
    """Exactly success_threshold successful trials close the breaker."""
    b = CircuitBreaker("close", clock=clock, failure_threshold=1, success_threshold=3)
    to_half_open(b, clock)
    succeed(b, 2)
    assert b.state is HALF_OPEN
    succeed(b)
    assert b.state is CLOSED


def test_state_reports_half_open_once_recovery_timeout_elapsed(clock: FakeClock) -> None:
    """The state property moves an open breaker to HALF_OPEN when its timeout has elapsed."""
    events: list[Event] = []
    b = CircuitBreaker("st", clock=clock, failure_threshold=1, recovery_timeout=30.0)
    b.add_listener(events.append)
    trip(b)
    clock.advance(29.9)
    assert b.state is OPEN
    clock.advance(0.1)
    assert b.state is HALF_OPEN
    changes = [
        (e.old_state, e.new_state, e.reason) for e in events if isinstance(e, BreakerStateChanged)
    ]
    assert changes[-1] == ("open", "half_open", "recovery_timeout_elapsed")


def test_zero_recovery_timeout_goes_half_open_at_once(clock: FakeClock) -> None:
    """With recovery_timeout 0 the next call after opening is a trial."""
    b = CircuitBreaker(
        "zero", clock=clock, failure_threshold=1, recovery_timeout=0.0, success_threshold=1
    )
    fail(b)
    assert b.state is HALF_OPEN
    succeed(b)
    assert b.state is CLOSED


# -- stale permits ------------------------------------------------------------------------------


def test_stale_permits_cannot_close_or_reopen_half_open(clock: FakeClock) -> None:
    """Outcomes of permits from before a transition are counted but never move half-open."""
    b = CircuitBreaker(
        "stale", clock=clock, failure_threshold=2, success_threshold=2, recovery_timeout=10.0
    )
    stale = [b.acquire() for _ in range(4)]
    trip(b)
    clock.advance(10.0)
    assert b.state is HALF_OPEN
    trials = [b.acquire(), b.acquire()]
    b.on_success(stale[0])
    b.on_success(stale[1])
    assert b.state is HALF_OPEN
    b.on_failure(stale[2])
    assert b.state is HALF_OPEN
    b.release(stale[3])
    with pytest.raises(CircuitBreakerOpenError, match="open"):
        b.acquire()  # both slots still taken by the real trials
    s = b.stats()
    assert (s.successes, s.failures) == (2, 3)
    for p in trials:
        b.on_success(p)
    assert b.state is CLOSED


def test_late_trial_after_close_does_not_count_as_trial(clock: FakeClock) -> None:
    """A trial that finishes after the breaker closed cannot reopen or re-close it."""
    b = CircuitBreaker(
        "late", clock=clock, failure_threshold=1, success_threshold=1, half_open_max_calls=2
    )
    to_half_open(b, clock)
    p1, p2 = b.acquire(), b.acquire()
    b.on_success(p1)
    assert b.state is CLOSED
    b.on_failure(p2)  # permit from the half-open generation
    assert b.state is CLOSED
    assert b.stats().failures == 2


# -- errors, reset, force_open, stats -----------------------------------------------------------


def test_open_error_carries_name_and_seconds_until_trial(clock: FakeClock) -> None:
    """CircuitBreakerOpenError says which breaker refused and how long until a trial."""
    b = CircuitBreaker("api", clock=clock, failure_threshold=1, recovery_timeout=60.0)
    trip(b)
    clock.advance(25.0)
    with pytest.raises(CircuitBreakerOpenError) as info:
        b.call(ok)
    assert info.value.name == "api"
    assert info.value.retry_after == pytest.approx(35.0)
    assert info.value.reason == "breaker_open"
    assert isinstance(info.value, RejectedError)
    assert b.retry_after == pytest.approx(35.0)


def test_reset_closes_and_zeroes_counts(clock: FakeClock) -> None:
    """reset() closes an open breaker and zeroes every count."""
    b = CircuitBreaker("r", clock=clock, failure_threshold=2)
    succeed(b, 3)
    trip(b)
    with pytest.raises(CircuitBreakerOpenError):
        b.call(ok)
    clock.advance(1.0)
    b.reset()
    assert b.state is CLOSED
    s = b.stats()
    assert (s.calls, s.successes, s.failures, s.ignored, s.rejected, s.slow_calls) == (0,) * 6
    assert s.last_failure_at is None
    assert s.state_since == clock.now()
    fail(b)  # the failure run restarted too
    assert b.state is CLOSED


def test_force_open_stays_open_until_reset(clock: FakeClock) -> None:
    """force_open() rejects with retry_after None however long it waits, until reset()."""
    b = CircuitBreaker("f", clock=clock, recovery_timeout=1.0)
    b.force_open()
    clock.advance(1_000_000.0)
    assert b.state is OPEN
    assert b.retry_after is None
    assert b.stats().retry_after is None
    with pytest.raises(CircuitBreakerOpenError) as info:
        b.call(ok)
    assert info.value.retry_after is None
    b.reset()
    assert b.state is CLOSED
    succeed(b)


@pytest.mark.parametrize("state", [OPEN, HALF_OPEN])
def test_force_open_from_other_states(clock: FakeClock, state: CircuitState) -> None:
    """force_open() works from open (pinning it) and half-open (dropping trials)."""
    b = CircuitBreaker("f2", clock=clock, failure_threshold=1, recovery_timeout=5.0)
    trip(b)
    if state is HALF_OPEN:
        clock.advance(5.0)
        assert b.state is HALF_OPEN
        p = b.acquire()
    b.force_open()
    clock.advance(50.0)
    assert b.state is OPEN
    if state is HALF_OPEN:
        b.on_success(p)
        assert b.state is OPEN


def test_stats_fields_and_sums(clock: FakeClock) -> None:
    """stats() reports every field with the right values, and calls is the sum of outcomes."""
    b = CircuitBreaker(
        "stats",
        clock=clock,
        failure_threshold=3,
        recovery_timeout=10.0,
        ignore_exceptions=(KeyError,),
        slow_call_duration=5.0,
    )
    start = clock.now()
    succeed(b, 3)
    fail(b, 1, KeyError)
    clock.advance(1.0)
    fail(b)
    s = b.stats()
    assert (s.name, s.state) == ("stats", "closed")
    assert (s.successes, s.failures, s.ignored, s.rejected, s.slow_calls) == (3, 1, 1, 0, 0)
    assert s.calls == 5
    assert s.failure_rate == 1 / 4
    assert s.last_failure_at == start + 1.0
    assert s.state_since == start
    assert s.retry_after == 0.0
    clock.advance(2.0)
    fail(b, 2)
    opened = clock.now()
    with pytest.raises(CircuitBreakerOpenError):
        b.call(ok)
    clock.advance(4.0)
    s = b.stats()
    assert s.state == "open"
    assert (s.successes, s.failures, s.ignored, s.rejected) == (3, 3, 1, 1)
    assert s.calls == 8
    assert s.last_failure_at == opened
    assert s.state_since == opened
    assert s.retry_after == pytest.approx(6.0)
    assert s.as_dict()["calls"] == 8
    assert set(s.as_dict()) == {
        "name", "state", "calls", "successes", "failures", "ignored", "rejected",
        "slow_calls", "failure_rate", "last_failure_at", "state_since", "retry_after",
    }  # fmt: skip


def test_stats_state_and_retry_after_agree(clock: FakeClock) -> None:
    """stats() of an open breaker past its timeout says half_open with retry_after 0."""
    b = CircuitBreaker("agree", clock=clock, failure_threshold=1, recovery_timeout=3.0)
    trip(b)
    clock.advance(3.0)
    s = b.stats()
    assert (s.state, s.retry_after) == ("half_open", 0.0)


def test_try_acquire_counts_rejections(clock: FakeClock) -> None:
    """try_acquire returns None instead of raising, and the refusal is counted."""
    b = CircuitBreaker("try", clock=clock, failure_threshold=1)
    trip(b)
    assert b.try_acquire() is None
    assert b.stats().rejected == 1
    check_sums(b)


# -- update_config ------------------------------------------------------------------------------


def test_update_config_changes_thresholds(clock: FakeClock) -> None:
    """A swapped config's threshold applies to the next outcome."""
    b = CircuitBreaker("u", clock=clock, failure_threshold=5)
    fail(b)
    b.update_config(dataclasses.replace(b.config, failure_threshold=2))
    fail(b)
    assert b.state is OPEN


@pytest.mark.parametrize(
    "change",
    [
        {"monitoring_window": 10.0},
        {"window_type": WindowType.COUNT, "window_size": 7},
        {"window_size": 3},
    ],
    ids=["duration", "to_count", "buckets"],
)
def test_update_config_window_shape_keeps_cumulative_counts(
    clock: FakeClock, change: dict[str, Any]
) -> None:
    """Changing the window's shape starts an empty window but keeps cumulative counts."""
    b = CircuitBreaker(
        "shape",
        clock=clock,
        failure_threshold=10,
        slow_call_duration=1.0,
        ignore_exceptions=(KeyError,),
    )
    succeed(b, 4)
    fail(b, 2)
    fail(b, 1, KeyError)
    before = b.stats()
    b.update_config(dataclasses.replace(b.config, **change))
    after = b.stats()
    assert after.failure_rate == 0.0
    assert dataclasses.replace(after, failure_rate=before.failure_rate) == before
    succeed(b)
    fail(b)
    s = b.stats()
    assert (s.successes, s.failures, s.ignored) == (5, 3, 1)
    assert s.failure_rate == 0.5


def test_regression_update_config_keeps_consecutive_failure_run(clock: FakeClock) -> None:
    """Regression: swapping the window shape does not break a running failure run."""
    # The run was tracked against the replaced window's success total.
    b = CircuitBreaker("run", clock=clock, failure_threshold=3)
    succeed(b)
    fail(b, 2)
    b.update_config(dataclasses.replace(b.config, monitoring_window=5.0))
    fail(b)
    assert b.state is OPEN


def test_regression_update_config_success_after_swap_breaks_run(clock: FakeClock) -> None:
    """Regression: after a window swap a success must still end the failure run."""
    b = CircuitBreaker("run2", clock=clock, failure_threshold=2)
    succeed(b)
    fail(b)
    b.update_config(dataclasses.replace(b.config, window_type=WindowType.COUNT))
    succeed(b)
    fail(b)
    assert b.state is CLOSED


def test_update_config_recomputes_open_duration(clock: FakeClock) -> None:
    """A new recovery_timeout applies to an open breaker, counted from when it opened."""
    b = CircuitBreaker("rt", clock=clock, failure_threshold=1, recovery_timeout=60.0)
    trip(b)
    clock.advance(5.0)
    b.update_config(dataclasses.replace(b.config, recovery_timeout=20.0))
    assert b.retry_after == pytest.approx(15.0)
    clock.advance(15.0)
    assert b.state is HALF_OPEN


def test_update_config_enabling_slow_calls_leaves_fast_path(clock: FakeClock) -> None:
    """After a swap that sets slow_call_duration, slow successes are measured and counted."""
    b = CircuitBreaker("fastslow", clock=clock)
    succeed(b)
    b.update_config(dataclasses.replace(b.config, slow_call_duration=1.0))

    def slow() -> int:
        clock.advance(2.0)
        return 1

    b.call(slow)
    assert b.stats().slow_calls == 1


def test_update_config_rejects_other_types(clock: FakeClock) -> None:
    """update_config takes a CircuitBreakerConfig only."""
    b = CircuitBreaker("ut", clock=clock)
    with pytest.raises(TypeError, match="config"):
        b.update_config({"failure_threshold": 1})  # type: ignore[arg-type]


# -- callbacks and listeners --------------------------------------------------------------------


def test_state_callbacks_fire_with_or_without_the_name(clock: FakeClock) -> None:
    """State callbacks fire on entering their state, given the name if they take an argument."""
    seen: list[object] = []
    b = CircuitBreaker(
        "cb",
        clock=clock,
        failure_threshold=1,
        recovery_timeout=5.0,
        success_threshold=1,
        on_open=lambda: seen.append("open"),
        on_half_open=lambda name: seen.append(("half_open", name)),
        on_close=lambda *args: seen.append(("close", *args)),
    )
    fail(b)
    clock.advance(5.0)
    succeed(b)
    assert seen == ["open", ("half_open", "cb"), ("close", "cb")]


def test_raising_callback_never_breaks_the_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A state callback that raises is logged; the call's own result or exception stands."""

    def explode(*_: object) -> None:
        raise RuntimeError("callback bug")

    b = CircuitBreaker(
        "cbx",
        clock=clock,
        failure_threshold=1,
        recovery_timeout=1.0,
        success_threshold=1,
        on_open=explode,
        on_half_open=explode,
        on_close=explode,
    )
    with caplog.at_level(logging.ERROR, logger="sage_resilience"):
        fail(b)
        clock.advance(1.0)
        assert b.call(ok) == "ok"
    assert b.state is CLOSED
    logged = [r for r in caplog.records if "state callback" in r.getMessage()]
    assert len(logged) == 3


def test_listeners_receive_transition_rejection_and_outcome_events(clock: FakeClock) -> None:
    """Listeners get outcome, rejection and transition events with the name and clock time."""
    events: list[Event] = []
    b = CircuitBreaker(
        "ev",
        clock=clock,
        failure_threshold=2,
        recovery_timeout=4.0,
        success_threshold=1,
        ignore_exceptions=(KeyError,),
        listeners=[events.append],
    )
    succeed(b)
    fail(b, 1, KeyError)
    fail(b, 2)
    with pytest.raises(CircuitBreakerOpenError):
        b.call(ok)
    clock.advance(4.0)
    succeed(b)

    assert all(e.policy == "ev" for e in events)
    outcomes = [(e.outcome, e.exception) for e in events if isinstance(e, BreakerOutcome)]
    assert outcomes == [
        ("success", None),
        ("ignored", "KeyError"),
        ("failure", "ConnectionError"),
        ("failure", "ConnectionError"),
        ("success", None),
    ]
    rejected = [e for e in events if isinstance(e, CallRejected)]
    assert len(rejected) == 1
    assert (rejected[0].kind, rejected[0].reason) == ("circuit_breaker", "breaker_open")
    assert rejected[0].retry_after == pytest.approx(4.0)
    changes = [e for e in events if isinstance(e, BreakerStateChanged)]
    assert [(e.old_state, e.new_state) for e in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert changes[0].reason == "consecutive_failures"
    assert changes[0].time == clock.now() - 4.0
    assert changes[2].time == clock.now()


def test_half_open_full_rejection_event(clock: FakeClock) -> None:
    """A refusal because every trial slot is taken is reported with reason half_open_full."""
    events: list[Event] = []
    b = CircuitBreaker("full", clock=clock, failure_threshold=1, half_open_max_calls=1)
    b.add_listener(events.append)
    to_half_open(b, clock)
    b.acquire()
    assert b.try_acquire() is None
    rej = [e for e in events if isinstance(e, CallRejected)]
    assert [(e.reason, e.retry_after) for e in rej] == [("half_open_full", 0.0)]


def test_raising_listener_never_breaks_the_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising listener is logged; other listeners still get events; the call is unchanged."""
    got: list[Event] = []

    def bad(event: Event) -> None:
        raise RuntimeError("listener bug")

    b = CircuitBreaker("lx", clock=clock, failure_threshold=1, listeners=[bad, got.append])
    with caplog.at_level(logging.ERROR, logger="sage_resilience"):
        assert b.call(ok) == "ok"
        fail(b)
        with pytest.raises(CircuitBreakerOpenError):
            b.call(ok)
    assert "listener bug" in caplog.text
    assert [type(e) for e in got] == [
        BreakerOutcome,
        BreakerOutcome,
        BreakerStateChanged,
        CallRejected,
    ]


def test_outcome_event_reports_duration_and_slowness(clock: FakeClock) -> None:
    """BreakerOutcome carries the measured duration and whether the call was slow."""
    events: list[Event] = []
    b = CircuitBreaker("dur", clock=clock, slow_call_duration=1.0, listeners=[events.append])

    def slow() -> None:
        clock.advance(1.5)

    b.call(slow)
    (event,) = events
    assert isinstance(event, BreakerOutcome)
    assert (event.duration, event.slow) == (1.5, True)


# -- fast path vs general path ------------------------------------------------------------------


def _scenario(
    b: CircuitBreaker, clock: FakeClock, driver: str, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """Drive ``b`` through a random but reproducible mix; return (state, stats) after each call."""
    rnd = random.Random(seed)
    trace = []
    wrapped = b(_outcome)

    async def aoutcome(kind: str) -> str:
        return _outcome(kind)

    awrapped = b(aoutcome)
    loop = asyncio.new_event_loop()
    try:
        for _ in range(600):
            kind = rnd.choice(["ok", "ok", "ok", "ok", "fail", "fail", "ignored", "cancel"])
            try:
                if driver == "call":
                    b.call(_outcome, kind)
                elif driver == "decorator":
                    wrapped(kind)
                elif driver == "acall":
                    loop.run_until_complete(b.acall(aoutcome, kind))
                else:
                    loop.run_until_complete(awrapped(kind))
            except (ConnectionError, KeyError, CircuitBreakerOpenError, asyncio.CancelledError):
                pass
            if rnd.random() < 0.3:
                clock.advance(rnd.choice([0.5, 1.0, 3.0, 11.0]))
            trace.append((b.state.value, b.stats().as_dict()))
    finally:
        loop.close()
    return trace


def _outcome(kind: str) -> str:
    if kind == "fail":
        raise ConnectionError("down")
    if kind == "ignored":
        raise KeyError("missing")
    if kind == "cancel":
        raise asyncio.CancelledError
    return kind


@pytest.mark.parametrize("driver", ["call", "decorator", "acall", "adecorator"])
@pytest.mark.parametrize("window", [WindowType.TIME, WindowType.COUNT])
def test_fast_and_general_paths_count_identically(driver: str, window: WindowType) -> None:
    """The same calls give the same states and stats with and without a listener attached."""
    config = CircuitBreakerConfig(
        failure_threshold=3,
        failure_rate_threshold=0.4,
        minimum_calls=8,
        monitoring_window=10.0,
        recovery_timeout=10.0,
        ignore_exceptions=(KeyError,),
        window_type=window,
        window_size=20 if window is WindowType.COUNT else 5,
    )
    clock_a, clock_b = FakeClock(1000.0), FakeClock(1000.0)
    fast = CircuitBreaker("p", config, clock=clock_a)
    events: list[Event] = []
    general = CircuitBreaker("p", config, clock=clock_b, listeners=[events.append])
    if window is WindowType.TIME:
        assert fast._fast_gen >= 0  # the lock-free path is really taken...
    assert general._fast_gen < 0  # ...and here it is not
    trace_fast = _scenario(fast, clock_a, driver, seed=7)
    trace_general = _scenario(general, clock_b, driver, seed=7)
    assert trace_fast == trace_general
    states = {s for s, _ in trace_fast}
    assert states >= {"closed", "open"}  # the scenario really exercised transitions
    assert any(isinstance(e, CallRejected) for e in events)


# -- decorator ----------------------------------------------------------------------------------


def test_decorator_wraps_sync_and_async_and_exposes_breaker(clock: FakeClock) -> None:
    """The breaker decorates sync and async functions, keeps their metadata and exposes itself."""
    b = CircuitBreaker("deco", clock=clock)

    @b
    def add(x: int, y: int) -> int:
        """Add."""
        return x + y

    @b
    async def aadd(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5
    assert asyncio.run(aadd(2, y=5)) == 7
    assert add.breaker is b  # type: ignore[attr-defined]
    assert aadd.breaker is b  # type: ignore[attr-defined]
    assert add.__name__ == "add" and add.__doc__ == "Add."
    assert asyncio.iscoroutinefunction(aadd)
    assert b.stats().successes == 2


def test_decorating_a_non_callable_is_a_type_error(clock: FakeClock) -> None:
    """Decorating something that is not callable fails at once."""
    with pytest.raises(TypeError):
        CircuitBreaker("nc", clock=clock)(42)  # type: ignore[call-overload]


async def test_seed_external_api_example(clock: FakeClock) -> None:
    """The seed's async example: 5 failures open 'external_api'; calls are refused for 60 s."""

    @circuit_breaker("external_api", failure_threshold=5, recovery_timeout=60, clock=clock)
    async def call_external_api() -> str:
        raise ConnectionError("api down")

    for _ in range(5):
        with pytest.raises(ConnectionError):
            await call_external_api()
    with pytest.raises(CircuitBreakerOpenError) as info:
        await call_external_api()
    assert info.value.retry_after == pytest.approx(60.0)
    assert call_external_api.breaker.state is OPEN  # type: ignore[attr-defined]


def test_repr_names_breaker_and_state(clock: FakeClock) -> None:
    """repr shows the name and the state."""
    b = CircuitBreaker("rep", clock=clock)
    assert repr(b) == "CircuitBreaker(name='rep', state=closed)"


# -- memory -------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [WindowType.TIME, WindowType.COUNT])
def test_breaker_state_does_not_grow_with_calls(clock: FakeClock, window: WindowType) -> None:
    """100k calls leave the breaker's storage its built size and allocate under 100 KB."""
    b = CircuitBreaker(
        "mem",
        clock=clock,
        failure_threshold=None,
        ignore_exceptions=(KeyError,),
        window_type=window,
    )
    w = b._window

    def shape() -> tuple[int, ...]:
        if isinstance(w, TimeWindow):
            return (len(w._pos_succ), len(w._pos_fail), len(w._pos_slow))
        return (len(w._ring),)

    before = shape()

    def fail_call() -> None:
        raise ConnectionError("c")

    def ignored_call() -> None:
        raise KeyError("k")

    def run(n: int) -> None:
        for i in range(n):
            r = i % 10
            try:
                if r == 0:
                    b.call(fail_call)
                elif r == 1:
                    b.call(ignored_call)
                else:
                    b.call(ok)
            except (KeyError, ConnectionError):
                pass
            if i % 100 == 0:
                clock.advance(0.7)

    run(1_000)  # warm up caches
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        run(100_000)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert b._window is w
    assert shape() == before
    assert end - start < 100_000
    assert b.stats().calls == 101_000


def test_throttling_never_counts_as_a_failure(clock: FakeClock) -> None:
    """A ThrottledError (429) is ignored by the breaker: the dependency is up, just busy."""
    from sage_resilience.core import ThrottledError

    breaker = CircuitBreaker("throttled", failure_threshold=2, clock=clock)

    def throttled() -> None:
        raise ThrottledError("429", retry_after=0.5)

    for _ in range(10):
        with pytest.raises(ThrottledError):
            breaker.call(throttled)
    stats = breaker.stats()
    assert stats.state == "closed"
    assert stats.failures == 0
    assert stats.ignored == 10


def test_open_reason_names_the_trip_and_survives_failed_trials(clock: FakeClock) -> None:
    """``open_reason`` is empty before any trip, names why the breaker opened from closed, and
    keeps that reason through failed half-open trials."""
    breaker = CircuitBreaker("reason", failure_threshold=2, recovery_timeout=1.0, clock=clock)
    assert breaker.open_reason == ""

    def fail() -> None:
        raise ConnectionError

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    assert breaker.open_reason == "consecutive_failures"
    clock.advance(1.0)
    with pytest.raises(ConnectionError):
        breaker.call(fail)  # a failed trial re-opens it
    assert breaker.state is CircuitState.OPEN
    assert breaker.open_reason == "consecutive_failures"
    breaker.reset()
    breaker.force_open()
    assert breaker.open_reason == "forced"
