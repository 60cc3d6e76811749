"""``Registry.status()``: a JSON-ready snapshot of every named policy, for a health endpoint."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sage_resilience.core import (
    Bulkhead,
    CircuitBreaker,
    FakeClock,
    Fallback,
    Hedge,
    RateLimiter,
    Registry,
    Retry,
    Timeout,
)


def fail() -> None:
    raise ConnectionError("down")


def fill(registry: Registry, clock: FakeClock) -> dict[str, Any]:
    """One policy of each kind, registered and used a little."""
    policies: dict[str, Any] = {
        "db": CircuitBreaker("db", clock=clock, failure_threshold=2, recovery_timeout=30.0),
        "db-retry": Retry(name="db-retry", max_attempts=2, initial_delay=0.0, clock=clock),
        "emb-limit": RateLimiter(rate=5.0, burst=10, name="emb-limit", clock=clock),
        "emb-bulkhead": Bulkhead(4, max_queue=2, name="emb-bulkhead", clock=clock),
        "emb-timeout": Timeout(2.0, kind="total", name="emb-timeout"),
        "search-fallback": Fallback(value=[], name="search-fallback"),
        "emb-hedge": Hedge(0.2, max_hedges=2, name="emb-hedge"),
    }
    for policy in policies.values():
        registry.register(policy)
    policies["db"].call(lambda: "ok")
    with pytest.raises(ConnectionError):
        policies["db-retry"].call(fail)
    policies["emb-limit"].try_acquire(3)
    policies["emb-bulkhead"].try_acquire()
    policies["search-fallback"].call(fail)
    return policies


def test_every_kind_has_an_entry_with_its_numbers(registry: Registry, clock: FakeClock) -> None:
    """Each registered policy appears under its name with its kind, state, settings and counts."""
    fill(registry, clock)
    status = registry.status()
    assert status["registry"] == "test"
    entries = status["policies"]
    assert set(entries) == {
        "db", "db-retry", "emb-limit", "emb-bulkhead", "emb-timeout", "search-fallback",
        "emb-hedge",
    }  # fmt: skip
    assert {name: e["kind"] for name, e in entries.items()} == {
        "db": "circuit_breaker",
        "db-retry": "retry",
        "emb-limit": "rate_limiter",
        "emb-bulkhead": "bulkhead",
        "emb-timeout": "timeout",
        "search-fallback": "fallback",
        "emb-hedge": "hedge",
    }
    db = entries["db"]
    assert (db["state"], db["calls"], db["successes"], db["failures"]) == ("closed", 1, 1, 0)
    assert db["failure_rate"] == 0.0 and db["retry_after"] == 0.0
    retry = entries["db-retry"]
    assert (retry["calls"], retry["attempts"], retry["gave_up"]) == (1, 2, 1)
    limit = entries["emb-limit"]
    assert (limit["rate"], limit["burst"], limit["tokens"], limit["acquired"]) == (
        5.0,
        10.0,
        7.0,
        1,
    )
    bulkhead = entries["emb-bulkhead"]
    assert (bulkhead["max_concurrent"], bulkhead["in_use"], bulkhead["admitted"]) == (4, 1, 1)
    assert entries["emb-timeout"] == {
        "kind": "timeout", "seconds": 2.0, "timeout_kind": "total", "fired": 0,
    }  # fmt: skip
    assert entries["search-fallback"] == {"kind": "fallback", "handled": 1}
    hedge = entries["emb-hedge"]
    assert (hedge["delay"], hedge["max_hedges"], hedge["calls"]) == (0.2, 2, 0)
    assert all("name" not in e for e in entries.values())


def test_regression_timeout_entry_keeps_its_policy_kind(registry: Registry) -> None:
    """A timeout's own kind never overwrites its status entry's policy kind."""
    # Regression: its stats field was called ``kind`` and replaced "timeout" by "attempt".
    registry.register(Timeout(1.0, name="t"))
    entry = registry.status()["policies"]["t"]
    assert entry["kind"] == "timeout"
    assert entry["timeout_kind"] == "attempt"


def test_status_is_json_ready(registry: Registry, clock: FakeClock) -> None:
    """json.dumps accepts the snapshot as it is, and loading it gives the same dict back."""
    policies = fill(registry, clock)
    policies["db"].force_open()
    status = registry.status()
    text = json.dumps(status, allow_nan=False)
    assert json.loads(text) == status


def test_healthy_is_false_while_a_breaker_is_open(registry: Registry, clock: FakeClock) -> None:
    """``healthy`` drops while any breaker is open and returns once it is half-open or closed."""
    policies = fill(registry, clock)
    breaker = policies["db"]
    assert registry.status()["healthy"] is True
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(fail)
    status = registry.status()
    assert status["healthy"] is False
    assert status["policies"]["db"]["state"] == "open"
    assert status["policies"]["db"]["retry_after"] == pytest.approx(30.0)
    clock.advance(30.0)
    status = registry.status()
    assert status["policies"]["db"]["state"] == "half_open"
    assert status["healthy"] is True
    breaker.force_open()
    assert registry.status()["healthy"] is False
    breaker.reset()
    assert registry.status()["healthy"] is True


def test_empty_registry_is_healthy(registry: Registry) -> None:
    """No policy: an empty, healthy snapshot."""
    assert registry.status() == {"registry": "test", "healthy": True, "policies": {}}


def test_status_reflects_later_activity(registry: Registry, clock: FakeClock) -> None:
    """The snapshot is taken at each call: counts move between two calls."""
    policies = fill(registry, clock)
    before = registry.status()["policies"]["search-fallback"]["handled"]
    policies["search-fallback"].call(fail)
    assert registry.status()["policies"]["search-fallback"]["handled"] == before + 1


def test_policy_with_mapping_stats_is_included(registry: Registry) -> None:
    """A user policy whose stats() is a plain mapping contributes its fields too."""

    class Custom:
        name = "custom"

        def stats(self) -> dict[str, Any]:
            return {"name": "custom", "kind": "ignored", "queue": 3}

        def add_listener(self, listener: Any) -> None:
            pass

    registry.register(Custom())
    assert registry.status()["policies"]["custom"] == {"kind": "custom", "queue": 3}
