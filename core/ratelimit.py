"""Token-bucket rate limiter: one decision core, FIFO waiters, retuned at runtime.

Tokens refill continuously at ``rate`` per second up to ``burst``. A caller takes ``n`` tokens
(:meth:`RateLimiter.try_acquire` without waiting; :meth:`~RateLimiter.acquire` /
:meth:`~RateLimiter.aacquire` waiting up to a timeout, also as ``with limiter:`` / ``async with
limiter:``). Waiters are served strictly in arrival order, whatever their sizes: a caller never
takes tokens while someone is queued ahead of it, so a big request at the head is not overtaken
by small ones. Tokens are only taken when a waiter is granted, so a waiter that gives up or is
cancelled leaves the queue without losing or duplicating any, and the next in line is woken.

When a request cannot be served within its timeout it raises :class:`RateLimitExceeded` carrying
``retry_after``: judged at once from the tokens queued ahead of it, or at its deadline while it
waits (the rate may have dropped meanwhile). ``retry_after`` is how long until a fresh request of
the same size would be served at the current rate, behind everyone still queued.

:meth:`~RateLimiter.set_rate` changes the rate (and burst) at runtime, crediting the tokens
earned at the old rate up to that instant (then capping them at the new burst), and wakes the
head of the queue so it re-plans with the new rate: the adaptive controllers drive it. A waiter
asking for more than a lowered burst can never be served; it is refused at once.

**One core, two drivers.** The decisions (refill, grant, plan, give up) are methods called under
the limiter's lock; the sync driver waits on a ``threading.Event`` through ``clock.wait`` and the
async one on a future through ``clock.await_future``, so a :class:`~.clock.FakeClock` or the
simulator's virtual clock drive waiting as well as sleeping. Every planned wait is at least
:data:`MIN_WAIT`, and a grant short of its tokens by float noise (:data:`_TOLERANCE`) goes
through: a clock that does not move for a wait below its resolution (a virtual loop, a fake clock
far from zero) would otherwise spin forever on a waiter missing 1e-16 of a token.

**Why not aiolimiter.** aiolimiter's ``AsyncLimiter`` (1.3) keeps its waiters in a heap ordered
by requested amount (a big request starves behind small ones, not FIFO), lets a newcomer with
capacity take it ahead of queued waiters, has no timeout and no runtime rate change, and reads the
event loop's time (no sync use, no injected clock). Wrapping it would replace every one of those
methods, so the limiter is our own; aiolimiter stays a reference in the overhead benchmark, which
measures it beside ours (its ``acquire`` costs about three times our ``aacquire``).

**The hot path.** With tokens available and nobody waiting, a permit costs one clock read and a
few arithmetic operations on attributes, without a lock: on GIL builds that sequence contains no
call after the clock read, which CPython never interrupts (see :mod:`._gil`); every locked
read-modify-write of the tokens is written without a call inside it, so the two never interleave
mid-update. Free-threaded builds run the same code under the lock. :meth:`~RateLimiter.aacquire`
is not a coroutine function: with the tokens there it takes them when called and returns a
finished coroutine (:data:`._callables.READY`), so an ``await`` that never waits runs no
coroutine frame of ours; the pipeline's fused path takes its token with ``_take_now()``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import numbers
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ._callables import READY, decorate, is_async_callable
from ._gil import GIL_ENABLED
from ._validate import check_float, check_optional_float
from ._waiting import MIN_WAIT, Parked, check_name, check_waiting_clock
from .clock import Clock
from .errors import RateLimitExceeded
from .events import CallRejected, Listener, Observable, SettingChanged, emit

__all__ = ["RateLimiter", "RateLimiterStats"]

P = ParamSpec("P")
T = TypeVar("T")

_ONE = 1.0
"""The default ``n``: the hot paths recognise it by identity and skip the type test."""

_TOLERANCE = 1e-9
"""Tokens: a waiter short of its tokens by less than this (float noise) is granted."""

"""Seconds: the shortest wait a waiter plans, so a fake or virtual clock always moves."""


@dataclass(frozen=True, slots=True)
class RateLimiterStats:
    """A limiter's settings and counts at one moment.

    ``acquired`` counts every grant (at once or after waiting), ``waited`` the grants that
    waited in line, ``rejected`` every refusal (``try_acquire`` returning ``False`` included).
    """

    name: str
    rate: float
    burst: float
    tokens: float
    waiting: int
    acquired: int
    rejected: int
    waited: int


class _Waiter(Parked):
    __slots__ = ("n",)

    def __init__(self, n: float, deadline: float, *, sync: bool) -> None:
        super().__init__(deadline, sync=sync)
        self.n = n


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
        "_queued",
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
        self.name = check_name(name)
        self.max_wait = check_optional_float("max_wait", max_wait, minimum=0.0)
        tokens = (
            burst
            if initial_tokens is None
            else check_float("initial_tokens", initial_tokens, minimum=0.0)
        )
        if tokens > burst:
            raise ValueError(f"initial_tokens ({tokens!r}) must be <= burst ({burst!r})")
        self.clock = check_waiting_clock(clock)
        self._now = self.clock.now
        self._rate = rate
        self._burst = burst
        self._tokens = tokens
        self._last = self._now()
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()
        self._queued = 0.0  # tokens asked for by the waiters, kept with the queue
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

    # -- the hot path: take at once, no lock on GIL builds -------------------------------------

    def _take_free(self, n: float = _ONE) -> bool:
        """Take ``n`` tokens if nobody waits and they are there; ``False`` otherwise (also for an
        ``n`` that is not a positive int or float: the slow path judges it).

        Never waits, never raises, emits nothing: besides this limiter's own drivers, the fused
        path of :class:`~.pipeline.Pipeline` calls it (as ``_take_now()``, one token).
        """
        now = self._now()
        # No call from here to the return: under the GIL this runs as one step. The exact type
        # test keeps out bools and numeric types whose comparisons would run Python code; the
        # default (``n is _ONE``, a float of our own) needs none.
        if not self._waiters and (
            n is _ONE or ((n.__class__ is float or n.__class__ is int) and n > 0)
        ):
            tokens = self._tokens
            elapsed = now - self._last
            if elapsed > 0.0:  # a clock read before another thread's refill must not rewind it
                tokens += elapsed * self._rate
                if tokens > self._burst:  # noqa: PLR1730 - min() is a call: slower, and a switch point
                    tokens = self._burst
                self._last = now
            if tokens >= n:
                self._tokens = tokens - n
                self._acquired += 1
                return True
            self._tokens = tokens
        return False

    def _take_locked(self, n: float = _ONE) -> bool:
        with self._lock:
            return self._take_free(n)

    _take_now = _take_free if GIL_ENABLED else _take_locked

    def try_acquire(self, n: float = _ONE) -> bool:
        """Take ``n`` tokens if they are there and nobody is waiting; never waits.

        Raises:
            ValueError: ``n`` is not a number in ``(0, burst]``.
        """
        if GIL_ENABLED:
            # _take_free inlined (a method call costs as much as a third of this path).
            now = self._now()
            if not self._waiters and (
                n is _ONE or ((n.__class__ is float or n.__class__ is int) and n > 0)
            ):
                tokens = self._tokens
                elapsed = now - self._last
                if elapsed > 0.0:
                    tokens += elapsed * self._rate
                    if tokens > self._burst:  # noqa: PLR1730 - see _take_free
                        tokens = self._burst
                    self._last = now
                if tokens >= n:
                    self._tokens = tokens - n
                    self._acquired += 1
                    return True
                self._tokens = tokens
        elif self._take_locked(n):
            return True
        return self._try_slow(n)

    def _try_slow(self, n: float) -> bool:
        """:meth:`try_acquire` for any valid ``n``: take, or count the refusal and report it."""
        n = self._check_amount(n)
        with self._lock:
            now = self._now()
            self._refill(now)
            if not self._waiters and self._tokens >= n:
                self._tokens -= n
                self._acquired += 1
                return True
            self._rejected += 1
            retry_after = self._eta(self._queued, n)
        self._rejected_event(now, retry_after)
        return False

    # -- the decision core (lock held) -----------------------------------------------------------

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0.0:
            tokens = self._tokens + elapsed * self._rate
            self._tokens = tokens if tokens < self._burst else self._burst
            self._last = now

    def _check_amount(self, n: object) -> float:
        if (
            isinstance(n, bool)
            or not isinstance(n, numbers.Real)
            or not 0 < float(n) <= self._burst
        ):
            raise ValueError(f"n must be a number in (0, burst={self._burst}], got {n!r}")
        return float(n)

    def _eta(self, ahead: float, n: float) -> float:
        """Seconds until ``n`` tokens are free for a request behind ``ahead`` queued tokens."""
        missing = ahead + n - self._tokens
        return missing / self._rate if missing > _TOLERANCE else 0.0

    def _enqueue(self, n: float, timeout: float | None, *, sync: bool) -> _Waiter | None:
        """Take at once (``None``), or queue a waiter, or raise if it would wait too long."""
        now = self._now()
        self._refill(now)
        if not self._waiters and self._tokens >= n:
            self._tokens -= n
            self._acquired += 1
            return None
        eta = self._eta(self._queued, n)
        if timeout is not None and eta > timeout:
            raise self._reject(eta)
        waiter = _Waiter(n, math.inf if timeout is None else now + timeout, sync=sync)
        self._waiters.append(waiter)
        self._queued += n
        return waiter

    def _grant_head(self, waiter: _Waiter) -> bool:
        """If ``waiter`` is first in line and its tokens are there, take them and dequeue it."""
        waiters = self._waiters
        if waiters and waiters[0] is waiter and self._tokens >= waiter.n - _TOLERANCE:
            # The tokens first, then the dequeue: the lock-free path only runs on an empty queue.
            tokens = self._tokens - waiter.n
            self._tokens = tokens if tokens > 0.0 else 0.0
            self._queued = self._queued - waiter.n if len(waiters) > 1 else 0.0
            waiters.popleft()
            self._acquired += 1
            self._waited += 1
            return True
        return False

    def _leave(self, waiter: _Waiter) -> _Waiter | None:
        """Remove a waiter that gives up; returns the new head to wake, if the head changed."""
        waiters = self._waiters
        was_head = bool(waiters) and waiters[0] is waiter
        try:
            waiters.remove(waiter)
        except ValueError:
            return None
        self._queued = self._queued - waiter.n if waiters else 0.0
        return waiters[0] if was_head and waiters else None

    def _next_wait(self, waiter: _Waiter, now: float) -> float:
        """How long ``waiter`` should wait before re-deciding (its deadline bounds it)."""
        if self._waiters and self._waiters[0] is waiter:
            wait = self._eta(0.0, waiter.n)
        else:
            wait = math.inf  # woken when it becomes the head
        wait = min(wait, waiter.deadline - now)
        return wait if wait > MIN_WAIT else MIN_WAIT

    def _reject(self, retry_after: float | None) -> RateLimitExceeded:
        self._rejected += 1
        return RateLimitExceeded(self.name, retry_after=retry_after)

    def _rejected_event(self, now: float, retry_after: float | None) -> None:
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

    # -- the steps both drivers share ----------------------------------------------------------

    def _join(self, n: float, timeout: float | None, *, sync: bool) -> _Waiter | None:
        """Take at once (``None``), or join the line, or raise if the wait would be too long."""
        try:
            with self._lock:
                return self._enqueue(n, timeout, sync=sync)
        except RateLimitExceeded as exc:
            refusal = exc  # reported outside the handler: a listener's error must not chain to it
        self._rejected_event(self._now(), refusal.retry_after)
        raise refusal

    def _step(self, waiter: _Waiter) -> float | None:
        """One decision for a queued waiter: granted (``None``), give up (raises), or how long
        to wait before deciding again. The waiter's event or future must be armed (cleared, or
        fresh) before this runs, so a wake-up that follows it is never missed."""
        with self._lock:
            now = self._now()
            self._refill(now)
            if self._grant_head(waiter):
                if self._waiters:
                    self._waiters[0].wake()  # the next in line plans its own wait
                return None
            retry_after: float | None
            if waiter.n > self._burst:
                retry_after = None  # the burst was lowered below it: never servable
            elif now >= waiter.deadline:
                # A fresh request would queue behind everyone else still waiting.
                retry_after = self._eta(self._queued - waiter.n, waiter.n)
            else:
                if waiter.event is not None:
                    waiter.event.clear()
                return self._next_wait(waiter, now)
            head = self._leave(waiter)
            if head is not None:
                head.wake()
            refusal = self._reject(retry_after)
        self._rejected_event(now, retry_after)
        raise refusal

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter leaves (cancelled, interrupted, or refused): the next in line re-plans."""
        with self._lock:
            head = self._leave(waiter)
            if head is not None:
                head.wake()

    # -- waiting: the sync driver --------------------------------------------------------------

    def acquire(self, n: float = 1.0, timeout: float | None = None) -> None:
        """Take ``n`` tokens, waiting in line up to ``timeout`` seconds (``None``: no limit).

        Raises:
            RateLimitExceeded: the tokens cannot be had within ``timeout``.
            ValueError: ``n`` is not a number in ``(0, burst]``, or ``timeout`` is negative.
        """
        if timeout is not None:
            timeout = check_float("timeout", timeout, minimum=0.0)
        if self._take_now(n):
            return
        n = self._check_amount(n)
        waiter = self._join(n, timeout, sync=True)
        if waiter is None:
            return
        event = waiter.event
        assert event is not None
        wait = self.clock.wait
        try:
            while True:
                delay = self._step(waiter)
                if delay is None:
                    return
                wait(event, None if math.isinf(delay) else delay)
        except BaseException:
            self._abandon(waiter)
            raise

    # -- waiting: the async driver (the sync one with await) ----------------------------------

    def _aacquire_free(
        self, n: float = _ONE, timeout: float | None = None
    ) -> Coroutine[Any, Any, None]:
        """Async :meth:`acquire`: ``await limiter.aacquire(n, timeout)``; a cancelled waiter
        leaves the line without losing tokens.

        Not a coroutine function, to keep the happy path cheap: when the tokens are there and
        nobody waits it takes them at once (when it is called, which for ``await
        limiter.aacquire()`` is the same moment) and returns the finished
        :data:`._callables.READY`; otherwise it returns the coroutine that waits. Either way the
        result is a coroutine (``asyncio.create_task`` and ``asyncio.run`` take it), and every
        error (a bad argument, :class:`RateLimitExceeded`) is raised where it is awaited, as
        from a coroutine function.
        """
        # Only a timeout that needs no checking (None, or a finite float >= 0) takes the fast
        # path; anything else is judged, and refused if need be, by the coroutine.
        if timeout is None or (timeout.__class__ is float and 0.0 <= timeout < math.inf):
            # _take_free inlined, as in try_acquire; ``n is _ONE`` (the default, a float object
            # of our own) skips the type test.
            now = self._now()
            if not self._waiters and (
                n is _ONE or ((n.__class__ is float or n.__class__ is int) and n > 0)
            ):
                tokens = self._tokens
                elapsed = now - self._last
                if elapsed > 0.0:
                    tokens += elapsed * self._rate
                    if tokens > self._burst:  # noqa: PLR1730 - see _take_free
                        tokens = self._burst
                    self._last = now
                if tokens >= n:
                    self._tokens = tokens - n
                    self._acquired += 1
                    return READY
                self._tokens = tokens
        return self._await_tokens(n, timeout)

    def _aacquire_locked(
        self, n: float = _ONE, timeout: float | None = None
    ) -> Coroutine[Any, Any, None]:
        """:meth:`aacquire` on a free-threaded build: the same, the tokens taken under the lock."""
        if (
            timeout is None or (timeout.__class__ is float and 0.0 <= timeout < math.inf)
        ) and self._take_locked(n):
            return READY
        return self._await_tokens(n, timeout)

    aacquire = _aacquire_free if GIL_ENABLED else _aacquire_locked

    async def _await_tokens(self, n: float, timeout: float | None) -> None:
        """:meth:`aacquire` when the tokens were not taken at once: check, take or wait."""
        if timeout is not None:
            timeout = check_float("timeout", timeout, minimum=0.0)
        if self._take_now(n):
            return
        n = self._check_amount(n)
        waiter = self._join(n, timeout, sync=False)
        if waiter is None:
            return
        loop = asyncio.get_running_loop()
        await_future = self.clock.await_future
        try:
            while True:
                future: asyncio.Future[None] = loop.create_future()
                waiter.future = future
                delay = self._step(waiter)
                if delay is None:
                    return
                await await_future(future, None if math.isinf(delay) else delay)
        except BaseException:
            self._abandon(waiter)
            raise

    # -- runtime retuning ----------------------------------------------------------------------

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the rate (and optionally the burst) now.

        Tokens earned at the old rate up to this instant are credited first; the bucket is then
        capped at the new burst. The head waiter is woken to re-plan with the new rate, and any
        waiter asking for more than a lowered burst is refused.
        """
        rate = check_float("rate", rate, positive=True)
        if burst is not None:
            burst = check_float("burst", burst, positive=True)
        with self._lock:
            now = self._now()
            self._refill(now)
            old_rate, old_burst = self._rate, self._burst
            new_burst = old_burst if burst is None else burst
            self._rate = rate
            self._burst = new_burst
            tokens = self._tokens
            if tokens > new_burst:  # no call between the read and the write (lock-free path)
                self._tokens = new_burst
            if self._waiters:
                self._waiters[0].wake()
                if new_burst < old_burst:
                    for waiter in self._waiters:
                        if waiter.n > new_burst:
                            waiter.wake()
        if self._listeners:
            for setting, old, new in (("rate", old_rate, rate), ("burst", old_burst, new_burst)):
                if old != new:
                    emit(
                        self._listeners,
                        SettingChanged(
                            policy=self.name,
                            time=now,
                            setting=setting,
                            old=old,
                            new=new,
                            reason="set_rate",
                        ),
                    )

    # -- as a policy: context managers, call/acall, decorator ---------------------------------

    def __enter__(self) -> RateLimiter:
        if not self._take_now():
            self.acquire(1.0, self.max_wait)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> RateLimiter:
        if not self._take_now():
            await self.aacquire(1.0, self.max_wait)
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
        if not self._take_now():
            self.acquire(1.0, self.max_wait)
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Take a token (waiting up to ``max_wait``), then await ``fn``."""
        if not self._take_now():
            await self.aacquire(1.0, self.max_wait)
        return await fn(*args, **kwargs)

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async): each call takes a token first. The wrapper exposes
        the limiter as ``.policy``.

        The wrapper runs the steps of :meth:`call` / :meth:`acall` itself (a frame less per
        call), unless a subclass overrides those, which it then calls.
        """
        cls = type(self)
        if (
            cls.call is not RateLimiter.call
            or cls.acall is not RateLimiter.acall
            or not callable(fn)
        ):
            return decorate(self, fn)
        limiter = self
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                if not limiter._take_now():
                    await limiter.aacquire(1.0, limiter.max_wait)
                return await fn(*args, **kwargs)

            async_wrapper.policy = limiter  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            if not limiter._take_now():
                limiter.acquire(1.0, limiter.max_wait)
            return fn(*args, **kwargs)

        wrapper.policy = limiter  # type: ignore[attr-defined]
        return wrapper
