"""Pipeline: construction, the default order justified by measurement, and equivalence with the
policies' decorators stacked by hand.

Sync scenarios run on a :class:`FakeClock` (its sleeps are recorded); async ones on ``looptime``'s
virtual loop time with :class:`LoopClock` policies, so hangs and timeouts cost no real time.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import looptime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sage_resilience.core import (
    DEFAULT_ORDER,
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitBreakerOpenError,
    FakeClock,
    Fallback,
    Hedge,
    LoopClock,
    PermanentError,
    Pipeline,
    Policy,
    RateLimiter,
    RateLimitExceeded,
    RejectedError,
    ResilienceTimeoutError,
    Retry,
    Timeout,
)
from sage_resilience.core.pipeline import decorate

pytestmark = pytest.mark.looptime

# -- scripted dependencies -------------------------------------------------------------------------

# Sleeps here run on a virtual-time loop (looptime, or the simulator's): sleeping on the loop's
# clock takes no real time.
VIRTUAL = LoopClock()


class SyncDep:
    """A sync dependency following a script, one behaviour per invocation ("ok" once it runs
    out): ``ok``, ``fail`` (ConnectionError), ``permanent`` (PermanentError) or ``slow`` (takes
    2 s of the fake clock, then answers)."""

    def __init__(self, script: Sequence[str] = (), clock: FakeClock | None = None) -> None:
        self.script = list(script)
        self.clock = clock
        self.calls = 0
        self.log: list[tuple[int, str]] = []

    def __call__(self, arg: int = 0) -> str:
        n = self.calls
        self.calls += 1
        behaviour = self.script[n] if n < len(self.script) else "ok"
        self.log.append((arg, behaviour))
        if behaviour == "fail":
            raise ConnectionError(f"attempt {n} failed")
        if behaviour == "permanent":
            raise PermanentError(f"attempt {n} refused")
        if behaviour == "slow":
            assert self.clock is not None
            self.clock.advance(2.0)
        return f"answer {arg} from attempt {n}"


class AsyncDep:
    """The async twin of :class:`SyncDep`: ``slow`` sleeps 0.6 s, ``hang`` sleeps 100 s; every
    attempt awaits the loop at least once, as real I/O does."""

    def __init__(self, script: Sequence[str] = ()) -> None:
        self.script = list(script)
        self.calls = 0
        self.log: list[tuple[int, str, float]] = []
        self.cancelled = 0

    async def __call__(self, arg: int = 0) -> str:
        n = self.calls
        self.calls += 1
        behaviour = self.script[n] if n < len(self.script) else "ok"
        self.log.append((arg, behaviour, asyncio.get_running_loop().time()))
        try:
            await asyncio.sleep({"slow": 0.6, "hang": 100.0}.get(behaviour, 0.01))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if behaviour == "fail":
            raise ConnectionError(f"attempt {n} failed")
        if behaviour == "permanent":
            raise PermanentError(f"attempt {n} refused")
        return f"answer {arg} from attempt {n}"


class RecordingLoopClock(LoopClock):
    """The loop's clock, remembering every sleep asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().asleep(seconds)


def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    try:
        return ("ok", repr(fn()))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


async def aoutcome(awaitable: Coroutine[Any, Any, Any]) -> tuple[str, str]:
    try:
        return ("ok", repr(await awaitable))
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def now() -> float:
    return asyncio.get_running_loop().time()


def retry(clock: Any, attempts: int = 3, delay: float = 0.5) -> Retry:
    return Retry(max_attempts=attempts, initial_delay=delay, jitter=False, clock=clock)


# -- construction ----------------------------------------------------------------------------------


def test_empty_pipeline_is_a_value_error() -> None:
    """A pipeline needs at least one policy."""
    with pytest.raises(ValueError, match="policies"):
        Pipeline()
    with pytest.raises(ValueError, match="policies"):
        Pipeline.build()


@pytest.mark.parametrize("bad", [42, "retry", Retry, object(), lambda fn: fn])
def test_non_policy_is_a_type_error(bad: object) -> None:
    """Objects without call() and acall() (and policy classes) are refused by name."""
    with pytest.raises(TypeError, match="not a policy"):
        Pipeline(Retry(), bad)  # type: ignore[arg-type]


def test_same_policy_twice_is_a_value_error(clock: FakeClock) -> None:
    """One policy object may appear once, including through a nested pipeline."""
    breaker = CircuitBreaker("b", clock=clock)
    with pytest.raises(ValueError, match="twice"):
        Pipeline(breaker, breaker)
    with pytest.raises(ValueError, match="twice"):
        Pipeline(Pipeline(retry(clock), breaker), breaker)


def test_empty_name_is_a_value_error() -> None:
    """``name`` must be a non-empty string."""
    with pytest.raises(ValueError, match="name"):
        Pipeline(Retry(), name="")


def test_nested_pipelines_are_flattened(clock: FakeClock) -> None:
    """A pipeline inside a pipeline contributes its policies in place."""
    r, b, f = retry(clock), CircuitBreaker("b", clock=clock), Fallback(value=0)
    p = Pipeline(f, Pipeline(r, b), name="outer")
    assert p.policies == (f, r, b)
    assert repr(p).startswith("Pipeline(Fallback(") and repr(p).endswith("name='outer')")


def test_build_sorts_into_the_default_order(clock: FakeClock) -> None:
    """build() sorts by kind into DEFAULT_ORDER; unknown policies go innermost, in order."""

    class Custom:
        def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

    c1, c2 = Custom(), Custom()
    ordered = [
        Fallback(value=0),
        RateLimiter(rate=10, clock=clock),
        Bulkhead(2, clock=clock),
        retry(clock),
        Hedge(1.0),
        CircuitBreaker("b", clock=clock),
        Timeout(1.0),
    ]
    shuffled = [c1, *ordered[::-1], c2]
    random.Random(3).shuffle(shuffled)
    p = Pipeline.build(*shuffled)
    custom_order = [c for c in shuffled if isinstance(c, Custom)]
    assert p.policies == (*ordered, *custom_order)
    assert tuple(type(x) for x in ordered) == DEFAULT_ORDER
    assert isinstance(c1, Policy)


def test_async_only_policies_refuse_sync_use(clock: FakeClock) -> None:
    """A timeout, hedge or async fallback handler makes sync use a TypeError naming it."""

    async def handler(exc: Exception) -> int:
        return 0

    for async_only in (Timeout(1.0), Hedge(1.0), Fallback(handler=handler)):
        p = Pipeline(retry(clock), async_only)
        assert p.async_only
        with pytest.raises(TypeError, match=type(async_only).__name__):
            p.call(SyncDep())
        with pytest.raises(TypeError, match="async-only"):
            p(SyncDep())
        assert callable(p(AsyncDep()))
    assert not Pipeline(retry(clock)).async_only


