"""Request priorities, and the limiter that sheds the least important calls first.

``Priority`` has five levels, most to least important: CRITICAL, HIGH, NORMAL (the default), LOW,
SHEDDABLE (the SRE book's criticality classes, one more level in the middle). A call's priority
travels in a context variable, so it crosses ``await`` and is copied into tasks created under it:

    with priority(Priority.HIGH):
        await memory.search(query)

    @priority(Priority.LOW)            # the same object decorates sync and async functions
    async def backfill(): ...

:class:`PriorityLimiter` caps the calls in flight at ``limit`` (an adaptive concurrency
controller moves it at runtime with :meth:`~PriorityLimiter.set_limit`). Below the limit every
call goes through at once. At the limit, callers wait in line by priority (most important first,
then arrival order), each level for at most its own ``max_wait`` (CRITICAL waits longest); a
waiter whose wait runs out, or the least important waiter when the line is full, is refused with
:class:`~sage_resilience.core.ShedError`. So under overload the lowest levels are refused first
and CRITICAL last. ``reserved`` shares (none by default) guarantee a level a fraction of the
limit even while more important callers wait, trading strict order for no starvation: a
reservation is honoured when a slot frees, before priority order.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ..core import (
    CallRejected,
    Clock,
    Listener,
    SettingChanged,
    ShedError,
    decorate,
    is_async_callable,
)
from ..core._validate import check_float, check_int
from ..core._waiting import MIN_WAIT, Parked, check_name, check_waiting_clock
from ..core.events import Observable, emit

__all__ = [
    "DEFAULT_MAX_WAIT",
    "Priority",
    "PriorityLimiter",
    "PriorityLimiterStats",
    "current_priority",
    "priority",
]

P = ParamSpec("P")
T = TypeVar("T")


class Priority(enum.IntEnum):
    """Most important first: a lower value is served first and shed last."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    SHEDDABLE = 4

    @classmethod
    def coerce(cls, value: Priority | str | int) -> Priority:
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        raise ValueError(f"priority must be one of {', '.join(p.name for p in cls)}, got {value!r}")


_current: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "sage_resilience_priority", default=Priority.NORMAL
)


def current_priority() -> Priority:
    """The priority of the calling context (NORMAL unless set)."""
    return _current.get()


class priority:  # noqa: N801 - used like a function: ``with priority(Priority.HIGH):``
    """Set the priority of the calls made inside a block, or of a decorated function's calls.

    As a context manager it sets the context variable for the block (and tasks created inside
    it). As a decorator it does the same around every call, sync or async.
    """

    __slots__ = ("_tokens", "level")

    def __init__(self, level: Priority | str | int) -> None:
        self.level = Priority.coerce(level)
        self._tokens: list[contextvars.Token[Priority]] = []

    def __enter__(self) -> Priority:
        self._tokens.append(_current.set(self.level))
        return self.level

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._tokens.pop())

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        level = self.level
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                token = _current.set(level)
                try:
                    return await fn(*args, **kwargs)  # type: ignore[misc]
                finally:
                    _current.reset(token)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            token = _current.set(level)
            try:
                return fn(*args, **kwargs)
            finally:
                _current.reset(token)

        return wrapper


DEFAULT_MAX_WAIT: Mapping[Priority, float] = {
    Priority.CRITICAL: 5.0,
    Priority.HIGH: 1.0,
    Priority.NORMAL: 0.5,
    Priority.LOW: 0.25,
    Priority.SHEDDABLE: 0.0,
}
"""How long each level may wait for a slot at the limit before it is shed (seconds)."""


@dataclass(frozen=True, slots=True)
class PriorityLimiterStats:
    name: str
    limit: int
    in_flight: int
    waiting: int
    admitted: dict[str, int]
    shed: dict[str, int]


class _Waiter(Parked):
    __slots__ = ("granted", "level", "order")

    def __init__(self, level: Priority, deadline: float, order: int, *, sync: bool) -> None:
        super().__init__(deadline, sync=sync)
        self.level = level
        self.order = order
        self.granted = False


