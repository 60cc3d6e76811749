"""Bulkhead: a cap on concurrent calls, with a bounded FIFO queue; the limit can change at
runtime (the adaptive concurrency controllers drive :meth:`Bulkhead.set_limit`).

A call takes a slot if fewer than ``max_concurrent`` are in use and nobody is queued; otherwise it
queues (at most ``max_queue`` waiters, each up to ``queue_timeout`` seconds) or is refused with
:class:`BulkheadFull` (``reason`` ``"bulkhead_full"`` when the queue is full, ``"queue_timeout"``
when the wait ran out). Slots are handed to waiters in arrival order. A waiter that times out or
is cancelled leaves the queue; a slot is never lost: every successful acquire is matched by
exactly one release, which wakes the head of the queue (a release without an acquire raises
``RuntimeError`` instead of silently widening the bulkhead).

As in :mod:`.ratelimit`, the decisions are made under one lock and two drivers wait on them
(``clock.wait`` on an event, ``clock.await_future`` on a future). With a free slot and nobody
queued, acquiring and releasing take no lock on GIL builds: each is a test and an update of an int
attribute with no call between them, which CPython never interrupts; every locked update of the
count is written the same way (the count is raised before a waiter leaves the queue, so the
lock-free path, which only admits on an empty queue, never sees a slot that is already promised).
Free-threaded builds take the lock on both.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ._callables import READY, decorate, is_async_callable
from ._gil import GIL_ENABLED
from ._validate import check_float, check_int, check_optional_float
from ._waiting import MIN_WAIT, Parked, check_name, check_waiting_clock
from .clock import Clock
from .errors import BulkheadFull
from .events import CallRejected, Listener, Observable, SettingChanged, emit

__all__ = ["Bulkhead", "BulkheadStats"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BulkheadStats:
    """A bulkhead's limit and counts at one moment.

    ``admitted`` counts every slot handed out (at once or after queueing), ``waited`` those that
    queued first, ``rejected`` every refusal (``try_acquire`` returning ``False`` included).
    """

    name: str
    max_concurrent: int
    in_use: int
    waiting: int
    admitted: int
    rejected: int
    waited: int


class _Slot(Parked):
    __slots__ = ()


class Bulkhead(Observable):
    """At most ``max_concurrent`` calls at once; up to ``max_queue`` more wait in line.

    Args:
        max_concurrent: concurrent calls allowed (>= 1).
        max_queue: callers allowed to wait for a slot (0: refuse at once when full).
        queue_timeout: how long a queued caller waits before :class:`BulkheadFull`
            (``None``: as long as needed).
        name: shown in events, stats and the registry.
        clock: time source (default the system's monotonic clock).
        listeners: callables receiving this bulkhead's events.
    """

    __slots__ = (
        "_admitted",
        "_in_use",
        "_limit",
        "_lock",
        "_now",
        "_rejected",
        "_waited",
        "_waiters",
        "clock",
        "max_queue",
        "name",
        "queue_timeout",
    )

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queue: int = 0,
        queue_timeout: float | None = None,
        name: str = "bulkhead",
        clock: Clock | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
    ) -> None:
        self._limit = check_int("max_concurrent", max_concurrent, minimum=1)
        self.max_queue = check_int("max_queue", max_queue, minimum=0)
        self.queue_timeout = check_optional_float("queue_timeout", queue_timeout, minimum=0.0)
        self.name = check_name(name)
        self.clock = check_waiting_clock(clock)
        self._now = self.clock.now
        self._lock = threading.Lock()
        self._waiters: deque[_Slot] = deque()
        self._in_use = 0
        self._admitted = 0
        self._rejected = 0
        self._waited = 0
        self._listeners: tuple[Listener, ...] = ()
        for listener in listeners:
            self.add_listener(listener)

    @property
    def max_concurrent(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def stats(self) -> BulkheadStats:
        with self._lock:
            return BulkheadStats(
                name=self.name,
                max_concurrent=self._limit,
                in_use=self._in_use,
                waiting=len(self._waiters),
                admitted=self._admitted,
                rejected=self._rejected,
                waited=self._waited,
            )

    def __repr__(self) -> str:
        return f"Bulkhead(name={self.name!r}, max_concurrent={self._limit!r})"

    # -- the hot path: no lock on GIL builds ---------------------------------------------------

    def _take_free(self) -> bool:
        # No call in this block: the GIL makes the test-and-increment one step.
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
            self._admitted += 1
            return True
        return False

    def _take_locked(self) -> bool:
        with self._lock:
            return self._take_free()

    _take_now = _take_free if GIL_ENABLED else _take_locked

    def release(self) -> None:
        """Give a slot back; the head of the queue, if any, gets it.

        Raises:
            RuntimeError: more releases than acquires (the count stays as it was).
        """
        if GIL_ENABLED:
            in_use = self._in_use
            if in_use > 0:
                self._in_use = in_use - 1  # no call since the read: one step under the GIL
                if self._waiters:
                    with self._lock:
                        if self._waiters:
                            self._waiters[0].wake()
                return
        else:
            with self._lock:
                if self._in_use > 0:
                    self._in_use -= 1
                    if self._waiters:
                        self._waiters[0].wake()
                    return
        raise RuntimeError(f"bulkhead {self.name!r} released more often than acquired")

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits; never waits. Pair with :meth:`release`."""
        if GIL_ENABLED:
            # _take_free inlined (a method call costs as much as this path).
            if self._in_use < self._limit and not self._waiters:
                self._in_use += 1
                self._admitted += 1
                return True
        elif self._take_locked():
            return True
        self._rejected += 1
        self._refused(BulkheadFull(self.name, reason="bulkhead_full"))
        return False

    # -- the decision core (lock held) ---------------------------------------------------------

    def _grant_head(self, slot: _Slot) -> bool:
        waiters = self._waiters
        if waiters and waiters[0] is slot and self._in_use < self._limit:
            # Count the slot before dequeueing: the lock-free path admits only on an empty queue.
            self._in_use += 1
            waiters.popleft()
            self._admitted += 1
            self._waited += 1
            if waiters and self._in_use < self._limit:
                waiters[0].wake()
            return True
        return False

    def _leave(self, slot: _Slot) -> None:
        waiters = self._waiters
        was_head = bool(waiters) and waiters[0] is slot
        try:
            waiters.remove(slot)
        except ValueError:
            return
        if was_head and waiters:
            waiters[0].wake()

    def _enqueue(self, timeout: float | None, *, sync: bool) -> _Slot | None:
        """A slot at once (None), a place in line, or :class:`BulkheadFull`."""
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
            self._admitted += 1
            return None
        if len(self._waiters) >= self.max_queue or timeout == 0.0:
            self._rejected += 1
            raise BulkheadFull(self.name, reason="bulkhead_full")
        now = self._now()
        slot = _Slot(math.inf if timeout is None else now + timeout, sync=sync)
        self._waiters.append(slot)
        return slot

    def _refused(self, exc: BulkheadFull) -> None:
        if self._listeners:
            emit(
                self._listeners,
                CallRejected(
                    policy=self.name,
                    time=self._now(),
                    kind="bulkhead",
                    reason=exc.reason,
                    retry_after=None,
                ),
            )

    def _timeout(self, timeout: float | None) -> float | None:
        if timeout is None:
            return self.queue_timeout
        return check_float("timeout", timeout, minimum=0.0)

    # -- the steps both drivers share ----------------------------------------------------------

    def _join(self, timeout: float | None, *, sync: bool) -> _Slot | None:
        try:
            with self._lock:
                return self._enqueue(timeout, sync=sync)
        except BulkheadFull as exc:
            refusal = exc  # reported outside the handler: a listener's error must not chain to it
        self._refused(refusal)
        raise refusal

    def _step(self, slot: _Slot) -> float | None:
        """One decision for a queued caller: admitted (``None``), give up (raises), or how long
        to wait before deciding again (its event or future armed beforehand)."""
        with self._lock:
            if self._grant_head(slot):
                return None
            now = self._now()
            if now < slot.deadline:
                if slot.event is not None:
                    slot.event.clear()
                wait = slot.deadline - now
                return wait if wait > MIN_WAIT else MIN_WAIT
            self._leave(slot)
            self._rejected += 1
            refusal = BulkheadFull(self.name, reason="queue_timeout")
        self._refused(refusal)
        raise refusal

    def _abandon(self, slot: _Slot) -> None:
        with self._lock:
            self._leave(slot)

    # -- sync driver ---------------------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> None:
        """Take a slot, queueing up to ``timeout`` (default ``queue_timeout``) seconds.

        Raises:
            BulkheadFull: the queue is full, or no slot came within the timeout.
        """
        timeout = self._timeout(timeout)
        if self._take_now():
            return
        slot = self._join(timeout, sync=True)
        if slot is None:
            return
        event = slot.event
        assert event is not None
        wait = self.clock.wait
        try:
            while True:
                delay = self._step(slot)
                if delay is None:
                    return
                wait(event, None if math.isinf(delay) else delay)
        except BaseException:
            self._abandon(slot)
            raise

    # -- async driver (the sync one with await) ------------------------------------------------

    def aacquire(self, timeout: float | None = None) -> Coroutine[Any, Any, None]:
        """Async :meth:`acquire`: ``await bulkhead.aacquire(timeout)``; a cancelled waiter leaves
        the line.

        Not a coroutine function, to keep the happy path cheap: with a slot free and nobody
        queued (and no timeout to check) it takes the slot when called, which for ``await
        bulkhead.aacquire()`` is the same moment, and returns the finished
        :data:`._callables.READY`; otherwise it returns the coroutine that queues. Either way the
        result is a coroutine, and every error (a bad timeout, :class:`BulkheadFull`) is raised
        where it is awaited, as from a coroutine function.
        """
        if timeout is None and self._take_now():
            return READY
        return self._await_slot(timeout)

    async def _await_slot(self, timeout: float | None) -> None:
        """:meth:`aacquire` when no slot was taken at once: check, take or queue."""
        timeout = self._timeout(timeout)
        if self._take_now():
            return
        slot = self._join(timeout, sync=False)
        if slot is None:
            return
        loop = asyncio.get_running_loop()
        await_future = self.clock.await_future
        try:
            while True:
                future: asyncio.Future[None] = loop.create_future()
                slot.future = future
                delay = self._step(slot)
                if delay is None:
                    return
                await await_future(future, None if math.isinf(delay) else delay)
        except BaseException:
            self._abandon(slot)
            raise

    # -- runtime retuning ----------------------------------------------------------------------

    def set_limit(self, max_concurrent: int) -> None:
        """Change ``max_concurrent`` now; a higher limit lets queued callers in at once, a lower
        one lets calls in flight finish and admits no more until below it."""
        limit = check_int("max_concurrent", max_concurrent, minimum=1)
        with self._lock:
            old = self._limit
            self._limit = limit
            now = self._now()
            if self._waiters and self._in_use < limit:
                self._waiters[0].wake()
        if self._listeners and old != limit:
            emit(
                self._listeners,
                SettingChanged(
                    policy=self.name,
                    time=now,
                    setting="max_concurrent",
                    old=float(old),
                    new=float(limit),
                    reason="set_limit",
                ),
            )

    # -- as a policy ---------------------------------------------------------------------------

    def __enter__(self) -> Bulkhead:
        if not self._take_now():
            self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Bulkhead:
        if not self._take_now():
            await self.aacquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` holding a slot."""
        if not self._take_now():
            self.acquire()
        try:
            return fn(*args, **kwargs)
        finally:
            self.release()

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn`` holding a slot."""
        if not self._take_now():
            await self.aacquire()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.release()

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async): each call holds a slot. The wrapper exposes the
        bulkhead as ``.policy``.

        The wrapper runs the steps of :meth:`call` / :meth:`acall` itself (a frame less per
        call), unless a subclass overrides those, which it then calls.
        """
        cls = type(self)
        if cls.call is not Bulkhead.call or cls.acall is not Bulkhead.acall or not callable(fn):
            return decorate(self, fn)
        bulkhead = self
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                if not bulkhead._take_now():
                    await bulkhead.aacquire()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    bulkhead.release()

            async_wrapper.policy = bulkhead  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            if not bulkhead._take_now():
                bulkhead.acquire()
            try:
                return fn(*args, **kwargs)
            finally:
                bulkhead.release()

        wrapper.policy = bulkhead  # type: ignore[attr-defined]
        return wrapper
