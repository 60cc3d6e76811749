"""Bulkhead: the concurrency cap, the FIFO queue (sync and async), refusals, cancellation,
runtime limits, stats, events, bad input, the policy forms, a rule-based state machine over the
decision core, and threads and tasks through one bulkhead.

Time never passes for real: a FakeClock, a ManualClock (below) whose waits block until the test
moves time past them, or an event loop on looptime's virtual time read through LoopClock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sage_resilience.core import (
    Bulkhead,
    BulkheadFull,
    BulkheadStats,
    CallRejected,
    Event,
    FakeClock,
    LoopClock,
    RejectedError,
    Retry,
    RetryConfig,
    SettingChanged,
)
from sage_resilience.core._callables import READY
from sage_resilience.core._gil import GIL_ENABLED
from support.threads import JOIN_TIMEOUT, Interrupted, ManualClock, Worker

# Sleeps here run on a virtual-time loop (looptime, or the simulator's): sleeping on the loop's
# clock takes no real time.
VIRTUAL = LoopClock()


class Room:
    """A guarded call body that records who entered, in order, and the most inside at once;
    each caller stays inside until its gate opens."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.order: list[str] = []
        self.entered: dict[str, threading.Event] = {}
        self.gates: dict[str, threading.Event] = {}

    def expect(self, name: str) -> None:
        self.entered[name] = threading.Event()
        self.gates[name] = threading.Event()

    def visit(self, name: str) -> str:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.order.append(name)
        self.entered[name].set()
        try:
            assert self.gates[name].wait(JOIN_TIMEOUT)
        finally:
            with self.lock:
                self.inside -= 1
        return name

    def wait_entered(self, name: str) -> None:
        assert self.entered[name].wait(JOIN_TIMEOUT), f"{name} never entered"


@pytest.fixture
def events() -> list[Event]:
    """A list that collects events (pass ``events.append`` as a listener)."""
    return []


def stats_tuple(bulkhead: Bulkhead) -> tuple[int, int, int, int, int]:
    """(admitted, rejected, waited, in_use, waiting)."""
    s = bulkhead.stats()
    return (s.admitted, s.rejected, s.waited, s.in_use, s.waiting)


# -- construction and bad input --------------------------------------------------------------


def test_defaults() -> None:
    """No queue and no queue timeout by default; stats start at zero."""
    bulkhead = Bulkhead(4, name="db")
    assert (bulkhead.max_concurrent, bulkhead.max_queue, bulkhead.queue_timeout) == (4, 0, None)
    assert repr(bulkhead) == "Bulkhead(name='db', max_concurrent=4)"
    assert bulkhead.stats() == BulkheadStats(
        name="db", max_concurrent=4, in_use=0, waiting=0, admitted=0, rejected=0, waited=0
    )


class _NoWait:
    def now(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"max_concurrent": 0}, ValueError, "max_concurrent"),
        ({"max_concurrent": -3}, ValueError, "max_concurrent"),
        ({"max_concurrent": 2.0}, TypeError, "max_concurrent"),
        ({"max_concurrent": "2"}, TypeError, "max_concurrent"),
        ({"max_concurrent": True}, TypeError, "max_concurrent"),
        ({"max_concurrent": None}, TypeError, "max_concurrent"),
        ({"max_concurrent": 1, "max_queue": -1}, ValueError, "max_queue"),
        ({"max_concurrent": 1, "max_queue": 1.5}, TypeError, "max_queue"),
        ({"max_concurrent": 1, "max_queue": "3"}, TypeError, "max_queue"),
        ({"max_concurrent": 1, "queue_timeout": -0.5}, ValueError, "queue_timeout"),
        ({"max_concurrent": 1, "queue_timeout": math.nan}, ValueError, "queue_timeout"),
        ({"max_concurrent": 1, "queue_timeout": math.inf}, ValueError, "queue_timeout"),
        ({"max_concurrent": 1, "queue_timeout": "1"}, TypeError, "queue_timeout"),
        ({"max_concurrent": 1, "name": ""}, ValueError, "name"),
        ({"max_concurrent": 1, "name": b"db"}, TypeError, "name"),
        ({"max_concurrent": 1, "clock": object()}, TypeError, "clock"),
        ({"max_concurrent": 1, "clock": _NoWait()}, TypeError, "clock"),
        ({"max_concurrent": 1, "listeners": ["x"]}, TypeError, "listener"),
    ],
)
def test_bad_constructor_arguments_name_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], param: str
) -> None:
    """Every argument out of range or of the wrong type fails at construction, naming it."""
    with pytest.raises(error, match=param):
        Bulkhead(**kwargs)


