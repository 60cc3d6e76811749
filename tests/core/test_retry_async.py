"""Retry's async driver: acall, the async decorator, ``async for`` and many tasks at once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import sys
import traceback
from typing import Any

import pytest
from sage_resilience.core import (
    CircuitBreakerOpenError,
    Event,
    FakeClock,
    PermanentError,
    Retry,
    RetryAttempted,
    RetryGaveUp,
    RetryStrategy,
    RetrySucceeded,
    ThrottledError,
    retry,
)


class AsyncFlaky:
    """A coroutine function object: raises ``failures`` in turn, then returns ``result``.

    Each attempt yields to the event loop once before deciding, like real I/O would.
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

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.arguments.append((args, kwargs))
        self.exc_info_seen.append(sys.exc_info()[1])
        if self.clock is not None:
            self.started.append(self.clock.now())
            if self.duration:
                self.clock.advance(self.duration)
        await asyncio.sleep(0)
        if self.failures:
            failure = self.failures.pop(0)
            exc = failure() if isinstance(failure, type) else failure
            self.raised.append(exc)
            raise exc
        return self.result


def always(exc: type[BaseException], n: int = 100) -> list[BaseException | type[BaseException]]:
    """``n`` failures of class ``exc``."""
    return [exc] * n


def make(clock: FakeClock, **overrides: Any) -> Retry:
    """A policy on the fake clock, jitter off unless overridden."""
    overrides.setdefault("jitter", False)
    return Retry(clock=clock, **overrides)


def stats_tuple(policy: Retry) -> tuple[int, ...]:
    """(calls, attempts, retries, successes, failures, gave_up)."""
    s = policy.stats()
    return (s.calls, s.attempts, s.retries, s.successes, s.failures, s.gave_up)


def innermost_code(exc: BaseException) -> Any:
    """The code object of the frame that raised ``exc``."""
    return list(traceback.walk_tb(exc.__traceback__))[-1][0].f_code


# -- acall -----------------------------------------------------------------------------------------


async def test_acall_retries_with_async_sleeps(clock: FakeClock) -> None:
    """acall retries a coroutine function, sleeping 1 s then 2 s on the clock (jitter off)."""
    fn = AsyncFlaky([OSError, OSError])
    policy = make(clock)
    assert await policy.acall(fn, 1, key="v") == "ok"
    assert fn.calls == 3
    assert fn.arguments == [((1,), {"key": "v"})] * 3
    assert clock.sleeps == [1.0, 2.0]
    assert stats_tuple(policy) == (1, 3, 2, 1, 0, 0)


@pytest.mark.parametrize("strategy", list(RetryStrategy)[:4], ids=lambda s: s.name)
async def test_acall_sleeps_the_seed_table(clock: FakeClock, strategy: RetryStrategy) -> None:
    """The async driver asks the clock for the same delays as the seed's table."""
    table = {
        RetryStrategy.FIXED: [1.0, 1.0, 1.0, 1.0, 1.0],
        RetryStrategy.LINEAR: [1.0, 2.0, 3.0, 4.0, 5.0],
        RetryStrategy.EXPONENTIAL: [1.0, 2.0, 4.0, 8.0, 16.0],
        RetryStrategy.FIBONACCI: [1.0, 1.0, 2.0, 3.0, 5.0],
    }
    with pytest.raises(OSError):
        await make(clock, strategy=strategy, max_attempts=6).acall(AsyncFlaky(always(OSError)))
    assert clock.sleeps == table[strategy]


async def test_acall_zero_delay_never_sleeps(clock: FakeClock) -> None:
    """A zero delay awaits no sleep at all (clock.sleeps stays empty)."""
    fn = AsyncFlaky([OSError, OSError])
    assert await make(clock, initial_delay=0.0).acall(fn) == "ok"
    assert fn.calls == 3
    assert clock.sleeps == []


async def test_acall_reraises_the_last_exception_unchanged(clock: FakeClock) -> None:
    """The last exception comes out unchanged, after on_exhausted(exc) once."""
    exhausted: list[object] = []
    fn = AsyncFlaky(always(OSError, 3))
    policy = make(clock, on_exhausted=exhausted.append)
    with pytest.raises(OSError) as info:
        await policy.acall(fn)
    assert info.value is fn.raised[-1]
    assert innermost_code(info.value) is AsyncFlaky.__call__.__code__
    assert exhausted == [info.value]


