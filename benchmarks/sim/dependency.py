"""The modelled dependency: a server with workers, a bounded queue and a fault schedule.

A request that reaches the server (an *attempt*) is answered in one of these ways:

* refused at once: a hard outage (``ConnectionRefusedError``), the queue is full (503,
  :class:`ServerOverloaded`), or the provider's rate limit says no (429, :class:`Throttled`,
  with or without a retry-after hint);
* never, during a blackhole outage: the client's own timeout ends the wait;
* after queueing for a worker and a service time drawn from a log-normal distribution (median
  and p99 given), scaled by the phase's latency multiplier: with a transient error
  (:class:`TransientDependencyError`), a permanent one (:class:`PermanentDependencyError`, the
  4xx of this world), or success.

Work for an attempt whose client already gave up is still done (the server cannot know): this is
what makes retry storms and metastable failures possible. Capacity changes (brownouts) change
the number of workers that take new work; work in progress finishes.

Every random draw comes from the dependency's own seeded generator, so the same seed gives the
same run.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ...core import PermanentError, ThrottledError, TransientError

__all__ = [
    "Dependency",
    "DependencyConfig",
    "Phase",
    "PermanentDependencyError",
    "ServerOverloaded",
    "Throttled",
    "TransientDependencyError",
]


class TransientDependencyError(TransientError):
    """The dependency failed this attempt (a 500): retrying may work."""


class PermanentDependencyError(PermanentError):
    """The dependency rejected the request itself (a 400): retrying cannot work."""


class ServerOverloaded(TransientError):
    """The server's queue is full (a fast 503)."""

    # Read by the adaptive policy: an overload refusal is a "drop" for the concurrency limit.
    overloaded = True


class Throttled(ThrottledError):
    """The provider's rate limit answered 429."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    """The dependency's condition from ``start`` to ``end`` (seconds of simulated time).

    Fields left at their defaults keep the healthy behaviour; ``start``/``end`` of ``None`` are
    used for the baseline (the whole run).
    """

    start: float = 0.0
    end: float = math.inf
    error_prob: float = 0.0
    permanent_prob: float = 0.0
    latency_mult: float = 1.0
    capacity_mult: float = 1.0
    outage: str | None = None  # None, "refuse" or "blackhole"
    throttle_rate: float | None = None  # the provider's limit, requests per second
    throttle_burst: float = 1.0
    throttle_hint: bool = False
    name: str = "fault"

    def __post_init__(self) -> None:
        if self.outage not in (None, "refuse", "blackhole"):
            raise ValueError(f"outage must be None, 'refuse' or 'blackhole', got {self.outage!r}")
        if not 0 <= self.error_prob <= 1 or not 0 <= self.permanent_prob <= 1:
            raise ValueError("error_prob and permanent_prob must be in [0, 1]")
        if self.latency_mult <= 0 or self.capacity_mult <= 0:
            raise ValueError("latency_mult and capacity_mult must be > 0")
        if self.end <= self.start:
            raise ValueError(f"phase {self.name!r} ends before it starts")

    def covers(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyConfig:
    """The healthy server and its fault schedule."""

    workers: int = 10
    service_median: float = 0.050
    service_p99: float = 0.200
    queue_limit: int = 100
    network_rtt: float = 0.001
    baseline: Phase = field(default_factory=lambda: Phase(name="baseline"))
    faults: tuple[Phase, ...] = ()

    @property
    def sigma(self) -> float:
        # For a log-normal, p99 = median * exp(2.326 sigma).
        return math.log(self.service_p99 / self.service_median) / 2.3263478740408408

    @property
    def mean_service(self) -> float:
        return self.service_median * math.exp(self.sigma**2 / 2)

    @property
    def capacity(self) -> float:
        """Healthy throughput in requests per second."""
        return self.workers / self.mean_service

    def phase_at(self, t: float) -> Phase:
        """The condition in force at ``t``: the last fault covering it, else the baseline."""
        current = self.baseline
        for phase in self.faults:
            if phase.covers(t):
                current = _merge(self.baseline, phase)
        return current

    def boundaries(self) -> list[float]:
        """Times at which the condition changes."""
        times = {p.start for p in self.faults} | {p.end for p in self.faults}
        return sorted(t for t in times if math.isfinite(t))


def _merge(base: Phase, fault: Phase) -> Phase:
    """A fault phase over the baseline: the fault's non-default fields win."""
    default = Phase()
    changes = {}
    for name in (
        "error_prob",
        "permanent_prob",
        "latency_mult",
        "capacity_mult",
        "outage",
        "throttle_rate",
        "throttle_burst",
        "throttle_hint",
    ):
        value = getattr(fault, name)
        if value != getattr(default, name):
            changes[name] = value
    return replace(base, start=fault.start, end=fault.end, name=fault.name, **changes)


