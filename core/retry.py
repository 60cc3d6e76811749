"""Retry: one decision core, a sync and an async driver, three ways to use it.

The decision core (:meth:`Retry._decide`) looks at one failed attempt and answers either "sleep
``s`` seconds, then attempt again" or "stop" (with the reason). It never sleeps or calls anything.
Two drivers run it: :meth:`Retry.call` sleeps with ``clock.sleep`` and :meth:`Retry.acall` with
``await clock.asleep``; that is their only difference. The decorator (``@retry(...)`` or
``@Retry(...)``), ``call``/``acall`` and the attempt iterator (``for attempt in policy:`` /
``async for``) all go through them.

What is never retried, whatever the config: a ``BaseException`` that is not an ``Exception``
(cancellation, ``KeyboardInterrupt``, ``SystemExit``). By default our own rejections
(:class:`~.errors.RejectedError`: breaker open, rate limited, ...) are not retried either: a
rejection means the call was not made, and retrying it at once only adds load. Name a rejection
class in ``retryable_exceptions`` to retry it anyway. Errors classified as permanent
(:class:`~.errors.PermanentError` or a registered classifier) are not retried unless
``retry_condition`` says otherwise.

A zero delay calls no sleep at all. When attempts run out, the last exception is re-raised
unchanged (the same object, with its traceback), after ``on_exhausted``.
"""

from __future__ import annotations

import functools
import logging
import random as _random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

from ._callables import is_async_callable
from ._gil import GIL_ENABLED
from ._nesting import RETRYING
from ._validate import (
    check_callable,
    check_exceptions,
    check_int,
    check_optional_float,
)
from .backoff import Backoff, Jitter, RetryStrategy
from .classify import FailureKind, classify
from .clock import SYSTEM_CLOCK, Clock, RandomSource, resolve_clock
from .errors import OutcomeUnknownError, RejectedError
from .events import Listener, Observable, RetryAttempted, RetryGaveUp, RetrySucceeded, emit

_log = logging.getLogger("sage_resilience")

