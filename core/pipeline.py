"""One way to compose policies: a :class:`Pipeline`, outer to inner.

``Pipeline(fallback, limiter, bulkhead, retry, breaker, timeout)`` runs a call through each
policy in that order: the outermost sees the call first and the result last. Every policy has the
same shape (``call(fn, /, *args, **kwargs)``, ``acall(...)`` and a decorator), so a pipeline is
nothing but nesting: ``pipeline.call(fn, x)`` is ``p1.call(p2.call, p3.call, fn, x)`` with no
allocation per layer, and ``pipeline(fn)`` is ``p1(p2(p3(fn)))``: exactly the decorators stacked
by hand, so the two always behave the same.

The default order, :data:`DEFAULT_ORDER` (outer to inner: fallback, rate limiter, bulkhead,
retry, hedge, circuit breaker, timeout), is the one the tests show to be right:

* each retry attempt goes through the breaker and carries its own timeout, so an attempt that
  times out counts against the breaker and is retried;
* an open breaker or an exhausted limiter refuses with a :class:`~.errors.RejectedError`, which
  the retry does not retry: the call stops at once;
* the limiter and the bulkhead are outside the retry, so retries do not queue behind new calls
  for a second permit;
* the fallback is outermost, so it answers for every failure, rejections included.

:meth:`Pipeline.build` sorts policies into that order by kind; the constructor keeps the order
given.
"""

from __future__ import annotations

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

_ASYNC_ONLY = (Timeout, Hedge)


class Pipeline:
    """Policies composed outer to inner.

    Args:
        *policies: the policies, outermost first (a nested :class:`Pipeline` is flattened).
        name: shown in ``repr`` and the registry status.
    """

    __slots__ = ("_sync_ok", "name", "policies")

    def __init__(self, *policies: Policy | Pipeline, name: str = "pipeline") -> None:
        flat: list[Policy] = []
        for policy in policies:
            if isinstance(policy, Pipeline):
                flat.extend(policy.policies)
            elif isinstance(policy, Policy):
                flat.append(policy)
            else:
                raise TypeError(f"not a policy: {policy!r} (it needs call() and acall())")
        if not flat:
            raise ValueError("a pipeline needs at least one policy")
        if len({id(p) for p in flat}) != len(flat):
            raise ValueError("the same policy object appears twice in the pipeline")
        self.policies: tuple[Policy, ...] = tuple(flat)
        self.name = name
        self._sync_ok = not any(isinstance(p, _ASYNC_ONLY) for p in flat)

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

    def __repr__(self) -> str:
        inner = ", ".join(repr(p) for p in self.policies)
        return f"Pipeline({inner}, name={self.name!r})"

    def _require_sync(self) -> None:
        if not self._sync_ok:
            names = [type(p).__name__ for p in self.policies if isinstance(p, _ASYNC_ONLY)]
            raise TypeError(
                f"pipeline {self.name!r} holds async-only policies ({', '.join(names)}); "
                "a sync call cannot be timed out or hedged (give the retry a deadline)"
            )

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through every policy, outer to inner."""
        self._require_sync()
        policies = self.policies
        if len(policies) == 1:
            return policies[0].call(fn, *args, **kwargs)  # type: ignore[no-any-return]
        calls = [p.call for p in policies[1:]]
        return policies[0].call(*calls, fn, *args, **kwargs)  # type: ignore[no-any-return]

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through every policy, outer to inner."""
        policies = self.policies
        if len(policies) == 1:
            return await policies[0].acall(fn, *args, **kwargs)  # type: ignore[no-any-return]
        acalls = [p.acall for p in policies[1:]]
        return await policies[0].acall(*acalls, fn, *args, **kwargs)  # type: ignore[no-any-return]

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn``: the policies' own decorators stacked, outermost applied last."""
        if not callable(fn):
            raise TypeError(f"pipeline decorates a callable, got {fn!r}")
        if not is_async_callable(fn):
            self._require_sync()
        wrapped: Callable[..., Any] = fn
        for policy in reversed(self.policies):
            wrapped = policy(wrapped)  # type: ignore[operator]
        wrapped.pipeline = self  # type: ignore[attr-defined]
        return wrapped
