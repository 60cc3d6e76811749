"""Priorities and the priority limiter: the context variable (blocks, decorators, across awaits,
into tasks, per thread), admission below the limit, the line by priority then arrival, each
level's max_wait, shedding strictly from the lowest level up (by example, and in a simulated
overload), the full line, reservations, runtime limits, cancellation, exact stats, events, bad
input, the policy forms, threads, and a rule-based state machine over the decision core.

Time never passes for real: a FakeClock, a ManualClock (``support.threads``) whose waits block
until the test moves time past them, or an event loop on looptime's virtual time read through
LoopClock.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import random
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sage_resilience.adaptive.priority import (
    DEFAULT_MAX_WAIT,
    Priority,
    PriorityLimiter,
    PriorityLimiterStats,
    current_priority,
    priority,
)
from sage_resilience.core import (
    CallRejected,
    Event,
    FakeClock,
    LoopClock,
    RejectedError,
    SettingChanged,
    ShedError,
)
from support.threads import JOIN_TIMEOUT, ManualClock, Worker

CRITICAL, HIGH, NORMAL, LOW, SHEDDABLE = Priority
PATIENT = {level: 100.0 for level in Priority}  # max_wait that never runs out in a test

# Sleeps here run on a virtual-time loop (looptime, or the simulator's): sleeping on the loop's
# clock takes no real time.
VIRTUAL = LoopClock()


async def settle() -> None:
    """Let every ready task run (no virtual time passes)."""
    for _ in range(10):
        await asyncio.sleep(0)


def counts(limiter: PriorityLimiter) -> tuple[dict[str, int], dict[str, int]]:
    """(admitted, shed) by level, without the zeros."""
    stats = limiter.stats()
    return (
        {k: v for k, v in stats.admitted.items() if v},
        {k: v for k, v in stats.shed.items() if v},
    )


def holding(limiter: PriorityLimiter, level: Priority = NORMAL) -> Priority:
    """Take a slot at once (the limiter must have one free)."""
    before = limiter.in_flight
    got = limiter.acquire(level)
    assert limiter.in_flight == before + 1
    return got


# -- the context variable --------------------------------------------------------------------


def test_levels_in_order_and_coercion() -> None:
    """CRITICAL is most important (lowest value); names, numbers and levels coerce."""
    assert list(Priority) == sorted(Priority)
    assert [p.name for p in Priority] == ["CRITICAL", "HIGH", "NORMAL", "LOW", "SHEDDABLE"]
    assert Priority.coerce("high") is HIGH
    assert Priority.coerce(4) is SHEDDABLE
    assert Priority.coerce(LOW) is LOW
    for bad in ("urgent", 9, True, 1.0):
        with pytest.raises(ValueError, match="priority must be one of"):
            Priority.coerce(bad)  # type: ignore[arg-type]


def test_block_sets_and_restores_the_priority() -> None:
    """NORMAL by default; a block sets it, nested blocks stack, an exception still restores."""
    assert current_priority() is NORMAL
    with priority(HIGH) as level:
        assert level is HIGH
        assert current_priority() is HIGH
        with priority("low"):
            assert current_priority() is LOW
        assert current_priority() is HIGH
        with pytest.raises(KeyError), priority(CRITICAL):
            raise KeyError("x")
        assert current_priority() is HIGH
    assert current_priority() is NORMAL


def test_decorator_on_a_sync_function() -> None:
    """A decorated function runs at its priority and restores the caller's, raising or not."""

    @priority(LOW)
    def work(x: int) -> tuple[int, Priority]:
        """Doc."""
        return x * 2, current_priority()

    @priority(CRITICAL)
    def boom() -> None:
        raise ValueError("boom")

    with priority(HIGH):
        assert work(21) == (42, LOW)
        assert current_priority() is HIGH
        with pytest.raises(ValueError):
            boom()
        assert current_priority() is HIGH
    assert work.__name__ == "work"
    assert work.__doc__ == "Doc."


async def test_decorator_on_an_async_function_crosses_awaits() -> None:
    """A decorated coroutine keeps its priority across awaits and restores the caller's."""
    seen: list[Priority] = []

    @priority(SHEDDABLE)
    async def work() -> str:
        seen.append(current_priority())
        await asyncio.sleep(0)
        seen.append(current_priority())
        return "done"

    @priority(HIGH)
    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    assert await work() == "done"
    assert seen == [SHEDDABLE, SHEDDABLE]
    assert current_priority() is NORMAL
    with pytest.raises(ValueError):
        await boom()
    assert current_priority() is NORMAL


async def test_block_crosses_awaits_and_reaches_tasks_created_inside() -> None:
    """Inside the block: awaits keep it, new tasks inherit it (and keep it after the block
    ends); the block's end does not reach them, their changes do not reach the caller."""
    release = asyncio.Event()
    seen: list[Priority] = []

    async def child() -> None:
        seen.append(current_priority())
        await release.wait()
        seen.append(current_priority())
        with priority(LOW):
            seen.append(current_priority())

    with priority(HIGH):
        await asyncio.sleep(0)
        assert current_priority() is HIGH
        task = asyncio.create_task(child())
        await asyncio.sleep(0)
    assert current_priority() is NORMAL
    release.set()
    await task
    assert seen == [HIGH, HIGH, LOW]
    assert current_priority() is NORMAL


async def test_one_priority_object_entered_by_interleaved_tasks() -> None:
    """Regression: the object kept a shared stack of tokens, so two tasks inside the same
    ``with high:`` reset each other's token (ValueError: created in a different Context)."""
    high = priority(HIGH)
    order: list[str] = []
    first_in = asyncio.Event()
    second_in = asyncio.Event()

    async def first() -> Priority:
        with high:
            first_in.set()
            await second_in.wait()
            order.append("first out")
        return current_priority()

    async def second() -> Priority:
        await first_in.wait()
        with priority(LOW), high:
            second_in.set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            order.append("second out")
            assert current_priority() is HIGH
        return current_priority()

    results = await asyncio.gather(first(), second())
    assert results == [NORMAL, NORMAL]
    assert order == ["first out", "second out"]


