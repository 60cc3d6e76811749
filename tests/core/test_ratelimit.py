"""RateLimiter: refill, FIFO waiting (sync and async), giving up, cancellation, runtime retuning,
rejections and events, bad input, the policy forms, Hypothesis invariants and concurrency.

Time never passes for real: a FakeClock, a ManualClock (below) whose waits block until the test
moves time past them, or an event loop on looptime's virtual time read through LoopClock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sys
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sage_resilience.core import (
    CallRejected,
    Event,
    FakeClock,
    LoopClock,
    RateLimiter,
    RateLimiterStats,
    RateLimitExceeded,
    RejectedError,
    Retry,
    RetryConfig,
    SettingChanged,
)
from sage_resilience.core import ratelimit as ratelimit_module
from sage_resilience.core._callables import READY
from sage_resilience.core._gil import GIL_ENABLED
from support.threads import JOIN_TIMEOUT, Interrupted, ManualClock, Worker

# Sleeps here run on a virtual-time loop (looptime, or the simulator's): sleeping on the loop's
# clock takes no real time.
VIRTUAL = LoopClock()


@pytest.fixture
def events() -> list[Event]:
    """A list that collects events (pass ``events.append`` as a listener)."""
    return []


# -- construction and bad input --------------------------------------------------------------


def test_defaults(clock: FakeClock) -> None:
    """burst defaults to max(1, rate), the bucket starts full, max_wait to 5 s."""
    slow = RateLimiter(rate=0.5, clock=clock)
    fast = RateLimiter(rate=20, clock=clock, name="api")
    assert (slow.rate, slow.burst, slow.tokens, slow.max_wait) == (0.5, 1.0, 1.0, 5.0)
    assert (fast.burst, fast.tokens, fast.name) == (20.0, 20.0, "api")
    assert repr(fast) == "RateLimiter(name='api', rate=20.0, burst=20.0)"
    assert fast.stats() == RateLimiterStats(
        name="api", rate=20.0, burst=20.0, tokens=20.0, waiting=0, acquired=0, rejected=0, waited=0
    )


class _NoWait:
    def now(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"rate": 0}, ValueError, "rate"),
        ({"rate": -1.0}, ValueError, "rate"),
        ({"rate": math.nan}, ValueError, "rate"),
        ({"rate": math.inf}, ValueError, "rate"),
        ({"rate": "10"}, TypeError, "rate"),
        ({"rate": True}, TypeError, "rate"),
        ({"rate": 1, "burst": 0}, ValueError, "burst"),
        ({"rate": 1, "burst": -2}, ValueError, "burst"),
        ({"rate": 1, "burst": math.inf}, ValueError, "burst"),
        ({"rate": 1, "burst": "5"}, TypeError, "burst"),
        ({"rate": 1, "max_wait": -0.1}, ValueError, "max_wait"),
        ({"rate": 1, "max_wait": math.nan}, ValueError, "max_wait"),
        ({"rate": 1, "max_wait": "1"}, TypeError, "max_wait"),
        ({"rate": 1, "initial_tokens": -1}, ValueError, "initial_tokens"),
        ({"rate": 1, "burst": 2, "initial_tokens": 3}, ValueError, "initial_tokens"),
        ({"rate": 1, "initial_tokens": "1"}, TypeError, "initial_tokens"),
        ({"rate": 1, "name": ""}, ValueError, "name"),
        ({"rate": 1, "name": 7}, TypeError, "name"),
        ({"rate": 1, "clock": object()}, TypeError, "clock"),
        ({"rate": 1, "clock": _NoWait()}, TypeError, "clock"),
        ({"rate": 1, "listeners": [42]}, TypeError, "listener"),
    ],
)
def test_bad_constructor_arguments_name_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], param: str
) -> None:
    """Every argument out of range or of the wrong type fails at construction, naming it."""
    with pytest.raises(error, match=param):
        RateLimiter(**kwargs)


BAD_AMOUNTS = [0, -1, 1.5e9, math.nan, math.inf, "1", None, True, [1]]


@pytest.mark.parametrize("n", BAD_AMOUNTS, ids=repr)
def test_bad_amount_is_a_value_error_naming_n(clock: FakeClock, n: Any) -> None:
    """try_acquire, acquire and aacquire refuse n outside (0, burst] or not a number."""
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    with pytest.raises(ValueError, match="n must be"):
        limiter.try_acquire(n)
    with pytest.raises(ValueError, match="n must be"):
        limiter.acquire(n)
    with pytest.raises(ValueError, match="n must be"):
        asyncio.run(limiter.aacquire(n))
    assert limiter.stats().acquired == 0
    assert limiter.tokens == 5


def test_bool_amount_is_refused_not_taken_as_one(clock: FakeClock) -> None:
    """Regression: the lock-free path took try_acquire(True) as one token."""
    limiter = RateLimiter(rate=1, burst=5, clock=clock)
    with pytest.raises(ValueError, match="n must be"):
        limiter.try_acquire(True)
    assert limiter.tokens == 5


def test_other_real_numbers_are_accepted(clock: FakeClock) -> None:
    """n may be any real number (a Fraction here), taken through the locked path."""
    limiter = RateLimiter(rate=1, burst=5, clock=clock)
    assert limiter.try_acquire(Fraction(3, 2))
    limiter.acquire(Fraction(1, 2))
    assert limiter.tokens == 3.0
    assert isinstance(limiter.tokens, float)


@pytest.mark.parametrize("timeout", [-1.0, math.nan, "1"], ids=repr)
def test_bad_timeout_is_refused_even_when_tokens_are_there(clock: FakeClock, timeout: Any) -> None:
    """A bad timeout fails at once, not only once the limiter is busy."""
    limiter = RateLimiter(rate=1, burst=5, clock=clock)
    with pytest.raises((ValueError, TypeError), match="timeout"):
        limiter.acquire(1, timeout)
    with pytest.raises((ValueError, TypeError), match="timeout"):
        asyncio.run(limiter.aacquire(1, timeout))
    assert limiter.tokens == 5


# -- refill and try_acquire ------------------------------------------------------------------


def test_tokens_refill_continuously_up_to_burst(clock: FakeClock) -> None:
    """Tokens grow at rate per second from the last reading, and stop at burst."""
    limiter = RateLimiter(rate=2, burst=4, initial_tokens=0, clock=clock)
    clock.advance(0.25)
    assert limiter.tokens == pytest.approx(0.5)
    clock.advance(1.0)
    assert limiter.tokens == pytest.approx(2.5)
    clock.advance(100)
    assert limiter.tokens == 4


def test_try_acquire_takes_while_tokens_last_then_refuses(
    clock: FakeClock, events: list[Event]
) -> None:
    """try_acquire never waits: True while tokens last, then False with a rejection event."""
    limiter = RateLimiter(rate=2, burst=2, clock=clock, listeners=[events.append])
    assert limiter.try_acquire()
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    assert clock.now() == 1000.0
    stats = limiter.stats()
    assert (stats.acquired, stats.rejected, stats.waited) == (2, 1, 0)
    assert events == [
        CallRejected(
            policy="rate_limiter",
            time=1000.0,
            kind="rate_limiter",
            reason="rate_limited",
            retry_after=0.5,
        )
    ]
    clock.advance(0.5)
    assert limiter.try_acquire()


def test_try_acquire_of_several_tokens(clock: FakeClock) -> None:
    """try_acquire(n) takes n at once or none at all."""
    limiter = RateLimiter(rate=1, burst=5, clock=clock)
    assert limiter.try_acquire(3)
    assert not limiter.try_acquire(3)
    assert limiter.tokens == 2
    assert limiter.try_acquire(2.0)
    assert limiter.tokens == 0


def test_acquire_waits_exactly_until_the_tokens_are_there(clock: FakeClock) -> None:
    """A sync acquire on an empty bucket waits (n - tokens) / rate on the clock, then takes."""
    limiter = RateLimiter(rate=4, burst=2, initial_tokens=0.5, clock=clock)
    limiter.acquire(2)
    assert clock.now() == pytest.approx(1000.375)
    assert limiter.tokens == pytest.approx(0.0)
    stats = limiter.stats()
    assert (stats.acquired, stats.waited, stats.waiting) == (1, 1, 0)


def test_acquire_refused_at_once_when_it_cannot_be_served_in_time(
    clock: FakeClock, events: list[Event]
) -> None:
    """A wait longer than the timeout raises at once, with retry_after the wait it would need."""
    limiter = RateLimiter(rate=2, burst=4, initial_tokens=1, clock=clock, listeners=[events.append])
    with pytest.raises(RateLimitExceeded) as info:
        limiter.acquire(4, timeout=1.0)
    assert info.value.retry_after == pytest.approx(1.5)
    assert clock.now() == 1000.0
    assert limiter.tokens == 1
    assert limiter.stats().rejected == 1
    assert [type(e) for e in events] == [CallRejected]
    with pytest.raises(RateLimitExceeded):
        limiter.acquire(2, timeout=0)
    limiter.acquire(2, timeout=0.5)  # exactly enough
    assert clock.now() == pytest.approx(1000.5)


class SpinGuardClock(FakeClock):
    """A FakeClock that fails a test whose waiter keeps waiting without being served."""

    __slots__ = ("waits",)

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.waits = 0

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        self.waits += 1
        if self.waits > 100:
            raise AssertionError("a waiter spins without being served")
        return super().wait(event, timeout)


def test_waiter_short_by_float_noise_is_served_not_spun() -> None:
    """A waiter a float-noise fraction of a token short is served, not left spinning."""
    # Regression: at rate 42.387 a waiter ended 2e-12 tokens short and planned a 5e-14 s wait,
    # below the clock's resolution at t=1000: time never moved and it spun forever (a virtual
    # loop or looptime spins the same way).
    clock = SpinGuardClock(1000.0)
    limiter = RateLimiter(rate=42.387, burst=3, initial_tokens=0, clock=clock)
    for _ in range(5):
        limiter.acquire(1)
    assert clock.waits == 5
    assert clock.now() - 1000.0 == pytest.approx(5 / 42.387)
    assert 0.0 <= limiter.tokens < 1e-9


@pytest.mark.skipif(not GIL_ENABLED, reason="replays a thread switch inside lock-free code")
@pytest.mark.parametrize("racer", ["try_acquire", "set_rate"])
def test_a_thread_switch_inside_a_token_update_never_duplicates_tokens(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, racer: str
) -> None:
    """A thread switch inside a token update never lets two callers take one token."""
    # Regression: the lock-free path (and set_rate) called min() between reading the tokens and
    # writing them back; CPython may switch threads when such a call returns, so another
    # thread's take was overwritten. Here each min() the module calls lets "another thread" take a
    # token at that point. One token, so at most one taker.
    limiter = RateLimiter(rate=1, burst=2, initial_tokens=0, clock=clock)
    clock.advance(1)  # one token earned
    taken: list[bool] = []
    real_min = min

    def switching_min(*args: Any, **kwargs: Any) -> Any:
        if not taken:
            taken.append(limiter.try_acquire())
        return real_min(*args, **kwargs)

    monkeypatch.setattr(ratelimit_module, "min", switching_min, raising=False)
    if racer == "try_acquire":
        taken.append(limiter.try_acquire())
    else:
        limiter.set_rate(1, burst=1)
    monkeypatch.undo()
    assert taken.count(True) + limiter.tokens <= 1.0 + 1e-12


# -- FIFO waiting (sync) ---------------------------------------------------------------------


def test_sync_waiters_are_served_in_arrival_order_whatever_their_size() -> None:
    """Threads are served in arrival order, a big head first; try_acquire does not barge in."""
    clock = ManualClock()
    limiter = RateLimiter(rate=1, burst=3, initial_tokens=0, clock=clock)
    served: list[tuple[str, float]] = []

    def client(name: str, n: float) -> Callable[[], None]:
        def run() -> None:
            limiter.acquire(n)
            served.append((name, clock.now()))

        return run

    big = Worker(client("big", 3))
    clock.wait_for_deadlines([1003.0])  # the head plans its own wait
    small1 = Worker(client("small1", 1))
    clock.wait_for_deadlines([1003.0, math.inf])  # the others wait to be woken
    small2 = Worker(client("small2", 1))
    clock.wait_for_deadlines([1003.0, math.inf, math.inf])
    assert limiter.waiting == 3

    clock.advance(1.5)
    assert limiter.tokens == pytest.approx(1.5)
    assert not limiter.try_acquire(1)  # tokens are there, but three callers are ahead
    assert served == []

    clock.advance(1.5)
    big.result()
    clock.wait_for_deadlines([1004.0, math.inf])  # small1 is the head now
    clock.advance(1.0)
    small1.result()
    clock.wait_for_deadlines([1005.0])
    clock.advance(1.0)
    small2.result()
    assert served == [("big", 1003.0), ("small1", 1004.0), ("small2", 1005.0)]
    stats = limiter.stats()
    assert (stats.acquired, stats.waited, stats.rejected, stats.waiting) == (3, 3, 1, 0)
    assert limiter.tokens == pytest.approx(0.0)


def test_interrupted_sync_waiter_leaves_the_queue_and_wakes_the_next() -> None:
    """A KeyboardInterrupt-like exception removes a waiting thread; the next plans its wait."""
    clock = ManualClock()
    limiter = RateLimiter(rate=1, burst=5, initial_tokens=0, clock=clock)
    head = Worker(lambda: limiter.acquire(4))
    clock.wait_for_deadlines([1004.0])
    behind = Worker(lambda: limiter.acquire(2))
    clock.wait_for_deadlines([1004.0, math.inf])

    clock.advance(1.0)
    clock.interrupt(head.thread)
    with pytest.raises(Interrupted):
        head.result()
    # One token is there (none was taken by the interrupted waiter): one more second for two.
    clock.wait_for_deadlines([1002.0])
    assert limiter.waiting == 1
    clock.advance(1.0)
    behind.result()
    assert limiter.tokens == pytest.approx(0.0)
    assert limiter.stats().acquired == 1


def test_waiter_that_gives_up_leaves_and_the_next_is_served_at_once() -> None:
    """A head giving up at its deadline hands the tokens it did not take to the next at once."""
    clock = ManualClock()
    limiter = RateLimiter(rate=1, burst=5, initial_tokens=0, clock=clock)
    head = Worker(lambda: limiter.acquire(5, timeout=10))
    clock.wait_for_deadlines([1005.0])
    behind = Worker(lambda: limiter.acquire(1))
    clock.wait_for_deadlines([1005.0, math.inf])

    clock.advance(1.0)
    limiter.set_rate(0.1)  # the head re-plans: 4 tokens at 0.1/s is past its deadline
    clock.wait_for_deadlines([1010.0, math.inf])
    clock.advance(9.0)
    with pytest.raises(RateLimitExceeded) as info:
        head.result()
    behind.result()
    assert clock.now() == 1010.0
    # At 1010: 1 + 9 * 0.1 = 1.9 tokens; the giver-up would need 5 - 1.9 at 0.1/s after the
    # one token the other waiter takes.
    assert info.value.retry_after == pytest.approx((5 + 1 - 1.9) / 0.1)
    assert limiter.tokens == pytest.approx(0.9)
    assert limiter.waiting == 0


# -- FIFO waiting (async, on virtual loop time) ----------------------------------------------


@pytest.mark.looptime
async def test_async_waiters_are_served_in_arrival_order_whatever_their_size() -> None:
    """Async waiters of sizes 3, 1, 1 go in arrival order at the times the rate allows."""
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=1, burst=3, initial_tokens=0, clock=LoopClock())
    t0 = loop.time()
    served: list[tuple[str, float]] = []

    async def client(name: str, n: float) -> None:
        await limiter.aacquire(n)
        served.append((name, loop.time() - t0))

    tasks = []
    for name, n in [("big", 3), ("small1", 1), ("small2", 1)]:
        tasks.append(asyncio.create_task(client(name, n)))
        await asyncio.sleep(0)
    assert limiter.waiting == 3
    await VIRTUAL.asleep(2)
    assert not limiter.try_acquire()  # two tokens, but three callers ahead
    await asyncio.gather(*tasks)
    assert [name for name, _ in served] == ["big", "small1", "small2"]
    assert [t for _, t in served] == pytest.approx([3.0, 4.0, 5.0], abs=1e-5)


@pytest.mark.looptime
async def test_queue_ahead_decides_at_once(events: list[Event]) -> None:
    """A request that cannot make it behind the queue is refused at once, retry_after included."""
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=1, initial_tokens=0, clock=LoopClock(), listeners=[events.append])
    first = asyncio.create_task(limiter.aacquire(1))
    await asyncio.sleep(0)
    t0 = loop.time()
    with pytest.raises(RateLimitExceeded) as info:
        await limiter.aacquire(1, timeout=1.5)
    assert loop.time() == t0
    assert info.value.retry_after == pytest.approx(2.0)
    assert isinstance(events[-1], CallRejected)
    assert events[-1].retry_after == pytest.approx(2.0)
    await limiter.aacquire(1, timeout=2.0)  # exactly in time, behind the first
    assert first.done()
    assert loop.time() - t0 == pytest.approx(2.0, abs=1e-5)


@pytest.mark.looptime
async def test_waiter_gives_up_at_its_deadline_with_retry_after() -> None:
    """A waiter outrun by a rate drop raises at its deadline; the tokens earned stay."""
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=1, initial_tokens=0, clock=LoopClock())
    t0 = loop.time()
    waiter = asyncio.create_task(limiter.aacquire(1, timeout=2))
    await VIRTUAL.asleep(0.5)
    limiter.set_rate(0.1)
    with pytest.raises(RateLimitExceeded) as info:
        await waiter
    assert loop.time() - t0 == pytest.approx(2.0, abs=1e-5)
    assert limiter.tokens == pytest.approx(0.65, abs=1e-5)
    assert info.value.retry_after == pytest.approx(3.5, abs=1e-3)
    assert limiter.waiting == 0


@pytest.mark.looptime
async def test_cancelled_head_leaves_without_losing_tokens_and_the_next_goes() -> None:
    """A cancelled head takes no token; the next is served at once from those earned."""
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=1, burst=3, initial_tokens=0, clock=LoopClock())
    t0 = loop.time()
    head = asyncio.create_task(limiter.aacquire(3))
    await asyncio.sleep(0)
    behind = asyncio.create_task(limiter.aacquire(1))
    last = asyncio.create_task(limiter.aacquire(1))
    await VIRTUAL.asleep(1.5)
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    await behind
    assert loop.time() - t0 == pytest.approx(1.5, abs=1e-5)
    await last
    assert loop.time() - t0 == pytest.approx(2.0, abs=1e-5)
    assert limiter.tokens == pytest.approx(0.0, abs=1e-5)
    stats = limiter.stats()
    assert (stats.acquired, stats.waited, stats.waiting, stats.rejected) == (2, 2, 0, 0)


@pytest.mark.looptime
async def test_cancelled_waiter_in_the_middle_leaves_the_line() -> None:
    """A cancelled waiter behind the head leaves; those behind it move up and keep their order."""
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=1, burst=2, initial_tokens=0, clock=LoopClock())
    t0 = loop.time()
    order: list[str] = []

    async def client(name: str, n: float) -> None:
        await limiter.aacquire(n)
        order.append(name)

    a = asyncio.create_task(client("a", 1))
    await asyncio.sleep(0)
    b = asyncio.create_task(client("b", 2))
    await asyncio.sleep(0)
    c = asyncio.create_task(client("c", 1))
    await asyncio.sleep(0)
    b.cancel()
    await asyncio.gather(a, c, return_exceptions=True)
    assert order == ["a", "c"]
    assert loop.time() - t0 == pytest.approx(2.0, abs=1e-5)
    assert limiter.waiting == 0


@pytest.mark.looptime
async def test_cancelled_right_after_being_woken_hands_on_the_wake_up() -> None:
    """A waiter cancelled after its wake-up was sent but before it ran passes the turn on."""
    limiter = RateLimiter(rate=1, burst=2, initial_tokens=0, clock=LoopClock())
    head = asyncio.create_task(limiter.aacquire(2))
    await asyncio.sleep(0)
    behind = asyncio.create_task(limiter.aacquire(1))
    await asyncio.sleep(0)
    limiter.set_rate(1000)  # wakes the head...
    head.cancel()  # ...which is cancelled before it runs
    await asyncio.wait_for(behind, timeout=1.0)
    assert head.cancelled()
    assert limiter.waiting == 0


@pytest.mark.looptime
async def test_async_with_and_acall_wait_up_to_max_wait() -> None:
    """async with and acall wait for a token up to max_wait, then raise RateLimitExceeded."""
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=2, burst=1, max_wait=0.5, clock=LoopClock())
    t0 = loop.time()
    async with limiter as entered:
        assert entered is limiter
    async with limiter:
        pass
    assert loop.time() - t0 == pytest.approx(0.5, abs=1e-5)

    async def work(x: int, *, y: int) -> int:
        return x + y

    assert await limiter.acall(work, 1, y=2) == 3
    assert loop.time() - t0 == pytest.approx(1.0, abs=1e-5)
    tight = RateLimiter(rate=1, burst=1, initial_tokens=0, max_wait=0.5, clock=LoopClock())
    with pytest.raises(RateLimitExceeded):
        async with tight:
            pass
    with pytest.raises(RateLimitExceeded):
        await tight.acall(work, 1, y=2)


# -- runtime retuning ------------------------------------------------------------------------


def test_set_rate_credits_tokens_earned_at_the_old_rate(clock: FakeClock) -> None:
    """Tokens earned before the change count at the old rate; after it, at the new one."""
    limiter = RateLimiter(rate=1, burst=10, initial_tokens=0, clock=clock)
    clock.advance(2)
    limiter.set_rate(100)
    assert limiter.tokens == pytest.approx(2.0)
    clock.advance(0.05)
    assert limiter.tokens == pytest.approx(7.0)
    limiter.set_rate(0.5)
    clock.advance(2)
    assert limiter.tokens == pytest.approx(8.0)


def test_set_rate_caps_tokens_at_a_lower_burst_and_keeps_them_at_a_higher_one(
    clock: FakeClock,
) -> None:
    """A lower burst caps the stored tokens; a higher one keeps them (no free tokens)."""
    limiter = RateLimiter(rate=1, burst=10, clock=clock)
    limiter.set_rate(1, burst=3)
    assert (limiter.burst, limiter.tokens) == (3.0, 3.0)
    limiter.set_rate(1, burst=30)
    assert (limiter.burst, limiter.tokens) == (30.0, 3.0)
    assert limiter.rate == 1.0


def test_set_rate_emits_one_event_per_changed_setting(
    clock: FakeClock, events: list[Event]
) -> None:
    """SettingChanged for the rate and for the burst, only when they change."""
    limiter = RateLimiter(rate=1, burst=10, clock=clock, listeners=[events.append])
    limiter.set_rate(1)
    assert events == []
    clock.advance(1)
    limiter.set_rate(5, burst=20)
    assert events == [
        SettingChanged(
            policy="rate_limiter", time=1001.0, setting="rate", old=1.0, new=5.0, reason="set_rate"
        ),
        SettingChanged(
            policy="rate_limiter",
            time=1001.0,
            setting="burst",
            old=10.0,
            new=20.0,
            reason="set_rate",
        ),
    ]


@pytest.mark.parametrize(
    ("args", "param"), [((0,), "rate"), ((math.nan,), "rate"), ((1, -1), "burst"), (("2",), "rate")]
)
def test_set_rate_refuses_bad_values_and_changes_nothing(
    clock: FakeClock, args: tuple[Any, ...], param: str
) -> None:
    """A bad rate or burst raises naming it; the limiter keeps its settings."""
    limiter = RateLimiter(rate=1, burst=10, clock=clock)
    with pytest.raises((ValueError, TypeError), match=param):
        limiter.set_rate(*args)
    assert (limiter.rate, limiter.burst) == (1.0, 10.0)


@pytest.mark.looptime
async def test_set_rate_serves_a_long_planned_wait_promptly() -> None:
    """A waiter planning 10 s at 0.1/s is served about 9 ms after set_rate(100)."""
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=0.1, burst=1, initial_tokens=0, clock=LoopClock())
    t0 = loop.time()
    waiter = asyncio.create_task(limiter.aacquire())
    await VIRTUAL.asleep(1)
    limiter.set_rate(100)
    await waiter
    # 0.1 token was earned at the old rate; 0.9 more at 100/s take 9 ms.
    assert loop.time() - t0 == pytest.approx(1.009, abs=1e-5)


def test_set_rate_wakes_a_sync_waiter_that_can_go_now() -> None:
    """A thread parked for a 10 s wait re-plans at once after set_rate and goes 9 ms later."""
    clock = ManualClock()
    limiter = RateLimiter(rate=0.1, burst=1, initial_tokens=0, clock=clock)
    waiter = Worker(lambda: limiter.acquire())
    clock.wait_for_deadlines([1010.0])
    clock.advance(1)
    limiter.set_rate(100)
    clock.wait_for_deadlines([1001.009])
    clock.advance(0.01)
    waiter.result()
    assert limiter.tokens == pytest.approx(0.0)


@pytest.mark.looptime
async def test_lowering_burst_below_a_waiters_request_refuses_it() -> None:
    """A waiter asking more than a lowered burst is refused at once; the next in line goes."""
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=1, burst=5, initial_tokens=0, clock=LoopClock())
    t0 = loop.time()
    big = asyncio.create_task(limiter.aacquire(5))
    await asyncio.sleep(0)
    small = asyncio.create_task(limiter.aacquire(1))
    await VIRTUAL.asleep(0.5)
    limiter.set_rate(1, burst=2)
    with pytest.raises(RateLimitExceeded) as info:
        await big
    assert info.value.retry_after is None
    assert loop.time() - t0 == pytest.approx(0.5, abs=1e-5)
    await small
    assert loop.time() - t0 == pytest.approx(1.0, abs=1e-5)


# -- rejections, retry and listeners -----------------------------------------------------------


def test_rate_limit_exceeded_is_a_rejection_with_name_reason_and_retry_after(
    clock: FakeClock,
) -> None:
    """RateLimitExceeded is a RejectedError carrying the limiter's name, reason, retry_after."""
    limiter = RateLimiter(rate=4, burst=1, name="embeddings", max_wait=0, clock=clock)
    limiter.call(lambda: None)
    with pytest.raises(RejectedError) as info:
        limiter.call(lambda: None)
    exc = info.value
    assert isinstance(exc, RateLimitExceeded)
    assert (exc.name, exc.reason, exc.retry_after) == ("embeddings", "rate_limited", 0.25)
    assert "embeddings" in str(exc)


