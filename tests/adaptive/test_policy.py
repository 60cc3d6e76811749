"""adaptive_policy: the adaptive pieces composed for one dependency.

The decorator and call forms (sync and async), registration, priorities carried into the limiter
and shed lowest first, retries at one layer within a shared budget, what is never retried,
retry-after hints, the breaker through an outage and back (and ``hold``), throttling and the
rate bucket, the adaptive timeout, controllers at most once per tick and their decision events,
cancellation, the counts the inlined hot path keeps, stats, and bad options.

Time never passes for real: a FakeClock for sync calls (dependencies below advance it by their
latency, retries sleep on it), and looptime's virtual loop read through LoopClock for async
calls.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sage_resilience.adaptive import (
    AdaptiveOptions,
    AdaptivePolicy,
    BudgetRegistry,
    Decision,
    Priority,
    RetryBudgetConfig,
    adaptive_policy,
    nested_retry,
    priority,
    retry_budgets,
    retrying,
)
from sage_resilience.adaptive.policy import LATENCY_SAMPLES_PER_TICK
from sage_resilience.core import (
    BulkheadFull,
    CircuitBreaker,
    CircuitBreakerOpenError,
    CircuitState,
    Event,
    FakeClock,
    LoopClock,
    OutcomeUnknownError,
    PermanentError,
    RateLimitExceeded,
    Registry,
    ResilienceTimeoutError,
    SettingChanged,
    ShedError,
    ThrottledError,
    TransientError,
    breaker_manager,
)

CRITICAL, HIGH, NORMAL, LOW, SHEDDABLE = Priority

# These tests run on looptime's loop (``@pytest.mark.looptime``): sleeping on the loop's clock
# takes no real time.
VIRTUAL = LoopClock()


@pytest.fixture(autouse=True)
def _fresh_budgets() -> Iterator[None]:
    """Policies share retry budgets by name in the default budget registry: start clean."""
    retry_budgets.clear()
    yield
    retry_budgets.clear()


def make(
    name: str = "dep",
    *,
    clock: Any,
    budgets: BudgetRegistry | None = None,
    listeners: tuple[Any, ...] = (),
    seed: int = 7,
    **options: Any,
) -> AdaptivePolicy:
    """A policy with a private budget registry (unless given) and a seeded random source."""
    return AdaptivePolicy(
        name,
        AdaptiveOptions(**options),
        clock=clock,
        random=random.Random(seed).random,
        budgets=BudgetRegistry() if budgets is None else budgets,
        listeners=listeners,
    )


class Dep:
    """A sync dependency on a fake clock: each call takes ``latency`` of clock time, then raises
    ``error()`` if set, else returns 1."""

    def __init__(self, clock: FakeClock, latency: float = 0.005) -> None:
        self.clock = clock
        self.latency = latency
        self.error: Callable[[], BaseException] | None = None
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        self.clock.advance(self.latency)
        if self.error is not None:
            raise self.error()
        return 1


class Script:
    """Raises the scripted exceptions in turn, then returns ``"ok"``; counts the calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def always(error: Callable[[], BaseException]) -> Callable[[], Any]:
    """A callable that always raises a fresh ``error()``, counting its calls in ``.calls``."""

    def fail() -> Any:
        fail.calls += 1  # type: ignore[attr-defined]
        raise error()

    fail.calls = 0  # type: ignore[attr-defined]
    return fail


def outcome(fn: Callable[[], Any]) -> Any:
    """What a call returned, or the exception it raised."""
    try:
        return fn()
    except Exception as exc:
        return exc


# -- the forms: decorator, call, acall ----------------------------------------------------------


async def test_decorator_wraps_sync_and_async_functions_and_exposes_the_policy(
    clock: FakeClock,
) -> None:
    """One policy decorates sync and async functions (``.policy`` on them) and runs call/acall."""
    policy = make(clock=clock)

    def add(a: int, b: int = 0) -> int:
        return a + b

    async def aadd(a: int, b: int = 0) -> int:
        await asyncio.sleep(0)
        return a + b

    wrapped, awrapped = policy(add), policy(aadd)
    assert wrapped(1, b=2) == 3
    assert await awrapped(2, b=3) == 5
    assert policy.call(add, 3, b=4) == 7
    assert await policy.acall(aadd, 4, b=5) == 9
    assert wrapped.policy is policy  # type: ignore[attr-defined]
    assert awrapped.policy is policy  # type: ignore[attr-defined]
    assert wrapped.__name__ == "add"
    assert awrapped.__name__ == "aadd"
    assert inspect.iscoroutinefunction(awrapped)
    assert not inspect.iscoroutinefunction(wrapped)
    assert policy.limiter is not None
    stats = policy.limiter.stats()
    assert stats.admitted["NORMAL"] == 4
    assert stats.in_flight == 0
    assert policy.breaker is not None
    assert policy.breaker.stats().successes == 4
    with pytest.raises(TypeError, match="callable"):
        policy(42)  # type: ignore[arg-type]


