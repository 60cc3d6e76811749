"""Retry: the decision core and the sync driver, decorator, call() and attempt iterator.

The async driver has its own file (``test_retry_async.py``); what is shared (configuration,
classification, delays, deadline, stats) is tested here through the sync driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import inspect
import logging
import math
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sage_resilience.core import (
    CircuitBreakerOpenError,
    Event,
    FailureKind,
    FakeClock,
    Jitter,
    OutcomeUnknownError,
    PermanentError,
    Registry,
    RejectedError,
    Retry,
    RetryAttempted,
    RetryConfig,
    RetryGaveUp,
    RetryStats,
    RetryStrategy,
    RetrySucceeded,
    ThrottledError,
    circuit_breaker,
    register_classifier,
    retry,
    unregister_classifier,
)

SEED_TABLE = {
    RetryStrategy.FIXED: [1.0, 1.0, 1.0, 1.0, 1.0],
    RetryStrategy.LINEAR: [1.0, 2.0, 3.0, 4.0, 5.0],
    RetryStrategy.EXPONENTIAL: [1.0, 2.0, 4.0, 8.0, 16.0],
    RetryStrategy.FIBONACCI: [1.0, 1.0, 2.0, 3.0, 5.0],
}


class Flaky:
    """Raises ``failures`` in turn (classes are instantiated per attempt), then returns ``result``.

    Keeps every exception it raised, the arguments of each attempt and the clock time at which
    each attempt started; ``duration`` advances the clock during each attempt.
    """

    def __init__(
        self,
        failures: list[BaseException | type[BaseException]] | None = None,
        result: Any = "ok",
        *,
        clock: FakeClock | None = None,
        duration: float = 0.0,
    ) -> None:
        self.failures = list(failures or [])
        self.result = result
        self.clock = clock
        self.duration = duration
        self.calls = 0
        self.raised: list[BaseException] = []
        self.arguments: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.started: list[float] = []
        self.exc_info_seen: list[object] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.arguments.append((args, kwargs))
        self.exc_info_seen.append(sys.exc_info()[1])
        if self.clock is not None:
            self.started.append(self.clock.now())
            if self.duration:
                self.clock.advance(self.duration)
        if self.failures:
            failure = self.failures.pop(0)
            exc = failure() if isinstance(failure, type) else failure
            self.raised.append(exc)
            raise exc
        return self.result


def always(exc: type[BaseException], n: int = 100) -> list[BaseException | type[BaseException]]:
    """``n`` failures of class ``exc``."""
    return [exc] * n


def constant(value: float) -> Callable[[], float]:
    """A random source that always draws ``value``."""
    return lambda: value


def make(clock: FakeClock, **overrides: Any) -> Retry:
    """A policy on the fake clock, jitter off unless overridden."""
    overrides.setdefault("jitter", False)
    return Retry(clock=clock, **overrides)


def frames_of(exc: BaseException) -> list[Any]:
    """The code objects along ``exc``'s traceback, outermost first."""
    return [frame.f_code for frame, _ in traceback.walk_tb(exc.__traceback__)]


def stats_tuple(policy: Retry) -> tuple[int, ...]:
    """(calls, attempts, retries, successes, failures, gave_up)."""
    s = policy.stats()
    return (s.calls, s.attempts, s.retries, s.successes, s.failures, s.gave_up)


@pytest.fixture
def classifier_cleanup() -> Iterator[list[Callable[[BaseException], FailureKind | None]]]:
    """Classifiers appended to the yielded list are unregistered after the test."""
    added: list[Callable[[BaseException], FailureKind | None]] = []
    yield added
    for c in added:
        unregister_classifier(c)


# -- defaults --------------------------------------------------------------------------------------


def test_config_defaults_are_the_seeds() -> None:
    """RetryConfig() has the seed's defaults; jitter=True is stored as Jitter.EQUAL."""
    config = RetryConfig()
    assert config.max_attempts == 3
    assert config.initial_delay == 1.0
    assert config.max_delay == 60.0
    assert config.exponential_base == 2.0
    assert config.jitter is Jitter.EQUAL
    assert config.strategy is RetryStrategy.EXPONENTIAL
    assert config.retryable_exceptions == (Exception,)
    assert config.non_retryable_exceptions == ()
    assert config.retry_condition is None
    assert config.before_retry is None
    assert config.on_exhausted is None
    assert config.retry_on_result is None
    assert config.deadline is None


def test_retry_and_policy_defaults_match_the_config_defaults() -> None:
    """retry() and Retry() build the default RetryConfig."""
    assert retry().config == RetryConfig()
    assert Retry().config == RetryConfig()
    assert retry().name == Retry().name == "retry"


def test_default_policy_sleeps_with_equal_jitter_exponential(clock: FakeClock) -> None:
    """Defaults: 3 attempts, exponential 1 s then 2 s, each scaled by EQUAL jitter 0.5 + r/2."""
    for r in (0.0, 0.5, 0.99):
        clock.sleeps.clear()
        policy = Retry(clock=clock, random=constant(r))
        fn = Flaky(always(ValueError))
        with pytest.raises(ValueError):
            policy.call(fn)
        assert fn.calls == 3
        factor = 0.5 + 0.5 * r
        assert clock.sleeps == pytest.approx([1.0 * factor, 2.0 * factor])


def test_default_retries_any_exception(clock: FakeClock) -> None:
    """By default an unmarked Exception (a ValueError, a KeyError, ...) is retried."""
    fn = Flaky([ValueError, KeyError])
    assert make(clock).call(fn) == "ok"
    assert fn.calls == 3


# -- delays through the driver ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(SEED_TABLE), ids=lambda s: s.name)
def test_seed_delay_table_is_what_the_clock_is_asked_to_sleep(
    clock: FakeClock, strategy: RetryStrategy
) -> None:
    """With jitter off, 6 attempts sleep exactly the seed's table (initial 1.0, base 2)."""
    policy = make(clock, strategy=strategy, max_attempts=6, initial_delay=1.0)
    with pytest.raises(OSError):
        policy.call(Flaky(always(OSError)))
    assert clock.sleeps == SEED_TABLE[strategy]


@pytest.mark.parametrize("strategy", list(SEED_TABLE), ids=lambda s: s.name)
def test_slept_delays_are_capped_at_max_delay(clock: FakeClock, strategy: RetryStrategy) -> None:
    """With max_delay=3 each sleep is min(3, the seed's entry)."""
    policy = make(clock, strategy=strategy, max_attempts=6, max_delay=3.0)
    with pytest.raises(OSError):
        policy.call(Flaky(always(OSError)))
    assert clock.sleeps == [min(3.0, d) for d in SEED_TABLE[strategy]]


