"""The seed's API and examples, and a regression test for each seed defect of this layer.

The examples are the seed report's own, unchanged apart from the import line; they run under
``use_clock(FakeClock())`` so their 1 s and 60 s waits cost no real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from sage_resilience.core import (
    DATABASE_RETRY_CONFIG,
    CircuitBreakerOpenError,
    CircuitState,
    FakeClock,
    RetryStrategy,
    breaker_manager,
    circuit_breaker,
    retry,
    use_clock,
)


class FakeDatabase:
    """Fails ``failures`` times with the given exception, then answers."""

    def __init__(self, failures: int, exc: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    async def execute(self, query: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"failure {self.calls}")
        return f"ok: {query}"


async def test_seed_example_retry_succeeds_on_third_attempt() -> None:
    """The seed's flaky_operation: fails twice, succeeds on the 3rd attempt after 1 s and 2 s."""
    clock = FakeClock()
    service = FakeDatabase(failures=2)
    with use_clock(clock):

        @retry(max_attempts=3, initial_delay=1.0, strategy=RetryStrategy.EXPONENTIAL)
        async def flaky_operation() -> str:
            result = await service.execute("SELECT 1")
            return result

    assert await flaky_operation() == "ok: SELECT 1"
    assert service.calls == 3
    # jitter=True (the seed's default) draws a multiplier in [0.5, 1.0] of 1 s then 2 s.
    assert len(clock.sleeps) == 2
    assert 0.5 <= clock.sleeps[0] <= 1.0
    assert 1.0 <= clock.sleeps[1] <= 2.0


async def test_seed_example_breaker_opens_after_threshold_and_half_opens() -> None:
    """The seed's test: 3 failures open the breaker, the 4th call is refused, half-open after
    the recovery timeout."""
    clock = FakeClock()
    service = FakeDatabase(failures=100, exc=OSError)
    with use_clock(clock):

        @circuit_breaker("external_api", failure_threshold=3, recovery_timeout=60)
        async def call_external_api() -> str:
            return await service.execute("GET /")

    for _ in range(3):
        with pytest.raises(OSError):
            await call_external_api()
    with pytest.raises(CircuitBreakerOpenError) as refused:
        await call_external_api()
    assert service.calls == 3
    assert refused.value.name == "external_api"
    assert refused.value.retry_after == pytest.approx(60.0)
    clock.advance(59.9)
    assert call_external_api.breaker.state is CircuitState.OPEN
    clock.advance(0.1)
    assert call_external_api.breaker.state is CircuitState.HALF_OPEN


async def test_seed_example_exponential_delays() -> None:
    """Without jitter the exponential strategy waits exactly 1, 2, 4, 8 s between 5 attempts."""
    clock = FakeClock()
    service = FakeDatabase(failures=4)
    with use_clock(clock):

        @retry(max_attempts=5, initial_delay=1.0, jitter=False)
        async def op() -> str:
            return await service.execute("x")

    assert await op() == "ok: x"
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0]


async def test_seed_example_combined_surfaces_open_error_without_retrying_it() -> None:
    """``@retry`` over ``@circuit_breaker("database", failure_threshold=3)``: once the breaker
    opens, the retry surfaces CircuitBreakerOpenError at once instead of retrying it."""
    clock = FakeClock()
    db = FakeDatabase(failures=100)
    with use_clock(clock):

        @retry(max_attempts=3)
        @circuit_breaker("database", failure_threshold=3)
        async def database_operation() -> str:
            return await db.execute("SELECT 1")

    with pytest.raises(ConnectionError):
        await database_operation()  # 3 attempts, 3 failures: the breaker opens on the 3rd
    assert db.calls == 3
    sleeps_before = list(clock.sleeps)
    with pytest.raises(CircuitBreakerOpenError):
        await database_operation()
    assert db.calls == 3
    assert clock.sleeps == sleeps_before  # refused at once: no backoff for a rejection


def test_seed_delay_table_exact_without_jitter() -> None:
    """The seed report's delay table comes out exactly: fixed, linear, exponential, Fibonacci."""
    expected = {
        RetryStrategy.FIXED: [1.0, 1.0, 1.0, 1.0, 1.0],
        RetryStrategy.LINEAR: [1.0, 2.0, 3.0, 4.0, 5.0],
        RetryStrategy.EXPONENTIAL: [1.0, 2.0, 4.0, 8.0, 16.0],
        RetryStrategy.FIBONACCI: [1.0, 1.0, 2.0, 3.0, 5.0],
    }
    for strategy, delays in expected.items():
        clock = FakeClock()
        policy = retry(
            max_attempts=6, initial_delay=1.0, strategy=strategy, jitter=False, clock=clock
        )

        @policy
        def always_fails() -> None:
            raise TimeoutError

        with pytest.raises(TimeoutError):
            always_fails()
        assert clock.sleeps == delays, strategy


# -- regressions: each seed defect of this layer ------------------------------------------------


def test_regression_decorator_breakers_are_in_breaker_manager() -> None:
    """The seed kept decorator breakers in a private dict: breaker_manager stayed empty."""

    @circuit_breaker("sage_db", failure_threshold=2)
    def query() -> None:
        raise ConnectionError

    assert breaker_manager.get("sage_db") is query.breaker
    assert [s["name"] for s in breaker_manager.get_all_stats()] == ["sage_db"]


