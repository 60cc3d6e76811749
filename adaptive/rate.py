"""Adaptive request rates for throttled APIs: AIMD and CUBIC driving a token bucket.

Both read one :class:`RateSample` per update (every tick, ~0.5 s): how many requests were sent
in the last ``window`` seconds and how many of them the provider throttled (429, "slow down"),
with the longest retry-after hint among those answers. The setting is ``"rate"`` (requests per
second) for :meth:`RateLimiter.set_rate <sage_resilience.core.RateLimiter.set_rate>`.

**Dormant until throttled.** Like botocore's adaptive mode, a controller imposes no rate until
the provider first throttles: until then ``active`` is ``False`` and ``value`` is
``bounds.maximum`` (``inf`` by default), which means "leave the bucket unlimited". The first
throttle sets a rate from what was measured, and the controller stays active from then on.

**Retry-after hints.** A hint of ``h`` seconds on a throttled answer means "the provider will
not accept more until ``h`` seconds from now". The controller computes its post-throttle rate as
usual, and for the next ``h`` seconds caps its value at ``1 / h`` (one request per hinted
interval; the bounds' minimum still wins) and holds: neither increases, nor decreases on the
throttles that answer requests sent before the hint (they are echoes of the same overload, and
extend the hold if they carry a hint of their own). When the hold ends the value returns to the
post-throttle rate and growth resumes. The retry layer honours the hint for the throttled
request itself; this keeps the bucket from refilling other callers meanwhile.

One throttled window yields one decrease, however many answers in it were throttled (TCP
reduces once per round trip): the tick interval sets how fast a controller can back off.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..core._validate import check_float, check_int, check_optional_float
from ._bounded import BoundedController, check_bounds
from .controller import Bounds

__all__ = ["AIMDRate", "CubicRate", "DEFAULT_RATE_BOUNDS", "RateSample"]

DEFAULT_RATE_BOUNDS = Bounds(0.5, math.inf)
"""botocore's minimum fill rate (0.5 requests/s); no maximum: the dormant value is ``inf``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RateSample:
    """Requests over the last ``window`` seconds, ending at ``now``.

    Attributes:
        now: the time of the update (the policy's clock, seconds).
        sent: requests sent to the provider in the window (attempts, retries included).
        throttled: how many of those the provider throttled.
        window: the length of the window the counts cover (seconds, > 0).
        retry_after: the longest retry-after hint (seconds) on a throttled answer in the
            window, or ``None``; ``0`` is no hint.
    """

    now: float
    sent: int
    window: float
    throttled: int = 0
    retry_after: float | None = None

    def __post_init__(self) -> None:
        check_float("now", self.now)
        check_int("sent", self.sent, minimum=0)
        check_int("throttled", self.throttled, minimum=0)
        check_float("window", self.window, positive=True)
        check_optional_float("retry_after", self.retry_after, minimum=0.0)

    @property
    def send_rate(self) -> float:
        """Requests sent per second over the window."""
        return self.sent / self.window

    @property
    def accepted_rate(self) -> float:
        """Requests per second the provider accepted (sent and not throttled)."""
        return max(0, self.sent - self.throttled) / self.window


def _check_rate_bounds(bounds: Bounds) -> Bounds:
    if check_bounds(bounds).minimum <= 0:
        raise ValueError(
            f"bounds.minimum must be > 0 (a rate of zero never refills), got {bounds.minimum!r}"
        )
    return bounds


class _HintHold:
    """The retry-after hold both controllers share: until when, and the cap meanwhile."""

    __slots__ = ("cap", "until")

    def __init__(self) -> None:
        self.until = -math.inf
        self.cap = math.inf

    def active(self, now: float) -> bool:
        return now < self.until

    def start(self, now: float, hint: float | None) -> None:
        if hint is None or hint <= 0.0:
            return
        if self.active(now):
            self.cap = min(self.cap, 1.0 / hint)
            self.until = max(self.until, now + hint)
        else:
            self.cap = 1.0 / hint
            self.until = now + hint

    def apply(self, now: float, rate: float) -> float:
        return min(rate, self.cap) if self.active(now) else rate


