"""The simulator's virtual-time loop: time jumps, timers keep their order, a stuck simulation
says so, and the real policies' waiting (through ``LoopClock``) runs in virtual time.

Nothing here sleeps for real: were the loop's time not virtual, the first test would wait an
hour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from sage_resilience.benchmarks.sim import SimulationDeadlock, VirtualTimeLoop, run
from sage_resilience.core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitState,
    Jitter,
    LoopClock,
    RateLimiter,
    ResilienceTimeoutError,
    Retry,
    RetryConfig,
    RetryStrategy,
    Timeout,
)

# The loop under test is the simulator's virtual-time loop: ``asyncio.sleep`` on it takes no
# real time (these tests check exactly that).
sleep = asyncio.sleep


def _now() -> float:
    return asyncio.get_running_loop().time()


def test_sleep_of_an_hour_jumps_the_clock() -> None:
    """Sleeping an hour on the loop returns at once with its time advanced by exactly 3600 s."""

    async def main() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await sleep(3600)
        return before, loop.time(), isinstance(loop, VirtualTimeLoop)

    assert run(main()) == (0.0, 3600.0, True)
    before, after, _ = run(main(), start=100.0)
    assert (before, after) == (100.0, 3700.0)


def test_asyncio_timeout_fires_in_virtual_time() -> None:
    """``asyncio.timeout(2.5)`` around a long sleep raises at virtual time 2.5, not later."""

    async def main() -> float:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.5):
                await sleep(1000)
        return _now()

    assert run(main()) == 2.5


def test_timers_and_sleeping_tasks_run_in_time_order() -> None:
    """Callbacks and sleeping tasks scheduled out of order run in order of their due time."""

    async def main() -> list[tuple[float, str]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[float, str]] = []

        async def sleeper(delay: float, label: str) -> None:
            await asyncio.sleep(delay)
            seen.append((loop.time(), label))

        for delay, label in [(5.0, "c"), (0.25, "a"), (30.0, "e"), (1.0, "b")]:
            loop.call_later(delay, lambda d=delay, lab=label: seen.append((loop.time(), lab)))
        await asyncio.gather(sleeper(7.5, "d"), sleeper(0.5, "a2"), sleeper(60.0, "f"))
        return seen

    seen = run(main())
    assert seen == [
        (0.25, "a"),
        (0.5, "a2"),
        (1.0, "b"),
        (5.0, "c"),
        (7.5, "d"),
        (30.0, "e"),
        (60.0, "f"),
    ]


def test_waiting_on_nothing_is_a_deadlock_and_pending_tasks_are_cleaned_up() -> None:
    """A run whose every task waits on something nobody will set raises ``SimulationDeadlock``
    (instead of hanging), after the time of the last timer; stuck tasks are cancelled."""
    cleaned: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[None] = loop.create_future()

        async def stuck() -> None:
            try:
                await never
            finally:
                cleaned.append(loop.time())

        task = asyncio.ensure_future(stuck())
        await sleep(10)
        await task

    with pytest.raises(SimulationDeadlock, match="cannot progress"):
        run(main())
    # The stuck task was cancelled and finished before run() returned (no garbage collection
    # needed), at the time the simulation stopped.
    assert cleaned == [10.0]


def test_a_finished_main_cancels_leftover_tasks() -> None:
    """Tasks still pending when ``main`` returns are cancelled and run to their end."""
    log: list[str] = []

    async def main() -> str:
        async def background() -> None:
            try:
                await sleep(1e9)
            except asyncio.CancelledError:
                log.append("cancelled")
                raise

        task = asyncio.ensure_future(background())
        await sleep(1)
        assert not task.done()
        return "done"

    assert run(main()) == "done"
    assert log == ["cancelled"]


def _flaky(failures: int, times: list[float]) -> Callable[[], Awaitable[str]]:
    async def call() -> str:
        times.append(_now())
        if len(times) <= failures:
            raise ConnectionError("down")
        return "ok"

    return call


def test_retry_backoff_sleeps_in_virtual_time() -> None:
    """A ``Retry`` on a ``LoopClock`` waits 10, 20, 40 s of virtual time between attempts."""

    async def main() -> tuple[str, list[float]]:
        times: list[float] = []
        policy = Retry(
            RetryConfig(
                max_attempts=4,
                initial_delay=10.0,
                strategy=RetryStrategy.EXPONENTIAL,
                jitter=Jitter.NONE,
                clock=LoopClock(),
            )
        )
        result = await policy.acall(_flaky(3, times))
        return result, times

    assert run(main()) == ("ok", [0.0, 10.0, 30.0, 70.0])


def test_breaker_recovery_timeout_elapses_in_virtual_time() -> None:
    """An open breaker on a ``LoopClock`` refuses until its 60 s recovery timeout has passed
    in virtual time, then lets a trial call through and closes."""

    async def main() -> list[tuple[float, str]]:
        breaker = CircuitBreaker(
            "db",
            CircuitBreakerConfig(failure_threshold=1, recovery_timeout=60.0, success_threshold=1),
            clock=LoopClock(),
        )
        log: list[tuple[float, str]] = []
        times: list[float] = []
        call = _flaky(1, times)
        with pytest.raises(ConnectionError):
            await breaker.acall(call)
        log.append((_now(), breaker.state.value))
        await sleep(59.5)
        with pytest.raises(CircuitBreakerOpenError):
            await breaker.acall(call)
        log.append((_now(), breaker.state.value))
        await sleep(0.5)
        log.append((_now(), breaker.state.value))
        log.append((_now(), await breaker.acall(call)))
        log.append((_now(), breaker.state.value))
        return log

    assert run(main()) == [
        (0.0, CircuitState.OPEN.value),
        (59.5, CircuitState.OPEN.value),
        (60.0, CircuitState.HALF_OPEN.value),
        (60.0, "ok"),
        (60.0, CircuitState.CLOSED.value),
    ]


def test_rate_limiter_waits_in_virtual_time() -> None:
    """A 2-per-second ``RateLimiter`` on a ``LoopClock`` grants a token every 0.5 s of virtual
    time once its burst is spent."""

    async def main() -> list[float]:
        limiter = RateLimiter(2.0, 1.0, clock=LoopClock(), max_wait=None)
        granted = []
        for _ in range(5):
            await limiter.aacquire()
            granted.append(_now())
        return granted

    assert run(main()) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0], abs=1e-9)


def test_timeout_policy_fires_in_virtual_time() -> None:
    """The ``Timeout`` policy cancels a hanging call after its limit of virtual time."""

    async def main() -> float:
        async def hang() -> None:
            await sleep(1e6)

        with pytest.raises(ResilienceTimeoutError):
            await Timeout(0.75).acall(hang)
        return _now()

    assert run(main()) == 0.75
