"""What the policies that make callers wait (rate limiter, bulkhead, priority limiter) share:
a parked waiter that a thread or a task can wake, and the checks of their arguments."""

from __future__ import annotations

import asyncio
import threading

from .clock import Clock, resolve_clock

__all__ = ["MIN_WAIT", "Parked", "check_name", "check_waiting_clock"]

MIN_WAIT = 1e-6
"""The shortest wait ever planned: a float-rounding sliver of a second below a clock's
resolution would never let time move (and a waiter would spin)."""


class Parked:
    """A waiter parked on an event (a thread) or a future (a task), woken by :meth:`wake`.

    The waiting side arms its event (clears it) or installs a fresh future *before* deciding, so
    a wake that follows the decision is never lost. ``wake`` may come from another thread.
    """

    __slots__ = ("deadline", "event", "future")

    def __init__(self, deadline: float, *, sync: bool) -> None:
        self.deadline = deadline
        self.event: threading.Event | None = threading.Event() if sync else None
        self.future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        future = self.future
        if future is not None and not future.done():
            loop = future.get_loop()
            try:
                same = asyncio.get_running_loop() is loop
            except RuntimeError:
                same = False
            if same:
                future.set_result(None)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_set_if_pending, future)


def _set_if_pending(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def check_waiting_clock(clock: Clock | None) -> Clock:
    """The clock to use (see :func:`~.clock.resolve_clock`), which must know how to wait."""
    clock = resolve_clock(clock)
    for method in ("now", "wait", "await_future"):
        if not callable(getattr(clock, method, None)):
            raise TypeError(f"clock must provide now(), wait() and await_future(), got {clock!r}")
    return clock


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}")
    if not name:
        raise ValueError("name must be a non-empty string")
    return name
