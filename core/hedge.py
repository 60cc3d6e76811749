"""Hedging: when an idempotent async call is slow, start another and take the first success.

After ``delay`` seconds without an answer a second attempt starts, and so on up to
``max_hedges`` extra attempts; the first attempt to succeed wins and the others are cancelled.
If every attempt fails, the first failure is raised (the others are chained as notes). Only
for idempotent calls: more than one attempt may reach the dependency.

Each attempt is a task (the hedge timer is an ``asyncio.wait`` on the attempts in flight), so a
hedged call costs a task even when the first attempt answers in time: use it where the tail
latency it removes is worth far more than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from ._callables import is_async_callable
from ._validate import check_float, check_int
from .clock import Clock, resolve_clock
from .events import Listener, Observable, SettingChanged, emit

__all__ = ["Hedge", "HedgeStats"]


@dataclass(frozen=True, slots=True)
class HedgeStats:
    """Hedged calls: how many, how many started a hedge, how many a hedge won."""

    name: str
    delay: float
    calls: int
    hedged: int
    won_by_hedge: int


P = ParamSpec("P")
T = TypeVar("T")


class Hedge(Observable):
    """Start up to ``max_hedges`` extra attempts, ``delay`` seconds apart, while none answered.

    Args:
        delay: seconds without an answer before the next attempt starts (>= 0).
        max_hedges: extra attempts at most (>= 1).
        name: shown in stats and events.
        listeners: callables receiving a :class:`~.events.SettingChanged` when
            :meth:`set_delay` changes the delay (an adaptive controller may drive it).
    """

    __slots__ = ("calls", "clock", "delay", "hedged", "max_hedges", "name", "won_by_hedge")

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
        self.won_by_hedge = 0
        self._listeners: tuple[Listener, ...] = ()
        for listener in listeners:
            self.add_listener(listener)

    def stats(self) -> HedgeStats:
        return HedgeStats(
            name=self.name,
            delay=self.delay,
            calls=self.calls,
            hedged=self.hedged,
            won_by_hedge=self.won_by_hedge,
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
        attempts = 1 + self.max_hedges
        tasks: list[asyncio.Task[T]] = []
        failures: list[BaseException] = []
        try:
            start_next = True
            while True:
                if start_next and len(tasks) < attempts:
                    if tasks:
                        self.hedged += 1
                    tasks.append(asyncio.ensure_future(fn(*args, **kwargs)))
                running = [t for t in tasks if not t.done()]
                if not running:
                    raise _first_failure(failures)
                more = len(tasks) < attempts
                done, _ = await asyncio.wait(
                    running,
                    timeout=self.delay if more else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    if task.cancelled():
                        failures.append(asyncio.CancelledError("hedged attempt cancelled"))
                        continue
                    exc = task.exception()
                    if exc is None:
                        if task is not tasks[0]:
                            self.won_by_hedge += 1
                        return task.result()
                    failures.append(exc)
                # Nothing answered in time, or an attempt failed: start the next one now.
                start_next = True
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            for task in tasks:
                if not task.done():
                    with contextlib.suppress(BaseException):
                        await task

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Refused: hedging needs concurrency, so it applies to async calls only."""
        raise TypeError(f"hedge {self.name!r} applies to async calls only")

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function."""
        if not is_async_callable(fn):
            raise TypeError(f"hedge {self.name!r} decorates async functions only, got {fn!r}")
        policy = self

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await policy.acall(fn, *args, **kwargs)

        wrapper.hedge = policy  # type: ignore[attr-defined]
        return wrapper


def _first_failure(failures: list[BaseException]) -> BaseException:
    first = failures[0]
    for other in failures[1:]:
        first.add_note(f"hedged attempt also failed: {other!r}")
    return first
