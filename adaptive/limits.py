"""Adaptive concurrency limits: how many calls may be in flight to a dependency.

Three algorithms from Netflix's ``concurrency-limits`` (``limit/AIMDLimit.java``,
``VegasLimit.java``, ``Gradient2Limit.java``), implemented from their formulas. Each reads one
:class:`LimitSample` per window of calls and returns the new limit, clamped to its bounds, or
``None`` when the limit does not change. The setting is ``"limit"``, a float: a bulkhead that
counts whole calls uses ``max(1, int(limit))``.

**Windows.** A sample summarises the calls that completed since the previous one (Netflix's
``WindowedLimit``): ``rtt`` is the *mean* round-trip time of the calls that completed normally
(Netflix's default ``AverageSampleWindow``; a p50 works as well if used consistently, since
Vegas and Gradient2 compare a window's rtt only with rtts of other windows), ``inflight`` the
largest number of calls in flight seen during the window, ``dropped`` whether any call was
dropped (timed out, or refused by the dependency as overloaded), ``samples`` how many calls the
rtt averages. Dropped calls never enter ``rtt``: a refusal is fast and a timeout is censored, so
either would misstate the dependency's latency. The windowing rules of the source hold here:

* a window whose ``samples`` is below ``min_samples`` (10) teaches nothing about latency (the
  controller holds its limit), but a drop in it still counts, so a window in which every call
  timed out still lowers an AIMD or Vegas limit;
* calls faster than 100 µs are not latency samples (cache hits, local short-cuts): the caller
  leaves them out; :class:`LimitWindow` does both and builds the samples from per-call records.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..core._gil import GIL_ENABLED
from ..core._validate import check_float, check_int
from ._bounded import BoundedController
from .controller import Bounds

__all__ = [
    "AIMDLimit",
    "DEFAULT_LIMIT_BOUNDS",
    "Gradient2Limit",
    "LimitSample",
    "LimitWindow",
    "VegasLimit",
]

DEFAULT_LIMIT_BOUNDS = Bounds(1.0, 1000.0)
"""Netflix's Vegas bounds (1 to 1000 calls), for all three: the [20, 200] of Netflix's AIMD and
Gradient2 would never let a dependency with ~10 workers hold fewer than 20 calls in flight."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSample:
    """One window of calls, summarised.

    Attributes:
        now: the time the window closed (the policy's clock, seconds).
        rtt: mean round-trip time (seconds) of the ``samples`` calls that completed normally,
            or ``None`` when there were none.
        inflight: the most calls in flight at once during the window (counted when a call
            starts, including itself).
        samples: the number of calls ``rtt`` averages (drops and calls under 100 µs excluded).
        dropped: whether any call in the window timed out or was refused as overloaded.
    """

    now: float
    rtt: float | None
    inflight: int
    samples: int
    dropped: bool = False

    def __post_init__(self) -> None:
        check_float("now", self.now)
        check_int("inflight", self.inflight, minimum=0)
        check_int("samples", self.samples, minimum=0)
        if not isinstance(self.dropped, bool):
            raise TypeError(f"dropped must be a bool, got {self.dropped!r}")
        if self.rtt is None:
            if self.samples:
                raise ValueError(f"rtt is required when samples > 0 (samples={self.samples})")
        else:
            check_float("rtt", self.rtt, positive=True)
            if not self.samples:
                raise ValueError("rtt must be None when samples is 0")


def _sample_inputs(sample: LimitSample) -> dict[str, float]:
    out = {
        "inflight": float(sample.inflight),
        "samples": float(sample.samples),
        "dropped": 1.0 if sample.dropped else 0.0,
    }
    if sample.rtt is not None:
        out["rtt"] = sample.rtt
    return out


def _check_limit_bounds(bounds: Bounds) -> Bounds:
    if isinstance(bounds, Bounds) and bounds.minimum < 1:
        raise ValueError(
            f"bounds.minimum must be >= 1 (a limit below one call admits nothing), "
            f"got {bounds.minimum!r}"
        )
    return bounds