class AIMDRate(BoundedController):
    """Additive increase, multiplicative decrease of the request rate.

    On a window with a throttle the rate becomes ``decrease * min(rate, accepted_rate)``:
    what the provider accepted in the window is an estimate of its limit, so a single throttled
    window brings the rate just under the limit however far above it the rate was (a plain
    ``rate *= decrease`` needs ``log(overshoot) / -log(decrease)`` throttled windows). Otherwise
    the rate grows by ``increase`` requests/s per second of ``now`` elapsed, while the caller
    uses at least half of it (``send_rate * 2 >= rate``; TCP's congestion-window validation, so
    an idle caller does not accumulate a rate it never tested). The result saw-tooths between
    ``decrease`` times the limit and the limit (Chiu and Jain 1989: AIMD converges to an
    efficient, fair share). ``decrease`` 0.9 (Netflix's AIMD backoff): since the decrease starts
    from the measured limit rather than from an overshoot, a gentle step suffices, and the rate
    averages ~95 % of the limit where 0.7 would average ~85 %. ``increase`` 0.5/s per second
    closes that 10 % gap in ``0.2 * limit`` seconds (10 s at 50/s); against a provider's token
    bucket with 1 s of burst the throttled share stayed under 2 % for limits from 10/s up
    (1/s per second gave 3 % at 10/s). Raise it for limits in the hundreds.

    ``estimate_window`` (seconds, 0 by default: the throttled window alone) measures the
    accepted rate over the samples of that many seconds instead: a tick holds a few dozen
    requests, whose count alone is noisy enough (±30 % at 50/s in 0.25 s) to cut the rate well
    below the limit now and then.

    ``probe_after`` (seconds, 0 by default: never) switches the increase, after that long
    without a throttle, to ``probe_growth`` times the rate per second (when that is more than
    ``increase``): the provider's limit may have been raised or lifted, and a fixed step of 1/s
    would take minutes to find a limit ten times higher.

    ``initial=None`` (the default) starts dormant; a number starts active at that rate.
    """

    __slots__ = (
        "_accepted",
        "_active",
        "_base",
        "_hold",
        "_last_now",
        "_recent",
        "_throttled_at",
        "decrease",
        "estimate_window",
        "increase",
        "probe_after",
        "probe_growth",
    )

    def __init__(
        self,
        *,
        name: str = "aimd_rate",
        bounds: Bounds = DEFAULT_RATE_BOUNDS,
        initial: float | None = None,
        increase: float = 0.5,
        decrease: float = 0.9,
        estimate_window: float = 0.0,
        probe_after: float = 0.0,
        probe_growth: float = 0.1,
    ) -> None:
        bounds = _check_rate_bounds(bounds)
        start = bounds.maximum if initial is None else initial
        super().__init__(name=name, setting="rate", bounds=bounds, initial=start)
        self.increase = check_float("increase", increase, positive=True)
        self.decrease = check_float("decrease", decrease, positive=True)
        if self.decrease >= 1.0:
            raise ValueError(f"decrease must be in (0, 1), got {decrease!r}")
        self.estimate_window = check_float("estimate_window", estimate_window, minimum=0.0)
        self.probe_after = check_float("probe_after", probe_after, minimum=0.0)
        self.probe_growth = check_float("probe_growth", probe_growth, positive=True)
        self._throttled_at = -math.inf
        self._active = initial is not None
        self._base = self._value
        # The samples of the last estimate_window seconds: (now, accepted, window).
        self._recent: deque[tuple[float, float, float]] = deque()
        self._hold = _HintHold()
        self._last_now: float | None = None
        self._accepted: float | None = None

    @property
    def active(self) -> bool:
        """Whether a rate is imposed (``False`` until the first throttle unless ``initial``)."""
        return self._active

    def update(self, snapshot: RateSample) -> float | None:
        now = snapshot.now
        last = self._last_now
        elapsed = snapshot.window if last is None else max(0.0, now - last)
        self._last_now = now
        if last is None:
            self._throttled_at = now  # the quiet spell counts from the first update
        hold = self._hold
        accepted = self._accepted_rate(snapshot)
        if snapshot.throttled:
            if hold.active(now):
                hold.start(now, snapshot.retry_after)
            else:
                if not self._active:
                    # Unlimited until now, the caller rode the provider's burst allowance,
                    # which this window may still hold: it alone gives the first estimate, and
                    # the estimate window starts after it.
                    accepted = snapshot.accepted_rate
                    self._recent.clear()
                self._accepted = accepted
                current = self._base if self._active else math.inf
                self._base = self.bounds.clamp(self.decrease * min(current, accepted))
                self._active = True
                hold.start(now, snapshot.retry_after)
            self._throttled_at = now
        elif self._active and not hold.active(now) and snapshot.send_rate * 2.0 >= self._base:
            step = self.increase
            if self.probe_after > 0.0 and now - self._throttled_at >= self.probe_after:
                # Quiet for a while: the provider's limit may have been raised or lifted, so
                # grow by a share of the rate (as a slow start would) rather than a fixed step.
                step = max(step, self.probe_growth * self._base)
            self._base = self.bounds.clamp(self._base + step * elapsed)
        if not self._active:
            return None
        return self._propose(hold.apply(now, self._base))

    def _accepted_rate(self, snapshot: RateSample) -> float:
        """The accepted rate over the samples of the last ``estimate_window`` seconds (this
        one included): a tick of a few dozen requests alone is too noisy an estimate."""
        if self.estimate_window <= 0.0:
            return snapshot.accepted_rate
        recent = self._recent
        recent.append((snapshot.now, snapshot.accepted_rate * snapshot.window, snapshot.window))
        horizon = snapshot.now - self.estimate_window
        while len(recent) > 1 and recent[0][0] - recent[0][2] < horizon:
            recent.popleft()
        return sum(r[1] for r in recent) / sum(r[2] for r in recent)

    def inputs(self, snapshot: RateSample) -> dict[str, float]:
        """The window's counts and rates, and the hold's cap while one is in force."""
        out = _rate_inputs(snapshot)
        if self._accepted is not None:
            out["limit_estimate"] = self._accepted
        if self._hold.active(snapshot.now):
            out["hint_cap"] = self._hold.cap
            out["hold_until"] = self._hold.until
        return out


