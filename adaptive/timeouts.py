"""An adaptive per-attempt timeout: a high latency quantile times a factor, clamped.

:class:`AdaptiveTimeout` reads a :class:`TimeoutSample` (the ``quantile`` of recent latencies
and how many latencies it summarises) and sets ``"timeout"`` (seconds) to
``clamp(latency * factor, minimum, maximum)``, smoothed. Build the sample with
:meth:`AdaptiveTimeout.sample` from a :class:`~sage_resilience.adaptive.stats.LatencyHistogram`
(for instance ``RollingHistogram.snapshot(now)``), so the quantile is the controller's own.

Record attempts that timed out in that histogram too, with their elapsed time (the timeout):
left out, the histogram sees only the calls fast enough to finish, its quantile stays low
while the dependency slows down, and the timeout would cut ever more calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core._validate import check_float, check_int, check_optional_float
from ._bounded import BoundedController, check_bounds
from .controller import Bounds
from .stats import LatencyHistogram

__all__ = ["AdaptiveTimeout", "DEFAULT_TIMEOUT_BOUNDS", "TimeoutSample"]

DEFAULT_TIMEOUT_BOUNDS = Bounds(0.01, 30.0)
"""10 ms (below it network jitter alone would time calls out) to 30 s (a call still running after
that is better abandoned whatever the statistics say)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutSample:
    """Recent latencies, summarised at ``now``.

    Attributes:
        now: the time of the update (the policy's clock, seconds).
        latency: the controller's quantile of the recent latencies (seconds), or ``None``
            when there are none.
        samples: how many latencies it summarises.
    """

    now: float
    latency: float | None
    samples: int

    def __post_init__(self) -> None:
        check_float("now", self.now)
        check_optional_float("latency", self.latency, minimum=0.0)
        check_int("samples", self.samples, minimum=0)


class AdaptiveTimeout(BoundedController):
    """``timeout = clamp(quantile(q) * factor)``: a little longer than almost every call takes.

    The timeout only has to cut calls that will not come back in useful time; with ``q`` 0.99
    and ``factor`` 2 (the defaults) a healthy dependency sees about one attempt in a thousand or
    fewer timed out (those slower than twice its p99), while a hung call is abandoned within two
    p99s instead of a fixed worst case, and the freed slot and the retry go to a call that can
    succeed (the "hedge at the tail" reasoning of Dean and Barroso, "The Tail at Scale", 2013).

    Smoothing is asymmetric, in time rather than in updates: the value rises toward a larger
    target with half-life ``rise_half_life`` (0 by default: at once, because a timeout too short
    for a slower dependency times out healthy calls, and their retries add load just when it
    hurts), and falls toward a smaller one with half-life ``fall_half_life`` (10 s), so one
    fast spell does not leave a timeout too tight for the next slow one:
    ``value += (target - value) * (1 - 2 ** (-dt / half_life))``. The value therefore rides the
    upper envelope of recent targets: with per-second histograms of ~1000 calls it sat 10 to
    20 % above twice the true p99 (the estimate's noise plus the histogram's bucket error).
    The first usable sample sets the value outright. With fewer than ``min_samples`` latencies
    (20; below ~100 a p99 is the largest value seen, which errs long, the safe side) the value
    holds. A change smaller than ``min_change`` of the value (1 %) is not made, so a value
    gliding toward its target does not emit a decision every tick.

    ``initial`` (default: the bounds' maximum) is used until enough latencies are seen.
    """

    __slots__ = (
        "_last_now",
        "_target",
        "factor",
        "fall_half_life",
        "min_change",
        "min_samples",
        "quantile",
        "rise_half_life",
    )

    def __init__(
        self,
        *,
        name: str = "timeout",
        bounds: Bounds = DEFAULT_TIMEOUT_BOUNDS,
        initial: float | None = None,
        quantile: float = 0.99,
        factor: float = 2.0,
        min_samples: int = 20,
        rise_half_life: float = 0.0,
        fall_half_life: float = 10.0,
        min_change: float = 0.01,
    ) -> None:
        bounds = check_bounds(bounds)
        if bounds.minimum <= 0:
            raise ValueError(f"bounds.minimum must be > 0, got {bounds.minimum!r}")
        start = bounds.maximum if initial is None else initial
        super().__init__(name=name, setting="timeout", bounds=bounds, initial=start)
        self.quantile = check_float("quantile", quantile, positive=True, maximum=1.0)
        self.factor = check_float("factor", factor, positive=True)
        self.min_samples = check_int("min_samples", min_samples, minimum=1)
        self.rise_half_life = check_float("rise_half_life", rise_half_life, minimum=0.0)
        self.fall_half_life = check_float("fall_half_life", fall_half_life, minimum=0.0)
        self.min_change = check_float("min_change", min_change, minimum=0.0, maximum=1.0)
        self._last_now: float | None = None
        self._target: float | None = None

    def sample(self, now: float, histogram: LatencyHistogram) -> TimeoutSample:
        """This controller's snapshot of ``histogram``: its ``quantile`` and its count."""
        return TimeoutSample(
            now=now, latency=histogram.quantile(self.quantile), samples=histogram.n
        )

    def update(self, snapshot: TimeoutSample) -> float | None:
        latency = snapshot.latency
        if latency is None or snapshot.samples < self.min_samples:
            return None
        target = self.bounds.clamp(latency * self.factor)
        self._target = target
        value = self._value
        last = self._last_now
        self._last_now = snapshot.now
        if last is None:
            return self._propose(target)
        half_life = self.rise_half_life if target > value else self.fall_half_life
        if half_life > 0.0:
            dt = snapshot.now - last
            if dt <= 0.0:
                return None
            target = value + (target - value) * (1.0 - 2.0 ** (-dt / half_life))
        if abs(target - value) < self.min_change * value:
            return None
        return self._propose(target)

    def inputs(self, snapshot: TimeoutSample) -> dict[str, float]:
        """The sample, the quantile and factor, and the unsmoothed target of the last update."""
        out = {
            "samples": float(snapshot.samples),
            "quantile": self.quantile,
            "factor": self.factor,
        }
        if snapshot.latency is not None:
            out["latency"] = snapshot.latency
        if self._target is not None:
            out["target"] = self._target
        return out
