"""Time for every policy: one injectable clock.

Nothing in this package reads the wall clock. Policies take ``clock=`` (a :class:`Clock`) and
default to :data:`SYSTEM_CLOCK`, the monotonic clock of the process. Tests pass a
:class:`FakeClock`, whose sleeps advance its time instantly, so a 60 s recovery timeout costs no
real time. Under the simulator the clock reads the virtual event loop's time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "RandomSource", "SystemClock"]

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


class SystemClock:
    """The process's monotonic clock (``time.monotonic``) with real sleeps."""

    __slots__ = ()

    # Bound to the builtins directly: a policy that caches ``clock.now`` calls C code, no wrapper.
    now = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()
"""The default clock of every policy."""


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
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"