def test_retry_does_not_retry_a_rate_limit_rejection(clock: FakeClock) -> None:
    """A Retry around the limiter gives up on RateLimitExceeded after one attempt."""
    limiter = RateLimiter(rate=1, burst=1, initial_tokens=0, max_wait=0, clock=clock)
    retry = Retry(RetryConfig(max_attempts=5, initial_delay=0.0, max_delay=0.0, clock=clock))
    calls: list[int] = []
    with pytest.raises(RateLimitExceeded):
        retry.call(limiter.call, calls.append, 1)
    assert calls == []
    assert retry.stats().attempts == 1
    assert limiter.stats().rejected == 1


def test_a_raising_listener_never_breaks_a_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusals, waits and set_rate work the same with a listener that raises."""

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    limiter = RateLimiter(rate=1, burst=1, clock=clock, listeners=[broken])
    with caplog.at_level(logging.ERROR, logger="sage_resilience"):
        assert limiter.try_acquire()
        assert not limiter.try_acquire()
        with pytest.raises(RateLimitExceeded):
            limiter.acquire(timeout=0.5)
        limiter.set_rate(2)
        limiter.acquire(timeout=0.5)
    assert clock.now() == pytest.approx(1000.5)
    assert sum(r.exc_info is not None for r in caplog.records) == 3  # 2 refusals, 1 setting
    assert limiter.stats().acquired == 2


# -- the policy forms: with, call, decorator ---------------------------------------------------


def test_with_takes_a_token_and_waits_up_to_max_wait(clock: FakeClock) -> None:
    """with limiter: takes one token, waiting up to max_wait, else raises."""
    limiter = RateLimiter(rate=2, burst=1, max_wait=0.5, clock=clock)
    with limiter as entered:
        assert entered is limiter
    with limiter:
        pass
    assert clock.now() == pytest.approx(1000.5)
    limiter.set_rate(1)
    with pytest.raises(RateLimitExceeded), limiter:
        pytest.fail("entered without a token")
    assert clock.now() == pytest.approx(1000.5)


def test_call_and_sync_decorator(clock: FakeClock) -> None:
    """call() and the decorator take a token per call and pass arguments and results through."""
    limiter = RateLimiter(rate=1, burst=2, max_wait=None, clock=clock)

    @limiter
    def add(x: int, *, y: int) -> int:
        """Adds."""
        return x + y

    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    assert add.policy is limiter  # type: ignore[attr-defined]
    assert add(1, y=2) == 3
    assert limiter.call(add.__wrapped__, 2, y=3) == 5  # type: ignore[attr-defined]
    assert add(0, y=0) == 0  # waits one second for the third token
    assert clock.now() == pytest.approx(1001.0)
    assert limiter.stats().acquired == 3


async def test_async_decorator(clock: FakeClock) -> None:
    """The decorator on a coroutine function takes a token before each await."""
    limiter = RateLimiter(rate=1, burst=1, max_wait=0, clock=clock)

    @limiter
    async def fetch(x: int) -> int:
        return x * 2

    assert await fetch(21) == 42
    with pytest.raises(RateLimitExceeded):
        await fetch(1)
    assert limiter.stats().acquired == 1


async def test_aacquire_with_tokens_there_returns_a_finished_coroutine(clock: FakeClock) -> None:
    """With tokens there and nobody waiting, aacquire takes them when called and returns the
    shared finished coroutine: awaitable any number of times, and a task or asyncio.run take
    it like any coroutine."""
    limiter = RateLimiter(rate=1, burst=10, clock=clock)
    ready = limiter.aacquire()
    assert limiter.tokens == 9  # taken at the call, which for ``await`` is the same moment
    assert ready is READY and asyncio.iscoroutine(ready)
    assert await ready is None
    assert await limiter.aacquire(2) is None
    assert await limiter.aacquire(1.5, timeout=0.5) is None  # a checked-free timeout: fast too
    assert await asyncio.create_task(limiter.aacquire()) is None
    assert await asyncio.gather(limiter.aacquire(), limiter.aacquire(1, 2)) == [None, None]
    assert limiter.stats().acquired == 6
    assert limiter.tokens == pytest.approx(2.5)
    # An int timeout, or a Fraction, goes the checked way and still takes at once.
    assert await limiter.aacquire(Fraction(1, 2), timeout=1) is None
    assert limiter.tokens == pytest.approx(2.0)


def test_finished_coroutine_behaves_as_one() -> None:
    """READY runs to None under asyncio.run, stops at once when sent to, and throws back what
    is thrown in (as a finished coroutine does)."""
    assert asyncio.run(READY) is None
    with pytest.raises(StopIteration):
        READY.send(None)
    with pytest.raises(KeyError, match="k"):
        READY.throw(KeyError("k"))
    READY.close()
    assert repr(READY) == "READY"


async def test_aacquire_raises_its_errors_when_awaited_not_when_called(clock: FakeClock) -> None:
    """As from a coroutine function: a bad argument or a refusal surfaces at the await, and a
    call that is never awaited takes nothing."""
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    bad_n = limiter.aacquire(-1)
    bad_timeout = limiter.aacquire(1, -1.0)
    with pytest.raises(ValueError, match="n must be"):
        await bad_n
    with pytest.raises(ValueError, match="timeout"):
        await bad_timeout
    assert limiter.tokens == 2
    assert limiter.try_acquire(2)
    refused = limiter.aacquire(1, timeout=0.5)  # a second away: refused, but only when awaited
    assert limiter.stats().rejected == 0
    with pytest.raises(RateLimitExceeded) as info:
        await refused
    assert info.value.retry_after == pytest.approx(1.0)
    unawaited = limiter.aacquire(1, timeout=0.5)
    unawaited.close()
    assert limiter.stats().rejected == 1


@pytest.mark.parametrize("variant", ["_aacquire_free", "_aacquire_locked"])
async def test_both_aacquire_variants_take_at_once_or_wait(clock: FakeClock, variant: str) -> None:
    """The GIL and free-threaded variants of aacquire behave alike (one of them is aacquire)."""
    limiter = RateLimiter(rate=1, burst=1, clock=clock)
    aacquire = getattr(RateLimiter, variant)
    assert aacquire(limiter) is READY
    waited = aacquire(limiter, 1, 2.0)
    assert waited is not READY
    await waited  # the FakeClock's wait moves time to the next token
    assert clock.now() == pytest.approx(1001.0)
    assert limiter.stats().waited == 1


async def test_decorator_of_a_subclass_with_its_own_acall_uses_it(clock: FakeClock) -> None:
    """The decorator runs call/acall's steps itself, unless a subclass overrides them."""
    seen: list[str] = []

    class Noted(RateLimiter):
        def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            seen.append("call")
            return super().call(fn, *args, **kwargs)

        async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            seen.append("acall")
            return await super().acall(fn, *args, **kwargs)

    limiter = Noted(rate=1, burst=2, clock=clock)

    async def fetch() -> int:
        return 1

    assert await limiter(fetch)() == 1
    assert limiter(lambda: 2)() == 2
    assert seen == ["acall", "call"]
    assert limiter.stats().acquired == 2


