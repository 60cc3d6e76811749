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

**The hot path.** On GIL builds a call that is admitted at once, finds the breaker closed on its
lock-free path and the rate limit dormant, and succeeds at its first attempt runs inline in
:meth:`AdaptivePolicy.call` / :meth:`AdaptivePolicy.acall`: two clock readings, the limiter's
and the breaker's lock-free paths, the retry budget's counters and the latency statistics
updated in place (the same steps as ``PriorityLimiter.acquire``/``release``,
``CircuitBreaker._fast_success``, ``RetryBudget.record_request``/``record_success``,
``LimitWindow.record`` and ``LatencyHistogram.record``, with no call between a read and its
write), and the successes counted once per tick into the rolling attempt counts. What the
controllers need per call (the attempts allowed, the attempt timeout) is cached at each tick.
Past :data:`LATENCY_SAMPLES_PER_TICK` attempts in a tick, latencies are recorded for one attempt
in k (the bucket search is the dearest step left). Anything else (a wait at the limit, a breaker
that is not on its fast path, a token to take, a failure) goes through the general loop, which
calls the parts' own methods. Measured with ``python -m sage_resilience.benchmarks.overhead``
(row "adaptive policy (full)").
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random as _random
import threading
import weakref
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar

from ..core import (
    CircuitBreakerOpenError,
    Clock,
    FailureKind,
    Listener,
    OutcomeUnknownError,
    RateLimiter,
    Registry,
    ResilienceTimeoutError,
    ShedError,
    breaker_manager,
    classify,
    is_async_callable,
    resolve_clock,
)
from ..core._deadlines import Deadlines
from ..core._deadlines import release as release_deadline
from ..core._gil import GIL_ENABLED
from ..core._validate import check_float, check_int
from ..core.events import Observable, emit
from .breaker import AdaptiveBreakerConfig, AdaptiveCircuitBreaker
from .budget import (
    _RETRYING,
    BudgetRegistry,
    RetryBudget,
    RetryBudgetConfig,
    budget_for,
)
from .controller import Bounds, Decision, Ticker
from .delays import AdaptiveDelays, AdaptiveDelaysConfig, DelaySnapshot, hint_from
from .limits import AIMDLimit, Gradient2Limit, LimitWindow, VegasLimit
from .priority import Priority, PriorityLimiter
from .priority import _current as _priority_var
from .rate import AIMDRate, CubicRate, RateSample
from .stats import _BOUNDS, LatencyHistogram, RollingCounts
from .throttle import AdaptiveThrottle, ThrottleSample, should_reject
from .timeouts import AdaptiveTimeout

__all__ = [
    "ADAPTIVE_BUDGET",
    "ADAPTIVE_MAX_WAIT",
    "AIMD_RATE_DEFAULTS",
    "BREAKER_DEFAULTS",
    "GRADIENT2_DEFAULTS",
    "LATENCY_SAMPLES_PER_TICK",
    "TIMEOUT_DEFAULTS",
    "AdaptiveOptions",
    "AdaptivePolicy",
    "adaptive_policy",
]

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger("sage_resilience")

_TRANSIENT = FailureKind.TRANSIENT
_THROTTLED = FailureKind.THROTTLED
_LEVELS = len(Priority)  # a PriorityLimiter's "no level is being shed"

# The context variables, read and set directly on the hot path (their module-level helpers
# would each cost a Python call).
_priority_get = _priority_var.get
_retrying_get = _RETRYING.get
_retrying_set = _RETRYING.set
_retrying_reset = _RETRYING.reset


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

AIMD_RATE_DEFAULTS: Mapping[str, Any] = {
    "decrease": 0.99,
    "increase": 1.0,
    "estimate_window": 4.0,
    "probe_after": 5.0,
    "probe_growth": 0.2,
}
"""On a 429 the rate drops to 99 % of the rate the provider accepted over the last 4 s, and
probes back at 1 request/s per second: goodput at the provider's limit with under 2 % of 429s
(CUBIC's 0.7 cut left ~6 % of the limit unused on average; the accepted rate of the throttled
tick alone, 0.25 s, was noisy enough to average 96 % of the limit). After 5 s without a 429 it
grows by 20 % per second instead, so a limit the provider raised or lifted is found in seconds,
not minutes (from 20 to 54 requests/s: about 10 s against 34 s); against a steady limit 429s
come every second or two, so this changes nothing there (throttled, seeds 1-4: 0.971 against
0.972)."""

