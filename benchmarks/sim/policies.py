"""The policies the simulator compares, registered by name.

A policy builder gets a :class:`RunContext` (the run's clock, random source, listener and the
layer names) and returns a :class:`Stack`: one policy (or nothing) per layer, outer to inner.
The same policy objects users import run here; nothing is simulated about them.

* ``none``: no protection at all: one attempt, the client's deadline only.
* ``seed``: Sage's original configuration (``../shared/seed/``): at each of the three nested
  layers (manager, storage, database) a retry of 3 attempts, 0.5 s exponential backoff with the
  seed's 0.5-1.0 jitter, retrying every exception (its own breaker's refusals included), over a
  breaker that opens after 5 failures in 60 s (successes ignored, every exception counted) and
  stays open 60 s, and whose half-open state admits every caller.
* ``static``: a sound modern static configuration at the database layer only (one retrying
  layer): 3 attempts with full jitter (0.1 s base, 2 s cap), a breaker on failure rate (50 % of
  at least 20 calls in 10 s, 5 s open, 3 trial calls), and a per-attempt timeout of 2.5 times
  the dependency's healthy p99.

Adaptive policies register themselves through :func:`register_policy`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...adaptive import AdaptiveOptions, AdaptivePolicy, BudgetRegistry, Priority, priority
from ...core import (
    Bulkhead,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    Clock,
    Jitter,
    Listener,
    LoopClock,
    Pipeline,
    RandomSource,
    Registry,
    Retry,
    RetryConfig,
    RetryStrategy,
    Timeout,
)
from ...core.breaker import CircuitState

__all__ = [
    "POLICIES",
    "PolicySpec",
    "RunContext",
    "SeedBreaker",
    "Stack",
    "StaticParams",
    "build_adaptive",
    "register_policy",
    "resolve_policy",
    "seed_layer",
]


@dataclass
class RunContext:
    """What a policy builder may know about a run (nothing about the faults to come)."""

    clock: LoopClock
    rng: random.Random
    listener: Listener
    layers: tuple[str, ...]
    healthy_p99: float
    registry: Registry = field(default_factory=lambda: Registry("sim"))

    def attach(self, *policies: Any) -> None:
        """Register ``policies`` (so the recorder hears their events)."""
        for policy in policies:
            self.registry.register(policy)
            policy.add_listener(self.listener)


@dataclass
class Stack:
    """One run's policies: ``layers[i]`` guards layer ``i`` (outer to inner), or ``None``."""

    layers: list[Any]
    priority: Callable[[str], AbstractContextManager[Any]] | None = None
    state: Callable[[], dict[str, float]] | None = None  # extra values to plot over time


@dataclass(frozen=True)
class PolicySpec:
    name: str
    build: Callable[[RunContext], Stack]
    description: str


POLICIES: dict[str, PolicySpec] = {}


def register_policy(name: str, build: Callable[[RunContext], Stack], description: str) -> None:
    """Make ``name`` selectable on the command line (``--policy name``)."""
    POLICIES[name] = PolicySpec(name, build, description)


class SeedBreaker(CircuitBreaker):
    """The seed's breaker: opens on ``failure_threshold`` failures within the monitoring
    window, successes ignored; every exception counts, its own and inner breakers' refusals
    included (the defects of ``../shared/DESIGN.md`` kept on purpose, to measure them)."""

    def _should_trip(self, now: float) -> str:
        config = self.config
        threshold = config.failure_threshold or 5
        if self._window.snapshot(now).failures >= threshold:
            return "failures_in_window"
        return ""

    def on_exception(self, permit: int, exception: BaseException, duration: float = 0.0) -> None:
        if isinstance(exception, Exception):
            self.on_failure(permit, duration, exception)
        else:
            self.release(permit)


def _always(_exc: BaseException) -> bool:
    return True


def _build_none(ctx: RunContext) -> Stack:
    return Stack(layers=[None] * len(ctx.layers))


