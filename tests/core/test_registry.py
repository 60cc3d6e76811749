"""Registries of named policies, and the default one that the seed's decorator really fills."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from sage_resilience.core import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitState,
    Event,
    FakeClock,
    Registry,
    Retry,
    RetryConfig,
    breaker_manager,
    circuit_breaker,
)
from sage_resilience.core.events import BreakerOutcome, BreakerStateChanged

STATS_FIELDS = {
    "name", "state", "calls", "successes", "failures", "ignored", "rejected", "slow_calls",
    "failure_rate", "last_failure_at", "state_since", "retry_after",
}  # fmt: skip


def _fail(fn: object) -> None:
    with pytest.raises(ConnectionError):
        fn()  # type: ignore[operator]


# -- the registry object ------------------------------------------------------------------------


def test_register_and_get(registry: Registry, clock: FakeClock) -> None:
    """A registered policy is found by name; an unknown name gives None."""
    b = CircuitBreaker("db", clock=clock)
    assert registry.register(b) is b
    assert registry.get("db") is b
    assert registry.get("nope") is None
    assert "db" in registry and "nope" not in registry
    assert len(registry) == 1
    assert registry.names() == ["db"]
    assert list(registry) == [b]


def test_register_same_object_twice_is_a_noop(registry: Registry, clock: FakeClock) -> None:
    """Registering the same policy again changes nothing; another one under its name is refused."""
    b = CircuitBreaker("db", clock=clock)
    registry.register(b)
    registry.register(b)
    assert len(registry) == 1
    with pytest.raises(ValueError, match="db"):
        registry.register(CircuitBreaker("db", clock=clock))
    assert registry.get("db") is b


def test_register_needs_a_named_policy(registry: Registry) -> None:
    """Something without a non-empty string name cannot be registered."""
    with pytest.raises(TypeError, match="name"):
        registry.register(object())  # type: ignore[arg-type]


def test_get_or_create_creates_once(registry: Registry, clock: FakeClock) -> None:
    """get_or_create builds the policy on first use and returns the same object afterwards."""
    config = CircuitBreakerConfig(failure_threshold=3)
    first = registry.get_or_create("svc", config, clock=clock)
    assert isinstance(first, CircuitBreaker)
    assert first.config == config and first.clock is clock
    assert registry.get_or_create("svc", CircuitBreakerConfig(failure_threshold=3)) is first
    assert registry.get_or_create("svc") is first  # no config: the existing one, as it is


def test_get_or_create_default_is_a_default_breaker(registry: Registry) -> None:
    """Without a config, a missing name becomes a breaker with the default config."""
    b = registry.get_or_create("plain")
    assert isinstance(b, CircuitBreaker)
    assert b.config == CircuitBreakerConfig()


def test_get_or_create_builds_retry_policies(registry: Registry, clock: FakeClock) -> None:
    """A RetryConfig makes a named Retry policy that uses the given clock."""
    r = registry.get_or_create("retry-db", RetryConfig(max_attempts=4), clock=clock)
    assert isinstance(r, Retry)
    assert r.name == "retry-db"
    assert r.config.clock is clock
    with pytest.raises(ValueError, match="retry-db"):
        registry.get_or_create("retry-db", CircuitBreakerConfig())


def test_get_or_create_rejects_unknown_config_types(registry: Registry) -> None:
    """A config type with no factory is a TypeError."""
    with pytest.raises(TypeError, match="dict"):
        registry.get_or_create("x", {"failure_threshold": 1})


def test_get_or_create_different_settings_is_value_error(registry: Registry) -> None:
    """The same name with different numeric settings is a ValueError."""
    registry.get_or_create("svc", CircuitBreakerConfig(recovery_timeout=30.0))
    with pytest.raises(ValueError, match="svc"):
        registry.get_or_create("svc", CircuitBreakerConfig(recovery_timeout=31.0))


def test_get_or_create_exception_order_does_not_matter(registry: Registry) -> None:
    """Exception classes are compared as sets: the same classes in another order match."""
    first = registry.get_or_create(
        "svc",
        CircuitBreakerConfig(
            expected_exception=(ConnectionError, TimeoutError),
            ignore_exceptions=(KeyError, ValueError),
        ),
    )
    again = registry.get_or_create(
        "svc",
        CircuitBreakerConfig(
            expected_exception=(TimeoutError, ConnectionError),
            ignore_exceptions=(ValueError, KeyError),
        ),
    )
    assert again is first
    with pytest.raises(ValueError, match="svc"):
        registry.get_or_create("svc", CircuitBreakerConfig(expected_exception=ConnectionError))


def test_get_breaker_returns_existing_whatever_its_settings(registry: Registry) -> None:
    """get_breaker(name) without a config returns the registered breaker as it is."""
    b = registry.get_or_create("db", CircuitBreakerConfig(failure_threshold=3))
    assert registry.get_breaker("db") is b
    assert registry.get_breaker("db", CircuitBreakerConfig(failure_threshold=3)) is b
    with pytest.raises(ValueError):
        registry.get_breaker("db", CircuitBreakerConfig(failure_threshold=4))
    registry.get_or_create("r", RetryConfig())
    with pytest.raises(ValueError, match="circuit breaker"):
        registry.get_breaker("r")


def test_get_all_stats_is_json_ready(registry: Registry, clock: FakeClock) -> None:
    """get_all_stats() is a list with one plain dict per breaker, with every stats field."""
    a = registry.get_or_create("a", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    registry.get_or_create("b", clock=clock)
    registry.get_or_create("retry", RetryConfig(), clock=clock)  # not a breaker: not listed
    a.call(lambda: 1)
    _fail(lambda: a.call(_raise_connection_error))
    stats = registry.get_all_stats()
    assert [s["name"] for s in stats] == ["a", "b"]
    for s in stats:
        assert type(s) is dict
        assert set(s) == STATS_FIELDS
    assert stats[0]["state"] == "open"
    assert (stats[0]["successes"], stats[0]["failures"], stats[0]["calls"]) == (1, 1, 2)
    assert stats[0]["last_failure_at"] == clock.now()
    assert json.loads(json.dumps(stats)) == stats


def _raise_connection_error() -> None:
    raise ConnectionError("down")


def test_reset_one_and_all(registry: Registry, clock: FakeClock) -> None:
    """reset(name) closes and zeroes one breaker; reset_all() every policy (retry stats too)."""
    config = CircuitBreakerConfig(failure_threshold=1)
    a = registry.get_or_create("a", config, clock=clock)
    b = registry.get_or_create("b", config, clock=clock)
    r = registry.get_or_create("r", RetryConfig(max_attempts=1), clock=clock)
    for br in (a, b):
        _fail(lambda br=br: br.call(_raise_connection_error))
    r.call(lambda: 1)
    registry.reset("a")
    assert (a.state, b.state) == (CircuitState.CLOSED, CircuitState.OPEN)
    assert a.stats().calls == 0
    registry.reset_all()
    assert b.state is CircuitState.CLOSED
    assert b.stats().calls == 0
    assert r.stats().calls == 0


def test_reset_unknown_name_is_key_error(registry: Registry) -> None:
    """Resetting a name that is not registered is a KeyError."""
    with pytest.raises(KeyError):
        registry.reset("ghost")


def test_unregister(registry: Registry, clock: FakeClock) -> None:
    """unregister removes and returns the policy; an absent name gives None."""
    b = registry.get_or_create("x", clock=clock)
    assert registry.unregister("x") is b
    assert registry.get("x") is None
    assert registry.unregister("x") is None
    assert registry.get_or_create("x", clock=clock) is not b


def test_clear_forgets_everything(registry: Registry) -> None:
    """clear() empties the registry."""
    registry.get_or_create("x")
    registry.clear()
    assert len(registry) == 0


def test_add_listener_reaches_present_and_future_policies(
    registry: Registry, clock: FakeClock
) -> None:
    """A registry listener gets events of policies registered before and after it was added."""
    events: list[Event] = []
    before = registry.get_or_create(
        "before", CircuitBreakerConfig(failure_threshold=1), clock=clock
    )
    registry.add_listener(events.append)
    registry.add_listener(events.append)  # twice: no effect
    after = registry.get_or_create("after", CircuitBreakerConfig(failure_threshold=1), clock=clock)
    registered = registry.register(CircuitBreaker("registered", clock=clock))
    for b in (before, after, registered):
        b.call(lambda: 1)
    assert [e.policy for e in events if isinstance(e, BreakerOutcome)] == [
        "before",
        "after",
        "registered",
    ]
    registry.remove_listener(events.append)  # a fresh bound method, equal to the added one
    events.clear()
    for b in (before, after, registered):
        b.call(lambda: 1)
    assert events == []


def test_repr_lists_names(registry: Registry) -> None:
    """repr names the registry and its policies."""
    registry.get_or_create("x")
    assert repr(registry) == "Registry(name='test', policies=['x'])"


def test_concurrent_get_or_create_makes_one_policy(registry: Registry) -> None:
    """Many threads asking for the same name at once all get the same single breaker."""
    barrier = threading.Barrier(16)
    got: list[object] = []
    config = CircuitBreakerConfig(failure_threshold=2)

    def worker() -> None:
        barrier.wait(timeout=10)
        got.append(registry.get_or_create("shared", config))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(got) == 16
    assert len({id(x) for x in got}) == 1
    assert len(registry) == 1


# -- the seed's decorator and breaker_manager ---------------------------------------------------


def test_regression_decorator_registers_in_breaker_manager(clock: FakeClock) -> None:
    """Regression (seed): circuit_breaker(name) registers its breaker in breaker_manager."""
    # The seed's registry was local to each decoration: the manager stayed empty.

    @circuit_breaker("database", failure_threshold=3, clock=clock)
    def query() -> str:
        return "rows"

    assert query() == "rows"
    assert breaker_manager.get("database") is query.breaker  # type: ignore[attr-defined]
    assert [s["name"] for s in breaker_manager.get_all_stats()] == ["database"]
    assert breaker_manager.get_all_stats()[0]["successes"] == 1


async def test_manual_reset_closes_a_decorated_functions_breaker(clock: FakeClock) -> None:
    """breaker_manager.reset(name) really closes the open breaker of a decorated function."""
    calls = 0

    @circuit_breaker("external_api", failure_threshold=2, recovery_timeout=60, clock=clock)
    async def call_api() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("down")
        return "ok"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await call_api()
    with pytest.raises(CircuitBreakerOpenError):
        await call_api()
    breaker_manager.reset("external_api")
    assert await call_api() == "ok"
    assert call_api.breaker.state is CircuitState.CLOSED  # type: ignore[attr-defined]


def test_same_name_shares_one_breaker(clock: FakeClock) -> None:
    """Two functions decorated with the same name and settings share one breaker."""

    @circuit_breaker("shared", failure_threshold=2, clock=clock)
    def a() -> None:
        raise ConnectionError("a down")

    @circuit_breaker("shared", failure_threshold=2, clock=clock)
    def b() -> str:
        return "b"

    assert a.breaker is b.breaker  # type: ignore[attr-defined]
    _fail(a)
    _fail(a)
    with pytest.raises(CircuitBreakerOpenError):
        b()


@pytest.mark.parametrize(
    "second",
    [
        {"failure_threshold": 4},
        {"recovery_timeout": 61.0},
        {"expected_exception": ConnectionError},
        {"success_threshold": 3},
        {"failure_rate_threshold": 0.5},
        {"ignore_exceptions": (KeyError,)},
        {"window_type": "count"},
    ],
    ids=lambda d: next(iter(d)),
)
def test_same_name_different_config_is_value_error(second: dict[str, object]) -> None:
    """Decorating with a taken name and different numeric settings or exception classes fails."""
    circuit_breaker("svc", failure_threshold=3)
    kwargs: dict[str, object] = {"failure_threshold": 3, **second}
    with pytest.raises(ValueError, match="svc"):
        circuit_breaker("svc", **kwargs)  # type: ignore[arg-type]


def test_same_name_different_callbacks_or_clock_is_accepted() -> None:
    """Callbacks and the clock are not compared: the first decoration's stay."""
    opened: list[str] = []
    clock_a, clock_b = FakeClock(), FakeClock(500.0)
    first = circuit_breaker(
        "cb", failure_threshold=1, clock=clock_a, on_open=lambda: opened.append("first")
    )
    second = circuit_breaker(
        "cb", failure_threshold=1, clock=clock_b, on_open=lambda: opened.append("second")
    )
    assert second is first
    assert first.clock is clock_a
    _fail(lambda: second.call(_raise_connection_error))
    assert opened == ["first"]


