"""A deterministic virtual-time asyncio event loop.

The loop's clock jumps to the next scheduled timer whenever nothing is ready to run, instead of
waiting for it: an hour of simulated traffic takes as long as its callbacks take to execute. It
is an ordinary ``SelectorEventLoop`` whose selector never blocks: where a real loop would sleep
``timeout`` seconds in ``select``, this one advances its virtual time by ``timeout`` and returns.
Everything built on the loop's time (``asyncio.sleep``, ``asyncio.timeout``, ``call_later``,
and the policies through :class:`~sage_resilience.core.LoopClock`) runs in virtual time.

Why not ``looptime``: it fast-forwards a loop's time for *tests* (a pytest plugin patching the
loop of a test), and the tests use it for that; the simulator needs a loop it creates and owns
outside pytest, with a clock starting at 0, that refuses to wait for real I/O (a simulation
that blocks on nothing is a deadlock and should say so). Overriding the selector is about 40
lines and keeps every asyncio internal as it is.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["SimulationDeadlock", "VirtualTimeLoop", "run"]

T = TypeVar("T")


class SimulationDeadlock(RuntimeError):
    """Nothing is ready and nothing is scheduled, but the simulation has not finished."""


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real file descriptors without blocking and advances the loop's clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise SimulationDeadlock(
                "every task is waiting and no timer is scheduled: the simulation cannot progress"
            )
        assert self.loop is not None
        self.loop._advance(timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, starting at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = float(start)
        # Timers due within this margin run together; virtual time is exact, so keep it tiny.
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._virtual_now

    def _advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds


def run(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualTimeLoop` and close it.

    As :func:`asyncio.run` does, tasks still pending at the end (``main``'s own task too, after
    a :class:`SimulationDeadlock`) are cancelled and run to their end before the loop closes,
    so their ``finally`` blocks run and no task is destroyed while pending.
    """
    loop = VirtualTimeLoop(start)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop: VirtualTimeLoop) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    # A task that swallows its cancellation and waits on nothing again is a deadlock of its
    # own: the loop raises SimulationDeadlock rather than hang.
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