# -- Hypothesis: the bucket's invariants -----------------------------------------------------

AMOUNTS = st.sampled_from([0.5, 1, 1, 2, 3])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0, 3)),
        st.tuples(st.just("try"), AMOUNTS),
        st.tuples(st.just("acquire"), AMOUNTS, st.one_of(st.none(), st.floats(0, 3))),
    ),
    max_size=40,
)
RETUNE = st.tuples(st.just("set_rate"), st.floats(0.1, 50), st.one_of(st.none(), st.floats(3, 20)))


class Bucket:
    """Drives a limiter on a FakeClock and keeps the reference model next to it."""

    def __init__(self, rate: float, burst: float, fill: float) -> None:
        self.clock = FakeClock(1000.0)
        self.limiter = RateLimiter(
            rate=rate, burst=burst, initial_tokens=burst * fill, clock=self.clock
        )
        self.model = burst * fill
        self.rates: list[tuple[float, float]] = [(1000.0, rate)]  # (since, rate)
        self.max_burst = burst
        self.grants: list[tuple[float, float]] = []  # (time, n)
        self.model_time = 1000.0

    def _earn(self, until: float) -> None:
        gained = (until - self.model_time) * self.rates[-1][1]
        self.model = min(self.limiter.burst, self.model + gained)
        self.model_time = until

    def run(self, op: tuple[Any, ...]) -> None:
        lim, clock = self.limiter, self.clock
        before = clock.now()
        if op[0] == "advance":
            clock.advance(op[1])
        elif op[0] == "try":
            self._earn(before)
            ok = lim.try_acquire(op[1])
            if abs(self.model - op[1]) > 1e-6:  # at the boundary either answer is right
                assert ok == (self.model > op[1]), (ok, self.model, op)
            if ok:
                self.model -= op[1]
                self.grants.append((before, op[1]))
        elif op[0] == "acquire":
            self._earn(before)
            eta = max(0.0, (op[1] - self.model) / self.rates[-1][1])
            try:
                lim.acquire(op[1], timeout=op[2])
            except RateLimitExceeded as exc:
                assert op[2] is not None
                assert eta > op[2] - 1e-6
                assert clock.now() == before  # judged at once: alone in line
                assert exc.retry_after == pytest.approx(eta, rel=1e-6, abs=1e-6)
            else:
                assert op[2] is None or eta <= op[2] + 1e-6
                assert clock.now() - before == pytest.approx(eta, rel=1e-6, abs=2e-6)
                self._earn(clock.now())
                self.model = max(0.0, self.model - op[1])
                self.grants.append((clock.now(), op[1]))
        else:  # set_rate
            self._earn(before)
            lim.set_rate(op[1], op[2])
            self.model = min(self.model, lim.burst)
            self.rates.append((before, op[1]))
            self.max_burst = max(self.max_burst, lim.burst)
        self._earn(clock.now())
        tokens = lim.tokens
        assert -1e-12 <= tokens <= lim.burst
        assert tokens == pytest.approx(self.model, abs=1e-6)

    def earned(self, start: float, end: float) -> float:
        """Tokens the rate schedule adds over [start, end]."""
        total = 0.0
        for i, (since, rate) in enumerate(self.rates):
            until = self.rates[i + 1][0] if i + 1 < len(self.rates) else math.inf
            lo, hi = max(start, since), min(end, until)
            if hi > lo:
                total += (hi - lo) * rate
        return total

    def check_admitted_bound(self) -> None:
        """Over any interval between two grants, admitted <= burst + tokens earned."""
        grants = self.grants
        for i, (start, _) in enumerate(grants):
            admitted = 0.0
            for end, n in grants[i:]:
                admitted += n
                assert admitted <= self.max_burst + self.earned(start, end) + 1e-6