def test_decorrelated_sleeps_follow_the_formula(clock: FakeClock) -> None:
    """DECORRELATED sleeps min(cap, U(base, 3 * previous)) with previous the last sleep."""
    r = 0.5
    policy = make(
        clock,
        strategy=RetryStrategy.DECORRELATED,
        max_attempts=5,
        max_delay=8.0,
        random=constant(r),
    )
    with pytest.raises(OSError):
        policy.call(Flaky(always(OSError)))
    expected, previous = [], 1.0
    for _ in range(4):
        previous = min(8.0, 1.0 + (3.0 * previous - 1.0) * r)
        expected.append(previous)
    assert clock.sleeps == pytest.approx(expected)


@given(seed=st.integers(0, 2**32 - 1), initial=st.floats(0.01, 5.0), extra=st.floats(0.0, 50.0))
@settings(max_examples=60)
def test_decorrelated_state_is_per_call(seed: int, initial: float, extra: float) -> None:
    """Each call's DECORRELATED chain starts afresh from the base, whatever came before."""
    clock = FakeClock()
    cap = initial + extra
    policy = make(
        clock,
        strategy=RetryStrategy.DECORRELATED,
        initial_delay=initial,
        max_delay=cap,
        max_attempts=6,
        random=random.Random(seed).random,
    )
    for _ in range(3):
        clock.sleeps.clear()
        with pytest.raises(OSError):
            policy.call(Flaky(always(OSError)))
        assert len(clock.sleeps) == 5
        previous = initial
        for d in clock.sleeps:
            assert initial <= d <= min(cap, 3.0 * previous) * (1 + 1e-12)
            previous = d


def test_zero_delay_never_calls_sleep(clock: FakeClock) -> None:
    """initial_delay=0: retries happen without any call to clock.sleep."""
    fn = Flaky([OSError, OSError])
    assert make(clock, initial_delay=0.0, jitter=True).call(fn) == "ok"
    assert fn.calls == 3
    assert clock.sleeps == []


def test_zero_delay_never_calls_sleep_even_with_a_deadline(clock: FakeClock) -> None:
    """The locked path (deadline set) also skips the sleep for a zero delay."""
    fn = Flaky([OSError, OSError])
    assert make(clock, initial_delay=0.0, deadline=10.0).call(fn) == "ok"
    assert clock.sleeps == []


# -- what is retried -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc_type",
    [KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit],
    ids=lambda t: t.__name__,
)
def test_aborts_are_never_retried(clock: FakeClock, exc_type: type[BaseException]) -> None:
    """Aborts propagate after one attempt even if BaseException is retryable; no on_exhausted."""
    exhausted: list[object] = []
    fn = Flaky(always(exc_type))
    policy = make(
        clock, retryable_exceptions=(BaseException,), on_exhausted=exhausted.append, max_attempts=5
    )
    with pytest.raises(exc_type) as info:
        policy.call(fn)
    assert info.value is fn.raised[0]
    assert fn.calls == 1
    assert clock.sleeps == []
    assert exhausted == []


def test_regression_open_breaker_error_is_not_retried(clock: FakeClock) -> None:
    """CircuitBreakerOpenError is never retried, even with BaseException retryable."""
    fn = Flaky([CircuitBreakerOpenError("db", 30.0) for _ in range(5)])
    policy = make(clock, retryable_exceptions=(BaseException,), max_attempts=5)
    with pytest.raises(CircuitBreakerOpenError):
        policy.call(fn)
    assert fn.calls == 1
    assert clock.sleeps == []


def test_regression_retry_stacked_on_breaker_surfaces_open_error(
    clock: FakeClock, registry: Registry
) -> None:
    """retry over an opened breaker surfaces CircuitBreakerOpenError without retrying it."""
    dependency = Flaky(always(OSError))

    @retry(max_attempts=5, initial_delay=1.0, jitter=False, clock=clock)
    @circuit_breaker("dep", failure_threshold=2, registry=registry, clock=clock)
    def call_dependency() -> str:
        return dependency()  # type: ignore[no-any-return]

    with pytest.raises(CircuitBreakerOpenError):
        call_dependency()
    # Two failures opened it (after sleeping 1 s), the 3rd attempt was refused: no more sleeps.
    assert dependency.calls == 2
    assert clock.sleeps == [1.0, 2.0]
    with pytest.raises(CircuitBreakerOpenError):
        call_dependency()
    assert dependency.calls == 2
    assert clock.sleeps == [1.0, 2.0]


def test_rejections_are_not_retried_by_default(clock: FakeClock) -> None:
    """Any RejectedError (our own refusal) is not retried with the default config."""
    fn = Flaky([RejectedError("busy", name="bulkhead", reason="full")])
    with pytest.raises(RejectedError):
        make(clock).call(fn)
    assert fn.calls == 1


@pytest.mark.parametrize("listed", [CircuitBreakerOpenError, RejectedError])
def test_explicitly_listed_rejections_are_retried(
    clock: FakeClock, listed: type[RejectedError]
) -> None:
    """Naming a RejectedError class in retryable_exceptions retries that rejection."""
    fn = Flaky([CircuitBreakerOpenError("db", 0.0), CircuitBreakerOpenError("db", 0.0)])
    assert make(clock, retryable_exceptions=(listed,)).call(fn) == "ok"
    assert fn.calls == 3


def test_regression_permanent_errors_are_not_retried_by_default(clock: FakeClock) -> None:
    """The seed retried validation errors; one marked PermanentError now fails after 1 attempt."""

    class ValidationError(PermanentError, ValueError):
        pass

    fn = Flaky([ValidationError("bad email")])
    with pytest.raises(ValidationError):
        make(clock).call(fn)
    assert fn.calls == 1


def test_outcome_unknown_errors_are_not_retried(clock: FakeClock) -> None:
    """A failure after the dependency may have acted (a lost reply) is never repeated."""
    fn = Flaky([OutcomeUnknownError("reply lost"), OutcomeUnknownError("reply lost")])
    with pytest.raises(OutcomeUnknownError):
        make(clock).call(fn)
    assert fn.calls == 1