def test_decorator_listeners_attach_to_shared_breaker() -> None:
    """listeners= given to a later decoration are attached to the shared breaker too."""
    events: list[Event] = []
    first = circuit_breaker("lst", failure_threshold=1)
    circuit_breaker("lst", failure_threshold=1, listeners=[events.append])
    _fail(lambda: first.call(_raise_connection_error))
    assert any(isinstance(e, BreakerStateChanged) for e in events)


def test_decorator_with_private_registry_leaves_default_empty(registry: Registry) -> None:
    """circuit_breaker(..., registry=r) registers in r, not in breaker_manager."""
    b = circuit_breaker("private", registry=registry)
    assert registry.get("private") is b
    assert breaker_manager.get("private") is None


def test_decorator_config_and_overrides() -> None:
    """config= is used as given, with keyword overrides applied on top."""
    base = CircuitBreakerConfig(failure_threshold=9, recovery_timeout=5.0)
    b = circuit_breaker("cfg", config=base, success_threshold=4)
    assert b.config.failure_threshold == 9
    assert b.config.success_threshold == 4


def test_breaker_manager_is_a_registry() -> None:
    """The default instance is an ordinary Registry."""
    assert isinstance(breaker_manager, Registry)


def test_async_and_sync_functions_share_by_name(clock: FakeClock) -> None:
    """A sync and an async function decorated with one name share the breaker's counts."""

    @circuit_breaker("mixed", clock=clock)
    def s() -> int:
        return 1

    @circuit_breaker("mixed", clock=clock)
    async def a() -> int:
        return 2

    assert s() + asyncio.run(a()) == 3
    assert breaker_manager.get("mixed").stats().successes == 2