@settings(max_examples=300)
@given(
    rate=st.floats(0.1, 50),
    burst=st.floats(3, 20),
    fill=st.floats(0, 1),
    ops=OPS,
)
def test_tokens_stay_in_bounds_and_admissions_respect_the_rate(
    rate: float, burst: float, fill: float, ops: list[tuple[Any, ...]]
) -> None:
    """Tokens stay in [0, burst] and admitted <= burst + rate x interval, for any sequence."""
    # Any sequence of advances, try_acquire and acquire, checked against a reference model.
    bucket = Bucket(rate, burst, fill)
    for op in ops:
        bucket.run(op)
    bucket.check_admitted_bound()


@settings(max_examples=300)
@given(
    rate=st.floats(0.1, 50),
    burst=st.floats(3, 20),
    fill=st.floats(0, 1),
    ops=st.lists(st.one_of(OPS, st.lists(RETUNE, min_size=1, max_size=2)), max_size=4).map(
        lambda chunks: [op for chunk in chunks for op in chunk]
    ),
)
def test_retuning_never_creates_or_loses_tokens(
    rate: float, burst: float, fill: float, ops: list[tuple[Any, ...]]
) -> None:
    """With set_rate mixed in, tokens follow the model and admissions the rate schedule."""
    # Credited at the old rate, capped at the new burst; admitted <= max burst + tokens earned.
    bucket = Bucket(rate, burst, fill)
    for op in ops:
        bucket.run(op)
    bucket.check_admitted_bound()