def test_regression_classified_permanent_errors_are_not_retried(
    clock: FakeClock, classifier_cleanup: list[Any]
) -> None:
    """An error a classifier calls PERMANENT (unique violation) is not retried."""

    class UniqueViolation(Exception):
        sqlstate = "23505"

    class ConnectionLost(Exception):
        sqlstate = "08006"

    def by_sqlstate(exc: BaseException) -> FailureKind | None:
        state = getattr(exc, "sqlstate", "")
        return FailureKind.PERMANENT if state.startswith("23") else None

    register_classifier(by_sqlstate)
    classifier_cleanup.append(by_sqlstate)
    unique = Flaky([UniqueViolation])
    with pytest.raises(UniqueViolation):
        make(clock).call(unique)
    assert unique.calls == 1
    lost = Flaky([ConnectionLost])
    assert make(clock).call(lost) == "ok"
    assert lost.calls == 2


def test_retryable_exceptions_restrict_what_is_retried(clock: FakeClock) -> None:
    """With retryable_exceptions=(ConnectionError,) a ValueError is raised at once."""
    policy = make(clock, retryable_exceptions=(ConnectionError,))
    assert policy.call(Flaky([ConnectionResetError])) == "ok"
    fn = Flaky([ValueError])
    with pytest.raises(ValueError):
        policy.call(fn)
    assert fn.calls == 1


def test_non_retryable_exceptions_win_over_retryable(clock: FakeClock) -> None:
    """A class in non_retryable_exceptions is not retried even though it is retryable too."""
    policy = make(
        clock, retryable_exceptions=(OSError,), non_retryable_exceptions=(FileNotFoundError,)
    )
    fn = Flaky([FileNotFoundError])
    with pytest.raises(FileNotFoundError):
        policy.call(fn)
    assert fn.calls == 1
    assert policy.call(Flaky([ConnectionError])) == "ok"


def test_retry_condition_decides_for_retryable_errors(clock: FakeClock) -> None:
    """retry_condition(exc) is called with the exception; False stops, True retries."""
    seen: list[BaseException] = []

    def only_timeouts(exc: BaseException) -> bool:
        seen.append(exc)
        return isinstance(exc, TimeoutError)

    policy = make(clock, retry_condition=only_timeouts)
    fn = Flaky([TimeoutError, ValueError])
    with pytest.raises(ValueError):
        policy.call(fn)
    assert fn.calls == 2
    assert seen == fn.raised


def test_retry_condition_may_retry_permanent_errors(clock: FakeClock) -> None:
    """retry_condition has the last word: returning True retries even a PermanentError."""
    fn = Flaky([PermanentError("409 conflict")])
    assert make(clock, retry_condition=lambda exc: True).call(fn) == "ok"
    assert fn.calls == 2


def test_retry_condition_cannot_retry_aborts_or_rejections(clock: FakeClock) -> None:
    """retry_condition is not asked about aborts or (unlisted) rejections: they never retry."""
    asked: list[BaseException] = []

    def yes(exc: BaseException) -> bool:
        asked.append(exc)
        return True

    policy = make(clock, retry_condition=yes, retryable_exceptions=(BaseException,))
    for exc in (KeyboardInterrupt(), CircuitBreakerOpenError("db")):
        fn = Flaky([exc])
        with pytest.raises(type(exc)):
            policy.call(fn)
        assert fn.calls == 1
    assert asked == []


# -- throttling hints ------------------------------------------------------------------------------


def test_throttle_hint_raises_the_delay(clock: FakeClock) -> None:
    """ThrottledError(retry_after=5) makes the next sleep 5 s instead of the strategy's 1 s."""
    fn = Flaky([ThrottledError(retry_after=5.0)])
    assert make(clock).call(fn) == "ok"
    assert clock.sleeps == [5.0]


def test_throttle_hint_below_the_delay_changes_nothing(clock: FakeClock) -> None:
    """A hint shorter than the strategy's delay is a floor already met: the delay stays."""
    fn = Flaky([OSError, ThrottledError(retry_after=0.5)])
    assert make(clock).call(fn) == "ok"
    assert clock.sleeps == [1.0, 2.0]


def test_throttle_without_hint_uses_the_strategy(clock: FakeClock) -> None:
    """ThrottledError without retry_after is retried after the normal delay."""
    fn = Flaky([ThrottledError()])
    assert make(clock).call(fn) == "ok"
    assert clock.sleeps == [1.0]


def test_throttle_hint_beyond_max_delay_stops(clock: FakeClock) -> None:
    """A hint longer than max_delay stops retrying at once: no sleep, the error is raised."""
    events: list[Event] = []
    throttled = ThrottledError(retry_after=120.0)
    fn = Flaky([throttled])
    policy = make(clock, max_delay=60.0, listeners=[events.append])
    with pytest.raises(ThrottledError) as info:
        policy.call(fn)
    assert info.value is throttled
    assert fn.calls == 1
    assert clock.sleeps == []
    assert isinstance(events[-1], RetryGaveUp)
    assert events[-1].reason == "retry_after_beyond_max_delay"


# -- the exception that comes out ------------------------------------------------------------------


def test_last_exception_is_reraised_as_the_same_object_with_its_frames(clock: FakeClock) -> None:
    """The last exception propagates as the same object with its raising frame."""
    fn = Flaky([OSError("1"), OSError("2"), OSError("3")])
    with pytest.raises(OSError) as info:
        make(clock).call(fn)
    assert info.value is fn.raised[-1]
    assert str(info.value) == "3"
    frames = frames_of(info.value)
    assert frames[-1] is Flaky.__call__.__code__


def test_reraised_unchanged_on_the_locked_path_too(clock: FakeClock) -> None:
    """With a deadline (locked path) the last exception is also the same object with its frame."""
    fn = Flaky(always(OSError, 3))
    with pytest.raises(OSError) as info:
        make(clock, deadline=1000.0).call(fn)
    assert info.value is fn.raised[-1]
    assert frames_of(info.value)[-1] is Flaky.__call__.__code__


def test_non_retryable_exception_is_reraised_unchanged(clock: FakeClock) -> None:
    """A non-retryable exception propagates as the same object, raising frame included."""
    fn = Flaky([PermanentError("no")])
    with pytest.raises(PermanentError) as info:
        make(clock).call(fn)
    assert info.value is fn.raised[0]
    assert frames_of(info.value)[-1] is Flaky.__call__.__code__


def test_retried_attempt_does_not_run_inside_the_previous_failure_handler(
    clock: FakeClock,
) -> None:
    """Retried attempts run outside the previous failure's handler (no exc_info, no chaining)."""
    # Before the fix attempts 2.. ran inside the first failure's ``except`` block:
    # sys.exc_info() was the first error and it became every later error's __context__.
    fn = Flaky([OSError("1"), OSError("2"), OSError("3")])
    with pytest.raises(OSError) as info:
        make(clock).call(fn)
    assert fn.exc_info_seen == [None, None, None]
    assert info.value.__context__ is None
    assert fn.raised[1].__context__ is None


