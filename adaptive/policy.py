"""``adaptive_policy``: the adaptive pieces composed for one dependency, with defaults that need
no tuning per dependency.

One :class:`AdaptivePolicy` guards one dependency. Outer to inner, a call goes through:

1. **priority admission and an adaptive concurrency limit** (:class:`~.priority.PriorityLimiter`,
   its limit set by Gradient2, Vegas or AIMD from the latency of recent calls): below the limit
   everyone goes at once; at the limit callers wait by priority and the lowest levels are shed
   first (:class:`~sage_resilience.core.ShedError`);
2. optionally, **client-side adaptive throttling** (the SRE formula), refusing a share of calls
   locally while the dependency rejects most of what it gets;
3. **an adaptive rate limit**, dormant until the dependency throttles (429): then a token bucket
   whose rate a CUBIC (botocore's adaptive mode) or AIMD controller drives;
4. **retries at one layer, within a budget**: a call already inside a retrying call (a context
   variable says so) makes one attempt; others retry while the shared retry budget allows, after
   delays scaled to the dependency's latency, honouring retry-after hints, with fewer attempts
   when the recent failure rate says retrying is futile;
5. per attempt, **an adaptive circuit breaker** (trips when the recent failure rate or latency is
   significantly worse than the learned baseline; short, growing open durations) and **an
   adaptive timeout** (a multiple of the recent p99) on async calls.

Controllers run amortised on the calling path, at most once per ``tick`` (0.25 s): whichever
call notices the tick is due reads the statistics and applies the controllers' answers
(``set_limit``, ``set_rate``, the timeout value, the retry settings), each change emitting a
:class:`~.controller.Decision` event, so the Prometheus and OpenTelemetry listeners export the
controllers' values as gauges (``sage_resilience_setting``).
"""

from __future__ import annotations

import asyncio
import functools
import random as _random
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar

from ..core import (
    CircuitBreakerOpenError,
    Clock,
    FailureKind,
    Listener,
    RateLimiter,
    Registry,
    ResilienceTimeoutError,
    ShedError,
    breaker_manager,
    classify,
    is_async_callable,
    resolve_clock,
)
from ..core._validate import check_float, check_int
from ..core.events import Observable, emit
from .breaker import AdaptiveCircuitBreaker
from .budget import (
    BudgetRegistry,
    RetryBudget,
    RetryBudgetConfig,
    budget_for,
    enter_retrying,
    exit_retrying,
    nested_retry,
)
from .controller import Bounds, Decision, Ticker
from .delays import AdaptiveDelays, DelaySnapshot, hint_from
from .limits import AIMDLimit, Gradient2Limit, LimitWindow, VegasLimit
from .priority import Priority, PriorityLimiter, current_priority
from .rate import AIMDRate, CubicRate, RateSample
from .stats import LatencyHistogram, RollingCounts
from .throttle import AdaptiveThrottle, ThrottleSample, should_reject
from .timeouts import AdaptiveTimeout

__all__ = [
    "ADAPTIVE_BUDGET",
    "ADAPTIVE_MAX_WAIT",
    "AIMD_RATE_DEFAULTS",
    "BREAKER_DEFAULTS",
    "GRADIENT2_DEFAULTS",
    "TIMEOUT_DEFAULTS",
    "AdaptiveOptions",
    "AdaptivePolicy",
    "adaptive_policy",
]

P = ParamSpec("P")
T = TypeVar("T")

_TRANSIENT = FailureKind.TRANSIENT
_THROTTLED = FailureKind.THROTTLED


# Defaults chosen in the simulator (sage-resilience bench, every scenario; see the notebooks):
ADAPTIVE_MAX_WAIT: Mapping[Priority, float] = {
    Priority.CRITICAL: 1.0,
    Priority.HIGH: 0.2,
    Priority.NORMAL: 0.1,
    Priority.LOW: 0.05,
    Priority.SHEDDABLE: 0.0,
}
"""Short waits at the concurrency limit: enough to absorb a burst, too short to build a queue
(a long wait only adds latency when demand exceeds capacity, and sheds the same calls later)."""

GRADIENT2_DEFAULTS: Mapping[str, Any] = {"tolerance": 1.0}
"""Gradient2 with no queueing tolerance: 1.5 (Netflix's) let the limit drift far above the
dependency's concurrency in the simulator, and the p99 latency with it."""