# -- running -------------------------------------------------------------------------------------


def test_call_and_decorator_pass_arguments_and_results(clock: FakeClock) -> None:
    """call() and the decorator hand every argument through and return the result."""
    p = Pipeline(Fallback(value="fb", on=KeyError), retry(clock), CircuitBreaker("b", clock=clock))

    def join(*args: Any, sep: str = "-") -> str:
        """Join."""
        return sep.join(map(str, args))

    assert p.call(join, 1, 2, sep="+") == "1+2"
    wrapped = p(join)
    assert wrapped(3, 4) == "3-4"
    assert wrapped.__name__ == "join" and wrapped.__doc__ == "Join."
    assert wrapped.pipeline is p  # type: ignore[attr-defined]
    assert Pipeline(retry(clock)).call(join, 5) == "5"


async def test_acall_and_async_decorator_pass_arguments_and_results(clock: FakeClock) -> None:
    """acall() and the async decorator hand every argument through; the wrapper is async."""
    p = Pipeline(retry(clock), CircuitBreaker("b", clock=clock), Timeout(5.0))

    async def join(*args: Any, sep: str = "-") -> str:
        return sep.join(map(str, args))

    assert await p.acall(join, 1, 2, sep="+") == "1+2"
    wrapped = p(join)
    assert asyncio.iscoroutinefunction(wrapped)
    assert await wrapped(3, 4) == "3-4"


def test_decorated_methods_bind_self(clock: FakeClock) -> None:
    """The decorator returns a function, so it decorates methods like any decorator."""
    p = Pipeline(retry(clock), CircuitBreaker("b", clock=clock))

    class Repo:
        def __init__(self) -> None:
            self.n = 7

        @p
        def get(self, k: int) -> int:
            return self.n * k

    assert Repo().get(3) == 21


def test_pipeline_is_itself_a_policy(clock: FakeClock) -> None:
    """A pipeline has call()/acall(), so it can run inside a policy too."""
    inner = Pipeline(CircuitBreaker("b", clock=clock))
    dep = SyncDep(["fail", "ok"])
    assert retry(clock).call(inner.call, dep) == "answer 0 from attempt 1"


# -- the default order, measured -----------------------------------------------------------------


def test_breaker_counts_every_retry_attempt(clock: FakeClock) -> None:
    """The breaker counts every attempt; outside the retry a retried call counts once."""
    counts = {}
    for order in ("default", "breaker outside retry"):
        r = retry(clock, attempts=3, delay=0.1)
        b = CircuitBreaker(order, failure_threshold=10, clock=clock)
        p = Pipeline.build(r, b) if order == "default" else Pipeline(b, r)
        with pytest.raises(ConnectionError):
            p.call(SyncDep(["fail"] * 3))
        assert p.call(SyncDep(["fail", "ok"])).endswith("attempt 1")
        s = b.stats()
        counts[order] = (s.failures, s.successes)
    assert counts == {"default": (4, 1), "breaker outside retry": (1, 1)}


def test_breaker_trips_during_a_retried_call_and_stops_it(clock: FakeClock) -> None:
    """Failing attempts trip the breaker mid-call and the retry stops at the rejection."""
    # Contrast: with the breaker outside the retry, it cannot trip before all attempts are spent.
    results = {}
    for order in ("default", "breaker outside retry"):
        clock.sleeps.clear()
        r = retry(clock, attempts=6, delay=0.5)
        b = CircuitBreaker(order, failure_threshold=3, recovery_timeout=60.0, clock=clock)
        p = Pipeline.build(r, b) if order == "default" else Pipeline(b, r)
        dep = SyncDep(["fail"] * 10)
        err = outcome(lambda: p.call(dep))[0]  # noqa: B023 - called at once
        results[order] = (err, dep.calls, len(clock.sleeps), b.stats().state)
    assert results == {
        # 3 attempts trip it; the 4th attempt is rejected (not retried): 3 sleeps, not 5.
        "default": ("CircuitBreakerOpenError", 3, 3, "open"),
        "breaker outside retry": ("ConnectionError", 6, 5, "closed"),
    }


def test_open_breaker_stops_retrying_at_once(clock: FakeClock) -> None:
    """An open breaker stops the retry at once: no dependency call, no backoff sleep."""
    r = retry(clock, attempts=5, delay=1.0)
    b = CircuitBreaker("b", clock=clock)
    b.force_open()
    dep = SyncDep()
    with pytest.raises(CircuitBreakerOpenError):
        Pipeline.build(r, b).call(dep)
    assert dep.calls == 0
    assert clock.sleeps == []
    s = r.stats()
    assert (s.attempts, s.retries, s.gave_up) == (1, 0, 0)


async def test_open_breaker_stops_async_retrying_at_once() -> None:
    """The same, async: a rejection costs no sleep on the loop."""
    clk = RecordingLoopClock()
    b = CircuitBreaker("b", clock=LoopClock())
    b.force_open()
    dep = AsyncDep()
    with pytest.raises(CircuitBreakerOpenError):
        await Pipeline.build(retry(clk, attempts=5), b, Timeout(1.0)).acall(dep)
    assert (dep.calls, clk.sleeps) == (0, [])


def test_exhausted_limiter_stops_the_call_before_any_attempt(clock: FakeClock) -> None:
    """An exhausted limiter refuses before the first attempt, with a retry_after hint."""
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock, max_wait=0.0)
    r = retry(clock, attempts=5)
    p = Pipeline.build(r, CircuitBreaker("b", clock=clock), limiter)
    dep = SyncDep()
    p.call(dep)
    with pytest.raises(RateLimitExceeded) as info:
        p.call(dep)
    assert isinstance(info.value, RejectedError)
    assert info.value.retry_after == pytest.approx(1.0)
    assert dep.calls == 1
    assert clock.sleeps == []
    assert r.stats().calls == 1


