"""Time for every policy: one injectable clock.

Nothing in this package reads the wall clock. Policies take ``clock=`` (a :class:`Clock`) and
default to the default clock, the monotonic clock of the process (:data:`SYSTEM_CLOCK`). Tests
pass a :class:`FakeClock`, whose sleeps advance its time instantly, so a 60 s recovery timeout
costs no real time; ``with use_clock(FakeClock()):`` makes it the default for policies built
inside the block (the testing switch, so code written against the seed's decorators runs
unchanged). Under the simulator the clock reads the virtual event loop's time.

A clock also knows how to *wait* for something that may happen sooner than a timeout
(:meth:`Clock.wait` for a thread, :meth:`Clock.await_future` for a task): rate limiters and
bulkheads park their waiters that way, so fake and virtual time drive them too.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "SYSTEM_CLOCK",
    "Clock",
    "FakeClock",
    "LoopClock",
    "RandomSource",
    "SystemClock",
    "default_clock",
    "resolve_clock",
    "use_clock",
]

RandomSource = Callable[[], float]
"""A zero-argument callable returning a float in [0, 1), for example ``random.Random(7).random``."""


@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds and the two ways to wait for it."""

    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Block until ``event`` is set or ``timeout`` seconds pass; whether it is set."""
        ...

    async def await_future(self, future: asyncio.Future[Any], timeout: float | None) -> bool:
        """Suspend until ``future`` is done or ``timeout`` seconds pass; whether it is done."""
        ...


class SystemClock:
    """The process's monotonic clock (``time.monotonic``) with real sleeps."""

    __slots__ = ()

    # Bound to the builtins directly: a policy that caches ``clock.now`` calls C code, no wrapper.
    now = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(timeout)

    async def await_future(self, future: asyncio.Future[Any], timeout: float | None) -> bool:
        if timeout is None:
            await future
        elif not future.done():
            await asyncio.wait((future,), timeout=timeout)
        return future.done()

    def __repr__(self) -> str:
        return "SystemClock()"


class LoopClock:
    """The time of an asyncio event loop: for code that runs on a virtual-time loop.

    ``now()`` is the loop's ``time()``; ``asleep`` and ``await_future`` wait on the loop, so a
    loop whose clock jumps to the next scheduled event (the simulator's, or ``looptime`` in
    tests) drives the policies' waiting as well as its own. A loop clock cannot block a thread:
    ``sleep`` and ``wait`` raise ``RuntimeError``.

    Args:
        loop: the loop to read; default the running loop at each reading.
    """

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    def now(self) -> float:
        loop = self._loop
        return (loop if loop is not None else asyncio.get_running_loop()).time()

    def sleep(self, seconds: float) -> None:
        raise RuntimeError("a LoopClock cannot block a thread; await asleep() instead")

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        raise RuntimeError("a LoopClock cannot block a thread; use the async API")

    async def await_future(self, future: asyncio.Future[Any], timeout: float | None) -> bool:
        if timeout is None:
            await future
        elif not future.done():
            await asyncio.wait((future,), timeout=timeout)
        return future.done()

    def __repr__(self) -> str:
        return f"LoopClock(loop={self._loop!r})"


SYSTEM_CLOCK: Clock = SystemClock()
"""The process's monotonic clock; the default clock unless :func:`use_clock` says otherwise."""

_default: Clock = SYSTEM_CLOCK


def default_clock() -> Clock:
    """The clock a policy built now gets when given none (see :func:`use_clock`)."""
    return _default


def resolve_clock(clock: Clock | None) -> Clock:
    """The clock a policy should use: ``None`` and the system clock mean the default clock."""
    if clock is None or clock is SYSTEM_CLOCK:
        return _default
    return clock


@contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Make ``clock`` the default for policies built inside the block (process-wide).

    Policies read the default when they are built, so decorate inside the block; calls made
    later keep the clock they were built with.
    """
    global _default
    if not (callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep", None))):
        raise TypeError(f"clock must provide now() and sleep(), got {clock!r}")
    previous, _default = _default, clock
    try:
        yield clock
    finally:
        _default = previous


def _check_seconds(seconds: float) -> None:
    # Written so that NaN fails too: a NaN (or infinite) step would poison every later reading.
    if not 0.0 <= seconds < math.inf:
        raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")


class FakeClock:
    """A clock that only moves when told to, and whose sleeps move it.

    ``sleep(s)`` and ``asleep(s)`` advance the time by ``s`` at once (``asleep`` then yields to the
    event loop once, so other tasks run as they would during a real sleep). Every requested sleep
    is kept in :attr:`sleeps`, in order, so a test can check the delays a policy chose.
    """

    __slots__ = ("_lock", "_now", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        if not isinstance(start, int | float) or isinstance(start, bool):
            raise TypeError(f"start must be a number, got {start!r}")
        if not math.isfinite(start):
            raise ValueError(f"start must be finite, got {start!r}")
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds`` (finite, >= 0)."""
        _check_seconds(seconds)
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        _check_seconds(seconds)
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Set already: ``True``. Otherwise advance by ``timeout`` and report the event; with no
        timeout, block for real until another thread sets it."""
        if event.is_set():
            return True
        if timeout is None:
            return event.wait()
        self.advance(timeout)
        return event.is_set()

    async def await_future(self, future: asyncio.Future[Any], timeout: float | None) -> bool:
        """Done already: ``True``. Otherwise advance by ``timeout``, let other tasks run once and
        report the future; with no timeout, await it."""
        if future.done():
            return True
        if timeout is None:
            await future
            return True
        self.advance(timeout)
        await asyncio.sleep(0)
        return future.done()

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
