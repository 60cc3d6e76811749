"""Hedging: a second attempt after ``delay``, the first success wins, the losers are cancelled.

On ``looptime``'s virtual loop time, so every start and finish time is exact.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from sage_resilience.core import (
    CircuitBreakerOpenError,
    Event,
    FakeClock,
    Hedge,
    HedgeStats,
    LoopClock,
    PermanentError,
    ResilienceTimeoutError,
    SettingChanged,
    Timeout,
)

pytestmark = pytest.mark.looptime

# Sleeps here run on a virtual-time loop (looptime, or the simulator's): sleeping on the loop's
# clock takes no real time.
VIRTUAL = LoopClock()


def now() -> float:
    return asyncio.get_running_loop().time()


class Attempts:
    """An async dependency whose n-th attempt takes ``plan[n][0]`` seconds, then returns or
    raises ``plan[n][1]``; it records when each attempt started and how it ended."""

    def __init__(self, *plan: tuple[float, Any]) -> None:
        self.plan = list(plan)
        self.started: list[float] = []
        self.ended: list[str] = []

    async def __call__(self, *args: Any) -> Any:
        n = len(self.started)
        self.started.append(now())
        seconds, outcome = self.plan[n]
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.ended.append(f"{n}:cancelled")
            raise
        if isinstance(outcome, BaseException):
            self.ended.append(f"{n}:raised")
            raise outcome
        self.ended.append(f"{n}:returned")
        return (outcome, *args) if args else outcome


def only_this_task_left() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


# -- winning -------------------------------------------------------------------------------------


async def test_fast_answer_starts_no_hedge() -> None:
    """An attempt answering within the delay is the only one."""
    dep = Attempts((0.5, "a"))
    h = Hedge(1.0)
    assert await h.acall(dep) == "a"
    assert len(dep.started) == 1
    assert h.stats() == HedgeStats(
        name="hedge", delay=1.0, max_hedges=1, calls=1, hedged=0, hedges=0, won_by_hedge=0, failed=0
    )
    assert only_this_task_left()


async def test_slow_first_attempt_is_hedged_and_the_hedge_wins() -> None:
    """After the delay a hedge starts and wins; the first attempt is cancelled and done."""
    dep = Attempts((10.0, "slow"), (0.5, "fast"))
    h = Hedge(1.0)
    start = now()
    assert await h.acall(dep) == "fast"
    assert [s - start for s in dep.started] == pytest.approx([0.0, 1.0])
    assert now() - start == pytest.approx(1.5)
    assert dep.ended == ["1:returned", "0:cancelled"]
    assert (h.hedged, h.hedges, h.won_by_hedge) == (1, 1, 1)
    assert only_this_task_left()


async def test_original_attempt_can_still_win() -> None:
    """The first success wins whichever attempt it is; the hedge is then the loser."""
    dep = Attempts((1.5, "original"), (10.0, "hedge"))
    h = Hedge(1.0)
    assert await h.acall(dep) == "original"
    assert dep.ended == ["0:returned", "1:cancelled"]
    assert (h.hedged, h.won_by_hedge) == (1, 0)
    assert only_this_task_left()


async def test_up_to_max_hedges_delay_apart() -> None:
    """With ``max_hedges=2`` attempts start at 0, d and 2d, and no more."""
    dep = Attempts((10.0, "a"), (10.0, "b"), (0.5, "c"))
    h = Hedge(1.0, max_hedges=2)
    start = now()
    assert await h.acall(dep) == "c"
    assert [s - start for s in dep.started] == pytest.approx([0.0, 1.0, 2.0])
    assert sorted(dep.ended) == ["0:cancelled", "1:cancelled", "2:returned"]
    assert (h.hedged, h.hedges, h.won_by_hedge) == (1, 2, 1)
    assert only_this_task_left()


async def test_no_more_than_max_hedges_even_when_all_are_slow() -> None:
    """When every attempt is slow the call waits for the first of 1 + max_hedges to answer."""
    dep = Attempts((9.0, "a"), (5.0, "b"), (1.0, "never started"))
    h = Hedge(1.0, max_hedges=1)
    start = now()
    assert await h.acall(dep) == "b"
    assert len(dep.started) == 2
    assert now() - start == pytest.approx(6.0)


async def test_zero_delay_starts_every_attempt_at_once() -> None:
    """``delay=0`` races all attempts from the start."""
    dep = Attempts((3.0, "a"), (1.0, "b"), (2.0, "c"))
    assert await Hedge(0.0, max_hedges=2).acall(dep) == "b"
    assert dep.started == pytest.approx([dep.started[0]] * 3)


async def test_arguments_reach_every_attempt() -> None:
    """Each attempt gets the call's arguments."""
    dep = Attempts((10.0, "a"), (0.1, "b"))
    assert await Hedge(1.0).acall(dep, "x", 1) == ("b", "x", 1)


# -- failing -------------------------------------------------------------------------------------


async def test_fast_failure_starts_the_next_attempt_at_once() -> None:
    """An attempt that fails before the delay starts the next one then, not after the delay."""
    dep = Attempts((0.2, ConnectionError("reset")), (0.5, "b"))
    h = Hedge(5.0)
    start = now()
    assert await h.acall(dep) == "b"
    assert [s - start for s in dep.started] == pytest.approx([0.0, 0.2])
    assert now() - start == pytest.approx(0.7)