def seed_layer(name: str, *, clock: Clock, random: RandomSource) -> Pipeline:
    """One layer of Sage's original configuration: ``Pipeline(retry, breaker)`` named ``name``.

    The retry makes 3 attempts with 0.5 s exponential backoff and the seed's [0.5, 1.0] jitter,
    retrying every exception (permanent errors and its own breaker's refusals included); under
    it a :class:`SeedBreaker` opens after 5 failures in 60 s and stays open 60 s. The parts are
    ``name.retry`` and ``name.breaker`` (``pipeline.policies``, outermost first). The seed
    stacked three such layers (manager, storage, database); the simulator's ``seed`` policy and
    ``sage-resilience demo`` build them with this function.

    Args:
        name: the layer's name.
        clock: the clock of the retry's sleeps and the breaker's windows.
        random: ``() -> float`` in [0, 1) for the jitter.
    """
    retry = Retry(
        RetryConfig(
            max_attempts=3,
            initial_delay=0.5,
            strategy=RetryStrategy.EXPONENTIAL,
            jitter=True,
            retryable_exceptions=(Exception, CircuitBreakerOpenError),
            # The seed retried every exception, 4xx-like permanent errors included (the core's
            # default classification would not).
            retry_condition=_always,
            clock=clock,
            random=random,
        ),
        name=f"{name}.retry",
    )
    breaker = SeedBreaker(
        f"{name}.breaker",
        CircuitBreakerConfig(
            failure_threshold=5,
            monitoring_window=60.0,
            recovery_timeout=60.0,
            success_threshold=2,
            half_open_max_calls=1_000_000,
        ),
        clock=clock,
    )
    return Pipeline(retry, breaker, name=name)


def _build_seed(ctx: RunContext) -> Stack:
    layers: list[Any] = []
    for name in ctx.layers:
        layer = seed_layer(name, clock=ctx.clock, random=ctx.rng.random)
        ctx.attach(*layer.policies)
        layers.append(layer)
    return Stack(layers=layers)


def _build_seed_retries(ctx: RunContext) -> Stack:
    stack = _build_seed(ctx)
    # The same nested retries, with the breakers taken out: what the seed's own measurement saw
    # (its breakers did not hold, so each request made 3 x 3 x 3 database attempts).
    stack.layers = [Pipeline(layer.policies[0], name=layer.name) for layer in stack.layers]
    return stack


@dataclass(frozen=True)
class StaticParams:
    """A static configuration of the database layer: what ``static`` uses and what
    ``sage-resilience bench --grid`` searches over.

    ``breaker_rate`` ``None``: no breaker; ``timeout_factor`` ``None``: no per-attempt timeout
    (else that multiple of the healthy p99); ``bulkhead`` ``None``: no concurrency cap.
    """

    attempts: int = 3
    base_delay: float = 0.1
    breaker_rate: float | None = 0.5
    open_seconds: float = 5.0
    timeout_factor: float | None = 2.5
    bulkhead: int | None = None

    _KEYS: ClassVar[dict[str, str]] = {
        "a": "attempts",
        "d": "base_delay",
        "b": "breaker_rate",
        "o": "open_seconds",
        "t": "timeout_factor",
        "c": "bulkhead",
    }

    def name(self) -> str:
        parts = []
        for key, attr in self._KEYS.items():
            value = getattr(self, attr)
            parts.append(f"{key}={'off' if value is None else value}")
        return f"static[{','.join(parts)}]"

    @classmethod
    def parse(cls, name: str) -> StaticParams:
        if not (name.startswith("static[") and name.endswith("]")):
            raise ValueError(f"not a static configuration name: {name!r}")
        values: dict[str, Any] = {}
        for item in name[len("static[") : -1].split(","):
            key, _, raw = item.partition("=")
            attr = cls._KEYS.get(key)
            if attr is None:
                raise ValueError(f"unknown key {key!r} in {name!r}")
            if raw == "off":
                values[attr] = None
            elif attr in ("attempts", "bulkhead"):
                values[attr] = int(raw)
            else:
                values[attr] = float(raw)
        return cls(**values)

    def build(self, ctx: RunContext) -> Stack:
        policies: list[Any] = []
        retry = Retry(
            RetryConfig(
                max_attempts=self.attempts,
                initial_delay=self.base_delay,
                max_delay=max(2.0, self.base_delay),
                strategy=RetryStrategy.EXPONENTIAL,
                jitter=Jitter.FULL,
                clock=ctx.clock,
                random=ctx.rng.random,
            ),
            name="database.retry",
        )
        policies.append(retry)
        if self.breaker_rate is not None:
            policies.append(
                CircuitBreaker(
                    "database.breaker",
                    CircuitBreakerConfig(
                        failure_threshold=None,
                        failure_rate_threshold=self.breaker_rate,
                        minimum_calls=20,
                        monitoring_window=10.0,
                        recovery_timeout=self.open_seconds,
                        success_threshold=3,
                        half_open_max_calls=3,
                    ),
                    clock=ctx.clock,
                )
            )
        if self.timeout_factor is not None:
            policies.append(
                Timeout(
                    self.timeout_factor * ctx.healthy_p99, kind="attempt", name="database.timeout"
                )
            )
        if self.bulkhead is not None:
            policies.append(
                Bulkhead(self.bulkhead, max_queue=0, name="database.bulkhead", clock=ctx.clock)
            )
        ctx.attach(*policies)
        layers: list[Any] = [None] * (len(ctx.layers) - 1)
        layers.append(Pipeline.build(*policies, name="database"))
        return Stack(layers=layers)


