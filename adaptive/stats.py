"""Statistics the controllers read: rolling counts, EWMA, log-bucketed latency histograms.

All three record in O(1) without a lock on GIL builds (plain increments of attributes and list
slots, which CPython's GIL never interrupts) and answer queries on demand, at most once per
controller tick. numpy is never used here: these run on every call.

* :class:`RollingCounts`: named counters over the last ``window`` seconds in ``buckets``
  buckets, as cumulative counters plus their values at each bucket boundary (the same technique
  as the breaker's :class:`~sage_resilience.core.TimeWindow`): a snapshot is a subtraction.
* :class:`EWMA`: an exponentially weighted moving average with a half-life in *time* (not in
  samples), so it forgets at the same pace whatever the call rate:
  ``alpha = 1 - 2**(-dt/half_life)``.
* :class:`LatencyHistogram`: fixed buckets growing by 10 % from 10 µs to about 15 minutes
  (≈ 190 buckets); a value is reported as its bucket's geometric middle, so every quantile is
  within ``sqrt(1.1) - 1`` ≈ 4.9 % of a value in the bucket (the HdrHistogram/DDSketch idea with
  a fixed relative accuracy). :class:`RollingHistogram` keeps one per slice of a window.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

from ..core._validate import check_float, check_int

__all__ = [
    "EWMA",
    "LatencyHistogram",
    "RollingCounts",
    "RollingHistogram",
]


class RollingCounts:
    """Counters ``fields`` over the last ``window`` seconds, in ``buckets`` time buckets.

    ``add(i, now)`` counts one event of field index ``i`` at time ``now``; ``snapshot(now)``
    returns the counts inside the window (the current partial bucket plus ``buckets - 1`` full
    ones), ``totals()`` the cumulative ones.
    """

    __slots__ = (
        "_epoch",
        "_lock",
        "_ring",
        "buckets",
        "fields",
        "next_boundary",
        "totals_",
        "width",
    )

    def __init__(
        self, fields: Sequence[str], *, window: float, buckets: int = 10, now: float = 0.0
    ) -> None:
        if not fields:
            raise ValueError("fields must name at least one counter")
        self.fields = tuple(fields)
        window = check_float("window", window, positive=True)
        self.buckets = check_int("buckets", buckets, minimum=1)
        self.width = window / self.buckets
        self._lock = threading.Lock()
        self.totals_ = [0] * len(self.fields)
        # Cumulative values at the start of each bucket, by epoch % buckets.
        self._ring = [[0] * len(self.fields) for _ in range(self.buckets)]
        self._epoch = int(now // self.width)
        self.next_boundary = (self._epoch + 1) * self.width

    def add(self, index: int, now: float, count: int = 1) -> None:
        """Count ``count`` events of field ``index`` at ``now`` (O(1))."""
        if now >= self.next_boundary:
            self.rotate(now)
        self.totals_[index] += count

    def rotate(self, now: float) -> None:
        """Start the buckets that began since the last rotation."""
        with self._lock:
            epoch = int(now // self.width)
            old = self._epoch
            if epoch <= old:
                return
            current = list(self.totals_)
            n = self.buckets
            for e in range(max(old + 1, epoch - n + 1), epoch + 1):
                self._ring[e % n] = current
            self._epoch = epoch
            self.next_boundary = (epoch + 1) * self.width

    def snapshot(self, now: float) -> dict[str, int]:
        """Counts of each field inside the window ending at ``now``."""
        if now >= self.next_boundary:
            self.rotate(now)
        with self._lock:
            start = self._ring[(self._epoch + 1) % self.buckets]
            totals = list(self.totals_)
        return {f: totals[i] - start[i] for i, f in enumerate(self.fields)}

    def totals(self) -> dict[str, int]:
        """Counts since creation."""
        return dict(zip(self.fields, list(self.totals_), strict=True))


class EWMA:
    """An exponentially weighted moving average with a half-life in seconds.

    ``update(value, now)`` folds in a sample; the weight of older samples halves every
    ``half_life`` seconds. The first sample sets the value.
    """

    __slots__ = ("_last", "half_life", "samples", "value")

    def __init__(self, half_life: float, *, initial: float | None = None) -> None:
        self.half_life = check_float("half_life", half_life, positive=True)
        self.value: float | None = initial
        self._last: float | None = None
        self.samples = 0

    def update(self, value: float, now: float) -> float:
        self.samples += 1
        if self.value is None or self._last is None:
            self.value = value
        else:
            dt = now - self._last
            alpha = 1.0 - 2.0 ** (-dt / self.half_life) if dt > 0 else 0.0
            # A burst of samples at one instant still moves the average a little.
            alpha = max(alpha, 1.0 / (1.0 + self.samples)) if dt <= 0 else alpha
            self.value += alpha * (value - self.value)
        self._last = now
        return self.value

    def get(self, default: float = 0.0) -> float:
        return default if self.value is None else self.value


_GROWTH = 1.1
_MIN_VALUE = 1e-5
_LOG_GROWTH = math.log(_GROWTH)
_INV_LOG_GROWTH = 1.0 / _LOG_GROWTH
_LOG_MIN = math.log(_MIN_VALUE)
_NBUCKETS = math.ceil(math.log(1000.0 / _MIN_VALUE) * _INV_LOG_GROWTH) + 2
_LOG = math.log


def _bucket_of(value: float) -> int:
    if value <= _MIN_VALUE:
        return 0
    i = int((_LOG(value) - _LOG_MIN) * _INV_LOG_GROWTH) + 1
    return i if i < _NBUCKETS else _NBUCKETS - 1


def _value_of(index: int) -> float:
    """The geometric middle of bucket ``index`` (bucket 0 holds everything <= the minimum)."""
    if index == 0:
        return _MIN_VALUE
    low = math.exp(_LOG_MIN + (index - 1) * _LOG_GROWTH)
    return low * math.sqrt(_GROWTH)


class LatencyHistogram:
    """Counts of durations in fixed log-scaled buckets (10 % wide); quantiles within 5 %."""

    __slots__ = ("counts", "max", "n", "total")

    RELATIVE_ERROR = math.sqrt(_GROWTH) - 1.0

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def record(self, seconds: float) -> None:
        """Count one duration (O(1): one logarithm, one increment)."""
        if seconds > _MIN_VALUE:
            i = int((_LOG(seconds) - _LOG_MIN) * _INV_LOG_GROWTH) + 1
            self.counts[i if i < _NBUCKETS else _NBUCKETS - 1] += 1
        else:
            self.counts[0] += 1
        self.n += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def merge(self, others: Iterable[LatencyHistogram]) -> LatencyHistogram:
        """A new histogram holding this one's counts and the others'."""
        out = LatencyHistogram()
        out.counts = list(self.counts)
        out.n, out.total, out.max = self.n, self.total, self.max
        for other in others:
            for i, c in enumerate(other.counts):
                if c:
                    out.counts[i] += c
            out.n += other.n
            out.total += other.total
            out.max = max(out.max, other.max)
        return out

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0 < q <= 1), or ``None`` when empty."""
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {q!r}")
        n = self.n
        if n == 0:
            return None
        rank = q * n
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min(_value_of(i), self.max)
        return self.max

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def reset(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.n = 0
        self.total = 0.0
        self.max = 0.0


class RollingHistogram:
    """Latency histograms over the last ``window`` seconds, one per ``slices`` slice."""

    __slots__ = ("_epoch", "_lock", "_ring", "next_boundary", "slices", "width")

    def __init__(self, *, window: float, slices: int = 5, now: float = 0.0) -> None:
        window = check_float("window", window, positive=True)
        self.slices = check_int("slices", slices, minimum=1)
        self.width = window / self.slices
        self._ring = [LatencyHistogram() for _ in range(self.slices)]
        self._lock = threading.Lock()
        self._epoch = int(now // self.width)
        self.next_boundary = (self._epoch + 1) * self.width

    def record(self, seconds: float, now: float) -> None:
        if now >= self.next_boundary:
            self._rotate(now)
        self._ring[self._epoch % self.slices].record(seconds)

    def _rotate(self, now: float) -> None:
        with self._lock:
            epoch = int(now // self.width)
            old = self._epoch
            if epoch <= old:
                return
            for e in range(max(old + 1, epoch - self.slices + 1), epoch + 1):
                self._ring[e % self.slices] = LatencyHistogram()
            self._epoch = epoch
            self.next_boundary = (epoch + 1) * self.width

    def snapshot(self, now: float) -> LatencyHistogram:
        """The merged histogram of the window ending at ``now``."""
        if now >= self.next_boundary:
            self._rotate(now)
        ring = list(self._ring)
        return ring[0].merge(ring[1:])
