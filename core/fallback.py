"""Fallback: answer with a value (or a handler's answer) instead of failing.

So a Sage search can degrade to an empty result when the embedding service is down or one of our
own policies refuses the call: ``Fallback(value=[], on=(RejectedError, ConnectionError))``.
Placed outermost in a pipeline it answers for every failure below it, our rejections
(:class:`~.errors.CircuitBreakerOpenError`, :class:`~.errors.RateLimitExceeded`,
:class:`~.errors.BulkheadFull`) included.

Cancellation, ``KeyboardInterrupt`` and ``SystemExit`` are never handled: ``on`` may only name
``Exception`` classes (``BaseException`` is read as "every ``Exception``").
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from ._callables import decorate, is_async_callable
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
        value: the value to answer with (may be ``None``).
        handler: ``(exc) -> value``, or an async function for async calls; exactly one of
            ``value`` and ``handler`` must be given.
        on: the ``Exception`` classes handled (default every ``Exception``).
        name: shown in stats and events.
        clock: time source of the events (default the system's monotonic clock).
        listeners: callables receiving a :class:`~.events.FallbackUsed` each time it answers.
    """

    __slots__ = ("_async_handler", "clock", "handled", "handler", "name", "on", "value")

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        handler: Callable[[Exception], Any] | None = None,
        on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        name: str = "fallback",
        clock: Clock | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
    ) -> None:
        if (value is _MISSING) == (handler is None):
            raise ValueError("give exactly one of value or handler")
        self.handler = check_callable("handler", handler)
        self._async_handler = handler is not None and is_async_callable(handler)
        self.value: Any = None if value is _MISSING else value
        classes = check_exceptions("on", on)
        if not classes:
            raise ValueError("on must name at least one exception class")
        never = [
            c.__name__ for c in classes if c is not BaseException and not issubclass(c, Exception)
        ]
        if never:
            raise ValueError(
                f"on names {', '.join(never)}, which a fallback never handles (cancellation, "
                "KeyboardInterrupt and SystemExit always propagate)"
            )
        # Every class is now an Exception subclass, so ``except self.on`` never catches a
        # cancellation.
        self.on: tuple[type[Exception], ...] = tuple(
            Exception if c is BaseException else c  # type: ignore[misc]
            for c in classes
        )
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.clock = resolve_clock(clock)
        self.handled = 0
        self._listeners: tuple[Listener, ...] = ()
        for listener in listeners:
            self.add_listener(listener)

    @property
    def async_only(self) -> bool:
        """Whether only async calls can use it (its handler is async)."""
        return self._async_handler

    def stats(self) -> FallbackStats:
        return FallbackStats(name=self.name, handled=self.handled)

    def __repr__(self) -> str:
        return f"Fallback(name={self.name!r}, on={self.on!r})"

    def _used(self, exc: Exception) -> None:
        self.handled += 1
        if self._listeners:
            emit(
                self._listeners,
                FallbackUsed(policy=self.name, time=self.clock.now(), exception=type(exc).__name__),
            )

    def _sync_refused(self) -> TypeError:
        return TypeError(
            f"fallback {self.name!r} has an async handler (it returns a coroutine); use it on "
            "async calls"
        )

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn``; on a handled exception answer the fallback instead."""
        try:
            return fn(*args, **kwargs)
        except self.on as exc:
            handler = self.handler
            if handler is None:
                self._used(exc)
                return self.value  # type: ignore[no-any-return]
            if self._async_handler:
                raise self._sync_refused() from exc
            self._used(exc)
            answer = handler(exc)
            if inspect.iscoroutine(answer):
                # A sync-looking handler (a lambda, say) that made a coroutine.
                answer.close()
                raise self._sync_refused() from exc
            return answer  # type: ignore[no-any-return]

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn``; on a handled exception answer the fallback instead."""
        try:
            return await fn(*args, **kwargs)
        except self.on as exc:
            self._used(exc)
            handler = self.handler
            if handler is None:
                return self.value  # type: ignore[no-any-return]
            answer = handler(exc)
            # Also awaits what a sync-looking handler (a lambda, say) returned from async code.
            if self._async_handler or inspect.isawaitable(answer):
                answer = await answer
            return answer  # type: ignore[no-any-return]

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async; a sync one needs a sync handler or a value)."""
        if self._async_handler and callable(fn) and not is_async_callable(fn):
            raise self._sync_refused()
        return decorate(self, fn)
