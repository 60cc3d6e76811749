"""The adaptive circuit breaker: what it learns, when it trips, how it recovers, what it tells."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sage_resilience.adaptive.breaker import (
    ADAPTIVE_BREAKER_DEFAULTS,
    AdaptiveBreakerConfig,
    AdaptiveCircuitBreaker,
    adaptive_breaker,
    significant,
)
from sage_resilience.adaptive.controller import Decision
from sage_resilience.core import (
    BreakerStateChanged,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitState,
    Event,
    FakeClock,
    Registry,
    WindowType,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


# -- a modelled dependency driven at a steady rate on a fake clock ------------------------------


class Dependency:
    """Fails with probability ``fail_rate``; each call takes a log-normal time on the clock."""

    def __init__(
        self,
        clock: FakeClock,
        *,
        seed: int = 0,
        fail_rate: float = 0.0,
        median: float = 0.002,
        sigma: float = 0.5,
    ) -> None:
        self.clock = clock
        self.rng = random.Random(seed)
        self.fail_rate = fail_rate
        self.median = median
        self.sigma = sigma
        self.slowdown = 1.0
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        latency = self.median * math.exp(self.sigma * self.rng.gauss(0.0, 1.0)) * self.slowdown
        self.clock.advance(latency)
        if self.rng.random() < self.fail_rate:
            raise ConnectionError("dependency failed")
        return "ok"


class Driver:
    """Calls ``breaker.call(dep)`` every ``1/rate`` seconds (or as soon as the last call ends)."""

    def __init__(self, breaker: CircuitBreaker, dep: Dependency, rate: float = 100.0) -> None:
        self.breaker = breaker
        self.dep = dep
        self.clock = dep.clock
        self.interval = 1.0 / rate
        self.next_at = self.clock.now()
        self.calls = 0
        self.rejected = 0
        self.successes = 0

    def step(self) -> None:
        now = self.clock.now()
        if now < self.next_at:
            self.clock.advance(self.next_at - now)
        self.next_at += self.interval
        self.calls += 1
        try:
            self.breaker.call(self.dep)
        except ConnectionError:
            pass
        except CircuitBreakerOpenError:
            self.rejected += 1
        else:
            self.successes += 1

    def run_for(self, seconds: float, until: Callable[[], bool] | None = None) -> float | None:
        """Drive for ``seconds``; with ``until``, stop early when it holds and return when."""
        end = self.clock.now() + seconds
        while self.clock.now() < end:
            self.step()
            if until is not None and until():
                return self.clock.now()
        return None


def tripped(breaker: CircuitBreaker) -> Callable[[], bool]:
    return lambda: breaker._state is not CLOSED


def collector() -> tuple[list[Event], Callable[[Event], None]]:
    events: list[Event] = []
    return events, events.append


class CountingClock(FakeClock):
    """A fake clock that counts its readings."""

    __slots__ = ("reads",)

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self.reads = 0

    def now(self) -> float:
        self.reads += 1
        return super().now()


# -- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("half_life", 0.0),
        ("significance", 0.0),
        ("significance", 1.0),
        ("run_significance", 1.5),
        ("suspect_significance", -0.1),
        ("prior_failure_rate", 0.0),
        ("prior_weight", 0.0),
        ("min_failure_threshold", 0),
        ("latency_quantile", 1.0),
        ("slow_factor", 0.5),
        ("min_slow_call_duration", 0.0),
        ("latency_warmup", 0.5),
        ("samples_per_tick", -1),
        ("initial_open_duration", 0.0),
        ("open_growth", 0.9),
        ("decision_change", -0.1),
    ],
)
def test_bad_adaptive_settings_raise_naming_the_field(field: str, value: Any) -> None:
    """Each bad learning setting is refused at construction with its name in the message."""
    with pytest.raises(ValueError, match=field):
        AdaptiveBreakerConfig(**{field: value})


def test_inverted_bounds_raise_naming_the_field() -> None:
    """A maximum below its minimum names the maximum."""
    with pytest.raises(ValueError, match="max_failure_threshold"):
        AdaptiveBreakerConfig(min_failure_threshold=10, max_failure_threshold=5)
    with pytest.raises(ValueError, match="max_slow_call_duration"):
        AdaptiveBreakerConfig(min_slow_call_duration=1.0, max_slow_call_duration=0.5)


def test_count_window_and_short_cap_are_refused(clock: FakeClock) -> None:
    """A count window cannot carry the sampled fast path; the open cap must allow the start."""
    with pytest.raises(ValueError, match="window_type"):
        AdaptiveCircuitBreaker("db", clock=clock, window_type=WindowType.COUNT)
    with pytest.raises(ValueError, match="initial_open_duration"):
        AdaptiveCircuitBreaker("db", clock=clock, recovery_timeout=0.1)
    with pytest.raises(TypeError, match="adaptive"):
        AdaptiveCircuitBreaker("db", clock=clock, adaptive=object())  # type: ignore[arg-type]


def test_starts_from_the_pessimistic_prior(clock: FakeClock) -> None:
    """Before any data the baseline is the 20 % prior: a run of 13 trips, nothing is slow yet."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    assert isinstance(b, CircuitBreaker)
    base = b.baseline()
    assert base.failure_rate == pytest.approx(0.2)
    assert base.failure_threshold == 13
    assert base.latency is None
    assert base.slow_call_duration == 30.0
    assert base.open_duration == 0.25
    assert b.config.recovery_timeout == ADAPTIVE_BREAKER_DEFAULTS.recovery_timeout == 1.0