def test_limiter_outside_retry_takes_one_token_per_call(clock: FakeClock) -> None:
    """The limiter outside the retry takes one token per call, not one per attempt."""
    # Contrast: inside the retry each attempt takes one; a refusal mid-call is still not retried.
    tokens_used = {}
    for order in ("default", "limiter inside retry"):
        limiter = RateLimiter(rate=0.001, burst=10, clock=clock, max_wait=0.0)
        r = retry(clock, attempts=3, delay=0.1)
        p = Pipeline.build(limiter, r) if order == "default" else Pipeline(r, limiter)
        assert p.call(SyncDep(["fail", "fail"])).endswith("attempt 2")
        tokens_used[order] = limiter.stats().acquired
    assert tokens_used == {"default": 1, "limiter inside retry": 3}

    clock.sleeps.clear()
    limiter = RateLimiter(rate=0.001, burst=1, clock=clock, max_wait=0.0)
    dep = SyncDep(["fail"] * 5)
    with pytest.raises(RateLimitExceeded):
        Pipeline(retry(clock, attempts=5, delay=0.1), limiter).call(dep)
    assert (dep.calls, clock.sleeps) == (1, [0.1])


def test_bulkhead_outside_retry_holds_one_slot_per_call(clock: FakeClock) -> None:
    """A retried call is admitted by the bulkhead once and frees its slot at the end."""
    bulkhead = Bulkhead(1, clock=clock)
    p = Pipeline.build(retry(clock, attempts=3, delay=0.1), bulkhead)
    p.call(SyncDep(["fail", "fail"]))
    s = bulkhead.stats()
    assert (s.admitted, s.in_use) == (1, 0)


async def test_each_attempt_times_out_on_its_own() -> None:
    """Each attempt times out on its own; a timeout outside the retry eats the whole budget."""
    # Default: per-attempt timeout inside the retry and the breaker.
    clk = RecordingLoopClock()
    t = Timeout(1.0)
    b = CircuitBreaker("b", clock=LoopClock(), failure_threshold=5)
    dep = AsyncDep(["hang", "ok"])
    start = now()
    result = await Pipeline.build(t, b, retry(clk, attempts=3, delay=0.25)).acall(dep)
    assert result == "answer 0 from attempt 1"
    assert now() - start == pytest.approx(1.0 + 0.25 + 0.01)
    assert (t.fired, dep.cancelled) == (1, 1)
    assert (b.stats().failures, b.stats().successes) == (1, 1)

    # Wrong: the same budget as a total timeout around the retry.
    total = Timeout(1.0, kind="total")
    dep = AsyncDep(["hang", "ok"])
    start = now()
    r = retry(RecordingLoopClock(), attempts=3, delay=0.25)
    with pytest.raises(ResilienceTimeoutError) as info:
        await Pipeline(total, r, CircuitBreaker("b2", clock=LoopClock())).acall(dep)
    assert info.value.kind == "total"
    assert now() - start == pytest.approx(1.0)
    assert dep.calls == 1
    assert r.stats().aborted == 1


async def test_total_timeout_still_bounds_the_whole_retried_call() -> None:
    """A total timeout outermost bounds the whole call while each attempt has its own limit."""
    dep = AsyncDep(["hang"] * 5)
    p = Pipeline(
        Timeout(2.5, kind="total"),
        retry(LoopClock(), attempts=5, delay=0.1),
        Timeout(1.0, kind="attempt"),
    )
    start = now()
    with pytest.raises(ResilienceTimeoutError) as info:
        await p.acall(dep)
    assert info.value.kind == "total"
    assert now() - start == pytest.approx(2.5)
    assert [round(t - start, 6) for _, _, t in dep.log] == [0.0, 1.1, 2.3]


@pytest.mark.parametrize("rejection", ["breaker", "limiter", "bulkhead"])
def test_outermost_fallback_answers_for_rejections(clock: FakeClock, rejection: str) -> None:
    """The outermost fallback answers for a rejection without touching the dependency."""
    limiter = RateLimiter(rate=0.001, burst=1, clock=clock, max_wait=0.0)
    bulkhead = Bulkhead(1, clock=clock)
    breaker = CircuitBreaker("b", clock=clock)
    r = retry(clock)
    p = Pipeline.build(r, breaker, bulkhead, limiter, Fallback(value=[], on=RejectedError))
    if rejection == "breaker":
        breaker.force_open()
    elif rejection == "limiter":
        limiter.try_acquire()
    else:
        bulkhead.try_acquire()
    dep = SyncDep()
    assert p.call(dep) == []
    assert dep.calls == 0
    assert clock.sleeps == []


def test_fallback_inside_retry_hides_failures_from_it(clock: FakeClock) -> None:
    """Contrast: a fallback inside the retry answers first, so the retry never retries."""
    answers = {}
    for order in ("default", "fallback inside retry"):
        f = Fallback(value="fallback")
        r = retry(clock, attempts=3, delay=0.1)
        p = Pipeline.build(f, r) if order == "default" else Pipeline(r, f)
        dep = SyncDep(["fail", "ok"])
        answers[order] = (p.call(dep), dep.calls)
    assert answers == {
        "default": ("answer 0 from attempt 1", 2),
        "fallback inside retry": ("fallback", 1),
    }


async def test_hedge_attempts_each_go_through_breaker_and_timeout() -> None:
    """Each hedged attempt is counted by the breaker and bounded by its own timeout."""
    # The hedge wins before any timeout: the loser is cancelled, and not counted as a failure.
    b = CircuitBreaker("b", clock=LoopClock(), failure_threshold=10)
    t = Timeout(1.0)
    dep = AsyncDep(["hang", "slow"])
    start = now()
    assert await Pipeline.build(t, b, Hedge(0.3), retry(LoopClock())).acall(dep) == (
        "answer 0 from attempt 1"
    )
    assert now() - start == pytest.approx(0.3 + 0.6)
    assert (dep.cancelled, t.fired) == (1, 0)
    assert (b.stats().successes, b.stats().failures) == (1, 0)

    # Both hedged attempts hang: each times out 1 s after its own start, each is a breaker
    # failure, and the retry's next hedged call answers.
    b = CircuitBreaker("b2", clock=LoopClock(), failure_threshold=10)
    t = Timeout(1.0)
    dep = AsyncDep(["hang", "hang", "ok"])
    start = now()
    p = Pipeline.build(t, b, Hedge(0.3), retry(LoopClock(), delay=0.5))
    assert await p.acall(dep) == "answer 0 from attempt 2"
    assert [round(at - start, 6) for _, _, at in dep.log] == [0.0, 0.3, 1.8]
    assert (dep.cancelled, t.fired) == (2, 2)
    assert (b.stats().successes, b.stats().failures) == (1, 2)
    assert asyncio.all_tasks() == {asyncio.current_task()}


