"""Timeouts on ``asyncio.timeout``: which limit fired, the callee really cancelled, sync refused.

Every test runs on ``looptime``'s virtual loop time: a 10 s sleep costs nothing and the loop's
clock says exactly when each thing happened.
"""

from __future__ import annotations

import asyncio
import functools
import pickle
from typing import Any

import pytest
from sage_resilience.core import (
    CallRejected,
    Event,
    LoopClock,
    ResilienceError,
    ResilienceTimeoutError,
    Retry,
    Timeout,
    TimeoutStats,
)

pytestmark = pytest.mark.looptime

# Sleeps here run on a virtual-time loop (looptime, or the simulator's): sleeping on the loop's
# clock takes no real time.
VIRTUAL = LoopClock()


def now() -> float:
    return asyncio.get_running_loop().time()


async def sleeper(seconds: float, result: Any = "done") -> Any:
    await asyncio.sleep(seconds)
    return result


class Recorder:
    """An async callee that records how it ended: returned, cancelled, or raised."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ended: str | None = None
        self.task: asyncio.Task[Any] | None = None
        self.ended_at: float | None = None

    async def __call__(self) -> str:
        self.task = asyncio.current_task()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        finally:
            self.ended_at = now()
        self.ended = "returned"
        return "answer"


# -- firing --------------------------------------------------------------------------------------


async def test_fires_after_seconds_with_our_error() -> None:
    """A callee slower than the limit is stopped at exactly ``seconds`` with our TimeoutError."""
    t = Timeout(1.5, name="db")
    start = now()
    with pytest.raises(ResilienceTimeoutError) as info:
        await t.acall(sleeper, 10.0)
    assert now() - start == pytest.approx(1.5)
    err = info.value
    assert isinstance(err, TimeoutError)
    assert isinstance(err, ResilienceError)
    assert (err.name, err.seconds, err.kind) == ("db", 1.5, "attempt")
    assert "attempt timeout 'db'" in str(err) and "1.5s" in str(err)
    assert t.fired == 1


async def test_total_kind_is_named_in_the_error() -> None:
    """``kind="total"`` says that the overall deadline fired, not a per-attempt one."""
    t = Timeout(2.0, kind="total", name="search")
    with pytest.raises(ResilienceTimeoutError) as info:
        await t.acall(sleeper, 5.0)
    assert info.value.kind == "total"
    assert "total timeout 'search'" in str(info.value)


async def test_fast_call_returns_its_value_without_waiting() -> None:
    """A callee within the limit returns its value at once; the limit costs no time."""
    t = Timeout(5.0)
    start = now()
    assert await t.acall(sleeper, 1.0, result=42) == 42
    assert now() - start == pytest.approx(1.0)
    assert t.fired == 0


async def test_callee_own_timeout_error_passes_through_unchanged() -> None:
    """A TimeoutError raised by the callee itself is the same object, not ours."""
    mine = TimeoutError("the driver's own timeout")

    async def driver() -> None:
        await VIRTUAL.asleep(0.5)
        raise mine

    t = Timeout(5.0)
    with pytest.raises(TimeoutError) as info:
        await t.acall(driver)
    assert info.value is mine
    assert not isinstance(info.value, ResilienceTimeoutError)
    assert t.fired == 0


async def test_callee_other_errors_pass_through() -> None:
    """Any other exception of the callee propagates unchanged."""
    boom = ConnectionError("refused")

    async def failing() -> None:
        raise boom

    with pytest.raises(ConnectionError) as info:
        await Timeout(1.0).acall(failing)
    assert info.value is boom


async def test_cancelled_callee_really_is_cancelled() -> None:
    """When the limit fires the callee is cancelled and done before the caller hears of it."""
    callee = Recorder(10.0)
    with pytest.raises(ResilienceTimeoutError) as info:
        await Timeout(1.0).acall(callee)
    assert callee.ended == "cancelled"
    assert callee.ended_at == pytest.approx(1.0)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_runs_in_the_callers_task_no_extra_task() -> None:
    """Unlike wait_for, the callee runs in the caller's own task (a cancel scope, no task)."""
    callee = Recorder(0.1)
    assert await Timeout(1.0).acall(callee) == "answer"
    assert callee.task is asyncio.current_task()


async def test_caller_cancellation_is_not_a_timeout() -> None:
    """Cancelling the caller propagates CancelledError; the timeout does not claim it."""
    t = Timeout(10.0)
    callee = Recorder(100.0)
    task = asyncio.create_task(t.acall(callee))
    await VIRTUAL.asleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert callee.ended == "cancelled"
    assert t.fired == 0


async def test_callee_that_swallows_cancellation_returns_its_value() -> None:
    """A callee that swallows the cancellation and answers is answered (asyncio's rule)."""

    async def stubborn() -> str:
        try:
            await VIRTUAL.asleep(10.0)
        except asyncio.CancelledError:
            return "partial"
        return "full"

    assert await Timeout(1.0).acall(stubborn) == "partial"


async def test_inner_attempt_timeout_passes_through_outer_total() -> None:
    """Nested: the per-attempt limit fires first and the total limit lets its error through."""
    attempt = Timeout(1.0, kind="attempt", name="attempt")
    total = Timeout(5.0, kind="total", name="total")
    with pytest.raises(ResilienceTimeoutError) as info:
        await total.acall(attempt.acall, sleeper, 10.0)
    assert info.value.kind == "attempt"
    assert (attempt.fired, total.fired) == (1, 0)