def test_core_overrides_apply(clock: FakeClock) -> None:
    """Keyword overrides change the core settings, as with the base class."""
    b = AdaptiveCircuitBreaker("db", clock=clock, minimum_calls=30, success_threshold=3)
    assert b.config.minimum_calls == 30
    assert b.config.success_threshold == 3


# -- the fast path ------------------------------------------------------------------------------


def test_closed_success_reads_the_clock_once_like_the_core() -> None:
    """Between ticks a success costs what the core's fast path costs: one clock reading."""
    clock = CountingClock(1000.0)
    adaptive = AdaptiveCircuitBreaker("a", clock=clock)
    core = CircuitBreaker(
        "c",
        dataclasses.replace(
            adaptive.config, slow_call_duration=None, slow_call_rate_threshold=None
        ),
        clock=clock,
    )
    clock.advance(0.01)  # inside the first bucket: no tick, no sampling run
    for breaker in (core, adaptive):
        before = clock.reads
        for _ in range(5):
            breaker.call(lambda: None)
        assert clock.reads - before == 5
    assert adaptive._fast_gen >= 0


def test_each_tick_times_a_few_calls_then_returns_to_the_fast_path(clock: FakeClock) -> None:
    """After a tick the next ``samples_per_tick`` calls are timed, the rest take the fast path."""
    b = AdaptiveCircuitBreaker(
        "db", clock=clock, adaptive=AdaptiveBreakerConfig(samples_per_tick=4)
    )
    dep = Dependency(clock, median=0.001, sigma=0.0)
    clock.advance(0.3)  # past the first bucket boundary: the next call runs the tick
    b.call(dep)
    assert b._fast_gen < 0
    timed = b._timed.total_successes
    for _ in range(10):
        b.call(dep)
    assert b._timed.total_successes - timed == 4
    assert b._fast_gen >= 0


def test_no_sampling_leaves_the_latency_to_protocol_callers(clock: FakeClock) -> None:
    """With ``samples_per_tick=0`` only durations reported through the protocol are learned."""
    b = AdaptiveCircuitBreaker(
        "db", clock=clock, adaptive=AdaptiveBreakerConfig(samples_per_tick=0)
    )
    Driver(b, Dependency(clock, median=0.002)).run_for(10.0)
    assert b.baseline().latency is None
    for _ in range(2000):
        permit = b.acquire()
        clock.advance(0.005)
        b.on_success(permit, 0.004)
    assert b.baseline().latency == pytest.approx(0.004, rel=0.06)


