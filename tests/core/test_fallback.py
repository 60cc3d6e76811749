"""Fallback: a value or a handler's answer for chosen exceptions, our rejections included."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from sage_resilience.core import (
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitBreakerOpenError,
    Event,
    FakeClock,
    Fallback,
    FallbackStats,
    FallbackUsed,
    RateLimiter,
    RateLimitExceeded,
    RejectedError,
)


def raising(exc: BaseException) -> Any:
    raise exc


async def araising(exc: BaseException) -> Any:
    await asyncio.sleep(0)
    raise exc


async def aok(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


# -- answering -----------------------------------------------------------------------------------


def test_value_replaces_a_handled_exception() -> None:
    """On a handled exception the call answers the value; otherwise the function's result."""
    fb = Fallback(value=[], on=ConnectionError)
    assert fb.call(raising, ConnectionError("down")) == []
    assert fb.call(lambda x: x * 2, 21) == 42
    assert fb.handled == 1


def test_none_is_a_valid_value() -> None:
    """``value=None`` is a value like any other (not "no value")."""
    assert Fallback(value=None).call(raising, ValueError("x")) is None
    assert Fallback(None).call(raising, ValueError("x")) is None


def test_handler_gets_the_exception() -> None:
    """A handler is called with the exception and its answer is returned."""
    seen: list[BaseException] = []
    boom = KeyError("k")

    def handler(exc: Exception) -> str:
        seen.append(exc)
        return f"default for {exc!r}"

    assert Fallback(handler=handler).call(raising, boom) == "default for KeyError('k')"
    assert seen == [boom]


def test_unhandled_exception_passes_through_unchanged() -> None:
    """An exception outside ``on`` propagates, the same object, and is not counted."""
    fb = Fallback(value=0, on=(ConnectionError, TimeoutError))
    boom = ValueError("bad input")
    with pytest.raises(ValueError) as info:
        fb.call(raising, boom)
    assert info.value is boom
    assert fb.handled == 0


def test_handler_errors_propagate_chained_to_the_original() -> None:
    """A handler that raises propagates its own error, with the original as its context."""
    original = ConnectionError("down")

    def handler(exc: Exception) -> None:
        raise RuntimeError("no default either")

    with pytest.raises(RuntimeError) as info:
        Fallback(handler=handler).call(raising, original)
    assert info.value.__context__ is original


async def test_async_value_sync_handler_and_async_handler() -> None:
    """Async calls take a value, a sync handler, or an async handler (awaited)."""
    assert await Fallback(value="v").acall(araising, OSError()) == "v"
    assert (
        await Fallback(handler=lambda e: type(e).__name__).acall(araising, OSError()) == "OSError"
    )

    async def ahandler(exc: Exception) -> str:
        await asyncio.sleep(0)
        return f"async {type(exc).__name__}"

    assert await Fallback(handler=ahandler).acall(araising, OSError()) == "async OSError"
    assert await Fallback(handler=ahandler).acall(aok, 5) == 5


async def test_regression_async_callable_object_and_partial_handlers_are_awaited() -> None:
    """An async handler that is a callable object or a partial is awaited."""
    # Regression: inspect.iscoroutinefunction says no to both, so they were returned unawaited.

    class Handler:
        async def __call__(self, exc: Exception) -> str:
            return "object"

    async def tagged(tag: str, exc: Exception) -> str:
        return tag

    assert await Fallback(handler=Handler()).acall(araising, OSError()) == "object"
    partial = functools.partial(tagged, "partial")
    assert await Fallback(handler=partial).acall(araising, OSError()) == "partial"


def test_async_handler_on_a_sync_call_is_refused() -> None:
    """A sync call cannot await an async handler: TypeError, and nothing is counted."""

    async def ahandler(exc: Exception) -> str:
        return "never"

    fb = Fallback(handler=ahandler)
    with pytest.raises(TypeError, match="async handler"):
        fb.call(raising, OSError())
    assert fb.handled == 0
    assert fb.call(lambda: "fine") == "fine"

    def sync() -> None:
        pass

    with pytest.raises(TypeError, match="async handler"):
        fb(sync)


async def test_lambda_returning_a_coroutine_is_awaited_async_and_refused_sync() -> None:
    """A sync handler returning a coroutine is awaited on async calls, refused on sync ones."""

    async def lookup(exc: Exception) -> str:
        return f"cached after {type(exc).__name__}"

    fb = Fallback(handler=lambda exc: lookup(exc))
    assert await fb.acall(araising, OSError()) == "cached after OSError"
    with pytest.raises(TypeError, match="coroutine"):
        fb.call(raising, OSError())


# -- our rejections: a search degrades to an empty result ---------------------------------------


def test_degrades_to_empty_result_for_every_rejection(clock: FakeClock) -> None:
    """Open breaker, exhausted limiter and full bulkhead all degrade to the fallback value."""
    fb = Fallback(value=[], on=RejectedError)

    def search(query: str) -> list[str]:
        return [query]

    breaker = CircuitBreaker("emb", clock=clock)
    breaker.force_open()
    assert fb.call(breaker.call, search, "q") == []

    limiter = RateLimiter(rate=1, burst=1, clock=clock, max_wait=0.0)
    assert fb.call(limiter.call, search, "q") == ["q"]
    assert fb.call(limiter.call, search, "q") == []

    bulkhead = Bulkhead(1, clock=clock)
    assert bulkhead.try_acquire()
    assert fb.call(bulkhead.call, search, "q") == []
    assert fb.handled == 3