async def test_errors_pass_through_the_decorator_unchanged(clock: FakeClock) -> None:
    """The callee's exception reaches the caller as it was raised (after the retries)."""
    policy = make(clock=clock)
    error = PermanentError("bad request")

    @policy
    def sync_fail() -> None:
        raise error

    @policy
    async def async_fail() -> None:
        raise error

    with pytest.raises(PermanentError) as info:
        sync_fail()
    assert info.value is error
    with pytest.raises(PermanentError) as ainfo:
        await async_fail()
    assert ainfo.value is error


def test_adaptive_policy_registers_its_parts(clock: FakeClock, registry: Registry) -> None:
    """adaptive_policy registers its breaker and limiter; Registry.status() shows them."""
    policy = adaptive_policy("db", registry=registry, clock=clock, budgets=BudgetRegistry())
    assert set(registry.names()) == {"db.breaker", "db.limiter"}
    assert registry.get("db.breaker") is policy.breaker
    assert registry.get("db.limiter") is policy.limiter
    status = registry.status()
    assert status["healthy"] is True
    entries = status["policies"]
    assert entries["db.breaker"]["kind"] == "circuit_breaker"
    assert entries["db.breaker"]["state"] == "closed"
    assert entries["db.limiter"]["limit"] == 10
    assert entries["db.limiter"]["in_flight"] == 0


def test_default_registry_is_breaker_manager(clock: FakeClock) -> None:
    """Without ``registry=`` the parts land in breaker_manager, whose reset reaches them."""
    policy = adaptive_policy("search", clock=clock, budgets=BudgetRegistry())
    assert breaker_manager.get("search.breaker") is policy.breaker
    assert breaker_manager.get("search.limiter") is policy.limiter
    assert policy.breaker is not None
    policy.breaker.force_open()
    breaker_manager.reset("search.breaker")
    assert policy.breaker.state is CircuitState.CLOSED


def test_one_name_is_one_policy(clock: FakeClock, registry: Registry) -> None:
    """One name is one shared policy, beside the seed's breaker of that name; clashes refused."""
    seed_breaker = CircuitBreaker("db")
    registry.register(seed_breaker)  # the seed's @circuit_breaker("db") keeps working beside it

    @adaptive_policy("db", registry=registry, clock=clock)
    def read() -> str:
        return "row"

    @adaptive_policy("db", registry=registry, clock=clock)
    def write() -> str:
        return "ok"

    assert read.policy is write.policy  # type: ignore[attr-defined]
    assert read() == "row"
    assert write() == "ok"
    assert registry.get("db") is seed_breaker
    with pytest.raises(ValueError, match="other options"):
        adaptive_policy("db", registry=registry, clock=clock, max_attempts=5)
    other = Registry("other")
    assert adaptive_policy("db", registry=other, clock=clock) is not read.policy  # type: ignore[attr-defined]
    registry.clear()  # a cleared registry forgets its policies too
    assert adaptive_policy("db", registry=registry, clock=clock) is not read.policy  # type: ignore[attr-defined]
    # A part's name taken by another policy: nothing of the new policy stays registered.
    registry.register(CircuitBreaker("queue.breaker"))
    with pytest.raises(ValueError, match=r"queue\.breaker"):
        adaptive_policy("queue", registry=registry, clock=clock)
    assert "queue.limiter" not in registry


def test_listeners_reach_every_part_and_leave_them_when_removed(clock: FakeClock) -> None:
    """A listener added to the policy hears its parts; removed, it hears nothing more."""
    events: list[Event] = []
    policy = make(clock=clock, listeners=(events.append,))
    assert policy.breaker is not None
    assert policy.limiter is not None
    assert events.append in policy.breaker.listeners
    assert events.append in policy.limiter.listeners
    policy.remove_listener(events.append)
    assert events.append not in policy.breaker.listeners
    assert events.append not in policy.limiter.listeners
    policy.breaker.force_open()
    assert events == []


# -- priorities ---------------------------------------------------------------------------------


async def test_calls_carry_the_context_priority_into_the_limiter(clock: FakeClock) -> None:
    """A priority block, the @priority decorator and a task carry their level into the limiter."""
    policy = make(clock=clock)
    assert policy.limiter is not None

    def work() -> int:
        return 1

    async def awork() -> int:
        return 1

    with priority(HIGH):
        policy.call(work)
    priority(LOW)(policy(work))()
    with priority(CRITICAL):
        task = asyncio.create_task(policy.acall(awork))
    await task
    await priority(SHEDDABLE)(policy(awork))()
    policy.call(work)
    admitted = {k: v for k, v in policy.limiter.stats().admitted.items() if v}
    assert admitted == {"CRITICAL": 1, "HIGH": 1, "NORMAL": 1, "LOW": 1, "SHEDDABLE": 1}
    assert policy.limiter.in_flight == 0