def failing_then_ok(failures: int) -> Callable[[], str]:
    """A plain function failing ``failures`` times, keeping no reference to its exceptions."""
    remaining = failures

    def fn() -> str:
        nonlocal remaining
        if remaining:
            remaining -= 1
            raise OSError("down")
        return "ok"

    return fn


def count_cyclic_garbage(run: Callable[[], object]) -> int:
    """How many unreachable objects in cycles ``run`` leaves for the cycle collector."""
    gc.collect()
    gc.disable()
    try:
        run()
        return gc.collect()
    finally:
        gc.enable()


@pytest.mark.parametrize("locked", [False, True], ids=["lock-free path", "locked path"])
def test_regression_retried_calls_leave_no_reference_cycles(clock: FakeClock, locked: bool) -> None:
    """Retried calls, successful or exhausted, leave no reference cycle for the collector."""
    # Each exception -> traceback -> frame -> exception cycle was garbage for the cycle
    # collector and slowed the retry path.
    policy = make(clock, initial_delay=0.0, deadline=1e9 if locked else None)

    def succeed_after_retries() -> None:
        for _ in range(200):
            policy.call(failing_then_ok(2))

    def exhaust() -> None:
        for _ in range(200):
            with contextlib.suppress(OSError):
                policy.call(failing_then_ok(10))

    assert count_cyclic_garbage(succeed_after_retries) == 0
    assert count_cyclic_garbage(exhaust) == 0


# -- callbacks -------------------------------------------------------------------------------------


def test_before_retry_gets_the_failed_attempt_and_its_exception(clock: FakeClock) -> None:
    """before_retry(attempt, exc) runs once per retry, before the sleep, with the failure."""
    calls: list[tuple[int, BaseException | None, float]] = []
    fn = Flaky([OSError, OSError])
    policy = make(clock, before_retry=lambda n, exc: calls.append((n, exc, clock.now())))
    assert policy.call(fn) == "ok"
    assert calls == [(1, fn.raised[0], 1000.0), (2, fn.raised[1], 1001.0)]


def test_on_exhausted_runs_once_with_the_last_exception_before_it_propagates(
    clock: FakeClock,
) -> None:
    """on_exhausted(exc) runs once with the last exception, before it propagates."""
    log: list[object] = []
    fn = Flaky(always(OSError, 3))
    policy = make(
        clock,
        before_retry=lambda n, exc: log.append(("before_retry", n)),
        on_exhausted=lambda exc: log.append(("exhausted", exc)),
    )
    try:
        policy.call(fn)
    except OSError as exc:
        log.append(("raised", exc))
    assert log == [
        ("before_retry", 1),
        ("before_retry", 2),
        ("exhausted", fn.raised[-1]),
        ("raised", fn.raised[-1]),
    ]


def test_on_exhausted_not_called_on_success_or_non_retryable(clock: FakeClock) -> None:
    """on_exhausted is for running out: not for a success, nor for a non-retryable error."""
    exhausted: list[object] = []
    policy = make(clock, on_exhausted=exhausted.append)
    assert policy.call(Flaky([OSError])) == "ok"
    with pytest.raises(PermanentError):
        policy.call(Flaky([PermanentError()]))
    assert exhausted == []


# -- retry_on_result -------------------------------------------------------------------------------


def test_retry_on_result_retries_rejected_results(clock: FakeClock) -> None:
    """Rejected results are retried (before_retry gets exc=None); an accepted one returns."""
    results = iter([None, None, 42])
    before: list[tuple[int, BaseException | None]] = []
    policy = make(
        clock,
        max_attempts=5,
        retry_on_result=lambda r: r is None,
        before_retry=lambda n, exc: before.append((n, exc)),
    )
    assert policy.call(lambda: next(results)) == 42
    assert before == [(1, None), (2, None)]
    assert clock.sleeps == [1.0, 2.0]


def test_retry_on_result_returns_the_last_result_after_on_exhausted(clock: FakeClock) -> None:
    """Out of attempts on rejected results: on_exhausted(None), then the last result returns."""
    results = iter([1, 2, 3, 4])
    log: list[object] = []
    policy = make(
        clock,
        max_attempts=3,
        retry_on_result=lambda r: r < 10,
        on_exhausted=lambda exc: log.append(("exhausted", exc)),
    )
    log.append(("returned", policy.call(lambda: next(results))))
    assert log == [("exhausted", None), ("returned", 3)]
    assert stats_tuple(policy) == (1, 3, 2, 0, 1, 1)


def test_retry_on_result_mixes_with_exceptions(clock: FakeClock) -> None:
    """Exceptions and rejected results both count as failed attempts of one call."""
    outcomes: list[Any] = [OSError(), "bad", "good"]

    def fn() -> str:
        item = outcomes.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]

    policy = make(clock, max_attempts=3, retry_on_result=lambda r: r == "bad")
    assert policy.call(fn) == "good"
    assert clock.sleeps == [1.0, 2.0]


# -- deadline --------------------------------------------------------------------------------------


def test_deadline_stops_before_a_sleep_that_would_cross_it(clock: FakeClock) -> None:
    """No sleep that would end after the deadline: sleeps 1, 2 then stop (4 would cross 3.5)."""
    exhausted: list[object] = []
    events: list[Event] = []
    fn = Flaky(always(OSError), clock=clock)
    policy = make(
        clock,
        max_attempts=10,
        deadline=3.5,
        on_exhausted=exhausted.append,
        listeners=[events.append],
    )
    with pytest.raises(OSError) as info:
        policy.call(fn)
    assert fn.calls == 3
    assert clock.sleeps == [1.0, 2.0]
    assert exhausted == [info.value]
    assert isinstance(events[-1], RetryGaveUp)
    assert events[-1].reason == "deadline"
    assert policy.stats().gave_up == 1


def test_deadline_counts_the_time_spent_in_attempts(clock: FakeClock) -> None:
    """Time spent in attempts counts against the deadline."""
    fn = Flaky(always(OSError), clock=clock, duration=2.0)
    policy = make(clock, strategy=RetryStrategy.FIXED, max_attempts=10, deadline=5.0)
    with pytest.raises(OSError):
        policy.call(fn)
    assert fn.started == [1000.0, 1003.0]


