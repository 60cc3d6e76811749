"""Helpers for tests that park real threads on a fake clock (limiter, bulkhead, priorities)."""

from __future__ import annotations

import asyncio
import math
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["JOIN_TIMEOUT", "Interrupted", "ManualClock", "Worker"]

JOIN_TIMEOUT = 30.0  # real seconds; reached only if something deadlocks


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt: a BaseException arriving while a thread waits."""


class ManualClock:
    """A fake clock for threads: time moves only by :meth:`advance`; a thread waiting on it
    blocks until it is woken or until ``advance`` moves time past its timeout, so a test decides
    exactly when each waiter's time runs out; it can see how many threads are parked and their
    deadlines, and interrupt one."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._cond = threading.Condition()
        self._parked: dict[int, tuple[threading.Event, float]] = {}
        self._interrupts: set[int] = set()

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.advance(seconds)

    async def await_future(self, future: asyncio.Future[Any], timeout: float | None) -> bool:
        raise AssertionError("ManualClock serves threads only")

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            for event, deadline in self._parked.values():
                if deadline <= self._now:
                    event.set()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        me = threading.get_ident()
        with self._cond:
            if event.is_set():
                return True
            deadline = math.inf if timeout is None else self._now + timeout
            if deadline <= self._now:
                return False
            self._parked[me] = (event, deadline)
            self._cond.notify_all()
        try:
            if not event.wait(JOIN_TIMEOUT):
                raise AssertionError("a parked waiter was never woken")
        finally:
            with self._cond:
                del self._parked[me]
                interrupted = me in self._interrupts
                self._interrupts.discard(me)
                self._cond.notify_all()
        if interrupted:
            raise Interrupted
        return True

    def wait_parked(self, count: int) -> None:
        """Block until exactly ``count`` threads are parked."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._parked) == count, JOIN_TIMEOUT):
                raise AssertionError(f"{len(self._parked)} threads parked, expected {count}")

    def deadlines(self) -> list[float]:
        """The deadlines of the parked waiters, sorted (``inf``: waiting to be woken)."""
        with self._cond:
            return sorted(d for _, d in self._parked.values())

    def wait_for_deadlines(self, expected: list[float]) -> None:
        """Block until exactly these waiters are parked (compared to 1e-9)."""

        def matches() -> bool:
            got = sorted(d for _, d in self._parked.values())
            return len(got) == len(expected) and all(
                g == e or abs(g - e) < 1e-9 for g, e in zip(got, expected, strict=True)
            )

        with self._cond:
            if not self._cond.wait_for(matches, JOIN_TIMEOUT):
                raise AssertionError(f"parked deadlines {self.deadlines()} never became {expected}")

    def interrupt(self, thread: threading.Thread) -> None:
        """Raise :class:`Interrupted` in ``thread``, parked in :meth:`wait`."""
        assert thread.ident is not None
        with self._cond:
            self._interrupts.add(thread.ident)
            self._parked[thread.ident][0].set()


class Worker:
    """Runs ``fn`` in a thread; :meth:`result` returns what it returned (or re-raises)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._out: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def body() -> None:
            try:
                self._out.put((True, fn()))
            except BaseException as exc:
                self._out.put((False, exc))

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def result(self) -> Any:
        ok, value = self._out.get(timeout=JOIN_TIMEOUT)
        self.thread.join(JOIN_TIMEOUT)
        if not ok:
            raise value
        return value