@pytest.mark.looptime
async def test_overload_sheds_lowest_levels_first_and_critical_last() -> None:
    """Overload sheds the lowest levels first; CRITICAL succeeds >= 99.9 % of the time."""
    policy = make(clock=LoopClock(), initial_limit=2, min_limit=2, max_limit=2)
    rng = random.Random(3)
    mix = [(CRITICAL, 0.1), (HIGH, 0.2), (NORMAL, 0.3), (LOW, 0.2), (SHEDDABLE, 0.2)]
    levels, weights = zip(*mix, strict=True)
    results: dict[Priority, Counter[str]] = {level: Counter() for level in Priority}

    async def dependency() -> int:
        await VIRTUAL.asleep(0.025)  # capacity: 2 / 0.025 = 80 calls/s
        return 1

    async def request(level: Priority) -> None:
        with priority(level):
            try:
                await policy.acall(dependency)
            except ShedError:
                results[level]["shed"] += 1
            else:
                results[level]["ok"] += 1

    tasks = []
    loop = asyncio.get_running_loop()
    end = loop.time() + 30.0
    while loop.time() < end:
        await asyncio.sleep(rng.expovariate(160.0))  # offered: 160 calls/s
        level = rng.choices(levels, weights)[0]
        tasks.append(asyncio.create_task(request(level)))
    await asyncio.gather(*tasks)

    def shed_share(level: Priority) -> float:
        counts = results[level]
        return counts["shed"] / (counts["shed"] + counts["ok"])

    assert sum(results[CRITICAL].values()) > 300
    assert results[CRITICAL]["ok"] / sum(results[CRITICAL].values()) >= 0.999
    assert shed_share(SHEDDABLE) > 0.5
    assert shed_share(SHEDDABLE) >= shed_share(LOW) >= shed_share(NORMAL) >= shed_share(HIGH)
    assert shed_share(HIGH) >= shed_share(CRITICAL)
    assert shed_share(LOW) > shed_share(HIGH)
    assert policy.limiter is not None
    assert policy.limiter.in_flight == 0
    shed = policy.limiter.stats().shed
    assert sum(shed.values()) == sum(c["shed"] for c in results.values())


# -- retries at one layer -----------------------------------------------------------------------

GENEROUS = RetryBudgetConfig(ratio=1.0, min_retries_per_second=100.0)


def three_layers(clock: FakeClock, **options: Any) -> tuple[list[AdaptivePolicy], Any]:
    layers = [
        make(name, clock=clock, breaker=False, tick=1000.0, budget=GENEROUS, **options)
        for name in ("service", "repository", "database")
    ]
    fail = always(lambda: ConnectionError("connection refused"))
    service, repository, database = layers

    def call() -> Any:
        return service.call(repository.call, database.call, fail)

    return layers, (call, fail)


def test_nested_policies_make_max_attempts_not_27x_regression(clock: FakeClock) -> None:
    """Three nested policies make max_attempts (3) attempts in all, not the seed's 27."""
    _, (call, fail) = three_layers(clock)
    with pytest.raises(ConnectionError):
        call()
    assert fail.calls == 3


def test_nested_policies_multiply_only_when_told(clock: FakeClock) -> None:
    """``retry_nested=True`` at every layer restores the multiplication (3 x 3 x 3)."""
    _, (call, fail) = three_layers(clock, retry_nested=True)
    with pytest.raises(ConnectionError):
        call()
    assert fail.calls == 27


async def test_a_policy_inside_a_retrying_call_makes_one_attempt(clock: FakeClock) -> None:
    """Inside a retrying call a policy makes one attempt; its callee sees the retrying mark."""
    policy = make(clock=clock, breaker=False)
    fail = always(lambda: ConnectionError("down"))
    with retrying(), pytest.raises(ConnectionError):
        policy.call(fail)
    assert fail.calls == 1

    async def afail() -> None:
        fail()

    with retrying(), pytest.raises(ConnectionError):
        await policy.acall(afail)
    assert fail.calls == 2

    seen: list[bool] = []
    assert policy.call(lambda: seen.append(nested_retry())) is None
    assert seen == [True]
    assert nested_retry() is False


# -- the retry budget, what is not retried, hints ------------------------------------------------


def test_retry_budget_limits_retries_and_is_shared_by_name(clock: FakeClock) -> None:
    """Two policies of one name share one budget: retries stay within 20 % of requests + 1/s."""
    budgets = BudgetRegistry()
    first = make(clock=clock, budgets=budgets, breaker=False, tick=1000.0)
    second = make(clock=clock, budgets=budgets, breaker=False, tick=1000.0)
    assert first.budget is second.budget
    assert first.budget is not None
    fail = always(lambda: ConnectionError("down"))
    start = clock.now()
    for i in range(100):
        with pytest.raises(ConnectionError):
            (first if i % 2 else second).call(fail)
    assert clock.now() - start < 10.0  # one window: the allowance below is exact
    stats = first.budget.stats()
    assert stats.requests == 100
    assert stats.failures == fail.calls
    assert fail.calls == 100 + stats.retries
    assert 25 <= stats.retries <= 0.2 * 100 + 1.0 * 10.0
    assert stats.denied > 0


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("400 bad request"),
        ShedError("upstream", priority="LOW"),
        CircuitBreakerOpenError("upstream.breaker", 1.0),
        RateLimitExceeded("upstream.rate_limiter", 0.5),
        BulkheadFull("pool"),
    ],
    ids=["permanent", "shed", "breaker_open", "rate_limited", "bulkhead_full"],
)
def test_non_retryable_errors_are_not_retried(clock: FakeClock, error: Exception) -> None:
    """Permanent errors and our own rejections make one attempt and never ask the budget."""
    policy = make(clock=clock)
    script = Script(error)
    with pytest.raises(type(error)) as info:
        policy.call(script)
    assert info.value is error
    assert script.calls == 1
    assert clock.sleeps == []
    assert policy.budget is not None
    assert policy.budget.stats().retries == 0
    assert policy.budget.stats().denied == 0