@pytest.mark.parametrize("timeout", [-1.0, math.nan, "1"], ids=repr)
def test_bad_timeout_is_refused_even_with_a_free_slot(timeout: Any) -> None:
    """A bad timeout fails at once, not only once the bulkhead is busy."""
    bulkhead = Bulkhead(2, clock=FakeClock())
    with pytest.raises((ValueError, TypeError), match="timeout"):
        bulkhead.acquire(timeout)
    with pytest.raises((ValueError, TypeError), match="timeout"):
        asyncio.run(bulkhead.aacquire(timeout))
    assert bulkhead.in_use == 0


@pytest.mark.parametrize("limit", [0, 1.5, "2"], ids=repr)
def test_set_limit_refuses_bad_values_and_changes_nothing(limit: Any) -> None:
    """set_limit with a bad value raises naming max_concurrent and keeps the limit."""
    bulkhead = Bulkhead(2)
    with pytest.raises((ValueError, TypeError), match="max_concurrent"):
        bulkhead.set_limit(limit)
    assert bulkhead.max_concurrent == 2


# -- slots, refusals and stats ---------------------------------------------------------------


def test_try_acquire_and_release_count_slots(events: list[Event], clock: FakeClock) -> None:
    """try_acquire takes a free slot or refuses (counted, with an event); release frees it."""
    bulkhead = Bulkhead(2, clock=clock, listeners=[events.append])
    assert bulkhead.try_acquire()
    assert bulkhead.try_acquire()
    assert not bulkhead.try_acquire()
    assert stats_tuple(bulkhead) == (2, 1, 0, 2, 0)
    assert events == [
        CallRejected(
            policy="bulkhead",
            time=1000.0,
            kind="bulkhead",
            reason="bulkhead_full",
            retry_after=None,
        )
    ]
    bulkhead.release()
    assert bulkhead.try_acquire()
    bulkhead.release()
    bulkhead.release()
    assert stats_tuple(bulkhead) == (3, 1, 0, 0, 0)


def test_release_without_acquire_raises_and_keeps_the_count() -> None:
    """Regression: an extra release drove in_use negative and silently widened the bulkhead."""
    bulkhead = Bulkhead(1)
    with pytest.raises(RuntimeError, match="released more often"):
        bulkhead.release()
    assert bulkhead.in_use == 0
    assert bulkhead.try_acquire()
    assert not bulkhead.try_acquire()


def test_queue_full_is_refused_at_once(events: list[Event]) -> None:
    """With the slots taken and the queue full, a caller gets BulkheadFull("bulkhead_full")."""
    clock = ManualClock()
    bulkhead = Bulkhead(1, max_queue=1, clock=clock, listeners=[events.append])
    assert bulkhead.try_acquire()
    queued = Worker(bulkhead.acquire)
    clock.wait_parked(1)
    with pytest.raises(BulkheadFull) as info:
        bulkhead.acquire()
    assert (info.value.reason, info.value.name, info.value.retry_after) == (
        "bulkhead_full",
        "bulkhead",
        None,
    )
    assert [(type(e), getattr(e, "reason", None)) for e in events] == [
        (CallRejected, "bulkhead_full")
    ]
    assert stats_tuple(bulkhead) == (1, 1, 0, 1, 1)
    bulkhead.release()
    queued.result()
    assert stats_tuple(bulkhead) == (2, 1, 1, 1, 0)
    bulkhead.release()
    assert bulkhead.in_use == 0