async def test_async_retried_attempt_does_not_run_inside_the_previous_failure_handler(
    clock: FakeClock,
) -> None:
    """Async retried attempts run outside the previous failure's handler."""
    fn = AsyncFlaky(always(OSError, 3))
    with pytest.raises(OSError) as info:
        await make(clock, initial_delay=0.0).acall(fn)
    assert fn.exc_info_seen == [None, None, None]
    assert info.value.__context__ is None


async def test_async_regression_retried_calls_leave_no_reference_cycles(clock: FakeClock) -> None:
    """Async retried calls, successful or exhausted, leave no reference cycle for the collector."""
    policy = make(clock, initial_delay=0.0)

    def failing_then_ok(failures: int) -> Any:
        remaining = failures

        async def fn() -> str:
            nonlocal remaining
            if remaining:
                remaining -= 1
                raise OSError("down")
            return "ok"

        return fn

    gc.collect()
    gc.disable()
    try:
        for _ in range(200):
            assert await policy.acall(failing_then_ok(2)) == "ok"
            with contextlib.suppress(OSError):
                await policy.acall(failing_then_ok(10))
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage == 0


async def test_acall_before_retry_and_events(clock: FakeClock) -> None:
    """before_retry(attempt, exc) and the retry events are the same as in the sync driver."""
    before: list[tuple[int, BaseException | None]] = []
    events: list[Event] = []
    fn = AsyncFlaky([ValueError, OSError])
    policy = make(
        clock,
        name="api",
        before_retry=lambda n, exc: before.append((n, exc)),
        listeners=[events.append],
    )
    assert await policy.acall(fn) == "ok"
    assert before == [(1, fn.raised[0]), (2, fn.raised[1])]
    assert events == [
        RetryAttempted(policy="api", time=1000.0, attempt=1, delay=1.0, exception="ValueError"),
        RetryAttempted(policy="api", time=1001.0, attempt=2, delay=2.0, exception="OSError"),
        RetrySucceeded(policy="api", time=1003.0, attempts=3, elapsed=3.0),
    ]


async def test_acall_a_raising_listener_never_breaks_the_call(clock: FakeClock) -> None:
    """A listener that raises does not change the outcome of an async call."""

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    policy = make(clock, listeners=[broken])
    assert await policy.acall(AsyncFlaky([OSError])) == "ok"
    fn = AsyncFlaky([PermanentError()])
    with pytest.raises(PermanentError) as info:
        await policy.acall(fn)
    assert info.value is fn.raised[0]


async def test_acall_retry_on_result_returns_the_last_result(clock: FakeClock) -> None:
    """retry_on_result in async: retries rejected results, returns the last when exhausted."""
    values = iter([1, 2, 3])

    async def fn() -> int:
        return next(values)

    exhausted: list[object] = []
    policy = make(
        clock, max_attempts=3, retry_on_result=lambda r: r < 10, on_exhausted=exhausted.append
    )
    assert await policy.acall(fn) == 3
    assert exhausted == [None]
    assert clock.sleeps == [1.0, 2.0]


async def test_acall_deadline(clock: FakeClock) -> None:
    """deadline=3.5 with sleeps 1, 2, 4: gives up after 3 attempts; no attempt starts late."""
    fn = AsyncFlaky(always(OSError), clock=clock)
    events: list[Event] = []
    policy = make(clock, max_attempts=10, deadline=3.5, listeners=[events.append])
    with pytest.raises(OSError):
        await policy.acall(fn)
    assert fn.started == [1000.0, 1001.0, 1003.0]
    assert clock.sleeps == [1.0, 2.0]
    assert isinstance(events[-1], RetryGaveUp)
    assert events[-1].reason == "deadline"


async def test_acall_throttle_hint(clock: FakeClock) -> None:
    """ThrottledError(retry_after=7) makes the async sleep 7 s."""
    assert await make(clock).acall(AsyncFlaky([ThrottledError(retry_after=7.0)])) == "ok"
    assert clock.sleeps == [7.0]


# -- never retried ---------------------------------------------------------------------------------


