"""What kind of callable a policy is wrapping, the generic policy decorator, and :data:`READY`,
the already-finished coroutine that the fast paths of ``aacquire`` return."""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, NoReturn, ParamSpec, Protocol, runtime_checkable

__all__ = ["READY", "Policy", "decorate", "is_async_callable"]

P = ParamSpec("P")


@runtime_checkable
class Policy(Protocol):
    """What a pipeline composes: anything that can run a call, sync and async."""

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...

    async def acall(
        self, fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any
    ) -> Any: ...


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` returns a coroutine: a coroutine function, or an object whose
    ``__call__`` is one (``inspect.iscoroutinefunction`` says no to such an instance), possibly
    behind ``functools.partial``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    # ``fn`` is callable, so its type has ``__call__``.
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)


def decorate(policy: Policy, fn: Callable[P, Any]) -> Callable[P, Any]:
    """The generic decorator of a policy: the wrapper runs ``policy.call`` or ``policy.acall``
    (picked once, from ``fn``) and exposes the policy as ``.policy``."""
    if not callable(fn):
        raise TypeError(f"{type(policy).__name__} decorates a callable, got {fn!r}")
    if is_async_callable(fn):
        acall = policy.acall

        @functools.wraps(fn)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await acall(fn, *args, **kwargs)

        async_wrapper.policy = policy  # type: ignore[attr-defined]
        return async_wrapper
    call = policy.call

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
        return call(fn, *args, **kwargs)

    wrapper.policy = policy  # type: ignore[attr-defined]
    return wrapper


class _Ready(Coroutine[Any, Any, None]):
    """A coroutine that has already finished with ``None``, shareable by any number of awaits.

    ``aacquire`` methods that find their permit at once return :data:`READY` instead of running a
    coroutine frame: ``await READY`` is ``None`` at once, and ``asyncio.run(READY)`` or
    ``asyncio.create_task(READY)`` accept it (it is a :class:`~collections.abc.Coroutine`). It
    holds no state, so every await and every thread may share the one instance.
    """

    __slots__ = ()

    # ``await`` asks for an iterator and runs it; an exhausted one stops at once, with None. It
    # stays exhausted, so one serves every await; handing it out through a C-level callable
    # (``repeat(it).__next__`` returns ``it``) spares a Python frame on each await.
    __await__: Callable[[], Generator[Any, None, None]] = itertools.repeat(  # type: ignore[assignment]
        iter(())
    ).__next__

    def send(self, value: object, /) -> NoReturn:
        raise StopIteration

    def throw(self, typ: Any, val: Any = None, tb: Any = None, /) -> NoReturn:
        # As a finished coroutine does: the exception comes straight back out.
        if val is None:
            raise typ
        raise val.with_traceback(tb) if tb is not None else val

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return "READY"


READY: Coroutine[Any, Any, None] = _Ready()
"""The shared already-finished coroutine (see :class:`_Ready`)."""