def test_each_thread_has_its_own_priority() -> None:
    """A thread starts at NORMAL even if started inside a block; its blocks, even with a shared
    priority object, never reach other threads."""
    shared = priority(LOW)
    seen: dict[str, list[Priority]] = {}
    entered = threading.Barrier(2)

    def body(name: str) -> None:
        marks = [current_priority()]
        with shared:
            entered.wait(JOIN_TIMEOUT)
            marks.append(current_priority())
            entered.wait(JOIN_TIMEOUT)
        marks.append(current_priority())
        seen[name] = marks

    with priority(CRITICAL):
        threads = [threading.Thread(target=body, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN_TIMEOUT)
        assert current_priority() is CRITICAL
    assert seen == {"a": [NORMAL, LOW, NORMAL], "b": [NORMAL, LOW, NORMAL]}


def test_an_explicitly_copied_context_carries_the_priority() -> None:
    """What asyncio.to_thread and run_in_executor with copy_context do: the copy has it."""
    with priority(HIGH):
        ctx = contextvars.copy_context()
    assert ctx.run(current_priority) is HIGH
    assert current_priority() is NORMAL


def test_generator_functions_cannot_be_decorated() -> None:
    """The priority would hold only while the generator is created, so it is refused."""

    def gen() -> Iterator[int]:
        yield current_priority()

    async def agen() -> Any:
        yield current_priority()

    for fn in (gen, agen):
        with pytest.raises(TypeError, match="generator"):
            priority(HIGH)(fn)
    with pytest.raises(TypeError, match="callable"):
        priority(HIGH)(42)  # type: ignore[arg-type]


# -- admission and the line ------------------------------------------------------------------


@pytest.mark.looptime
async def test_below_the_limit_everyone_passes_at_once() -> None:
    """Up to the limit, every level is admitted with no wait, SHEDDABLE included."""
    loop = asyncio.get_running_loop()
    limiter = PriorityLimiter(5, clock=LoopClock())
    t0 = loop.time()
    got = [await limiter.aacquire(level) for level in reversed(Priority)]
    assert got == list(reversed(Priority))
    assert loop.time() == t0
    assert (limiter.in_flight, limiter.waiting) == (5, 0)
    assert counts(limiter) == ({p.name: 1 for p in Priority}, {})
    for level in got:
        limiter.release(level)
    assert limiter.in_flight == 0


@pytest.mark.looptime
async def test_at_the_limit_callers_go_by_priority_then_arrival() -> None:
    """With one slot, the waiters enter most important first, in arrival order within a level."""
    limiter = PriorityLimiter(1, max_wait={**PATIENT, SHEDDABLE: 0.0}, clock=LoopClock())
    holder = await limiter.aacquire(NORMAL)
    entered: list[str] = []

    async def visit(name: str, level: Priority) -> None:
        got = await limiter.aacquire(level)
        entered.append(name)
        await VIRTUAL.asleep(1.0)
        limiter.release(got)

    arrivals = [("low1", LOW), ("normal1", NORMAL), ("crit", CRITICAL), ("low2", LOW)]
    arrivals += [("high", HIGH), ("normal2", NORMAL), ("shed", SHEDDABLE)]
    tasks = []
    for name, level in arrivals:
        tasks.append(asyncio.create_task(visit(name, level)))
        await VIRTUAL.asleep(0.01)
    assert limiter.waiting == 6
    limiter.release(holder)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert entered == ["crit", "high", "normal1", "normal2", "low1", "low2"]
    assert isinstance(results[-1], ShedError)  # SHEDDABLE may not wait
    assert counts(limiter) == (
        {"CRITICAL": 1, "HIGH": 1, "NORMAL": 3, "LOW": 2},
        {"SHEDDABLE": 1},
    )


@pytest.mark.looptime
async def test_sheddable_is_refused_at_once_at_the_limit() -> None:
    """SHEDDABLE waits 0 s by default: at the limit it is refused at once, with the hint."""
    loop = asyncio.get_running_loop()
    limiter = PriorityLimiter(1, clock=LoopClock())
    await limiter.aacquire(HIGH)
    t0 = loop.time()
    with pytest.raises(ShedError) as info:
        await limiter.aacquire(SHEDDABLE)
    assert loop.time() == t0
    exc = info.value
    assert isinstance(exc, RejectedError)
    assert (exc.name, exc.priority, exc.reason, exc.retry_after) == (
        "priority_limiter",
        "SHEDDABLE",
        "at_limit",
        1.0,
    )


@pytest.mark.looptime
async def test_each_level_waits_at_most_its_max_wait() -> None:
    """With the slot never freed, each waiter is refused after exactly its level's max_wait."""
    loop = asyncio.get_running_loop()
    limiter = PriorityLimiter(1, clock=LoopClock(), retry_after=2.5)
    await limiter.aacquire(NORMAL)
    t0 = loop.time()
    refused: dict[str, tuple[float, str, float | None]] = {}

    async def wait(level: Priority) -> None:
        with pytest.raises(ShedError) as info:
            await limiter.aacquire(level)
        refused[level.name] = (loop.time() - t0, info.value.reason, info.value.retry_after)

    await asyncio.gather(*(wait(level) for level in (CRITICAL, HIGH, NORMAL, LOW)))
    assert refused == {
        level.name: (pytest.approx(DEFAULT_MAX_WAIT[level], abs=1e-6), "waited_too_long", 2.5)
        for level in (CRITICAL, HIGH, NORMAL, LOW)
    }
    assert (limiter.waiting, limiter.in_flight) == (0, 1)


@pytest.mark.looptime
async def test_a_call_may_ask_to_wait_less_than_its_level() -> None:
    """``timeout`` shortens the wait (never lengthens it), 0 meaning do not wait; running out
    of one's own timeout (reason "timeout") sheds nobody else."""
    loop = asyncio.get_running_loop()
    limiter = PriorityLimiter(1, clock=LoopClock())
    await limiter.aacquire(CRITICAL)
    t0 = loop.time()
    with pytest.raises(ShedError, match="timeout"):
        await limiter.aacquire(CRITICAL, timeout=0.3)
    assert loop.time() - t0 == pytest.approx(0.3, abs=1e-6)
    assert limiter.stats().shedding is None
    with pytest.raises(ShedError, match="waited_too_long"):
        await limiter.aacquire(LOW, timeout=50.0)
    assert loop.time() - t0 == pytest.approx(0.55, abs=1e-6)
    with pytest.raises(ShedError, match="timeout"):
        await limiter.aacquire(HIGH, timeout=0.0)
    assert loop.time() - t0 == pytest.approx(0.55, abs=1e-6)
    assert counts(limiter)[1] == {"CRITICAL": 1, "HIGH": 1, "LOW": 1}


# -- shedding from the lowest level up -------------------------------------------------------


@pytest.mark.looptime
async def test_a_refusal_sheds_every_less_important_caller_until_a_slot_is_free() -> None:
    """Regression: a NORMAL caller timed out while a LOW one that came later stayed in line and
    took the next slot. Now the NORMAL refusal sheds the waiting LOW at once and refuses LOW
    arrivals, while NORMAL and above still queue, until a slot is free with nobody waiting."""
    loop = asyncio.get_running_loop()
    limiter = PriorityLimiter(1, clock=LoopClock())
    t0 = loop.time()
    holder = await limiter.aacquire(HIGH)
    normal = asyncio.create_task(limiter.aacquire(NORMAL))  # max_wait 0.5
    await VIRTUAL.asleep(0.3)
    low = asyncio.create_task(limiter.aacquire(LOW))  # max_wait 0.25: until 0.55
    await VIRTUAL.asleep(0.21)  # t = 0.51
    assert normal.done()
    assert low.done()
    with pytest.raises(ShedError, match="waited_too_long"):
        normal.result()
    with pytest.raises(ShedError) as info:
        low.result()
    assert info.value.reason == "shedding"
    assert limiter.stats().shedding == "LOW"
    with pytest.raises(ShedError, match="shedding"):
        await limiter.aacquire(LOW)
    assert loop.time() - t0 == pytest.approx(0.51, abs=1e-6)

    later_normal = asyncio.create_task(limiter.aacquire(NORMAL))
    later_high = asyncio.create_task(limiter.aacquire(HIGH))
    await settle()
    assert limiter.waiting == 2
    limiter.release(holder)
    await settle()
    assert later_high.done()
    assert not later_normal.done()
    assert limiter.stats().shedding == "LOW"  # still congested: someone waits
    limiter.release(await later_high)
    assert await later_normal is NORMAL
    assert limiter.stats().shedding == "LOW"  # the slot was handed on: still congested
    limiter.release(NORMAL)
    assert limiter.stats().shedding is None  # a free slot and nobody waiting: over
    assert await limiter.aacquire(LOW) is LOW
    assert counts(limiter) == ({"HIGH": 2, "NORMAL": 1, "LOW": 1}, {"NORMAL": 1, "LOW": 2})


@pytest.mark.looptime
async def test_a_full_line_sheds_the_least_important_newest_waiter() -> None:
    """When the line is full, a newcomer pushes out the newest of the least important waiters
    if it is more important than them; otherwise the newcomer is refused."""
    limiter = PriorityLimiter(1, max_queue=2, max_wait=PATIENT, clock=LoopClock())
    await limiter.aacquire(CRITICAL)
    low_a = asyncio.create_task(limiter.aacquire(LOW))
    await settle()
    low_b = asyncio.create_task(limiter.aacquire(LOW))
    await settle()
    normal = asyncio.create_task(limiter.aacquire(NORMAL))
    await settle()
    assert low_b.done()
    assert not low_a.done()
    with pytest.raises(ShedError, match="evicted"):
        low_b.result()
    high = asyncio.create_task(limiter.aacquire(HIGH))
    await settle()
    with pytest.raises(ShedError, match="evicted"):
        low_a.result()
    with pytest.raises(ShedError, match="queue_full"):
        await limiter.aacquire(NORMAL)
    assert limiter.waiting == 2
    assert counts(limiter)[1] == {"LOW": 2, "NORMAL": 1}
    limiter.release(CRITICAL)
    limiter.release(await high)
    limiter.release(await normal)


# -- the simulated overload ------------------------------------------------------------------


@dataclass
class Call:
    level: Priority
    arrived: int  # index in the log
    outcome: str = ""
    decided: int = -1


@dataclass
class Overload:
    """A log of what happened, in the order it happened on the loop."""

    log: list[tuple[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    most_in_flight: int = 0

    def mark(self, kind: str, what: Any = None) -> int:
        self.log.append((kind, what))
        return len(self.log) - 1


async def run_overload(limiter: PriorityLimiter, seed: int) -> Overload:
    """Twice the capacity offered for 30 s: Poisson arrivals of mixed priorities, each holding
    its slot for an exponential time (mean 0.1 s; the limit is 20, so capacity is 200/s)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    levels = list(Priority)
    weights = [0.10, 0.15, 0.25, 0.25, 0.25]
    rate, hold, duration = 400.0, 0.1, 30.0
    run = Overload()

    def free() -> bool:
        # in_flight only grows when a caller is admitted or a slot is handed on at a release,
        # and every one of those is followed by a call of this function.
        run.most_in_flight = max(run.most_in_flight, limiter.in_flight)
        return limiter.in_flight < limiter.limit and limiter.waiting == 0

    async def request(call: Call, seconds: float) -> None:
        try:
            got = await limiter.aacquire(call.level)
        except ShedError as exc:
            assert exc.priority == call.level.name
            call.outcome, call.decided = "shed", run.mark("shed", call)
            return
        call.outcome, call.decided = "admitted", run.mark("admitted", call)
        free()
        await asyncio.sleep(seconds)
        limiter.release(got)
        if free():
            run.mark("free")

    tasks = []
    t = loop.time()
    end = t + duration
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            break
        await asyncio.sleep(t - loop.time())
        call = Call(rng.choices(levels, weights)[0], -1)
        if free():
            run.mark("free")
        call.arrived = run.mark("arrived", call)
        run.calls.append(call)
        tasks.append(asyncio.create_task(request(call, rng.expovariate(1.0 / hold))))
    await asyncio.gather(*tasks)
    return run


def inversions(run: Overload) -> list[tuple[Call, Priority]]:
    """Refused calls breaking "shedding strictly from the lowest level up", each with the less
    important level admitted against it.

    A congested period runs from one moment when a slot is free with nobody waiting to the
    next (the log's "free" marks). Within it, once a caller of level L has arrived and is
    then refused, no caller of a less important level may be admitted from its arrival on:
    levels are refused from the least important up, and a level is never refused while a
    less important one is being served.
    """
    period = 0
    period_of: list[int] = []
    for kind, _ in run.log:
        if kind == "free":
            period += 1
        period_of.append(period)
    # The last admission of each level in each period (log indices grow with time).
    last_admitted: dict[tuple[int, Priority], int] = {}
    for call in run.calls:
        if call.outcome == "admitted":
            key = (period_of[call.decided], call.level)
            last_admitted[key] = max(last_admitted.get(key, -1), call.decided)
    bad = []
    for call in run.calls:
        if call.outcome != "shed":
            continue
        for lower in Priority:
            if lower > call.level:
                later = last_admitted.get((period_of[call.arrived], lower), -1)
                if later > call.arrived:
                    bad.append((call, lower))
    return bad


@pytest.mark.looptime
@pytest.mark.parametrize("seed", [1, 2])
async def test_overload_sheds_strictly_from_the_lowest_level_up(seed: int) -> None:
    """Twice the capacity offered: no level is refused while a less important one is admitted
    in the same congested period, shed shares fall with importance, CRITICAL succeeds >=
    99.9 %, and the limit is never exceeded."""
    limiter = PriorityLimiter(20, clock=LoopClock())
    run = await run_overload(limiter, seed)
    assert inversions(run) == []
    assert run.most_in_flight == 20
    offered = {p: 0 for p in Priority}
    shed = {p: 0 for p in Priority}
    for call in run.calls:
        offered[call.level] += 1
        shed[call.level] += call.outcome == "shed"
    share = [shed[p] / offered[p] for p in Priority]
    assert share == sorted(share), share
    assert share[CRITICAL] <= 0.001
    assert offered[CRITICAL] >= 1000
    assert share[NORMAL] > 0.0  # the overload reached well into the middle levels
    stats = limiter.stats()
    assert stats.shed == {p.name: shed[p] for p in Priority}
    assert stats.admitted == {p.name: offered[p] - shed[p] for p in Priority}
    assert (stats.in_flight, stats.waiting, stats.shedding) == (0, 0, None)


# -- reservations ----------------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_reserved_share_goes_before_priority_order() -> None:
    """LOW reserved 25 % of 4 (one slot): a freed slot goes to the waiting LOW before the
    waiting HIGHs while LOW holds none; then priority order again."""
    limiter = PriorityLimiter(4, reserved={LOW: 0.25}, max_wait=PATIENT, clock=LoopClock())
    for _ in range(4):
        await limiter.aacquire(HIGH)
    high_1 = asyncio.create_task(limiter.aacquire(HIGH))
    await settle()
    low_1 = asyncio.create_task(limiter.aacquire(LOW))
    low_2 = asyncio.create_task(limiter.aacquire(LOW))
    high_2 = asyncio.create_task(limiter.aacquire(HIGH))
    await settle()
    limiter.release(HIGH)
    await settle()
    assert [t.done() for t in (low_1, low_2, high_1, high_2)] == [True, False, False, False]
    limiter.release(HIGH)
    limiter.release(HIGH)
    await settle()
    assert [t.done() for t in (low_2, high_1, high_2)] == [False, True, True]
    limiter.release(await low_1)  # LOW holds none again: its reservation applies
    await settle()
    assert low_2.done()


@pytest.mark.looptime
async def test_a_level_under_its_reservation_is_not_shed() -> None:
    """Shedding below a refused level spares a level still under its reserved share."""
    limiter = PriorityLimiter(
        2, reserved={LOW: 0.5}, max_wait={NORMAL: 0.5, LOW: 10.0}, clock=LoopClock()
    )
    await limiter.aacquire(HIGH)
    await limiter.aacquire(HIGH)
    low = asyncio.create_task(limiter.aacquire(LOW))
    with pytest.raises(ShedError, match="waited_too_long"):
        await limiter.aacquire(NORMAL)
    assert limiter.stats().shedding == "LOW"
    assert not low.done()  # spared: LOW holds less than its one reserved slot
    with pytest.raises(ShedError, match="shedding"):
        await limiter.aacquire(SHEDDABLE)
    limiter.release(HIGH)
    assert await low is LOW


# -- runtime limits --------------------------------------------------------------------------


@pytest.mark.looptime
async def test_raising_the_limit_lets_waiters_in_by_priority(events: list[Event]) -> None:
    """set_limit up admits waiters at once, most important first; an event reports it."""
    loop = asyncio.get_running_loop()
    limiter = PriorityLimiter(
        1, max_wait=PATIENT, clock=LoopClock(), listeners=[events.append], name="pl"
    )
    await limiter.aacquire(NORMAL)
    low = asyncio.create_task(limiter.aacquire(LOW))
    high = asyncio.create_task(limiter.aacquire(HIGH))
    normal = asyncio.create_task(limiter.aacquire(NORMAL))
    await settle()
    t0 = loop.time()
    limiter.set_limit(3)
    await settle()
    assert [t.done() for t in (high, normal, low)] == [True, True, False]
    assert (limiter.in_flight, limiter.waiting) == (3, 1)
    assert events == [
        SettingChanged(policy="pl", time=t0, setting="limit", old=1.0, new=3.0, reason="set_limit")
    ]
    limiter.set_limit(3)
    assert len(events) == 1  # no change, no event
    limiter.release(HIGH)
    assert await low is LOW


@pytest.mark.looptime
async def test_lowering_the_limit_admits_no_more_until_below_it() -> None:
    """After set_limit down, calls in flight finish; nobody enters until in_flight < limit."""
    limiter = PriorityLimiter(3, max_wait=PATIENT, clock=LoopClock())
    for _ in range(3):
        await limiter.aacquire(NORMAL)
    waiter = asyncio.create_task(limiter.aacquire(CRITICAL))
    await settle()
    limiter.set_limit(1)
    for expected in (2, 1):
        limiter.release(NORMAL)
        await settle()
        assert not waiter.done()
        assert limiter.in_flight == expected
    limiter.release(NORMAL)
    assert await waiter is CRITICAL
    assert limiter.in_flight == 1


# -- cancellation ----------------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_cancelled_waiter_leaves_the_line_and_leaks_no_slot() -> None:
    """Cancelled waiters (first in line or not) leave; the slot goes to the next; all come
    back, and nothing is counted for the cancelled."""
    limiter = PriorityLimiter(1, max_wait=PATIENT, clock=LoopClock())
    await limiter.aacquire(NORMAL)
    first = asyncio.create_task(limiter.aacquire(HIGH))
    middle = asyncio.create_task(limiter.aacquire(NORMAL))
    last = asyncio.create_task(limiter.aacquire(LOW))
    await settle()
    first.cancel()
    middle.cancel()
    await settle()
    assert limiter.waiting == 1
    limiter.release(NORMAL)
    assert await last is LOW
    limiter.release(LOW)
    assert (first.cancelled(), middle.cancelled()) == (True, True)
    assert (limiter.in_flight, limiter.waiting) == (0, 0)
    assert counts(limiter) == ({"NORMAL": 1, "LOW": 1}, {})


@pytest.mark.looptime
@pytest.mark.parametrize(
    "cancel_first", [False, True], ids=["release-then-cancel", "cancel-then-release"]
)
async def test_a_slot_granted_to_a_waiter_being_cancelled_is_given_back_once(
    cancel_first: bool,
) -> None:
    """Granted and cancelled in the same instant: the slot goes back exactly once (to the next
    waiter), and the cancelled waiter is not counted as admitted."""
    limiter = PriorityLimiter(1, max_wait=PATIENT, clock=LoopClock())
    await limiter.aacquire(NORMAL)
    doomed = asyncio.create_task(limiter.aacquire(HIGH))
    await settle()
    next_in_line = asyncio.create_task(limiter.aacquire(LOW))
    await settle()
    if cancel_first:
        doomed.cancel()
        limiter.release(NORMAL)
    else:
        limiter.release(NORMAL)  # hands the slot to the HIGH waiter...
        doomed.cancel()  # ...cancelled before it runs
    assert await next_in_line is LOW
    await settle()
    assert doomed.cancelled()
    assert (limiter.in_flight, limiter.waiting) == (1, 0)
    limiter.release(LOW)
    assert limiter.in_flight == 0
    assert counts(limiter) == ({"NORMAL": 1, "LOW": 1}, {})
    with pytest.raises(RuntimeError):
        limiter.release(HIGH)


# -- stats, events, errors -------------------------------------------------------------------


def test_stats_are_exact(clock: FakeClock) -> None:
    """Admitted and shed are counted per level, once each; the view shows the state."""
    limiter = PriorityLimiter(2, name="db", clock=clock)
    holding(limiter, HIGH)
    holding(limiter, LOW)
    for level in (SHEDDABLE, SHEDDABLE, LOW):
        with pytest.raises(ShedError):
            limiter.acquire(level)  # LOW waits 0.25 s of fake time, then is shed
    limiter.release(LOW)
    holding(limiter, CRITICAL)
    assert limiter.stats() == PriorityLimiterStats(
        name="db",
        limit=2,
        in_flight=2,
        waiting=0,
        admitted={"CRITICAL": 1, "HIGH": 1, "NORMAL": 0, "LOW": 1, "SHEDDABLE": 0},
        shed={"CRITICAL": 0, "HIGH": 0, "NORMAL": 0, "LOW": 1, "SHEDDABLE": 2},
        shedding=None,
    )
    assert clock.now() == pytest.approx(1000.25)


def test_releasing_a_slot_never_taken_raises(clock: FakeClock) -> None:
    """More releases than acquires at a level is a bug in the caller: RuntimeError, counts kept."""
    limiter = PriorityLimiter(2, clock=clock)
    holding(limiter, HIGH)
    with pytest.raises(RuntimeError, match="LOW"):
        limiter.release(LOW)
    assert limiter.in_flight == 1
    limiter.release(HIGH)
    with pytest.raises(RuntimeError):
        limiter.release(HIGH)
    assert limiter.in_flight == 0


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.mark.looptime
async def test_refusals_are_reported_as_events(events: list[Event]) -> None:
    """Every refusal emits CallRejected (kind "shed", reason:level, the hint); a listener that
    raises breaks nothing."""

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    loop = asyncio.get_running_loop()
    limiter = PriorityLimiter(
        1, clock=LoopClock(), name="api", retry_after=3.0, listeners=[broken, events.append]
    )
    await limiter.aacquire(HIGH)
    with pytest.raises(ShedError):
        await limiter.aacquire(SHEDDABLE)
    with pytest.raises(ShedError):
        await limiter.aacquire(LOW)
    t = loop.time()
    assert [(e.reason, e.time) for e in events if isinstance(e, CallRejected)] == [
        ("at_limit:sheddable", pytest.approx(t - 0.25)),
        ("waited_too_long:low", pytest.approx(t)),
    ]
    assert all(
        isinstance(e, CallRejected) and (e.policy, e.kind, e.retry_after) == ("api", "shed", 3.0)
        for e in events
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"limit": 0}, ValueError, "limit"),
        ({"limit": 1.5}, TypeError, "limit"),
        ({"max_wait": {LOW: -1.0}}, ValueError, r"max_wait\[LOW\]"),
        ({"max_wait": {HIGH: math.nan}}, ValueError, r"max_wait\[HIGH\]"),
        ({"max_wait": {"urgent": 1.0}}, ValueError, "max_wait"),
        ({"max_queue": -1}, ValueError, "max_queue"),
        ({"reserved": {LOW: 1.5}}, ValueError, r"reserved\[LOW\]"),
        ({"reserved": {9: 0.1}}, ValueError, "reserved"),
        ({"reserved": {LOW: 0.6, HIGH: 0.6}}, ValueError, "reserved"),
        ({"reserved": {SHEDDABLE: 0.1}}, ValueError, r"max_wait\[SHEDDABLE\]"),
        ({"retry_after": 0.0}, ValueError, "retry_after"),
        ({"name": ""}, ValueError, "name"),
        ({"clock": object()}, TypeError, "clock"),
    ],
)
def test_bad_parameters_raise_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bad parameter raises when the limiter is built, naming the parameter."""
    kwargs.setdefault("limit", 2)
    with pytest.raises(error, match=message):
        PriorityLimiter(**kwargs)


def test_bad_per_call_arguments(clock: FakeClock) -> None:
    """A bad level or timeout is refused before anything is counted; set_limit checks too."""
    limiter = PriorityLimiter(1, clock=clock)
    with pytest.raises(ValueError, match="priority"):
        limiter.acquire("urgent")
    for timeout in (-1.0, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            limiter.acquire(HIGH, timeout=timeout)
    with pytest.raises(ValueError, match="limit"):
        limiter.set_limit(0)
    assert counts(limiter) == ({}, {})
    assert limiter.in_flight == 0


def test_max_wait_per_level_and_defaults() -> None:
    """A level left out of max_wait keeps its default; infinity is allowed."""
    limiter = PriorityLimiter(1, max_wait={"low": 2.0, CRITICAL: math.inf})
    assert [limiter.max_wait(p) for p in Priority] == [math.inf, 1.0, 0.5, 2.0, 0.0]


@pytest.mark.looptime
async def test_an_infinite_max_wait_waits_until_a_slot_frees() -> None:
    """max_wait = inf: the waiter waits as long as needed and gets the slot."""
    loop = asyncio.get_running_loop()
    limiter = PriorityLimiter(1, max_wait={CRITICAL: math.inf}, clock=LoopClock())
    await limiter.aacquire(NORMAL)
    waiter = asyncio.create_task(limiter.aacquire(CRITICAL))
    await VIRTUAL.asleep(10_000.0)
    assert not waiter.done()
    t = loop.time()
    limiter.release(NORMAL)
    assert await waiter is CRITICAL
    assert loop.time() == t


# -- the policy forms ------------------------------------------------------------------------


@pytest.mark.looptime
async def test_call_acall_and_decorator_use_the_context_priority() -> None:
    """call, acall and the decorator take a slot at the context's priority and give it back."""
    limiter = PriorityLimiter(1, clock=LoopClock())

    def seen_inside() -> tuple[int, Priority]:
        return limiter.in_flight, current_priority()

    async def aseen_inside() -> tuple[int, Priority]:
        await VIRTUAL.asleep(0.1)
        return limiter.in_flight, current_priority()

    @limiter
    async def decorated() -> int:
        return limiter.in_flight

    with priority(HIGH):
        assert limiter.call(seen_inside) == (1, HIGH)
    with priority(LOW):
        assert await limiter.acall(aseen_inside) == (1, LOW)
    assert await priority(CRITICAL)(decorated)() == 1
    with pytest.raises(ZeroDivisionError):
        limiter.call(lambda: 1 / 0)
    assert limiter.in_flight == 0
    assert counts(limiter)[0] == {"CRITICAL": 1, "HIGH": 1, "NORMAL": 1, "LOW": 1}
    assert decorated.policy is limiter  # type: ignore[attr-defined]


@pytest.mark.looptime
async def test_the_level_given_per_call_wins_over_the_context() -> None:
    """acquire(level) ignores the context; acquire() reads it."""
    limiter = PriorityLimiter(2, clock=LoopClock())
    with priority(SHEDDABLE):
        assert await limiter.aacquire(CRITICAL) is CRITICAL
        assert await limiter.aacquire() is SHEDDABLE
    assert counts(limiter)[0] == {"CRITICAL": 1, "SHEDDABLE": 1}


# -- threads ---------------------------------------------------------------------------------


def test_threads_wait_by_priority_and_give_up_after_max_wait() -> None:
    """Sync waiters in threads: a release lets the most important in; a waiter whose max_wait
    passes on the clock is shed; each thread uses its own context's priority."""
    clock = ManualClock(start=0.0)
    limiter = PriorityLimiter(1, clock=clock)
    held = limiter.acquire(NORMAL)

    def at(level: Priority) -> Callable[[], Priority]:
        def run() -> Priority:
            with priority(level):
                return limiter.acquire()

        return run

    low = Worker(at(LOW))
    clock.wait_parked(1)
    high = Worker(at(HIGH))
    clock.wait_parked(2)
    critical = Worker(at(CRITICAL))
    clock.wait_parked(3)
    limiter.release(held)
    assert critical.result() is CRITICAL
    clock.wait_parked(2)
    clock.advance(0.3)  # past LOW's 0.25 s
    with pytest.raises(ShedError, match="waited_too_long"):
        low.result()
    clock.wait_parked(1)
    limiter.release(CRITICAL)
    assert high.result() is HIGH
    limiter.release(HIGH)
    assert counts(limiter) == ({"CRITICAL": 1, "HIGH": 1, "NORMAL": 1}, {"LOW": 1})


def test_sync_waiter_on_a_fake_clock_waits_its_max_wait(clock: FakeClock) -> None:
    """On a FakeClock a lone sync waiter moves time by exactly its max_wait, then is shed."""
    limiter = PriorityLimiter(1, clock=clock, max_wait={HIGH: 2.0})
    holding(limiter)
    with pytest.raises(ShedError, match="waited_too_long"):
        limiter.acquire(HIGH)
    assert clock.now() == pytest.approx(1002.0)
    assert limiter.waiting == 0


class WakeOnlyClock(FakeClock):
    """A clock whose time never moves and whose waits end only when the waiter is woken: a
    wake-up lost while a slot is free shows as a thread that never finishes."""

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        if not event.wait(JOIN_TIMEOUT):
            raise AssertionError("a waiter was never woken")
        return True


class Inside:
    """Calls inside the limiter right now and the most ever, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.done = 0

    def visit(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        os.sched_yield()  # hand the GIL to another thread while inside (a yield, not a sleep)
        with self.lock:
            self.now -= 1
            self.done += 1


@pytest.fixture
def _switch_often() -> Iterator[None]:
    """Make the interpreter switch threads far more often than usual, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def run_threads(target: Callable[[int], None], n: int) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait(JOIN_TIMEOUT)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    assert errors == []


def test_a_slot_is_counted_before_its_waiter_leaves_the_line(clock: FakeClock) -> None:
    """While a slot is handed to a waiter, the lock-free path (a free slot and nobody waiting)
    never sees that slot as free: it is counted in flight before the line shrinks."""
    limiter = PriorityLimiter(1, max_wait=PATIENT, clock=clock)
    holding(limiter)
    with limiter._lock:
        waiter = limiter._join(HIGH, None, sync=False)
    seen: list[bool] = []

    class Probe:
        """Stands in for the waiter's future: its wake-up looks at what another thread would."""

        def done(self) -> bool:
            seen.append(limiter.in_flight < limiter.limit and not limiter.waiting)
            return True

    waiter.future = Probe()  # type: ignore[assignment]
    limiter.release(NORMAL)
    assert seen == [False]
    assert limiter._step(waiter) is None


def test_a_waiter_joining_as_a_slot_frees_gets_it_at_its_first_step(clock: FakeClock) -> None:
    """A caller found the limit reached, then a release freed the slot (without the lock,
    seeing nobody in line yet) before the caller joined the line: its first step takes it."""
    limiter = PriorityLimiter(1, max_wait=PATIENT, clock=clock)
    holding(limiter)
    limiter.release(NORMAL)
    with limiter._lock:
        waiter = limiter._join(HIGH, None, sync=True)
    assert limiter._step(waiter) is None
    assert (limiter.in_flight, limiter.waiting) == (1, 0)
    assert counts(limiter)[0] == {"NORMAL": 1, "HIGH": 1}


@pytest.mark.usefixtures("_switch_often")
def test_threads_all_get_in_in_turn_never_over_the_limit() -> None:
    """8 threads x 200 calls, nobody gives up: the lock-free fast path and the locked hand-out
    never admit more than the limit together, and no wake-up is lost."""
    limiter = PriorityLimiter(3, max_wait=PATIENT, max_queue=100, clock=WakeOnlyClock())
    inside = Inside()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            with priority(rng.choice(list(Priority))):
                limiter.call(inside.visit)

    run_threads(client, 8)
    assert inside.most <= 3
    assert inside.done == 1600
    stats = limiter.stats()
    assert sum(stats.admitted.values()) == 1600
    assert sum(stats.shed.values()) == 0
    assert (stats.in_flight, stats.waiting) == (0, 0)


@pytest.mark.usefixtures("_switch_often")
def test_threads_with_refusals_keep_exact_counts() -> None:
    """8 threads x 300 calls on a FakeClock (a wait that is not woken at once runs out): the
    limit holds, every slot comes back, admitted + shed per level is what was offered."""
    limiter = PriorityLimiter(3, max_queue=4, clock=FakeClock(0.0))
    inside = Inside()
    offered = {p.name: 0 for p in Priority}
    refused = {p.name: 0 for p in Priority}
    tally = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            level = rng.choice(list(Priority))
            with tally:
                offered[level.name] += 1
            try:
                with priority(level):
                    limiter.call(inside.visit)
            except ShedError as exc:
                with tally:
                    refused[exc.priority] += 1

    run_threads(client, 8)
    stats = limiter.stats()
    assert inside.most <= 3
    assert (stats.in_flight, stats.waiting) == (0, 0)
    assert stats.shed == refused
    assert sum(refused.values()) > 0
    assert {p: stats.admitted[p] + stats.shed[p] for p in offered} == offered
    assert sum(stats.admitted.values()) == inside.done


# -- the decision core as a state machine ----------------------------------------------------


class Waiting:
    """The model's view of one caller that joined the line."""

    def __init__(self, waiter: Any, level: Priority, seq: int, deadline: float, own: bool) -> None:
        self.waiter = waiter
        self.level = level
        self.seq = seq
        self.deadline = deadline
        self.own = own  # the deadline is the caller's timeout, shorter than the level's wait
        self.state = "queued"  # queued | granted | shed
        self.reason = ""


class PriorityLimiterMachine(RuleBasedStateMachine):
    """Drives the decision core both drivers share (join, step, abandon) beside the fast path,
    release, set_limit and time, against a model of the slots, the lines and the shedding."""

    MAX_QUEUE = 3

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.max_wait = {CRITICAL: 3.0, HIGH: 2.0, NORMAL: 1.0, LOW: 0.5, SHEDDABLE: 0.0}
        self.limiter = PriorityLimiter(
            2, max_wait=self.max_wait, max_queue=self.MAX_QUEUE, clock=self.clock
        )
        self.limit = 2
        self.held = {p: 0 for p in Priority}  # slots held by callers that have them
        self.callers: list[Waiting] = []  # joined the line and not yet told the outcome
        self.admitted = {p: 0 for p in Priority}
        self.shed = {p: 0 for p in Priority}
        self.released = 0
        self.floor = len(Priority)
        self.seq = 0
        self.ceiling = 2  # in_flight may exceed the limit only after set_limit, decreasing

    # the model ---------------------------------------------------------------------------

    def in_flight(self) -> int:
        return sum(self.held.values()) + sum(c.state == "granted" for c in self.callers)

    def line(self) -> list[Waiting]:
        return sorted(
            (c for c in self.callers if c.state == "queued"), key=lambda c: (c.level, c.seq)
        )

    def hand_out(self) -> None:
        while self.in_flight() < self.limit:
            line = self.line()
            if not line:
                self.floor = len(Priority)
                return
            line[0].state = "granted"
            self.admitted[line[0].level] += 1

    def take_out(self, caller: Waiting, reason: str) -> None:
        caller.state, caller.reason = "shed", reason
        self.shed[caller.level] += 1
        if reason != "timeout":
            self.shed_below(caller.level)

    def shed_below(self, level: Priority) -> None:
        if level + 1 < self.floor:
            self.floor = level + 1
            for c in self.line():
                if c.level >= self.floor:
                    c.state, c.reason = "shed", "shedding"
                    self.shed[c.level] += 1

    def refuse(self, level: Priority, reason: str) -> None:
        self.shed[level] += 1
        if reason != "timeout":
            self.shed_below(level)

    # rules ----------------------------------------------------------------------------------

    @rule(level=st.sampled_from(Priority), timeout=st.one_of(st.none(), st.floats(0.0, 2.5)))
    def arrive(self, level: Priority, timeout: float | None) -> None:
        if self.in_flight() < self.limit:
            assert not self.line()
            t = self.clock.now()
            assert self.limiter.acquire(level, timeout) is level
            assert self.clock.now() == t  # at once
            self.held[level] += 1
            self.admitted[level] += 1
            return
        assert self.limiter.in_flight >= self.limiter.limit
        line = self.line()
        own = timeout is not None and timeout < self.max_wait[level]
        wait = self.max_wait[level] if timeout is None else min(timeout, self.max_wait[level])
        if level >= self.floor:
            expected = "shedding"
        elif self.max_wait[level] <= 0.0:
            expected = "at_limit"
        elif wait <= 0.0:
            expected = "timeout"
        elif len(line) >= self.MAX_QUEUE and not any(c.level > level for c in line):
            expected = "queue_full"
        else:
            expected = ""
        try:
            with self.limiter._lock:
                waiter = self.limiter._join(level, timeout, sync=True)
        except ShedError as exc:
            assert exc.reason == expected
            assert exc.priority == level.name
            self.refuse(level, expected)
            return
        assert expected == ""
        if len(line) >= self.MAX_QUEUE:
            victim_level = max(c.level for c in line)
            victim = max((c for c in line if c.level == victim_level), key=lambda c: c.seq)
            self.take_out(victim, "evicted")
        self.seq += 1
        self.callers.append(Waiting(waiter, level, self.seq, self.clock.now() + wait, own))

    @precondition(lambda self: self.callers)
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        caller = data.draw(st.sampled_from(self.callers))
        try:
            wait = self.limiter._step(caller.waiter)
        except ShedError as exc:
            if caller.state == "queued":
                assert self.clock.now() >= caller.deadline
                self.take_out(caller, "timeout" if caller.own else "waited_too_long")
            assert caller.state == "shed"
            assert exc.reason == caller.reason
            self.callers.remove(caller)
            return
        if wait is None:
            assert caller.state == "granted"
            self.callers.remove(caller)
            self.held[caller.level] += 1
        else:
            assert caller.state == "queued"
            assert self.clock.now() < caller.deadline
            assert wait == pytest.approx(max(caller.deadline - self.clock.now(), 1e-6))

    @precondition(lambda self: self.callers)
    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        caller = data.draw(st.sampled_from(self.callers))
        self.limiter._abandon(caller.waiter)
        self.callers.remove(caller)
        if caller.state == "granted":
            self.admitted[caller.level] -= 1
            self.hand_out()

    @rule(level=st.sampled_from(Priority))
    def release(self, level: Priority) -> None:
        if self.held[level] == 0:
            if not any(c.state == "granted" and c.level == level for c in self.callers):
                with pytest.raises(RuntimeError):
                    self.limiter.release(level)
            return
        self.limiter.release(level)
        self.held[level] -= 1
        self.released += 1
        self.hand_out()

    @rule(seconds=st.floats(0.0, 1.5))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(limit=st.integers(1, 4))
    def set_limit(self, limit: int) -> None:
        self.limiter.set_limit(limit)
        self.limit = limit
        self.hand_out()
        self.ceiling = max(limit, self.in_flight())

    # invariants -----------------------------------------------------------------------------

    @invariant()
    def in_flight_within_the_limit(self) -> None:
        in_flight = self.limiter.in_flight
        assert 0 <= in_flight <= max(self.limit, self.ceiling)
        # Over the limit only after lowering it, and then only coming down.
        self.ceiling = max(self.limit, min(self.ceiling, in_flight))

    @invariant()
    def slots_are_conserved(self) -> None:
        assert self.limiter.in_flight == self.in_flight()
        assert self.limiter.in_flight == sum(self.admitted.values()) - self.released

    @invariant()
    def the_waiting_count_is_the_lines_total(self) -> None:
        queues = self.limiter._queues
        assert self.limiter.waiting == sum(len(q) for q in queues) == len(self.line())
        for level, q in enumerate(queues):
            assert [w.level for w in q] == [level] * len(q)
        if self.limiter.waiting:
            assert self.limiter.in_flight >= self.limiter.limit

    @invariant()
    def stats_match_the_model(self) -> None:
        floor = self.floor
        assert self.limiter.stats() == PriorityLimiterStats(
            name="priority_limiter",
            limit=self.limit,
            in_flight=self.in_flight(),
            waiting=len(self.line()),
            admitted={p.name: self.admitted[p] for p in Priority},
            shed={p.name: self.shed[p] for p in Priority},
            shedding=Priority(floor).name if floor < len(Priority) else None,
        )


PriorityLimiterMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50)
test_priority_limiter_state_machine = PriorityLimiterMachine.TestCase