async def test_async_rejections_are_handled_by_class() -> None:
    """Each rejection class can be chosen on its own; the others still propagate."""
    fb = Fallback(value="cached", on=(CircuitBreakerOpenError, RateLimitExceeded))
    assert await fb.acall(araising, CircuitBreakerOpenError("b", 3.0)) == "cached"
    assert await fb.acall(araising, RateLimitExceeded("l", 0.5)) == "cached"
    with pytest.raises(BulkheadFull):
        await fb.acall(araising, BulkheadFull("bh"))


def test_rejection_reaches_the_handler_with_retry_after(clock: FakeClock) -> None:
    """A handler sees the rejection itself, with its ``retry_after``."""
    breaker = CircuitBreaker("emb", clock=clock, recovery_timeout=30.0, failure_threshold=1)
    with pytest.raises(ConnectionError):
        breaker.call(raising, ConnectionError())
    clock.advance(10.0)
    hints: list[float | None] = []

    def handler(exc: Exception) -> list[str]:
        assert isinstance(exc, RejectedError)
        hints.append(exc.retry_after)
        return []

    assert Fallback(handler=handler).call(breaker.call, raising, ConnectionError()) == []
    assert hints == [pytest.approx(20.0)]


# -- what is never handled -----------------------------------------------------------------------


@pytest.mark.looptime
async def test_cancellation_is_never_handled() -> None:
    """A cancelled call stays cancelled, whatever ``on`` says."""
    fb = Fallback(value="no", on=BaseException)
    task = asyncio.create_task(fb.acall(asyncio.sleep, 10.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fb.handled == 0


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1), GeneratorExit()])
def test_interrupts_are_never_handled(exc: BaseException) -> None:
    """KeyboardInterrupt, SystemExit and friends propagate even with ``on=BaseException``."""
    fb = Fallback(value="no", on=BaseException)
    with pytest.raises(type(exc)):
        fb.call(raising, exc)
    assert fb.handled == 0


def test_on_base_exception_means_every_exception() -> None:
    """``on=BaseException`` handles every ``Exception``."""
    assert Fallback(value=1, on=BaseException).call(raising, LookupError()) == 1


# -- decorator, telemetry, stats -----------------------------------------------------------------


async def test_decorator_sync_and_async() -> None:
    """The decorator wraps sync and async functions, keeping their metadata."""
    fb = Fallback(value="fallback", on=ConnectionError)

    @fb
    def get(key: str) -> str:
        """Get."""
        raise ConnectionError(key)

    @fb
    async def aget(key: str) -> str:
        """Async get."""
        return key

    assert get("k") == "fallback" and get.__doc__ == "Get."
    assert await aget("k") == "k" and aget.__name__ == "aget"
    assert get.policy is fb  # type: ignore[attr-defined]


def test_regression_event_time_comes_from_the_clock(clock: FakeClock) -> None:
    """Each answer emits FallbackUsed stamped with the clock's time (it was 0.0)."""
    events: list[Event] = []
    fb = Fallback(value=0, name="fb", clock=clock, listeners=[events.append])
    clock.advance(5.0)
    fb.call(raising, ConnectionError())
    assert events == [FallbackUsed(policy="fb", time=1005.0, exception="ConnectionError")]


def test_stats_count_answers() -> None:
    """stats() counts the answers given."""
    fb = Fallback(value=0, name="fb")
    for _ in range(3):
        fb.call(raising, OSError())
    fb.call(lambda: 1)
    assert fb.stats() == FallbackStats(name="fb", handled=3)


# -- construction --------------------------------------------------------------------------------


def test_exactly_one_of_value_or_handler() -> None:
    """Neither or both of ``value`` and ``handler`` is a ValueError naming them."""
    with pytest.raises(ValueError, match="value or handler"):
        Fallback()
    with pytest.raises(ValueError, match="value or handler"):
        Fallback(value=1, handler=lambda e: 2)


def test_bad_handler_on_and_name_are_named() -> None:
    """A non-callable handler, bad ``on`` classes and an empty name are refused by name."""
    with pytest.raises(TypeError, match="handler"):
        Fallback(handler=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on"):
        Fallback(value=1, on=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on"):
        Fallback(value=1, on=())
    with pytest.raises(ValueError, match="name"):
        Fallback(value=1, name="")


@pytest.mark.parametrize("cls", [asyncio.CancelledError, KeyboardInterrupt, SystemExit])
def test_on_naming_a_never_handled_class_is_refused(cls: type[BaseException]) -> None:
    """``on`` naming cancellation or an interrupt is a ValueError: it could never apply."""
    with pytest.raises(ValueError, match=f"on names {cls.__name__}"):
        Fallback(value=1, on=(ConnectionError, cls))