def test_outcome_unknown_counts_as_a_failure_but_is_not_retried(clock: FakeClock) -> None:
    """A write that failed after it was sent makes one attempt, yet the breaker counts it."""
    policy = make(clock=clock)
    assert policy.breaker is not None
    error = OutcomeUnknownError("reply lost")
    script = Script(error)
    with pytest.raises(OutcomeUnknownError) as info:
        policy.call(script)
    assert info.value is error
    assert script.calls == 1
    assert policy.breaker.stats().failures == 1
    assert policy.budget is not None and policy.budget.stats().retries == 0
    # The same failure as a plain transient error is retried.
    retried = Script(TransientError("connection reset"))
    assert policy.call(retried) == "ok"
    assert retried.calls == 2


async def test_cancellation_raised_by_the_callee_is_not_retried(clock: FakeClock) -> None:
    """A CancelledError from the callee ends the call at once (one attempt)."""
    policy = make(clock=clock)
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await policy.acall(cancelled)
    assert calls == 1
    assert policy.limiter is not None
    assert policy.limiter.in_flight == 0


def test_transient_errors_are_retried_up_to_max_attempts(clock: FakeClock) -> None:
    """Transient errors are retried after short delays, up to ``max_attempts`` attempts."""
    policy = make(clock=clock)
    script = Script(ConnectionError("reset"), TimeoutError("slow"))
    assert policy.call(script) == "ok"
    assert script.calls == 3
    assert len(clock.sleeps) == 2
    assert all(0.0 <= s <= 0.2 for s in clock.sleeps)
    five = make("five", clock=clock, max_attempts=5, breaker=False)
    assert five.stats()["max_attempts"] == 5
    fail = always(lambda: ConnectionError("down"))
    with pytest.raises(ConnectionError):
        five.call(fail)
    assert fail.calls == 5


def test_retry_after_hint_is_a_floor(clock: FakeClock) -> None:
    """A retry-after hint floors the delay; one too long ends the call and costs no budget."""
    policy = make(clock=clock)
    script = Script(ThrottledError("429", retry_after=1.5))
    assert policy.call(script) == "ok"
    assert len(clock.sleeps) == 1
    assert 1.5 <= clock.sleeps[0] <= 1.5 * 1.1
    assert policy.budget is not None
    assert policy.budget.stats().retries == 1

    too_long = Script(ThrottledError("429", retry_after=60.0))
    with pytest.raises(ThrottledError):
        policy.call(too_long)
    assert too_long.calls == 1
    assert len(clock.sleeps) == 1
    assert policy.budget.stats().retries == 1  # the retry not made was not charged


# -- the breaker: outage, fail fast, recovery, hold ----------------------------------------------


def drive(
    policy: AdaptivePolicy, dep: Dep, clock: FakeClock, until: float
) -> list[tuple[float, Any]]:
    """Call every 10 ms of clock time until ``until``; each outcome with its start time."""
    return [(start, result) for start, result, _, _ in drive_traced(policy, dep, clock, until)]


def drive_traced(
    policy: AdaptivePolicy, dep: Dep, clock: FakeClock, until: float
) -> list[tuple[float, Any, int, float]]:
    """:func:`drive`, also giving each call's dependency calls and clock time spent."""
    out = []
    while clock.now() < until:
        start, calls = clock.now(), dep.calls
        result = outcome(lambda: policy.call(dep))
        out.append((start, result, dep.calls - calls, clock.now() - start))
        clock.advance(max(0.0, start + 0.01 - clock.now()))
    return out