async def test_all_failing_raises_the_first_failure() -> None:
    """When every attempt fails the first failure (in time) is raised, the others as notes."""
    early = OSError("early")
    dep = Attempts((3.0, ConnectionError("late")), (0.5, early))
    h = Hedge(1.0)
    start = now()
    with pytest.raises(OSError) as info:
        await h.acall(dep)
    assert info.value is early
    assert now() - start == pytest.approx(3.0)
    assert any("late" in note for note in info.value.__notes__)
    assert h.failed == 1
    assert only_this_task_left()


async def test_permanent_failure_starts_no_further_attempt() -> None:
    """A permanent error (or one of our rejections) would fail again: no hedge is started."""
    for failure in (PermanentError("400"), CircuitBreakerOpenError("b", 1.0)):
        dep = Attempts((0.1, failure), (0.1, "never"))
        h = Hedge(1.0)
        with pytest.raises(type(failure)):
            await h.acall(dep)
        assert len(dep.started) == 1
        assert h.hedges == 0


async def test_a_running_attempt_may_still_win_after_a_permanent_failure() -> None:
    """A permanent failure stops new attempts but does not abandon one already running."""
    dep = Attempts((3.0, "original"), (0.1, PermanentError("400")))
    assert await Hedge(1.0).acall(dep) == "original"


# -- cancellation ----------------------------------------------------------------------------------


async def test_cancelling_the_call_cancels_every_attempt() -> None:
    """A cancelled caller leaves no attempt running."""
    dep = Attempts((10.0, "a"), (10.0, "b"))
    task = asyncio.create_task(Hedge(1.0).acall(dep))
    await VIRTUAL.asleep(2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(dep.ended) == ["0:cancelled", "1:cancelled"]
    assert only_this_task_left()


async def test_outer_timeout_cancels_the_hedged_call() -> None:
    """A total timeout around a hedged call cancels all its attempts and reports the timeout."""
    dep = Attempts((10.0, "a"), (10.0, "b"))
    with pytest.raises(ResilienceTimeoutError):
        await Timeout(3.0, kind="total").acall(Hedge(1.0).acall, dep)
    assert sorted(dep.ended) == ["0:cancelled", "1:cancelled"]
    assert only_this_task_left()


async def test_regression_loser_failing_with_the_winner_is_not_unretrieved() -> None:
    """A hedge failing as the original answers is never logged as never retrieved."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        for _ in range(5):
            dep = Attempts((1.5, "original"), (0.5, ConnectionError("hedge failed")))
            assert await Hedge(1.0).acall(dep) == "original"
            assert dep.ended == ["0:returned", "1:raised"]
        del dep
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert errors == []


# -- sync refused, settings, construction --------------------------------------------------------


def test_sync_call_and_sync_decoration_are_refused() -> None:
    """Hedging needs concurrency: ``call`` and decorating a sync function are TypeErrors."""
    h = Hedge(1.0)
    with pytest.raises(TypeError, match="async"):
        h.call(lambda: 1)
    with pytest.raises(TypeError, match="async"):
        h(lambda: 1)


async def test_decorator_hedges_an_async_function() -> None:
    """The decorator keeps metadata, exposes ``.hedge`` and hedges each call."""
    h = Hedge(1.0)
    dep = Attempts((10.0, "a"), (0.1, "b"))

    @h
    async def fetch() -> str:
        """Fetch."""
        return str(await dep())

    assert fetch.__doc__ == "Fetch." and fetch.hedge is h  # type: ignore[attr-defined]
    assert await fetch() == "b"


def test_set_delay_emits_a_setting_change(clock: FakeClock) -> None:
    """set_delay swaps the delay, emitting SettingChanged when it changes; bad values refused."""
    events: list[Event] = []
    h = Hedge(1.0, name="h", clock=clock, listeners=[events.append])
    h.set_delay(0.25)
    h.set_delay(0.25)
    assert h.delay == 0.25
    assert events == [
        SettingChanged(
            policy="h", time=1000.0, setting="hedge_delay", old=1.0, new=0.25, reason="set_delay"
        )
    ]
    with pytest.raises(ValueError, match="delay"):
        h.set_delay(-1.0)


def test_bad_settings_are_refused_by_name() -> None:
    """``delay`` >= 0, ``max_hedges`` an int >= 1, ``name`` non-empty."""
    with pytest.raises(ValueError, match="delay"):
        Hedge(-0.1)
    with pytest.raises(ValueError, match="delay"):
        Hedge(float("nan"))
    with pytest.raises(ValueError, match="max_hedges"):
        Hedge(1.0, max_hedges=0)
    with pytest.raises(TypeError, match="max_hedges"):
        Hedge(1.0, max_hedges=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        Hedge(1.0, name="")


def test_repr_names_the_settings() -> None:
    """repr shows the delay, max_hedges and name."""
    assert repr(Hedge(0.5, max_hedges=2, name="h")) == "Hedge(delay=0.5, max_hedges=2, name='h')"