# -- rejections ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "retry_after"),
    [
        (CircuitBreakerOpenError("b", 12.5), 12.5),
        (RateLimitExceeded("l", 0.25), 0.25),
        (BulkheadFull("bh"), None),
    ],
    ids=["breaker", "limiter", "bulkhead"],
)
def test_rejections_share_a_base_and_are_never_retried(
    clock: FakeClock, exc: RejectedError, retry_after: float | None
) -> None:
    """Rejections are RejectedErrors with retry_after where known; retry stops at them."""
    assert isinstance(exc, RejectedError)
    assert exc.retry_after == retry_after
    calls = []

    def rejected() -> None:
        calls.append(1)
        raise exc

    with pytest.raises(type(exc)):
        retry(clock, attempts=5).call(rejected)
    assert (len(calls), clock.sleeps) == (1, [])
    told = Retry(max_attempts=3, initial_delay=0.0, retryable_exceptions=(type(exc),), clock=clock)
    with pytest.raises(type(exc)):
        told.call(rejected)
    assert len(calls) == 4


# -- equivalence: pipeline == call/acall == hand-stacked decorators -------------------------------


@dataclass
class Run:
    """One scenario's observable results."""

    outcomes: list[Any] = field(default_factory=list)
    log: list[Any] = field(default_factory=list)
    stats: list[Any] = field(default_factory=list)


def sync_policies(clock: FakeClock) -> list[Any]:
    """Fresh policies, outer to inner, in the default order (no timeout: sync)."""
    return [
        Fallback(value="fallback", on=RejectedError, clock=clock),
        RateLimiter(rate=1.0, burst=3, clock=clock, max_wait=0.0),
        Bulkhead(2, clock=clock),
        Retry(
            max_attempts=3,
            initial_delay=0.5,
            jitter=True,
            random=random.Random(5).random,
            clock=clock,
        ),
        CircuitBreaker("dep", failure_threshold=3, recovery_timeout=4.0, clock=clock),
    ]