@pytest.mark.parametrize("hold", [0.0, None], ids=["fail-fast", "default-hold"])
def test_breaker_trips_on_an_outage_fails_fast_and_recovers_within_a_second(
    clock: FakeClock, hold: float | None
) -> None:
    """An outage trips the breaker: calls are refused at once (``hold=0``) or within ``hold``
    (the default: a call waits for the next trial, and goes no further once one failed); the
    dependency only sees the breaker's trials, a few per second; recovery comes within 1 s."""
    policy = make(clock=clock) if hold is None else make(clock=clock, hold=hold)
    limit = policy.options.hold
    dep = Dep(clock)
    t0 = clock.now()
    healthy = drive(policy, dep, clock, t0 + 10.0)
    assert all(result == 1 for _, result in healthy)

    dep.error = lambda: ConnectionError("connection refused")
    outage_start = clock.now()
    calls_before = dep.calls
    assert policy.breaker is not None
    opened: list[float] = []
    policy.breaker.add_listener(
        lambda e: opened.append(e.time) if getattr(e, "new_state", None) == "open" else None
    )
    outage = drive_traced(policy, dep, clock, outage_start + 5.0)
    first_open = opened[0]
    assert first_open - outage_start < 1.0
    later = [(r, calls, spent) for t, r, calls, spent in outage if t > first_open + 0.1]
    # Every call fails: refused by the open breaker, or (held for it) as one of its trials.
    assert all(isinstance(r, CircuitBreakerOpenError | ConnectionError) for r, _, _ in later)
    rejected = [(calls, spent) for _, calls, spent in later]
    assert all(calls <= 1 and spent <= limit + 0.02 for calls, spent in rejected)
    if limit == 0.0:
        # Refused without calling the dependency, at no cost in time; the few others are the
        # breaker's trial calls (one every open duration), refused on their retry.
        fast = [spent for calls, spent in rejected if calls == 0]
        assert all(spent == 0.0 for spent in fast)
        assert len(fast) > 0.8 * len(rejected)
    # Trials only, no retry storm: at most one per open duration (0.1 s at least).
    assert dep.calls - calls_before <= 5.0 / 0.1 + 5

    dep.error = None
    back = clock.now()
    recovery = drive(policy, dep, clock, back + 3.0)
    first_ok = next(t for t, r in recovery if r == 1)
    assert first_ok - back <= 1.0
    assert all(r == 1 for t, r in recovery if t > first_ok + 0.5)
    assert policy.stats()["breaker_state"] == "closed"


def trip(policy: AdaptivePolicy) -> None:
    """Open the policy's breaker through its permission protocol (failures it is told of)."""
    breaker = policy.breaker
    assert breaker is not None
    while breaker.state is CircuitState.CLOSED:
        breaker.on_failure(breaker.acquire(), 0.001, ConnectionError("down"))


def test_hold_waits_for_the_breakers_next_trial(clock: FakeClock) -> None:
    """With ``hold`` a call waits for the open breaker's next trial; without, it fails at once."""
    holding = make("holding", clock=clock, hold=1.0)
    failing = make("failing", clock=clock, hold=0.0)
    trip(holding)
    trip(failing)
    assert holding.breaker is not None
    retry_after = holding.breaker.retry_after
    assert retry_after is not None
    assert 0.0 < retry_after <= 0.15

    start = clock.now()
    with pytest.raises(CircuitBreakerOpenError):
        failing.call(lambda: 1)
    assert clock.now() == start

    assert holding.call(lambda: 1) == 1
    assert clock.now() - start == pytest.approx(retry_after)

    short = make("short", clock=clock, hold=0.01)
    trip(short)
    with pytest.raises(CircuitBreakerOpenError):
        short.call(lambda: 1)


def test_a_failed_trial_gives_up_at_once_instead_of_waiting_to_be_refused(
    clock: FakeClock,
) -> None:
    """A call whose attempt reopened the breaker raises its error at once: sleeping the retry
    delay only to be refused by the open breaker would cost the caller time for nothing."""
    policy = make(clock=clock, hold=0.0)
    trip(policy)
    assert policy.breaker is not None and policy.breaker.retry_after is not None
    clock.advance(policy.breaker.retry_after)  # the next call is the breaker's trial
    sleeps = len(clock.sleeps)
    fail = always(lambda: ConnectionError("still down"))
    with pytest.raises(ConnectionError):
        policy.call(fail)
    assert fail.calls == 1  # type: ignore[attr-defined]
    assert len(clock.sleeps) == sleeps
    assert policy.breaker.state is CircuitState.OPEN


@pytest.mark.parametrize(
    ("error", "held"),
    [(TimeoutError, False), (ConnectionError, True)],
    ids=["timeouts", "refusals"],
)
def test_hold_only_when_the_dependency_fails_fast(
    clock: FakeClock, error: type[Exception], held: bool
) -> None:
    """A breaker opened by timeouts (a slow dependency) fails calls at once even with
    ``hold``: a held call would only be served slowly. Opened by refusals, it holds."""
    policy = make(clock=clock, hold=1.0)
    fail = always(lambda: error("down"))
    assert policy.breaker is not None
    while policy.breaker.state is CircuitState.CLOSED:
        with pytest.raises((error, CircuitBreakerOpenError)):
            policy.call(fail)
    start = clock.now()
    if held:
        assert policy.call(lambda: 1) == 1
        assert clock.now() > start
    else:
        with pytest.raises(CircuitBreakerOpenError):
            policy.call(lambda: 1)
        assert clock.now() == start


# -- throttling and the rate bucket ---------------------------------------------------------------


class Provider:
    """An API that accepts ``rate`` calls per second of clock time and answers 429 beyond."""

    def __init__(self, clock: FakeClock, rate: float) -> None:
        self.clock = clock
        self.rate = rate
        self.tokens = rate
        self.last = clock.now()
        self.calls = 0
        self.throttled = 0

    def __call__(self) -> int:
        self.calls += 1
        now = self.clock.now()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            self.throttled += 1
            raise ThrottledError("429 too many requests")
        self.tokens -= 1.0
        return 1


