"""A circuit breaker that learns what normal looks like and trips on what is significantly worse.

:class:`AdaptiveCircuitBreaker` is a :class:`~sage_resilience.core.CircuitBreaker` (the same
permission protocol, events, registry, stats and closed-state fast path) whose "when to trip"
and "how long to stay open" are learned instead of fixed. See the class docstring for the
formulas and why each default is what it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..core import CircuitBreaker, CircuitBreakerConfig, CircuitState, Registry, WindowType
from ..core._gil import GIL_ENABLED
from ..core._validate import check_float, check_int
from ..core.clock import Clock
from ..core.events import Event, Listener
from ..core.window import TimeWindow, Window
from .controller import Decision
from .stats import BUCKET_COUNT, bucket_index, bucket_value

__all__ = [
    "ADAPTIVE_BREAKER_DEFAULTS",
    "AdaptiveBreakerConfig",
    "AdaptiveCircuitBreaker",
    "BreakerBaseline",
    "adaptive_breaker",
    "significant",
]

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN

_Pending = list[Event | tuple[Callable[..., object], int]]

# The latency baseline uses the buckets of :mod:`.stats` (10 % wide from 10 µs up), kept here as
# time-decayed weights rather than counts.
_NBUCKETS = BUCKET_COUNT
_bucket_of = bucket_index
_bucket_value = bucket_value


def _kl(q: float, p: float) -> float:
    """Kullback-Leibler divergence of Bernoulli(q) from Bernoulli(p), in nats (0 < p < 1)."""
    d = q * math.log(q / p) if q > 0.0 else 0.0
    if q < 1.0:
        d += (1.0 - q) * math.log((1.0 - q) / (1.0 - p))
    return d


def significant(events: int, calls: int, baseline: float, log_inv_alpha: float) -> bool:
    """Whether ``events`` out of ``calls`` is significantly above a ``baseline`` rate.

    One-sided Chernoff bound on the binomial tail: ``P(X >= k | n, p) <= exp(-n KL(k/n || p))``
    for ``k/n > p``. The test says yes when that bound is at most ``alpha``, that is when
    ``n * KL(k/n || p) >= ln(1/alpha)``. The bound holds for every ``n`` (no normal
    approximation), so a small window cannot fool it, and it costs two logarithms.
    """
    if calls <= 0:
        return False
    q = events / calls
    if q <= baseline:
        return False
    return calls * _kl(q, baseline) >= log_inv_alpha


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveBreakerConfig:
    """What the adaptive breaker learns with, and how fast (see :class:`AdaptiveCircuitBreaker`).

    Attributes:
        half_life: seconds for the baseline's memory to halve (failure rate and latency).
        significance: a bound on the probability that one rate test trips a breaker whose
            dependency still fails at its baseline rate (Chernoff, see :func:`significant`).
        run_significance: the probability, at the baseline rate, of the run of consecutive
            failures that trips it (sets ``failure_threshold``).
        suspect_significance: a tick whose short window is this unlikely under the baseline is
            a fault in the making and is not learned.
        prior_failure_rate, prior_weight: the baseline before any data, as a Beta prior worth
            ``prior_weight`` calls.
        min_failure_threshold, max_failure_threshold: bounds of the learned run length.
        latency_quantile: the latency quantile learned (p99).
        slow_factor: a call is slow above ``slow_factor`` times the learned quantile.
        min_slow_call_duration, max_slow_call_duration: bounds of the slow-call duration; the
            maximum is also the duration used until the latency is learned.
        latency_warmup: latency samples (decayed weight) needed before the quantile is used.
        samples_per_tick: calls timed after each tick while the fast path is on (0: none).
        initial_open_duration: seconds open after a trip from closed.
        open_growth: factor applied to the open duration after each failed trial round; the
            cap is the core config's ``recovery_timeout``.
        decision_change: relative change of a learned value that is worth a
            :class:`~.controller.Decision` event (and a config swap).
    """

    half_life: float = 60.0
    significance: float = 1e-6
    run_significance: float = 1e-9
    suspect_significance: float = 1e-3
    prior_failure_rate: float = 0.2
    prior_weight: float = 50.0
    min_failure_threshold: int = 5
    max_failure_threshold: int = 50
    latency_quantile: float = 0.99
    slow_factor: float = 2.0
    min_slow_call_duration: float = 0.005
    max_slow_call_duration: float = 30.0
    latency_warmup: float = 50.0
    samples_per_tick: int = 8
    initial_open_duration: float = 0.25
    open_growth: float = 2.0
    decision_change: float = 0.2

    def __post_init__(self) -> None:
        check_float("half_life", self.half_life, positive=True)
        for name in ("significance", "run_significance", "suspect_significance"):
            value = check_float(name, getattr(self, name))
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        rate = check_float("prior_failure_rate", self.prior_failure_rate)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"prior_failure_rate must be in (0, 1), got {rate!r}")
        check_float("prior_weight", self.prior_weight, positive=True)
        low = check_int("min_failure_threshold", self.min_failure_threshold, minimum=1)
        high = check_int("max_failure_threshold", self.max_failure_threshold, minimum=1)
        if high < low:
            raise ValueError(
                f"max_failure_threshold ({high!r}) must be >= min_failure_threshold ({low!r})"
            )
        q = check_float("latency_quantile", self.latency_quantile)
        if not 0.5 <= q < 1.0:
            raise ValueError(f"latency_quantile must be in [0.5, 1), got {q!r}")
        check_float("slow_factor", self.slow_factor, minimum=1.0)
        slow_low = check_float("min_slow_call_duration", self.min_slow_call_duration, positive=True)
        slow_high = check_float(
            "max_slow_call_duration", self.max_slow_call_duration, positive=True
        )
        if slow_high < slow_low:
            raise ValueError(
                f"max_slow_call_duration ({slow_high!r}) must be >= "
                f"min_slow_call_duration ({slow_low!r})"
            )
        check_float("latency_warmup", self.latency_warmup, minimum=1.0)
        check_int("samples_per_tick", self.samples_per_tick, minimum=0)
        check_float("initial_open_duration", self.initial_open_duration, positive=True)
        check_float("open_growth", self.open_growth, minimum=1.0)
        check_float("decision_change", self.decision_change, minimum=0.0)


ADAPTIVE_BREAKER_DEFAULTS = CircuitBreakerConfig(
    failure_threshold=13,
    recovery_timeout=1.0,
    success_threshold=2,
    half_open_max_calls=3,
    monitoring_window=2.0,
    window_size=8,
    failure_rate_threshold=0.5,
    minimum_calls=10,
    slow_call_duration=30.0,  # AdaptiveBreakerConfig.max_slow_call_duration
    slow_call_rate_threshold=0.5,
)
"""The core settings an :class:`AdaptiveCircuitBreaker` starts from (see its docstring).