class Dependency:
    """The server of :class:`DependencyConfig`, running on the current event loop.

    ``await dependency.call()`` is one attempt. Counters of attempts and their answers are kept
    for the metrics; ``on_attempt`` (if set) is told of every attempt as ``(time, answer)``.
    """

    def __init__(self, config: DependencyConfig, *, seed: int) -> None:
        self.config = config
        self._rng = random.Random(seed)
        self._loop = asyncio.get_running_loop()
        self._busy = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._phase = config.phase_at(self._loop.time())
        self._workers = self._workers_for(self._phase)
        self._bucket_tokens = self._phase.throttle_burst
        self._bucket_time = self._loop.time()
        self.on_attempt: Callable[[float, str], None] | None = None
        for t in config.boundaries():
            delay = t - self._loop.time()
            if delay >= 0:
                self._loop.call_later(delay, self._phase_changed)

    def _workers_for(self, phase: Phase) -> int:
        return max(1, round(self.config.workers * phase.capacity_mult))

    def _phase_changed(self) -> None:
        old = self._phase
        self._phase = self.config.phase_at(self._loop.time())
        self._workers = self._workers_for(self._phase)
        if self._phase.throttle_rate != old.throttle_rate:
            self._bucket_tokens = self._phase.throttle_burst
            self._bucket_time = self._loop.time()
        self._pump()

    @property
    def busy(self) -> int:
        return self._busy

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _note(self, answer: str) -> None:
        if self.on_attempt is not None:
            self.on_attempt(self._loop.time(), answer)

    def _throttled(self, phase: Phase) -> bool:
        rate = phase.throttle_rate
        if rate is None:
            return False
        now = self._loop.time()
        tokens = self._bucket_tokens + (now - self._bucket_time) * rate
        self._bucket_tokens = min(tokens, phase.throttle_burst)
        self._bucket_time = now
        # A whole token, up to float rounding: calls spaced exactly 1 / rate apart must all
        # pass, though (now - then) * rate sums to 0.9999999999999998 now and then.
        if self._bucket_tokens >= 1.0 - 1e-9:
            self._bucket_tokens = max(0.0, self._bucket_tokens - 1.0)
            return False
        return True

    async def call(self) -> None:
        """One attempt; returns on success, raises the dependency's answer otherwise."""
        loop = self._loop
        phase = self._phase
        future: asyncio.Future[None] = loop.create_future()
        if phase.outage == "refuse":
            self._note("refused")
            loop.call_later(self.config.network_rtt, _fail, future, ConnectionRefusedError())
        elif phase.outage == "blackhole":
            self._note("blackhole")  # never answered: the client's timeout ends it
        elif self._throttled(phase):
            self._note("throttled")
            hint = (
                1.0 / phase.throttle_rate if phase.throttle_hint and phase.throttle_rate else None
            )
            loop.call_later(
                self.config.network_rtt, _fail, future, Throttled("429", retry_after=hint)
            )
        elif self._busy < self._workers:
            self._note("accepted")
            self._start(future)
        elif len(self._queue) < self.config.queue_limit:
            self._note("accepted")
            self._queue.append(future)
        else:
            self._note("overloaded")
            loop.call_later(self.config.network_rtt, _fail, future, ServerOverloaded("503"))
        await future

    def _start(self, future: asyncio.Future[None]) -> None:
        self._busy += 1
        phase = self._phase
        service = self._rng.lognormvariate(math.log(self.config.service_median), self.config.sigma)
        self._loop.call_later(service * phase.latency_mult, self._finish, future)

    def _finish(self, future: asyncio.Future[None]) -> None:
        self._busy -= 1
        phase = self._phase
        draw = self._rng.random()
        if not future.done():  # the client may have given up: the work was done anyway
            if draw < phase.permanent_prob:
                future.set_exception(PermanentDependencyError("400"))
            elif draw < phase.permanent_prob + phase.error_prob:
                future.set_exception(TransientDependencyError("500"))
            else:
                future.set_result(None)
        self._pump()

    def _pump(self) -> None:
        queue = self._queue
        while queue and self._busy < self._workers:
            self._start(queue.popleft())


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