class PriorityLimiter(Observable):
    """Calls in flight capped at ``limit``; at the limit, served by priority and shed lowest
    first.

    Args:
        limit: calls allowed in flight (>= 1); :meth:`set_limit` changes it.
        max_wait: per level, how long a caller may wait at the limit (default
            :data:`DEFAULT_MAX_WAIT`; a level left out uses NORMAL's).
        max_queue: waiters allowed in line; beyond it the least important, newest one is shed.
        reserved: per level, a share of the limit (0..1) it may use even while more important
            callers wait.
        name: shown in errors, events and stats.
        clock: time source.
        listeners: receive :class:`~sage_resilience.core.CallRejected` (kind ``"shed"``) and
            :class:`~sage_resilience.core.SettingChanged` events.
    """

    def __init__(
        self,
        limit: int,
        *,
        max_wait: Mapping[Priority, float] | None = None,
        max_queue: int = 1000,
        reserved: Mapping[Priority, float] | None = None,
        name: str = "priority_limiter",
        clock: Clock | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
    ) -> None:
        self._limit = check_int("limit", limit, minimum=1)
        waits = dict(DEFAULT_MAX_WAIT)
        if max_wait is not None:
            for level, seconds in max_wait.items():
                waits[Priority.coerce(level)] = check_float(
                    f"max_wait[{Priority.coerce(level).name}]", seconds, minimum=0.0
                )
        self._max_wait = [waits[level] for level in Priority]
        self.max_queue = check_int("max_queue", max_queue, minimum=0)
        shares = [0.0] * len(Priority)
        for level, share in (reserved or {}).items():
            shares[Priority.coerce(level)] = check_float(
                f"reserved[{Priority.coerce(level).name}]", share, minimum=0.0, maximum=1.0
            )
        if sum(shares) > 1.0:
            raise ValueError(f"reserved shares add up to more than 1: {sum(shares)!r}")
        self._shares = shares
        self.name = check_name(name)
        self.clock = check_waiting_clock(clock)
        self._now = self.clock.now
        self._lock = threading.Lock()
        self._queues: list[deque[_Waiter]] = [deque() for _ in Priority]
        self._waiting = 0
        self._in_flight = 0
        self._by_level = [0] * len(Priority)
        self._admitted = [0] * len(Priority)
        self._shed = [0] * len(Priority)
        self._order = 0
        self._listeners: tuple[Listener, ...] = ()
        for listener in listeners:
            self.add_listener(listener)

    # -- views ---------------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return self._waiting

    def stats(self) -> PriorityLimiterStats:
        with self._lock:
            return PriorityLimiterStats(
                name=self.name,
                limit=self._limit,
                in_flight=self._in_flight,
                waiting=self._waiting,
                admitted={p.name: self._admitted[p] for p in Priority},
                shed={p.name: self._shed[p] for p in Priority},
            )

    def __repr__(self) -> str:
        return f"PriorityLimiter(name={self.name!r}, limit={self._limit!r})"

    # -- the decision core (lock held) ---------------------------------------------------------

    def _reserved(self, level: Priority) -> int:
        share = self._shares[level]
        return math.ceil(self._limit * share) if share else 0

    def _admit(self, level: Priority) -> None:
        self._in_flight += 1
        self._by_level[level] += 1
        self._admitted[level] += 1

    def _next_waiter(self) -> _Waiter | None:
        """Who gets a free slot: a level under its reservation first, then by priority."""
        for level in Priority:
            queue = self._queues[level]
            if queue and self._by_level[level] < self._reserved(level):
                return queue[0]
        for queue in self._queues:
            if queue:
                return queue[0]
        return None

    def _hand_out(self) -> None:
        """Give free slots to waiters (lock held)."""
        while self._in_flight < self._limit:
            waiter = self._next_waiter()
            if waiter is None:
                return
            self._queues[waiter.level].popleft()
            self._waiting -= 1
            waiter.granted = True
            self._admit(waiter.level)
            waiter.wake()

    def _shed_one(self, waiter: _Waiter) -> None:
        """Remove ``waiter`` from its line as shed (lock held)."""
        try:
            self._queues[waiter.level].remove(waiter)
        except ValueError:
            return
        self._waiting -= 1
        self._shed[waiter.level] += 1
        waiter.wake()

    def _refusal(self, level: Priority, reason: str) -> ShedError:
        return ShedError(
            self.name, priority=level.name, retry_after=self._max_wait[level], reason=reason
        )

    def _shed_event(self, level: Priority, reason: str) -> None:
        if self._listeners:
            emit(
                self._listeners,
                CallRejected(
                    policy=self.name,
                    time=self._now(),
                    kind="shed",
                    reason=f"{reason}:{level.name.lower()}",
                    retry_after=self._max_wait[level],
                ),
            )

    def _join(self, level: Priority, timeout: float | None, *, sync: bool) -> _Waiter | None:
        """Admit at once (None), queue, or raise :class:`ShedError` (lock held)."""
        if self._in_flight < self._limit and not any(self._queues[p] for p in range(level + 1)):
            self._admit(level)
            return None
        wait = self._max_wait[level] if timeout is None else min(timeout, self._max_wait[level])
        if wait <= 0.0:
            self._shed[level] += 1
            raise self._refusal(level, "at_limit")
        if self._waiting >= self.max_queue:
            # Make room by shedding the least important, newest waiter, if it is less important.
            for victim_level in reversed(Priority):
                if victim_level <= level:
                    break
                if self._queues[victim_level]:
                    victim = self._queues[victim_level][-1]
                    self._shed_one(victim)
                    break
            else:
                victim = None
            if self._waiting >= self.max_queue:
                self._shed[level] += 1
                raise self._refusal(level, "queue_full")
        self._order += 1
        waiter = _Waiter(level, self._now() + wait, self._order, sync=sync)
        self._queues[level].append(waiter)
        self._waiting += 1
        return waiter

    def _step(self, waiter: _Waiter) -> float | None:
        """Granted (None), shed (raises), or how long to wait before deciding again."""
        with self._lock:
            if waiter.granted:
                return None
            now = self._now()
            still_queued = waiter in self._queues[waiter.level]
            if not still_queued or now >= waiter.deadline:
                if still_queued:
                    self._shed_one(waiter)
                reason = "waited_too_long" if still_queued else "evicted"
                refusal = self._refusal(waiter.level, reason)
            else:
                refusal = None
                if waiter.event is not None:
                    waiter.event.clear()
                wait = max(waiter.deadline - now, MIN_WAIT)
        if refusal is not None:
            self._shed_event(waiter.level, refusal.reason)
            raise refusal
        return wait

    def _abandon(self, waiter: _Waiter) -> None:
        with self._lock:
            if waiter.granted:
                # Granted while we were leaving: give the slot back.
                self._release_locked(waiter.level)
                return
            try:
                self._queues[waiter.level].remove(waiter)
            except ValueError:
                return
            self._waiting -= 1

    def _release_locked(self, level: Priority) -> None:
        self._in_flight -= 1
        self._by_level[level] -= 1
        self._hand_out()

    # -- the drivers ---------------------------------------------------------------------------

    def acquire(self, level: Priority | None = None, timeout: float | None = None) -> Priority:
        """Take a slot for a call of ``level`` (default: the context's); returns the level to
        hand back to :meth:`release`. Raises :class:`ShedError` when shed."""
        level = current_priority() if level is None else Priority.coerce(level)
        try:
            with self._lock:
                waiter = self._join(level, timeout, sync=True)
        except ShedError as refusal:
            self._shed_event(level, refusal.reason)
            raise
        if waiter is None:
            return level
        event = waiter.event
        assert event is not None
        try:
            while True:
                wait = self._step(waiter)
                if wait is None:
                    return level
                self.clock.wait(event, wait)
        except BaseException:
            self._abandon(waiter)
            raise

    async def aacquire(
        self, level: Priority | None = None, timeout: float | None = None
    ) -> Priority:
        """Async :meth:`acquire`; a cancelled waiter leaves the line (or returns its slot)."""
        level = current_priority() if level is None else Priority.coerce(level)
        try:
            with self._lock:
                waiter = self._join(level, timeout, sync=False)
        except ShedError as refusal:
            self._shed_event(level, refusal.reason)
            raise
        if waiter is None:
            return level
        loop = asyncio.get_running_loop()
        try:
            while True:
                future: asyncio.Future[None] = loop.create_future()
                waiter.future = future
                wait = self._step(waiter)
                if wait is None:
                    return level
                await self.clock.await_future(future, wait)
        except BaseException:
            self._abandon(waiter)
            raise

    def release(self, level: Priority) -> None:
        """Give back the slot taken for a call of ``level``."""
        with self._lock:
            self._release_locked(level)

    def set_limit(self, limit: int) -> None:
        """Change the limit now; a higher one lets waiters in at once."""
        limit = check_int("limit", limit, minimum=1)
        with self._lock:
            old, self._limit = self._limit, limit
            self._hand_out()
        if self._listeners and old != limit:
            emit(
                self._listeners,
                SettingChanged(
                    policy=self.name,
                    time=self._now(),
                    setting="limit",
                    old=float(old),
                    new=float(limit),
                    reason="set_limit",
                ),
            )

    # -- as a policy ---------------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        level = self.acquire()
        try:
            return fn(*args, **kwargs)
        finally:
            self.release(level)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        level = await self.aacquire()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.release(level)

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        return decorate(self, fn)