``failure_threshold`` and ``slow_call_duration`` are learned and replaced at runtime;
``recovery_timeout`` is the cap of the growing open duration; the two rate thresholds are the
absolute floors of the significance tests; the window (2 s in 8 buckets) is the short window.
"""


@dataclass(frozen=True, slots=True)
class BreakerBaseline:
    """What an adaptive breaker has learned, at one moment.

    Attributes:
        failure_rate: the baseline failure rate the short window is tested against.
        failure_weight: decayed number of calls behind it (the prior excluded).
        latency: the learned latency quantile in seconds (``None`` until warmed up).
        latency_weight: decayed number of latency samples behind it.
        slow_call_duration: the current slow-call duration.
        failure_threshold: the current run of consecutive failures that trips it.
        open_duration: how long the next trip would keep it open.
    """

    failure_rate: float
    failure_weight: float
    latency: float | None
    latency_weight: float
    slow_call_duration: float
    failure_threshold: int
    open_duration: float


class _TickingWindow(TimeWindow):
    """The breaker's short window; its rotation (once per bucket, on the fast path) is the
    breaker's periodic check."""

    __slots__ = ("_hook",)

    def __init__(
        self, duration: float, buckets: int, *, now: float, hook: Callable[[float], None]
    ) -> None:
        self._hook = hook
        super().__init__(duration, buckets, now=now)

    def rotate(self, now: float) -> None:
        super().rotate(now)
        self._hook(now)


