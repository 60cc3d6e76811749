"""Statistics the controllers read: rolling counts, EWMA, log-bucketed latency histograms.

Each records in O(1) without a lock on GIL builds and answers queries on demand, at most once
per controller tick. numpy is never used here: these run on every call.

* :class:`RollingCounts`: named counters over the last ``window`` seconds in ``buckets``
  buckets, as cumulative counters plus their values at each bucket boundary (the same technique
  as the breaker's :class:`~sage_resilience.core.TimeWindow` and Resilience4j's sliding time
  window): a snapshot is a subtraction, and a bucket's counts leave the window all at once when
  it expires.
* :class:`EWMA`: an exponentially weighted mean with a half-life in *time*, not in samples.
  Every sample enters with weight 1 and every weight halves each ``half_life`` seconds; the
  value is the weighted mean ``sum(w_i * x_i) / sum(w_i)`` (forward decay, Cormode et al.,
  2009), kept as two running sums multiplied by ``2**(-dt/half_life)`` at each update. So the
  past loses half its say each half-life whatever the call rate, samples arriving at one
  instant count equally, and the first sample sets the value.
* :class:`LatencyHistogram`: fixed buckets growing by 10 % from 10 µs to about 1070 s (194 of
  them, plus one below and one above the range). A bucket ``[a, b)`` reports ``2ab / (a + b)``, the
  point within ``(b - a) / (b + a)`` ≈ 4.76 % of everything in it (the HdrHistogram/DDSketch
  idea: a fixed relative accuracy); a nearest-rank quantile is therefore within 4.76 % of the
  exact one, and no more than the largest sample. :class:`RollingHistogram` keeps one per slice
  of a window.

Why the hot paths are lock-free: under the GIL, CPython switches threads only at function entry,
backward jumps and after calls, never inside ``counts[i] += 1`` or ``self.total += x``, so each
record writes its counters in one uninterrupted step (every call it makes comes first). On a
free-threaded build the same methods take a lock.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import pairwise

from ..core._gil import GIL_ENABLED
from ..core._validate import check_float, check_int

__all__ = [
    "EWMA",
    "LatencyHistogram",
    "RollingCounts",
    "RollingHistogram",
]


def _epoch_of(now: float, width: float) -> int:
    """The bucket ``e`` with ``e * width <= now < (e + 1) * width``, products rounded as floats.

    ``now // width`` alone can disagree with those products by one at a boundary (``1.0 // 0.1``
    is 9 while ``10 * 0.1 == 1.0``); bucket starts are products, so the epoch is made to agree.
    """
    epoch = int(now // width)
    if (epoch + 1) * width <= now:
        return epoch + 1
    if epoch * width > now:
        return epoch - 1
    return epoch


class RollingCounts:
    """Counters ``fields`` over the last ``window`` seconds, in ``buckets`` time buckets.

    ``add(i, now)`` counts one event of field index ``i`` (its position in ``fields``) at time
    ``now``; ``snapshot(now)`` returns the counts inside the window, which holds the bucket of
    ``now`` and the ``buckets - 1`` before it (bucket ``e`` spans
    ``[e * width, (e + 1) * width)``, ``width = window / buckets``); ``totals()`` the counts since
    creation. Times are expected not to go backwards; an event stamped before the newest bucket
    counts in it.
    """

    __slots__ = (
        "_epoch",
        "_lock",
        "_ring",
        "_totals",
        "buckets",
        "fields",
        "next_boundary",
        "width",
        "window",
    )

    def __init__(
        self, fields: Sequence[str], *, window: float, buckets: int = 10, now: float = 0.0
    ) -> None:
        if isinstance(fields, str) or not all(isinstance(f, str) for f in fields):
            raise TypeError(f"fields must be a sequence of names, got {fields!r}")
        if not fields:
            raise ValueError("fields must name at least one counter")
        if len(set(fields)) != len(fields):
            raise ValueError(f"fields must not repeat a name, got {list(fields)!r}")
        self.fields = tuple(fields)
        self.window = check_float("window", window, positive=True)
        self.buckets = check_int("buckets", buckets, minimum=1)
        now = check_float("now", now)
        self.width = self.window / self.buckets
        self._lock = threading.Lock()
        self._totals = [0] * len(self.fields)
        # Cumulative values at the start of each bucket still in the window, by epoch % buckets.
        self._ring = [[0] * len(self.fields) for _ in range(self.buckets)]
        self._epoch = _epoch_of(now, self.width)
        self.next_boundary = (self._epoch + 1) * self.width

    def _add_unlocked(self, index: int, now: float, count: int = 1) -> None:
        if now >= self.next_boundary:
            self.rotate(now)
        self._totals[index] += count

    def _add_locked(self, index: int, now: float, count: int = 1) -> None:
        if now >= self.next_boundary:
            self.rotate(now)
        with self._lock:
            self._totals[index] += count

    add = _add_unlocked if GIL_ENABLED else _add_locked
    """``add(index, now, count=1)``: count ``count`` events of field ``index`` at ``now``
    (O(1); one comparison and one increment unless a bucket boundary has passed)."""

    def rotate(self, now: float) -> None:
        """Start the buckets that began since the last rotation (at most ``buckets`` of them)."""
        with self._lock:
            epoch = _epoch_of(now, self.width)
            old = self._epoch
            if epoch <= old:
                return
            current = list(self._totals)  # shared by the slots below: never mutated in place
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
            totals = list(self._totals)
        return {f: totals[i] - start[i] for i, f in enumerate(self.fields)}

    def totals(self) -> dict[str, int]:
        """Counts since creation."""
        return dict(zip(self.fields, list(self._totals), strict=True))

    def __repr__(self) -> str:
        return (
            f"RollingCounts(fields={list(self.fields)!r}, window={self.window!r}, "
            f"buckets={self.buckets!r})"
        )


_exp = math.exp
_LN2 = math.log(2.0)


class EWMA:
    """An exponentially weighted moving mean whose weights halve every ``half_life`` seconds.

    ``update(value, now)`` folds in a sample and returns the new mean. Before the first sample
    the value is ``initial`` (``None`` unless given), which the first sample then replaces.
    A sample stamped earlier than the latest one decays nothing (time never runs backwards).
    """

    __slots__ = ("_last", "_lock", "_rate", "_s", "_w", "half_life", "samples", "value")

    def __init__(self, half_life: float, *, initial: float | None = None) -> None:
        self.half_life = check_float("half_life", half_life, positive=True)
        self.value: float | None = None if initial is None else check_float("initial", initial)
        self._rate = _LN2 / self.half_life
        self._s = 0.0  # sum of weight * sample
        self._w = 0.0  # sum of weights
        self._last = -math.inf  # exp(-inf) == 0: the first sample erases the empty sums
        self._lock = threading.Lock()
        self.samples = 0

    def _update_unlocked(self, value: float, now: float) -> float:
        last = self._last
        if now > last:
            # Claimed before the call below, so two threads never decay the same interval twice.
            self._last = now
            decay = _exp((last - now) * self._rate)
        else:
            decay = 1.0
        # No call from here on: one uninterrupted step under the GIL.
        s = self._s = self._s * decay + value
        w = self._w = self._w * decay + 1.0
        self.samples += 1
        mean = self.value = s / w
        return mean

    def _update_locked(self, value: float, now: float) -> float:
        with self._lock:
            return self._update_unlocked(value, now)

    update = _update_unlocked if GIL_ENABLED else _update_locked
    """``update(value, now) -> float``: fold in ``value`` observed at ``now``; the new mean."""

    def get(self, default: float = 0.0) -> float:
        """The mean, or ``default`` before any sample (and with no ``initial``)."""
        value = self.value
        return default if value is None else value

    def __repr__(self) -> str:
        return f"EWMA(half_life={self.half_life!r}, value={self.value!r})"


_GROWTH = 1.1
_MIN_VALUE = 1e-5
_MAX_VALUE = 1000.0
# Bucket 0 holds (-inf, 1e-5); bucket i holds [_BOUNDS[i - 1], _BOUNDS[i]); the last bucket holds
# [_BOUNDS[-1], inf] (and NaN). bisect_right finds the bucket with ~8 C comparisons: measured
# cheaper here than math.log (or math.frexp) followed by int(), and it needs no range check.
_BOUNDS: list[float] = []
while not _BOUNDS or _BOUNDS[-1] < _MAX_VALUE:
    _BOUNDS.append(_MIN_VALUE * _GROWTH ** len(_BOUNDS))
_NBUCKETS = len(_BOUNDS) + 1
# What a bucket reports: 2ab/(a+b) is equally far, relatively, from both ends of [a, b). Below
# the range: 1e-5; above it: infinity. quantile() caps every answer at the largest sample.
_REPS: list[float] = (
    [_MIN_VALUE] + [2.0 * a * b / (a + b) for a, b in pairwise(_BOUNDS)] + [math.inf]
)
_RELATIVE_ERROR = max((b - a) / (b + a) for a, b in pairwise(_BOUNDS))


def _bucket_of(seconds: float) -> int:
    """The bucket a duration is counted in."""
    return bisect_right(_BOUNDS, seconds)


BUCKET_COUNT = _NBUCKETS
"""How many buckets every latency histogram has (for statistics kept in another form, such as
the adaptive breaker's time-decayed baseline)."""

bucket_index = _bucket_of
"""``bucket_index(seconds)``: the bucket a duration falls in (0 .. BUCKET_COUNT - 1)."""


def bucket_value(index: int) -> float:
    """The value a bucket stands for: within 4.76 % of anything in it (the top bucket, which
    holds everything beyond the last edge, stands for that edge)."""
    return _REPS[index] if index < _NBUCKETS - 1 else _BOUNDS[-1]


def _rank(q: float, n: int) -> int:
    """The nearest rank of the ``q``-quantile of ``n`` samples: ``ceil(q * n)``, at least 1.

    ``q * n`` is shrunk by a relative 1e-12 first, so that a product that should be a whole
    number but rounded up (``0.07 * 100 == 7.000000000000001``) is not pushed to the next rank.
    """
    return max(1, math.ceil(q * n * (1.0 - 1e-12)))


class LatencyHistogram:
    """Counts of durations (seconds) in fixed log-scaled buckets; quantiles within 4.76 %.

    :meth:`quantile` is nearest-rank: the smallest recorded value with at least ``q * n``
    values at or below it, reported as its bucket's representative (at most :attr:`max`; the
    top rank is :attr:`max` itself). For
    a true quantile in [``MIN_VALUE``, ``MAX_VALUE``) the relative error is at most
    ``RELATIVE_ERROR``; below the range the answer lies between the true value and
    ``MIN_VALUE``; above it, the answer is the largest sample.

    ``seconds`` is a measured duration (finite, >= 0): it is not checked on the hot path.
    """

    __slots__ = ("_lock", "counts", "max", "total")

    MIN_VALUE = _MIN_VALUE
    MAX_VALUE = _BOUNDS[-1]
    BUCKETS = _NBUCKETS
    RELATIVE_ERROR = _RELATIVE_ERROR

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.total = 0.0
        self.max = 0.0
        self._lock = threading.Lock()

    def _record_unlocked(self, seconds: float) -> None:
        self.counts[bisect_right(_BOUNDS, seconds)] += 1
        self.total += seconds
        # Not max(): a call costs more than this whole line, and lets another thread in.
        if seconds > self.max:  # noqa: PLR1730
            self.max = seconds

    def _record_locked(self, seconds: float) -> None:
        i = bisect_right(_BOUNDS, seconds)
        with self._lock:
            self.counts[i] += 1
            self.total += seconds
            if seconds > self.max:  # noqa: PLR1730
                self.max = seconds

    record = _record_unlocked if GIL_ENABLED else _record_locked
    """``record(seconds)``: count one duration (O(1): a bisection and three updates)."""

    @property
    def n(self) -> int:
        """How many durations were recorded."""
        return sum(self.counts)

    @property
    def mean(self) -> float | None:
        n = self.n
        return self.total / n if n else None

    def merge(self, others: Iterable[LatencyHistogram]) -> LatencyHistogram:
        """A new histogram holding this one's counts and the others' (this one is unchanged)."""
        out = LatencyHistogram()
        counts = list(self.counts)
        total, top = self.total, self.max
        for other in others:
            counts = [a + b for a, b in zip(counts, other.counts, strict=True)]
            total += other.total
            top = max(top, other.max)
        out.counts, out.total, out.max = counts, total, top
        return out

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q``-quantile (0 < q <= 1), or ``None`` when empty."""
        result = self.quantiles((q,))
        return None if result is None else result[0]

    def quantiles(self, qs: Sequence[float]) -> list[float] | None:
        """Several quantiles in one pass over the buckets (``None`` when empty)."""
        for q in qs:
            if not 0.0 < q <= 1.0:
                raise ValueError(f"q must be in (0, 1], got {q!r}")
        counts = list(self.counts)  # one consistent reading, even while others record
        n = sum(counts)
        if n == 0:
            return None
        top = self.max
        order = sorted(range(len(qs)), key=lambda j: qs[j])
        out = [0.0] * len(qs)
        seen = 0
        i = -1
        for j in order:
            rank = _rank(qs[j], n)
            if rank >= n:
                out[j] = top  # the largest sample is known exactly
                continue
            while seen < rank:
                i += 1
                seen += counts[i]
            out[j] = min(_REPS[i], top)
        return out

    def reset(self) -> None:
        """Forget every recorded duration."""
        self.counts = [0] * _NBUCKETS
        self.total = 0.0
        self.max = 0.0

    def __repr__(self) -> str:
        return f"LatencyHistogram(n={self.n!r}, max={self.max!r})"


class RollingHistogram:
    """Latency histograms over the last ``window`` seconds, one per slice of ``window/slices``.

    ``record(seconds, now)`` counts into the slice of ``now``; ``snapshot(now)`` merges the slice
    of ``now`` and the ``slices - 1`` before it. A slice leaves the window whole when it expires.
    """

    __slots__ = ("_current", "_epoch", "_lock", "_ring", "next_boundary", "slices", "width")

    def __init__(self, *, window: float, slices: int = 5, now: float = 0.0) -> None:
        window = check_float("window", window, positive=True)
        self.slices = check_int("slices", slices, minimum=1)
        now = check_float("now", now)
        self.width = window / self.slices
        self._ring = [LatencyHistogram() for _ in range(self.slices)]
        self._lock = threading.Lock()
        self._epoch = _epoch_of(now, self.width)
        self._current = self._ring[self._epoch % self.slices]
        self.next_boundary = (self._epoch + 1) * self.width

    @property
    def window(self) -> float:
        return self.width * self.slices

    def _record_unlocked(self, seconds: float, now: float) -> None:
        # LatencyHistogram.record inlined (a second method call would cost as much again). The
        # calls come first, so the slice read below is the one the counts go into.
        i = bisect_right(_BOUNDS, seconds)
        if now >= self.next_boundary:
            self._rotate(now)
        h = self._current
        h.counts[i] += 1
        h.total += seconds
        if seconds > h.max:  # noqa: PLR1730 - not max(), as in LatencyHistogram.record
            h.max = seconds

    def _record_locked(self, seconds: float, now: float) -> None:
        i = bisect_right(_BOUNDS, seconds)
        if now >= self.next_boundary:
            self._rotate(now)
        with self._lock:
            h = self._current
            h.counts[i] += 1
            h.total += seconds
            if seconds > h.max:  # noqa: PLR1730
                h.max = seconds

    record = _record_unlocked if GIL_ENABLED else _record_locked
    """``record(seconds, now)``: count one duration in the slice of ``now`` (O(1))."""

    def _rotate(self, now: float) -> None:
        with self._lock:
            epoch = _epoch_of(now, self.width)
            old = self._epoch
            if epoch <= old:
                return
            n = self.slices
            for e in range(max(old + 1, epoch - n + 1), epoch + 1):
                self._ring[e % n] = LatencyHistogram()
            self._current = self._ring[epoch % n]
            self._epoch = epoch
            self.next_boundary = (epoch + 1) * self.width

    def snapshot(self, now: float) -> LatencyHistogram:
        """The merged histogram of the window ending at ``now``."""
        if now >= self.next_boundary:
            self._rotate(now)
        with self._lock:
            ring = list(self._ring)
        return ring[0].merge(ring[1:])

    def __repr__(self) -> str:
        return f"RollingHistogram(window={self.window!r}, slices={self.slices!r})"