def test_deadline_with_zero_delay_stops_when_time_is_up(clock: FakeClock) -> None:
    """Zero delay, 1 s attempts, deadline=3.5: attempts start at 0, 1, 2, 3 s, none at 4 s."""
    fn = Flaky(always(OSError), clock=clock, duration=1.0)
    policy = make(clock, initial_delay=0.0, max_attempts=100, deadline=3.5)
    with pytest.raises(OSError):
        policy.call(fn)
    assert fn.started == [1000.0, 1001.0, 1002.0, 1003.0]
    assert clock.sleeps == []


class OvershootingClock(FakeClock):
    """A fake clock whose sleeps overrun by ``extra`` seconds, as real sleeps may."""

    __slots__ = ("extra",)

    def __init__(self, start: float, extra: float) -> None:
        super().__init__(start)
        self.extra = extra

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.advance(self.extra)


def test_no_attempt_starts_after_the_deadline_even_if_a_sleep_overruns() -> None:
    """A sleep that overruns past the deadline ends the call instead of starting an attempt."""
    clock = OvershootingClock(start=0.0, extra=10.0)
    exhausted: list[object] = []
    fn = Flaky(always(OSError), clock=clock)
    policy = make(clock, max_attempts=5, deadline=5.0, on_exhausted=exhausted.append)
    with pytest.raises(OSError) as info:
        policy.call(fn)
    assert fn.started == [0.0]
    assert info.value is fn.raised[0]
    assert exhausted == [info.value]


def test_deadline_with_retry_on_result_returns_the_last_result(clock: FakeClock) -> None:
    """Running out of deadline on rejected results returns the last result."""
    counter = iter(range(100))
    policy = make(clock, max_attempts=100, deadline=3.5, retry_on_result=lambda r: True)
    assert policy.call(lambda: next(counter)) == 2


class RecordingClock(FakeClock):
    """A fake clock that also records when each sleep ended."""

    __slots__ = ("sleep_ends",)

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.sleep_ends: list[float] = []

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        self.sleep_ends.append(self.now())


@given(
    durations=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=20),
    deadline=st.floats(0.1, 30.0),
    initial=st.floats(0.0, 4.0),
    strategy=st.sampled_from(list(RetryStrategy)),
    jitter=st.sampled_from(list(Jitter)),
    seed=st.integers(0, 1000),
)
@settings(max_examples=150)
def test_deadline_invariants(
    durations: list[float],
    deadline: float,
    initial: float,
    strategy: RetryStrategy,
    jitter: Jitter,
    seed: int,
) -> None:
    """No attempt starts and no sleep ends after the deadline; no early give-up."""
    clock = RecordingClock(start=50.0)
    start = clock.now()
    started: list[float] = []
    attempt_durations = iter(durations)

    def fn() -> None:
        started.append(clock.now())
        clock.advance(next(attempt_durations))
        raise OSError

    policy = make(
        clock,
        strategy=strategy,
        jitter=jitter,
        initial_delay=initial,
        max_delay=max(initial, 4.0),
        max_attempts=len(durations),
        deadline=deadline,
        random=random.Random(seed).random,
    )
    with pytest.raises(OSError):
        policy.call(fn)
    assert 1 <= len(started) <= len(durations)
    assert all(t - start <= deadline for t in started)
    assert all(t - start <= deadline for t in clock.sleep_ends)
    deterministic = jitter is Jitter.NONE and strategy is not RetryStrategy.DECORRELATED
    if deterministic and len(started) < len(durations):
        next_delay = policy.config.backoff.base_delay(len(started))
        assert clock.now() - start + next_delay >= deadline


# -- stats -----------------------------------------------------------------------------------------


def test_stats_add_up(clock: FakeClock) -> None:
    """calls, attempts, retries, successes, failures and gave_up add up over mixed calls."""
    policy = make(clock, initial_delay=0.0, name="db")
    policy.call(Flaky())
    policy.call(Flaky([OSError, OSError]))
    with pytest.raises(OSError):
        policy.call(Flaky(always(OSError)))
    with pytest.raises(PermanentError):
        policy.call(Flaky([PermanentError()]))
    s = policy.stats()
    assert isinstance(s, RetryStats)
    assert s.name == "db"
    assert (s.calls, s.attempts, s.retries) == (4, 8, 4)
    assert (s.successes, s.failures, s.gave_up) == (2, 2, 1)
    assert s.calls == s.successes + s.failures
    assert s.attempts == s.calls + s.retries


def test_reset_stats_zeroes_every_counter(clock: FakeClock) -> None:
    """reset_stats() brings every count back to zero."""
    policy = make(clock, initial_delay=0.0)
    policy.call(Flaky([OSError]))
    policy.call(Flaky())
    policy.reset_stats()
    assert stats_tuple(policy) == (0, 0, 0, 0, 0, 0)


def test_stats_are_frozen(clock: FakeClock) -> None:
    """A stats snapshot cannot be modified."""
    s = make(clock).stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.calls = 5  # type: ignore[misc]


# -- decorator and call() --------------------------------------------------------------------------


def test_decorator_retries_and_exposes_the_policy(clock: FakeClock) -> None:
    """@Retry(...) retries the function, keeps its name and doc, and exposes the policy."""
    policy = make(clock)
    fn = Flaky([OSError])

    @policy
    def fetch(key: str, *, default: int = 0) -> Any:
        """Fetch a key."""
        return fn(key, default=default)

    assert fetch("k", default=7) == "ok"
    assert fn.arguments == [(("k",), {"default": 7})] * 2
    assert fetch.retry is policy  # type: ignore[attr-defined]
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch a key."
    assert not inspect.iscoroutinefunction(fetch)


def test_seed_decorator_signature_on_a_sync_function(clock: FakeClock) -> None:
    """@retry(max_attempts=3, initial_delay=1.0, strategy=EXPONENTIAL) retries a sync function."""
    fn = Flaky([OSError, OSError])

    @retry(max_attempts=3, initial_delay=1.0, strategy=RetryStrategy.EXPONENTIAL, clock=clock)
    def flaky_operation() -> Any:
        return fn()

    assert flaky_operation() == "ok"
    assert fn.calls == 3
    assert isinstance(flaky_operation.retry, Retry)  # type: ignore[attr-defined]
    assert len(clock.sleeps) == 2


def test_seed_positional_signature(clock: FakeClock) -> None:
    """retry() keeps the seed's positional argument order."""
    policy = retry(4, 0.5, 10.0, 3.0, False, RetryStrategy.LINEAR, (OSError,), (IOError,))
    config = policy.config
    assert (config.max_attempts, config.initial_delay, config.max_delay) == (4, 0.5, 10.0)
    assert (config.exponential_base, config.jitter, config.strategy) == (
        3.0,
        Jitter.NONE,
        RetryStrategy.LINEAR,
    )
    assert config.retryable_exceptions == (OSError,)
    assert config.non_retryable_exceptions == (OSError,)