@settings(max_examples=200)
@given(
    old_rate=st.floats(0.1, 100),
    new_rate=st.floats(0.1, 100),
    new_burst=st.floats(2, 50),
    fill=st.floats(0, 1),
    steps=st.lists(st.floats(0.01, 1), min_size=20, max_size=60),
)
def test_after_set_rate_the_new_rate_holds(
    old_rate: float, new_rate: float, new_burst: float, fill: float, steps: list[float]
) -> None:
    """After set_rate, a greedy client gets new_rate x elapsed, within the bucket it found."""
    # Give or take the tokens in the bucket at the change and the one it cannot take yet.
    clock = FakeClock(1000.0)
    limiter = RateLimiter(
        rate=old_rate, burst=50, initial_tokens=50 * fill, clock=clock, max_wait=0
    )
    clock.advance(0.5)
    limiter.set_rate(new_rate, burst=new_burst)
    at_change = limiter.tokens
    start = clock.now()
    admitted = 0
    while limiter.try_acquire():
        admitted += 1
    for fraction in steps:
        # Never let the bucket overflow, or the tokens over burst would (rightly) be lost.
        clock.advance(fraction * (new_burst - 1) / new_rate)
        while limiter.try_acquire():
            admitted += 1
    expected = new_rate * (clock.now() - start)
    assert admitted <= at_change + expected + 1e-6
    assert admitted >= at_change + expected - 1 - 1e-6