def test_throttling_starts_the_rate_bucket_which_caps_attempts(
    clock: FakeClock, registry: Registry
) -> None:
    """429s start the rate bucket (registered); its rate moves and caps attempts near the limit."""
    events: list[Event] = []
    policy = adaptive_policy(
        "api",
        registry=registry,
        clock=clock,
        budgets=BudgetRegistry(),
        listeners=[events.append],
    )
    assert policy.bucket is None
    assert policy.stats()["rate"] is None
    provider = Provider(clock, rate=50.0)
    t0 = clock.now()
    for _ in range(1500):  # 100 calls/s offered for 15 s
        start = clock.now()
        outcome(lambda: policy.call(provider))
        clock.advance(max(0.0, start + 0.01 - clock.now()))
    assert policy.bucket is not None
    assert registry.get("api.rate_limiter") is policy.bucket
    assert registry.status()["policies"]["api.rate_limiter"]["rate"] == policy.bucket.rate
    rate = policy.stats()["rate"]
    assert isinstance(rate, float)
    assert 25.0 <= rate <= 75.0
    moves = [e for e in events if isinstance(e, Decision) and e.setting == "rate"]
    assert any(e.new < e.old for e in moves)
    assert any(e.new > e.old for e in moves)
    # Over the last 5 s: attempts near the provider's limit, and few of them throttled.
    calls, throttled = provider.calls, provider.throttled
    t1 = clock.now()
    for _ in range(500):
        start = clock.now()
        outcome(lambda: policy.call(provider))
        clock.advance(max(0.0, start + 0.01 - clock.now()))
    elapsed = clock.now() - t1
    sent = provider.calls - calls
    assert sent / elapsed <= 50.0 * 1.15
    assert (provider.throttled - throttled) / sent < 0.05
    assert clock.now() - t0 > 19.0


def test_every_attempt_takes_a_token(clock: FakeClock) -> None:
    """Once the bucket exists, retries take tokens too (the provider counts attempts)."""
    policy = make(clock=clock)
    provider = Provider(clock, rate=50.0)
    for _ in range(300):  # 100 calls/s offered to a provider taking 50/s
        start = clock.now()
        outcome(lambda: policy.call(provider))
        clock.advance(max(0.0, start + 0.01 - clock.now()))
    assert policy.bucket is not None
    assert policy.bucket.burst >= 3.0
    clock.advance(1.0)  # the bucket refills
    before = policy.bucket.stats().acquired
    script = Script(ConnectionError("reset"), ConnectionError("reset"))
    assert policy.call(script) == "ok"
    assert policy.bucket.stats().acquired - before == 3


# -- the adaptive timeout --------------------------------------------------------------------------


@pytest.mark.looptime
async def test_adaptive_timeout_bounds_a_hung_attempt_once_learned() -> None:
    """A learned timeout ends a hung attempt (ResilienceTimeoutError); unlearned, it cuts none."""
    loop = asyncio.get_running_loop()
    policy = make(clock=LoopClock())

    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    assert await make("fresh", clock=LoopClock()).acall(slow, 5.0) == "done"
    for _ in range(100):
        assert await policy.acall(slow, 0.01) == "done"
    learned = policy.stats()["timeout"]
    assert 0.01 <= learned < 0.1

    start = loop.time()
    with pytest.raises(ResilienceTimeoutError) as info:
        await policy.acall(slow, 3600.0)
    assert loop.time() - start < 1.0
    assert info.value.kind == "attempt"
    assert info.value.name == "dep.timeout"
    assert policy.limiter is not None
    assert policy.limiter.in_flight == 0


@pytest.mark.looptime
async def test_the_callees_own_timeout_passes_through() -> None:
    """A TimeoutError raised by the callee itself is not turned into ours."""
    policy = make(clock=LoopClock(), retry=False)

    async def fast() -> None:
        await VIRTUAL.asleep(0.01)

    for _ in range(60):
        await policy.acall(fast)
    assert policy.stats()["timeout"] < 1.0

    async def own() -> None:
        raise TimeoutError("the driver's own timeout")

    with pytest.raises(TimeoutError, match="driver's own") as info:
        await policy.acall(own)
    assert not isinstance(info.value, ResilienceTimeoutError)


# -- controllers: once per tick, decisions, listeners that raise ---------------------------------


