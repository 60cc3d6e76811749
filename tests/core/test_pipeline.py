"""Pipeline: construction, the default order justified by measurement, and equivalence with the
policies' decorators stacked by hand.

Sync scenarios run on a :class:`FakeClock` (its sleeps are recorded); async ones on ``looptime``'s
virtual loop time with :class:`LoopClock` policies, so hangs and timeouts cost no real time.
"""

from __future__ import annotations

import asyncio
import random
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

pytestmark = pytest.mark.looptime

# -- scripted dependencies -------------------------------------------------------------------------


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
