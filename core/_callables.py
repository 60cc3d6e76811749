"""What kind of callable a policy is wrapping, and the generic policy decorator."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, Protocol, runtime_checkable

__all__ = ["Policy", "decorate", "is_async_callable"]

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