def test_controllers_run_at_most_once_per_tick(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of calls at one instant (from one thread or eight) runs the controllers once."""
    policy = make(clock=clock)
    ticks: list[float] = []
    tick = policy._tick

    def counted(now: float) -> None:
        ticks.append(now)
        tick(now)

    monkeypatch.setattr(policy, "_tick", counted)
    for _ in range(1000):
        policy.call(lambda: 1)
    assert ticks == []
    clock.advance(0.3)
    for _ in range(1000):
        policy.call(lambda: 1)
    assert ticks == [clock.now()]

    clock.advance(0.3)
    barrier = threading.Barrier(8)

    def burst() -> None:
        barrier.wait()
        for _ in range(200):
            policy.call(lambda: 1)

    threads = [threading.Thread(target=burst) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30.0)
    assert ticks == [ticks[0], clock.now()]


def test_decision_events_carry_old_new_and_inputs(clock: FakeClock) -> None:
    """Controller changes reach listeners as Decisions (old, new, inputs), one a setting a tick."""
    events: list[Event] = []
    policy = make(clock=clock, listeners=(events.append,))
    dep = Dep(clock, latency=0.005)
    drive(policy, dep, clock, clock.now() + 2.0)
    decisions = [e for e in events if isinstance(e, Decision)]
    assert all(isinstance(e, SettingChanged) for e in decisions)
    timeouts = [e for e in decisions if e.setting == "timeout"]
    assert timeouts
    first = timeouts[0]
    assert first.policy == "dep"
    assert first.controller == "dep.timeout"
    assert first.old == 30.0
    assert 0.01 <= first.new <= 0.02
    assert first.inputs["samples"] >= 20
    assert first.inputs["latency"] == pytest.approx(0.005, rel=0.05)
    per_tick = Counter((e.controller, e.setting, e.time) for e in decisions)
    assert max(per_tick.values()) == 1


def test_a_raising_listener_never_breaks_a_call(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener raising on every event is logged and changes no call's result or error."""

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    policy = make(clock=clock, listeners=(broken,), hold=0.0)  # refusals, not held trials
    dep = Dep(clock)
    with caplog.at_level(logging.ERROR, logger="sage_resilience"):
        healthy = drive(policy, dep, clock, clock.now() + 2.0)
        dep.error = lambda: ConnectionError("down")
        outage = drive(policy, dep, clock, clock.now() + 2.0)
    assert all(r == 1 for _, r in healthy)
    assert all(isinstance(r, ConnectionError | CircuitBreakerOpenError) for _, r in outage)
    assert any(isinstance(r, CircuitBreakerOpenError) for _, r in outage)
    assert any("listener" in record.message for record in caplog.records)


# -- cancellation, exact counts, stats ----------------------------------------------------------


@pytest.mark.looptime
async def test_cancelling_an_inflight_call_releases_its_slot_once_and_counts_nothing() -> None:
    """A cancelled in-flight call frees its slot once and counts as neither outcome."""
    policy = make(clock=LoopClock(), initial_limit=2, min_limit=2, max_limit=2)
    limiter, breaker, budget = policy.limiter, policy.breaker, policy.budget
    assert limiter is not None and breaker is not None and budget is not None
    gate = asyncio.Event()

    async def blocked() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(policy.acall(blocked))
    second = asyncio.create_task(policy.acall(blocked))
    await VIRTUAL.asleep(0.01)
    assert limiter.in_flight == 2
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert limiter.in_flight == 1
    assert breaker.stats().successes == breaker.stats().failures == 0
    assert budget.stats().successes == budget.stats().failures == 0
    assert policy._attempt_counts.totals() == {"attempts": 0, "failures": 0}
    gate.set()
    assert await second == "done"
    assert limiter.in_flight == 0
    assert breaker.stats().successes == 1
    assert breaker.stats().failures == 0
    with pytest.raises(RuntimeError):
        limiter.release(NORMAL)  # nothing is left to release


@pytest.mark.looptime
async def test_cancelling_a_call_waiting_at_the_limit_or_between_attempts() -> None:
    """A call cancelled in line at the limit, or while it waits to retry, holds no slot."""
    policy = make(
        clock=LoopClock(), initial_limit=1, min_limit=1, max_limit=1, max_wait={NORMAL: 10.0}
    )
    limiter = policy.limiter
    assert limiter is not None
    gate = asyncio.Event()

    async def blocked() -> str:
        await gate.wait()
        return "done"

    holder = asyncio.create_task(policy.acall(blocked))
    await VIRTUAL.asleep(0.01)
    waiter = asyncio.create_task(policy.acall(blocked))
    await VIRTUAL.asleep(0.01)
    assert limiter.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting == 0
    assert limiter.in_flight == 1
    gate.set()
    await holder
    assert limiter.in_flight == 0

    async def flaky() -> None:
        raise ConnectionError("reset")

    retrying_call = asyncio.create_task(policy.acall(flaky))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    retrying_call.cancel()
    with pytest.raises((asyncio.CancelledError, ConnectionError)):
        await retrying_call
    assert limiter.in_flight == 0


def test_counts_stay_exact_across_threads(clock: FakeClock) -> None:
    """Eight threads at once: every slot returned, every success counted once in every part."""
    policy = make(clock=clock, initial_limit=100, min_limit=100, max_limit=100)
    barrier = threading.Barrier(8)

    def work() -> int:
        return 1

    def run() -> None:
        barrier.wait()
        for _ in range(500):
            policy.call(work)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30.0)
    limiter, breaker, budget = policy.limiter, policy.breaker, policy.budget
    assert limiter is not None and breaker is not None and budget is not None
    assert limiter.in_flight == 0
    assert limiter.stats().admitted["NORMAL"] == 4000
    assert breaker.stats().successes == 4000
    assert budget.stats().requests == budget.stats().successes == 4000
    clock.advance(1.0)
    policy.call(work)  # its tick counts the attempts before it into the statistics
    assert policy._attempt_counts.totals()["attempts"] == 4000