AIMD_RATE_DEFAULTS: Mapping[str, Any] = {"decrease": 0.99, "increase": 1.0}
"""On a 429 the rate drops to 99 % of the rate the provider accepted, and probes back at
1 request/s per second: goodput within a few % of the provider's limit with under 2 % of 429s
(CUBIC's 0.7 cut left ~6 % of the limit unused on average)."""

TIMEOUT_DEFAULTS: Mapping[str, Any] = {"rise_half_life": 5.0}
"""The timeout follows a slower dependency with a 5 s half-life instead of at once, so a sudden
latency collapse is cut (and seen by the breaker as slow calls) rather than waited out."""

BREAKER_DEFAULTS: Mapping[str, Any] = {"recovery_timeout": 0.5}
"""The breaker's open duration grows from 0.25 s to at most 0.5 s (not 1 s): during an outage a
trial every half second costs a few calls per second, and a short outage or a flapping
dependency is back in service twice as soon."""

ADAPTIVE_BUDGET = RetryBudgetConfig(ratio=0.2)
"""Retries up to 20 % of requests (plus 1/s): the SRE book's 10 % left a steady 10 % of
transient failures short of retries (1 % of calls lost against 0.1 %)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveOptions:
    """Which adaptive pieces to use, and their few knobs (defaults need no per-dependency tuning).

    Attributes:
        concurrency: the concurrency-limit algorithm (``"gradient2"``, ``"vegas"``, ``"aimd"``)
            or ``None`` for no limit (and no priority shedding).
        initial_limit, min_limit, max_limit: the concurrency limit's start and bounds.
        max_wait: per priority level, how long a call may wait for a slot at the limit
            (overrides :data:`ADAPTIVE_MAX_WAIT` level by level).
        rate: the rate controller for throttled APIs (``"cubic"``, ``"aimd"``) or ``None``.
        rate_max_wait: how long a call may wait for a token once the rate limit is active.
        client_throttle: use client-side adaptive throttling (SRE) as well.
        breaker: use the adaptive circuit breaker.
        retry: retry at all (``max_attempts`` is then adaptive, at most ``max_attempts``).
        max_attempts: the most attempts a call makes (the first included).
        retry_nested: retry even inside another retrying call (default: one layer only).
        hold: how long, in all, a call may wait for its own open breaker's next trial instead
            of failing at once (0: fail fast). While the dependency is down the breaker lets
            one trial through now and then; a held call goes as soon as the breaker closes, so
            a short outage costs its callers latency rather than errors.
        budget: the retry budget's settings (shared by every policy of the same ``dependency``).
        timeout: an adaptive per-attempt timeout for async calls.
        tick: seconds between controller updates.
        limit_options, rate_options, timeout_options: keyword arguments for the limit, rate and
            timeout controllers (over :data:`GRADIENT2_DEFAULTS`, :data:`AIMD_RATE_DEFAULTS`,
            :data:`TIMEOUT_DEFAULTS`).
        breaker_options: keyword arguments for the adaptive breaker (core config fields, over
            :data:`BREAKER_DEFAULTS`).
    """

    concurrency: Literal["gradient2", "vegas", "aimd"] | None = "gradient2"
    initial_limit: int = 10
    min_limit: int = 1
    max_limit: int = 1000
    max_wait: Mapping[Priority, float] | None = None
    rate: Literal["cubic", "aimd"] | None = "aimd"
    rate_max_wait: float = 0.1
    client_throttle: bool = False
    breaker: bool = True
    retry: bool = True
    max_attempts: int = 3
    retry_nested: bool = False
    hold: float = 0.0
    limit_options: Mapping[str, Any] = field(default_factory=dict)
    rate_options: Mapping[str, Any] = field(default_factory=dict)
    timeout_options: Mapping[str, Any] = field(default_factory=dict)
    breaker_options: Mapping[str, Any] = field(default_factory=dict)
    budget: RetryBudgetConfig | None = None
    timeout: bool = True
    tick: float = 0.25

    def __post_init__(self) -> None:
        if self.concurrency not in (None, "gradient2", "vegas", "aimd"):
            raise ValueError(
                "concurrency must be 'gradient2', 'vegas', 'aimd' or None, "
                f"got {self.concurrency!r}"
            )
        if self.rate not in (None, "cubic", "aimd"):
            raise ValueError(f"rate must be 'cubic', 'aimd' or None, got {self.rate!r}")
        check_int("initial_limit", self.initial_limit, minimum=1)
        check_int("min_limit", self.min_limit, minimum=1)
        check_int("max_limit", self.max_limit, minimum=1)
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("initial_limit must lie within [min_limit, max_limit]")
        check_float("rate_max_wait", self.rate_max_wait, minimum=0.0)
        check_float("hold", self.hold, minimum=0.0)
        check_int("max_attempts", self.max_attempts, minimum=1)
        check_float("tick", self.tick, positive=True)


class AdaptivePolicy(Observable):
    """The adaptive pieces composed for the dependency ``name`` (see the module docstring).

    Args:
        name: the dependency's name: it names the parts (``name.breaker``, ``name.limiter``,
            ...) and the shared retry budget.
        options: :class:`AdaptiveOptions`.
        clock: time source.
        random: ``() -> float`` in [0, 1) for jitter and throttling draws.
        budgets: where the shared retry budgets live (default the process-wide registry).
        listeners: receive the events of every part and the controllers' decisions.
    """

    def __init__(
        self,
        name: str,
        options: AdaptiveOptions | None = None,
        *,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
        budgets: BudgetRegistry | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        options = AdaptiveOptions() if options is None else options
        if not isinstance(options, AdaptiveOptions):
            raise TypeError(f"options must be AdaptiveOptions, got {options!r}")
        self.name = name
        self.options = options
        self.clock = resolve_clock(clock)
        self._now = self.clock.now
        self._random = _random.random if random is None else random
        now = self._now()
        self._listeners: tuple[Listener, ...] = ()
        self._lock = threading.Lock()

        # 1. admission and concurrency
        self.limiter: PriorityLimiter | None = None
        self.limit_controller: Gradient2Limit | VegasLimit | AIMDLimit | None = None
        if options.concurrency is not None:
            bounds = Bounds(float(options.min_limit), float(options.max_limit))
            initial = float(options.initial_limit)
            kind = options.concurrency
            if kind == "gradient2":
                self.limit_controller = Gradient2Limit(
                    name=f"{name}.limit",
                    bounds=bounds,
                    initial=initial,
                    **{**GRADIENT2_DEFAULTS, **options.limit_options},
                )
            elif kind == "vegas":
                self.limit_controller = VegasLimit(
                    name=f"{name}.limit", bounds=bounds, initial=initial, **options.limit_options
                )
            else:
                self.limit_controller = AIMDLimit(
                    name=f"{name}.limit", bounds=bounds, initial=initial, **options.limit_options
                )
            self.limiter = PriorityLimiter(
                options.initial_limit,
                max_wait={**ADAPTIVE_MAX_WAIT, **(options.max_wait or {})},
                name=f"{name}.limiter",
                clock=self.clock,
            )
        self._limit_window = LimitWindow()
        self._inflight = 0

        # 2. client-side throttling
        self.throttle: AdaptiveThrottle | None = (
            AdaptiveThrottle(name=f"{name}.throttle") if options.client_throttle else None
        )
        self._accepts = RollingCounts(("requests", "accepts"), window=120.0, buckets=12, now=now)
        self._reject_p = 0.0

        # 3. rate for throttled APIs (dormant until a throttle)
        self.rate_controller: CubicRate | AIMDRate | None = None
        if options.rate == "cubic":
            self.rate_controller = CubicRate(name=f"{name}.rate", **options.rate_options)
        elif options.rate == "aimd":
            self.rate_controller = AIMDRate(
                name=f"{name}.rate", **{**AIMD_RATE_DEFAULTS, **options.rate_options}
            )
        self.bucket: RateLimiter | None = None
        self._sent = 0
        self._throttled = 0
        self._retry_after: float | None = None
        self._rate_since = now

        # 4. retries
        self.budget: RetryBudget | None = None
        self.delays: AdaptiveDelays | None = None
        if options.retry and options.max_attempts > 1:
            self.budget = budget_for(
                name, options.budget or ADAPTIVE_BUDGET, registry=budgets, now=now
            )
            self.delays = AdaptiveDelays(name=f"{name}.delays")
        self._attempt_counts = RollingCounts(("attempts", "failures"), window=10.0, now=now)

        # 5. breaker and timeout
        self.breaker: AdaptiveCircuitBreaker | None = (
            AdaptiveCircuitBreaker(
                f"{name}.breaker",
                clock=self.clock,
                **{**BREAKER_DEFAULTS, **options.breaker_options},
            )
            if options.breaker
            else None
        )
        self.timeout: AdaptiveTimeout | None = (
            AdaptiveTimeout(
                name=f"{name}.timeout", **{**TIMEOUT_DEFAULTS, **options.timeout_options}
            )
            if options.timeout
            else None
        )
        self._latency = LatencyHistogram()
        self._latency_previous = LatencyHistogram()

        self._ticker = Ticker(options.tick, start=now)
        for listener in listeners:
            self.add_listener(listener)

    # -- telemetry -----------------------------------------------------------------------------

    def _parts(self) -> list[Any]:
        return [p for p in (self.limiter, self.bucket, self.breaker) if p is not None]

    def _listeners_changed(self) -> None:
        for part in self._parts():
            for listener in self._listeners:
                part.add_listener(listener)

    def register(self, registry: Registry) -> AdaptivePolicy:
        """Register this policy's parts (breaker, limiter, rate bucket) in ``registry``."""
        for part in self._parts():
            if registry.get(part.name) is not part:
                registry.register(part)
        return self

    def _decide(self, setting: str, old: float, new: float, inputs: dict[str, float]) -> None:
        if self._listeners:
            emit(
                self._listeners,
                Decision(
                    policy=self.name,
                    time=self._now(),
                    controller=f"{self.name}.{setting}",
                    setting=setting,
                    old=old,
                    new=new,
                    inputs=inputs,
                ),
            )

    # -- the tick: controllers, amortised on the calling path -----------------------------------

    def _tick(self, now: float) -> None:
        limit_controller = self.limit_controller
        if limit_controller is not None and self.limiter is not None:
            sample = self._limit_window.take(now)
            if sample is not None:
                old = limit_controller.value
                new = limit_controller.update(sample)
                if new is not None:
                    self.limiter.set_limit(max(1, int(new)))
                    self._decide("limit", old, new, limit_controller.inputs(sample))
        rate_controller = self.rate_controller
        if rate_controller is not None:
            window = now - self._rate_since
            if window > 0:
                sample_r = RateSample(
                    now=now,
                    sent=self._sent,
                    window=window,
                    throttled=self._throttled,
                    retry_after=self._retry_after,
                )
                self._sent = self._throttled = 0
                self._retry_after = None
                self._rate_since = now
                old = rate_controller.value
                new = rate_controller.update(sample_r)
                if new is not None and rate_controller.active:
                    self._apply_rate(new)
                    self._decide("rate", old, new, rate_controller.inputs(sample_r))
        timeout = self.timeout
        histogram = self._latency.merge((self._latency_previous,))
        if timeout is not None:
            old = timeout.value
            new = timeout.update(timeout.sample(now, histogram))
            if new is not None:
                self._decide("timeout", old, new, {"p99": histogram.quantile(0.99) or 0.0})
        delays = self.delays
        if delays is not None:
            counts = self._attempt_counts.snapshot(now)
            calls = counts["attempts"]
            snapshot = DelaySnapshot(
                time=now,
                failure_rate=counts["failures"] / calls if calls else 0.0,
                calls=calls,
                median_latency=histogram.quantile(0.5),
            )
            old_settings = delays.settings
            settings = delays.update(snapshot)
            if settings is not None and self._listeners:
                for decision in delays.decisions(
                    old_settings, settings, snapshot, policy=self.name
                ):
                    emit(self._listeners, decision)
        throttle = self.throttle
        if throttle is not None:
            counts = self._accepts.snapshot(now)
            new = throttle.update(
                ThrottleSample(now=now, requests=counts["requests"], accepts=counts["accepts"])
            )
            if new is not None:
                old, self._reject_p = self._reject_p, new
                self._decide("reject_probability", old, new, dict(counts))
        # Latency statistics cover the last two ticks.
        self._latency_previous = self._latency
        self._latency = LatencyHistogram()

    def _apply_rate(self, rate: float) -> None:
        bucket = self.bucket
        burst = max(1.0, rate * 0.1)
        if bucket is None:
            self.bucket = RateLimiter(
                rate,
                burst,
                name=f"{self.name}.rate_limiter",
                clock=self.clock,
                max_wait=self.options.rate_max_wait,
                initial_tokens=burst,
            )
            for listener in self._listeners:
                self.bucket.add_listener(listener)
        else:
            bucket.set_rate(rate, burst)

    # -- per attempt: what both drivers share ---------------------------------------------------

    def _success(self, permit: int, start: float, inflight: int) -> None:
        now = self._now()
        duration = now - start
        breaker = self.breaker
        if breaker is not None:
            if permit >= 0 and permit == breaker._fast_gen:
                breaker._fast_success()
            else:
                breaker.on_success(permit, duration)
        self._limit_window.record(duration, inflight)
        self._latency.record(duration)
        self._attempt_counts.add(0, now)
        self._sent += 1
        if self.budget is not None:
            self.budget.record_success(now)
        if self.throttle is not None:
            self._accepts.add(1, now)

    def _failure(self, permit: int, start: float, inflight: int, exc: BaseException) -> None:
        now = self._now()
        duration = now - start
        breaker = self.breaker
        if breaker is not None:
            breaker.on_exception(permit, exc, duration)
        kind = classify(exc)
        timed_out = isinstance(exc, ResilienceTimeoutError | TimeoutError)
        if timed_out or getattr(exc, "overloaded", False):
            self._limit_window.record_drop(inflight)
        if timed_out:
            self._latency.record(duration)
        if kind is _THROTTLED:
            self._throttled += 1
            hint = hint_from(exc)
            if hint is not None:
                self._retry_after = hint
        self._sent += 1
        if kind is _TRANSIENT or kind is _THROTTLED:
            self._attempt_counts.add(0, now)
            self._attempt_counts.add(1, now)
            if self.budget is not None:
                self.budget.record_failure(now)
        elif kind is FailureKind.PERMANENT and self.throttle is not None:
            self._accepts.add(1, now)  # the dependency answered: it accepted the request

    def _retry_after_failure(
        self, exc: BaseException, attempt: int, previous: float, max_attempts: int
    ) -> float | None:
        """The delay before the next attempt, or ``None`` to give up (re-raise)."""
        if attempt >= max_attempts:
            return None
        kind = classify(exc)
        if kind is not _TRANSIENT and kind is not _THROTTLED:
            return None  # cancellation, permanent errors, our own rejections
        budget = self.budget
        delays = self.delays
        if budget is None or delays is None or not budget.can_retry(self._now()):
            return None
        hint = hint_from(exc)
        delay = delays.delay(attempt, previous, hint, self._random())
        if hint is not None and hint > delays.settings.max_delay * 2:
            return None  # the dependency asks for a longer pause than a caller should wait
        return delay

    def _hold(self, exc: CircuitBreakerOpenError, left: float) -> float | None:
        """How long to wait for our own open breaker's next trial, or ``None`` to give up."""
        breaker = self.breaker
        if breaker is None or exc.name != breaker.name or exc.retry_after is None:
            return None
        # Half-open and full (retry_after 0): look again shortly.
        wait = exc.retry_after if exc.retry_after > 0.0 else 0.02
        return wait if wait <= left else None

    def _before(self, now: float) -> None:
        if now >= self._ticker.next_at and self._ticker.claim(now):
            self._tick(now)
        if self.throttle is not None:
            self._accepts.add(0, now)
            if self._reject_p > 0.0 and should_reject(self._reject_p, random=self._random):
                raise ShedError(
                    self.name, priority=current_priority().name, reason="client_throttle"
                )

    def _max_attempts(self) -> int:
        delays = self.delays
        if delays is None:
            return 1
        if nested_retry() and not self.options.retry_nested:
            return 1
        return delays.settings.max_attempts

    # -- the async driver ------------------------------------------------------------------------

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under the adaptive policy."""
        now = self._now()
        self._before(now)
        limiter = self.limiter
        level = current_priority()
        if limiter is not None:
            level = await limiter.aacquire(level)
        try:
            budget = self.budget
            if budget is not None:
                budget.record_request(now)
            max_attempts = self._max_attempts()
            token = enter_retrying() if max_attempts > 1 else None
            try:
                attempt = 1
                previous = 0.0
                hold = self.options.hold
                while True:
                    try:
                        return await self._aattempt(fn, args, kwargs)
                    except CircuitBreakerOpenError as exc:
                        wait = self._hold(exc, hold)
                        if wait is None:
                            raise
                        hold -= wait
                        await self.clock.asleep(wait)
                        continue
                    except BaseException as exc:
                        delay = self._retry_after_failure(exc, attempt, previous, max_attempts)
                        if delay is None:
                            raise
                    if delay > 0.0:
                        await self.clock.asleep(delay)
                    attempt += 1
                    previous = delay
            finally:
                if token is not None:
                    exit_retrying(token)
        finally:
            if limiter is not None:
                limiter.release(level)

    async def _aattempt(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        # Every attempt, retries included, takes a token once the dependency has throttled
        # (the bucket exists from then on): the provider's limit counts attempts, not calls.
        bucket = self.bucket
        if bucket is not None:
            await bucket.aacquire(1, self.options.rate_max_wait)
        breaker = self.breaker
        permit = -1
        if breaker is not None:
            permit = breaker._fast_gen
            if permit < 0:
                permit = breaker.acquire()
        start = self._now()
        self._inflight += 1
        inflight = self._inflight
        timeout = self.timeout
        try:
            if timeout is not None and timeout.value < timeout.bounds.maximum:
                scope = asyncio.timeout(timeout.value)
                try:
                    async with scope:
                        result = await fn(*args, **kwargs)
                except TimeoutError as exc:
                    if not scope.expired():
                        raise
                    raise ResilienceTimeoutError(
                        f"{self.name}.timeout", seconds=timeout.value, kind="attempt"
                    ) from exc
            else:
                result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._inflight -= 1
            self._failure(permit, start, inflight, exc)
            raise
        self._inflight -= 1
        self._success(permit, start, inflight)
        return result

    # -- the sync driver (the async one without await; no timeout) -----------------------------

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` under the adaptive policy (no per-attempt timeout: a sync
        call cannot be interrupted)."""
        now = self._now()
        self._before(now)
        limiter = self.limiter
        level = current_priority()
        if limiter is not None:
            level = limiter.acquire(level)
        try:
            budget = self.budget
            if budget is not None:
                budget.record_request(now)
            max_attempts = self._max_attempts()
            token = enter_retrying() if max_attempts > 1 else None
            try:
                attempt = 1
                previous = 0.0
                hold = self.options.hold
                while True:
                    try:
                        return self._attempt(fn, args, kwargs)
                    except CircuitBreakerOpenError as exc:
                        wait = self._hold(exc, hold)
                        if wait is None:
                            raise
                        hold -= wait
                        self.clock.sleep(wait)
                        continue
                    except BaseException as exc:
                        delay = self._retry_after_failure(exc, attempt, previous, max_attempts)
                        if delay is None:
                            raise
                    if delay > 0.0:
                        self.clock.sleep(delay)
                    attempt += 1
                    previous = delay
            finally:
                if token is not None:
                    exit_retrying(token)
        finally:
            if limiter is not None:
                limiter.release(level)

    def _attempt(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        bucket = self.bucket
        if bucket is not None:
            bucket.acquire(1, self.options.rate_max_wait)
        breaker = self.breaker
        permit = -1
        if breaker is not None:
            permit = breaker._fast_gen
            if permit < 0:
                permit = breaker.acquire()
        start = self._now()
        self._inflight += 1
        inflight = self._inflight
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._inflight -= 1
            self._failure(permit, start, inflight, exc)
            raise
        self._inflight -= 1
        self._success(permit, start, inflight)
        return result

    # -- decorator -----------------------------------------------------------------------------

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async); the wrapper exposes the policy as ``.policy``."""
        if not callable(fn):
            raise TypeError(f"adaptive_policy decorates a callable, got {fn!r}")
        policy = self
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await policy.acall(fn, *args, **kwargs)

            async_wrapper.policy = policy  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return policy.call(fn, *args, **kwargs)

        wrapper.policy = policy  # type: ignore[attr-defined]
        return wrapper

    def stats(self) -> dict[str, Any]:
        """The parts' current settings, for the registry status and the plots."""
        out: dict[str, Any] = {"name": self.name}
        if self.limiter is not None:
            out["limit"] = self.limiter.limit
            out["in_flight"] = self.limiter.in_flight
        if self.rate_controller is not None:
            out["rate"] = self.rate_controller.value if self.rate_controller.active else None
        if self.timeout is not None:
            out["timeout"] = self.timeout.value
        if self.delays is not None:
            settings = self.delays.settings
            out["max_attempts"] = settings.max_attempts
            out["base_delay"] = settings.base_delay
        if self.breaker is not None:
            out["breaker_state"] = self.breaker.state.value
        return out

    def __repr__(self) -> str:
        return f"AdaptivePolicy(name={self.name!r}, options={self.options!r})"


def adaptive_policy(
    name: str,
    *,
    registry: Registry | None = None,
    clock: Clock | None = None,
    listeners: tuple[Listener, ...] | list[Listener] = (),
    **options: Any,
) -> AdaptivePolicy:
    """An :class:`AdaptivePolicy` for the dependency ``name``, its parts registered in
    ``registry`` (default :data:`~sage_resilience.core.breaker_manager`). Also a decorator:
    ``@adaptive_policy("database")``."""
    policy = AdaptivePolicy(name, AdaptiveOptions(**options), clock=clock, listeners=listeners)
    policy.register(breaker_manager if registry is None else registry)
    return policy
