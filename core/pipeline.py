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

**The fused path (async).** Each layer of the async chain is a coroutine frame, paid for on
every call even when no policy has anything to do. So when the policies are core policies in the
default order (an optional :class:`~.fallback.Fallback` first, then any of rate limiter,
bulkhead, retry, circuit breaker and timeout, in that order, each at most once: no hedge, no
policy of another kind, no subclass overriding ``acall``), ``acall`` and the async decorator run
one coroutine that does the chain's work while every policy is in its happy state, and hands the
call to the chain at the first layer whose policy is not:

* the limiter's token is taken with its non-waiting step; without a token at once (none there,
  or callers queued) the call goes on as ``limiter.acall`` and the chain inside it;
* the bulkhead's slot likewise (none free: ``bulkhead.acall`` and inward, the token kept); once
  the slot is held, a ``finally`` releases it exactly once, whatever happens (cancellation too);
* a retry off its plain path (a deadline, a result check, listeners) runs the rest as
  ``retry.acall``; on it, the first attempt runs inline:
* a breaker off its lock-free path (open, half-open, timing calls, listeners) runs that attempt
  as ``breaker.acall``; on it, the attempt awaits ``fn`` under the timeout's scope with the
  :class:`~.errors.ResilienceTimeoutError` translation of :meth:`.Timeout.acall`, and its outcome
  is recorded as the breaker's lock-free path records it (``on_exception`` with the permit for
  an exception);
* a first attempt that raises is handed, with its exception, to the retry's driver, which makes
  the further attempts through the inner chain (breaker, timeout) while the outer token and
  slot stay held;
* a fallback stays outermost: ``fallback.acall`` runs around the fused coroutine.

So every step, count and event comes in the chain's order, and the tests compare the two through
Hypothesis. The fused path uses of each policy these private hooks and nothing else, and each
policy's own ``acall`` is written with the same steps: the limiter's ``_take_now()`` (one token
or ``False``; never waits, raises or emits), the bulkhead's ``_take_now()`` and ``release()``, the
retry's ``_plain`` flag, ``_first_attempt_ok()`` and ``_arun(fn, args, kwargs, first_exc)``,
the breaker's ``_fast_gen`` (a permit ``>= 0`` while its lock-free path is on), ``on_exception``
and ``_fast_success()``, the timeout's ``seconds``, ``_deadlines`` and ``_expired()``. A
subclass that overrides ``acall`` or a hook that repeats ``acall``'s inline steps
(``_first_attempt_ok``, ``_fast_success``) is not fused. ``acall`` makes the fused coroutine
function per call (a closure over ``fn``); the decorator makes it once. The sync chain has no
fused path: it meets its budget as it is.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from ._callables import Policy, decorate, is_async_callable
from ._deadlines import release as release_deadline
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


_FUSED_KINDS: tuple[tuple[type, tuple[str, ...]], ...] = (
    (RateLimiter, ("acall",)),
    (Bulkhead, ("acall",)),
    (Retry, ("acall", "_first_attempt_ok")),
    (CircuitBreaker, ("acall", "_fast_success")),
    (Timeout, ("acall",)),
)
"""The kinds the fused path stands in for, in their order, with the methods a subclass must not
override for it to be used: ``acall``, and the hooks that repeat what ``acall`` does inline (the
other hooks are what ``acall`` itself calls, so an override applies to both alike)."""

_Fused = Callable[..., Coroutine[Any, Any, Any]]
_Fuser = Callable[[Callable[..., Awaitable[Any]]], _Fused]


def _fused_kind(policy: Policy) -> int:
    """The index of ``policy``'s kind in :data:`_FUSED_KINDS`, or -1 if it cannot be fused."""
    for i, (kind, methods) in enumerate(_FUSED_KINDS):
        if isinstance(policy, kind):
            cls = type(policy)
            if all(getattr(cls, m) is getattr(kind, m) for m in methods):
                return i
            return -1
    return -1