TIMEOUT_DEFAULTS: Mapping[str, Any] = {"rise_half_life": 15.0}
"""The timeout follows a slower dependency with a 15 s half-life instead of at once, so a sudden
latency collapse is cut (and seen by the breaker as slow calls) rather than waited out, while a
lasting slowdown (a brownout) is followed within a minute. Over seeds 1-4 of the bench, 15 s kept
the latency spike's p99 within twice the healthy one on every seed where 5 s did not on one
(score 0.52); 20 s and more stopped following the brownout (score 0.64)."""

BREAKER_DEFAULTS: Mapping[str, Any] = {
    "recovery_timeout": 0.15,
    "adaptive": AdaptiveBreakerConfig(initial_open_duration=0.1),
}
"""The breaker's open duration grows from 0.1 s to at most 0.15 s: during an outage a trial
every 0.15 s costs a few calls per second (amplification under 0.1), and a dependency that
returns is back in service within about 0.1 s on average; a flapping one loses less at each
return (bench, seeds 1-4: flapping 0.780 against 0.764 with 0.25 s to 0.5 s)."""

LATENCY_SAMPLES_PER_TICK = 256
"""Attempt latencies recorded per tick, at most about: past 256 attempts in a tick (1024/s),
every k-th attempt is recorded (k from the last tick's count), so the histogram the timeout
and delay controllers read still holds 256 to 512 attempts per tick, evenly spread, and the
hot path skips the bucket search for the others. Below that rate every attempt is recorded."""

ADAPTIVE_BUDGET = RetryBudgetConfig(ratio=0.2)
"""Retries up to 20 % of requests (plus 1/s): the SRE book's 10 % left a steady 10 % of
transient failures short of retries (1 % of calls lost against 0.1 %)."""


# -- building the parts (also used to check the options when they are made) -------------------


def _make_limit(
    options: AdaptiveOptions, name: str
) -> Gradient2Limit | VegasLimit | AIMDLimit | None:
    kind = options.concurrency
    if kind is None:
        return None
    bounds = Bounds(float(options.min_limit), float(options.max_limit))
    initial = float(options.initial_limit)
    if kind == "gradient2":
        return Gradient2Limit(
            name=f"{name}.limit",
            bounds=bounds,
            initial=initial,
            **{**GRADIENT2_DEFAULTS, **options.limit_options},
        )
    if kind == "vegas":
        return VegasLimit(
            name=f"{name}.limit", bounds=bounds, initial=initial, **options.limit_options
        )
    return AIMDLimit(name=f"{name}.limit", bounds=bounds, initial=initial, **options.limit_options)


def _make_rate(options: AdaptiveOptions, name: str) -> CubicRate | AIMDRate | None:
    if options.rate == "cubic":
        return CubicRate(name=f"{name}.rate", **options.rate_options)
    if options.rate == "aimd":
        return AIMDRate(name=f"{name}.rate", **{**AIMD_RATE_DEFAULTS, **options.rate_options})
    return None


def _make_timeout(options: AdaptiveOptions, name: str) -> AdaptiveTimeout | None:
    if not options.timeout:
        return None
    return AdaptiveTimeout(
        name=f"{name}.timeout", **{**TIMEOUT_DEFAULTS, **options.timeout_options}
    )


def _make_breaker(
    options: AdaptiveOptions, name: str, clock: Clock | None
) -> AdaptiveCircuitBreaker | None:
    if not options.breaker:
        return None
    return AdaptiveCircuitBreaker(
        f"{name}.breaker", clock=clock, **{**BREAKER_DEFAULTS, **options.breaker_options}
    )


def _make_delays(options: AdaptiveOptions, name: str) -> AdaptiveDelays | None:
    if not options.retry or options.max_attempts <= 1:
        return None
    return AdaptiveDelays(
        AdaptiveDelaysConfig(max_attempts=options.max_attempts), name=f"{name}.delays"
    )