def test_regression_manual_reset_really_closes_the_breaker() -> None:
    """The seed's manual reset acted on an empty manager and did nothing."""
    clock = FakeClock()

    @circuit_breaker("sage_db", failure_threshold=2, clock=clock)
    def query() -> None:
        raise ConnectionError

    for _ in range(2):
        with pytest.raises(ConnectionError):
            query()
    assert query.breaker.state is CircuitState.OPEN
    breaker_manager.reset("sage_db")
    assert query.breaker.state is CircuitState.CLOSED
    with pytest.raises(ConnectionError):
        query()  # admitted again


async def test_regression_sync_retry_inside_running_loop() -> None:
    """The seed's sync wrapper called run_until_complete and failed inside a running loop."""
    clock = FakeClock()
    attempts = []

    @retry(max_attempts=3, initial_delay=0.5, clock=clock)
    def sync_op() -> str:
        attempts.append(1)
        if len(attempts) < 2:
            raise ConnectionError
        return "ok"

    assert asyncio.get_running_loop().is_running()
    assert sync_op() == "ok"
    assert len(attempts) == 2


@pytest.mark.parametrize(
    "exc",
    [ValueError("validation"), TypeError("bad argument"), KeyError("missing")],
    ids=["ValueError", "TypeError", "KeyError"],
)
def test_regression_database_preset_does_not_retry_validation_errors(exc: Exception) -> None:
    """The seed retried validation errors at every layer; the database preset does not."""
    clock = FakeClock()
    calls = []

    @retry(config=DATABASE_RETRY_CONFIG, clock=clock)
    def save() -> None:
        calls.append(1)
        raise exc

    with pytest.raises(type(exc)):
        save()
    assert calls == [1]
    assert clock.sleeps == []


def test_regression_unique_violation_not_retried_nor_counted() -> None:
    """The seed retried unique violations (SQLSTATE 23505) and counted them as outages."""

    class UniqueViolationError(Exception):
        sqlstate = "23505"

    from sage_resilience.core import DATABASE_BREAKER_CONFIG

    clock = FakeClock()
    calls = []

    @retry(config=DATABASE_RETRY_CONFIG, clock=clock)
    @circuit_breaker("db_unique", config=DATABASE_BREAKER_CONFIG, clock=clock)
    def insert() -> None:
        calls.append(1)
        raise UniqueViolationError("duplicate key")

    for _ in range(10):
        with pytest.raises(UniqueViolationError):
            insert()
    assert len(calls) == 10  # one attempt each
    stats = insert.__wrapped__.breaker.stats()
    assert stats.state == "closed"
    assert stats.failures == 0
    assert stats.ignored == 10


def test_regression_open_breaker_error_is_never_retried() -> None:
    """The seed retried CircuitBreakerOpenError, hammering a breaker that said no."""
    clock = FakeClock()
    refusals = []

    @retry(max_attempts=5, clock=clock)
    def guarded() -> None:
        refusals.append(1)
        raise CircuitBreakerOpenError("db", retry_after=30.0)

    with pytest.raises(CircuitBreakerOpenError):
        guarded()
    assert refusals == [1]
    assert clock.sleeps == []


async def test_regression_half_open_admits_one_trial_not_every_caller() -> None:
    """The seed's half-open state admitted every caller; now at most half_open_max_calls."""
    clock = FakeClock()
    gate = asyncio.Event()
    started = []

    @circuit_breaker(
        "trial", failure_threshold=1, recovery_timeout=10, half_open_max_calls=1, clock=clock
    )
    async def dependency(fail: bool) -> str:
        started.append(1)
        if fail:
            raise ConnectionError
        await gate.wait()
        return "ok"

    with pytest.raises(ConnectionError):
        await dependency(True)
    clock.advance(10)
    trial = asyncio.create_task(dependency(False))
    await asyncio.sleep(0)
    results = await asyncio.gather(*(dependency(False) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, CircuitBreakerOpenError) for r in results)
    assert all(r.retry_after == 0.0 for r in results)  # type: ignore[union-attr]
    gate.set()
    assert await trial == "ok"
    assert len(started) == 2  # the failure and the one trial


def test_regression_successes_count_against_failures() -> None:
    """The seed ignored successes and opened after ~800 successes and 5 scattered failures."""
    clock = FakeClock()
    outcomes = iter(([True] * 160 + [False]) * 5)

    @circuit_breaker("busy", failure_threshold=5, clock=clock)
    def busy() -> None:
        if not next(outcomes):
            raise ConnectionError

    for _ in range(805):
        with contextlib.suppress(ConnectionError):
            busy()
        clock.advance(0.01)
    assert busy.breaker.state is CircuitState.CLOSED
    assert busy.breaker.stats().failures == 5


def test_regression_wall_clock_is_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed drove timeouts with time.time(); our policies only read the injected clock."""

    def forbidden() -> float:
        raise AssertionError("time.time() was called")

    monkeypatch.setattr(time, "time", forbidden)
    clock = FakeClock()

    @retry(max_attempts=3, initial_delay=1.0, deadline=10.0, clock=clock)
    @circuit_breaker("clocked", failure_threshold=2, recovery_timeout=5, clock=clock)
    def op() -> None:
        raise ConnectionError

    with pytest.raises((ConnectionError, CircuitBreakerOpenError)):
        op()
    clock.advance(5)
    assert op.__wrapped__.breaker.state is CircuitState.HALF_OPEN
