"""One way to compose policies: a :class:`Pipeline`, outer to inner.

``Pipeline(fallback, limiter, bulkhead, retry, breaker, timeout)`` runs a call through each
policy in that order: the outermost sees the call first and the result last. Every policy has the
same shape (``call(fn, /, *args, **kwargs)`` and ``acall(...)``), so a pipeline is nothing but
nesting: ``pipeline.call(fn, x)`` is ``p1.call(p2.call, p3.call, fn, x)``, which runs
``p2.call(p3.call, fn, x)`` inside ``p1``, and so on. That chain of bound methods is built once,
as a ``functools.partial``, when the pipeline is made: a call through it costs each policy's own
work and one argument hand-over per layer, nothing else. ``pipeline(fn)`` binds ``fn`` into the
chain too. The tests check that it gives the same outcomes and the same policy statistics as the
policies' own decorators stacked by hand.

The default order, :data:`DEFAULT_ORDER` (outer to inner: fallback, rate limiter, bulkhead,
retry, hedge, circuit breaker, timeout), is the one the tests show to be right:

* each retry attempt goes through the breaker and carries its own timeout, so an attempt that
  times out counts against the breaker and is retried (with the breaker outside the retry a
  whole retried call would count once; with the timeout outside it the first slow attempt would
  eat the whole budget);
* an open breaker refuses with a :class:`~.errors.RejectedError`, which the retry does not
  retry: the call stops at once, with no further attempt and no backoff sleep;
* the limiter and the bulkhead are outside the retry: a call takes one token and one slot however
  many attempts it makes, and an exhausted limiter refuses before the first attempt;
* the fallback is outermost, so it answers for every failure, rejections included.

:meth:`Pipeline.build` sorts policies into that order by kind; the constructor keeps the order
given.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from ._callables import Policy, decorate, is_async_callable
from .breaker import CircuitBreaker
from .bulkhead import Bulkhead
from .fallback import Fallback
from .hedge import Hedge
from .ratelimit import RateLimiter
from .retry import Retry
from .timeout import Timeout

__all__ = ["DEFAULT_ORDER", "Pipeline", "Policy", "decorate", "is_async_callable"]

P = ParamSpec("P")
T = TypeVar("T")


DEFAULT_ORDER: tuple[type, ...] = (
    Fallback,
    RateLimiter,
    Bulkhead,
    Retry,
    Hedge,
    CircuitBreaker,
    Timeout,
)
"""Outer to inner: the order :meth:`Pipeline.build` sorts policies into."""


def _is_async_only(policy: Policy) -> bool:
    """Whether ``policy`` can only run async calls (a timeout, a hedge, a fallback whose handler
    is async, or any policy saying so with a true ``async_only`` attribute)."""
    return bool(getattr(policy, "async_only", False))


class Pipeline:
    """Policies composed outer to inner.

    Args:
        *policies: the policies, outermost first (a nested :class:`Pipeline` is flattened). A
            policy is any object with ``call(fn, /, *args, **kwargs)`` and ``acall(...)``.
        name: shown in ``repr`` and errors.

    Raises:
        ValueError: no policy, the same policy object twice, or an empty ``name``.
        TypeError: an object that is not a policy.
    """

    __slots__ = ("_achain", "_chain", "_policies", "name")

    def __init__(self, *policies: Policy | Pipeline, name: str = "pipeline") -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        flat: list[Policy] = []
        for policy in policies:
            if isinstance(policy, Pipeline):
                flat.extend(policy.policies)
            elif isinstance(policy, type) or not isinstance(policy, Policy):
                raise TypeError(
                    f"policies: not a policy: {policy!r} (a policy has call() and acall())"
                )
            else:
                flat.append(policy)
        if not flat:
            raise ValueError("policies: a pipeline needs at least one policy")
        seen: set[int] = set()
        for policy in flat:
            if id(policy) in seen:
                raise ValueError(f"policies: {policy!r} appears twice in the pipeline")
            seen.add(id(policy))
        self._policies: tuple[Policy, ...] = tuple(flat)
        self.name = name
        # The chains: outer.call(inner1.call, inner2.call, ..., fn, *args), bound once.
        first, *rest = flat
        self._achain: Callable[..., Awaitable[Any]] = functools.partial(
            first.acall, *(p.acall for p in rest)
        )
        self._chain: Callable[..., Any] | None = (
            None
            if any(_is_async_only(p) for p in flat)
            else functools.partial(first.call, *(p.call for p in rest))
        )

    @classmethod
    def build(cls, *policies: Policy, name: str = "pipeline") -> Pipeline:
        """A pipeline with ``policies`` sorted into :data:`DEFAULT_ORDER` (others stay innermost
        in the order given)."""

        def rank(policy: Policy) -> int:
            for i, kind in enumerate(DEFAULT_ORDER):
                if isinstance(policy, kind):
                    return i
            return len(DEFAULT_ORDER)

        return cls(*sorted(policies, key=rank), name=name)

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The policies, outermost first (read-only: the call chains are built from them)."""
        return self._policies

    @property
    def async_only(self) -> bool:
        """Whether the pipeline holds a policy that only runs async calls."""
        return self._chain is None

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self.policies)
        return f"Pipeline({inner}, name={self.name!r})"

    def _sync_refused(self) -> TypeError:
        names = [type(p).__name__ for p in self.policies if _is_async_only(p)]
        return TypeError(
            f"pipeline {self.name!r} holds async-only policies ({', '.join(names)}); a sync call "
            "cannot be timed out or hedged (give the retry a deadline)"
        )

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through every policy, outer to inner."""
        chain = self._chain
        if chain is None:
            raise self._sync_refused()
        return chain(fn, *args, **kwargs)  # type: ignore[no-any-return]

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through every policy, outer to inner."""
        return await self._achain(fn, *args, **kwargs)  # type: ignore[no-any-return]

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async); the wrapper exposes the pipeline as ``.pipeline``.

        It behaves as the policies' own decorators stacked by hand, outermost on top.
        """
        if not callable(fn):
            raise TypeError(f"pipeline decorates a callable, got {fn!r}")
        if is_async_callable(fn):
            achain = functools.partial(self._achain, fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await achain(*args, **kwargs)

            async_wrapper.pipeline = self  # type: ignore[attr-defined]
            return async_wrapper
        if self._chain is None:
            raise self._sync_refused()
        chain = functools.partial(self._chain, fn)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return chain(*args, **kwargs)

        wrapper.pipeline = self  # type: ignore[attr-defined]
        return wrapper
