"""Request priorities, and the limiter that sheds the least important calls first.

``Priority`` has five levels, most to least important: CRITICAL, HIGH, NORMAL (the default), LOW,
SHEDDABLE (the SRE book's criticality classes, one more level in the middle). A call's priority
travels in a context variable, so it crosses ``await`` and is copied into tasks created under it
(a new thread starts from the default, NORMAL):

    with priority(Priority.HIGH):
        await memory.search(query)

    @priority(Priority.LOW)            # the same object decorates sync and async functions
    async def backfill(): ...

:class:`PriorityLimiter` caps the calls in flight at ``limit`` (an adaptive concurrency
controller moves it at runtime with :meth:`~PriorityLimiter.set_limit`). Below the limit every
call goes through at once. At the limit, callers wait in line by priority (most important first,
then arrival order), each level for at most its own ``max_wait`` (CRITICAL waits longest); a
waiter whose wait runs out, or the least important waiter when the line is full, is refused with
:class:`~sage_resilience.core.ShedError`.

Why shedding goes strictly from the lowest level up: the refusal of a level-``L`` caller means
the limit cannot serve level ``L`` now, so nothing less important may be served either until the
congestion ends. The limiter then sheds every waiter below ``L`` and refuses newcomers below
``L`` at once (reason ``"shedding"``), until a slot is free with nobody waiting. Without that,
a NORMAL caller could time out in line while a LOW one that came later, with less time left to
wait, took the next free slot. Slots are handed out most important first, so within one
congested period no level is refused while a less important one is admitted after it started
waiting; CRITICAL is refused last. (A caller that gives up on its own, shorter ``timeout`` says
nothing about the limit: it sheds nobody else.)

``reserved`` shares (none by default) guarantee a level a fraction of the limit even while more
important callers wait, trading strict order for no starvation: a level under its reservation
gets a freed slot before priority order and is exempt from shedding.

With a free slot, acquiring and releasing take no lock on GIL builds (a test and a few counter
updates with no call between them, which CPython never interrupts, as in the core bulkhead); the
line, the hand-out and the shedding are decided under one lock, and two drivers wait on them
(``clock.wait`` on an event, ``clock.await_future`` on a future).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import inspect
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
from ..core._gil import GIL_ENABLED
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
        """A level from itself, its name (any case) or its number; ``ValueError`` otherwise."""
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


_LEVELS = len(Priority)

_current: contextvars.ContextVar[Priority] = contextvars.ContextVar(
    "sage_resilience_priority", default=Priority.NORMAL
)
# The tokens of the ``with priority(...)`` blocks open in this context, innermost last. Kept in a
# context variable, not on the ``priority`` object, so one object can be entered by several tasks
# or threads at once: each leaves its own block.
_open: contextvars.ContextVar[tuple[contextvars.Token[Priority], ...]] = contextvars.ContextVar(
    "sage_resilience_priority_blocks", default=()
)


def current_priority() -> Priority:
    """The priority of the calling context (NORMAL unless set)."""
    return _current.get()


class priority:  # noqa: N801 - used like a function: ``with priority(Priority.HIGH):``
    """Set the priority of the calls made inside a block, or of a decorated function's calls.

    As a context manager it sets the context variable for the block (and tasks created inside
    it); as a decorator it does the same around every call, sync or async. One object may be
    entered any number of times, nested or from several tasks and threads at once.
    """

    __slots__ = ("level",)

    def __init__(self, level: Priority | str | int) -> None:
        self.level = Priority.coerce(level)

    def __enter__(self) -> Priority:
        _open.set((*_open.get(), _current.set(self.level)))
        return self.level

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        blocks = _open.get()
        _open.set(blocks[:-1])
        _current.reset(blocks[-1])

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        if not callable(fn):
            raise TypeError(f"priority decorates a callable, got {fn!r}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            # The wrapper would only cover creating the generator, not running it.
            raise TypeError(
                f"priority cannot decorate the generator function {fn!r}: "
                "use `with priority(...)` inside it"
            )
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

    def __repr__(self) -> str:
        return f"priority(Priority.{self.level.name})"


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
    """A priority limiter's state and counts at one moment.

    ``admitted`` counts the calls that got a slot (at once or after waiting), ``shed`` the
    refusals, both by level name; ``shedding`` is the most important level refused at once
    while the current congestion lasts (``None`` when no level is).
    """

    name: str
    limit: int
    in_flight: int
    waiting: int
    admitted: dict[str, int]
    shed: dict[str, int]
    shedding: str | None


class _Waiter(Parked):
    __slots__ = ("granted", "level", "own_deadline", "queued", "reason")

    def __init__(self, level: Priority, deadline: float, *, own_deadline: bool, sync: bool) -> None:
        super().__init__(deadline, sync=sync)
        self.level = level
        self.own_deadline = own_deadline  # the caller's timeout, shorter than the level's wait
        self.queued = True  # in its level's line
        self.granted = False  # given a slot (by whoever freed it)
        self.reason = ""  # why it was taken out of line without a slot


def _level_key(parameter: str, key: object) -> Priority:
    try:
        return Priority.coerce(key)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"{parameter}: {exc}") from None


class PriorityLimiter(Observable):
    """Calls in flight capped at ``limit``; at the limit, served by priority and shed lowest
    first.

    Args:
        limit: calls allowed in flight (>= 1); :meth:`set_limit` changes it.
        max_wait: per level, how long a caller may wait at the limit (seconds, may be
            ``math.inf``); a level left out keeps its :data:`DEFAULT_MAX_WAIT`.
        max_queue: waiters allowed in line; beyond it the least important, newest one is shed
            (or the newcomer, when nobody waiting is less important).
        reserved: per level, a share of the limit (0..1) it may use even while more important
            callers wait; the level must be allowed to wait (``max_wait`` > 0).
        retry_after: the back-off hint (seconds) every :class:`ShedError` carries.
        name: shown in errors, events and stats.
        clock: time source.
        listeners: receive :class:`~sage_resilience.core.CallRejected` (kind ``"shed"``) and
            :class:`~sage_resilience.core.SettingChanged` events.
    """

    __slots__ = (
        "_admitted",
        "_by_level",
        "_floor",
        "_in_flight",
        "_limit",
        "_lock",
        "_max_wait",
        "_now",
        "_queues",
        "_shares",
        "_shed",
        "_waiting",
        "clock",
        "max_queue",
        "name",
        "retry_after",
    )

    def __init__(
        self,
        limit: int,
        *,
        max_wait: Mapping[Priority, float] | None = None,
        max_queue: int = 1000,
        reserved: Mapping[Priority, float] | None = None,
        retry_after: float = 1.0,
        name: str = "priority_limiter",
        clock: Clock | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
    ) -> None:
        self._limit = check_int("limit", limit, minimum=1)
        waits = [DEFAULT_MAX_WAIT[level] for level in Priority]
        for key, seconds in (max_wait or {}).items():
            level = _level_key("max_wait", key)
            waits[level] = check_float(
                f"max_wait[{level.name}]", seconds, minimum=0.0, allow_inf=True
            )
        self._max_wait = waits
        self.max_queue = check_int("max_queue", max_queue, minimum=0)
        shares = [0.0] * _LEVELS
        for key, share in (reserved or {}).items():
            level = _level_key("reserved", key)
            shares[level] = check_float(f"reserved[{level.name}]", share, minimum=0.0, maximum=1.0)
            if shares[level] > 0.0 and waits[level] <= 0.0:
                raise ValueError(
                    f"reserved[{level.name}] needs max_wait[{level.name}] > 0: "
                    "a reservation is honoured when a slot frees, so the level must wait for it"
                )
        if sum(shares) > 1.0:
            raise ValueError(f"reserved shares add up to more than 1: {sum(shares)!r}")
        self._shares = shares
        self.retry_after = check_float("retry_after", retry_after, positive=True)
        self.name = check_name(name)
        self.clock = check_waiting_clock(clock)
        self._now = self.clock.now
        self._lock = threading.Lock()
        self._queues: list[deque[_Waiter]] = [deque() for _ in Priority]
        self._waiting = 0
        self._in_flight = 0
        self._by_level = [0] * _LEVELS
        self._admitted = [0] * _LEVELS
        self._shed = [0] * _LEVELS
        # Levels >= _floor are refused at once while the current congestion lasts.
        self._floor = _LEVELS
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

    def max_wait(self, level: Priority | str | int) -> float:
        """How long a caller of ``level`` may wait at the limit."""
        return self._max_wait[Priority.coerce(level)]

    def stats(self) -> PriorityLimiterStats:
        with self._lock:
            return PriorityLimiterStats(
                name=self.name,
                limit=self._limit,
                in_flight=self._in_flight,
                waiting=self._waiting,
                admitted={p.name: self._admitted[p] for p in Priority},
                shed={p.name: self._shed[p] for p in Priority},
                shedding=Priority(self._floor).name if self._floor < _LEVELS else None,
            )

    def __repr__(self) -> str:
        return f"PriorityLimiter(name={self.name!r}, limit={self._limit!r})"

    # -- the decision core (lock held) ---------------------------------------------------------

    def _under_reservation(self, level: int) -> bool:
        share = self._shares[level]
        return share > 0.0 and self._by_level[level] < math.ceil(self._limit * share)

    def _take_free(self, level: Priority) -> bool:
        """Admit at once if a slot is free (then nobody waits, and no level is being shed).

        No call between the test and the updates: one step under the GIL, so on GIL builds the
        drivers run it inlined without the lock. Every locked path that admits counts the slot
        before it takes a waiter out of line, so it never sees a slot that is already promised.
        """
        if self._in_flight < self._limit and not self._waiting:
            self._in_flight += 1
            self._by_level[level] += 1
            self._admitted[level] += 1
            self._floor = _LEVELS
            return True
        return False

    def _next_level(self) -> int:
        """Whose turn it is for a free slot: a level under its reservation first, then by
        priority; -1 when nobody waits."""
        queues = self._queues
        for level in range(_LEVELS):
            if queues[level] and self._under_reservation(level):
                return level
        for level in range(_LEVELS):
            if queues[level]:
                return level
        return -1

    def _hand_out(self) -> None:
        """Give free slots to waiters; a free slot left with nobody waiting ends the shedding."""
        while self._in_flight < self._limit:
            level = self._next_level()
            if level < 0:
                self._floor = _LEVELS
                return
            # The slot is counted before the waiter leaves the line (see _take_free).
            self._in_flight += 1
            self._by_level[level] += 1
            self._admitted[level] += 1
            waiter = self._queues[level].popleft()
            self._waiting -= 1
            waiter.queued = False
            waiter.granted = True
            waiter.wake()

    def _shed_below(self, level: int) -> None:
        """A caller of ``level`` was refused: shed every waiter less important than it (levels
        under their reservation excepted) and refuse those levels at once from now on."""
        floor = level + 1
        if floor >= self._floor:
            return
        self._floor = floor
        for lower in range(floor, _LEVELS):
            queue = self._queues[lower]
            if queue and not self._under_reservation(lower):
                for waiter in queue:
                    waiter.queued = False
                    waiter.reason = "shedding"
                    waiter.wake()
                self._shed[lower] += len(queue)
                self._waiting -= len(queue)
                queue.clear()

    def _refuse(self, level: Priority, reason: str) -> ShedError:
        """Count the refusal of a caller not in line; the error to raise. A caller's own
        timeout says nothing about what the limit can serve: it sheds nobody else."""
        self._shed[level] += 1
        if reason != "timeout":
            self._shed_below(level)
        return ShedError(
            self.name, priority=level.name, retry_after=self.retry_after, reason=reason
        )

    def _take_out(self, waiter: _Waiter, reason: str) -> None:
        """Shed ``waiter``, which is in line."""
        self._queues[waiter.level].remove(waiter)
        self._waiting -= 1
        waiter.queued = False
        waiter.reason = reason
        self._shed[waiter.level] += 1
        waiter.wake()
        if reason != "timeout":
            self._shed_below(waiter.level)

    def _join(self, level: Priority, timeout: float | None, *, sync: bool) -> _Waiter:
        """At the limit: a place in line, or raise :class:`ShedError`."""
        if level >= self._floor and not self._under_reservation(level):
            raise self._refuse(level, "shedding")
        wait = self._max_wait[level]
        if wait <= 0.0:
            raise self._refuse(level, "at_limit")
        own_deadline = False
        if timeout is not None and timeout < wait:
            if timeout <= 0.0:
                raise self._refuse(level, "timeout")
            wait, own_deadline = timeout, True
        if self._waiting >= self.max_queue:
            # Make room by shedding the least important, newest waiter, if less important.
            for lower in range(_LEVELS - 1, level, -1):
                if self._queues[lower]:
                    self._take_out(self._queues[lower][-1], "evicted")
                    break
            else:
                raise self._refuse(level, "queue_full")
        waiter = _Waiter(level, self._now() + wait, own_deadline=own_deadline, sync=sync)
        self._queues[level].append(waiter)
        self._waiting += 1
        return waiter

    def _step(self, waiter: _Waiter) -> float | None:
        """Granted (None), shed (raises), or how long to wait before deciding again (its event
        or future armed beforehand; ``math.inf``: until woken)."""
        with self._lock:
            if waiter.queued and self._in_flight < self._limit:
                # A slot freed without the lock while this waiter was joining the line.
                self._hand_out()
            if waiter.granted:
                return None
            if waiter.queued:
                now = self._now()
                if now < waiter.deadline:
                    if waiter.event is not None:
                        waiter.event.clear()
                    wait = waiter.deadline - now
                    return wait if wait > MIN_WAIT else MIN_WAIT
                self._take_out(waiter, "timeout" if waiter.own_deadline else "waited_too_long")
            refusal = ShedError(
                self.name,
                priority=waiter.level.name,
                retry_after=self.retry_after,
                reason=waiter.reason,
            )
        self._shed_event(waiter.level, refusal.reason)
        raise refusal

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiter's thread or task gives up (cancelled, interrupted): leave the line, or give
        back the slot it was granted meanwhile (it never had it: not counted as admitted)."""
        with self._lock:
            if waiter.granted:
                waiter.granted = False
                level = waiter.level
                self._admitted[level] -= 1
                self._by_level[level] -= 1
                self._in_flight -= 1
                self._hand_out()
            elif waiter.queued:
                self._queues[waiter.level].remove(waiter)
                self._waiting -= 1
                waiter.queued = False

    def _shed_event(self, level: Priority, reason: str) -> None:
        if self._listeners:
            emit(
                self._listeners,
                CallRejected(
                    policy=self.name,
                    time=self._now(),
                    kind="shed",
                    reason=f"{reason}:{level.name.lower()}",
                    retry_after=self.retry_after,
                ),
            )

    # -- the drivers ---------------------------------------------------------------------------

    def acquire(
        self, level: Priority | str | int | None = None, timeout: float | None = None
    ) -> Priority:
        """Take a slot for a call of ``level`` (default: the context's), waiting at most
        ``timeout`` seconds beyond what the level allows anyway; returns the level to hand back
        to :meth:`release`.

        Raises:
            ShedError: refused. ``reason`` says why: ``"at_limit"`` (the level may not wait),
                ``"waited_too_long"`` (its ``max_wait`` ran out), ``"timeout"`` (the caller's
                own shorter ``timeout`` ran out), ``"queue_full"``, ``"evicted"`` (pushed out
                of a full line by a more important caller) or ``"shedding"`` (a more important
                caller was refused in this congestion).
        """
        if level is None:
            level = _current.get()
        elif level.__class__ is not Priority:
            level = Priority.coerce(level)
        if timeout is not None:
            timeout = check_float("timeout", timeout, minimum=0.0, allow_inf=True)
        # _take_free inlined (the method call costs as much as the rest of this path).
        if GIL_ENABLED and self._in_flight < self._limit and not self._waiting:
            self._in_flight += 1
            self._by_level[level] += 1
            self._admitted[level] += 1
            self._floor = _LEVELS
            return level
        try:
            with self._lock:
                if self._take_free(level):
                    return level
                waiter = self._join(level, timeout, sync=True)
        except ShedError as exc:
            refusal = exc  # reported outside the handler: a listener's error must not chain to it
        else:
            event = waiter.event
            assert event is not None
            wait = self.clock.wait
            try:
                while True:
                    delay = self._step(waiter)
                    if delay is None:
                        return level
                    wait(event, None if math.isinf(delay) else delay)
            except BaseException:
                self._abandon(waiter)
                raise
        self._shed_event(level, refusal.reason)
        raise refusal

    async def aacquire(
        self, level: Priority | str | int | None = None, timeout: float | None = None
    ) -> Priority:
        """Async :meth:`acquire`; a cancelled waiter leaves the line (or gives back the slot it
        was granted as it was cancelled)."""
        if level is None:
            level = _current.get()
        elif level.__class__ is not Priority:
            level = Priority.coerce(level)
        if timeout is not None:
            timeout = check_float("timeout", timeout, minimum=0.0, allow_inf=True)
        # _take_free inlined (the method call costs as much as the rest of this path).
        if GIL_ENABLED and self._in_flight < self._limit and not self._waiting:
            self._in_flight += 1
            self._by_level[level] += 1
            self._admitted[level] += 1
            self._floor = _LEVELS
            return level
        try:
            with self._lock:
                if self._take_free(level):
                    return level
                waiter = self._join(level, timeout, sync=False)
        except ShedError as exc:
            refusal = exc
        else:
            loop = asyncio.get_running_loop()
            await_future = self.clock.await_future
            try:
                while True:
                    future: asyncio.Future[None] = loop.create_future()
                    waiter.future = future
                    delay = self._step(waiter)
                    if delay is None:
                        return level
                    await await_future(future, None if math.isinf(delay) else delay)
            except BaseException:
                self._abandon(waiter)
                raise
        self._shed_event(level, refusal.reason)
        raise refusal

    def release(self, level: Priority) -> None:
        """Give back the slot taken for a call of ``level`` (what ``acquire`` returned).

        Raises:
            RuntimeError: no slot of that level is held (the counts stay as they were).
        """
        by_level = self._by_level
        if GIL_ENABLED:
            if by_level[level] > 0:
                by_level[level] -= 1  # no call since the test: one step under the GIL
                self._in_flight -= 1
                # Read after the decrement: a caller joining the line meanwhile either is
                # counted here or sees the free slot in its first step.
                if self._waiting or self._floor < _LEVELS:
                    with self._lock:
                        self._hand_out()
                return
        else:
            with self._lock:
                if by_level[level] > 0:
                    by_level[level] -= 1
                    self._in_flight -= 1
                    if self._waiting or self._floor < _LEVELS:
                        self._hand_out()
                    return
        raise RuntimeError(
            f"priority limiter {self.name!r} released a {Priority(level).name} slot it never gave"
        )

    def set_limit(self, limit: int) -> None:
        """Change the limit now: a higher one lets waiters in at once; after a lower one, calls
        in flight finish and nobody enters until below it."""
        limit = check_int("limit", limit, minimum=1)
        with self._lock:
            old, self._limit = self._limit, limit
            self._hand_out()
            now = self._now()
        if self._listeners and old != limit:
            emit(
                self._listeners,
                SettingChanged(
                    policy=self.name,
                    time=now,
                    setting="limit",
                    old=float(old),
                    new=float(limit),
                    reason="set_limit",
                ),
            )

    # -- as a policy ---------------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` holding a slot, at the context's priority."""
        level = self.acquire()
        try:
            return fn(*args, **kwargs)
        finally:
            self.release(level)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn`` holding a slot, at the context's priority."""
        level = await self.aacquire()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.release(level)

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async): each call holds a slot."""
        return decorate(self, fn)
