"""Hedging: when an idempotent async call is slow, start another and take the first success.

After ``delay`` seconds without an answer a second attempt starts, and so on up to
``max_hedges`` extra attempts; an attempt that fails starts the next one at once instead of
waiting out the delay. The first attempt to succeed wins: the others are cancelled, and the call
returns only once they have finished (so no task outlives it). If every attempt fails, the first
failure is raised (the others are added to it as notes). A failure that another attempt cannot
cure (a permanent error, or a rejection by one of our own policies, see :mod:`.classify`) starts
no further attempt. Only for idempotent calls: more than one attempt may reach the dependency.

Each attempt is a task (the hedge timer is an ``asyncio.wait`` on the attempts in flight), so a
hedged call costs a task even when the first attempt answers in time: use it where the tail
latency it removes is worth far more than that.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, ParamSpec, TypeVar

from ._callables import is_async_callable
from ._validate import check_float, check_int
from .classify import FailureKind, classify
from .clock import Clock, resolve_clock
from .events import Listener, Observable, SettingChanged, emit

__all__ = ["Hedge", "HedgeStats"]


@dataclass(frozen=True, slots=True)
class HedgeStats:
    """Hedged calls at one moment.

    ``calls`` counts calls; ``hedged`` the calls that started at least one extra attempt;
    ``hedges`` the extra attempts started; ``won_by_hedge`` the calls an extra attempt answered;
    ``failed`` the calls where every attempt failed.
    """

    name: str
    delay: float
    max_hedges: int
    calls: int
    hedged: int
    hedges: int
    won_by_hedge: int
    failed: int


P = ParamSpec("P")
T = TypeVar("T")

_HOPELESS = frozenset({FailureKind.PERMANENT, FailureKind.REJECTED})


def _consume(task: asyncio.Future[Any]) -> None:
    """Done callback: mark a task's exception as retrieved (a loser's failure after the call
    returned must not be logged as "never retrieved")."""
    if not task.cancelled():
        task.exception()


class Hedge(Observable):
    """Start up to ``max_hedges`` extra attempts, ``delay`` seconds apart, while none answered.

    Args:
        delay: seconds without an answer before the next attempt starts (>= 0).
        max_hedges: extra attempts at most (>= 1).
        name: shown in stats and events.
        clock: time source of the events (default the system's monotonic clock); the waiting
            itself is on the event loop's time.
        listeners: callables receiving a :class:`~.events.SettingChanged` when
            :meth:`set_delay` changes the delay (an adaptive controller may drive it).
    """

    __slots__ = (
        "calls",
        "clock",
        "delay",
        "failed",
        "hedged",
        "hedges",
        "max_hedges",
        "name",
        "won_by_hedge",
    )

    async_only = True
    """A pipeline holding a hedge refuses sync calls."""

    def __init__(
        self,
        delay: float,
        *,
        max_hedges: int = 1,
        name: str = "hedge",
        clock: Clock | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
    ) -> None:
        self.delay = check_float("delay", delay, minimum=0.0)
        self.max_hedges = check_int("max_hedges", max_hedges, minimum=1)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.clock = resolve_clock(clock)
        self.calls = 0
        self.hedged = 0
        self.hedges = 0
        self.won_by_hedge = 0
        self.failed = 0
        self._listeners: tuple[Listener, ...] = ()
        for listener in listeners:
            self.add_listener(listener)

    def stats(self) -> HedgeStats:
        return HedgeStats(
            name=self.name,
            delay=self.delay,
            max_hedges=self.max_hedges,
            calls=self.calls,
            hedged=self.hedged,
            hedges=self.hedges,
            won_by_hedge=self.won_by_hedge,
            failed=self.failed,
        )

    def __repr__(self) -> str:
        return f"Hedge(delay={self.delay!r}, max_hedges={self.max_hedges!r}, name={self.name!r})"

    def set_delay(self, delay: float) -> None:
        """Change the hedge delay (for example to the dependency's observed p95 latency)."""
        new = check_float("delay", delay, minimum=0.0)
        old, self.delay = self.delay, new
        if self._listeners and old != new:
            emit(
                self._listeners,
                SettingChanged(
                    policy=self.name,
                    time=self.clock.now(),
                    setting="hedge_delay",
                    old=old,
                    new=new,
                    reason="set_delay",
                ),
            )

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``, hedging it as configured."""
        self.calls += 1
        delay = self.delay
        attempts = 1 + self.max_hedges
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Future[T]] = []
        running: set[asyncio.Future[T]] = set()
        failures: list[BaseException] = []
        try:
            while True:
                if len(tasks) < attempts:
                    if tasks:
                        self.hedges += 1
                        if len(tasks) == 1:
                            self.hedged += 1
                    started: asyncio.Future[T] = asyncio.ensure_future(
                        fn(*args, **kwargs), loop=loop
                    )
                    started.add_done_callback(_consume)
                    tasks.append(started)
                    running.add(started)
                if not running:
                    self.failed += 1
                    raise _first_failure(failures)
                done, running = await asyncio.wait(
                    running,
                    timeout=delay if len(tasks) < attempts else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                # In start order, so that the outcome never depends on set iteration order.
                for task in tasks:
                    if task not in done:
                        continue
                    if task.cancelled():
                        # Cancelled by someone else than us: a failed attempt.
                        failures.append(asyncio.CancelledError("hedged attempt was cancelled"))
                        continue
                    exc = task.exception()
                    if exc is None:
                        if task is not tasks[0]:
                            self.won_by_hedge += 1
                        return task.result()
                    failures.append(exc)
                    if classify(exc) in _HOPELESS:
                        attempts = len(tasks)
                # Nothing answered within the delay, or an attempt failed: start the next now.
        finally:
            # Cancel the losers (or every attempt, if this call itself was cancelled) and wait
            # for them, so that none outlives the call. A second cancellation of this call
            # interrupts the wait (asyncio.wait raises it) rather than being swallowed.
            pending = [t for t in tasks if not t.done()]
            if pending:
                for loser in pending:
                    loser.cancel()
                await asyncio.wait(pending)

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: hedging needs concurrency, so it applies to async calls only."""
        raise TypeError(f"hedge {self.name!r} applies to async calls only")

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function (a sync one is a ``TypeError``)."""
        if not callable(fn) or not is_async_callable(fn):
            raise TypeError(f"hedge {self.name!r} decorates async functions only, got {fn!r}")
        acall = self.acall

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await acall(fn, *args, **kwargs)

        wrapper.hedge = self  # type: ignore[attr-defined]
        return wrapper


def _first_failure(failures: list[BaseException]) -> BaseException:
    first = failures[0]
    for other in failures[1:]:
        if other is not first:
            first.add_note(f"hedged attempt also failed: {other!r}")
    return first