def _check_ratio(name: str, value: object, *, allow_one: bool = True) -> float:
    """A ratio in (0, 1] (or (0, 1) without ``allow_one``)."""
    result = check_float(name, value, positive=True)
    if result > 1 or (result == 1 and not allow_one):
        bound = "1]" if allow_one else "1)"
        raise ValueError(f"{name} must be in (0, {bound}, got {value!r}")
    return result


class AIMDLimit(BoundedController):
    """Additive increase, multiplicative decrease of the concurrency limit.

    On a window with a drop, or whose rtt exceeds ``timeout``, ``L *= backoff``; otherwise, when
    the window used at least half the limit (``inflight * 2 >= L``), ``L += 1``. This is TCP's
    congestion avoidance (Jacobson 1988; Chiu and Jain showed AIMD converges to a fair, efficient
    share): the limit probes upward one call per window until the dependency refuses, then backs
    off by a fraction, so it saw-tooths just under the point where the dependency starts to
    drop. The ``inflight`` test stops the limit growing while the caller is not using it, so an
    idle period does not leave a limit far above what was ever tested. It reads no latency
    shape, only drops: use it where the dependency says "overloaded" clearly (Netflix
    ``AIMDLimit``: backoff 0.9, timeout 5 s).
    """

    __slots__ = ("backoff", "min_samples", "timeout")

    def __init__(
        self,
        *,
        name: str = "aimd",
        bounds: Bounds = DEFAULT_LIMIT_BOUNDS,
        initial: float = 20.0,
        backoff: float = 0.9,
        timeout: float = 5.0,
        min_samples: int = 10,
    ) -> None:
        super().__init__(
            name=name, setting="limit", bounds=_check_limit_bounds(bounds), initial=initial
        )
        self.backoff = _check_ratio("backoff", backoff, allow_one=False)
        self.timeout = check_float("timeout", timeout, positive=True, allow_inf=True)
        self.min_samples = check_int("min_samples", min_samples, minimum=1)

    def update(self, snapshot: LimitSample) -> float | None:
        limit = self._value
        rtt = snapshot.rtt if snapshot.samples >= self.min_samples else None
        if snapshot.dropped or (rtt is not None and rtt > self.timeout):
            return self._propose(limit * self.backoff)
        if rtt is not None and snapshot.inflight * 2 >= limit:
            return self._propose(limit + 1.0)
        return None

    def inputs(self, snapshot: LimitSample) -> dict[str, float]:
        """What a decision event carries: the window's figures and the timeout."""
        out = _sample_inputs(snapshot)
        out["timeout"] = self.timeout
        return out


def _log10_root(limit: float) -> float:
    """``max(1, floor(log10(limit)))``: Netflix's ``Log10RootFunction``, the Vegas step size."""
    if limit < 10.0:
        return 1.0
    return float(max(1, math.floor(math.log10(limit))))