def test_queue_timeout_refuses_after_waiting_exactly_that_long(
    clock: FakeClock, events: list[Event]
) -> None:
    """A queued caller gives up after queue_timeout with BulkheadFull("queue_timeout")."""
    bulkhead = Bulkhead(1, max_queue=2, queue_timeout=2.0, clock=clock, listeners=[events.append])
    assert bulkhead.try_acquire()
    with pytest.raises(BulkheadFull) as info:
        bulkhead.acquire()
    assert info.value.reason == "queue_timeout"
    assert clock.now() == 1002.0
    with pytest.raises(BulkheadFull) as info:
        bulkhead.acquire(timeout=0.5)  # an explicit timeout overrides queue_timeout
    assert clock.now() == 1002.5
    with pytest.raises(BulkheadFull) as info:
        bulkhead.acquire(timeout=0)  # no wait at all: refused as full at once
    assert info.value.reason == "bulkhead_full"
    assert clock.now() == 1002.5
    assert [getattr(e, "reason", None) for e in events] == [
        "queue_timeout",
        "queue_timeout",
        "bulkhead_full",
    ]
    assert stats_tuple(bulkhead) == (1, 3, 0, 1, 0)


@pytest.mark.looptime
async def test_async_queue_timeout_on_loop_time() -> None:
    """aacquire gives up after queue_timeout of loop time, and leaves the queue."""
    loop = asyncio.get_running_loop()
    bulkhead = Bulkhead(1, max_queue=1, queue_timeout=3.0, clock=LoopClock())
    t0 = loop.time()
    await bulkhead.aacquire()
    with pytest.raises(BulkheadFull) as info:
        await bulkhead.aacquire()
    assert info.value.reason == "queue_timeout"
    assert loop.time() - t0 == pytest.approx(3.0, abs=1e-5)
    assert stats_tuple(bulkhead) == (1, 1, 0, 1, 0)


# -- FIFO and the cap (sync threads) ---------------------------------------------------------


def test_threads_enter_in_arrival_order_and_never_exceed_the_limit() -> None:
    """Two inside, four queued: each release lets exactly the next in line in, never a third."""
    clock = ManualClock()
    bulkhead = Bulkhead(2, max_queue=10, clock=clock)
    room = Room()
    names = ["h1", "h2", "w1", "w2", "w3", "w4"]
    workers: dict[str, Worker] = {}
    for i, name in enumerate(names):
        room.expect(name)
        workers[name] = Worker(lambda name=name: bulkhead.call(room.visit, name))
        if i < 2:
            room.wait_entered(name)
        else:
            clock.wait_parked(i - 1)
    assert (bulkhead.in_use, bulkhead.waiting) == (2, 4)
    assert not bulkhead.try_acquire()  # no barging past the queue

    for leaving, entering in [("h1", "w1"), ("w1", "w2"), ("h2", "w3"), ("w2", "w4")]:
        room.gates[leaving].set()
        assert workers[leaving].result() == leaving
        room.wait_entered(entering)
        assert bulkhead.in_use == 2
    for name in ("w3", "w4"):
        room.gates[name].set()
        workers[name].result()
    assert room.order == names
    assert room.most == 2
    assert stats_tuple(bulkhead) == (6, 1, 4, 0, 0)


def test_interrupted_sync_waiter_leaves_the_queue() -> None:
    """A BaseException in a queued thread removes it; the slot goes to the one behind it."""
    clock = ManualClock()
    bulkhead = Bulkhead(1, max_queue=5, clock=clock)
    assert bulkhead.try_acquire()
    first = Worker(bulkhead.acquire)
    clock.wait_parked(1)
    second = Worker(bulkhead.acquire)
    clock.wait_parked(2)
    clock.interrupt(first.thread)
    with pytest.raises(Interrupted):
        first.result()
    assert bulkhead.waiting == 1
    bulkhead.release()
    second.result()
    assert stats_tuple(bulkhead) == (2, 0, 1, 1, 0)
    bulkhead.release()


# -- FIFO, the cap and cancellation (async) --------------------------------------------------