def test_retry_with_a_config_and_keyword_overrides(clock: FakeClock) -> None:
    """retry(config=c, clock=..., name=...) uses c with the RetryConfig keyword overrides."""
    base = RetryConfig(max_attempts=4, jitter=False)
    policy = retry(config=base, clock=clock, name="net")
    assert policy.config.max_attempts == 4
    assert policy.config.clock is clock
    assert policy.name == "net"
    fn = Flaky(always(OSError))
    with pytest.raises(OSError):
        policy(fn)()
    assert fn.calls == 4
    assert clock.sleeps == [1.0, 2.0, 4.0]


def test_call_passes_arguments_to_every_attempt(clock: FakeClock) -> None:
    """call(fn, *args, **kwargs) hands the same arguments to each attempt, even one named fn."""
    fn = Flaky([OSError])
    assert make(clock).call(fn, 1, 2, fn="x") == "ok"
    assert fn.arguments == [((1, 2), {"fn": "x"})] * 2


def test_decorating_a_non_callable_is_a_type_error() -> None:
    """Retry()(42) raises TypeError."""
    with pytest.raises(TypeError, match="callable"):
        Retry()(42)  # type: ignore[call-overload]


def test_one_policy_counts_every_function_it_decorates(clock: FakeClock) -> None:
    """Two functions decorated by one policy share its stats."""
    policy = make(clock, initial_delay=0.0)
    a = policy(Flaky([OSError]))
    b = policy(Flaky())
    a()
    b()
    assert stats_tuple(policy) == (2, 3, 1, 2, 0, 0)


# -- attempt iterator ------------------------------------------------------------------------------


def test_for_loop_retries_a_block(clock: FakeClock) -> None:
    """for attempt in policy: with attempt: ... retries the block until it succeeds."""
    fn = Flaky([OSError, OSError])
    policy = make(clock)
    numbers = []
    result = None
    for attempt in policy:
        with attempt:
            numbers.append(attempt.number)
            result = fn()
    assert result == "ok"
    assert numbers == [1, 2, 3]
    assert clock.sleeps == [1.0, 2.0]
    assert stats_tuple(policy) == (1, 3, 2, 1, 0, 0)


def test_for_loop_reraises_the_last_exception_unchanged(clock: FakeClock) -> None:
    """Out of attempts, the block's last exception leaves the loop unchanged."""
    fn = Flaky(always(OSError))
    exhausted: list[object] = []
    policy = make(clock, max_attempts=3, on_exhausted=exhausted.append)
    with pytest.raises(OSError) as info:
        for attempt in policy:
            with attempt:
                fn()
    assert fn.calls == 3
    assert info.value is fn.raised[-1]
    assert exhausted == [info.value]
    assert frames_of(info.value)[-1] is Flaky.__call__.__code__
    assert stats_tuple(policy) == (1, 3, 2, 0, 1, 1)


def test_for_loop_lets_a_non_retryable_exception_through_at_once(clock: FakeClock) -> None:
    """A non-retryable exception in the block propagates unchanged out of the loop, first time."""
    fn = Flaky([PermanentError("no")])
    policy = make(clock)
    with pytest.raises(PermanentError) as info:
        for attempt in policy:
            with attempt:
                fn()
    assert info.value is fn.raised[0]
    assert fn.calls == 1
    assert clock.sleeps == []
    assert stats_tuple(policy) == (1, 1, 0, 0, 1, 0)


def test_for_loop_set_result_with_retry_on_result(clock: FakeClock) -> None:
    """set_result() hands the value to retry_on_result; the loop ends on an accepted value."""
    values = iter([None, None, "ready"])
    policy = make(clock, max_attempts=5, retry_on_result=lambda r: r is None)
    for attempt in policy:
        with attempt:
            attempt.set_result(next(values))
    assert attempt.result == "ready"
    assert attempt.number == 3
    assert clock.sleeps == [1.0, 2.0]


def test_for_loop_ends_with_the_last_rejected_result(clock: FakeClock) -> None:
    """When attempts run out on rejected results the loop ends and result holds the last one."""
    values = iter(range(10))
    exhausted: list[object] = []
    policy = make(
        clock, max_attempts=3, retry_on_result=lambda r: True, on_exhausted=exhausted.append
    )
    for attempt in policy:
        with attempt:
            attempt.set_result(next(values))
    assert attempt.result == 2
    assert exhausted == [None]
    assert stats_tuple(policy) == (1, 3, 2, 0, 1, 1)


def test_for_loop_respects_the_deadline(clock: FakeClock) -> None:
    """The iterator honours the deadline like the drivers (sleeps 1, 2; the 4 s one is refused)."""
    fn = Flaky(always(OSError))
    policy = make(clock, max_attempts=10, deadline=3.5)
    with pytest.raises(OSError):
        for attempt in policy:
            with attempt:
                fn()
    assert fn.calls == 3
    assert clock.sleeps == [1.0, 2.0]


def test_for_loop_zero_delay_does_not_sleep(clock: FakeClock) -> None:
    """The iterator skips the sleep for a zero delay."""
    fn = Flaky([OSError, OSError])
    for attempt in make(clock, initial_delay=0.0):
        with attempt:
            fn()
    assert fn.calls == 3
    assert clock.sleeps == []


# -- configuration updates -------------------------------------------------------------------------


def test_update_config_applies_to_the_next_call(clock: FakeClock) -> None:
    """After update_config the next call uses the new config (more attempts, new delays)."""
    policy = make(clock, max_attempts=2)
    with pytest.raises(OSError):
        policy.call(Flaky(always(OSError)))
    policy.update_config(RetryConfig(max_attempts=4, initial_delay=0.5, jitter=False, clock=clock))
    fn = Flaky(always(OSError))
    clock.sleeps.clear()
    with pytest.raises(OSError):
        policy.call(fn)
    assert fn.calls == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_update_config_to_a_deadline_config_honours_the_deadline(clock: FakeClock) -> None:
    """Swapping in a config with a deadline (the locked path) takes effect at once."""
    policy = make(clock, max_attempts=10)
    policy.update_config(RetryConfig(max_attempts=10, deadline=3.5, jitter=False, clock=clock))
    fn = Flaky(always(OSError))
    with pytest.raises(OSError):
        policy.call(fn)
    assert fn.calls == 3