# -- concurrency: threads and tasks through one limiter ----------------------------------------


@pytest.fixture
def _switch_often() -> Iterator[None]:
    """Make the interpreter switch threads far more often than usual, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


class Tally:
    """Thread-safe counts of what the callers saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens = 0.0
        self.grants = 0
        self.refusals = 0

    def granted(self, n: float) -> None:
        with self.lock:
            self.tokens += n
            self.grants += 1

    def refused(self) -> None:
        with self.lock:
            self.refusals += 1


def _sync_client(limiter: RateLimiter, tally: Tally, seed: int, calls: int) -> None:
    rng = random.Random(seed)
    for _ in range(calls):
        n = rng.choice([1, 1, 2])
        if rng.random() < 0.3:
            if limiter.try_acquire(n):
                tally.granted(n)
            else:
                tally.refused()
            continue
        try:
            limiter.acquire(n, timeout=rng.choice([None, 0.0, 0.01, 0.05, 1.0]))
        except RateLimitExceeded:
            tally.refused()
        else:
            tally.granted(n)


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


def _check_conservation(limiter: RateLimiter, tally: Tally, start: float, clock: FakeClock) -> None:
    # The burst is never reached (see the callers), so no token is capped away: every token
    # earned is either taken or still in the bucket.
    earned = limiter.rate * (clock.now() - start)
    assert tally.tokens <= earned + 1e-6
    assert limiter.tokens == pytest.approx(earned - tally.tokens, abs=1e-5)
    stats = limiter.stats()
    assert (stats.acquired, stats.rejected, stats.waiting) == (tally.grants, tally.refusals, 0)


