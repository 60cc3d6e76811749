"""What a simulation run measures, and the oracle it is judged against.

Time is cut into bins (1 s by default). Per bin: requests offered (by arrival), requests that
succeeded, failed or were rejected locally (by completion; successes also by arrival), attempts
that reached the dependency and how it answered them, local rejections. Per request: latency of
successes, priority, outcome. Per policy: breaker transitions and changed settings (limits,
rates), from events.

**The oracle** is what a perfect client could have got: per bin, the smaller of the work
available to it and the dependency's capacity. Work available is every request that arrived
within the client's deadline and is not yet served (served oldest first, which with one common
deadline is optimal); capacity is the healthy throughput scaled by the phase (workers, latency,
error rate, outage, the provider's rate limit), and never less than what the real run actually
completed in that bin (the server's service times are random, so a lucky bin can beat the mean).
So the cumulative goodput can never exceed the cumulative oracle, by construction, while the
oracle stays the nominal capacity wherever the run did not beat it. (Per bin, ``min(offered,
capacity)`` of the issue's wording is the special case with no backlog: after a fault, a perfect
client also serves the requests still within their deadline that the fault held up, which is
why the oracle rises above the offered load right after an outage.)

**Success ratios** before, during and after the fault are per request, by arrival: the share
of the requests that arrived in the window that succeeded (so never above 1, whenever they
completed). Goodput, the oracle and recovery count successes by completion.

**Recovery** is judged against :meth:`Recorder.fresh_oracle`, ``min(offered, capacity)`` of the
bin's own arrivals: a recovered system serves its new arrivals, whatever the backlog.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Recorder", "percentile"]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by linear interpolation; ``None`` for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


SETTLE_429 = 10.0
"""Seconds a rate controller is given to converge: ``share_429_settled`` counts from then on
(the goal: within 10 % of the provider's limit in 10 s, then under 2 % of 429s)."""


@dataclass
class Recorder:
    """Collects one run's measurements; :meth:`summary` turns them into figures."""

    duration: float
    bin_width: float = 1.0
    fault_start: float | None = None
    fault_end: float | None = None
    settle: float = 5.0  # after the fault, breaker openings within this are not false trips
    offered: list[int] = field(init=False)
    succeeded: list[int] = field(init=False)
    succeeded_by_arrival: list[int] = field(init=False)
    failed: list[int] = field(init=False)
    rejected: list[int] = field(init=False)
    attempts: list[int] = field(init=False)
    answers: dict[str, list[int]] = field(init=False)
    local_rejections: list[int] = field(init=False)
    latencies: dict[str, list[float]] = field(init=False)
    by_priority: dict[str, dict[str, int]] = field(init=False)
    by_priority_fault: dict[str, dict[str, int]] = field(init=False)  # requests arriving in it
    transitions: list[tuple[float, str, str, str]] = field(init=False)
    settings: list[tuple[float, str, str, float]] = field(init=False)
    first_detection: float | None = None
    first_success_after_fault: float | None = None
    offered_total: int = 0
    in_fault_offered: int = 0
    in_fault_attempts: int = 0
    fault_requests: list[tuple[float, int]] = field(init=False)  # (start, attempts) in fault
    latency_bins: list[list[float]] = field(init=False)  # latencies of successes, by end bin
    max_attempts_per_request: int = 0

    def __post_init__(self) -> None:
        n = math.ceil(self.duration / self.bin_width) + 1
        self.offered = [0] * n
        self.succeeded = [0] * n
        self.succeeded_by_arrival = [0] * n
        self.failed = [0] * n
        self.rejected = [0] * n
        self.attempts = [0] * n
        self.local_rejections = [0] * n
        self.answers = defaultdict(lambda: [0] * n)
        self.latencies = {"before": [], "during": [], "after": []}
        self.by_priority = defaultdict(
            lambda: {"offered": 0, "succeeded": 0, "failed": 0, "rejected": 0}
        )
        self.by_priority_fault = defaultdict(
            lambda: {"offered": 0, "succeeded": 0, "failed": 0, "rejected": 0}
        )
        self.transitions = []
        self.settings = []
        self.fault_requests = []
        self.latency_bins = [[] for _ in range(n)]

    def _share_429_from(self, start: float) -> float:
        """The share of attempts answered 429 from ``start`` on (after convergence)."""
        b0 = self._bin(start)
        attempts = sum(self.attempts[b0:])
        throttled = sum(self.answers["throttled"][b0:]) if "throttled" in self.answers else 0
        return throttled / attempts if attempts else 0.0

    def _bin(self, t: float) -> int:
        return min(int(t / self.bin_width), len(self.offered) - 1)

    def phase_of(self, t: float) -> str:
        if self.fault_start is None or self.fault_end is None or t < self.fault_start:
            return "before"
        return "during" if t < self.fault_end else "after"

    def in_fault(self, t: float) -> bool:
        return self.phase_of(t) == "during"

    # -- recording -------------------------------------------------------------------------------

    def request_started(self, t: float, priority: str) -> None:
        self.offered[self._bin(t)] += 1
        self.offered_total += 1
        self.by_priority[priority]["offered"] += 1
        if self.in_fault(t):
            self.in_fault_offered += 1
            self.by_priority_fault[priority]["offered"] += 1

    def request_finished(
        self, start: float, end: float, priority: str, outcome: str, attempts: int = 0
    ) -> None:
        b = self._bin(end)
        self.max_attempts_per_request = max(self.max_attempts_per_request, attempts)
        if self.in_fault(start):
            key = "succeeded" if outcome == "success" else outcome
            self.by_priority_fault[priority][key] += 1
            self.fault_requests.append((start, attempts))
        if outcome == "success":
            self.succeeded[b] += 1
            self.succeeded_by_arrival[self._bin(start)] += 1
            self.by_priority[priority]["succeeded"] += 1
            self.latencies[self.phase_of(start)].append(end - start)
            self.latency_bins[b].append(end - start)
            if (
                self.fault_end is not None
                and self.first_success_after_fault is None
                and end >= self.fault_end
            ):
                self.first_success_after_fault = end - self.fault_end
        elif outcome == "rejected":
            self.rejected[b] += 1
            self.by_priority[priority]["rejected"] += 1
        else:
            self.failed[b] += 1
            self.by_priority[priority]["failed"] += 1

    def attempt(self, t: float, answer: str) -> None:
        b = self._bin(t)
        self.attempts[b] += 1
        self.answers[answer][b] += 1
        if self.in_fault(t):
            self.in_fault_attempts += 1

    def detected(self, t: float) -> None:
        """A local rejection or a limit reduction happened at ``t``."""
        if self.fault_start is not None and t >= self.fault_start and self.first_detection is None:
            self.first_detection = t

    def local_rejection(self, t: float) -> None:
        self.local_rejections[self._bin(t)] += 1
        self.detected(t)

    def transition(self, t: float, policy: str, old: str, new: str) -> None:
        self.transitions.append((t, policy, old, new))
        if new == "open":
            self.detected(t)

    def setting(self, t: float, policy: str, name: str, old: float, new: float) -> None:
        self.settings.append((t, policy, name, new))
        if new < old:
            self.detected(t)

    # -- the oracle --------------------------------------------------------------------------

    def oracle(self, capacity: list[float], deadline: float) -> list[float]:
        """Per bin, what a perfect client could have completed (see the module docstring).

        ``capacity`` is the nominal successful throughput of each bin (requests per bin).
        """
        window = math.ceil(deadline / self.bin_width) + 1
        pending: list[list[float]] = []  # [arrival bin, requests not yet served]
        out: list[float] = []
        for b, arrived in enumerate(self.offered):
            pending.append([b, float(arrived)])
            while pending and pending[0][0] < b - window:
                pending.pop(0)  # too old: its client gave up
            cap = max(capacity[b] if b < len(capacity) else 0.0, float(self.succeeded[b]))
            served = 0.0
            for item in pending:
                if cap - served <= 0:
                    break
                take = min(item[1], cap - served)
                item[1] -= take
                served += take
            pending = [item for item in pending if item[1] > 1e-12]
            out.append(served)
        return out

    # -- figures -------------------------------------------------------------------------------

    def fresh_oracle(self, capacity: list[float]) -> list[float]:
        """Per bin, ``min(offered, capacity)``: what a perfect client gets from the requests
        arriving in that bin alone (no backlog). Recovery is judged against it: a recovered
        system serves its new arrivals, whatever the backlog of the fault."""
        return [
            min(float(o), capacity[b] if b < len(capacity) else 0.0)
            for b, o in enumerate(self.offered)
        ]

    def summary(self, oracle: list[float], fresh: list[float] | None = None) -> dict[str, Any]:
        """The headline figures of the run (``fresh``: see :meth:`fresh_oracle`)."""
        total_ok = sum(self.succeeded)
        total_oracle = sum(oracle)
        fs, fe = self.fault_start, self.fault_end

        def ratio_in(lo: float, hi: float) -> float | None:
            # Per request, by arrival: of the requests arriving in [lo, hi), the share that
            # succeeded (whenever they completed).
            b0, b1 = self._bin(lo), self._bin(hi)
            offered = sum(self.offered[b0:b1])
            done = sum(self.succeeded_by_arrival[b0:b1])
            return done / offered if offered else None

        def goodput_vs_oracle(lo: float, hi: float) -> float | None:
            b0, b1 = self._bin(lo), self._bin(hi)
            o = sum(oracle[b0:b1])
            return sum(self.succeeded[b0:b1]) / o if o >= 1.0 else None

        end = self.duration
        recover = None
        if fe is not None:
            recover = self._time_to_recover(fresh if fresh is not None else oracle, fe)
        all_lat = self.latencies["before"] + self.latencies["during"] + self.latencies["after"]
        healthy_lat = self.latencies["before"] if fs is not None else all_lat
        attempts_total = sum(self.attempts)
        throttled = sum(self.answers["throttled"]) if "throttled" in self.answers else 0
        fault_attempts = self.in_fault_attempts
        out: dict[str, Any] = {
            "offered": self.offered_total,
            "succeeded": total_ok,
            "failed": sum(self.failed),
            "rejected": sum(self.rejected),
            "oracle": total_oracle,
            "goodput_ratio": total_ok / total_oracle if total_oracle else None,
            # Against the literal oracle, sum of min(offered, capacity) per bin: what a
            # client gets that serves each bin's own arrivals (it can exceed 1 when requests
            # held up by a fault succeed later).
            "goodput_ratio_fresh": (
                total_ok / sum(fresh) if fresh is not None and sum(fresh) > 0 else None
            ),
            "goodput_ratio_fault": goodput_vs_oracle(fs, fe) if fs is not None and fe else None,
            "success_ratio": total_ok / self.offered_total if self.offered_total else None,
            "success_before": ratio_in(0.0, fs) if fs is not None else ratio_in(0.0, end),
            "success_during": ratio_in(fs, fe) if fs is not None and fe is not None else None,
            "success_after": ratio_in(fe, end) if fe is not None else None,
            "latency_p50": percentile(all_lat, 0.5),
            "latency_p99": percentile(all_lat, 0.99),
            "latency_p99_healthy": percentile(healthy_lat, 0.99),
            "latency_p99_fault": percentile(self.latencies["during"], 0.99),
            "amplification": attempts_total / self.offered_total if self.offered_total else None,
            "amplification_fault": (
                fault_attempts / self.in_fault_offered if self.in_fault_offered else None
            ),
            "amplification_until_open": self._amplification_until_open(),
            "max_attempts_per_request": self.max_attempts_per_request,
            "time_to_detect": (
                self.first_detection - fs
                if self.first_detection is not None and fs is not None
                else None
            ),
            "time_to_recover": recover,
            "first_success_after_fault": self.first_success_after_fault,
            "false_trips": self._false_trips(),
            "share_429": throttled / attempts_total if attempts_total else 0.0,
            "share_429_settled": self._share_429_from(SETTLE_429),
            "by_priority": {
                p: {
                    **c,
                    "success_ratio": c["succeeded"] / c["offered"] if c["offered"] else None,
                }
                for p, c in sorted(self.by_priority.items())
            },
            "by_priority_fault": {
                p: {
                    **c,
                    "success_ratio": c["succeeded"] / c["offered"] if c["offered"] else None,
                }
                for p, c in sorted(self.by_priority_fault.items())
            },
        }
        return out

    def _time_to_recover(self, oracle: list[float], fault_end: float) -> float | None:
        """Seconds from the fault's end until goodput is back above 90 % of ``oracle`` (over
        3 consecutive bins)."""
        b0 = self._bin(fault_end)
        for b in range(b0, len(oracle) - 2):
            o = sum(oracle[b : b + 3])
            if o <= 0:
                continue
            if sum(self.succeeded[b : b + 3]) >= 0.9 * o:
                return max(0.0, b * self.bin_width - fault_end)
        return None

    def _amplification_until_open(self) -> float | None:
        """Mean attempts of the requests that started in the fault before any breaker opened."""
        opened = [t for t, _p, _o, new in self.transitions if new == "open"]
        if self.fault_start is None:
            return None
        first_open = min((t for t in opened if t >= self.fault_start), default=math.inf)
        early = [a for start, a in self.fault_requests if start < first_open]
        return sum(early) / len(early) if early else None

    def _false_trips(self) -> int:
        """Breaker openings while the dependency was healthy (outside the fault window, allowing
        ``settle`` seconds (the client deadline) of settling after it)."""
        fs, fe = self.fault_start, self.fault_end
        count = 0
        for t, _policy, _old, new in self.transitions:
            if new != "open":
                continue
            if fs is None or fe is None or not fs <= t < fe + self.settle:
                count += 1
        return count

    def series(self, oracle: list[float], fresh: list[float] | None = None) -> dict[str, Any]:
        """Per-bin series for plots and the JSON report."""
        return {
            "bin_width": self.bin_width,
            "oracle_fresh": None if fresh is None else [round(x, 3) for x in fresh],
            "offered": self.offered,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "rejected": self.rejected,
            "attempts": self.attempts,
            "oracle": [round(x, 3) for x in oracle],
            "answers": {k: v for k, v in sorted(self.answers.items())},
            "local_rejections": self.local_rejections,
            "latency_p50": [_round(percentile(v, 0.5)) for v in self.latency_bins],
            "latency_p99": [_round(percentile(v, 0.99)) for v in self.latency_bins],
            "transitions": self.transitions,
            "settings": self.settings,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)