@pytest.mark.looptime
async def test_tasks_enter_in_arrival_order_and_never_exceed_the_limit() -> None:
    """Three inside, seven queued: they enter in arrival order as slots free, never four."""
    bulkhead = Bulkhead(3, max_queue=7, clock=LoopClock())
    inside = 0
    most = 0
    order: list[int] = []
    gates = [asyncio.Event() for _ in range(10)]

    async def visit(i: int) -> int:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        order.append(i)
        await gates[i].wait()
        inside -= 1
        return i

    tasks = []
    for i in range(10):
        tasks.append(asyncio.create_task(bulkhead.acall(visit, i)))
        await asyncio.sleep(0)
    assert (bulkhead.in_use, bulkhead.waiting) == (3, 7)
    with pytest.raises(BulkheadFull):
        await bulkhead.aacquire()
    for i in (1, 0, 4, 2, 3, 5, 6, 7, 8, 9):
        gates[i].set()
        await VIRTUAL.asleep(0.1)
        assert inside <= 3
    assert await asyncio.gather(*tasks) == list(range(10))
    assert order == list(range(10))
    assert most == 3
    assert stats_tuple(bulkhead) == (10, 1, 7, 0, 0)


@pytest.mark.looptime
async def test_cancelled_waiter_leaves_the_queue_and_never_leaks_a_slot() -> None:
    """Cancelled waiters (head or not) leave; the slot goes on; every slot comes back."""
    bulkhead = Bulkhead(1, max_queue=5, clock=LoopClock())
    gate = asyncio.Event()
    holder = asyncio.create_task(bulkhead.acall(gate.wait))
    await asyncio.sleep(0)
    a = asyncio.create_task(bulkhead.aacquire())
    b = asyncio.create_task(bulkhead.aacquire())
    c = asyncio.create_task(bulkhead.aacquire())
    await asyncio.sleep(0)
    assert bulkhead.waiting == 3
    a.cancel()
    b.cancel()
    await asyncio.sleep(0)
    assert bulkhead.waiting == 1
    gate.set()
    await holder
    await c
    assert stats_tuple(bulkhead) == (2, 0, 1, 1, 0)
    bulkhead.release()
    assert (a.cancelled(), b.cancelled(), bulkhead.in_use) == (True, True, 0)


@pytest.mark.looptime
async def test_cancelled_right_after_its_slot_was_offered_passes_it_on() -> None:
    """A waiter cancelled after release woke it, before it ran, hands the slot to the next."""
    bulkhead = Bulkhead(1, max_queue=5, clock=LoopClock())
    assert bulkhead.try_acquire()
    first = asyncio.create_task(bulkhead.aacquire())
    await asyncio.sleep(0)
    second = asyncio.create_task(bulkhead.aacquire())
    await asyncio.sleep(0)
    bulkhead.release()  # wakes first...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.wait_for(second, timeout=1.0)
    assert first.cancelled()
    assert stats_tuple(bulkhead) == (2, 0, 1, 1, 0)


@pytest.mark.looptime
async def test_raising_the_limit_lets_queued_callers_in_at_once(events: list[Event]) -> None:
    """set_limit up admits queued callers without any release; an event reports it."""
    loop = asyncio.get_running_loop()
    bulkhead = Bulkhead(1, max_queue=5, clock=LoopClock(), listeners=[events.append])
    t0 = loop.time()
    assert bulkhead.try_acquire()
    waiters = [asyncio.create_task(bulkhead.aacquire()) for _ in range(3)]
    await asyncio.sleep(0)
    bulkhead.set_limit(3)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert (bulkhead.in_use, bulkhead.waiting) == (3, 1)
    assert [w.done() for w in waiters] == [True, True, False]
    assert loop.time() == t0
    assert events == [
        SettingChanged(
            policy="bulkhead",
            time=t0,
            setting="max_concurrent",
            old=1.0,
            new=3.0,
            reason="set_limit",
        )
    ]
    for _ in range(3):
        bulkhead.release()
    await waiters[2]
    bulkhead.release()
    assert stats_tuple(bulkhead) == (4, 0, 3, 0, 0)