class VegasLimit(BoundedController):
    """TCP Vegas applied to calls: estimate the queue at the dependency from the rtt.

    With ``rtt_noload`` the rtt without queueing, ``queue = ceil(L * (1 - rtt_noload / rtt))``
    is the number of calls waiting rather than being served (by Little's law the dependency
    serves ``L / rtt`` calls per second, of which ``L * rtt_noload / rtt`` fit in without
    waiting). With ``l = max(1, floor(log10 L))``, ``alpha = 3 l`` and ``beta = 6 l``: a queue of
    at most ``l`` grows the limit by ``beta``, one under ``alpha`` by ``l``, one over ``beta``
    shrinks it by ``l``, and in between it holds; a drop shrinks it by ``l``. So the limit
    settles where a few calls (``alpha``..``beta``) queue at the dependency: it is kept busy
    without a queue that adds latency (Brakmo and Peterson 1995; Netflix ``VegasLimit``). The
    step grows with the log of the limit so large limits converge in a reasonable number of
    windows. The limit holds while the caller uses less than half of it (``inflight * 2 < L``).

    ``rtt_noload`` is the lowest window rtt seen (a window that lowers it holds the limit), and
    it is re-measured by a probe: right after the first window, then every ``probe_interval``
    seconds of ``now``, the limit is pinned to ``max(minimum, min(L / 2, L - 2 beta))``, well
    below where Vegas keeps its queue (at most ``beta`` calls), the rtt of the first window run
    entirely under the pin (its ``inflight`` at most the pin) becomes ``rtt_noload``, and the
    limit returns to where it was. Netflix instead resets ``rtt_noload`` to whatever the current
    rtt is, which, taken while calls queue, reads the queue as no-load and lets the limit
    ratchet up by about ``beta`` per probe; pinning the limit low while measuring is Envoy's
    remedy (``gradient_controller.cc``, whose interval, 60 s, is the default here). A probe
    costs about one window at half the limit per interval; it also corrects a start above the
    dependency's capacity, which would otherwise teach a queued rtt as the no-load one.
    ``probe_interval=None`` disables probes.
    """

    __slots__ = (
        "_next_probe",
        "_queue",
        "_restore",
        "min_samples",
        "probe_interval",
        "rtt_noload",
        "smoothing",
    )

    def __init__(
        self,
        *,
        name: str = "vegas",
        bounds: Bounds = DEFAULT_LIMIT_BOUNDS,
        initial: float = 20.0,
        smoothing: float = 1.0,
        probe_interval: float | None = 60.0,
        min_samples: int = 10,
    ) -> None:
        super().__init__(
            name=name, setting="limit", bounds=_check_limit_bounds(bounds), initial=initial
        )
        self.smoothing = _check_ratio("smoothing", smoothing)
        self.probe_interval = (
            None
            if probe_interval is None
            else check_float("probe_interval", probe_interval, positive=True)
        )
        self.min_samples = check_int("min_samples", min_samples, minimum=1)
        self.rtt_noload: float | None = None
        self._next_probe = math.inf
        self._restore: float | None = None
        self._queue: float | None = None

    @property
    def probing(self) -> bool:
        """Whether the limit is pinned low to measure ``rtt_noload``."""
        return self._restore is not None

    def update(self, snapshot: LimitSample) -> float | None:
        limit = self._value
        self._queue = None
        rtt = snapshot.rtt if snapshot.samples >= self.min_samples else None
        step = _log10_root(limit)
        restore = self._restore
        if restore is not None:
            if snapshot.dropped:
                self._restore = None
                return self._propose(restore - _log10_root(restore))
            if rtt is None or snapshot.inflight > limit:
                return None  # no window run entirely under the pin yet
            self.rtt_noload = rtt
            self._restore = None
            self._schedule(snapshot.now)
            return self._propose(restore)
        if rtt is not None:
            noload = self.rtt_noload
            if noload is None:
                self.rtt_noload = rtt
                if self.probe_interval is not None:
                    self._next_probe = snapshot.now  # the first window may have queued: probe
                if not snapshot.dropped:
                    return None
            elif snapshot.now >= self._next_probe and not snapshot.dropped:
                self._restore = limit
                return self._propose(
                    max(self.bounds.minimum, min(limit / 2.0, limit - 12.0 * step))
                )
            elif rtt < noload:
                self.rtt_noload = rtt
                if not snapshot.dropped:
                    return None
        if snapshot.dropped:
            proposed = limit - step
        elif rtt is None or snapshot.inflight * 2 < limit:
            return None
        else:
            assert self.rtt_noload is not None
            queue = math.ceil(limit * (1.0 - self.rtt_noload / rtt))
            self._queue = float(queue)
            if queue <= step:
                proposed = limit + 6.0 * step
            elif queue < 3.0 * step:
                proposed = limit + step
            elif queue > 6.0 * step:
                proposed = limit - step
            else:
                return None
        return self._propose((1.0 - self.smoothing) * limit + self.smoothing * proposed)

    def _schedule(self, now: float) -> None:
        interval = self.probe_interval
        self._next_probe = math.inf if interval is None else now + interval

    def inputs(self, snapshot: LimitSample) -> dict[str, float]:
        """The window's figures, ``rtt_noload`` and the queue estimate of the last update."""
        out = _sample_inputs(snapshot)
        if self.rtt_noload is not None:
            out["rtt_noload"] = self.rtt_noload
        if self._queue is not None:
            out["queue"] = self._queue
        out["probing"] = 1.0 if self._restore is not None else 0.0
        return out


