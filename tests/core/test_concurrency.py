"""One breaker (and one retry policy) under many threads and many asyncio tasks: exact counts,
no deadlock, at most half_open_max_calls trials at once, and retry stacked on a breaker."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sage_resilience.core import (
    CircuitBreaker,
    CircuitBreakerOpenError,
    CircuitState,
    Event,
    FakeClock,
    Retry,
    RetryConfig,
    circuit_breaker,
    retry,
)

THREADS = 8
CALLS_PER_THREAD = 5000
TASKS = 500
JOIN_TIMEOUT = 60.0


@pytest.fixture(autouse=True)
def _switch_often() -> Iterator[None]:
    """Make the interpreter switch threads far more often than usual, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def run_threads(target: Callable[[int], None], n: int = THREADS) -> None:
    """Start n threads together on target(index); fail (not hang) if one does not finish."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=JOIN_TIMEOUT)
            target(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    assert errors == []


def _ok() -> int:
    return 1


def _ignored() -> int:
    raise KeyError("not the dependency's fault")


def _failed() -> int:
    raise ConnectionError("down")


@pytest.mark.parametrize("listen", [False, True], ids=["fast_path", "with_listener"])
def test_threads_through_one_breaker_count_exactly(clock: FakeClock, listen: bool) -> None:
    """8 threads x 5000 calls (successes, ignored, failures, time passing) give exact stats."""
    events: list[Event] = []
    b = CircuitBreaker(
        "threads",
        clock=clock,
        failure_threshold=None,
        ignore_exceptions=(KeyError,),
        monitoring_window=1.0,
        listeners=[events.append] if listen else [],
    )
    pattern = [_ok, _ok, _ignored, _ok, _failed, _ok, _ok]

    def worker(i: int) -> None:
        for k in range(CALLS_PER_THREAD):
            fn = pattern[(i + k) % len(pattern)]
            with contextlib.suppress(KeyError, ConnectionError):
                b.call(fn)
            if k % 50 == 0:
                clock.advance(0.03)  # bucket rotations race with lock-free increments

    run_threads(worker)
    expected = {"ok": 0, "ignored": 0, "failed": 0}
    for i in range(THREADS):
        for k in range(CALLS_PER_THREAD):
            expected[pattern[(i + k) % len(pattern)].__name__[1:]] += 1
    s = b.stats()
    assert (s.successes, s.ignored, s.failures, s.rejected) == (
        expected["ok"],
        expected["ignored"],
        expected["failed"],
        0,
    )
    assert s.calls == THREADS * CALLS_PER_THREAD
    assert b.state is CircuitState.CLOSED
    if listen:
        assert len(events) == s.calls


def test_threads_through_decorated_function(clock: FakeClock) -> None:
    """The decorator's lock-free wrapper counts exactly under 8 threads."""

    @circuit_breaker("deco-threads", clock=clock, ignore_exceptions=(KeyError,))
    def op(k: int) -> int:
        if k % 4 == 3:
            raise KeyError(k)
        return k

    def worker(i: int) -> None:
        for k in range(CALLS_PER_THREAD):
            with contextlib.suppress(KeyError):
                op(k)

    run_threads(worker)
    s = op.breaker.stats()  # type: ignore[attr-defined]
    per_thread_ignored = sum(1 for k in range(CALLS_PER_THREAD) if k % 4 == 3)
    assert s.ignored == THREADS * per_thread_ignored
    assert s.successes == THREADS * (CALLS_PER_THREAD - per_thread_ignored)


async def test_many_tasks_through_one_breaker_count_exactly(clock: FakeClock) -> None:
    """500 asyncio tasks interleaving at awaits give exact stats."""
    b = CircuitBreaker("tasks", clock=clock, failure_threshold=None, ignore_exceptions=(KeyError,))

    async def op(k: int) -> int:
        await clock.asleep(0.001)  # yields: the other tasks run in between
        if k % 5 == 1:
            raise KeyError(k)
        if k % 5 == 2:
            raise ConnectionError(k)
        return k

    async def task(i: int) -> None:
        for k in range(20):
            with contextlib.suppress(KeyError, ConnectionError):
                await b.acall(op, i + k)

    await asyncio.wait_for(asyncio.gather(*(task(i) for i in range(TASKS))), JOIN_TIMEOUT)
    kinds = [(i + k) % 5 for i in range(TASKS) for k in range(20)]
    s = b.stats()
    assert s.ignored == kinds.count(1)
    assert s.failures == kinds.count(2)
    assert s.successes == len(kinds) - kinds.count(1) - kinds.count(2)
    assert s.calls == len(kinds)