@pytest.mark.looptime
async def test_lowering_the_limit_admits_no_more_until_below_it() -> None:
    """After set_limit down, calls in flight finish; nobody enters until in_use < limit."""
    bulkhead = Bulkhead(3, max_queue=1, clock=LoopClock())
    for _ in range(3):
        assert bulkhead.try_acquire()
    waiter = asyncio.create_task(bulkhead.aacquire())
    await asyncio.sleep(0)
    bulkhead.set_limit(1)
    for expected_in_use in (2, 1):
        bulkhead.release()
        await asyncio.sleep(0)
        assert not waiter.done()
        assert bulkhead.in_use == expected_in_use
        assert not bulkhead.try_acquire()
    bulkhead.release()
    await waiter
    assert (bulkhead.in_use, bulkhead.waiting) == (1, 0)
    assert not bulkhead.try_acquire()


# -- rejections, retry, listeners ------------------------------------------------------------


def test_bulkhead_full_is_a_rejection_and_is_not_retried(clock: FakeClock) -> None:
    """BulkheadFull is a RejectedError; a Retry around the bulkhead stops after one attempt."""
    bulkhead = Bulkhead(1, name="pool", clock=clock)
    assert bulkhead.try_acquire()
    retry = Retry(RetryConfig(max_attempts=5, initial_delay=0.0, max_delay=0.0, clock=clock))
    calls: list[int] = []
    with pytest.raises(RejectedError) as info:
        retry.call(bulkhead.call, calls.append, 1)
    assert isinstance(info.value, BulkheadFull)
    assert (info.value.name, info.value.reason, info.value.retry_after) == (
        "pool",
        "bulkhead_full",
        None,
    )
    assert calls == []
    assert retry.stats().attempts == 1
    assert stats_tuple(bulkhead) == (1, 1, 0, 1, 0)


def test_a_raising_listener_never_breaks_a_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusals and set_limit work the same with a listener that raises (it is logged)."""

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    bulkhead = Bulkhead(1, max_queue=1, queue_timeout=1.0, clock=clock, listeners=[broken])
    with caplog.at_level(logging.ERROR, logger="sage_resilience"):
        assert bulkhead.try_acquire()
        assert not bulkhead.try_acquire()
        with pytest.raises(BulkheadFull):
            bulkhead.acquire()
        bulkhead.set_limit(2)
        assert bulkhead.try_acquire()
    assert sum(r.exc_info is not None for r in caplog.records) == 3
    assert stats_tuple(bulkhead) == (2, 2, 0, 2, 0)


# -- the policy forms ------------------------------------------------------------------------


def test_call_with_and_sync_decorator_release_the_slot_even_on_error() -> None:
    """call(), with and the decorator hold a slot for the call and give it back, also on error."""
    bulkhead = Bulkhead(1)

    @bulkhead
    def double(x: int) -> int:
        """Doubles."""
        assert bulkhead.in_use == 1
        return 2 * x

    @bulkhead
    def boom() -> None:
        raise KeyError("boom")

    assert (double.__name__, double.__doc__) == ("double", "Doubles.")
    assert double.policy is bulkhead  # type: ignore[attr-defined]
    assert double(21) == 42
    assert bulkhead.call(lambda *, y: y, y=5) == 5
    with pytest.raises(KeyError):
        boom()
    with bulkhead as entered:
        assert entered is bulkhead
        assert bulkhead.in_use == 1
    with pytest.raises(ZeroDivisionError), bulkhead:
        _ = 1 / 0
    assert bulkhead.in_use == 0
    assert stats_tuple(bulkhead) == (5, 0, 0, 0, 0)


async def test_acall_async_with_and_async_decorator_release_the_slot_even_on_error() -> None:
    """acall(), async with and the async decorator hold a slot and give it back, also on error."""
    bulkhead = Bulkhead(1)

    @bulkhead
    async def double(x: int) -> int:
        assert bulkhead.in_use == 1
        return 2 * x

    async def boom() -> None:
        raise KeyError("boom")

    assert await double(21) == 42
    with pytest.raises(KeyError):
        await bulkhead.acall(boom)
    async with bulkhead as entered:
        assert entered is bulkhead
        assert bulkhead.in_use == 1
    with pytest.raises(ZeroDivisionError):
        async with bulkhead:
            _ = 1 / 0
    assert stats_tuple(bulkhead) == (4, 0, 0, 0, 0)


async def test_aacquire_with_a_free_slot_returns_a_finished_coroutine() -> None:
    """With a slot free and nobody queued, aacquire takes it when called and returns the shared
    finished coroutine, which tasks and gather take like any coroutine."""
    bulkhead = Bulkhead(3)
    ready = bulkhead.aacquire()
    assert bulkhead.in_use == 1
    assert ready is READY and asyncio.iscoroutine(ready)
    assert await ready is None
    assert await asyncio.create_task(bulkhead.aacquire()) is None
    assert await asyncio.gather(bulkhead.aacquire(timeout=1.0)) == [None]  # checked: coroutine
    assert stats_tuple(bulkhead) == (3, 0, 0, 3, 0)
    for _ in range(3):
        bulkhead.release()


async def test_aacquire_raises_its_errors_when_awaited_not_when_called() -> None:
    """As from a coroutine function: a bad timeout or a refusal surfaces at the await."""
    bulkhead = Bulkhead(1)
    bad = bulkhead.aacquire(-1.0)
    with pytest.raises(ValueError, match="timeout"):
        await bad
    assert bulkhead.try_acquire()
    refused = bulkhead.aacquire()  # full, no queue: refused, but only when awaited
    assert bulkhead.stats().rejected == 0
    with pytest.raises(BulkheadFull):
        await refused
    assert bulkhead.stats().rejected == 1
    bulkhead.release()


async def test_decorator_of_a_subclass_with_its_own_acall_uses_it() -> None:
    """The decorator runs call/acall's steps itself, unless a subclass overrides them."""
    seen: list[str] = []

    class Noted(Bulkhead):
        def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            seen.append("call")
            return super().call(fn, *args, **kwargs)

        async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            seen.append("acall")
            return await super().acall(fn, *args, **kwargs)

    bulkhead = Noted(1)

    async def fetch() -> int:
        return 1

    assert await bulkhead(fetch)() == 1
    assert bulkhead(lambda: 2)() == 2
    assert seen == ["acall", "call"]
    assert stats_tuple(bulkhead) == (2, 0, 0, 0, 0)