@pytest.mark.usefixtures("_switch_often")
def test_threads_through_one_limiter_lose_and_duplicate_nothing() -> None:
    """8 threads on one limiter: no token lost or duplicated, exact counts, no deadlock."""
    # try_acquire and acquire with timeouts on one FakeClock; admitted <= rate x elapsed.
    clock = FakeClock(1000.0)
    limiter = RateLimiter(rate=100, burst=1e9, initial_tokens=0, clock=clock)
    tally = Tally()
    _run_threads(lambda i: _sync_client(limiter, tally, i, 300), 8)
    assert tally.grants > 0
    assert tally.refusals > 0  # both outcomes happen (how often depends on the scheduling)
    _check_conservation(limiter, tally, 1000.0, clock)


@pytest.mark.usefixtures("_switch_often")
def test_threads_with_a_retuning_controller_keep_the_invariants() -> None:
    """Threads acquire while a controller retunes: invariants hold, nobody hangs."""
    # Tokens within [0, burst]; admitted <= max burst + the tokens the rate schedule earned.
    clock = FakeClock(1000.0)
    changes: list[Event] = []
    limiter = RateLimiter(
        rate=50, burst=5, initial_tokens=5, clock=clock, listeners=[changes.append]
    )
    tally = Tally()
    stop = threading.Event()
    seen: list[float] = []

    def controller() -> None:
        rng = random.Random(99)
        while not stop.is_set():
            limiter.set_rate(rng.choice([10, 50, 200]), burst=rng.choice([3, 5, 8]))
            tokens = limiter.tokens
            seen.append(tokens)
            assert 0 <= tokens <= 8

    ctl = threading.Thread(target=controller, daemon=True)
    ctl.start()
    try:
        _run_threads(lambda i: _sync_client(limiter, tally, i, 200), 6)
    finally:
        stop.set()
        ctl.join(JOIN_TIMEOUT)
    assert not ctl.is_alive()
    assert seen
    rates = [(1000.0, 50.0)] + [
        (e.time, e.new) for e in changes if isinstance(e, SettingChanged) and e.setting == "rate"
    ]
    earned = sum(
        (until - since) * rate
        for (since, rate), (until, _) in zip(rates, [*rates[1:], (clock.now(), 0.0)], strict=True)
    )
    assert tally.tokens <= 8 + earned + 1e-6
    stats = limiter.stats()
    assert (stats.acquired, stats.rejected, stats.waiting) == (tally.grants, tally.refusals, 0)