async def test_cancelled_error_raised_by_the_call_is_not_retried(clock: FakeClock) -> None:
    """A CancelledError from the coroutine is not retried, even with BaseException listed."""
    fn = AsyncFlaky(always(asyncio.CancelledError))
    policy = make(clock, retryable_exceptions=(BaseException,))
    with pytest.raises(asyncio.CancelledError):
        await policy.acall(fn)
    assert fn.calls == 1
    assert clock.sleeps == []


async def test_cancelling_the_task_during_a_retry_sleep_stops_retrying(clock: FakeClock) -> None:
    """Cancelling a task while it waits between attempts cancels it; no further attempt runs."""
    fn = AsyncFlaky(always(OSError))
    policy = make(clock, max_attempts=5)
    task = asyncio.get_running_loop().create_task(policy.acall(fn))
    while not clock.sleeps:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fn.calls == 1
    assert task.cancelled()


async def test_async_regression_open_breaker_error_is_not_retried(clock: FakeClock) -> None:
    """CircuitBreakerOpenError from a coroutine is raised at once, not retried."""
    fn = AsyncFlaky([CircuitBreakerOpenError("db", 5.0) for _ in range(3)])
    with pytest.raises(CircuitBreakerOpenError):
        await make(clock, max_attempts=3).acall(fn)
    assert fn.calls == 1
    assert clock.sleeps == []


# -- decorators ------------------------------------------------------------------------------------


async def test_decorator_picks_the_async_driver(clock: FakeClock) -> None:
    """@policy on a coroutine function gives a retrying coroutine function exposing .retry."""
    policy = make(clock)
    fn = AsyncFlaky([OSError])

    @policy
    async def fetch(key: str) -> Any:
        """Fetch."""
        return await fn(key)

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch."
    assert fetch.retry is policy  # type: ignore[attr-defined]
    assert await fetch("k") == "ok"
    assert fn.arguments == [(("k",), {})] * 2
    assert clock.sleeps == [1.0]


async def test_seed_decorator_signature_on_an_async_function(clock: FakeClock) -> None:
    """The seed's @retry(...) example retries an async function, sleeping ~1 s then ~2 s."""
    fn = AsyncFlaky([OSError, OSError])

    @retry(max_attempts=3, initial_delay=1.0, strategy=RetryStrategy.EXPONENTIAL, clock=clock)
    async def flaky_operation() -> Any:
        return await fn()

    assert await flaky_operation() == "ok"
    assert fn.calls == 3
    assert len(clock.sleeps) == 2
    assert 0.5 <= clock.sleeps[0] <= 1.0
    assert 1.0 <= clock.sleeps[1] <= 2.0


async def test_decorator_on_an_object_with_async_call(clock: FakeClock) -> None:
    """An object with an async __call__ is driven asynchronously and retried."""
    # Before the fix it got the sync wrapper, which returned the coroutine unretried and
    # counted a success.
    fn = AsyncFlaky([OSError, OSError])
    policy = make(clock, initial_delay=0.0)
    wrapped = policy(fn)
    assert inspect.iscoroutinefunction(wrapped)
    assert await wrapped() == "ok"
    assert fn.calls == 3
    assert stats_tuple(policy) == (1, 3, 2, 1, 0, 0)


async def test_decorator_on_a_partial_of_a_coroutine_function(clock: FakeClock) -> None:
    """A partial of a coroutine function or async callable is driven asynchronously."""
    inner = AsyncFlaky([OSError])

    async def fetch(key: int) -> Any:
        return await inner(key)

    policy = make(clock, initial_delay=0.0)
    assert await policy(functools.partial(fetch, 5))() == "ok"
    assert inner.arguments == [((5,), {})] * 2
    obj = AsyncFlaky([OSError])
    assert await policy(functools.partial(obj, 6))() == "ok"
    assert obj.arguments == [((6,), {})] * 2
    assert stats_tuple(policy) == (2, 4, 2, 2, 0, 0)


async def test_regression_sync_retry_inside_running_loop(clock: FakeClock) -> None:
    """A retried sync function works when called inside a running event loop."""
    # The seed's sync wrapper called run_until_complete, which fails inside a running loop.
    attempts = 0

    @retry(max_attempts=3, initial_delay=1.0, clock=clock, jitter=False)
    def load() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("down")
        return "loaded"

    asyncio.get_running_loop()  # we are inside a running loop
    result = load()
    assert result == "loaded"
    assert not inspect.isawaitable(result)
    assert attempts == 3
    assert clock.sleeps == [1.0, 2.0]