def _build_static(ctx: RunContext) -> Stack:
    return StaticParams().build(ctx)


def resolve_policy(name: str) -> PolicySpec:
    """The registered policy ``name``, or a static configuration named by
    :meth:`StaticParams.name` (the grid search's)."""
    spec = POLICIES.get(name)
    if spec is not None:
        return spec
    if name.startswith("static["):
        params = StaticParams.parse(name)
        return PolicySpec(name, params.build, "a static configuration of the grid")
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")


def build_adaptive(ctx: RunContext, **options: Any) -> Stack:
    """The ``adaptive`` policy at the database layer, with ``options`` (fields of
    :class:`~sage_resilience.adaptive.AdaptiveOptions`) over its defaults: for variants, sweeps
    and the notebooks."""
    policy = AdaptivePolicy(
        "database",
        AdaptiveOptions(**options),
        clock=ctx.clock,
        random=ctx.rng.random,
        budgets=BudgetRegistry("sim"),
    )
    policy.register(ctx.registry)
    policy.add_listener(ctx.listener)

    def enter(level: str) -> AbstractContextManager[Any]:
        return priority(Priority[level])

    def state() -> dict[str, float]:
        values: dict[str, float] = {}
        for key, value in policy.stats().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values[f"database.{key}"] = float(value)
        return values

    layers: list[Any] = [None] * (len(ctx.layers) - 1)
    layers.append(policy)
    return Stack(layers=layers, priority=enter, state=state)


register_policy("none", _build_none, "no protection: one attempt, the client's deadline only")
register_policy(
    "seed",
    _build_seed,
    "Sage's original: retry x3 (0.5 s exp, jitter) over a 5-failures/60 s breaker at each of "
    "3 nested layers",
)
register_policy(
    "seed-retries",
    _build_seed_retries,
    "the seed's three nested retry layers without breakers (the 27x multiplication)",
)
register_policy(
    "static",
    _build_static,
    "sound static config: one retrying layer, full jitter, 50 % failure-rate breaker, "
    "per-attempt timeout",
)


@contextmanager
def _no_priority(_: str) -> Iterator[None]:
    yield


def breaker_state_value(breaker: CircuitBreaker) -> float:
    """0 closed, 1 half-open, 2 open: for plots."""
    return {CircuitState.CLOSED: 0.0, CircuitState.HALF_OPEN: 1.0, CircuitState.OPEN: 2.0}[
        breaker.state
    ]


register_policy(
    "adaptive",
    build_adaptive,
    "adaptive_policy at its defaults: Gradient2 concurrency with priority shedding, an AIMD "
    "rate once throttled, budgeted one-layer retries, adaptive breaker and timeout",
)
register_policy(
    "adaptive-vegas",
    lambda ctx: build_adaptive(ctx, concurrency="vegas"),
    "adaptive with the Vegas concurrency limit",
)
register_policy(
    "adaptive-cubic",
    lambda ctx: build_adaptive(ctx, rate="cubic"),
    "adaptive with the CUBIC rate controller (botocore's adaptive mode) for throttled APIs",
)
register_policy(
    "adaptive-aimd",
    lambda ctx: build_adaptive(ctx, concurrency="aimd"),
    "adaptive with the AIMD concurrency limit",
)