# -- the statistical test -----------------------------------------------------------------------


def _binomial_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@given(
    n=st.integers(min_value=1, max_value=120),
    data=st.data(),
    p=st.floats(min_value=0.001, max_value=0.9),
    alpha=st.sampled_from([1e-2, 1e-3, 1e-6]),
)
def test_significance_bounds_the_exact_binomial_tail(
    n: int, data: st.DataObject, p: float, alpha: float
) -> None:
    """Whenever the test says "significant", the exact chance of that many failures is <= alpha."""
    k = data.draw(st.integers(min_value=0, max_value=n))
    if significant(k, n, p, math.log(1 / alpha)):
        assert _binomial_tail(k, n, p) <= alpha * (1 + 1e-9)


def test_significance_needs_more_than_the_baseline() -> None:
    """At or below the baseline nothing is significant; all-failures quickly is."""
    assert not significant(0, 0, 0.1, 10.0)
    assert not significant(10, 100, 0.1, 0.0001)
    assert significant(10, 10, 0.1, math.log(1e6))
    assert not significant(5, 10, 0.2, math.log(1e6))


@pytest.mark.parametrize("fail_rate", [0.1, 0.2])
def test_noisy_healthy_dependency_never_trips_in_ten_minutes(
    clock: FakeClock, fail_rate: float
) -> None:
    """10 % (or 20 %) random failures and log-normal latency at 100 calls/s: no trip in 10 min."""
    events, listener = collector()
    b = AdaptiveCircuitBreaker("db", clock=clock)
    driver = Driver(b, Dependency(clock, seed=7, fail_rate=fail_rate, median=0.002, sigma=0.5))
    assert driver.run_for(600.0, until=tripped(b)) is None
    assert driver.calls >= 59_000
    base = b.baseline()
    assert base.failure_rate == pytest.approx(fail_rate, abs=0.02)
    # log-normal p99 = median * exp(2.326 * 0.5) = 6.4 ms, within one 10 % bucket
    assert base.latency == pytest.approx(0.0064, rel=0.15)
    assert base.failure_threshold == math.ceil(math.log(1e-9) / math.log(base.failure_rate))
    b.add_listener(listener)
    Driver(b, driver.dep).run_for(60.0)
    assert not [e for e in events if isinstance(e, BreakerStateChanged)]


def test_outage_trips_within_a_second(clock: FakeClock) -> None:
    """A healthy minute at 10 % failures, then 100 %: open within a second and a few dozen calls."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    dep = Dependency(clock, seed=3, fail_rate=0.1)
    driver = Driver(b, dep)
    assert driver.run_for(60.0, until=tripped(b)) is None
    k = b.baseline().failure_threshold
    assert k in (9, 10)  # the shortest run with p0 ** k <= 1e-9, p0 ~ 0.1
    dep.fail_rate = 1.0
    start, calls = clock.now(), dep.calls
    when = driver.run_for(5.0, until=tripped(b))
    assert when is not None
    assert when - start <= 1.0
    assert dep.calls - calls <= k
    assert b.state is OPEN


def test_jump_from_one_to_sixty_percent_trips(clock: FakeClock) -> None:
    """A dependency learned at 1 % failures that jumps to 60 % is opened within about a second."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    dep = Dependency(clock, seed=11, fail_rate=0.01)
    driver = Driver(b, dep)
    assert driver.run_for(120.0, until=tripped(b)) is None
    assert b.baseline().failure_threshold == 5
    dep.fail_rate = 0.6
    start = clock.now()
    when = driver.run_for(10.0, until=tripped(b))
    assert when is not None and when - start <= 1.5