# -- async for -------------------------------------------------------------------------------------


async def test_async_for_retries_a_block(clock: FakeClock) -> None:
    """async for attempt in policy: with attempt: ... retries until the block succeeds."""
    fn = AsyncFlaky([OSError, OSError])
    policy = make(clock)
    numbers = []
    result = None
    async for attempt in policy:
        with attempt:
            numbers.append(attempt.number)
            result = await fn()
    assert result == "ok"
    assert numbers == [1, 2, 3]
    assert clock.sleeps == [1.0, 2.0]
    assert stats_tuple(policy) == (1, 3, 2, 1, 0, 0)


async def test_async_for_reraises_the_last_exception_unchanged(clock: FakeClock) -> None:
    """When attempts run out the last exception leaves the loop as the same object."""
    fn = AsyncFlaky(always(OSError))
    policy = make(clock, max_attempts=3)
    with pytest.raises(OSError) as info:
        async for attempt in policy:
            with attempt:
                await fn()
    assert fn.calls == 3
    assert info.value is fn.raised[-1]
    assert innermost_code(info.value) is AsyncFlaky.__call__.__code__


async def test_async_for_lets_a_non_retryable_exception_through(clock: FakeClock) -> None:
    """A non-retryable exception propagates unchanged out of the async loop at once."""
    fn = AsyncFlaky([PermanentError("no")])
    with pytest.raises(PermanentError) as info:
        async for attempt in make(clock):
            with attempt:
                await fn()
    assert info.value is fn.raised[0]
    assert fn.calls == 1
    assert clock.sleeps == []


async def test_async_for_set_result_with_retry_on_result(clock: FakeClock) -> None:
    """set_result in async for: retried while rejected, last result kept when exhausted."""
    values = iter([None, "ready"])
    policy = make(clock, retry_on_result=lambda r: r is None)
    async for attempt in policy:
        with attempt:
            attempt.set_result(next(values))
    assert attempt.result == "ready"
    counter = iter(range(10))
    exhausted: list[object] = []
    policy = make(clock, retry_on_result=lambda r: True, on_exhausted=exhausted.append)
    async for attempt in policy:
        with attempt:
            attempt.set_result(next(counter))
    assert attempt.result == 2
    assert exhausted == [None]


async def test_async_for_respects_the_deadline(clock: FakeClock) -> None:
    """The async iterator stops before a sleep that would cross the deadline."""
    fn = AsyncFlaky(always(OSError))
    with pytest.raises(OSError):
        async for attempt in make(clock, max_attempts=10, deadline=3.5):
            with attempt:
                await fn()
    assert fn.calls == 3
    assert clock.sleeps == [1.0, 2.0]


# -- many tasks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("locked", [False, True], ids=["lock-free path", "locked path"])
async def test_many_tasks_through_one_policy_count_exactly(clock: FakeClock, locked: bool) -> None:
    """200 tasks x 40 calls through one policy: exact counts, no deadlock."""
    # Call i of a task fails once when i % 4 == 0 and always (3 attempts) when i % 10 == 1.
    tasks_n, per_task = 200, 40
    policy = make(clock, initial_delay=0.01, max_attempts=3, deadline=1e9 if locked else None)

    async def worker() -> None:
        for i in range(per_task):
            if i % 10 == 1:
                with pytest.raises(OSError):
                    await policy.acall(AsyncFlaky(always(OSError)))
            else:
                fails: list[BaseException | type[BaseException]] = [OSError] if i % 4 == 0 else []
                assert await policy.acall(AsyncFlaky(fails)) == "ok"

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(tasks_n))), timeout=60)
    exhausted = sum(1 for i in range(per_task) if i % 10 == 1)
    once = sum(1 for i in range(per_task) if i % 10 != 1 and i % 4 == 0)
    attempts = per_task + once + 2 * exhausted
    per = (per_task, attempts, attempts - per_task, per_task - exhausted, exhausted, exhausted)
    assert stats_tuple(policy) == tuple(tasks_n * x for x in per)
    # Every retry slept once (the delays are non-zero): one sleep per retry.
    assert len(clock.sleeps) == tasks_n * (attempts - per_task)