def _check_part(option: str, build: Callable[[], object]) -> None:
    """Build a part from the options once, so that a bad setting names its option."""
    try:
        build()
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{option}: {exc}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveOptions:
    """Which adaptive pieces to use, and their few knobs (defaults need no per-dependency tuning).

    A bad value raises ``ValueError`` (``TypeError`` for a wrong type) naming the field, here
    rather than when the policy is built; the parts' keyword arguments are checked by building
    each part once.

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
            a short outage costs its callers latency rather than errors. Not while the
            dependency is slow rather than down (its last failure a timeout, or the breaker
            opened for slow calls). 0.3 s (within twice a typical p99) served the arrivals of
            the last 0.3 s of each outage in the bench (outage 0.938, flapping 0.794 against
            0.935 and 0.780 without, seeds 1-4) and changed nothing elsewhere.
        budget: the retry budget's settings (shared by every policy of the same ``dependency``).
        timeout: an adaptive per-attempt timeout for async calls.
        tick: seconds between controller updates.
        limit_options, rate_options, timeout_options: keyword arguments for the limit, rate and
            timeout controllers (over :data:`GRADIENT2_DEFAULTS`, :data:`AIMD_RATE_DEFAULTS`,
            :data:`TIMEOUT_DEFAULTS`).
        breaker_options: keyword arguments for the adaptive breaker (core config fields, over
            :data:`BREAKER_DEFAULTS`, or ``adaptive=`` an
            :class:`~.breaker.AdaptiveBreakerConfig`).
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
    hold: float = 0.3
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
        for flag in ("client_throttle", "breaker", "retry", "retry_nested", "timeout"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        check_int("initial_limit", self.initial_limit, minimum=1)
        check_int("min_limit", self.min_limit, minimum=1)
        check_int("max_limit", self.max_limit, minimum=1)
        if self.max_limit < self.min_limit:
            raise ValueError(
                f"max_limit ({self.max_limit!r}) must be >= min_limit ({self.min_limit!r})"
            )
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"initial_limit ({self.initial_limit!r}) must lie within "
                f"[min_limit, max_limit] = [{self.min_limit!r}, {self.max_limit!r}]"
            )
        if self.max_wait is not None:
            if not isinstance(self.max_wait, Mapping):
                raise TypeError(f"max_wait must be a mapping of levels, got {self.max_wait!r}")
            for key, seconds in self.max_wait.items():
                try:
                    level = Priority.coerce(key)
                except ValueError as exc:
                    raise ValueError(f"max_wait: {exc}") from None
                check_float(f"max_wait[{level.name}]", seconds, minimum=0.0, allow_inf=True)
        check_float("rate_max_wait", self.rate_max_wait, minimum=0.0)
        check_float("hold", self.hold, minimum=0.0)
        check_int("max_attempts", self.max_attempts, minimum=1)
        check_float("tick", self.tick, positive=True)
        if self.budget is not None and not isinstance(self.budget, RetryBudgetConfig):
            raise TypeError(f"budget must be a RetryBudgetConfig or None, got {self.budget!r}")
        for name in ("limit_options", "rate_options", "timeout_options", "breaker_options"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise TypeError(f"{name} must be a mapping of keyword arguments, got {value!r}")
        _check_part("limit_options", lambda: _make_limit(self, "options"))
        _check_part("rate_options", lambda: _make_rate(self, "options"))
        _check_part("timeout_options", lambda: _make_timeout(self, "options"))
        _check_part("breaker_options", lambda: _make_breaker(self, "options", None))


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
        self._pushed: tuple[Listener, ...] = ()  # the listeners this policy gave its parts
        self._registries: list[Registry] = []  # where the parts are registered
        self._lock = threading.Lock()

        # 1. admission and concurrency
        self.limit_controller = _make_limit(options, name)
        self.limiter: PriorityLimiter | None = None
        if self.limit_controller is not None:
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
        self.rate_controller = _make_rate(options, name)
        self.bucket: RateLimiter | None = None
        self._sent = 0
        self._throttled = 0
        self._retry_after: float | None = None
        self._rate_since = now

        # 4. retries
        self.budget: RetryBudget | None = None
        self.delays = _make_delays(options, name)
        if self.delays is not None:
            self.budget = budget_for(
                name, options.budget or ADAPTIVE_BUDGET, registry=budgets, now=now
            )
        self._attempt_counts = RollingCounts(("attempts", "failures"), window=10.0, now=now)
        # Attempts that succeeded on the hot path, counted into _attempt_counts (and _sent) at
        # the next tick or failure: cumulative, so that only the flusher writes _ok_flushed.
        self._ok = 0
        self._ok_flushed = 0
        # The attempts a call may make, from the delay controller's settings (cached per tick).
        self._attempts_cap = 1 if self.delays is None else self.delays.settings.max_attempts

        # 5. breaker and timeout
        self.breaker = _make_breaker(options, name, self.clock)
        self.timeout = _make_timeout(options, name)
        self._deadlines = Deadlines()  # arms the per-attempt timeout scopes
        self._failing_slowly = False  # whether the last failed attempt timed out
        # The per-attempt timeout in seconds, or None while the controller holds its maximum
        # (nothing learned yet): cached per tick.
        self._attempt_timeout: float | None = None
        self._latency = LatencyHistogram()
        self._latency_previous = LatencyHistogram()
        # Every _stride-th attempt's latency is recorded (1 unless the last tick saw more than
        # LATENCY_SAMPLES_PER_TICK attempts); _countdown counts down to the next one.
        self._stride = 1
        self._countdown = 1
        self._attempts_seen = 0

        self._ticker = Ticker(options.tick, start=now)
        for listener in listeners:
            self.add_listener(listener)

    # -- telemetry and registration ------------------------------------------------------------

    def _parts(self) -> list[Any]:
        return [p for p in (self.limiter, self.bucket, self.breaker) if p is not None]

    def _listeners_changed(self) -> None:
        listeners = self._listeners
        removed = [x for x in self._pushed if x not in listeners]
        self._pushed = listeners
        for part in self._parts():
            for listener in removed:
                part.remove_listener(listener)
            for listener in listeners:
                part.add_listener(listener)

    def register(self, registry: Registry) -> AdaptivePolicy:
        """Register this policy's parts in ``registry`` under their names (``name.breaker``,
        ``name.limiter``, and ``name.rate_limiter`` now or when the dependency first throttles),
        and make it the policy :func:`adaptive_policy` returns for ``name`` there.

        Raises:
            ValueError: a part's name is taken by another policy (nothing is registered).
        """
        with self._lock:
            # Listed first: a rate bucket made from now on is registered there by _apply_rate.
            added = all(r is not registry for r in self._registries)
            if added:
                self._registries.append(registry)
            parts = self._parts()
        done: list[Any] = []
        try:
            for part in parts:
                existing = registry.get(part.name)
                if existing is not None and existing is not part:
                    raise ValueError(f"a policy named {part.name!r} is already registered")
            for part in parts:
                if registry.get(part.name) is not part:
                    registry.register(part)
                    done.append(part)
        except ValueError:  # leave no half-registered policy
            for part in done:
                registry.unregister(part.name)
            if added:
                with self._lock:
                    self._registries.remove(registry)
            raise
        with _policies_lock:
            _policies.setdefault(registry, {})[self.name] = self
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

    def _flush_ok(self, now: float) -> None:
        """Count the hot path's successful attempts into the attempt statistics."""
        ok = self._ok
        new = ok - self._ok_flushed
        self._ok_flushed = ok
        if new:
            self._attempt_counts.add(0, now, new)
            self._sent += new

    def _maybe_tick(self, now: float) -> None:
        if self._ticker.claim(now):
            self._tick(now)

    def _tick(self, now: float) -> None:
        self._flush_ok(now)
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
            sample_t = timeout.sample(now, histogram)
            new = timeout.update(sample_t)
            if new is not None:
                self._attempt_timeout = new if new < timeout.bounds.maximum else None
                self._decide("timeout", old, new, timeout.inputs(sample_t))
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
            if settings is not None:
                self._attempts_cap = settings.max_attempts
                if self._listeners:
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
        # Latency statistics cover the last two ticks, sampled evenly past a rate.
        self._latency_previous = self._latency
        self._latency = LatencyHistogram()
        attempts = self._attempt_counts.totals()["attempts"]
        seen, self._attempts_seen = attempts - self._attempts_seen, attempts
        self._stride = max(1, -(-seen // LATENCY_SAMPLES_PER_TICK))
        self._countdown = min(self._countdown, self._stride)

    def _apply_rate(self, rate: float) -> None:
        bucket = self.bucket
        burst = max(1.0, rate * 0.1)
        if bucket is not None:
            bucket.set_rate(rate, burst)
            return
        bucket = RateLimiter(
            rate,
            burst,
            name=f"{self.name}.rate_limiter",
            clock=self.clock,
            max_wait=self.options.rate_max_wait,
            initial_tokens=burst,
        )
        for listener in self._listeners:
            bucket.add_listener(listener)
        with self._lock:
            self.bucket = bucket
            registries = list(self._registries)
        for registry in registries:
            try:
                registry.register(bucket)
            except ValueError:  # the name is taken: the bucket still works, unregistered
                _log.warning(
                    "adaptive policy %r: %r is taken in %r; its rate limiter is not registered",
                    self.name,
                    bucket.name,
                    registry,
                )

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
        self._record_latency(duration)
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
        if kind is _TRANSIENT or kind is _THROTTLED:
            self._failing_slowly = timed_out
        if timed_out or getattr(exc, "overloaded", False):
            self._limit_window.record_drop(inflight)
        if timed_out:
            self._record_latency(duration)
        if kind is _THROTTLED:
            self._throttled += 1
            hint = hint_from(exc)
            if hint is not None:
                self._retry_after = hint
        self._flush_ok(now)  # the successes before this failure come first in the window
        self._sent += 1
        if kind is _TRANSIENT or kind is _THROTTLED:
            self._attempt_counts.add(0, now)
            self._attempt_counts.add(1, now)
            if self.budget is not None:
                self.budget.record_failure(now)
        elif kind is FailureKind.PERMANENT:
            # The dependency answered (a 4xx): an attempt that did not fail it.
            self._attempt_counts.add(0, now)
            if self.throttle is not None:
                self._accepts.add(1, now)  # it accepted the request

    def _record_latency(self, duration: float) -> None:
        """Record an attempt's latency, if it is the one in ``_stride`` to be sampled."""
        countdown = self._countdown - 1
        if countdown > 0:
            self._countdown = countdown
            return
        self._countdown = self._stride
        self._latency.record(duration)

    def _retry_after_failure(
        self, exc: BaseException, attempt: int, previous: float, max_attempts: int
    ) -> float | None:
        """The delay before the next attempt, or ``None`` to give up (re-raise)."""
        if attempt >= max_attempts:
            return None
        kind = classify(exc)
        if kind is not _TRANSIENT and kind is not _THROTTLED:
            return None  # cancellation, permanent errors, our own rejections
        if isinstance(exc, OutcomeUnknownError):
            return None  # the attempt may have taken effect
        budget = self.budget
        delays = self.delays
        if budget is None or delays is None:
            return None
        hint = hint_from(exc)
        if hint is not None and hint > delays.settings.max_delay * 2:
            return None  # the dependency asks for a longer pause than a caller should wait
        breaker = self.breaker
        if breaker is not None:
            closed_in = breaker.retry_after
            if closed_in is None or closed_in > 0.0:
                return None  # the breaker opened: the retry would be refused, give up now
        if not budget.can_retry(self._now()):  # (a yes counts the retry: asked last)
            return None
        return delays.delay(attempt, previous, hint, self._random())

    def _hold(self, exc: CircuitBreakerOpenError, left: float) -> float | None:
        """How long to wait for our own open breaker's next trial, or ``None`` to give up."""
        breaker = self.breaker
        if breaker is None or exc.name != breaker.name or exc.retry_after is None:
            return None
        if self._failing_slowly or "slow" in breaker.open_reason:
            # The dependency is slow, not down (its last failure was a timeout, or calls got
            # slow): a held call would only be served slowly.
            return None
        # Half-open and full (retry_after 0): look again shortly.
        wait = exc.retry_after if exc.retry_after > 0.0 else 0.02
        return wait if wait <= left else None

    def _throttle_gate(self, now: float) -> None:
        """Client-side throttling: count the request, and refuse it with the SRE probability."""
        self._accepts.add(0, now)
        if self._reject_p > 0.0 and should_reject(self._reject_p, random=self._random):
            raise ShedError(self.name, priority=_priority_get().name, reason="client_throttle")

    # -- the async driver ------------------------------------------------------------------------

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under the adaptive policy."""
        return await self._acall(fn, args, kwargs)

    async def _acall(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        # The sync driver's _call with awaits and the attempt timeout; keep them in step.
        now = self._now()
        if now >= self._ticker.next_at:
            self._maybe_tick(now)
            now = self._now()
        if self.throttle is not None:
            self._throttle_gate(now)
        level = _priority_get()
        limiter = self.limiter
        if limiter is not None:
            if GIL_ENABLED and limiter._in_flight < limiter._limit and not limiter._waiting:
                limiter._in_flight += 1  # PriorityLimiter.aacquire's lock-free path
                limiter._by_level[level] += 1
                limiter._admitted[level] += 1
                limiter._floor = _LEVELS
            else:
                level = await limiter.aacquire(level)
                now = self._now()
        try:
            budget = self.budget
            if budget is not None:
                if GIL_ENABLED and now < budget.next_boundary:
                    budget.requests += 1  # RetryBudget.record_request's lock-free path
                else:
                    budget.record_request(now)
            max_attempts = self._attempts_cap
            token = None
            if max_attempts > 1:
                if not _retrying_get():
                    token = _retrying_set(True)
                elif not self.options.retry_nested:
                    max_attempts = 1  # inside a retrying call: one layer retries
            try:
                breaker = self.breaker
                permit = -1 if breaker is None else breaker._fast_gen
                if (
                    not GIL_ENABLED
                    or self.bucket is not None
                    or (breaker is not None and permit < 0)
                ):
                    return await self._arun(fn, args, kwargs, max_attempts, None)
                # The first attempt on the fast path (the general one is _aattempt).
                inflight = self._inflight + 1
                self._inflight = inflight
                seconds = self._attempt_timeout
                try:
                    if seconds is None:
                        result = await fn(*args, **kwargs)
                    else:
                        entry = self._deadlines.arm(seconds)
                        scope: asyncio.Timeout = entry[1]
                        try:
                            async with scope:
                                result = await fn(*args, **kwargs)
                        except TimeoutError as exc:
                            if not scope.expired():
                                raise  # the callee's own timeout
                            raise ResilienceTimeoutError(
                                f"{self.name}.timeout", seconds=seconds, kind="attempt"
                            ) from exc
                        finally:
                            release_deadline(entry)
                except BaseException as exc:
                    self._inflight -= 1
                    self._failure(permit, now, inflight, exc)
                    failed = exc
                else:
                    self._inflight -= 1
                    self._hot_success(breaker, permit, now, inflight)
                    return result
                return await self._arun(fn, args, kwargs, max_attempts, failed)
            finally:
                if token is not None:
                    _retrying_reset(token)
        finally:
            if limiter is not None:
                by_level = limiter._by_level  # PriorityLimiter.release's lock-free path
                if (
                    GIL_ENABLED
                    and not limiter._waiting
                    and limiter._floor >= _LEVELS
                    and by_level[level] > 0
                ):
                    by_level[level] -= 1
                    limiter._in_flight -= 1
                else:
                    limiter.release(level)

    async def _arun(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        max_attempts: int,
        failed: BaseException | None,
    ) -> T:
        """The attempts (after a failed first one on the fast path, if ``failed``)."""
        attempt = 1
        previous = 0.0
        hold = self.options.hold
        while True:
            try:
                if failed is not None:
                    first, failed = failed, None
                    raise first
                return await self._aattempt(fn, args, kwargs)
            except CircuitBreakerOpenError as exc:
                wait = self._hold(exc, hold)
                if wait is None:
                    raise
                hold -= wait
                await self.clock.asleep(wait)
                continue
            except BaseException as exc:
                hold = 0.0  # a failed attempt shows the dependency still down: no more waiting
                delay = self._retry_after_failure(exc, attempt, previous, max_attempts)
                if delay is None:
                    raise
            if delay > 0.0:
                await self.clock.asleep(delay)
            attempt += 1
            previous = delay

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
        seconds = self._attempt_timeout
        try:
            if seconds is not None:
                entry = self._deadlines.arm(seconds)
                scope: asyncio.Timeout = entry[1]
                try:
                    async with scope:
                        result = await fn(*args, **kwargs)
                except TimeoutError as exc:
                    if not scope.expired():
                        raise
                    raise ResilienceTimeoutError(
                        f"{self.name}.timeout", seconds=seconds, kind="attempt"
                    ) from exc
                finally:
                    release_deadline(entry)
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
        return self._call(fn, args, kwargs)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        now = self._now()
        if now >= self._ticker.next_at:
            self._maybe_tick(now)
            now = self._now()
        if self.throttle is not None:
            self._throttle_gate(now)
        level = _priority_get()
        limiter = self.limiter
        if limiter is not None:
            # PriorityLimiter.acquire's lock-free path, inlined (no call between the test and
            # the updates); the release in the finally clause below is its release's.
            if GIL_ENABLED and limiter._in_flight < limiter._limit and not limiter._waiting:
                limiter._in_flight += 1
                limiter._by_level[level] += 1
                limiter._admitted[level] += 1
                limiter._floor = _LEVELS
            else:
                level = limiter.acquire(level)
                now = self._now()
        try:
            budget = self.budget
            if budget is not None:
                if GIL_ENABLED and now < budget.next_boundary:
                    budget.requests += 1  # RetryBudget.record_request's lock-free path
                else:
                    budget.record_request(now)
            max_attempts = self._attempts_cap
            token = None
            if max_attempts > 1:
                if not _retrying_get():
                    token = _retrying_set(True)
                elif not self.options.retry_nested:
                    max_attempts = 1  # inside a retrying call: one layer retries
            try:
                breaker = self.breaker
                permit = -1 if breaker is None else breaker._fast_gen
                if (
                    not GIL_ENABLED
                    or self.bucket is not None
                    or (breaker is not None and permit < 0)
                ):
                    return self._run(fn, args, kwargs, max_attempts, None)
                # The first attempt on the fast path (the general one is _attempt).
                inflight = self._inflight + 1
                self._inflight = inflight
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    self._inflight -= 1
                    self._failure(permit, now, inflight, exc)
                    failed = exc
                else:
                    self._inflight -= 1
                    end = self._now()
                    duration = end - now
                    if breaker is not None:
                        if permit == breaker._fast_gen:
                            window = breaker._window  # CircuitBreaker._fast_success
                            if end >= window.next_boundary:
                                window.rotate(end)
                            window.successes += 1
                        else:  # the fast path was turned off meanwhile (a tick started sampling)
                            breaker.on_success(permit, duration)
                    lw = self._limit_window  # LimitWindow.record
                    if inflight > lw._inflight:  # noqa: PLR1730 - no call between read and write
                        lw._inflight = inflight
                    if duration >= lw.min_rtt and duration > 0.0:
                        lw._count += 1
                        lw._total += duration
                    countdown = self._countdown - 1  # _record_latency
                    if countdown > 0:
                        self._countdown = countdown
                    else:
                        self._countdown = self._stride
                        index = bisect_right(_BOUNDS, duration)  # LatencyHistogram.record
                        histogram = self._latency
                        histogram.counts[index] += 1
                        histogram.total += duration
                        if duration > histogram.max:  # noqa: PLR1730
                            histogram.max = duration
                    self._ok += 1
                    if budget is not None:
                        if budget.ratio_mode:
                            budget.successes += 1  # RetryBudget.record_success's lock-free path
                        else:
                            budget.record_success(end)
                    if self.throttle is not None:
                        self._accepts.add(1, end)
                    return result
                return self._run(fn, args, kwargs, max_attempts, failed)
            finally:
                if token is not None:
                    _retrying_reset(token)
        finally:
            if limiter is not None:
                # PriorityLimiter.release's lock-free path, inlined: nobody waits and no level
                # is being shed, so the slot is simply given back.
                by_level = limiter._by_level
                if (
                    GIL_ENABLED
                    and not limiter._waiting
                    and limiter._floor >= _LEVELS
                    and by_level[level] > 0
                ):
                    by_level[level] -= 1
                    limiter._in_flight -= 1
                else:
                    limiter.release(level)

    def _run(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        max_attempts: int,
        failed: BaseException | None,
    ) -> T:
        """The attempts (after a failed first one on the fast path, if ``failed``)."""
        attempt = 1
        previous = 0.0
        hold = self.options.hold
        while True:
            try:
                if failed is not None:
                    first, failed = failed, None
                    raise first
                return self._attempt(fn, args, kwargs)
            except CircuitBreakerOpenError as exc:
                wait = self._hold(exc, hold)
                if wait is None:
                    raise
                hold -= wait
                self.clock.sleep(wait)
                continue
            except BaseException as exc:
                hold = 0.0  # a failed attempt shows the dependency still down: no more waiting
                delay = self._retry_after_failure(exc, attempt, previous, max_attempts)
                if delay is None:
                    raise
            if delay > 0.0:
                self.clock.sleep(delay)
            attempt += 1
            previous = delay

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

    def _hot_success(
        self, breaker: AdaptiveCircuitBreaker | None, permit: int, start: float, inflight: int
    ) -> None:
        """:meth:`_success` for the fast path (GIL builds only): the parts' lock-free updates
        inlined, the attempt counted at the next tick. The async driver calls it; the sync
        driver has the same steps inline (a call costs it ~80 ns): keep the two in step."""
        end = self._now()
        duration = end - start
        if breaker is not None:
            if permit == breaker._fast_gen:
                window = breaker._window  # CircuitBreaker._fast_success, with our reading
                if end >= window.next_boundary:
                    window.rotate(end)
                window.successes += 1
            else:  # the fast path was turned off during the call (a tick started sampling)
                breaker.on_success(permit, duration)
        lw = self._limit_window  # LimitWindow.record
        if inflight > lw._inflight:  # noqa: PLR1730 - no call between a read and its write
            lw._inflight = inflight
        if duration >= lw.min_rtt and duration > 0.0:
            lw._count += 1
            lw._total += duration
        countdown = self._countdown - 1  # _record_latency
        if countdown > 0:
            self._countdown = countdown
        else:
            self._countdown = self._stride
            index = bisect_right(_BOUNDS, duration)  # LatencyHistogram.record
            histogram = self._latency
            histogram.counts[index] += 1
            histogram.total += duration
            if duration > histogram.max:  # noqa: PLR1730
                histogram.max = duration
        self._ok += 1
        budget = self.budget
        if budget is not None:
            if budget.ratio_mode:
                budget.successes += 1  # RetryBudget.record_success's lock-free path
            else:
                budget.record_success(end)
        if self.throttle is not None:
            self._accepts.add(1, end)

    # -- decorator -----------------------------------------------------------------------------

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async); the wrapper exposes the policy as ``.policy``."""
        if not callable(fn):
            raise TypeError(f"adaptive_policy decorates a callable, got {fn!r}")
        if is_async_callable(fn):
            arun = self._acall

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await arun(fn, args, kwargs)

            async_wrapper.policy = self  # type: ignore[attr-defined]
            return async_wrapper

        run = self._call

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return run(fn, args, kwargs)

        wrapper.policy = self  # type: ignore[attr-defined]
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
        if self.throttle is not None:
            out["reject_probability"] = self._reject_p
        if self.breaker is not None:
            out["breaker_state"] = self.breaker.state.value
        return out

    def __repr__(self) -> str:
        return f"AdaptivePolicy(name={self.name!r}, options={self.options!r})"


# The adaptive policies registered in each registry, by name, for adaptive_policy() to share.
# A registry holds the parts, not the policy (the policy's own name stays free for the seed's
# ``circuit_breaker(name)``); an entry counts only while the registry still holds its parts.
_policies: weakref.WeakKeyDictionary[Registry, dict[str, AdaptivePolicy]] = (
    weakref.WeakKeyDictionary()
)
_policies_lock = threading.RLock()  # held over adaptive_policy's look-up and registration


def _registered(registry: Registry, name: str) -> AdaptivePolicy | None:
    """The policy registered for ``name`` in ``registry``, if its parts are still there (lock
    held); a stale entry (the registry was cleared) is dropped."""
    by_name = _policies.get(registry)
    if by_name is None or name not in by_name:
        return None
    policy = by_name[name]
    parts = policy._parts()
    if parts and all(registry.get(part.name) is part for part in parts):
        return policy
    del by_name[name]
    return None


def adaptive_policy(
    name: str,
    *,
    registry: Registry | None = None,
    clock: Clock | None = None,
    random: Callable[[], float] | None = None,
    budgets: BudgetRegistry | None = None,
    listeners: tuple[Listener, ...] | list[Listener] = (),
    **options: Any,
) -> AdaptivePolicy:
    """The :class:`AdaptivePolicy` for the dependency ``name`` in ``registry`` (default
    :data:`~sage_resilience.core.breaker_manager`), created on first use with its parts
    registered there (``name.breaker``, ``name.limiter``, ``name.rate_limiter``). Also a
    decorator: ``@adaptive_policy("database")``; functions decorated with the same name share
    one policy (as ``circuit_breaker`` shares a breaker).

    ``options`` are :class:`AdaptiveOptions` fields. The same name with other options, or a
    part's name held by another policy, is a ``ValueError``; the clock, random source and
    budget registry of the first call stay.
    """
    target = breaker_manager if registry is None else registry
    wanted = AdaptiveOptions(**options)
    with _policies_lock:
        policy = _registered(target, name)
        if policy is None:
            policy = AdaptivePolicy(
                name, wanted, clock=clock, random=random, budgets=budgets
            ).register(target)
        elif policy.options != wanted:
            raise ValueError(
                f"adaptive policy {name!r} is already registered with other options: "
                f"{policy.options!r} != {wanted!r}"
            )
    for listener in listeners:
        policy.add_listener(listener)
    return policy