def test_quiet_service_outage_trips_after_the_learned_run(clock: FakeClock) -> None:
    """At 2 calls/s the window never holds enough calls; the run of k failures still trips it."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    dep = Dependency(clock, seed=5, fail_rate=0.01)
    driver = Driver(b, dep, rate=2.0)
    assert driver.run_for(600.0, until=tripped(b)) is None
    k = b.baseline().failure_threshold
    dep.fail_rate = 1.0
    calls = dep.calls
    assert driver.run_for(60.0, until=tripped(b)) is not None
    assert dep.calls - calls == k


def test_latency_collapse_trips_on_slow_calls(clock: FakeClock) -> None:
    """Every call 10x slower (and still succeeding) opens it for slow calls."""
    events, listener = collector()
    b = AdaptiveCircuitBreaker("db", clock=clock)
    dep = Dependency(clock, seed=2, fail_rate=0.01, median=0.002, sigma=0.5)
    driver = Driver(b, dep)
    assert driver.run_for(120.0, until=tripped(b)) is None
    slow = b.baseline().slow_call_duration
    assert 0.005 <= slow < 0.02
    b.add_listener(listener)
    dep.slowdown = 10.0
    start = clock.now()
    when = driver.run_for(10.0, until=tripped(b))
    assert when is not None and when - start <= 2.0
    changes = [e for e in events if isinstance(e, BreakerStateChanged)]
    assert changes[-1].reason == "slow_calls_above_baseline"


def test_a_fault_is_not_learned_as_normal(clock: FakeClock) -> None:
    """The baseline learned before an outage is the baseline after it."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    dep = Dependency(clock, seed=9, fail_rate=0.05)
    driver = Driver(b, dep)
    driver.run_for(120.0)
    before = b.baseline().failure_rate
    dep.fail_rate = 1.0
    driver.run_for(30.0)
    dep.fail_rate = 0.05
    driver.run_for(5.0)
    assert b.state is CLOSED
    assert b.baseline().failure_rate == pytest.approx(before, rel=0.1)


def test_stale_run_does_not_trip_after_the_threshold_is_lowered(clock: FakeClock) -> None:
    """Regression: a run of 10 failures followed by successes cannot trip a later, lower k."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    dep = Dependency(clock, seed=1, fail_rate=0.0)
    driver = Driver(b, dep)
    driver.run_for(0.2)  # 20 calls: the run below is a third of the window, under the floor
    dep.fail_rate = 1.0
    for _ in range(10):  # shorter than the prior's run of 13
        driver.step()
    assert b.state is CLOSED
    dep.fail_rate = 0.0
    driver.run_for(10.0)
    assert b._consecutive == 10
    assert b.baseline().failure_threshold < 10
    assert b.state is CLOSED


# -- recovery -----------------------------------------------------------------------------------


def _retry_after(b: CircuitBreaker) -> float:
    with pytest.raises(CircuitBreakerOpenError) as info:
        b.acquire()
    assert info.value.retry_after is not None
    return info.value.retry_after


def trip(b: CircuitBreaker, clock: FakeClock) -> int:
    """Fail calls until the breaker opens; how many it took."""
    down = Dependency(clock, fail_rate=1.0, sigma=0.0)
    n = 0
    while b._state is CLOSED:
        n += 1
        with pytest.raises(ConnectionError):
            b.call(down)
    return n


def test_open_duration_grows_on_failed_trials_and_resets_on_success(clock: FakeClock) -> None:
    """0.25 s, then x2 per failed trial round up to the 1 s cap; back to 0.25 s after a close."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    down = Dependency(clock, fail_rate=1.0, sigma=0.0)
    trip(b, clock)
    durations = []
    for _ in range(4):
        durations.append(_retry_after(b))
        clock.advance(durations[-1])
        with pytest.raises(ConnectionError):
            b.call(down)
    assert durations == [0.25, 0.5, 1.0, 1.0]
    clock.advance(_retry_after(b))
    up = Dependency(clock, sigma=0.0)
    b.call(up)
    b.call(up)
    assert b.state is CLOSED
    trip(b, clock)
    assert _retry_after(b) == 0.25