def test_half_open_runs_at_most_max_trials_at_once_threads(clock: FakeClock) -> None:
    """Threads hitting half-open run exactly half_open_max_calls trials at once; others refused."""
    limit, callers = 3, 12
    b = CircuitBreaker(
        "ho-threads",
        clock=clock,
        failure_threshold=1,
        recovery_timeout=5.0,
        success_threshold=limit,
        half_open_max_calls=limit,
    )
    with pytest.raises(ConnectionError):
        b.call(_failed)
    clock.advance(5.0)
    assert b.state is CircuitState.HALF_OPEN

    together = threading.Barrier(limit)
    release = threading.Event()
    lock = threading.Lock()
    running = peak = 0
    refused: list[CircuitBreakerOpenError] = []
    all_refused = threading.Event()

    def trial() -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        together.wait(timeout=JOIN_TIMEOUT)  # `limit` trials are inside at the same time
        assert release.wait(timeout=JOIN_TIMEOUT)
        with lock:
            running -= 1
        return "ok"

    def worker(i: int) -> None:
        try:
            b.call(trial)
        except CircuitBreakerOpenError as exc:
            with lock:
                refused.append(exc)
                if len(refused) == callers - limit:
                    all_refused.set()

    runner = threading.Thread(target=run_threads, args=(worker, callers), daemon=True)
    runner.start()
    assert all_refused.wait(timeout=JOIN_TIMEOUT)
    release.set()
    runner.join(timeout=JOIN_TIMEOUT)
    assert not runner.is_alive()
    assert peak == limit
    assert len(refused) == callers - limit
    assert {(e.retry_after, e.reason) for e in refused} == {(0.0, "half_open_full")}
    assert b.state is CircuitState.CLOSED


async def test_half_open_runs_at_most_max_trials_at_once_tasks(clock: FakeClock) -> None:
    """Tasks hitting half-open run at most half_open_max_calls trials; a failed one re-opens it."""
    limit, callers = 2, 50
    b = CircuitBreaker(
        "ho-tasks",
        clock=clock,
        failure_threshold=1,
        recovery_timeout=5.0,
        half_open_max_calls=limit,
    )
    with pytest.raises(ConnectionError):
        b.call(_failed)
    clock.advance(5.0)
    release = asyncio.Event()
    running = peak = 0

    async def trial() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        raise ConnectionError("still down")

    tasks = [asyncio.ensure_future(b.acall(trial)) for _ in range(callers)]
    await asyncio.sleep(0)  # every task runs until its trial blocks or it is refused
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), JOIN_TIMEOUT)
    assert peak == limit
    assert sum(isinstance(r, ConnectionError) for r in results) == limit
    assert sum(isinstance(r, CircuitBreakerOpenError) for r in results) == callers - limit
    assert b.state is CircuitState.OPEN


# -- retry with a breaker -----------------------------------------------------------------------


def _flaky_once() -> Callable[[], int]:
    attempts = 0

    def fn() -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("blip")
        return attempts

    return fn


def test_retry_and_breaker_under_threads_count_exactly(clock: FakeClock) -> None:
    """8 threads through one Retry over one breaker, each call failing once: exact stats."""
    b = CircuitBreaker("rb-threads", clock=clock, failure_threshold=None)
    policy = Retry(RetryConfig(max_attempts=3, initial_delay=0.0, max_delay=0.0, clock=clock))
    per_thread = 1000

    def worker(i: int) -> None:
        for _ in range(per_thread):
            assert policy.call(b.call, _flaky_once()) == 2

    run_threads(worker)
    n = THREADS * per_thread
    r = policy.stats()
    assert (r.calls, r.attempts, r.retries, r.successes, r.failures) == (n, 2 * n, n, n, 0)
    s = b.stats()
    assert (s.successes, s.failures, s.calls) == (n, n, 2 * n)


async def test_retry_and_breaker_under_tasks_count_exactly(clock: FakeClock) -> None:
    """500 tasks through one Retry over one breaker, each failing once: exact stats."""
    b = CircuitBreaker("rb-tasks", clock=clock, failure_threshold=None)
    policy = Retry(RetryConfig(max_attempts=3, initial_delay=0.0, max_delay=0.0, clock=clock))

    async def one() -> int:
        sync = _flaky_once()

        async def fn() -> int:
            await asyncio.sleep(0)
            return sync()

        return await policy.acall(b.acall, fn)

    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(TASKS))), JOIN_TIMEOUT)
    assert results == [2] * TASKS
    r = policy.stats()
    assert (r.calls, r.attempts, r.retries, r.successes) == (TASKS, 2 * TASKS, TASKS, TASKS)
    s = b.stats()
    assert (s.successes, s.failures) == (TASKS, TASKS)


async def test_seed_combined_example_surfaces_open_error_without_retrying_it(
    clock: FakeClock,
) -> None:
    """Seed's retry-over-breaker example: once open, the error surfaces at once, not retried."""
    db_calls = 0

    @retry(max_attempts=3, clock=clock)
    @circuit_breaker("database", failure_threshold=3, clock=clock)
    async def database_operation() -> Any:
        nonlocal db_calls
        db_calls += 1
        raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        await database_operation()
    assert db_calls == 3
    sleeps = list(clock.sleeps)
    assert len(sleeps) == 2
    with pytest.raises(CircuitBreakerOpenError) as info:
        await database_operation()
    assert info.value.name == "database"
    assert db_calls == 3
    assert clock.sleeps == sleeps
    assert database_operation.retry.stats().attempts == 4  # type: ignore[attr-defined]


def test_seed_combined_example_sync(clock: FakeClock) -> None:
    """The combined stack works the same for a sync function."""
    db_calls = 0

    @retry(max_attempts=3, clock=clock)
    @circuit_breaker("database", failure_threshold=3, clock=clock)
    def database_operation() -> Any:
        nonlocal db_calls
        db_calls += 1
        raise ConnectionError("database down")

    with pytest.raises(ConnectionError):
        database_operation()
    with pytest.raises(CircuitBreakerOpenError):
        database_operation()
    assert db_calls == 3
    assert len(clock.sleeps) == 2