def stack_by_hand(policies: Sequence[Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    """The policies' own decorators, outermost on top: ``p1(p2(...(fn)))``."""
    for policy in reversed(policies):
        fn = policy(fn)
    return fn


SYNC_MODES = ("pipeline decorator", "pipeline call", "built pipeline", "stacked by hand")


def run_sync(mode: str, script: list[str], gaps: list[float]) -> Run:
    clock = FakeClock(start=1000.0)
    policies = sync_policies(clock)
    dep = SyncDep(script, clock)
    if mode == "pipeline decorator":
        fn = Pipeline(*policies)(dep)
    elif mode == "pipeline call":
        pipeline = Pipeline(*policies)

        def fn(arg: int) -> Any:
            return pipeline.call(dep, arg)

    elif mode == "built pipeline":
        fn = Pipeline.build(*reversed(policies))(dep)
    else:
        fn = stack_by_hand(policies, dep)
    run = Run()
    for i, gap in enumerate(gaps):
        clock.advance(gap)
        run.outcomes.append(outcome(lambda: fn(i)))  # noqa: B023 - called at once
    run.log = dep.log
    run.stats = [p.stats() for p in policies]
    run.outcomes.append(clock.sleeps)
    return run


BEHAVIOURS_SYNC = st.sampled_from(["ok", "fail", "fail", "permanent", "slow"])
GAPS = st.lists(st.sampled_from([0.0, 0.0, 0.3, 1.0, 5.0]), min_size=1, max_size=10)


@settings(max_examples=150)
@given(script=st.lists(BEHAVIOURS_SYNC, max_size=30), gaps=GAPS)
def test_sync_pipeline_equals_hand_stacked_decorators(script: list[str], gaps: list[float]) -> None:
    """Sync: pipeline, call(), build() and hand-stacked decorators agree on everything."""
    # Same outcomes, same dependency calls and sleeps, same statistics in every policy.
    runs = {mode: run_sync(mode, script, gaps) for mode in SYNC_MODES}
    reference = runs["stacked by hand"]
    for mode, run in runs.items():
        assert run == reference, mode


def run_virtual(main: Callable[[], Coroutine[Any, Any, Run]]) -> Run:
    """Run ``main`` on a fresh looptime loop starting at t=0 (virtual time, no real waiting)."""
    loop = looptime.new_event_loop(start=0.0)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def async_policies() -> list[Any]:
    """Fresh policies, outer to inner, in the default order, on the loop's clock."""
    return [
        Fallback(value="fallback", on=RejectedError, clock=LoopClock()),
        RateLimiter(rate=4.0, burst=4, clock=LoopClock(), max_wait=0.3),
        Bulkhead(2, max_queue=1, queue_timeout=0.5, clock=LoopClock()),
        Retry(max_attempts=3, initial_delay=0.25, jitter=False, clock=LoopClock()),
        Hedge(0.8),
        CircuitBreaker("dep", failure_threshold=3, recovery_timeout=2.0, clock=LoopClock()),
        Timeout(1.0),
    ]


ASYNC_MODES = ("pipeline decorator", "pipeline acall", "built pipeline", "stacked by hand")


def run_async(mode: str, script: list[str], rounds: list[tuple[float, int]]) -> Run:
    async def main() -> Run:
        policies = async_policies()
        dep = AsyncDep(script)
        if mode == "pipeline decorator":
            fn = Pipeline(*policies)(dep)
        elif mode == "pipeline acall":
            pipeline = Pipeline(*policies)

            def fn(arg: int) -> Any:
                return pipeline.acall(dep, arg)

        elif mode == "built pipeline":
            fn = Pipeline.build(*reversed(policies))(dep)
        else:
            fn = stack_by_hand(policies, dep)
        run = Run()
        n = 0
        for gap, concurrent in rounds:
            await asyncio.sleep(gap)
            calls = [aoutcome(fn(n + k)) for k in range(concurrent)]
            n += concurrent
            run.outcomes.append(await asyncio.gather(*calls))
        run.outcomes.append(asyncio.get_running_loop().time())
        run.outcomes.append(len(asyncio.all_tasks()))
        run.log = dep.log
        run.stats = [p.stats() for p in policies]
        return run

    return run_virtual(main)


BEHAVIOURS_ASYNC = st.sampled_from(["ok", "fail", "fail", "permanent", "slow", "hang"])
ROUNDS = st.lists(
    st.tuples(st.sampled_from([0.0, 0.3, 1.0, 3.0]), st.integers(1, 4)), min_size=1, max_size=6
)


@settings(max_examples=100)
@given(script=st.lists(BEHAVIOURS_ASYNC, max_size=30), rounds=ROUNDS)
def test_async_pipeline_equals_hand_stacked_decorators(
    script: list[str], rounds: list[tuple[float, int]]
) -> None:
    """Async: pipeline, acall(), build() and hand-stacked decorators agree on everything."""
    # Same outcomes at the same virtual times, same dependency calls, same statistics in every
    # policy, and no task left behind; scripts include hangs and concurrent calls.
    runs = {mode: run_async(mode, script, rounds) for mode in ASYNC_MODES}
    reference = runs["stacked by hand"]
    assert reference.outcomes[-1] == 1  # only main() itself is left
    for mode, run in runs.items():
        assert run == reference, mode


def test_equivalence_scenarios_exercise_every_policy() -> None:
    """The equivalence scenarios reach every policy's refusals, retries and recovery."""
    # So the equality above is not vacuous.
    run = run_async(
        "stacked by hand",
        ["hang", "hang", "fail", "fail", "fail", "fail"] + ["ok"] * 10,
        [(0.0, 6), (0.0, 3), (3.0, 2), (0.3, 1), (3.0, 2)],
    )
    fallback, limiter, bulkhead, r, hedge, breaker, timeout = run.stats
    assert fallback.handled > 0
    assert limiter.rejected > 0 and bulkhead.rejected > 0
    assert r.retries > 0 and hedge.hedges > 0 and timeout.fired > 0
    assert breaker.rejected > 0 and breaker.successes > 0
    assert run.outcomes[-3] == [
        ("ok", "'answer 12 from attempt 6'"),
        ("ok", "'answer 13 from attempt 7'"),
    ]


# -- the fused async path ------------------------------------------------------------------------
#
# An async pipeline of core policies in the default order runs the happy path as one coroutine
# and hands the call to the chain of ``acall``s at the first policy that is not in its happy
# state. These tests check that it is taken where it should be, that every way out of it lands
# on the chain at the right layer, and that it is indistinguishable from the policies' own
# decorators stacked by hand: outcomes, virtual times, statistics and events.

# The frames that show a policy layer running as its own ``acall`` (the chain).
CHAIN_FRAMES = frozenset(
    f"{kind.__name__}.acall" for kind in (RateLimiter, Bulkhead, Retry, CircuitBreaker, Timeout)
)


def chain_frames() -> list[str]:
    """The policy ``acall`` frames between the caller's caller and the test, innermost first."""
    names = []
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_qualname in CHAIN_FRAMES:
            names.append(frame.f_code.co_qualname.split(".")[0])
        frame = frame.f_back
    return names


class FrameDep(AsyncDep):
    """An :class:`AsyncDep` that also notes, per invocation, which policies ran it as their own
    ``acall`` (an empty list: the fused path ran it)."""

    def __init__(self, script: Sequence[str] = ()) -> None:
        super().__init__(script)
        self.frames: list[list[str]] = []

    async def __call__(self, arg: int = 0) -> str:
        self.frames.append(chain_frames())
        return await super().__call__(arg)


class Recorder:
    """Events of every policy, in order (frozen dataclasses: they compare by value)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.events.append(event)


def fused_policies(listener: Recorder | None = None) -> list[Any]:
    """Fresh policies in the default order, no hedge: a pipeline of them takes the fused path."""
    listeners = [] if listener is None else [listener]
    return [
        Fallback(value="fallback", on=RejectedError, clock=LoopClock(), listeners=listeners),
        RateLimiter(rate=4.0, burst=4, clock=LoopClock(), max_wait=0.3, listeners=listeners),
        Bulkhead(2, max_queue=1, queue_timeout=0.5, clock=LoopClock(), listeners=listeners),
        Retry(max_attempts=3, initial_delay=0.25, jitter=False, clock=LoopClock()),
        CircuitBreaker("dep", failure_threshold=3, recovery_timeout=2.0, clock=LoopClock()),
        Timeout(1.0, listeners=listeners),
    ]


MODES = ("pipeline decorator", "pipeline acall", "stacked by hand")


def wrap(mode: str, policies: Sequence[Any], dep: Callable[..., Any]) -> Callable[..., Any]:
    if mode == "pipeline decorator":
        return Pipeline(*policies)(dep)
    if mode == "pipeline acall":
        pipeline = Pipeline(*policies)
        return lambda *args, **kwargs: pipeline.acall(dep, *args, **kwargs)
    return stack_by_hand(policies, dep)


Scenario = Callable[[Callable[..., Any], list[Any], FrameDep], Coroutine[Any, Any, list[Any]]]


def run_scenario(
    mode: str,
    scenario: Scenario,
    make: Callable[[Recorder], list[Any]],
    script: Sequence[str] = (),
    dep_type: type[FrameDep] = FrameDep,
) -> tuple[list[Any], FrameDep]:
    """Run ``scenario`` on a fresh virtual loop; returns what it observed (its own notes, the
    dependency's log, every policy's stats and every event) and the dependency."""
    dep = dep_type(script)

    async def main() -> Run:
        recorder = Recorder()
        policies = make(recorder)
        notes = await scenario(wrap(mode, policies, dep), policies, dep)
        await asyncio.sleep(0)
        return Run(
            outcomes=[*notes, len(asyncio.all_tasks())],
            log=dep.log,
            stats=[[p.stats() for p in policies if hasattr(p, "stats")], recorder.events],
        )

    run = run_virtual(main)
    return [run.outcomes, run.log, run.stats], dep


def assert_same_in_every_mode(
    scenario: Scenario,
    make: Callable[[Recorder], list[Any]],
    script: Sequence[str] = (),
    dep_type: type[FrameDep] = FrameDep,
) -> dict[str, FrameDep]:
    """The scenario observes the same things through the pipeline (decorator and acall) as
    through the hand-stacked decorators; returns each mode's dependency (for its frames)."""
    results = {mode: run_scenario(mode, scenario, make, script, dep_type) for mode in MODES}
    reference = results["stacked by hand"][0]
    for mode, (observed, _) in results.items():
        assert observed == reference, mode
    return {mode: dep for mode, (_, dep) in results.items()}


async def calls_in_turn(fn: Callable[..., Any], n: int = 3) -> list[Any]:
    return [await aoutcome(fn(i)) for i in range(n)]


def test_fused_path_runs_the_happy_path_without_any_policy_frame() -> None:
    """Decorator and acall: the happy path runs in one coroutine, with the chain's counts."""

    async def scenario(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
        return [await calls_in_turn(fn, 3), now()]

    deps = assert_same_in_every_mode(scenario, fused_policies)
    assert deps["pipeline decorator"].frames == [[], [], []]
    assert deps["pipeline acall"].frames == [[], [], []]
    # The hand-stacked decorators run each policy's steps in a wrapper of its own (the
    # timeout's wrapper calls its acall).
    assert deps["stacked by hand"].frames == [["Timeout"]] * 3
    observed, _ = run_scenario("pipeline decorator", scenario, fused_policies)
    fallback, limiter, bulkhead, r, breaker, timeout = observed[2][0]
    assert (limiter.acquired, bulkhead.admitted, bulkhead.in_use) == (3, 3, 0)
    assert (r.calls, r.attempts, r.successes) == (3, 3, 3)
    assert (breaker.successes, breaker.failures, timeout.fired, fallback.handled) == (3, 0, 0, 0)


async def test_fused_decorator_is_a_coroutine_function_that_binds_methods() -> None:
    """The fused wrapper is a real coroutine function: it carries the callee's name and the
    pipeline, and binds ``self`` when it decorates a method, with or without a fallback."""
    for policies in (fused_policies()[1:], fused_policies()):
        p = Pipeline(*policies)

        class Repo:
            def __init__(self) -> None:
                self.n = 7

            @p
            async def get(self, k: int) -> int:
                """Get."""
                return self.n * k

        assert asyncio.iscoroutinefunction(Repo.get)
        assert (Repo.get.__name__, Repo.get.__doc__) == ("get", "Get.")
        assert Repo.get.pipeline is p  # type: ignore[attr-defined]
        assert await Repo().get(3) == 21
        assert await p.acall(Repo().get, 2) == 14


class CustomPolicy:
    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return decorate(self, fn)


class OwnAcallBreaker(CircuitBreaker):
    """A breaker subclass with its own ``acall``: the fused path cannot stand in for it."""

    async def acall(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return await super().acall(fn, *args, **kwargs)


class CountingBreaker(CircuitBreaker):
    """A breaker subclass overriding only what ``acall`` itself calls: still fused, and the
    override applies."""

    seen: list[str]

    def on_exception(self, permit: int, exception: BaseException, duration: float = 0.0) -> None:
        self.seen.append(type(exception).__name__)
        super().on_exception(permit, exception, duration)


SHAPES: dict[str, tuple[Callable[[], list[Any]], bool]] = {
    "default order": (lambda: fused_policies()[1:], True),
    "fallback first": (fused_policies, True),
    "retry and breaker": (lambda: fused_policies()[3:5], True),
    "limiter only": (lambda: fused_policies()[1:2], True),
    "timeout only": (lambda: [Timeout(1.0)], True),
    "bulkhead and timeout": (lambda: [fused_policies()[2], Timeout(1.0)], True),
    "with a hedge": (lambda: [*fused_policies()[1:5], Hedge(0.8), Timeout(1.0)], False),
    "with a custom policy": (lambda: [*fused_policies()[1:], CustomPolicy()], False),
    "breaker outside retry": (lambda: [fused_policies()[4], fused_policies()[3]], False),
    "total timeout outermost": (lambda: [Timeout(5.0, kind="total"), *fused_policies()[3:]], False),
    "fallback inside": (lambda: [fused_policies()[3], Fallback(value=0)], False),
    "two timeouts": (lambda: [*fused_policies()[3:], Timeout(2.0)], False),
    "subclass with its own acall": (
        lambda: [fused_policies()[3], OwnAcallBreaker("own", clock=LoopClock())],
        False,
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_fused_path_is_taken_for_default_order_shapes_only(shape: str) -> None:
    """Core policies in the default order (fallback first or not, any subset) are fused; a
    hedge, a policy of another kind, another order or an overridden acall are not."""
    make, fused = SHAPES[shape]

    async def scenario(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
        return [await calls_in_turn(fn, 2)]

    deps = assert_same_in_every_mode(scenario, lambda recorder: make())
    for mode in ("pipeline decorator", "pipeline acall"):
        frames = deps[mode].frames
        assert len(frames) == 2
        assert all(f == [] for f in frames) == fused, (mode, frames)


def test_fused_path_honours_overrides_of_what_acall_calls() -> None:
    """A subclass overriding a method that acall calls (here on_exception) is fused, and the
    fused path calls the override just as acall would."""

    def make(recorder: Recorder) -> list[Any]:
        breaker = CountingBreaker("counting", clock=LoopClock())
        breaker.seen = []
        return [retry(LoopClock(), attempts=2, delay=0.1), breaker, Timeout(1.0)]

    async def scenario(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
        return [await calls_in_turn(fn, 2), policies[1].seen]

    deps = assert_same_in_every_mode(scenario, make, ["fail", "hang", "fail"])
    assert deps["pipeline decorator"].frames[0] == []  # the first attempt ran fused


# Each way out of the fused path: (policies, scenario, the chain frames the handed-over call
# shows in the pipeline modes).


async def no_token(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
    limiter = policies[1]
    while limiter.try_acquire():
        pass
    # Short of a token: the limiter's acall waits for it (0.25 s at 4/s), the rest follows.
    first = await aoutcome(fn(0))
    return [first, now(), await calls_in_turn(fn, 2)]


async def callers_queued(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
    limiter = policies[1]
    while limiter.try_acquire():
        pass
    waiter = asyncio.create_task(limiter.aacquire(1, timeout=1.0))
    await asyncio.sleep(0)
    # Tokens come back, but someone is queued: no lock-free token, the call waits its turn
    # (0.28 s: within max_wait).
    await VIRTUAL.asleep(0.22)
    result = await aoutcome(fn(0))
    await waiter
    return [result, now()]


async def token_refused(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
    limiter = policies[1]
    while limiter.try_acquire():
        pass
    limiter.set_rate(0.1)  # the next token is 10 s away: beyond max_wait, refused at once
    return [await aoutcome(fn(0)), now()]


async def no_slot(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
    bulkhead = policies[2]
    assert bulkhead.try_acquire() and bulkhead.try_acquire()
    call = asyncio.create_task(aoutcome(fn(0)))  # queued: the bulkhead's acall waits
    await VIRTUAL.asleep(0.2)
    bulkhead.release()
    result = await call
    bulkhead.release()
    return [result, now(), await calls_in_turn(fn, 1)]


async def slot_refused(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
    bulkhead = policies[2]
    assert bulkhead.try_acquire() and bulkhead.try_acquire()
    queued = asyncio.create_task(bulkhead.aacquire())  # fills the queue
    await asyncio.sleep(0)
    result = await aoutcome(fn(0))  # queue full: refused, the fallback answers
    bulkhead.release()
    await queued
    bulkhead.release()
    bulkhead.release()
    return [result, now()]


async def breaker_open(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
    policies[4].force_open()
    return [await calls_in_turn(fn, 2), now()]


async def breaker_recovering(
    fn: Callable[..., Any], policies: list[Any], dep: FrameDep
) -> list[Any]:
    # A failing call's three attempts open the breaker; after recovery_timeout it is
    # half-open, and its trial calls run through its acall; then it closes and fuses again.
    notes = [await calls_in_turn(fn, 2)]
    await VIRTUAL.asleep(2.5)
    notes.append(await calls_in_turn(fn, 4))
    notes.append(policies[4].state.value)
    return notes


async def plain_calls(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
    return [await calls_in_turn(fn, 3), now()]


def with_listeners(recorder: Recorder) -> list[Any]:
    """Listeners on every policy: the retry and the breaker leave their lock-free paths."""
    policies = fused_policies(recorder)
    policies[3].add_listener(recorder)
    policies[4].add_listener(recorder)
    return policies


def retry_with_deadline(recorder: Recorder) -> list[Any]:
    policies = fused_policies()
    policies[3] = Retry(
        max_attempts=3, initial_delay=0.25, jitter=False, deadline=10.0, clock=LoopClock()
    )
    return policies


def breaker_timing_calls(recorder: Recorder) -> list[Any]:
    policies = fused_policies()
    policies[4] = CircuitBreaker(
        "dep", failure_threshold=3, slow_call_duration=0.5, clock=LoopClock()
    )
    return policies


def count_window_breaker(recorder: Recorder) -> list[Any]:
    policies = fused_policies()
    policies[4] = CircuitBreaker("dep", window_type="count", window_size=5, clock=LoopClock())
    return policies


HANDOVERS: dict[str, tuple[Callable[[Recorder], list[Any]], Scenario, Sequence[str], str]] = {
    "no token": (fused_policies, no_token, (), "RateLimiter"),
    "callers queued at the limiter": (fused_policies, callers_queued, (), "RateLimiter"),
    "token refused": (fused_policies, token_refused, (), ""),
    "no slot": (fused_policies, no_slot, (), "Bulkhead"),
    "slot refused": (fused_policies, slot_refused, (), ""),
    "retry with listeners, breaker with listeners": (
        with_listeners,
        plain_calls,
        ("fail", "hang", "ok", "permanent"),
        "Retry",
    ),
    "retry with a deadline": (retry_with_deadline, plain_calls, ("fail", "ok"), "Retry"),
    "breaker open": (fused_policies, breaker_open, (), ""),
    "breaker half-open": (fused_policies, breaker_recovering, ("fail",) * 3, "CircuitBreaker"),
    "breaker timing calls": (breaker_timing_calls, plain_calls, ("slow", "ok"), "CircuitBreaker"),
    "breaker on a count window": (count_window_breaker, plain_calls, ("ok",), "CircuitBreaker"),
}


@pytest.mark.parametrize("case", list(HANDOVERS))
def test_fused_path_hands_the_call_to_the_chain_at_the_right_layer(case: str) -> None:
    """Each policy that is not in its happy state takes the call over through its own acall,
    with the outer policies' token and slot held; everything observed is the chain's."""
    make, scenario, script, layer = HANDOVERS[case]
    deps = assert_same_in_every_mode(scenario, make, script)
    for mode in ("pipeline decorator", "pipeline acall"):
        frames = deps[mode].frames
        if not layer:  # refused before the dependency was called
            assert frames == [], (mode, frames)
            continue
        assert any(f and f[-1] == layer for f in frames), (mode, frames)
        # The layers outside the one that took over stayed fused.
        outer = ["RateLimiter", "Bulkhead", "Retry", "CircuitBreaker"]
        outer = outer[: outer.index(layer)]
        assert not any(set(outer) & set(f) for f in frames), (mode, frames)


def test_failed_first_attempt_goes_to_the_retry_with_the_outer_token_and_slot_held() -> None:
    """A first attempt that fails or times out is handed to the retry's driver, which makes
    the further attempts through the breaker and timeout; one token, one slot throughout."""
    seen: list[tuple[int, int]] = []

    async def scenario(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
        bulkhead = policies[2]

        async def watch() -> None:
            for _ in range(30):
                seen.append((bulkhead.in_use, policies[1].stats().acquired))
                await VIRTUAL.asleep(0.1)

        watcher = asyncio.create_task(watch())
        result = await aoutcome(fn(7))
        await watcher
        return [result, now()]

    deps = assert_same_in_every_mode(scenario, fused_policies, ["fail", "hang", "ok"])
    assert deps["pipeline decorator"].frames == [
        [],  # the first attempt, fused
        ["Timeout", "CircuitBreaker"],  # the retries, through the inner chain
        ["Timeout", "CircuitBreaker"],
    ]
    observed, _ = run_scenario(
        "pipeline decorator", scenario, fused_policies, ["fail", "hang", "ok"]
    )
    assert observed[0][0] == ("ok", "'answer 7 from attempt 2'")
    _, limiter, bulkhead, r, breaker, timeout = observed[2][0]
    assert (limiter.acquired, bulkhead.admitted, bulkhead.in_use) == (1, 1, 0)
    assert (r.calls, r.attempts, r.successes) == (1, 3, 1)
    assert (breaker.failures, breaker.successes, timeout.fired) == (2, 1, 1)
    # While the call lasted (1.51 s of attempts and backoff) it held one slot and one token.
    assert (1, 1) in seen and all(in_use <= 1 and acquired == 1 for in_use, acquired in seen)


@pytest.mark.parametrize("at", [0.005, 0.1, 1.1], ids=["first attempt", "backoff", "retry"])
def test_cancelled_fused_call_releases_its_slot_once_and_keeps_its_token(at: float) -> None:
    """A call cancelled during its fused first attempt, the backoff or a later attempt frees its
    slot exactly once and keeps the one token it took; the retry counts it aborted."""

    async def scenario(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
        call = asyncio.create_task(fn(1))
        await asyncio.sleep(at)
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            cancelled = True
        else:
            cancelled = False
        return [cancelled, now(), await calls_in_turn(fn, 2)]

    script = ["fail", "hang"] if at > 0.01 else ["hang"]
    assert_same_in_every_mode(scenario, fused_policies, script)
    observed, _ = run_scenario("pipeline decorator", scenario, fused_policies, script)
    assert observed[0][0] is True
    _, limiter, bulkhead, r, breaker, _ = observed[2][0]
    assert (limiter.acquired, bulkhead.admitted, bulkhead.in_use) == (3, 3, 0)
    # Cancelled in its backoff sleep, the retry does not count the call at all (its own way,
    # the same through the chain); cancelled in an attempt, it counts it aborted. The breaker
    # counts the failed first attempt, never the cancellation (and, after a cancelled backoff,
    # the next call meets the "hang" left in the script).
    assert (r.calls, r.aborted) == ((2, 0) if at == 0.1 else (3, 1))
    assert breaker.failures == {0.005: 0, 0.1: 2, 1.1: 1}[at]


class OwnTimeoutDep(FrameDep):
    """A :class:`FrameDep` that raises a TimeoutError of its own when called with ``arg=1``."""

    async def __call__(self, arg: int = 0) -> str:
        if arg == 1:
            self.frames.append(chain_frames())
            raise TimeoutError("the callee's own")
        return await super().__call__(arg)


def test_fused_timeout_translates_only_its_own_expiry() -> None:
    """The fused timeout raises ResilienceTimeoutError (from the scope's TimeoutError) when it
    fires; a TimeoutError of the callee's own passes through unchanged. Both are failures to
    the breaker."""

    def make(recorder: Recorder) -> list[Any]:
        return [
            Retry(max_attempts=1, clock=LoopClock()),
            CircuitBreaker("dep", clock=LoopClock()),
            Timeout(1.0, listeners=[recorder]),
        ]

    async def scenario(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
        notes: list[Any] = []
        for arg in (0, 1):
            try:
                await fn(arg)
            except TimeoutError as exc:
                cause = exc.__cause__
                notes.append((type(exc).__name__, str(exc), type(cause).__name__, now()))
        return notes

    deps = assert_same_in_every_mode(scenario, make, ["hang"], dep_type=OwnTimeoutDep)
    assert deps["pipeline decorator"].frames == [[], []]
    observed, _ = run_scenario("pipeline decorator", scenario, make, ["hang"], OwnTimeoutDep)
    expired, own, _ = observed[0]
    assert expired[0] == "ResilienceTimeoutError" and expired[2] == "TimeoutError"
    assert expired[3] == pytest.approx(1.0)
    assert own[:3] == ("TimeoutError", "the callee's own", "NoneType")
    _, breaker, timeout = observed[2][0]
    assert (timeout.fired, len(observed[2][1])) == (1, 1)
    assert breaker.failures == 2


def test_fused_path_with_listeners_emits_the_chains_events() -> None:
    """Listeners on the limiter, bulkhead, timeout and fallback (which keep the fused path) hear
    the same events, in the same order, as through hand-stacked decorators."""

    def make(recorder: Recorder) -> list[Any]:
        return fused_policies(recorder)

    async def scenario(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
        notes = [await calls_in_turn(fn, 3)]
        burst = [asyncio.create_task(aoutcome(fn(10 + i))) for i in range(5)]
        notes.append(await asyncio.gather(*burst))
        return notes

    deps = assert_same_in_every_mode(scenario, make, ["hang", "ok", "fail", "hang", "hang"])
    assert [] in deps["pipeline decorator"].frames
    observed, _ = run_scenario("pipeline decorator", scenario, make, ["hang", "ok", "fail"])
    kinds = {type(e).__name__ for e in observed[2][1]}
    assert {"CallRejected", "FallbackUsed"} <= kinds


def fused_subset(mask: Sequence[bool]) -> Callable[[Recorder], list[Any]]:
    def make(recorder: Recorder) -> list[Any]:
        kept = [p for p, keep in zip(fused_policies(), mask, strict=True) if keep]
        return kept or [Timeout(1.0)]

    return make


async def rounds_of_calls(fn: Callable[..., Any], rounds: list[tuple[float, int]]) -> list[Any]:
    notes: list[Any] = []
    n = 0
    for gap, concurrent in rounds:
        await asyncio.sleep(gap)
        calls = [aoutcome(fn(n + k)) for k in range(concurrent)]
        n += concurrent
        notes.append(await asyncio.gather(*calls))
    notes.append(now())
    return notes


@settings(max_examples=100)
@given(
    script=st.lists(BEHAVIOURS_ASYNC, max_size=30),
    rounds=ROUNDS,
    mask=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_fused_pipeline_equals_hand_stacked_decorators(
    script: list[str], rounds: list[tuple[float, int]], mask: list[bool]
) -> None:
    """Async, without a hedge (so the fused path runs): any subset of the default policies gives
    the same outcomes at the same virtual times, dependency calls, statistics and events through
    the pipeline (decorator and acall) as through hand-stacked decorators."""

    async def scenario(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
        return await rounds_of_calls(fn, rounds)

    assert_same_in_every_mode(scenario, fused_subset(mask), script)


def test_fused_equivalence_scenarios_take_the_fused_path_and_every_way_out() -> None:
    """The scenarios of the equivalence above run calls fused and hand calls over at every
    layer, and reach the policies' refusals, retries and recoveries (so it is not vacuous)."""

    async def scenario(fn: Callable[..., Any], policies: list[Any], dep: FrameDep) -> list[Any]:
        rounds = [(0.0, 6), (0.0, 3), (3.0, 2), (0.3, 1), (3.0, 2), (0.0, 3), (3.0, 4)]
        return await rounds_of_calls(fn, rounds)

    script = ["hang", "hang", "fail", "fail", "fail", "fail"] + ["ok"] * 12
    make = fused_subset([True] * 6)
    deps = assert_same_in_every_mode(scenario, make, script)
    frames = deps["pipeline decorator"].frames
    assert [] in frames  # fused
    for layer in ("RateLimiter", "Bulkhead", "CircuitBreaker"):  # handed over at each layer
        assert any(f and f[-1] == layer for f in frames), layer
    assert ["Timeout", "CircuitBreaker"] in frames  # retries through the inner chain
    observed, _ = run_scenario("pipeline decorator", scenario, make, script)
    fallback, limiter, bulkhead, r, breaker, timeout = observed[2][0]
    assert fallback.handled > 0
    assert limiter.rejected > 0 and limiter.waited > 0 and bulkhead.rejected > 0
    assert r.retries > 0 and timeout.fired > 0
    assert breaker.rejected > 0 and breaker.successes > 0