# -- the decision core as a state machine ----------------------------------------------------


class BulkheadMachine(RuleBasedStateMachine):
    """Drives the decision core the sync and async drivers share (join, step, abandon) beside
    try_acquire, release, set_limit and time, against a model of the slots and the queue."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1000.0)
        self.bulkhead = Bulkhead(2, max_queue=3, clock=self.clock)
        self.limit = 2
        self.held = 0
        self.queue: list[tuple[Any, float]] = []  # (slot, deadline), in arrival order
        self.admitted = self.rejected = self.waited = self.released = 0

    def _free(self) -> bool:
        return self.held < self.limit and not self.queue

    def _admit(self, waited: bool) -> None:
        self.held += 1
        self.admitted += 1
        self.waited += waited
        assert self.bulkhead.in_use <= self.limit  # an admission never goes over the limit

    @rule()
    def try_acquire(self) -> None:
        expected = self._free()
        assert self.bulkhead.try_acquire() == expected
        if expected:
            self._admit(False)
        else:
            self.rejected += 1

    @precondition(lambda self: self.held > 0)
    @rule()
    def release(self) -> None:
        self.bulkhead.release()
        self.held -= 1
        self.released += 1

    @precondition(lambda self: self.held == 0)
    @rule()
    def release_too_many(self) -> None:
        with pytest.raises(RuntimeError):
            self.bulkhead.release()

    @rule(timeout=st.one_of(st.none(), st.just(0.0), st.floats(0.1, 5)))
    def join(self, timeout: float | None) -> None:
        free = self._free()
        try:
            slot = self.bulkhead._join(timeout, sync=True)
        except BulkheadFull as exc:
            assert not free
            assert len(self.queue) >= 3 or timeout == 0.0
            assert exc.reason == "bulkhead_full"
            self.rejected += 1
            return
        if slot is None:
            assert free
            self._admit(False)
        else:
            assert not free
            deadline = math.inf if timeout is None else self.clock.now() + timeout
            self.queue.append((slot, deadline))

    @precondition(lambda self: self.queue)
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.queue) - 1))
        slot, deadline = self.queue[i]
        can_go = i == 0 and self.held < self.limit
        try:
            wait = self.bulkhead._step(slot)
        except BulkheadFull as exc:
            assert not can_go
            assert self.clock.now() >= deadline
            assert exc.reason == "queue_timeout"
            del self.queue[i]
            self.rejected += 1
            return
        if wait is None:
            assert can_go
            del self.queue[0]
            self._admit(True)
        else:
            assert not can_go
            assert self.clock.now() < deadline
            if math.isinf(deadline):
                assert wait == math.inf
            else:
                assert wait == max(deadline - self.clock.now(), 1e-6) or wait == pytest.approx(
                    deadline - self.clock.now()
                )

    @precondition(lambda self: self.queue)
    @rule(data=st.data())
    def abandon(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.queue) - 1))
        self.bulkhead._abandon(self.queue.pop(i)[0])

    @rule(seconds=st.floats(0, 3))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(limit=st.integers(1, 4))
    def set_limit(self, limit: int) -> None:
        self.bulkhead.set_limit(limit)
        self.limit = limit

    @invariant()
    def slots_are_conserved(self) -> None:
        assert 0 <= self.bulkhead.in_use == self.held == self.admitted - self.released
        assert self.bulkhead.stats() == BulkheadStats(
            name="bulkhead",
            max_concurrent=self.limit,
            in_use=self.held,
            waiting=len(self.queue),
            admitted=self.admitted,
            rejected=self.rejected,
            waited=self.waited,
        )

    @invariant()
    def a_head_that_can_go_has_been_woken(self) -> None:
        if self.queue and self.held < self.limit:
            assert self.queue[0][0].event.is_set()


BulkheadMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_bulkhead_state_machine = BulkheadMachine.TestCase


# -- concurrency: threads and tasks through one bulkhead ---------------------------------------


@pytest.fixture
def _switch_often() -> Iterator[None]:
    """Make the interpreter switch threads far more often than usual, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _run_threads(target: Callable[[int], None], n: int) -> None:
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