class Gradient2Limit(BoundedController):
    """Netflix's Gradient2: track the ratio of the long-term rtt to the current one.

    ``long_rtt`` is an exponential average of the windows' rtts over ``long_window`` windows
    (factor ``2 / (long_window + 1)``, a plain mean over the first ``warmup``); the short rtt is
    the current window's. ``gradient = clamp(tolerance * long_rtt / rtt, 0.5, 1)`` is 1 while the
    current rtt is within ``tolerance`` of the long-term one, and falls as a queue builds; the
    target ``L * gradient + queue_size`` keeps ``queue_size`` calls of headroom so the limit
    keeps probing upward, and ``L = (1 - smoothing) L + smoothing * target`` damps it. Because the
    reference is a long average rather than a minimum, a dependency whose base latency moves for
    good is followed without probes; when the long average is more than twice the current rtt
    (latency came back down after long overload) it is decayed by 5 % per window to catch up.
    The limit holds while the caller uses less than half of it (``inflight < L / 2``).

    Defaults are Netflix's (``smoothing`` 0.2, ``tolerance`` 1.5, ``long_window`` 600,
    ``queue_size`` 4) except the bounds: the source's [20, 200] cannot size a dependency with
    ~10 workers, so the bounds default to [1, 1000], starting at 20. ``queue_size`` may be a
    function of the limit. Netflix's Gradient2 ignores drops; ``drop_backoff`` below 1 makes a
    window with a drop multiply the limit by it instead (for dependencies that refuse quickly
    when overloaded, which the rtt alone would read as healthy).

    Measured against a dependency whose rtt grows in proportion to the calls beyond its
    capacity C (the loop in ``tests/adaptive/test_limits.py``), starting at 1: the limit passes
    ``tolerance * C + queue_size`` and then keeps rising slowly, because the long average
    follows the queue it tolerates (C = 10: 23 after 100 windows, 51 after 500; C = 100: 194
    after 300). With ``tolerance`` 1 it stays near C far longer (C = 10: 15, 18, 20 after 100,
    300, 500 windows; C = 100: 107 after 300). Vegas, whose reference is a re-measured minimum,
    does not drift.
    """

    __slots__ = (
        "_gradient",
        "_long_count",
        "drop_backoff",
        "long_rtt",
        "long_window",
        "min_samples",
        "queue_size",
        "smoothing",
        "tolerance",
        "warmup",
    )

    def __init__(
        self,
        *,
        name: str = "gradient2",
        bounds: Bounds = DEFAULT_LIMIT_BOUNDS,
        initial: float = 20.0,
        smoothing: float = 0.2,
        tolerance: float = 1.5,
        long_window: int = 600,
        warmup: int = 10,
        queue_size: float | Callable[[float], float] = 4.0,
        drop_backoff: float = 1.0,
        min_samples: int = 10,
    ) -> None:
        super().__init__(
            name=name, setting="limit", bounds=_check_limit_bounds(bounds), initial=initial
        )
        self.smoothing = _check_ratio("smoothing", smoothing)
        self.tolerance = check_float("tolerance", tolerance, minimum=1.0)
        self.long_window = check_int("long_window", long_window, minimum=1)
        self.warmup = check_int("warmup", warmup, minimum=0)
        if callable(queue_size):
            self.queue_size: float | Callable[[float], float] = queue_size
        else:
            self.queue_size = check_float("queue_size", queue_size, minimum=0.0)
        self.drop_backoff = _check_ratio("drop_backoff", drop_backoff)
        self.min_samples = check_int("min_samples", min_samples, minimum=1)
        self.long_rtt: float | None = None
        self._long_count = 0
        self._gradient: float | None = None

    def _queue_for(self, limit: float) -> float:
        queue = self.queue_size
        return queue(limit) if callable(queue) else queue

    def update(self, snapshot: LimitSample) -> float | None:
        limit = self._value
        self._gradient = None
        rtt = snapshot.rtt
        if rtt is None or snapshot.samples < self.min_samples:
            rtt = None
        else:
            long_rtt = self._add_long(rtt)
            if long_rtt / rtt > 2.0:
                long_rtt = self.long_rtt = long_rtt * 0.95
        if snapshot.dropped and self.drop_backoff < 1.0:
            return self._propose(limit * self.drop_backoff)
        if rtt is None or snapshot.inflight < limit / 2.0:
            return None
        assert self.long_rtt is not None
        gradient = max(0.5, min(1.0, self.tolerance * self.long_rtt / rtt))
        self._gradient = gradient
        target = limit * gradient + self._queue_for(limit)
        return self._propose((1.0 - self.smoothing) * limit + self.smoothing * target)

    def _add_long(self, rtt: float) -> float:
        count = self._long_count
        previous = self.long_rtt
        if previous is None or count < self.warmup:
            self._long_count = count + 1
            value = rtt if previous is None else previous + (rtt - previous) / (count + 1)
        else:
            value = previous + (rtt - previous) * 2.0 / (self.long_window + 1)
        self.long_rtt = value
        return value

    def inputs(self, snapshot: LimitSample) -> dict[str, float]:
        """The window's figures, ``long_rtt`` and the gradient of the last update."""
        out = _sample_inputs(snapshot)
        if self.long_rtt is not None:
            out["long_rtt"] = self.long_rtt
        if self._gradient is not None:
            out["gradient"] = self._gradient
            out["queue_size"] = self._queue_for(self._value)
        return out