@pytest.mark.looptime
async def test_many_tasks_through_one_limiter_with_timeouts_and_cancellations() -> None:
    """300 tasks with timeouts and cancellations: no token lost, exact counts, no hang."""
    # A third of them cancelled at random moments; admitted <= rate x elapsed.
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=20, burst=1e9, initial_tokens=0, clock=LoopClock())
    t0 = loop.time()
    tally = Tally()
    rng = random.Random(7)

    async def client(n: float, timeout: float | None) -> None:
        try:
            await limiter.aacquire(n, timeout)
        except RateLimitExceeded:
            tally.refused()
        else:
            tally.granted(n)

    tasks = []
    for _ in range(300):
        tasks.append(asyncio.create_task(client(rng.choice([1, 2]), rng.choice([None, 1, 5]))))
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() * 0.1)
    victims = rng.sample(tasks, 100)
    async with asyncio.timeout(10_000):  # a deadlock fails here instead of hanging
        for victim in victims:
            await asyncio.sleep(rng.random() * 0.2)
            victim.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert 0 < cancelled <= 100
    assert tally.grants + tally.refusals + cancelled == 300
    earned = limiter.rate * (loop.time() - t0)
    assert tally.tokens <= earned + 1e-6
    assert limiter.tokens == pytest.approx(earned - tally.tokens, abs=1e-5)
    stats = limiter.stats()
    assert (stats.acquired, stats.rejected, stats.waiting) == (tally.grants, tally.refusals, 0)


@pytest.mark.usefixtures("_switch_often")
async def test_threads_and_tasks_share_one_limiter() -> None:
    """Threads and asyncio tasks share one limiter: wake-ups cross, nothing lost, no hang."""
    # 4 threads (acquire) and 100 tasks (aacquire) on one FakeClock.
    clock = FakeClock(1000.0)
    limiter = RateLimiter(rate=100, burst=1e9, initial_tokens=0, clock=clock)
    tally = Tally()
    rng = random.Random(3)

    async def client(n: float, timeout: float | None) -> None:
        try:
            await limiter.aacquire(n, timeout)
        except RateLimitExceeded:
            tally.refused()
        else:
            tally.granted(n)

    threads = asyncio.create_task(
        asyncio.to_thread(_run_threads, lambda i: _sync_client(limiter, tally, 100 + i, 100), 4)
    )
    tasks = [
        asyncio.create_task(client(rng.choice([1, 2]), rng.choice([None, 0.01, 1.0])))
        for _ in range(100)
    ]
    async with asyncio.timeout(JOIN_TIMEOUT):
        await asyncio.gather(*tasks)
        await threads
    assert tally.grants + tally.refusals == 4 * 100 + 100
    _check_conservation(limiter, tally, 1000.0, clock)


async def test_wake_from_another_thread_reaches_a_waiting_task() -> None:
    """A task parked for a 1000 s wait is woken at once by set_rate from another thread."""
    # real-time: the wake-up crosses threads through call_soon_threadsafe into a loop blocked in
    # select, which only a real clock exercises; it takes a few milliseconds.
    limiter = RateLimiter(rate=0.001, burst=1, initial_tokens=0)
    waiter = asyncio.create_task(limiter.aacquire())
    await asyncio.sleep(0)
    assert limiter.waiting == 1
    helper = threading.Thread(target=limiter.set_rate, args=(1e6,), daemon=True)
    helper.start()
    async with asyncio.timeout(5):
        await waiter
    helper.join(JOIN_TIMEOUT)
    assert limiter.stats().waited == 1
