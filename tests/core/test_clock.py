"""The clock: the system's monotonic clock and a fake one whose sleeps move time instantly."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sage_resilience.core import SYSTEM_CLOCK, Clock, FakeClock, SystemClock

# -- SystemClock ---------------------------------------------------------------------------------


def test_system_clock_is_the_default_and_a_clock() -> None:
    """SYSTEM_CLOCK is a SystemClock and satisfies the Clock protocol."""
    assert isinstance(SYSTEM_CLOCK, SystemClock)
    assert isinstance(SYSTEM_CLOCK, Clock)


def test_system_clock_reads_the_monotonic_clock() -> None:
    """SystemClock.now() is time.monotonic(): it lies between two monotonic readings."""
    before = time.monotonic()
    now = SystemClock().now()
    after = time.monotonic()
    assert before <= now <= after


def test_system_clock_never_goes_backwards() -> None:
    """Successive SystemClock.now() readings never decrease."""
    clock = SystemClock()
    readings = [clock.now() for _ in range(1000)]
    assert readings == sorted(readings)


def test_system_clock_uses_the_builtins_directly() -> None:
    """SystemClock.now and .sleep are time.monotonic and time.sleep themselves (no wrapper)."""
    assert SystemClock.now is time.monotonic
    assert SystemClock.sleep is time.sleep
    assert SystemClock().sleep is time.sleep


async def test_system_clock_asleep_awaits_asyncio_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """SystemClock.asleep(s) awaits asyncio.sleep(s)."""
    requested: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        requested.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    await SystemClock().asleep(3.0)
    assert requested == [3.0]


def test_system_clock_repr() -> None:
    """SystemClock has a readable repr."""
    assert repr(SystemClock()) == "SystemClock()"


# -- FakeClock: construction ---------------------------------------------------------------------


def test_fake_clock_starts_at_zero_by_default() -> None:
    """FakeClock() reads 0.0 and has recorded no sleep."""
    clock = FakeClock()
    assert clock.now() == 0.0
    assert clock.sleeps == []


def test_fake_clock_starts_where_told(clock: FakeClock) -> None:
    """FakeClock(start=1000.0) reads 1000.0 (the shared fixture)."""
    assert clock.now() == 1000.0
    assert isinstance(FakeClock(start=5).now(), float)


def test_fake_clock_is_a_clock() -> None:
    """FakeClock satisfies the Clock protocol."""
    assert isinstance(FakeClock(), Clock)


@pytest.mark.parametrize("start", ["0", None, True, [1.0]])
def test_fake_clock_rejects_non_numeric_start(start: object) -> None:
    """A start that is not a number (bools included) raises TypeError naming start."""
    with pytest.raises(TypeError, match="start"):
        FakeClock(start=start)  # type: ignore[arg-type]


@pytest.mark.parametrize("start", [math.nan, math.inf, -math.inf])
def test_fake_clock_rejects_non_finite_start(start: float) -> None:
    """A NaN or infinite start raises ValueError naming start."""
    with pytest.raises(ValueError, match="start"):
        FakeClock(start=start)


def test_fake_clock_repr_shows_the_time() -> None:
    """FakeClock's repr shows its current time."""
    clock = FakeClock(start=12.5)
    assert repr(clock) == "FakeClock(now=12.5)"


# -- FakeClock: moving time ----------------------------------------------------------------------


def test_advance_moves_time_without_recording_a_sleep(clock: FakeClock) -> None:
    """advance(s) adds s to the time and is not recorded as a sleep."""
    clock.advance(2.5)
    clock.advance(0.0)
    assert clock.now() == 1002.5
    assert clock.sleeps == []


def test_sleep_moves_time_and_is_recorded(clock: FakeClock) -> None:
    """sleep(s) adds s to the time at once and appends s to sleeps, in order."""
    clock.sleep(1.5)
    clock.sleep(0.0)
    clock.sleep(3.0)
    assert clock.now() == 1004.5
    assert clock.sleeps == [1.5, 0.0, 3.0]


@pytest.mark.parametrize("bad", [-1.0, -1e-12, math.nan, math.inf])
@pytest.mark.parametrize("method", ["advance", "sleep"])
def test_negative_or_non_finite_steps_are_rejected(
    clock: FakeClock, method: str, bad: float
) -> None:
    """advance/sleep reject negative, NaN and infinite seconds, leaving the clock untouched."""
    with pytest.raises(ValueError, match="seconds"):
        getattr(clock, method)(bad)
    assert clock.now() == 1000.0
    assert clock.sleeps == []


async def test_asleep_rejects_negative_seconds(clock: FakeClock) -> None:
    """asleep(-1) raises ValueError and does not move the clock."""
    with pytest.raises(ValueError, match="seconds"):
        await clock.asleep(-1.0)
    assert clock.now() == 1000.0
    assert clock.sleeps == []


async def test_asleep_moves_time_and_is_recorded(clock: FakeClock) -> None:
    """asleep(s) advances the time by s and records s like sleep does."""
    await clock.asleep(4.0)
    assert clock.now() == 1004.0
    assert clock.sleeps == [4.0]


async def test_asleep_yields_to_the_event_loop(clock: FakeClock) -> None:
    """While one task is in asleep, another ready task gets to run (and sees the new time)."""
    seen: list[float] = []

    async def other() -> None:
        seen.append(clock.now())

    task = asyncio.get_running_loop().create_task(other())
    assert not seen
    await clock.asleep(1.0)
    # The other task ran during the sleep, after the time had moved.
    assert seen == [1001.0]
    await task


def test_sleep_does_not_block_for_real() -> None:
    """A FakeClock sleep of an hour returns at once (well under a real second)."""
    clock = FakeClock()
    started = time.perf_counter()
    clock.sleep(3600.0)
    assert time.perf_counter() - started < 0.5
    assert clock.now() == 3600.0


def test_concurrent_sleeps_from_many_threads_all_count() -> None:
    """Sleeps from 8 threads are all recorded and all move the time (no lost update)."""
    clock = FakeClock()
    threads_n, per_thread = 8, 2000
    barrier = threading.Barrier(threads_n)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            clock.sleep(1.0)
            clock.advance(1.0)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert len(clock.sleeps) == threads_n * per_thread
    # Integral steps add exactly in floating point, so the total is exact.
    assert clock.now() == 2.0 * threads_n * per_thread


steps = st.lists(
    st.tuples(
        st.sampled_from(["advance", "sleep"]),
        st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
    ),
    max_size=50,
)


@given(start=st.floats(min_value=-1e6, max_value=1e6), ops=steps)
def test_fake_clock_time_is_start_plus_every_step(
    start: float, ops: list[tuple[str, float]]
) -> None:
    """Time is start plus every step, never decreases, and sleeps lists the sleep steps."""
    clock = FakeClock(start=start)
    expected = start
    previous = clock.now()
    for method, seconds in ops:
        getattr(clock, method)(seconds)
        expected += seconds
        assert clock.now() >= previous
        previous = clock.now()
    assert clock.now() == expected
    assert clock.sleeps == [s for m, s in ops if m == "sleep"]