async def test_outer_total_fires_through_inner_attempt() -> None:
    """Nested: when the total limit is the shorter one, it is the one reported."""
    attempt = Timeout(5.0, kind="attempt", name="attempt")
    total = Timeout(1.0, kind="total", name="total")
    start = now()
    with pytest.raises(ResilienceTimeoutError) as info:
        await total.acall(attempt.acall, sleeper, 10.0)
    assert info.value.kind == "total"
    assert now() - start == pytest.approx(1.0)
    assert (attempt.fired, total.fired) == (0, 1)


async def test_each_retry_attempt_gets_a_fresh_limit() -> None:
    """Inside a retry each attempt has its own limit, and our timeout error is retried."""
    attempts: list[float] = []

    async def slow_then_fast() -> str:
        attempts.append(now())
        await VIRTUAL.asleep(10.0 if len(attempts) == 1 else 0.5)
        return "ok"

    t = Timeout(1.0)
    retry = Retry(max_attempts=3, initial_delay=0.25, jitter=False)
    start = now()
    assert await retry.acall(t.acall, slow_then_fast) == "ok"
    assert [a - start for a in attempts] == pytest.approx([0.0, 1.25])
    assert t.fired == 1


# -- sync is refused -----------------------------------------------------------------------------


def test_decorating_a_sync_function_is_a_type_error() -> None:
    """A sync call cannot be interrupted: decorating one is refused, pointing at the deadline."""

    def sync() -> None:
        pass

    with pytest.raises(TypeError, match="deadline"):
        Timeout(1.0)(sync)
    with pytest.raises(TypeError):
        Timeout(1.0)(42)  # type: ignore[arg-type]


def test_call_is_a_type_error() -> None:
    """``Timeout.call`` refuses without calling the function."""
    called: list[int] = []
    with pytest.raises(TypeError, match="async calls only"):
        Timeout(1.0).call(called.append, 1)
    assert called == []


async def test_decorator_wraps_async_functions_and_callables() -> None:
    """The decorator keeps metadata, passes arguments, takes async objects and partials."""
    t = Timeout(2.0)

    async def fetch(key: str, *, scale: int = 1) -> str:
        """Fetch a key."""
        await VIRTUAL.asleep(0.5)
        return key * scale

    wrapped = t(fetch)
    assert wrapped.__name__ == "fetch" and wrapped.__doc__ == "Fetch a key."
    assert wrapped.timeout is t  # type: ignore[attr-defined]
    assert await wrapped("ab", scale=2) == "abab"
    assert await t(Recorder(0.1))() == "answer"
    assert await t(functools.partial(sleeper, 0.1, "p"))() == "p"
    with pytest.raises(ResilienceTimeoutError):
        await t(functools.partial(sleeper, 3.0))()


# -- telemetry and stats ---------------------------------------------------------------------------


async def test_listener_hears_each_firing_at_loop_time() -> None:
    """Each firing emits one CallRejected with the limit's reason, at the loop's time."""
    events: list[Event] = []
    t = Timeout(1.0, kind="total", name="emb", listeners=[events.append])
    start = now()
    with pytest.raises(ResilienceTimeoutError):
        await t.acall(sleeper, 3.0)
    await t.acall(sleeper, 0.1)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, CallRejected)
    assert (event.policy, event.kind, event.reason) == ("emb", "timeout", "total_timeout")
    assert event.time == pytest.approx(start + 1.0)


async def test_broken_listener_does_not_replace_the_error() -> None:
    """A listener that raises is logged; the caller still gets the timeout error."""

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    with pytest.raises(ResilienceTimeoutError):
        await Timeout(1.0, listeners=[broken]).acall(sleeper, 2.0)


async def test_stats_count_firings() -> None:
    """stats() reports the setting, its kind and how often it fired."""
    t = Timeout(1.0, kind="total", name="t")
    for _ in range(2):
        with pytest.raises(ResilienceTimeoutError):
            await t.acall(sleeper, 2.0)
    await t.acall(sleeper, 0.5)
    assert t.stats() == TimeoutStats(name="t", seconds=1.0, timeout_kind="total", fired=2)


def test_error_survives_pickling() -> None:
    """The timeout error keeps its name, seconds and kind through pickle (process pools)."""
    err = ResilienceTimeoutError("db", seconds=2.5, kind="total")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is ResilienceTimeoutError
    assert (copy.name, copy.seconds, copy.kind) == ("db", 2.5, "total")


def test_error_message_survives_pickling() -> None:
    """The timeout error's message survives pickle too."""
    err = ResilienceTimeoutError("db", seconds=2.5, kind="total")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_repr_names_the_settings() -> None:
    """repr shows seconds, kind and name."""
    assert repr(Timeout(2, kind="total", name="x")) == "Timeout(2.0, kind='total', name='x')"


# -- construction --------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), float("inf")])
def test_bad_seconds_is_value_error_naming_it(seconds: float) -> None:
    """``seconds`` must be a finite number > 0."""
    with pytest.raises(ValueError, match="seconds"):
        Timeout(seconds)


@pytest.mark.parametrize("seconds", ["1", None, True])
def test_non_number_seconds_is_type_error_naming_it(seconds: object) -> None:
    """``seconds`` must be a number (a bool is not one)."""
    with pytest.raises(TypeError, match="seconds"):
        Timeout(seconds)  # type: ignore[arg-type]


def test_bad_kind_and_name_are_value_errors_naming_them() -> None:
    """``kind`` is "attempt" or "total"; ``name`` a non-empty string."""
    with pytest.raises(ValueError, match="kind"):
        Timeout(1.0, kind="overall")
    with pytest.raises(ValueError, match="name"):
        Timeout(1.0, name="")
    with pytest.raises(TypeError, match="listener"):
        Timeout(1.0, listeners=[42])  # type: ignore[list-item]
