"""The shared deadline timer behind ``Timeout``: every call still stops exactly at its own deadline.

A timeout policy arms its calls' ``asyncio.timeout`` scopes from one loop timer per policy
instead of a timer per call. These tests check what that must not change: each call is cancelled
exactly at ``start + seconds`` (virtual loop time, so "exactly" is exact), many calls in flight
at once, deadlines that arrive out of order when ``seconds`` is lowered, cancellation from the
caller, policies shared across loops, and that nothing is left queued once the calls are over.
"""

from __future__ import annotations

import asyncio
from typing import Any

import looptime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sage_resilience.core import LoopClock, ResilienceTimeoutError, Timeout
from sage_resilience.core._deadlines import Deadlines, release

pytestmark = pytest.mark.looptime

# Sleeps here run on looptime's virtual loop: sleeping on the loop's clock takes no real time.
VIRTUAL = LoopClock()


def now() -> float:
    return asyncio.get_running_loop().time()


async def timed(t: Timeout, duration: float, start_after: float) -> tuple[str, float, float]:
    """Start a call of ``duration`` through ``t`` after ``start_after``; how and when it ended."""
    await asyncio.sleep(start_after)
    start = now()
    try:
        await t.acall(asyncio.sleep, duration)
    except ResilienceTimeoutError:
        return ("timeout", start, now())
    return ("ok", start, now())


async def test_many_calls_in_flight_each_stop_at_their_own_deadline() -> None:
    """Staggered calls, some slower than the limit: each slow one stops at its start + seconds."""
    t = Timeout(1.0)
    plan = [(0.5 + (i % 3) * 0.4, i * 0.05) for i in range(40)]  # durations 0.5, 0.9, 1.3
    results = await asyncio.gather(*(timed(t, d, s) for d, s in plan))
    for (duration, _), (how, start, end) in zip(plan, results, strict=True):
        if duration > 1.0:
            assert how == "timeout"
            assert end - start == pytest.approx(1.0)
        else:
            assert how == "ok"
            assert end - start == pytest.approx(duration)
    assert t.fired == sum(1 for d, _ in plan if d > 1.0)
    queue = t._deadlines._queue
    assert queue is not None and not queue.pending


async def test_lowered_seconds_with_longer_calls_in_flight_fires_on_time() -> None:
    """A deadline earlier than one already queued (``seconds`` lowered) is not fired late."""
    t = Timeout(10.0)
    long_call = asyncio.ensure_future(timed(t, 20.0, 0.0))
    await VIRTUAL.asleep(0.1)
    t.seconds = 1.0
    how, start, end = await timed(t, 5.0, 0.0)
    assert how == "timeout" and end - start == pytest.approx(1.0)
    how, start, end = await long_call
    assert how == "timeout" and end - start == pytest.approx(10.0)


async def test_shorter_deadline_after_the_queue_drained_fires_on_time() -> None:
    """A drained queue keeps the timer of its first (later) deadline; a new, earlier deadline
    moves it (found by the property test below: the call ran 1 s instead of 0.5 s)."""
    t = Timeout(2.0)
    await t.acall(asyncio.sleep, 0.0)  # timer armed for t+2, queue drained
    await VIRTUAL.asleep(1.0)
    t.seconds = 0.5
    how, start, end = await timed(t, 1.0, 0.0)
    assert how == "timeout" and end - start == pytest.approx(0.5)


async def test_caller_cancellation_is_not_reported_as_a_timeout() -> None:
    """Cancelling the caller's task under a queued deadline raises CancelledError, not ours."""
    t = Timeout(5.0)
    task = asyncio.ensure_future(t.acall(asyncio.sleep, 10.0))
    await VIRTUAL.asleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert t.fired == 0
    # The cancelled call's deadline is gone: a later call is not disturbed when it comes up.
    assert await t.acall(asyncio.sleep, 4.5, "later") == "later"


async def test_released_calls_leave_no_timer_behind() -> None:
    """Once the timer has run past the last deadline, nothing is queued and no timer is armed."""
    t = Timeout(2.0)
    for _ in range(5):
        await t.acall(asyncio.sleep, 0.1)
    queue = t._deadlines._queue
    assert queue is not None and not queue.pending
    await VIRTUAL.asleep(3.0)  # past the first call's deadline: the timer runs and disarms
    assert queue.handle is None


def test_one_policy_on_two_loops_in_turn() -> None:
    """A policy used by one ``asyncio.run`` and then another fires on each loop's own clock."""
    t = Timeout(0.05)

    async def slow() -> None:
        await asyncio.sleep(10.0)  # real-time: cut at 0.05 s by the timeout under test

    for _ in range(2):
        with pytest.raises(ResilienceTimeoutError):
            asyncio.run(t.acall(slow))
    assert t.fired == 2


async def test_arm_outside_a_task_is_released_by_the_caller() -> None:
    """Entries are released whether or not the scope could be entered."""
    deadlines = Deadlines()
    entry = deadlines.arm(1.0)
    queue = deadlines._queue
    assert queue is not None and list(queue.pending) == [entry]
    release(entry)
    assert not queue.pending


@settings(max_examples=40, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.floats(0.0, 3.0),  # duration
            st.floats(0.0, 2.0),  # start
            st.sampled_from([0.5, 1.0, 1.5, 2.0]),  # seconds at the start
        ),
        min_size=1,
        max_size=25,
    )
)
def test_every_call_ends_at_min_of_duration_and_deadline(
    calls: list[tuple[float, float, float]],
) -> None:
    """Whatever the mix of starts, durations and settings: a call ends at ``start + min(duration,
    seconds)``, and it timed out exactly when its duration was longer than its limit."""
    t = Timeout(1.0)

    async def one(duration: float, start_after: float, seconds: float) -> Any:
        await asyncio.sleep(start_after)
        t.seconds = seconds
        start = now()
        try:
            await t.acall(asyncio.sleep, duration)
        except ResilienceTimeoutError:
            return ("timeout", now() - start)
        return ("ok", now() - start)

    async def main() -> list[Any]:
        return await asyncio.gather(*(one(*c) for c in calls))

    loop = looptime.new_event_loop(start=0.0)
    try:
        results = loop.run_until_complete(main())
    finally:
        loop.close()
    # looptime's clock moves in steps of 1 µs: times are exact to that step.
    for (duration, _, seconds), (how, took) in zip(calls, results, strict=True):
        if duration > seconds + 1e-5:
            assert how == "timeout" and took == pytest.approx(seconds, abs=1e-5)
        elif duration < seconds - 1e-5:
            assert how == "ok" and took == pytest.approx(duration, abs=1e-5)
