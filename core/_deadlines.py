"""``asyncio.timeout`` scopes armed by one loop timer per policy instead of one timer per call.

``asyncio.timeout(seconds)`` schedules a ``TimerHandle`` on entry and cancels it on exit. The
cancelled handle stays in the loop's timer heap until its deadline comes up or the heap is
compacted, and every push compares handles with a Python-level ``__lt__``; with thousands of
calls in flight or just finished this is most of the ~4-5 µs the scope costs per call.

A timeout policy's deadlines are ``now + seconds`` with one ``seconds``, so they arrive in
order. :class:`Deadlines` enters each call's scope as ``asyncio.Timeout(None)`` (no timer of its
own) and appends ``[when, scope]`` to a queue of the running loop; a single ``call_at`` for the
queue's head walks the queue when it fires and expires the scopes whose deadline has passed with
``scope.reschedule(when)``, which hands them to asyncio's own expiry (cancel the task, turn the
cancellation into ``TimeoutError``, ``uncancel`` bookkeeping). Released entries at the head are
dropped at once, so a queue of short calls stays empty. A deadline earlier than the queue's tail
(the policy's ``seconds`` was lowered while longer calls are in flight) is given its own timer,
exactly as ``asyncio.timeout`` would, so no deadline ever fires late.

The timer is moved earlier when a call's deadline comes before it (a queue drained of its calls
keeps the timer of its first deadline). The queue belongs to one loop (a weak reference to it);
a policy used on another loop starts a new queue there, and an old queue with entries stays
alive through its own loop's timer.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Deadlines", "release"]


class _Queue:
    """The pending deadlines of one policy on one loop, oldest first, and the loop timer that
    wakes at the earliest of them (or earlier: a timer left from a drained queue)."""

    __slots__ = ("handle", "loop", "pending", "timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.loop: Callable[[], asyncio.AbstractEventLoop | None] = weakref.ref(loop)
        except TypeError:  # a loop type without weak references: held for the queue's life
            self.loop = lambda: loop
        self.pending: deque[list[Any]] = deque()
        self.handle: asyncio.TimerHandle | None = None
        self.timer_at = math.inf  # when the handle fires (inf: no handle)

    def arm_at(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        """Make the timer fire at ``when`` (earlier than it would have)."""
        if self.handle is not None:
            self.handle.cancel()
        self.handle = loop.call_at(when, self.fire)
        self.timer_at = when

    def fire(self) -> None:
        self.handle = None
        self.timer_at = math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = self.pending
        while pending:
            when, scope, _ = entry = pending[0]
            if scope is not None:
                if when > now:
                    self.arm_at(loop, when)
                    return
                entry[1] = None
                scope.reschedule(when)  # asyncio's expiry, on the next loop iteration
            pending.popleft()


class Deadlines:
    """Arms the ``asyncio.timeout`` scopes of one policy's calls (see the module docstring).

    ``entry = deadlines.arm(seconds)`` returns ``[when, scope, queue]``; the caller runs its
    await under ``async with entry[1]`` and calls :func:`release` with the entry in a
    ``finally``. Only used from inside a running task.
    """

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: _Queue | None = None

    def arm(self, seconds: float) -> list[Any]:
        loop = asyncio.get_running_loop()
        queue = self._queue
        if queue is None or queue.loop() is not loop:
            queue = self._queue = _Queue(loop)
        when = loop.time() + seconds
        pending = queue.pending
        if pending and when < pending[-1][0]:
            # Earlier than a deadline already queued: its own timer, as asyncio.timeout.
            return [when, asyncio.Timeout(when), None]
        entry = [when, asyncio.Timeout(None), queue]
        pending.append(entry)
        if when < queue.timer_at:  # no timer, or one left for a later deadline
            queue.arm_at(loop, when)
        return entry


def release(entry: list[Any]) -> None:
    """The call of ``entry`` is over: forget its deadline (at once if it is the oldest)."""
    entry[1] = None
    queue = entry[2]
    if queue is not None:
        pending = queue.pending
        while pending and pending[0][1] is None:
            pending.popleft()