def test_update_config_keeps_a_call_in_flight_on_its_config(clock: FakeClock) -> None:
    """A locked-path call in flight finishes with the config it started with."""
    policy = make(clock, max_attempts=3, deadline=100.0)
    calls = 0

    def fn() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            policy.update_config(RetryConfig(max_attempts=1, deadline=100.0, clock=clock))
        raise OSError

    with pytest.raises(OSError):
        policy.call(fn)
    assert calls == 3


def test_update_config_during_a_first_attempt_applies_to_its_retries(clock: FakeClock) -> None:
    """A swap while a call's first attempt runs governs that call's retries (documented)."""
    policy = make(clock, max_attempts=3, initial_delay=0.0)
    calls = 0

    def fn() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            policy.update_config(RetryConfig(max_attempts=2, initial_delay=0.0, clock=clock))
        raise OSError

    with pytest.raises(OSError):
        policy.call(fn)
    assert calls == 2


def test_update_config_rejects_other_types() -> None:
    """update_config(non-config) raises TypeError naming config."""
    with pytest.raises(TypeError, match="config"):
        Retry().update_config({"max_attempts": 2})  # type: ignore[arg-type]


def test_overrides_replace_fields_of_a_given_config(clock: FakeClock) -> None:
    """Retry(config, **overrides) keeps config's other fields."""
    base = RetryConfig(max_attempts=7, initial_delay=0.25, clock=clock)
    policy = Retry(base, max_attempts=2)
    assert policy.config.max_attempts == 2
    assert policy.config.initial_delay == 0.25
    assert policy.config.clock is clock
    assert base.max_attempts == 7


# -- events ----------------------------------------------------------------------------------------


def test_events_for_a_call_that_succeeds_after_retries(clock: FakeClock) -> None:
    """Retries emit RetryAttempted each, then RetrySucceeded with attempts and elapsed."""
    events: list[Event] = []
    policy = make(clock, name="db", listeners=[events.append])
    assert policy.call(Flaky([ValueError, OSError])) == "ok"
    assert events == [
        RetryAttempted(policy="db", time=1000.0, attempt=1, delay=1.0, exception="ValueError"),
        RetryAttempted(policy="db", time=1001.0, attempt=2, delay=2.0, exception="OSError"),
        RetrySucceeded(policy="db", time=1003.0, attempts=3, elapsed=3.0),
    ]


def test_events_for_a_call_that_gives_up(clock: FakeClock) -> None:
    """RetryGaveUp says attempts_exhausted or not_retryable."""
    events: list[Event] = []
    policy = make(clock, name="db", max_attempts=2, listeners=[events.append])
    with pytest.raises(OSError):
        policy.call(Flaky(always(OSError)))
    assert events[-1] == RetryGaveUp(
        policy="db", time=1001.0, attempts=2, reason="attempts_exhausted", exception="OSError"
    )
    with pytest.raises(PermanentError):
        policy.call(Flaky([PermanentError()]))
    assert events[-1] == RetryGaveUp(
        policy="db", time=1001.0, attempts=1, reason="not_retryable", exception="PermanentError"
    )
    assert sum(isinstance(e, RetryAttempted) for e in events) == 1


def test_first_attempt_success_emits_one_success_event(clock: FakeClock) -> None:
    """A call that succeeds at once produces one RetrySucceeded with attempts=1 (telemetry counts
    every call), and no retry event."""
    events: list[Event] = []
    make(clock, name="db", listeners=[events.append]).call(Flaky())
    assert events == [RetrySucceeded(policy="db", time=1000.0, attempts=1, elapsed=0.0)]


def test_a_raising_listener_never_breaks_the_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener that raises is logged; the call's outcome and other listeners are unaffected."""
    events: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    policy = make(clock, listeners=[broken, events.append])
    with caplog.at_level(logging.ERROR, logger="sage_resilience"):
        assert policy.call(Flaky([OSError])) == "ok"
        fn = Flaky(always(OSError))
        with pytest.raises(OSError) as info:
            policy.call(fn)
    assert info.value is fn.raised[-1]
    assert [type(e) for e in events] == [
        RetryAttempted,
        RetrySucceeded,
        RetryAttempted,
        RetryAttempted,
        RetryGaveUp,
    ]
    assert any("listener" in r.getMessage() for r in caplog.records)


def test_listeners_can_be_added_and_removed(clock: FakeClock) -> None:
    """add_listener starts delivery, remove_listener stops it."""
    events: list[Event] = []
    policy = make(clock)
    policy.add_listener(events.append)
    policy.call(Flaky([OSError]))
    count = len(events)
    assert count == 2
    policy.remove_listener(events.append)
    policy.call(Flaky([OSError]))
    assert len(events) == count


# -- the injected clock ----------------------------------------------------------------------------