class AdaptiveCircuitBreaker(CircuitBreaker):
    """A circuit breaker that trips when the dependency is *significantly* worse than its norm.

    **Baseline.** Once per tick (a bucket of the short window, 0.25 s by default) the calls and
    failures of the tick are folded into exponentially decayed sums ``N`` and ``F`` with a
    half-life of ``half_life`` (60 s) *in time*, so the baseline forgets at the same pace at 1 or
    1000 calls per second. The baseline rate is the posterior mean under a Beta prior:
    ``p0 = (F + r * w) / (N + w)`` with ``r = prior_failure_rate`` (0.2) and ``w =
    prior_weight`` (50 calls), clamped to [0.001, 0.95]. The prior is deliberately pessimistic:
    before anything is learned, a dependency that fails 20 % of the time is already "normal",
    so a fresh breaker cannot false-trip on a noisy dependency; 50 calls of data outweigh it.
    Latency is learned the same way: timed successes go into an exponentially decayed
    log-bucketed histogram (buckets 10 % wide, as in :mod:`.stats`; the same half-life),
    from which the ``latency_quantile`` (p99) is read; an EWMA of the distribution rather than
    of a per-tick quantile, which from a handful of samples would just be their maximum. A tick
    is learned only while the breaker stayed closed through it and its short window is not
    suspect (see below), so a fault is never learned as normal.

    **When to trip.** Three rules, checked on every failure, on every slow timed call and at
    every tick (:meth:`_should_trip`):

    * *failure rate*: the short window (``monitoring_window`` = 2 s) holds at least
      ``minimum_calls`` (10) calls, at least ``failure_rate_threshold`` (50 %) of them failed,
      and that many failures are significant against ``p0``: ``n * KL(f/n || p0) >=
      ln(1/significance)`` (a one-sided Chernoff bound on the binomial tail, valid for every
      ``n``; ``significance`` 1e-6). A steady 10 % or 20 % of failures never reaches the 50 %
      floor in a window of tens of calls (P(Binom(100, 0.2) >= 50) ~ 2e-11), and in a window of
      ten calls the test needs 10 failures of 10. A jump from 1 % to 60 % passes both.
    * *consecutive failures*: ``failure_threshold`` is learned as the shortest run with
      ``p0 ** k <= run_significance`` (1e-9), clamped to [5, 50]: 9 at 10 %, 13 at 20 %, 5 at
      1 %. At 100 calls/s for a day a 20 % dependency makes such a run with probability < 1 %,
      and an outage trips it after k calls, well within a second at any real load.
    * *slow calls*: a timed call is slow above ``slow_factor`` (2) times the learned p99,
      clamped to [5 ms, 30 s] (30 s until the latency is learned). Trip when the short window
      holds ``minimum_calls`` timed calls, at least ``slow_call_rate_threshold`` (50 %) of them
      slow, significant against ``1 - latency_quantile`` (1 %, an upper bound of the healthy
      slow fraction since the threshold is above the p99). With log-normal latency of spread
      sigma = 0.5 (p99 = 3.2 x median), 2 x p99 is 6.4 x the median: 1e-4 of healthy calls
      are slow, while after a 10x latency collapse 81 % are (with 3 x p99 only 53 %, too close
      to the floor). Below 5 ms event-loop and GC pauses, not the dependency, make calls slow.

    A tick is *suspect* when its short window passes either test at ``suspect_significance``
    (1e-3) without the floors; suspect ticks are not learned.

    Why these numbers: ``half_life`` 60 s holds thousands of calls at ordinary rates (p0 then
    moves by a few percent from noise) yet follows a dependency whose "normal" changes over
    minutes (a deploy, a cache warming up). ``significance`` 1e-6: at 100 calls/s and 20 %
    failures the rate test runs ~10^4 times in ten minutes; even counted as independent (they
    are strongly correlated) that keeps a false trip near 1 %, while an outage still needs only
    ``minimum_calls`` failures. ``suspect_significance`` 1e-3 is looser on purpose: not learning
    a tick costs nothing. ``minimum_calls`` 10 and the 2 s window: a verdict from fewer calls
    is noise; a longer window dilutes an outage with the healthy calls before it (at 100
    calls/s a 2 s window reaches the 50 % floor 0.9 s into an outage; the run rule is faster
    still). ``latency_warmup`` 50: a p99 from fewer samples is merely their maximum.

    **Timing without slowing the fast path.** A closed breaker's successes keep the core's fast
    path (one clock read, one comparison, one increment, no lock). After each tick the fast path
    is switched off for the next ``samples_per_tick`` (8) calls, which go through the timed
    permission protocol and feed the latency statistics: at most 32 timed calls per second
    whatever the load (~1.9 µs each instead of ~0.25 µs, so ~60 µs a second), enough for the
    slow-call test's 10 timed calls within one or two ticks. Durations given to
    :meth:`on_success`/:meth:`on_failure` by any caller of the permission protocol count too
    (0, the default, means "not timed"). The periodic check runs when the fast path rotates a
    window bucket, or on the next timed outcome.

    **How long to stay open.** ``initial_open_duration`` (0.25 s) after a trip from closed,
    times ``open_growth`` (2) after each failed trial round, capped at the config's
    ``recovery_timeout`` (1 s): 0.25, 0.5, 1, 1, ... During a long outage the trials cost
    at most ``half_open_max_calls`` (3) calls a second, and the dependency's return is noticed
    within 1 s (0.5 s on average). A trial round that succeeds closes it and the next trip starts
    at 0.25 s again. ``success_threshold`` (2) successful trials close it: one lucky success in a
    60 %-failing dependency would only reopen it a few calls later, two are rarely both lucky.

    **Decisions.** A :class:`~.controller.Decision` event goes to the listeners when the
    baseline failure rate or the slow-call duration moves by at least ``decision_change`` (20 %:
    the latency buckets are 10 % wide, so a p99 hovering between two neighbouring buckets stays
    quiet), when the run length changes (it is recomputed only once the rate moved that much,
    so it cannot flap at a boundary), and when the open duration changes. The run length and
    the slow-call duration are applied by swapping the config (``dataclasses.replace``), only
    on such a change. Time comes only from the breaker's clock.

    Args:
        name: the breaker's name.
        config: the core settings (default :data:`ADAPTIVE_BREAKER_DEFAULTS`); a time window is
            required. ``failure_threshold`` and ``slow_call_duration`` are learned.
        adaptive: an :class:`AdaptiveBreakerConfig` (default: its defaults).
        clock: time source; listeners: event listeners; overrides: core config fields.
    """

    __slots__ = (
        "_adaptive",
        "_calls_w",
        "_decided",
        "_fail_w",
        "_k_p0",
        "_last_calls",
        "_last_failures",
        "_last_tick",
        "_lat_decay",
        "_lat_w",
        "_lat_weight",
        "_latency",
        "_log_alpha",
        "_log_run",
        "_log_suspect",
        "_next_tick",
        "_p0",
        "_recent",
        "_samples_left",
        "_tick_gen",
        "_tick_width",
        "_timed",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        adaptive: AdaptiveBreakerConfig | None = None,
        clock: Clock | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
        **overrides: Any,
    ) -> None:
        if adaptive is None:
            adaptive = AdaptiveBreakerConfig()
        elif not isinstance(adaptive, AdaptiveBreakerConfig):
            raise TypeError(f"adaptive must be an AdaptiveBreakerConfig, got {adaptive!r}")
        if config is None:
            config = ADAPTIVE_BREAKER_DEFAULTS
        if overrides:
            config = replace(config, **overrides)
        self._adaptive = adaptive
        self._samples_left = 0
        self._reset_learning()
        config = self._learned_config(config, adaptive)
        super().__init__(name, config, clock=clock, listeners=listeners)
        self._last_tick = self._now()
        self._next_tick = self._window.next_boundary
        self._tick_gen = self._gen
        self._remember_initial()

    # -- construction helpers ------------------------------------------------------------------

    def _reset_learning(self) -> None:
        a = self._adaptive
        self._log_alpha = math.log(1.0 / a.significance)
        self._log_run = math.log(a.run_significance)
        self._log_suspect = math.log(1.0 / a.suspect_significance)
        self._fail_w = 0.0
        self._calls_w = 0.0
        self._p0 = a.prior_failure_rate
        self._lat_w = [0.0] * _NBUCKETS
        self._lat_weight = 0.0
        self._lat_decay = 1.0
        self._latency: float | None = None
        self._recent = [0] * _NBUCKETS
        self._last_calls = 0
        self._last_failures = 0
        self._tick_gen = -1
        self._k_p0 = self._p0
        # The last value announced per setting, for "changed materially".
        self._decided: dict[str, float] = {}

    def _remember_initial(self) -> None:
        """The starting values, so that only later changes are announced."""
        config = self.config
        self._decided = {
            "baseline_failure_rate": self._p0,
            "failure_threshold": float(config.failure_threshold or 0),
            "slow_call_duration": config.slow_call_duration or 0.0,
            "open_duration": self._open_duration_for(1),
        }

    def _run_length(self, p0: float) -> int:
        a = self._adaptive
        k = math.ceil(self._log_run / math.log(p0))
        return min(max(k, a.min_failure_threshold), a.max_failure_threshold)

    def _learned_config(
        self, config: CircuitBreakerConfig, adaptive: AdaptiveBreakerConfig
    ) -> CircuitBreakerConfig:
        """``config`` with the learned settings in, after checking it suits this breaker."""
        if not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        if config.window_type is not WindowType.TIME:
            raise ValueError("window_type must be TIME for an adaptive breaker")
        if adaptive.initial_open_duration > config.recovery_timeout:
            raise ValueError(
                f"initial_open_duration ({adaptive.initial_open_duration!r}) must be <= "
                f"recovery_timeout ({config.recovery_timeout!r}), the cap of the open duration"
            )
        slow = self._latency_threshold() if self._latency is not None else None
        if slow is None:
            slow = adaptive.max_slow_call_duration
        k = self._run_length(self._k_p0)
        if config.failure_threshold == k and config.slow_call_duration == slow:
            return config
        return replace(config, failure_threshold=k, slow_call_duration=slow)

    def _make_window(self, config: CircuitBreakerConfig, now: float) -> Window:  # type: ignore[override]
        buckets = config.window_size or 10
        self._timed = TimeWindow(config.monitoring_window, buckets, now=now)
        self._tick_width = config.monitoring_window / buckets
        return _TickingWindow(config.monitoring_window, buckets, now=now, hook=self._maybe_tick)

    # -- the fast path -------------------------------------------------------------------------

    def _refresh_fast(self) -> None:
        """The core's condition, except that a learned slow-call duration does not turn the fast
        path off (calls are timed by sampling instead) and a sampling run does."""
        fast = (
            GIL_ENABLED
            and self._state is _CLOSED
            and self._window.fast_path
            and not self._listeners
            and self._samples_left <= 0
        )
        self._fast_gen = self._gen if fast else -1

    # -- outcomes ------------------------------------------------------------------------------

    def on_success(self, permit: int, duration: float = 0.0) -> None:
        """Report a success; a duration > 0 is a latency sample."""
        if duration > 0.0:
            self._observe(duration, failed=False)
        super().on_success(permit, duration)
        self._after_outcome()

    def on_failure(
        self, permit: int, duration: float = 0.0, exception: BaseException | None = None
    ) -> None:
        """Report a failure; a duration > 0 is a timed call (slow or not)."""
        if duration > 0.0:
            self._observe(duration, failed=True)
        super().on_failure(permit, duration, exception)
        self._after_outcome()

    def _observe(self, duration: float, *, failed: bool) -> None:
        now = self._now()
        threshold = self.config.slow_call_duration
        slow = threshold is not None and duration >= threshold
        if failed:
            self._timed.record_failure(now, slow)
        else:
            self._timed.record_success(now, slow)
            if self._state is _CLOSED:
                self._recent[_bucket_of(duration)] += 1

    def _after_outcome(self) -> None:
        left = self._samples_left
        if left > 0:
            self._samples_left = left - 1
            if left == 1:
                with self._lock:
                    self._refresh_fast()
        now = self._now()
        if now >= self._next_tick:
            self._maybe_tick(now)

    # -- when to trip --------------------------------------------------------------------------

    def _should_trip(self, now: float) -> str:
        """A significant run of failures, failure rate or slow-call rate (lock held)."""
        config = self.config
        k = config.failure_threshold
        if (
            k is not None
            and self._consecutive >= k
            # The run is current only if no success came after its last failure.
            and self._base_successes + self._window.total_successes == self._successes_at_failure
        ):
            return "consecutive_failures"
        minimum = config.minimum_calls
        snap = self._window.snapshot(now)
        n = snap.calls
        if n >= minimum:
            floor = config.failure_rate_threshold
            f = snap.failures
            if (floor is None or f / n >= floor) and significant(f, n, self._p0, self._log_alpha):
                return "failure_rate_above_baseline"
        slow_floor = config.slow_call_rate_threshold
        if slow_floor is not None:
            timed = self._timed.snapshot(now)
            t = timed.calls
            if (
                t >= minimum
                and timed.slow_calls / t >= slow_floor
                and significant(timed.slow_calls, t, self._slow_baseline(), self._log_alpha)
            ):
                return "slow_calls_above_baseline"
        return ""

    def _slow_baseline(self) -> float:
        return 1.0 - self._adaptive.latency_quantile

    def _suspect(self, now: float) -> bool:
        """Whether the short window is unlikely under the baseline (no floors): not learned."""
        snap = self._window.snapshot(now)
        if significant(snap.failures, snap.calls, self._p0, self._log_suspect):
            return True
        timed = self._timed.snapshot(now)
        return significant(timed.slow_calls, timed.calls, self._slow_baseline(), self._log_suspect)

    def _open_duration(self) -> float:
        """``initial_open_duration * open_growth ** (failed rounds)``, capped at
        ``recovery_timeout``."""
        return self._open_duration_for(self._opens_in_a_row)

    def _open_duration_for(self, opens_in_a_row: int) -> float:
        a = self._adaptive
        cap = self.config.recovery_timeout
        rounds = max(opens_in_a_row, 1) - 1
        if rounds > 64:
            return cap
        d = a.initial_open_duration * a.open_growth**rounds
        return d if d < cap else cap

    # -- the state controller ------------------------------------------------------------------

    def _transition(
        self,
        to: CircuitState,
        now: float,
        reason: str,
        pending: _Pending,
    ) -> None:
        super()._transition(to, now, reason, pending)
        if to is _CLOSED:
            self._timed.clear(now)
        elif to is _OPEN:
            self._decide(
                pending,
                now,
                "open_duration",
                self._open_until - now,
                {"opens_in_a_row": float(self._opens_in_a_row)},
                material=True,
            )

    def _decide(
        self,
        pending: _Pending,
        now: float,
        setting: str,
        new: float,
        inputs: dict[str, float],
        *,
        material: bool = False,
    ) -> bool:
        """Queue a Decision if ``setting`` moved materially since it was last announced."""
        old = self._decided.get(setting)
        if old is not None:
            if new == old:
                return False
            if not material and abs(new - old) < self._adaptive.decision_change * abs(old):
                return False
        self._decided[setting] = new
        if self._listeners:
            pending.append(
                Decision(
                    policy=self.name,
                    time=now,
                    controller="adaptive_breaker",
                    setting=setting,
                    old=new if old is None else old,
                    new=new,
                    inputs=inputs,
                )
            )
        return True

    # -- the periodic check --------------------------------------------------------------------

    def _maybe_tick(self, now: float) -> None:
        """Run the tick if one is due and nobody else holds the lock (else a later call will)."""
        if now < self._next_tick:
            return
        pending: _Pending = []
        if not self._lock.acquire(blocking=False):
            return
        try:
            if now >= self._next_tick:
                width = self._tick_width
                self._next_tick = (math.floor(now / width) + 1) * width
                self._tick(now, pending)
        finally:
            self._lock.release()
        self._deliver(pending)

    def _tick(self, now: float, pending: _Pending) -> None:
        """Learn from the last tick, retune, check, and re-arm sampling (lock held)."""
        a = self._adaptive
        dt = now - self._last_tick
        self._last_tick = now
        window = self._window
        failures = self._base_failures + window.total_failures
        calls = self._base_successes + window.total_successes + failures
        d_calls = calls - self._last_calls
        d_failures = failures - self._last_failures
        self._last_calls, self._last_failures = calls, failures
        recent, self._recent = self._recent, [0] * _NBUCKETS
        healthy = (
            self._state is _CLOSED
            and self._gen == self._tick_gen
            and dt > 0.0
            and not self._suspect(now)
        )
        self._tick_gen = self._gen
        if healthy:
            decay = 2.0 ** (-dt / a.half_life)
            self._fail_w = self._fail_w * decay + d_failures
            self._calls_w = self._calls_w * decay + d_calls
            self._learn_latency(recent, decay)
        self._retune(now, pending)
        if self._state is _CLOSED:
            reason = self._should_trip(now)
            if reason:
                self._transition(_OPEN, now, reason, pending)
                return
        self._samples_left = a.samples_per_tick
        self._refresh_fast()

    def _learn_latency(self, recent: list[int], decay: float) -> None:
        self._lat_decay *= decay
        n = sum(recent)
        if n == 0:
            return
        d = self._lat_decay
        self._lat_decay = 1.0
        self._lat_w = [w * d + c for w, c in zip(self._lat_w, recent, strict=True)]
        self._lat_weight = self._lat_weight * d + n
        if self._lat_weight < self._adaptive.latency_warmup:
            return
        rank = self._adaptive.latency_quantile * self._lat_weight
        seen = 0.0
        for i, w in enumerate(self._lat_w):
            seen += w
            if seen >= rank:
                self._latency = _bucket_value(i)
                return
        self._latency = _bucket_value(_NBUCKETS - 1)

    def _latency_threshold(self) -> float | None:
        latency = self._latency
        if latency is None:
            return None
        a = self._adaptive
        value = a.slow_factor * latency
        if value < a.min_slow_call_duration:
            return a.min_slow_call_duration
        if value > a.max_slow_call_duration:
            return a.max_slow_call_duration
        return value

    def _retune(self, now: float, pending: _Pending) -> None:
        a = self._adaptive
        w = a.prior_weight
        p0 = (self._fail_w + a.prior_failure_rate * w) / (self._calls_w + w)
        p0 = min(max(p0, 0.001), 0.95)
        self._p0 = p0
        self._decide(
            pending,
            now,
            "baseline_failure_rate",
            p0,
            {"calls": self._calls_w, "failures": self._fail_w},
        )
        config = self.config
        changes: dict[str, Any] = {}
        # The run length moves only once the rate behind it moved materially (no flapping
        # between two lengths while p0 hovers at a boundary).
        if abs(p0 - self._k_p0) >= a.decision_change * self._k_p0:
            k = self._run_length(p0)
            self._k_p0 = p0
            if k != config.failure_threshold:
                self._decide(
                    pending,
                    now,
                    "failure_threshold",
                    float(k),
                    {"baseline_failure_rate": p0},
                    material=True,
                )
                changes["failure_threshold"] = k
        slow = self._latency_threshold()
        if (
            slow is not None
            and config.slow_call_duration is not None
            and abs(slow - config.slow_call_duration)
            >= a.decision_change * config.slow_call_duration
            and self._decide(
                pending,
                now,
                "slow_call_duration",
                slow,
                {"latency": self._latency or 0.0, "samples": self._lat_weight},
                material=True,
            )
        ):
            changes["slow_call_duration"] = slow
        if changes:
            # The window's shape is unchanged, so this is what update_config would do.
            self.config = replace(config, **changes)

    # -- public --------------------------------------------------------------------------------

    @property
    def adaptive(self) -> AdaptiveBreakerConfig:
        """The learning settings."""
        return self._adaptive

    def baseline(self) -> BreakerBaseline:
        """What the breaker has learned so far."""
        with self._lock:
            config = self.config
            return BreakerBaseline(
                failure_rate=self._p0,
                failure_weight=self._calls_w,
                latency=self._latency,
                latency_weight=self._lat_weight,
                slow_call_duration=config.slow_call_duration or 0.0,
                failure_threshold=config.failure_threshold or 0,
                open_duration=self._open_duration_for(
                    self._opens_in_a_row + (self._state is _HALF_OPEN)
                ),
            )

    def update_config(self, config: CircuitBreakerConfig) -> None:
        """Swap in new core settings; the learned ones (run length, slow-call duration) stay."""
        super().update_config(self._learned_config(config, self._adaptive))

    def reset(self) -> None:
        """Close the breaker, zero every count and forget what was learned."""
        super().reset()
        with self._lock:
            self._reset_learning()
            self._last_tick = self._now()
            self._tick_gen = self._gen
            self._samples_left = 0
            self.config = self._learned_config(self.config, self._adaptive)
            self._remember_initial()
            self._refresh_fast()

    def __repr__(self) -> str:
        return f"AdaptiveCircuitBreaker(name={self.name!r}, state={self._state.value})"


