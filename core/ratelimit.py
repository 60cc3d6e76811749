"""Token-bucket rate limiter: one decision core, FIFO waiters, retuned at runtime.

Tokens refill continuously at ``rate`` per second up to ``burst``. A caller takes ``n`` tokens
(:meth:`RateLimiter.try_acquire` without waiting; :meth:`~RateLimiter.acquire` /
:meth:`~RateLimiter.aacquire` waiting up to a timeout, also as ``with limiter:`` / ``async with
limiter:``). Waiters are served strictly in arrival order: a caller never takes tokens while
someone is queued ahead of it. Tokens are only taken when a waiter is granted, so a waiter that
gives up or is cancelled leaves the queue without losing or duplicating any. When a request
cannot be served within its timeout (judged at once from the queue ahead of it, and again while it
waits), it raises :class:`RateLimitExceeded` carrying ``retry_after``.

:meth:`~RateLimiter.set_rate` changes the rate (and burst) at runtime, crediting the tokens
earned at the old rate up to that instant, and wakes the head of the queue so it re-plans with
the new rate: the adaptive controllers drive it.

**One core, two drivers.** The decisions (refill, grant, plan, give up) are methods called under
the limiter's lock; the sync driver waits on a ``threading.Event`` through ``clock.wait`` and the
async one on a future through ``clock.await_future``, so a :class:`~.clock.FakeClock` or the
simulator's virtual clock drive waiting as well as sleeping.

**Why not aiolimiter.** aiolimiter's ``AsyncLimiter`` orders waiters by requested amount (not
FIFO), lets a newcomer take freed capacity ahead of queued waiters, has no timeout and no runtime
rate change, reads the event loop's time (no sync use, no injected clock) and costs about 0.9 µs
per permit (ANCHORS.md; the overhead benchmark measures it beside ours). Wrapping it would replace
every one of its methods, so the limiter is our own; aiolimiter stays a reference in the benchmark.

**The hot path.** With tokens available and nobody waiting, a permit costs one clock read and a
few arithmetic operations on attributes, without a lock: on GIL builds that sequence contains no
call after the clock read, which CPython never interrupts. Free-threaded builds take the lock.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ._callables import decorate
from ._gil import GIL_ENABLED
from ._validate import check_float, check_optional_float
from .clock import Clock, resolve_clock
from .errors import RateLimitExceeded
from .events import CallRejected, Listener, Observable, SettingChanged, emit

__all__ = ["RateLimiter", "RateLimiterStats"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RateLimiterStats:
    """A limiter's settings and counts at one moment."""

    name: str
    rate: float
    burst: float
    tokens: float
    waiting: int
    acquired: int
    rejected: int
    waited: int


class _Waiter:
    __slots__ = ("deadline", "event", "future", "n")

    def __init__(self, n: float, deadline: float, *, sync: bool) -> None:
        self.n = n
        self.deadline = deadline
        self.event: threading.Event | None = threading.Event() if sync else None
        self.future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        future = self.future
        if future is not None and not future.done():
            loop = future.get_loop()
            if loop.is_closed():
                return
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                future.set_result(None)
            else:
                loop.call_soon_threadsafe(_set_if_pending, future)