def _rate_inputs(snapshot: RateSample) -> dict[str, float]:
    out = {
        "sent": float(snapshot.sent),
        "throttled": float(snapshot.throttled),
        "window": snapshot.window,
        "send_rate": snapshot.send_rate,
    }
    if snapshot.retry_after is not None:
        out["retry_after"] = snapshot.retry_after
    return out


class CubicRate(BoundedController):
    """botocore's adaptive mode: TCP CUBIC's window curve applied to the request rate.

    The measured send rate is smoothed per update, ``m = 0.8 * send_rate + 0.2 * m`` (botocore
    does this in 0.5 s buckets: tick at ~0.5 s to match; the first update takes the send rate
    as it is). On a throttle, ``W_max = min(m, rate)`` is remembered as the rate the provider
    refused, the rate drops to ``beta * W_max``, and ``K = cbrt(W_max (1 - beta) / C)`` is the
    time the curve needs to climb back. After that ``rate = C (t - t_throttle - K)^3 + W_max``:
    fast at first, flat near ``W_max`` (where the provider last refused) so the rate lingers
    just under the limit, then accelerating beyond it to probe for more (Ha, Rhee and Xu 2008).
    The rate never exceeds ``2 * m``, so it cannot run away while the caller sends little.
    ``C`` 0.4 and ``beta`` 0.7 are botocore's.

    The controller is dormant (``active`` False, ``value`` the bounds' maximum) until the first
    throttle, at which ``W_max`` is the measured rate alone.
    """

    __slots__ = (
        "_active",
        "_hold",
        "_k",
        "_measured",
        "_rate",
        "_t_throttle",
        "_w_max",
        "beta",
        "scale",
    )

    def __init__(
        self,
        *,
        name: str = "cubic",
        bounds: Bounds = DEFAULT_RATE_BOUNDS,
        scale: float = 0.4,
        beta: float = 0.7,
    ) -> None:
        bounds = _check_rate_bounds(bounds)
        super().__init__(name=name, setting="rate", bounds=bounds, initial=bounds.maximum)
        self.scale = check_float("scale", scale, positive=True)
        self.beta = check_float("beta", beta, positive=True)
        if self.beta >= 1.0:
            raise ValueError(f"beta must be in (0, 1), got {beta!r}")
        self._active = False
        self._hold = _HintHold()
        self._measured: float | None = None
        self._rate = bounds.maximum
        self._w_max = 0.0
        self._k = 0.0
        self._t_throttle = 0.0

    @property
    def active(self) -> bool:
        """Whether a rate is imposed (``False`` until the first throttle)."""
        return self._active

    @property
    def measured_rate(self) -> float:
        """The smoothed send rate ``m`` (0 before the first update)."""
        return 0.0 if self._measured is None else self._measured

    @property
    def w_max(self) -> float:
        """The rate at the last throttle (0 before one)."""
        return self._w_max

    @property
    def k(self) -> float:
        """Seconds the curve takes from the last throttle back to ``w_max``."""
        return self._k

    def update(self, snapshot: RateSample) -> float | None:
        now = snapshot.now
        previous = self._measured
        send_rate = snapshot.send_rate
        measured = send_rate if previous is None else 0.8 * send_rate + 0.2 * previous
        self._measured = measured
        hold = self._hold
        if hold.active(now):
            if snapshot.throttled:
                hold.start(now, snapshot.retry_after)
                self._t_throttle = max(self._t_throttle, hold.until)
            return self._propose(hold.apply(now, self._rate))
        if snapshot.throttled:
            w_max = min(measured, self._rate) if self._active else measured
            self._w_max = w_max
            self._k = math.cbrt(w_max * (1.0 - self.beta) / self.scale)
            self._t_throttle = now
            rate = w_max * self.beta
            self._active = True
            hold.start(now, snapshot.retry_after)
            if hold.active(now):
                # The curve starts when the provider is ready again, from beta * W_max.
                self._t_throttle = hold.until
        elif self._active:
            d = now - self._t_throttle - self._k
            rate = self.scale * d * d * d + self._w_max  # d**3 would raise on overflow
        else:
            return None
        self._rate = self.bounds.clamp(min(rate, 2.0 * measured))
        return self._propose(hold.apply(now, self._rate))

    def inputs(self, snapshot: RateSample) -> dict[str, float]:
        """The window's counts, ``m``, ``W_max``, ``K`` and the time since the last throttle."""
        out = _rate_inputs(snapshot)
        out["measured_rate"] = self.measured_rate
        if self._active:
            out["w_max"] = self._w_max
            out["k"] = self._k
            out["since_throttle"] = snapshot.now - self._t_throttle
        if self._hold.active(snapshot.now):
            out["hint_cap"] = self._hold.cap
            out["hold_until"] = self._hold.until
        return out