def test_regression_time_time_not_used(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Policies read only their injected clock: no real clock read, no real time spent."""

    def forbidden(*args: object) -> float:
        raise AssertionError("a real clock was read")

    events: list[Event] = []
    policy = make(clock, max_attempts=4, deadline=100.0, listeners=[events.append])
    fn = Flaky(always(OSError))
    wall = time.perf_counter()
    for name in ("time", "monotonic", "sleep", "perf_counter"):
        monkeypatch.setattr(time, name, forbidden)
    with pytest.raises(OSError):
        policy.call(fn)
    monkeypatch.undo()
    assert time.perf_counter() - wall < 1.0
    assert clock.now() == 1000.0 + 1.0 + 2.0 + 4.0
    assert fn.calls == 4


def test_the_default_clock_is_the_system_clock() -> None:
    """Without clock= a policy uses the process's monotonic clock."""
    from sage_resilience.core import SYSTEM_CLOCK

    assert RetryConfig().clock is SYSTEM_CLOCK


# -- bad configurations ----------------------------------------------------------------------------


class NoAsleep:
    """A clock-like object lacking asleep()."""

    def now(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        pass


BAD_FIELDS = [
    ("max_attempts", 0, ValueError),
    ("max_attempts", -3, ValueError),
    ("max_attempts", 2.0, TypeError),
    ("max_attempts", True, TypeError),
    ("max_attempts", "3", TypeError),
    ("initial_delay", -1.0, ValueError),
    ("initial_delay", math.nan, ValueError),
    ("initial_delay", "1", TypeError),
    ("max_delay", -1.0, ValueError),
    ("max_delay", math.inf, ValueError),
    ("max_delay", None, TypeError),
    ("exponential_base", 0.5, ValueError),
    ("exponential_base", math.nan, ValueError),
    ("exponential_base", "2", TypeError),
    ("jitter", "some", ValueError),
    ("jitter", None, ValueError),
    ("strategy", "random", ValueError),
    ("strategy", None, ValueError),
    ("retryable_exceptions", "ValueError", TypeError),
    ("retryable_exceptions", (ValueError, 3), TypeError),
    ("retryable_exceptions", int, TypeError),
    ("non_retryable_exceptions", "KeyError", TypeError),
    ("non_retryable_exceptions", [KeyError, object], TypeError),
    ("retry_condition", True, TypeError),
    ("before_retry", "print", TypeError),
    ("on_exhausted", 1, TypeError),
    ("retry_on_result", 0.5, TypeError),
    ("deadline", 0.0, ValueError),
    ("deadline", -5.0, ValueError),
    ("deadline", math.nan, ValueError),
    ("deadline", math.inf, ValueError),
    ("deadline", "10", TypeError),
    ("clock", object(), TypeError),
    ("clock", NoAsleep(), TypeError),
    ("random", 0.5, TypeError),
]


@pytest.mark.parametrize(
    ("field", "value", "error"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS]
)
def test_bad_config_fields_are_rejected_naming_the_field(
    field: str, value: object, error: type[Exception]
) -> None:
    """A bad field raises at construction naming it, via RetryConfig, Retry and retry()."""
    with pytest.raises(error, match=field):
        RetryConfig(**{field: value})
    with pytest.raises(error, match=field):
        Retry(**{field: value})
    with pytest.raises(error, match=field):
        retry(**{field: value})


def test_initial_delay_above_max_delay_is_rejected() -> None:
    """initial_delay > max_delay raises ValueError naming both."""
    with pytest.raises(ValueError, match=r"initial_delay.*max_delay"):
        RetryConfig(initial_delay=10.0, max_delay=5.0)


def test_exception_fields_are_normalised_to_tuples() -> None:
    """A single class or a list becomes a tuple of classes."""
    config = RetryConfig(retryable_exceptions=OSError, non_retryable_exceptions=[KeyError])  # type: ignore[arg-type]
    assert config.retryable_exceptions == (OSError,)
    assert config.non_retryable_exceptions == (KeyError,)


@pytest.mark.parametrize("name", ["", 3, None])
def test_policy_name_must_be_a_non_empty_string(name: object) -> None:
    """Retry(name=...) rejects an empty or non-string name, naming the field."""
    with pytest.raises(ValueError, match="name"):
        Retry(name=name)  # type: ignore[arg-type]


def test_policy_config_must_be_a_retry_config() -> None:
    """Retry(config=<not a RetryConfig>) raises TypeError naming config."""
    with pytest.raises(TypeError, match="config"):
        Retry({"max_attempts": 3})  # type: ignore[arg-type]


def test_unknown_override_is_a_type_error() -> None:
    """A misspelt keyword is refused, not ignored."""
    with pytest.raises(TypeError, match="max_attempt"):
        Retry(max_attempt=3)


def test_config_is_frozen_and_replace_revalidates() -> None:
    """RetryConfig is frozen; dataclasses.replace builds a validated variant."""
    config = RetryConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_attempts = 5  # type: ignore[misc]
    assert dataclasses.replace(config, max_attempts=5).max_attempts == 5
    with pytest.raises(ValueError, match="max_attempts"):
        dataclasses.replace(config, max_attempts=0)


def test_repr_names_the_policy() -> None:
    """repr(Retry) shows its name and config."""
    text = repr(Retry(name="db"))
    assert "db" in text
    assert "RetryConfig" in text


# -- concurrency -----------------------------------------------------------------------------------


def run_threads(policy: Retry, threads_n: int, per_thread: int) -> None:
    """Each thread makes ``per_thread`` calls: i % 4 == 0 fails once, i % 10 == 1 always fails."""
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                if i % 10 == 1:
                    try:
                        policy.call(Flaky(always(OSError)))
                    except OSError:
                        pass
                    else:
                        raise AssertionError("an always-failing call succeeded")
                else:
                    fails = [OSError] if i % 4 == 0 else []
                    assert policy.call(Flaky(fails), i) == "ok"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    assert errors == []


def expected_counts(threads_n: int, per_thread: int, max_attempts: int) -> tuple[int, ...]:
    """The exact stats that run_threads must produce."""
    exhausted = sum(1 for i in range(per_thread) if i % 10 == 1)
    once = sum(1 for i in range(per_thread) if i % 10 != 1 and i % 4 == 0)
    calls = per_thread
    attempts = per_thread + once + exhausted * (max_attempts - 1)
    successes = per_thread - exhausted
    per = (calls, attempts, attempts - calls, successes, exhausted, exhausted)
    return tuple(threads_n * x for x in per)


@pytest.mark.parametrize("locked", [False, True], ids=["lock-free path", "locked path"])
def test_many_threads_through_one_policy_count_exactly(clock: FakeClock, locked: bool) -> None:
    """8 threads x 2000 calls through one policy: exact counts, no deadlock."""
    policy = make(clock, initial_delay=0.0, max_attempts=3, deadline=1e9 if locked else None)
    run_threads(policy, threads_n=8, per_thread=2000)
    assert stats_tuple(policy) == expected_counts(8, 2000, 3)


def test_repeated_attempts_are_marked_as_inside_a_retrying_call(clock: FakeClock) -> None:
    """From its second attempt on, a Retry marks the call as retrying (the context variable the
    adaptive policy reads), and the mark is gone after the call."""
    from sage_resilience.core._nesting import RETRYING

    seen: list[bool] = []

    def fn() -> int:
        seen.append(RETRYING.get())
        if len(seen) < 3:
            raise OSError
        return 1

    assert make(clock, max_attempts=3, initial_delay=0.0).call(fn) == 1
    assert seen == [False, True, True]
    assert RETRYING.get() is False


def test_an_adaptive_policy_inside_a_core_retry_does_not_multiply(clock: FakeClock) -> None:
    """A core Retry around an adaptive policy: the adaptive policy retries only on the first
    outer attempt (5 attempts in all for 3 x 3, not 9)."""
    from sage_resilience.adaptive import AdaptiveOptions, AdaptivePolicy

    inner = AdaptivePolicy(
        "nested_db", AdaptiveOptions(concurrency=None, breaker=False), clock=clock
    )
    calls = 0

    def dependency() -> None:
        nonlocal calls
        calls += 1
        raise OSError

    with pytest.raises(OSError):
        make(clock, max_attempts=3, initial_delay=0.0).call(inner.call, dependency)
    assert calls == 5