class LimitWindow:
    """Builds :class:`LimitSample` windows from per-call measurements (O(1) per call).

    ``record(rtt, inflight)`` for a call that completed normally (its latency reflects the
    dependency's work), ``record_drop(inflight)`` for one that timed out or was refused as
    overloaded; ``inflight`` is the number in flight when the call started, itself included.
    Calls under ``min_rtt`` (100 µs) are not latency samples, but a drop always counts.
    ``take(now)`` returns the window and starts a new one once it holds ``min_samples``
    samples or a drop; before that it returns ``None`` and keeps accumulating, so a quiet
    dependency still gets full windows, only less often.

    Recording takes no lock under the GIL (a few attribute updates with no call between a read
    and its write, like the statistics in ``stats.py``) and takes one on a free-threaded build;
    ``take`` reads and resets the window under the lock in one uninterrupted step.
    """

    __slots__ = ("_count", "_dropped", "_inflight", "_lock", "_total", "min_rtt", "min_samples")

    def __init__(self, *, min_samples: int = 10, min_rtt: float = 100e-6) -> None:
        self.min_samples = check_int("min_samples", min_samples, minimum=1)
        self.min_rtt = check_float("min_rtt", min_rtt, minimum=0.0)
        self._lock = threading.Lock()
        self._count = 0
        self._total = 0.0
        self._inflight = 0
        self._dropped = False

    def _record_unlocked(self, rtt: float, inflight: int) -> None:
        # No call between a read and its write (see core/_gil.py), hence no max().
        if inflight > self._inflight:  # noqa: PLR1730
            self._inflight = inflight
        if rtt >= self.min_rtt and rtt > 0.0:
            self._count += 1
            self._total += rtt

    def _record_locked(self, rtt: float, inflight: int) -> None:
        with self._lock:
            self._record_unlocked(rtt, inflight)

    record = _record_unlocked if GIL_ENABLED else _record_locked
    """``record(rtt, inflight)``: a call that completed normally after ``rtt`` seconds, with
    ``inflight`` calls in flight when it started."""

    def _record_drop_unlocked(self, inflight: int) -> None:
        if inflight > self._inflight:  # noqa: PLR1730
            self._inflight = inflight
        self._dropped = True

    def _record_drop_locked(self, inflight: int) -> None:
        with self._lock:
            self._record_drop_unlocked(inflight)

    record_drop = _record_drop_unlocked if GIL_ENABLED else _record_drop_locked
    """``record_drop(inflight)``: a call that timed out or was refused as overloaded."""

    def take(self, now: float) -> LimitSample | None:
        """The window so far, if it is complete (and a fresh one begins), else ``None``."""
        with self._lock:
            count = self._count
            if count < self.min_samples and not self._dropped:
                return None
            total, inflight, dropped = self._total, self._inflight, self._dropped
            self._count = 0
            self._total = 0.0
            self._inflight = 0
            self._dropped = False
        return LimitSample(
            now=now,
            rtt=total / count if count else None,
            inflight=inflight,
            samples=count,
            dropped=dropped,
        )