def adaptive_breaker(
    name: str,
    config: CircuitBreakerConfig | None = None,
    *,
    adaptive: AdaptiveBreakerConfig | None = None,
    registry: Registry | None = None,
    clock: Clock | None = None,
    listeners: tuple[Listener, ...] | list[Listener] = (),
) -> AdaptiveCircuitBreaker:
    """The adaptive breaker named ``name`` in ``registry`` (default ``breaker_manager``),
    created on first use; it decorates functions like any breaker.

    A name held by another kind of policy, or by an adaptive breaker with other settings given
    here, is a ``ValueError``.
    """
    from ..core import breaker_manager  # noqa: PLC0415 - the default at call time

    target = breaker_manager if registry is None else registry
    while True:
        existing = target.get(name)
        if existing is not None:
            if not isinstance(existing, AdaptiveCircuitBreaker):
                raise ValueError(
                    f"{name!r} is registered as a {type(existing).__name__}, "
                    "not an adaptive breaker"
                )
            if adaptive is not None and existing.adaptive != adaptive:
                raise ValueError(f"{name!r} is already registered with other adaptive settings")
            breaker = existing
            break
        breaker = AdaptiveCircuitBreaker(name, config, adaptive=adaptive, clock=clock)
        try:
            target.register(breaker)
        except ValueError:
            continue  # registered by another thread meanwhile: use that one
        break
    for listener in listeners:
        breaker.add_listener(listener)
    return breaker
