"""Timeouts for async calls, on ``asyncio.timeout`` (a cancel scope, no extra task).

``Timeout(seconds)`` bounds one await: placed inside a retry it bounds each attempt
(``kind="attempt"``), placed outside it bounds the whole call (``kind="total"``). When it fires
the callee is cancelled (it sees ``CancelledError`` at its current ``await``) and the call raises
:class:`~.errors.ResilienceTimeoutError`, a ``TimeoutError`` that says which limit fired and
after how long; a ``TimeoutError`` raised by the callee itself passes through unchanged.

Each call's scope is an ``asyncio.Timeout``; the policy arms the scopes of all its calls on a
loop from one loop timer (``_deadlines``) rather than one ``TimerHandle`` per call, which is
most of what ``asyncio.timeout`` costs. Every call still stops exactly at its own deadline.

A sync call cannot be interrupted from outside its thread: give the retry a ``deadline``
instead. Decorating a sync function with a :class:`Timeout`, or calling :meth:`Timeout.call`, is
a ``TypeError``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, ParamSpec, TypeVar

from ._callables import is_async_callable
from ._deadlines import Deadlines, release
from ._validate import check_float
from .errors import ResilienceTimeoutError
from .events import CallRejected, Listener, Observable, emit

__all__ = ["Timeout", "TimeoutStats"]

_KINDS = ("attempt", "total")


@dataclass(frozen=True, slots=True)
class TimeoutStats:
    """A timeout's setting and how often it fired.

    ``timeout_kind`` is the timeout's ``kind`` (``"attempt"`` or ``"total"``); it is not called
    ``kind`` so that it never collides with the policy kind of a registry status entry.
    """

    name: str
    seconds: float
    timeout_kind: str
    fired: int


P = ParamSpec("P")
T = TypeVar("T")


class Timeout(Observable):
    """Bound an async call to ``seconds``.

    Args:
        seconds: the limit (> 0, finite).
        kind: ``"attempt"`` (inside a retry: each attempt) or ``"total"`` (the whole call); it
            only names the limit in the error, the stats and the events.
        name: shown in errors, stats and events.
        listeners: callables receiving a :class:`~.events.CallRejected` (``kind="timeout"``,
            ``reason="attempt_timeout"`` or ``"total_timeout"``) each time the limit fires.
    """

    __slots__ = ("_deadlines", "fired", "kind", "name", "seconds")

    async_only = True
    """A pipeline holding a timeout refuses sync calls."""

    def __init__(
        self,
        seconds: float,
        *,
        kind: str = "attempt",
        name: str = "timeout",
        listeners: tuple[Listener, ...] | list[Listener] = (),
    ) -> None:
        self.seconds = check_float("seconds", seconds, positive=True)
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'attempt' or 'total', got {kind!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.kind = kind
        self.name = name
        self.fired = 0
        self._deadlines = Deadlines()
        self._listeners: tuple[Listener, ...] = ()
        for listener in listeners:
            self.add_listener(listener)

    def stats(self) -> TimeoutStats:
        return TimeoutStats(
            name=self.name, seconds=self.seconds, timeout_kind=self.kind, fired=self.fired
        )

    def __repr__(self) -> str:
        return f"Timeout({self.seconds!r}, kind={self.kind!r}, name={self.name!r})"

    def _expired(self) -> ResilienceTimeoutError:
        self.fired += 1
        if self._listeners:
            emit(
                self._listeners,
                CallRejected(
                    policy=self.name,
                    time=asyncio.get_running_loop().time(),
                    kind="timeout",
                    reason=f"{self.kind}_timeout",
                    retry_after=None,
                ),
            )
        return ResilienceTimeoutError(self.name, seconds=self.seconds, kind=self.kind)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``; past ``seconds`` it is cancelled and this raises
        :class:`~.errors.ResilienceTimeoutError`."""
        entry = self._deadlines.arm(self.seconds)
        scope: asyncio.Timeout = entry[1]
        try:
            async with scope:
                return await fn(*args, **kwargs)
        except TimeoutError as exc:
            # The scope turns its own cancellation into a bare TimeoutError; anything else
            # (the callee's own TimeoutError, or ours from an inner Timeout) is not this limit.
            if scope.expired():
                raise self._expired() from exc
            raise
        finally:
            release(entry)

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: a sync call cannot be interrupted (use the retry's ``deadline``)."""
        raise TypeError(
            f"timeout {self.name!r} applies to async calls only; bound a sync call with the "
            "retry's deadline"
        )

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function (a sync one is a ``TypeError``)."""
        if not callable(fn) or not is_async_callable(fn):
            raise TypeError(
                f"timeout {self.name!r} decorates async functions only, got {fn!r}; bound a sync "
                "call with the retry's deadline"
            )
        acall = self.acall

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await acall(fn, *args, **kwargs)

        wrapper.timeout = self  # type: ignore[attr-defined]
        return wrapper