def test_latency_is_sampled_evenly_past_the_rate_limit_of_recording(clock: FakeClock) -> None:
    """Latencies are all recorded up to LATENCY_SAMPLES_PER_TICK a tick, one in k beyond."""
    policy = make(clock=clock)
    for _ in range(100):
        policy.call(lambda: 1)
    assert policy._latency.n == 100
    clock.advance(0.3)
    for _ in range(4 * LATENCY_SAMPLES_PER_TICK):
        policy.call(lambda: 1)
    clock.advance(0.3)
    policy.call(lambda: 1)  # the tick sees 4 x the samples it keeps: one in 4 from now on
    for _ in range(4 * LATENCY_SAMPLES_PER_TICK - 1):
        policy.call(lambda: 1)
    assert policy._latency.n == LATENCY_SAMPLES_PER_TICK


def test_stats_report_each_parts_setting(clock: FakeClock) -> None:
    """stats() reports each part's setting (rate None while dormant), omitting absent parts."""
    policy = make(clock=clock)
    assert policy.stats() == {
        "name": "dep",
        "limit": 10,
        "in_flight": 0,
        "rate": None,
        "timeout": 30.0,
        "max_attempts": 3,
        "base_delay": 0.1,
        "breaker_state": "closed",
    }
    bare = make(
        "bare",
        clock=clock,
        concurrency=None,
        rate=None,
        timeout=False,
        retry=False,
        breaker=False,
    )
    assert bare.stats() == {"name": "bare"}
    assert bare.call(lambda: 5) == 5
    throttled = make("throttled", clock=clock, client_throttle=True, concurrency=None)
    assert throttled.stats()["reject_probability"] == 0.0
    assert "limit" not in throttled.stats()
    assert repr(policy).startswith("AdaptivePolicy(name='dep'")


def test_client_throttle_refuses_locally_when_the_dependency_rejects_most_calls(
    clock: FakeClock,
) -> None:
    """Client throttling refuses calls locally while the dependency throttles them all."""
    policy = make(clock=clock, client_throttle=True, retry=False, breaker=False, rate=None)
    fail = always(lambda: ThrottledError("503"))
    results = []
    for _ in range(400):
        results.append(outcome(lambda: policy.call(fail)))
        clock.advance(0.01)
    local = [r for r in results if isinstance(r, ShedError)]
    assert local
    assert all(r.reason == "client_throttle" for r in local)
    assert fail.calls == 400 - len(local)
    assert policy.stats()["reject_probability"] > 0.0


# -- bad options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("concurrency", "bogus", ValueError, "concurrency"),
        ("rate", "fast", ValueError, "rate"),
        ("initial_limit", 0, ValueError, "initial_limit"),
        ("min_limit", 0, ValueError, "min_limit"),
        ("max_limit", 0, ValueError, "max_limit"),
        ("initial_limit", 5000, ValueError, "initial_limit"),
        ("initial_limit", 2.5, TypeError, "initial_limit"),
        ("max_wait", {"URGENT": 1.0}, ValueError, "max_wait"),
        ("max_wait", {Priority.LOW: -1.0}, ValueError, r"max_wait\[LOW\]"),
        ("max_wait", [1.0], TypeError, "max_wait"),
        ("rate_max_wait", -1.0, ValueError, "rate_max_wait"),
        ("hold", -0.5, ValueError, "hold"),
        ("hold", math.nan, ValueError, "hold"),
        ("max_attempts", 0, ValueError, "max_attempts"),
        ("tick", 0.0, ValueError, "tick"),
        ("tick", math.inf, ValueError, "tick"),
        ("budget", {"ratio": 0.1}, TypeError, "budget"),
        ("breaker", "yes", TypeError, "breaker"),
        ("retry", 1, TypeError, "retry"),
        ("timeout", None, TypeError, "timeout"),
        ("client_throttle", "no", TypeError, "client_throttle"),
        ("retry_nested", 0, TypeError, "retry_nested"),
        ("limit_options", {"bogus": 1}, TypeError, "limit_options"),
        ("limit_options", "fast", TypeError, "limit_options"),
        ("rate_options", {"decrease": 2.0}, ValueError, "rate_options"),
        ("timeout_options", {"factor": -1.0}, ValueError, "timeout_options"),
        ("breaker_options", {"recovery_timeout": 0.05}, ValueError, "breaker_options"),
        ("breaker_options", {"nonsense": 1}, TypeError, "breaker_options"),
    ],
)
def test_bad_options_raise_at_construction_naming_the_option(
    field: str, value: Any, error: type[Exception], match: str
) -> None:
    """Each bad option is refused when the options are made, naming the field."""
    with pytest.raises(error, match=match):
        AdaptiveOptions(**{field: value})
    with pytest.raises(error, match=match):
        adaptive_policy("bad", registry=Registry(), **{field: value})


def test_bad_policy_arguments_are_refused(clock: FakeClock) -> None:
    """An empty name, options of the wrong type, or an unknown option are refused."""
    with pytest.raises(ValueError, match="name"):
        AdaptivePolicy("", clock=clock)
    with pytest.raises(TypeError, match="options"):
        AdaptivePolicy("dep", {"retry": False}, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bogus"):
        adaptive_policy("dep", registry=Registry(), clock=clock, bogus=1)