def test_half_open_admits_three_trials_and_two_successes_close_it(clock: FakeClock) -> None:
    """Half-open lets three trials in at once; two successes close it."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    trip(b, clock)
    clock.advance(0.25)
    permits = [b.acquire() for _ in range(3)]
    with pytest.raises(CircuitBreakerOpenError):
        b.acquire()
    b.on_success(permits[0], 0.001)
    assert b.state is HALF_OPEN
    b.on_success(permits[1], 0.001)
    assert b.state is CLOSED
    b.release(permits[2])


def test_return_of_the_dependency_is_noticed_within_a_second(clock: FakeClock) -> None:
    """After a 30 s outage the first success and the close come within ~1 s of the return."""
    for seed, offset in enumerate((0.0, 0.13, 0.41, 0.77)):
        b = AdaptiveCircuitBreaker(f"db{seed}", clock=clock)
        dep = Dependency(clock, seed=seed, fail_rate=0.1, median=0.002)
        driver = Driver(b, dep)
        driver.run_for(30.0)
        dep.fail_rate = 1.0
        driver.run_for(30.0 + offset)
        assert b._state is not CLOSED
        dep.fail_rate = 0.1
        back = clock.now()
        successes = driver.successes
        first = driver.run_for(5.0, until=lambda d=driver, s=successes: d.successes > s)
        assert first is not None and first - back <= 1.05
        closed = driver.run_for(5.0, until=lambda b=b: b._state is CLOSED)
        assert b.state is CLOSED
        assert (closed or clock.now()) - back <= 1.5


def test_slow_trial_reopens_once_latency_is_learned(clock: FakeClock) -> None:
    """A trial slower than the learned slow-call duration is a failed trial."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    Driver(b, Dependency(clock, seed=4, median=0.002)).run_for(60.0)
    slow = b.baseline().slow_call_duration
    b.force_open()
    b._forced = False
    clock.advance(1.0)
    permit = b.acquire()
    b.on_success(permit, slow * 2)
    assert b.state is OPEN


# -- decisions and events -----------------------------------------------------------------------


def test_learning_announces_decisions_and_a_steady_state_does_not(clock: FakeClock) -> None:
    """Moving off the prior emits Decision events; a steady dependency then stays quiet."""
    events, listener = collector()
    b = AdaptiveCircuitBreaker("db", clock=clock, listeners=[listener])
    assert events == []
    driver = Driver(b, Dependency(clock, seed=8, fail_rate=0.01, median=0.002))
    driver.run_for(120.0)
    decisions = [e for e in events if isinstance(e, Decision)]
    settings = {d.setting for d in decisions}
    assert {"baseline_failure_rate", "failure_threshold", "slow_call_duration"} <= settings
    for d in decisions:
        assert d.policy == "db" and d.controller == "adaptive_breaker"
        assert d.old != d.new
    slow = [d for d in decisions if d.setting == "slow_call_duration"]
    assert slow[0].old == 30.0 and slow[-1].new == b.config.slow_call_duration
    events.clear()
    driver.run_for(300.0)
    assert len([e for e in events if isinstance(e, Decision)]) <= 2


def test_open_duration_changes_are_announced(clock: FakeClock) -> None:
    """A trial that fails doubles the open duration and says so."""
    events, listener = collector()
    b = AdaptiveCircuitBreaker("db", clock=clock, listeners=[listener])
    trip(b, clock)
    clock.advance(0.25)
    with pytest.raises(ConnectionError):
        b.call(Dependency(clock, fail_rate=1.0, sigma=0.0))
    opens = [e for e in events if isinstance(e, Decision) and e.setting == "open_duration"]
    assert [(d.old, d.new) for d in opens] == [(0.25, 0.5)]
    states = [e.new_state for e in events if isinstance(e, BreakerStateChanged)]
    assert states == ["open", "half_open", "open"]


# -- manual control, config, registry, async ----------------------------------------------------


