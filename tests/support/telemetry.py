"""Helpers of the telemetry tests (``tests/integrations``): drive every kind of policy through its
events, scrape a real endpoint, parse the exposition, find the tools the dashboard tests run.

A module of its own rather than ``conftest``: two ``conftest.py`` files (``tests/integrations``
and ``tests/integrations/sage``) cannot both be imported as ``conftest``."""

from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass

import pytest
from sage_resilience.core import (
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    FakeClock,
    Fallback,
    Hedge,
    PermanentError,
    RateLimiter,
    Registry,
    Retry,
    RetryConfig,
)

REQUIRE_ENV = "SAGE_RESILIENCE_REQUIRE_SERVICES"


def require_tool(name: str, install: str) -> str:
    """The path of ``name``; missing, skip with the reason, or fail when CI requires it."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not on PATH (install: {install})"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 makes a missing tool a failure")
    pytest.skip(f"{message}; set {REQUIRE_ENV}=1 to make this a failure")


def scrape(url: str) -> str:
    """GET a metrics endpoint over real HTTP."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        body: bytes = response.read()
    return body.decode()


@dataclass
class Scenario:
    """Policies that have emitted every kind of event, and what they did."""

    clock: FakeClock
    registry: Registry
    breaker: CircuitBreaker
    retry: Retry
    limiter: RateLimiter
    bulkhead: Bulkhead
    fallback: Fallback
    hedge: Hedge


def build(clock: FakeClock, registry: Registry) -> Scenario:
    """Register one policy of each kind (listeners attached to ``registry`` see them all)."""
    breaker = registry.get_or_create(
        "db",
        CircuitBreakerConfig(failure_threshold=2, recovery_timeout=10.0, success_threshold=1),
        clock=clock,
    )
    retry = Retry(
        RetryConfig(max_attempts=2, initial_delay=0.5, jitter=False, clock=clock), name="embed"
    )
    limiter = RateLimiter(5.0, 2.0, name="embed_rate", clock=clock, max_wait=0.0)
    bulkhead = Bulkhead(1, name="pool", clock=clock)
    fallback = Fallback([], on=ConnectionError, name="search", clock=clock)
    hedge = Hedge(0.2, name="hedged", clock=clock)
    for policy in (retry, limiter, bulkhead, fallback, hedge):
        registry.register(policy)
    return Scenario(clock, registry, breaker, retry, limiter, bulkhead, fallback, hedge)


def drive(s: Scenario) -> None:
    """Make every policy emit each of its events once or more.

    Breaker ``db``: 1 success of 30 ms, 2 failures of 2 s (opens), 1 rejected call, then after
    the recovery timeout a successful trial (half-open, then closed). Retry ``embed``: one call
    that succeeds on its second attempt, one that gives up (attempts exhausted), one with a
    non-retryable error. Limiter ``embed_rate``: 2 tokens taken, 1 refused, rate set to 3.
    Bulkhead ``pool``: its slot held, 1 refused, limit set to 2 (slot still held). Fallback
    ``search``: one answer. Hedge ``hedged``: delay set to 0.1.
    """
    clock = s.clock

    def fast() -> int:
        clock.advance(0.03)
        return 1

    def broken() -> int:
        clock.advance(2.0)
        raise ConnectionError("down")

    s.breaker.call(fast)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            s.breaker.call(broken)
    with pytest.raises(CircuitBreakerOpenError):
        s.breaker.call(fast)
    clock.advance(10.0)
    s.breaker.call(fast)

    attempts = iter([ConnectionError("once"), None])

    def flaky() -> int:
        error = next(attempts)
        if error is not None:
            raise error
        return 2

    s.retry.call(flaky)
    with pytest.raises(ConnectionError):
        s.retry.call(broken)
    with pytest.raises(PermanentError):
        s.retry.call(_invalid)

    assert s.limiter.try_acquire()
    assert s.limiter.try_acquire()
    assert not s.limiter.try_acquire()
    s.limiter.set_rate(3.0)

    assert s.bulkhead.try_acquire()
    with pytest.raises(BulkheadFull):
        s.bulkhead.call(fast)
    s.bulkhead.set_limit(2)

    assert s.fallback.call(broken) == []
    s.hedge.set_delay(0.1)


def _invalid() -> int:
    raise PermanentError("not retryable")


Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def parse(text: str) -> Samples:
    """Exposition text as ``{sample name: {labels: value}}`` (prometheus-client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample, by name and exact labels."""
    return samples[name][frozenset(labels.items())]