def _set_if_pending(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RateLimiter(Observable):
    """A token bucket: ``rate`` tokens per second, at most ``burst`` stored.

    Args:
        rate: tokens added per second (> 0).
        burst: the bucket's capacity (default ``max(1, rate)``); also the most one request may
            take.
        name: shown in events, stats and the registry.
        clock: time source (default the system's monotonic clock).
        max_wait: how long ``call``/``acall``, the decorator and the context managers wait for a
            token before raising :class:`RateLimitExceeded` (``None``: as long as needed).
        initial_tokens: tokens at start (default ``burst``: a full bucket).
        listeners: callables receiving this limiter's events.
    """

    __slots__ = (
        "_acquired",
        "_burst",
        "_last",
        "_lock",
        "_now",
        "_rate",
        "_rejected",
        "_tokens",
        "_waited",
        "_waiters",
        "clock",
        "max_wait",
        "name",
    )

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        name: str = "rate_limiter",
        clock: Clock | None = None,
        max_wait: float | None = 5.0,
        initial_tokens: float | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
    ) -> None:
        rate = check_float("rate", rate, positive=True)
        burst = max(1.0, rate) if burst is None else check_float("burst", burst, positive=True)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.max_wait = check_optional_float("max_wait", max_wait, minimum=0.0)
        tokens = (
            burst
            if initial_tokens is None
            else check_float("initial_tokens", initial_tokens, minimum=0.0)
        )
        if tokens > burst:
            raise ValueError(f"initial_tokens ({tokens!r}) must be <= burst ({burst!r})")
        clock = resolve_clock(clock)
        if not callable(getattr(clock, "now", None)):
            raise TypeError(f"clock must provide now(), got {clock!r}")
        self.name = name
        self.clock = clock
        self._now = clock.now
        self._rate = rate
        self._burst = burst
        self._tokens = tokens
        self._last = self._now()
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._acquired = 0
        self._rejected = 0
        self._waited = 0
        self._listeners: tuple[Listener, ...] = ()
        for listener in listeners:
            self.add_listener(listener)

    # -- read-only views -----------------------------------------------------------------------

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def tokens(self) -> float:
        """Tokens available now (refilled to this instant)."""
        with self._lock:
            self._refill(self._now())
            return self._tokens

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def stats(self) -> RateLimiterStats:
        with self._lock:
            self._refill(self._now())
            return RateLimiterStats(
                name=self.name,
                rate=self._rate,
                burst=self._burst,
                tokens=self._tokens,
                waiting=len(self._waiters),
                acquired=self._acquired,
                rejected=self._rejected,
                waited=self._waited,
            )

    def __repr__(self) -> str:
        return f"RateLimiter(name={self.name!r}, rate={self._rate!r}, burst={self._burst!r})"

    # -- the decision core (lock held) -----------------------------------------------------------

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0.0:
            tokens = self._tokens + elapsed * self._rate
            self._tokens = tokens if tokens < self._burst else self._burst
            self._last = now

    def _check_amount(self, n: float) -> float:
        if isinstance(n, bool) or not isinstance(n, int | float) or not 0 < n <= self._burst:
            raise ValueError(f"n must be a number in (0, burst={self._burst}], got {n!r}")
        return float(n)

    def _eta(self, ahead: float, n: float) -> float:
        """Seconds until ``n`` tokens are free for a request behind ``ahead`` queued tokens."""
        missing = ahead + n - self._tokens
        return missing / self._rate if missing > 0.0 else 0.0

    def _queued_tokens(self) -> float:
        return sum(w.n for w in self._waiters)

    def _grant_head(self, waiter: _Waiter) -> bool:
        """If ``waiter`` is first in line and its tokens are there, take them and dequeue it."""
        if self._waiters and self._waiters[0] is waiter and self._tokens >= waiter.n:
            self._tokens -= waiter.n
            self._waiters.popleft()
            self._acquired += 1
            self._waited += 1
            return True
        return False

    def _leave(self, waiter: _Waiter) -> _Waiter | None:
        """Remove a waiter that gives up; returns the new head to wake, if the head changed."""
        was_head = bool(self._waiters) and self._waiters[0] is waiter
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return None
        return self._waiters[0] if was_head and self._waiters else None

    def _next_wait(self, waiter: _Waiter, now: float) -> float:
        """How long ``waiter`` should wait before re-deciding (its deadline bounds it)."""
        if self._waiters and self._waiters[0] is waiter:
            wait = self._eta(0.0, waiter.n)
        else:
            wait = math.inf  # woken when it becomes the head
        return min(wait, waiter.deadline - now)

    def _reject(self, now: float, retry_after: float) -> RateLimitExceeded:
        self._rejected += 1
        return RateLimitExceeded(self.name, retry_after=retry_after)

    def _rejected_event(self, now: float, retry_after: float) -> None:
        if self._listeners:
            emit(
                self._listeners,
                CallRejected(
                    policy=self.name,
                    time=now,
                    kind="rate_limiter",
                    reason="rate_limited",
                    retry_after=retry_after,
                ),
            )

    # -- try without waiting -------------------------------------------------------------------

    def _take_now(self, n: float) -> float:
        """Take ``n`` tokens if nobody waits and they are there: 0.0, else the wait (> 0)."""
        if GIL_ENABLED:
            now = self._now()
            # From here to the return there is no call: the GIL makes it one step.
            if not self._waiters and 0 < n <= self._burst:
                tokens = self._tokens
                elapsed = now - self._last
                if elapsed > 0.0:
                    tokens += elapsed * self._rate
                    tokens = min(tokens, self._burst)
                    self._last = now
                if tokens >= n:
                    self._tokens = tokens - n
                    self._acquired += 1
                    return 0.0
                self._tokens = tokens
                return (n - tokens) / self._rate
        n = self._check_amount(n)
        with self._lock:
            now = self._now()
            self._refill(now)
            if not self._waiters and self._tokens >= n:
                self._tokens -= n
                self._acquired += 1
                return 0.0
            wait = self._eta(self._queued_tokens(), n)
            return wait if wait > 0.0 else math.ulp(1.0)

    def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if they are there and nobody is waiting; never waits."""
        wait = self._take_now(n)
        if wait == 0.0:
            return True
        self._check_amount(n)
        self._rejected += 1
        if self._listeners:
            self._rejected_event(self._now(), wait)
        return False

    # -- waiting: the sync driver --------------------------------------------------------------

    def _enqueue(self, n: float, timeout: float | None, *, sync: bool) -> _Waiter | None:
        """Under the lock: take at once (None), or queue a waiter, or raise if hopeless."""
        now = self._now()
        self._refill(now)
        if not self._waiters and self._tokens >= n:
            self._tokens -= n
            self._acquired += 1
            return None
        eta = self._eta(self._queued_tokens(), n)
        if timeout is not None and eta > timeout:
            raise self._reject(now, eta)
        waiter = _Waiter(n, math.inf if timeout is None else now + timeout, sync=sync)
        self._waiters.append(waiter)
        return waiter

    def acquire(self, n: float = 1, timeout: float | None = None) -> None:
        """Take ``n`` tokens, waiting in line up to ``timeout`` seconds (``None``: no limit).

        Raises:
            RateLimitExceeded: the tokens cannot be had within ``timeout``.
        """
        n = self._check_amount(n)
        waiter = self._join(n, timeout, sync=True)
        if waiter is None:
            return
        event = waiter.event
        assert event is not None
        try:
            while True:
                wait = self._step(waiter)
                if wait is None:
                    return
                self.clock.wait(event, None if math.isinf(wait) else wait)
        except BaseException:
            self._abandon(waiter)
            raise

    # -- waiting: the async driver (the sync one with await) ----------------------------------

    async def aacquire(self, n: float = 1, timeout: float | None = None) -> None:
        """Async :meth:`acquire`; a cancelled waiter leaves the line without losing tokens."""
        if self._take_now(n) == 0.0:
            return
        n = self._check_amount(n)
        waiter = self._join(n, timeout, sync=False)
        if waiter is None:
            return
        loop = asyncio.get_running_loop()
        try:
            while True:
                future: asyncio.Future[None] = loop.create_future()
                waiter.future = future
                wait = self._step(waiter)
                if wait is None:
                    return
                await self.clock.await_future(future, None if math.isinf(wait) else wait)
        except BaseException:
            self._abandon(waiter)
            raise

    # -- the steps both drivers share ----------------------------------------------------------

    def _join(self, n: float, timeout: float | None, *, sync: bool) -> _Waiter | None:
        """Take at once (``None``), or join the line, or raise if the wait would be too long."""
        if timeout is not None:
            timeout = check_float("timeout", timeout, minimum=0.0)
        try:
            with self._lock:
                return self._enqueue(n, timeout, sync=sync)
        except RateLimitExceeded as refusal:
            self._rejected_event(self._now(), refusal.retry_after or 0.0)
            raise

    def _step(self, waiter: _Waiter) -> float | None:
        """One decision for a queued waiter: granted (``None``), give up (raises), or how long
        to wait before deciding again. The waiter's event or future must be armed (cleared, or
        fresh) before this runs, so a wake-up that follows it is never missed."""
        refusal: RateLimitExceeded | None = None
        with self._lock:
            now = self._now()
            self._refill(now)
            if self._grant_head(waiter):
                if self._waiters:
                    self._waiters[0].wake()  # the next in line plans its own wait
                return None
            if now >= waiter.deadline:
                retry_after = self._eta(self._queued_tokens() - waiter.n, waiter.n)
                head = self._leave(waiter)
                if head is not None:
                    head.wake()
                refusal = self._reject(now, retry_after)
            elif waiter.event is not None:
                waiter.event.clear()
            wait = self._next_wait(waiter, now)
        if refusal is not None:
            self._rejected_event(now, refusal.retry_after or 0.0)
            raise refusal
        return max(wait, 0.0)

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter leaves (cancelled, interrupted, or refused): the next in line re-plans."""
        with self._lock:
            head = self._leave(waiter)
            if head is not None:
                head.wake()

    # -- runtime retuning ----------------------------------------------------------------------

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the rate (and optionally the burst) now.

        Tokens earned at the old rate up to this instant are credited first; the bucket is then
        capped at the new burst. The head waiter is woken to re-plan with the new rate.
        """
        rate = check_float("rate", rate, positive=True)
        new_burst = self._burst if burst is None else check_float("burst", burst, positive=True)
        with self._lock:
            now = self._now()
            self._refill(now)
            old_rate, old_burst = self._rate, self._burst
            self._rate = rate
            self._burst = new_burst
            self._tokens = min(self._tokens, new_burst)
            if self._waiters:
                self._waiters[0].wake()
        if self._listeners and (old_rate != rate or old_burst != new_burst):
            emit(
                self._listeners,
                SettingChanged(
                    policy=self.name,
                    time=now,
                    setting="rate",
                    old=old_rate,
                    new=rate,
                    reason="set_rate",
                ),
            )

    # -- as a policy: context managers, call/acall, decorator ---------------------------------

    def __enter__(self) -> RateLimiter:
        if self._take_now(1) != 0.0:
            self.acquire(1, self.max_wait)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> RateLimiter:
        if self._take_now(1) != 0.0:
            await self.aacquire(1, self.max_wait)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Take a token (waiting up to ``max_wait``), then call ``fn``."""
        if self._take_now(1) != 0.0:
            self.acquire(1, self.max_wait)
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Take a token (waiting up to ``max_wait``), then await ``fn``."""
        if self._take_now(1) != 0.0:
            await self.aacquire(1, self.max_wait)
        return await fn(*args, **kwargs)

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async): each call takes a token first."""
        return decorate(self, fn)