def test_reset_forgets_what_was_learned(clock: FakeClock) -> None:
    """reset() closes the breaker and goes back to the prior."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    Driver(b, Dependency(clock, seed=1, fail_rate=0.01)).run_for(60.0)
    assert b.baseline().failure_threshold == 5
    b.reset()
    base = b.baseline()
    assert base.failure_rate == pytest.approx(0.2)
    assert base.failure_threshold == 13 and base.latency is None
    assert b.stats().calls == 0


def test_update_config_keeps_the_learned_settings(clock: FakeClock) -> None:
    """A new core config keeps the learned run length and slow-call duration."""
    b = AdaptiveCircuitBreaker("db", clock=clock)
    Driver(b, Dependency(clock, seed=1, fail_rate=0.01)).run_for(60.0)
    learned = (b.config.failure_threshold, b.config.slow_call_duration)
    b.update_config(dataclasses.replace(ADAPTIVE_BREAKER_DEFAULTS, success_threshold=3))
    assert (b.config.failure_threshold, b.config.slow_call_duration) == learned
    assert b.config.success_threshold == 3
    with pytest.raises(ValueError, match="window_type"):
        b.update_config(CircuitBreakerConfig(window_type=WindowType.COUNT))


def test_adaptive_breaker_registers_once(registry: Registry, clock: FakeClock) -> None:
    """adaptive_breaker() creates, registers and then returns the same breaker by name."""
    b = adaptive_breaker("api", registry=registry, clock=clock)
    assert adaptive_breaker("api", registry=registry) is b
    assert registry.breakers() == [b]
    assert registry.status()["policies"]["api"]["kind"] == "circuit_breaker"
    with pytest.raises(ValueError, match="other adaptive settings"):
        adaptive_breaker("api", registry=registry, adaptive=AdaptiveBreakerConfig(half_life=5.0))
    registry.get_or_create("plain", CircuitBreakerConfig())
    with pytest.raises(ValueError, match="not an adaptive breaker"):
        adaptive_breaker("plain", registry=registry)


async def test_async_calls_trip_it_too(clock: FakeClock) -> None:
    """acall and the decorator drive the same protocol: an async outage opens it."""
    b = AdaptiveCircuitBreaker("db", clock=clock)

    @b
    async def down() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("down")

    for _ in range(10):
        with pytest.raises(ConnectionError):
            await down()
    with pytest.raises(CircuitBreakerOpenError):
        await b.acall(down)


# -- invariants ---------------------------------------------------------------------------------


@given(
    opens=st.integers(min_value=0, max_value=10_000),
    initial=st.floats(min_value=0.01, max_value=1.0),
    growth=st.floats(min_value=1.0, max_value=10.0),
)
def test_open_duration_stays_within_start_and_cap(
    opens: int, initial: float, growth: float
) -> None:
    """The open duration is between the initial duration and the cap, and never shrinks."""
    b = AdaptiveCircuitBreaker(
        "db",
        clock=FakeClock(),
        recovery_timeout=2.0,
        adaptive=AdaptiveBreakerConfig(initial_open_duration=initial, open_growth=growth),
    )
    d = b._open_duration_for(opens)
    assert initial <= d <= 2.0
    assert b._open_duration_for(opens + 1) >= d


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=5.0),
            st.booleans(),
            st.floats(min_value=1e-6, max_value=100.0),
        ),
        max_size=200,
    )
)
def test_learned_settings_stay_within_their_bounds(steps: list[tuple[float, bool, float]]) -> None:
    """Whatever the outcomes and latencies, the learned settings stay within their bounds."""
    clock = FakeClock(1000.0)
    a = AdaptiveBreakerConfig(samples_per_tick=2, latency_warmup=1.0)
    b = AdaptiveCircuitBreaker("db", clock=clock, adaptive=a)
    for gap, failed, duration in steps:
        clock.advance(gap)
        permit = b.try_acquire()
        if permit is None:
            continue
        if failed:
            b.on_failure(permit, duration)
        else:
            b.on_success(permit, duration)
        base = b.baseline()
        assert 0.001 <= base.failure_rate <= 0.95
        assert a.min_failure_threshold <= base.failure_threshold <= a.max_failure_threshold
        assert a.min_slow_call_duration <= base.slow_call_duration <= a.max_slow_call_duration
        assert a.initial_open_duration <= base.open_duration <= b.config.recovery_timeout
