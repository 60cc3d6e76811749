"""Sliding windows of call outcomes for the circuit breaker.

Two kinds, one interface (``record_success``, ``record_failure``, ``snapshot``, ``clear``,
``reset``; cumulative ``total_*`` counts):

* :class:`TimeWindow`: the last ``duration`` seconds, split into ``buckets`` buckets (the current,
  partial bucket plus ``buckets - 1`` full ones, as in Resilience4j's
  ``SlidingTimeWindowMetrics``). Instead of keeping counts per bucket and subtracting the
  bucket that expires, it keeps *cumulative* counters and remembers their values at each bucket
  boundary in a ring: the window's count is ``cumulative_now - cumulative_at_window_start``.
  That is the same O(1) snapshot, with two more properties: a success is one increment of an int
  attribute, which the GIL never interrupts, so the breaker's hot path takes no lock; and there
  is no running total that a lost update could make drift. A rotation, at most once per bucket
  width, writes the current cumulative values into the ring slots of the buckets that began since.
* :class:`CountWindow`: the last ``size`` outcomes in a ring of flags with running totals.
  Every record takes the window's lock, so the breaker's lock-free fast path is for time
  windows only.
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple, TypeAlias

from ._validate import check_float, check_int

__all__ = ["CountWindow", "TimeWindow", "Window", "WindowSnapshot"]


class WindowSnapshot(NamedTuple):
    """Counts inside the window: calls (successes + failures), failures, slow calls."""

    calls: int
    failures: int
    slow_calls: int

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0

    @property
    def slow_call_rate(self) -> float:
        return self.slow_calls / self.calls if self.calls else 0.0


class TimeWindow:
    """Outcomes of the last ``duration`` seconds, in ``buckets`` buckets.

    Hot-path protocol (used by the breaker without a lock, GIL builds only): ``if now >=
    w.next_boundary: w.rotate(now)`` then ``w.successes += 1``. Everything else goes through the
    methods below, which serialise on the window's own lock.
    """

    __slots__ = (
        "_epoch",
        "_failures",
        "_lock",
        "_pos_fail",
        "_pos_slow",
        "_pos_succ",
        "_slow",
        "buckets",
        "duration",
        "next_boundary",
        "successes",
        "width",
    )

    fast_path = True

    def __init__(self, duration: float, buckets: int = 10, *, now: float = 0.0) -> None:
        self.duration = check_float("duration", duration, positive=True)
        self.buckets = check_int("buckets", buckets, minimum=1)
        self.width = self.duration / self.buckets
        self._lock = threading.Lock()
        self.reset(now)

    def reset(self, now: float) -> None:
        """Forget everything, cumulative totals included."""
        with self._lock:
            self.successes = 0
            self._failures = 0
            self._slow = 0
            n = self.buckets
            # Cumulative values at the start of each bucket, indexed by epoch % buckets.
            self._pos_succ = [0] * n
            self._pos_fail = [0] * n
            self._pos_slow = [0] * n
            self._epoch = int(now // self.width)
            self.next_boundary = (self._epoch + 1) * self.width

    def clear(self, now: float) -> None:
        """Empty the window but keep the cumulative totals."""
        with self._lock:
            succ = self.successes
            n = self.buckets
            self._pos_succ = [succ] * n
            self._pos_fail = [self._failures] * n
            self._pos_slow = [self._slow] * n
            self._epoch = int(now // self.width)
            self.next_boundary = (self._epoch + 1) * self.width

    def rotate(self, now: float) -> None:
        """Start the buckets that began since the last rotation (no-op if none did)."""
        with self._lock:
            self._rotate_locked(now)

    def _rotate_locked(self, now: float) -> None:
        epoch = int(now // self.width)
        old = self._epoch
        if epoch <= old:
            return
        succ = self.successes
        fail, slow = self._failures, self._slow
        n = self.buckets
        first = max(old + 1, epoch - n + 1)
        pos_succ, pos_fail, pos_slow = self._pos_succ, self._pos_fail, self._pos_slow
        for e in range(first, epoch + 1):
            i = e % n
            pos_succ[i] = succ
            pos_fail[i] = fail
            pos_slow[i] = slow
        self._epoch = epoch
        self.next_boundary = (epoch + 1) * self.width

    def record_success(self, now: float, slow: bool = False) -> None:
        with self._lock:
            if now >= self.next_boundary:
                self._rotate_locked(now)
            self.successes += 1
            if slow:
                self._slow += 1

    def record_failure(self, now: float, slow: bool = False) -> None:
        with self._lock:
            if now >= self.next_boundary:
                self._rotate_locked(now)
            self._failures += 1
            if slow:
                self._slow += 1

    def snapshot(self, now: float) -> WindowSnapshot:
        with self._lock:
            if now >= self.next_boundary:
                self._rotate_locked(now)
            # The window starts at the oldest bucket still inside it: epoch - buckets + 1.
            i = (self._epoch + 1) % self.buckets
            succ = self.successes - self._pos_succ[i]
            fail = self._failures - self._pos_fail[i]
            slow = self._slow - self._pos_slow[i]
        return WindowSnapshot(succ + fail, fail, slow)

    @property
    def total_successes(self) -> int:
        return self.successes

    @property
    def total_failures(self) -> int:
        return self._failures

    @property
    def total_slow(self) -> int:
        return self._slow

    def __repr__(self) -> str:
        return f"TimeWindow(duration={self.duration!r}, buckets={self.buckets!r})"


_FAIL = 1
_SLOW = 2


class CountWindow:
    """The last ``size`` outcomes (successes and failures; ignored calls are not outcomes)."""

    __slots__ = (
        "_filled",
        "_lock",
        "_pos",
        "_ring",
        "_total_fail",
        "_total_slow",
        "_win_fail",
        "_win_slow",
        "size",
        "successes",
    )

    fast_path = False
    # No buckets to rotate; present so that both windows answer the same protocol.
    next_boundary = math.inf

    def __init__(self, size: int, *, now: float = 0.0) -> None:
        self.size = check_int("size", size, minimum=1)
        self._lock = threading.Lock()
        self.reset(now)

    def reset(self, now: float) -> None:
        with self._lock:
            self.successes = 0
            self._total_fail = 0
            self._total_slow = 0
            self._clear_locked()

    def clear(self, now: float) -> None:
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        self._ring = bytearray(self.size)
        self._pos = 0
        self._filled = 0
        self._win_fail = 0
        self._win_slow = 0

    def _push(self, flags: int) -> None:
        ring, pos = self._ring, self._pos
        if self._filled == self.size:
            old = ring[pos]
            self._win_fail -= old & _FAIL
            self._win_slow -= (old & _SLOW) >> 1
        else:
            self._filled += 1
        ring[pos] = flags
        self._win_fail += flags & _FAIL
        self._win_slow += (flags & _SLOW) >> 1
        self._pos = pos + 1 if pos + 1 < self.size else 0

    def rotate(self, now: float) -> None:
        """Nothing to do: a count window does not age."""

    def record_success(self, now: float, slow: bool = False) -> None:
        with self._lock:
            self.successes += 1
            if slow:
                self._total_slow += 1
            self._push(_SLOW if slow else 0)

    def record_failure(self, now: float, slow: bool = False) -> None:
        with self._lock:
            self._total_fail += 1
            if slow:
                self._total_slow += 1
            self._push(_FAIL | _SLOW if slow else _FAIL)

    def snapshot(self, now: float) -> WindowSnapshot:
        with self._lock:
            return WindowSnapshot(self._filled, self._win_fail, self._win_slow)

    @property
    def total_successes(self) -> int:
        return self.successes

    @property
    def total_failures(self) -> int:
        return self._total_fail

    @property
    def total_slow(self) -> int:
        return self._total_slow

    def __repr__(self) -> str:
        return f"CountWindow(size={self.size!r})"


Window: TypeAlias = TimeWindow | CountWindow