__all__ = ["AttemptContext", "Retry", "RetryConfig", "RetryStats", "retry"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    """How a :class:`Retry` decides. Frozen; derive variants with ``dataclasses.replace``.

    Attributes:
        max_attempts: total attempts, the first included (>= 1).
        initial_delay: the first delay in seconds (>= 0).
        max_delay: the cap on every delay (>= initial_delay).
        exponential_base: growth factor of EXPONENTIAL (>= 1).
        jitter: a :class:`Jitter`; ``True`` is the seed's [0.5, 1.0] multiplier (EQUAL).
        strategy: a :class:`RetryStrategy`.
        retryable_exceptions: only these are retried (default: every ``Exception``).
        non_retryable_exceptions: never retried, even when also retryable.
        retry_condition: ``(exc) -> bool``; when given, it has the last word on retryable errors.
        before_retry: ``(attempt, exc)`` called before sleeping for the next attempt; ``attempt``
            is the number of the attempt that just failed, ``exc`` is ``None`` for a result retry.
        on_exhausted: ``(exc)`` called once when attempts or the deadline run out (``exc`` is
            ``None`` when the last outcome was a result that ``retry_on_result`` rejected).
        retry_on_result: ``(result) -> bool``; ``True`` retries. When attempts run out the last
            result is returned.
        deadline: total seconds for the whole call, attempts and sleeps included; no sleep that
            would end after it, no attempt started after it.
        clock: time source (default the system's monotonic clock, or the clock set by
            :func:`~.clock.use_clock` when the policy is built).
        random: ``() -> float`` in [0, 1) for jitter (default ``random.random``).
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 60.0
    exponential_base: float = 2.0
    jitter: Jitter | bool = True
    strategy: RetryStrategy = RetryStrategy.EXPONENTIAL
    retryable_exceptions: tuple[type[BaseException], ...] = (Exception,)
    non_retryable_exceptions: tuple[type[BaseException], ...] = ()
    retry_condition: Callable[[BaseException], bool] | None = None
    before_retry: Callable[[int, BaseException | None], object] | None = field(
        default=None, compare=False
    )
    on_exhausted: Callable[[BaseException | None], object] | None = field(
        default=None, compare=False
    )
    retry_on_result: Callable[[Any], bool] | None = None
    deadline: float | None = None
    clock: Clock = field(default=SYSTEM_CLOCK, compare=False)
    random: RandomSource = field(default=_random.random, compare=False, repr=False)
    backoff: Backoff = field(init=False, compare=False, repr=False)
    _explicit_rejections: tuple[type[BaseException], ...] = field(
        init=False, compare=False, repr=False
    )
    _retry_everything: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_int("max_attempts", self.max_attempts, minimum=1)
        backoff = Backoff(
            strategy=self.strategy,
            initial_delay=self.initial_delay,
            max_delay=self.max_delay,
            exponential_base=self.exponential_base,
            jitter=Jitter.coerce(self.jitter),
        )
        setattr_ = object.__setattr__
        setattr_(self, "backoff", backoff)
        setattr_(self, "strategy", backoff.strategy)
        setattr_(self, "jitter", backoff.jitter)
        setattr_(self, "initial_delay", backoff.initial_delay)
        setattr_(self, "max_delay", backoff.max_delay)
        setattr_(self, "exponential_base", backoff.exponential_base)
        retryable = check_exceptions("retryable_exceptions", self.retryable_exceptions)
        setattr_(self, "retryable_exceptions", retryable)
        setattr_(
            self,
            "non_retryable_exceptions",
            check_exceptions("non_retryable_exceptions", self.non_retryable_exceptions),
        )
        setattr_(self, "_retry_everything", Exception in retryable or BaseException in retryable)
        setattr_(
            self,
            "_explicit_rejections",
            tuple(c for c in retryable if issubclass(c, RejectedError)),
        )
        for name in ("retry_condition", "before_retry", "on_exhausted", "retry_on_result"):
            check_callable(name, getattr(self, name))
        setattr_(self, "deadline", check_optional_float("deadline", self.deadline, positive=True))
        clock = self.clock
        if not all(callable(getattr(clock, m, None)) for m in ("now", "sleep", "asleep")):
            raise TypeError(f"clock must provide now(), sleep() and asleep(), got {clock!r}")
        if not callable(self.random):
            raise TypeError(f"random must be a zero-argument callable, got {self.random!r}")


@dataclass(frozen=True, slots=True)
class RetryStats:
    """Counts of one retry policy since it was created (or :meth:`Retry.reset_stats`).

    ``calls`` = ``successes`` + ``failures`` + ``aborted``; ``attempts`` = ``calls`` +
    ``retries``; ``gave_up`` counts the failures that ran out of attempts or deadline (the rest of
    ``failures`` were not retryable); ``aborted`` counts calls ended by cancellation,
    ``KeyboardInterrupt`` or ``SystemExit``, which are never failures.
    """

    name: str
    calls: int
    attempts: int
    retries: int
    successes: int
    failures: int
    gave_up: int
    aborted: int = 0


def _run_hook(name: str, hook: Callable[..., object], *args: Any) -> None:
    """Call a user hook; one that raises is logged and never replaces the caller's outcome."""
    try:
        hook(*args)
    except Exception:
        _log.exception("retry %r: hook %r failed", name, hook)


def _bind_default_clock(config: RetryConfig) -> RetryConfig:
    """A config on the system clock takes the default clock (see :func:`~.clock.use_clock`)."""
    clock = resolve_clock(config.clock)
    return config if clock is config.clock else replace(config, clock=clock)


_mark_retrying = RETRYING.set
_unmark_retrying = RETRYING.reset

# Stop codes of the decision core (negative, so any delay >= 0 means "go again").
_NOT_RETRYABLE: Final = -1.0
_EXHAUSTED: Final = -2.0
_DEADLINE: Final = -3.0
_HINT_TOO_LONG: Final = -4.0
_ABORTED: Final = -5.0
_STOP_REASONS: Final = {
    _ABORTED: "aborted",
    _NOT_RETRYABLE: "not_retryable",
    _EXHAUSTED: "attempts_exhausted",
    _DEADLINE: "deadline",
    _HINT_TOO_LONG: "retry_after_beyond_max_delay",
}
_ABORT = FailureKind.ABORT
_REJECTED = FailureKind.REJECTED
_PERMANENT = FailureKind.PERMANENT
_THROTTLED = FailureKind.THROTTLED


class Retry(Observable):
    """A retry policy: decorator, ``call``/``acall`` runner and attempt iterator.

    Args:
        config: a :class:`RetryConfig` (default: the seed's defaults).
        name: shown in events and stats.
        listeners: callables receiving this policy's events.
        **overrides: fields of :class:`RetryConfig` replacing those of ``config``.
    """

    __slots__ = (
        "_first_ok",
        "_lock",
        "_plain",
        "_slow_aborted",
        "_slow_attempts",
        "_slow_calls",
        "_slow_gave_up",
        "_slow_successes",
        "config",
        "name",
    )

    def __init__(
        self,
        config: RetryConfig | None = None,
        *,
        name: str = "retry",
        listeners: tuple[Listener, ...] | list[Listener] = (),
        **overrides: Any,
    ) -> None:
        if config is None:
            config = RetryConfig(**overrides)
        elif not isinstance(config, RetryConfig):
            raise TypeError(f"config must be a RetryConfig, got {config!r}")
        elif overrides:
            config = replace(config, **overrides)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        config = _bind_default_clock(config)
        self.name = name
        self.config = config
        self._lock = threading.Lock()
        self._listeners: tuple[Listener, ...] = ()
        self._plain = self._is_plain(config)
        for listener in listeners:
            self.add_listener(listener)
        self.reset_stats()

    # -- configuration -------------------------------------------------------------------------

    def _is_plain(self, config: RetryConfig) -> bool:
        """Whether a call may take the lock-free first attempt: no deadline, no result check,
        nobody listening (listeners hear of every call).

        First-attempt successes are counted with a plain increment, which the GIL never
        interrupts; a free-threaded build always takes the locked path.
        """
        return (
            GIL_ENABLED
            and config.deadline is None
            and config.retry_on_result is None
            and not self._listeners
        )

    def _listeners_changed(self) -> None:
        self._plain = self._is_plain(self.config)

    def update_config(self, config: RetryConfig) -> None:
        """Swap in a new config (the adaptive controllers do this).

        A call that is already retrying finishes with the config it started retrying with; a
        call whose first attempt is still running reads the config only if that attempt fails
        (the first attempt reads nothing, to stay cheap), so it retries under the new one.
        """
        if not isinstance(config, RetryConfig):
            raise TypeError(f"config must be a RetryConfig, got {config!r}")
        config = _bind_default_clock(config)
        self.config = config
        self._plain = self._is_plain(config)

    def reset_stats(self) -> None:
        """Zero the counters."""
        with self._lock:
            self._first_ok = 0
            self._slow_calls = 0
            self._slow_attempts = 0
            self._slow_successes = 0
            self._slow_gave_up = 0
            self._slow_aborted = 0

    def stats(self) -> RetryStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            first_ok = self._first_ok
            calls = first_ok + self._slow_calls
            successes = first_ok + self._slow_successes
            attempts = first_ok + self._slow_attempts
            return RetryStats(
                name=self.name,
                calls=calls,
                attempts=attempts,
                retries=attempts - calls,
                successes=successes,
                failures=calls - successes - self._slow_aborted,
                gave_up=self._slow_gave_up,
                aborted=self._slow_aborted,
            )

    def __repr__(self) -> str:
        return f"Retry(name={self.name!r}, config={self.config!r})"

    # -- the decision core ---------------------------------------------------------------------

    def _decide(
        self,
        config: RetryConfig,
        attempt: int,
        previous_delay: float,
        start: float,
        exc: BaseException | None,
    ) -> float:
        """After failed attempt number ``attempt``: the delay before the next one (>= 0), or a
        stop code (< 0).

        ``exc`` is ``None`` when the attempt returned a result that ``retry_on_result``
        rejected; ``previous_delay`` is the delay used before this attempt (0.0 for the first);
        ``start`` is when the call began (read only with a deadline). Pure apart from the random
        draw and, with a deadline, one clock read.
        """
        kind: FailureKind | None = None
        if exc is not None:
            kind = classify(exc)
            if kind is _ABORT:
                return _ABORTED
            if kind is _REJECTED and not isinstance(exc, config._explicit_rejections):
                return _NOT_RETRYABLE
            if config.non_retryable_exceptions and isinstance(exc, config.non_retryable_exceptions):
                return _NOT_RETRYABLE
            if not config._retry_everything and not isinstance(exc, config.retryable_exceptions):
                return _NOT_RETRYABLE
            if config.retry_condition is not None:
                try:
                    retryable = config.retry_condition(exc)
                except Exception:
                    # A broken predicate must not replace the caller's exception.
                    _log.exception("retry %r: retry_condition failed on %r", self.name, exc)
                    return _NOT_RETRYABLE
                if not retryable:
                    return _NOT_RETRYABLE
            elif kind is _PERMANENT or isinstance(exc, OutcomeUnknownError):
                return _NOT_RETRYABLE
        if attempt >= config.max_attempts:
            return _EXHAUSTED
        delay = config.backoff.delay(attempt, previous_delay, config.random)
        if kind is _THROTTLED:
            # The dependency's hint is a floor on the wait, within max_delay.
            hint = getattr(exc, "retry_after", None)
            if isinstance(hint, int | float) and hint > delay:
                if hint > config.max_delay:
                    return _HINT_TOO_LONG
                delay = float(hint)
        if config.deadline is not None and config.clock.now() - start + delay >= config.deadline:
            return _DEADLINE
        return delay

    # -- bookkeeping shared by the drivers -----------------------------------------------------

    def _start(self, config: RetryConfig) -> float:
        # The start matters for a deadline (then this runs before the first attempt, so the
        # whole call counts) and for the elapsed time of events; otherwise skip the clock read.
        if config.deadline is not None or self._listeners:
            return config.clock.now()
        return 0.0

    def _will_retry(
        self, config: RetryConfig, attempt: int, exc: BaseException | None, delay: float
    ) -> None:
        """Callbacks and events before sleeping (the drivers call it only when needed)."""
        if config.before_retry is not None:
            _run_hook(self.name, config.before_retry, attempt, exc)
        if self._listeners:
            emit(
                self._listeners,
                RetryAttempted(
                    policy=self.name,
                    time=config.clock.now(),
                    attempt=attempt,
                    delay=delay,
                    exception=None if exc is None else type(exc).__name__,
                ),
            )

    def _succeeded(self, config: RetryConfig, attempts: int, start: float) -> None:
        lock = self._lock
        lock.acquire()
        self._slow_calls += 1
        self._slow_attempts += attempts
        self._slow_successes += 1
        lock.release()
        if self._listeners:
            now = config.clock.now()
            emit(
                self._listeners,
                RetrySucceeded(policy=self.name, time=now, attempts=attempts, elapsed=now - start),
            )

    def _give_up(
        self, config: RetryConfig, attempts: int, exc: BaseException | None, code: float
    ) -> None:
        exhausted = code not in (_NOT_RETRYABLE, _ABORTED)
        lock = self._lock
        lock.acquire()
        self._slow_calls += 1
        self._slow_attempts += attempts
        if exhausted:
            self._slow_gave_up += 1
        elif code == _ABORTED:
            self._slow_aborted += 1
        lock.release()
        if self._listeners:
            emit(
                self._listeners,
                RetryGaveUp(
                    policy=self.name,
                    time=config.clock.now(),
                    attempts=attempts,
                    reason=_STOP_REASONS[code],
                    exception=None if exc is None else type(exc).__name__,
                ),
            )
        if exhausted and config.on_exhausted is not None:
            _run_hook(self.name, config.on_exhausted, exc)

    def _past_deadline(self, config: RetryConfig, start: float) -> bool:
        return config.deadline is not None and config.clock.now() - start >= config.deadline

    def _first_attempt_ok(self) -> None:
        """Count a call whose first attempt succeeded on the plain path (``_plain`` was true).

        What the drivers and the decorator do inline (a call here would cost them a frame); the
        fused path of :class:`~.pipeline.Pipeline` calls it, then hands a failed first attempt
        to :meth:`_arun`, as :meth:`acall` does.
        """
        self._first_ok += 1

    # -- sync driver ---------------------------------------------------------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` under this policy, sleeping with ``clock.sleep``."""
        if self._plain:
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                first = exc
            else:
                self._first_ok += 1
                return result
            # Retry outside the handler, or every later attempt would run "during handling" of
            # this exception (its sys.exc_info() and the implicit __context__ of its errors).
            # Drop the local afterwards: the exception's traceback holds this frame, and a
            # frame -> exception -> traceback -> frame cycle is garbage for the cycle collector.
            try:
                return self._run(fn, args, kwargs, first)
            finally:
                del first
        return self._run(fn, args, kwargs, None)

    def _run(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: BaseException | None,
    ) -> T:
        """The sync driver; ``exc`` is the first attempt's exception if it already ran."""
        config = self.config
        start = self._start(config)
        check = config.retry_on_result
        result: Any = None
        if exc is None:
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                exc = e
        attempt = 1
        delay = 0.0
        while True:
            if exc is None and (check is None or not check(result)):
                self._succeeded(config, attempt, start)
                return cast(T, result)
            delay = self._decide(config, attempt, delay, start, exc)
            if delay < 0.0:
                self._give_up(config, attempt, exc, delay)
                if exc is None:
                    return cast(T, result)
                try:
                    raise exc
                finally:
                    # Break the exc -> traceback -> this frame -> exc cycle.
                    exc = None
            if config.before_retry is not None or self._listeners:
                self._will_retry(config, attempt, exc, delay)
            if delay > 0.0:
                config.clock.sleep(delay)
                if self._past_deadline(config, start):
                    self._give_up(config, attempt, exc, _DEADLINE)
                    if exc is None:
                        return cast(T, result)
                    try:
                        raise exc
                    finally:
                        # Break the exc -> traceback -> this frame -> exc cycle.
                        exc = None
            attempt += 1
            exc = None
            # A repeated attempt runs marked as "inside a retrying call": retry policies nested
            # in it (the adaptive one) make a single attempt instead of multiplying.
            token = _mark_retrying(True)
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                exc = e
            finally:
                _unmark_retrying(token)

    # -- async driver: the sync one with ``await`` ---------------------------------------------

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under this policy, sleeping with ``clock.asleep``."""
        if self._plain:
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                first = exc
            else:
                self._first_ok += 1
                return result
            try:
                return await self._arun(fn, args, kwargs, first)
            finally:
                del first
        return await self._arun(fn, args, kwargs, None)

    async def _arun(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: BaseException | None,
    ) -> T:
        config = self.config
        start = self._start(config)
        check = config.retry_on_result
        result: Any = None
        if exc is None:
            try:
                result = await fn(*args, **kwargs)
            except BaseException as e:
                exc = e
        attempt = 1
        delay = 0.0
        while True:
            if exc is None and (check is None or not check(result)):
                self._succeeded(config, attempt, start)
                return cast(T, result)
            delay = self._decide(config, attempt, delay, start, exc)
            if delay < 0.0:
                self._give_up(config, attempt, exc, delay)
                if exc is None:
                    return cast(T, result)
                try:
                    raise exc
                finally:
                    # Break the exc -> traceback -> this frame -> exc cycle.
                    exc = None
            if config.before_retry is not None or self._listeners:
                self._will_retry(config, attempt, exc, delay)
            if delay > 0.0:
                await config.clock.asleep(delay)
                if self._past_deadline(config, start):
                    self._give_up(config, attempt, exc, _DEADLINE)
                    if exc is None:
                        return cast(T, result)
                    try:
                        raise exc
                    finally:
                        # Break the exc -> traceback -> this frame -> exc cycle.
                        exc = None
            attempt += 1
            exc = None
            # A repeated attempt runs marked as "inside a retrying call": retry policies nested
            # in it (the adaptive one) make a single attempt instead of multiplying.
            token = _mark_retrying(True)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as e:
                exc = e
            finally:
                _unmark_retrying(token)

    # -- decorator -----------------------------------------------------------------------------

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn``; a coroutine function gets the async driver. The wrapper exposes the
        policy as ``.retry``."""
        if not callable(fn):
            raise TypeError(f"retry decorates a callable, got {fn!r}")
        policy = self
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                if policy._plain:
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        first = exc
                    else:
                        policy._first_ok += 1
                        return result
                    try:
                        return await policy._arun(fn, args, kwargs, first)
                    finally:
                        del first
                return await policy._arun(fn, args, kwargs, None)

            async_wrapper.retry = policy  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            if policy._plain:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    first = exc
                else:
                    policy._first_ok += 1
                    return result
                try:
                    return policy._run(fn, args, kwargs, first)
                finally:
                    del first
            return policy._run(fn, args, kwargs, None)

        wrapper.retry = policy  # type: ignore[attr-defined]
        return wrapper

    # -- attempt iterators ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[AttemptContext]:
        """Retry a block: ``for attempt in policy: with attempt: ...``."""
        state = _BlockState(self)
        while True:
            attempt = AttemptContext(state)
            yield attempt
            delay = attempt._next_delay()
            if delay is None:
                return
            if delay > 0.0:
                state.config.clock.sleep(delay)
                if state.deadline_passed(attempt._exc):
                    raise_ = attempt._exc
                    if raise_ is not None:
                        raise raise_
                    return
            state.attempt += 1

    async def __aiter__(self) -> AsyncIterator[AttemptContext]:
        """Retry a block in async code: ``async for attempt in policy: with attempt: ...``."""
        state = _BlockState(self)
        while True:
            attempt = AttemptContext(state)
            yield attempt
            delay = attempt._next_delay()
            if delay is None:
                return
            if delay > 0.0:
                await state.config.clock.asleep(delay)
                if state.deadline_passed(attempt._exc):
                    raise_ = attempt._exc
                    if raise_ is not None:
                        raise raise_
                    return
            state.attempt += 1


class _BlockState:
    """What an attempt iterator remembers between attempts (the drivers keep it in locals)."""

    __slots__ = ("attempt", "config", "policy", "previous_delay", "start")

    def __init__(self, policy: Retry) -> None:
        self.policy = policy
        self.config = policy.config
        self.start = policy._start(self.config)
        self.attempt = 1
        self.previous_delay = 0.0

    def decide(self, exc: BaseException | None) -> float | None:
        """The delay before the next attempt, or ``None`` after giving up."""
        policy, config = self.policy, self.config
        delay = policy._decide(config, self.attempt, self.previous_delay, self.start, exc)
        if delay < 0.0:
            policy._give_up(config, self.attempt, exc, delay)
            return None
        if config.before_retry is not None or policy._listeners:
            policy._will_retry(config, self.attempt, exc, delay)
        self.previous_delay = delay
        return delay

    def deadline_passed(self, exc: BaseException | None) -> bool:
        if self.policy._past_deadline(self.config, self.start):
            self.policy._give_up(self.config, self.attempt, exc, _DEADLINE)
            return True
        return False


class AttemptContext:
    """One attempt of an attempt iterator; use it as ``with attempt:``.

    A retryable exception raised in the block is swallowed and the iterator sleeps and yields the
    next attempt; any other exception, or the last one, propagates unchanged out of the ``with``
    (and so out of the loop). Call :meth:`set_result` to have ``retry_on_result`` judge a value;
    when attempts run out on a rejected result the loop simply ends and :attr:`result` holds it.
    """

    __slots__ = ("_delay", "_exc", "_has_result", "_result", "_state", "number")

    def __init__(self, state: _BlockState) -> None:
        self._state = state
        self.number = state.attempt
        self._exc: BaseException | None = None
        self._delay: float | None = None
        self._has_result = False
        self._result: Any = None

    def set_result(self, value: Any) -> None:
        """Report the block's result (judged by ``retry_on_result``)."""
        self._has_result = True
        self._result = value

    @property
    def result(self) -> Any:
        """The value given to :meth:`set_result`, if any."""
        return self._result

    def __enter__(self) -> AttemptContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            return False
        # Decide here, so an exception that is not retried propagates untouched.
        delay = self._state.decide(exc)
        if delay is None:
            return False
        self._exc = exc
        self._delay = delay
        return True

    def _next_delay(self) -> float | None:
        """After the block: the delay before the next attempt, or ``None`` when done."""
        if self._delay is not None:
            return self._delay
        state = self._state
        check = state.config.retry_on_result
        if self._has_result and check is not None and check(self._result):
            return state.decide(None)
        state.policy._succeeded(state.config, state.attempt, state.start)
        return None


def retry(  # noqa: PLR0917 - the seed's positional signature
    max_attempts: int = 3,
    initial_delay: float = 1.0,
    max_delay: float = 60.0,
    exponential_base: float = 2.0,
    jitter: Jitter | bool = True,
    strategy: RetryStrategy = RetryStrategy.EXPONENTIAL,
    retryable_exceptions: tuple[type[BaseException], ...] = (Exception,),
    non_retryable_exceptions: tuple[type[BaseException], ...] = (),
    *,
    config: RetryConfig | None = None,
    name: str = "retry",
    listeners: tuple[Listener, ...] | list[Listener] = (),
    **kwargs: Any,
) -> Retry:
    """The seed's decorator: ``@retry(max_attempts=3, initial_delay=1.0, ...)``.

    Returns a :class:`Retry`, which decorates sync and async functions alike (the wrapper exposes
    it as ``.retry``). With ``config=`` the other arguments are ignored except keyword overrides
    given in ``kwargs`` (any :class:`RetryConfig` field, such as ``clock``, ``random``,
    ``deadline``, ``retry_on_result``).
    """
    if config is None:
        config = RetryConfig(
            max_attempts=max_attempts,
            initial_delay=initial_delay,
            max_delay=max_delay,
            exponential_base=exponential_base,
            jitter=jitter,
            strategy=strategy,
            retryable_exceptions=retryable_exceptions,
            non_retryable_exceptions=non_retryable_exceptions,
            **kwargs,
        )
    elif kwargs:
        config = replace(config, **kwargs)
    return Retry(config, name=name, listeners=listeners)