class Counter:
    """Calls inside the bulkhead right now, the most ever, and outcomes, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0
        self.done = 0
        self.refused = 0

    def enter(self) -> None:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1
            self.done += 1

    def refuse(self) -> None:
        with self.lock:
            self.refused += 1


@pytest.mark.usefixtures("_switch_often")
def test_threads_never_exceed_the_limit_and_counts_are_exact() -> None:
    """8 threads x 300 calls: never more than 3 inside, every slot back, stats exact."""
    # call, with, try_acquire/release, and queue timeouts on a FakeClock.
    clock = FakeClock(1000.0)
    bulkhead = Bulkhead(3, max_queue=4, queue_timeout=0.5, clock=clock)
    counter = Counter()

    def body() -> None:
        counter.enter()
        os.sched_yield()  # hand the GIL to another thread while inside (a yield, not a sleep)
        counter.leave()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            kind = rng.random()
            try:
                if kind < 0.4:
                    bulkhead.call(body)
                elif kind < 0.7:
                    with bulkhead:
                        body()
                elif bulkhead.try_acquire():
                    try:
                        body()
                    finally:
                        bulkhead.release()
                else:
                    counter.refuse()
            except BulkheadFull:
                counter.refuse()

    _run_threads(client, 8)
    assert counter.most <= 3
    assert counter.done + counter.refused == 8 * 300
    assert counter.done > 0
    assert counter.refused > 0  # both outcomes happen (how often depends on the scheduling)
    stats = bulkhead.stats()
    assert (stats.admitted, stats.rejected, stats.in_use, stats.waiting) == (
        counter.done,
        counter.refused,
        0,
        0,
    )


@pytest.mark.usefixtures("_switch_often")
def test_threads_with_a_controller_changing_the_limit() -> None:
    """Callers queue while a controller moves the limit: no slot lost, nobody left waiting."""
    # The limit moves between 1 and 4; never more inside than 4.
    bulkhead = Bulkhead(2, max_queue=16)
    counter = Counter()
    stop = threading.Event()

    def body() -> None:
        counter.enter()
        counter.leave()

    def controller() -> None:
        rng = random.Random(5)
        while not stop.is_set():
            bulkhead.set_limit(rng.choice([1, 2, 3, 4]))
        bulkhead.set_limit(4)

    def client(seed: int) -> None:
        for _ in range(200):
            bulkhead.call(body)

    ctl = threading.Thread(target=controller, daemon=True)
    ctl.start()
    try:
        _run_threads(client, 8)
    finally:
        stop.set()
        ctl.join(JOIN_TIMEOUT)
    assert not ctl.is_alive()
    assert counter.most <= 4
    assert counter.done == 8 * 200
    assert stats_tuple(bulkhead) == (8 * 200, 0, bulkhead.stats().waited, 0, 0)


@pytest.mark.looptime
async def test_many_tasks_with_timeouts_and_cancellations_never_leak_a_slot() -> None:
    """300 tasks with queue timeouts and cancellations: never over 4 inside, no slot leaked."""
    bulkhead = Bulkhead(4, max_queue=30, queue_timeout=1.0, clock=LoopClock())
    counter = Counter()
    rng = random.Random(11)

    cancelled_inside = 0

    async def body(seconds: float) -> None:
        nonlocal cancelled_inside
        counter.enter()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled_inside += 1
            raise
        finally:
            counter.leave()

    async def client(seconds: float) -> None:
        try:
            await bulkhead.acall(body, seconds)
        except BulkheadFull:
            counter.refuse()

    tasks: list[asyncio.Task[None]] = []
    async with asyncio.timeout(10_000):  # a deadlock fails here instead of hanging
        for _ in range(300):
            tasks.append(asyncio.create_task(client(rng.random() * 0.2)))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.05)
            if rng.random() < 0.3:
                rng.choice(tasks).cancel()  # queued, inside, not started yet, or already done
        results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert cancelled > 0
    assert counter.most <= 4
    assert counter.inside == 0
    stats = bulkhead.stats()
    assert (stats.in_use, stats.waiting, stats.rejected) == (0, 0, counter.refused)
    # Every admitted call ran its body; every task was admitted, refused or cancelled in line.
    assert stats.admitted == counter.done
    assert counter.done + counter.refused + cancelled - cancelled_inside == 300
    assert 0 < cancelled_inside < cancelled
    assert counter.refused > 0


class SwitchingQueue(list[Any]):
    """Stands in for the queue: popleft() lets "another thread" run right after it, where
    CPython may switch threads (a call returns), to replay one interleaving exactly."""

    def __init__(self, other_thread: Callable[[], object]) -> None:
        super().__init__()
        self.other_thread = other_thread

    def popleft(self) -> Any:
        item = self.pop(0)
        self.other_thread()
        return item


@pytest.mark.skipif(not GIL_ENABLED, reason="replays a switch between lock-free and locked code")
def test_a_switch_while_a_waiter_leaves_the_queue_never_admits_over_the_limit() -> None:
    """A thread switch while the head leaves the queue never admits over the limit."""
    # Regression: the head was dequeued before its slot was counted; a thread switching in
    # between saw a free slot and an empty queue and got in too (two calls in Bulkhead(1)).
    bulkhead = Bulkhead(1, max_queue=1, clock=FakeClock())
    got_in: list[bool] = []
    bulkhead._waiters = SwitchingQueue(lambda: got_in.append(bulkhead.try_acquire()))  # type: ignore[assignment]
    assert bulkhead.try_acquire()
    slot = bulkhead._join(None, sync=True)
    assert slot is not None
    bulkhead.release()
    assert bulkhead._step(slot) is None  # the waiter gets the slot...
    assert got_in == [False]  # ...and the thread that switched in does not
    assert bulkhead.in_use == 1