def _fuser(policies: tuple[Policy, ...]) -> _Fuser | None:
    """``fuse(fn)``, making the fused coroutine function for ``fn`` (see the module docstring);
    ``None`` when the policies do not have a shape it handles."""
    head = policies[0]
    fallback = head if isinstance(head, Fallback) and type(head).acall is Fallback.acall else None
    inner = policies[1:] if fallback is not None else policies
    kinds = [_fused_kind(p) for p in inner]
    # Known kinds only, in the default order, each at most once.
    if not inner or kinds[0] < 0 or any(a >= b for a, b in itertools.pairwise(kinds)):
        return None

    def chain_from(policy: Policy | None) -> Callable[..., Awaitable[Any]] | None:
        """The chain from ``policy`` inward, ``fn`` not bound: where the fused path hands over."""
        if policy is None:
            return None
        i = inner.index(policy)
        return functools.partial(policy.acall, *(p.acall for p in inner[i + 1 :]))

    limiter = next((p for p in inner if isinstance(p, RateLimiter)), None)
    bulkhead = next((p for p in inner if isinstance(p, Bulkhead)), None)
    retry = next((p for p in inner if isinstance(p, Retry)), None)
    breaker = next((p for p in inner if isinstance(p, CircuitBreaker)), None)
    timeout = next((p for p in inner if isinstance(p, Timeout)), None)
    take_token = None if limiter is None else limiter._take_now
    take_slot = None if bulkhead is None else bulkhead._take_now
    release = None if bulkhead is None else bulkhead.release
    from_limiter = chain_from(limiter)
    from_bulkhead = chain_from(bulkhead)
    from_retry = chain_from(retry)
    from_breaker = chain_from(breaker)
    # What the retry runs for each further attempt: the chain inside it (None: ``fn`` itself).
    inside_retry = from_breaker or chain_from(timeout)

    def fuse(fn: Callable[..., Awaitable[Any]]) -> _Fused:
        async def fused(*args: Any, **kwargs: Any) -> Any:
            if take_token is not None and not take_token():
                assert from_limiter is not None
                return await from_limiter(fn, *args, **kwargs)
            if take_slot is not None and not take_slot():
                assert from_bulkhead is not None
                return await from_bulkhead(fn, *args, **kwargs)
            try:
                if retry is not None and not retry._plain:
                    assert from_retry is not None
                    return await from_retry(fn, *args, **kwargs)
                gen = -1 if breaker is None else breaker._fast_gen
                try:
                    if breaker is not None and gen < 0:
                        assert from_breaker is not None
                        result = await from_breaker(fn, *args, **kwargs)
                    elif timeout is None:
                        result = await fn(*args, **kwargs)
                    else:
                        # As Timeout.acall.
                        entry = timeout._deadlines.arm(timeout.seconds)
                        scope: asyncio.Timeout = entry[1]
                        try:
                            async with scope:
                                result = await fn(*args, **kwargs)
                        except TimeoutError as exc:
                            if scope.expired():
                                raise timeout._expired() from exc
                            raise
                        finally:
                            release_deadline(entry)
                except BaseException as exc:
                    if gen >= 0 and breaker is not None:
                        breaker.on_exception(gen, exc)
                    if retry is None:
                        raise
                    first = exc
                else:
                    if gen >= 0 and breaker is not None:
                        breaker._fast_success()
                    if retry is not None:
                        retry._first_attempt_ok()
                    return result
                # As Retry.acall: the driver runs outside the handler, and drops the exception.
                try:
                    if inside_retry is None:
                        return await retry._arun(fn, args, kwargs, first)
                    return await retry._arun(inside_retry, (fn, *args), kwargs, first)
                finally:
                    del first
            finally:
                if release is not None:
                    release()

        if fallback is None:
            return fused
        fallback_acall = fallback.acall

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            return await fallback_acall(fused, *args, **kwargs)

        return guarded

    return fuse


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

    __slots__ = ("_achain", "_chain", "_fuse", "_policies", "name")

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
        self._fuse: _Fuser | None = _fuser(self._policies)

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
        fuse = self._fuse
        if fuse is None:
            return await self._achain(fn, *args, **kwargs)  # type: ignore[no-any-return]
        return await fuse(fn)(*args, **kwargs)  # type: ignore[no-any-return]

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async); the wrapper exposes the pipeline as ``.pipeline``.

        It behaves as the policies' own decorators stacked by hand, outermost on top.
        """
        if not callable(fn):
            raise TypeError(f"pipeline decorates a callable, got {fn!r}")
        if is_async_callable(fn):
            if self._fuse is not None:
                fused = functools.wraps(fn)(self._fuse(fn))
                fused.pipeline = self  # type: ignore[attr-defined]
                return fused
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
