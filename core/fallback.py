"""Fallback: answer with a value (or a handler's answer) instead of failing.

So a Sage search can degrade to an empty or unranked result when the embedding service is down:
``Fallback(value=[], on=(RejectedError, ConnectionError))``. Cancellation, ``KeyboardInterrupt``
and ``SystemExit`` are never handled, whatever ``on`` says.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from ._callables import decorate
from ._validate import check_callable, check_exceptions
from .clock import Clock, resolve_clock
from .events import FallbackUsed, Listener, Observable, emit

__all__ = ["Fallback", "FallbackStats"]


@dataclass(frozen=True, slots=True)
class FallbackStats:
    """How often a fallback answered."""

    name: str
    handled: int


P = ParamSpec("P")
T = TypeVar("T")

_MISSING: Any = object()


class Fallback(Observable):
    """On one of the ``on`` exceptions, return ``value`` or ``handler(exc)`` instead.

    Args:
        value: the value to answer with.
        handler: ``(exc) -> value`` (or an async function, for async calls); exclusive with
            ``value``.
        on: the exception classes handled (default every ``Exception``).
        name: shown in events.
        listeners: callables receiving a :class:`FallbackUsed` each time it answers.
    """

    __slots__ = ("_async_handler", "clock", "handled", "handler", "name", "on", "value")

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        handler: Callable[[BaseException], Any] | None = None,
        on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        name: str = "fallback",
        clock: Clock | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
    ) -> None:
        if (value is _MISSING) == (handler is None):
            raise ValueError("give exactly one of value or handler")
        self.handler = check_callable("handler", handler)
        self._async_handler = handler is not None and inspect.iscoroutinefunction(handler)
        self.value: Any = None if value is _MISSING else value
        self.on = tuple(c for c in check_exceptions("on", on))
        if not self.on:
            raise ValueError("on must name at least one exception class")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.clock = resolve_clock(clock)
        self.handled = 0
        self._listeners: tuple[Listener, ...] = ()
        for listener in listeners:
            self.add_listener(listener)

    def stats(self) -> FallbackStats:
        return FallbackStats(name=self.name, handled=self.handled)

    def __repr__(self) -> str:
        return f"Fallback(name={self.name!r}, on={self.on!r})"

    def _handles(self, exc: BaseException) -> bool:
        return isinstance(exc, Exception) and isinstance(exc, self.on)

    def _used(self, exc: BaseException) -> None:
        self.handled += 1
        if self._listeners:
            emit(
                self._listeners,
                FallbackUsed(policy=self.name, time=0.0, exception=type(exc).__name__),
            )

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn``; on a handled exception answer the fallback instead."""
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if not self._handles(exc):
                raise
            self._used(exc)
            if self.handler is None:
                return self.value  # type: ignore[no-any-return]
            if self._async_handler:
                raise TypeError(
                    f"fallback {self.name!r} has an async handler; use it on async calls"
                ) from exc
            return self.handler(exc)  # type: ignore[no-any-return]

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn``; on a handled exception answer the fallback instead."""
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            if not self._handles(exc):
                raise
            self._used(exc)
            if self.handler is None:
                return self.value  # type: ignore[no-any-return]
            answer = self.handler(exc)
            if self._async_handler:
                answer = await answer
            return answer  # type: ignore[no-any-return]

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async)."""
        return decorate(self, fn)
