"""Retry budgets (ratio and tokens), their registry, and retry at one layer."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sage_resilience.adaptive.budget import (
    BudgetMode,
    BudgetRegistry,
    RetryBudget,
    RetryBudgetConfig,
    attempts_allowed,
    budget_for,
    enter_retrying,
    exit_retrying,
    nested_retry,
    retry_budgets,
    retrying,
)

T = TypeVar("T")


@pytest.fixture(autouse=True)
def _clean_budgets() -> Any:
    """The default budget registry starts and ends every test empty."""
    retry_budgets.clear()
    yield
    retry_budgets.clear()


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ratio", -0.1),
        ("min_retries_per_second", -1.0),
        ("window", 0.0),
        ("buckets", 0),
        ("max_tokens", 0.0),
        ("max_tokens", 1001.0),
        ("token_ratio", 0.0),
        ("token_ratio", 20.0),
        ("mode", "bogus"),
    ],
)
def test_bad_settings_raise_naming_the_field(field: str, value: Any) -> None:
    """Each bad setting is refused at construction with its name in the message."""
    with pytest.raises(ValueError, match=field):
        RetryBudgetConfig(**{field: value})


def test_mode_by_name_and_overrides() -> None:
    """The mode can be named; keyword overrides replace config fields."""
    budget = RetryBudget(RetryBudgetConfig(mode="tokens"), name="db", max_tokens=4.0)
    assert budget.config.mode is BudgetMode.TOKENS
    assert budget.tokens == 4.0
    with pytest.raises(TypeError, match="config"):
        RetryBudget(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        RetryBudget(name="")


# -- ratio mode ---------------------------------------------------------------------------------


def test_quiet_service_still_gets_the_minimum() -> None:
    """With no traffic, ``min_retries_per_second * window`` retries fit (10 by default)."""
    budget = RetryBudget(name="db")
    granted = [budget.can_retry(5.0) for _ in range(12)]
    assert granted == [True] * 10 + [False] * 2
    stats = budget.stats(5.0)
    assert (stats.retries, stats.denied, stats.window_retries) == (10, 2, 10)


def test_retries_stay_under_ratio_of_requests() -> None:
    """1000 requests in the window allow 10 % of them plus the minimum: 110 retries."""
    budget = RetryBudget(name="db")
    for i in range(1000):
        budget.record_request(i * 0.009)
    now = 9.0
    granted = sum(budget.can_retry(now) for _ in range(200))
    assert granted == 110
    stats = budget.stats(now)
    assert stats.window_requests == 1000
    assert stats.allowance == pytest.approx(110.0)


def test_the_window_slides_and_retries_expire() -> None:
    """Requests and retries leave the window once it has slid past them."""
    budget = RetryBudget(name="db", min_retries_per_second=0.0)
    for _ in range(100):
        budget.record_request(0.5)
    assert sum(budget.can_retry(0.5) for _ in range(20)) == 10
    assert not budget.can_retry(9.9)
    assert not budget.can_retry(10.5)  # the requests expired with the retries
    for _ in range(100):
        budget.record_request(10.5)
    assert sum(budget.can_retry(10.6) for _ in range(20)) == 10


@given(
    events=st.lists(
        st.tuples(st.integers(min_value=0, max_value=700), st.sampled_from(["req", "retry"])),
        max_size=300,
    ),
    ratio=st.sampled_from([0.0, 0.1, 0.5]),
    minimum=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_retries_never_exceed_ratio_of_requests_plus_minimum(
    events: list[tuple[int, str]], ratio: float, minimum: float
) -> None:
    """Over any 9 s, granted retries <= ratio x requests of the enclosing 10 s + minimum x 10 s."""
    budget = RetryBudget(name="db", ratio=ratio, min_retries_per_second=minimum)
    now_ms = 0
    requests: list[int] = []
    grants: list[int] = []
    for gap, kind in events:
        now_ms += gap
        now = now_ms / 1000
        if kind == "req":
            budget.record_request(now)
            requests.append(now_ms)
        elif budget.can_retry(now):
            grants.append(now_ms)
            recent_grants = sum(1 for g in grants if now_ms - 9000 <= g <= now_ms)
            recent_requests = sum(1 for r in requests if now_ms - 10000 < r <= now_ms)
            assert recent_grants <= ratio * recent_requests + minimum * 10.0 + 1e-9
    assert budget.stats().retries == len(grants)


def test_ratio_mode_ignores_outcomes_for_the_decision() -> None:
    """Successes and failures are counted but do not move the ratio budget."""
    budget = RetryBudget(name="db", min_retries_per_second=0.0)
    for _ in range(50):
        budget.record_failure(1.0)
        budget.record_success(1.0)
    assert not budget.can_retry(1.0)
    stats = budget.stats(1.0)
    assert (stats.successes, stats.failures, stats.tokens) == (50, 50, None)


def test_threads_never_overdraw_the_budget() -> None:
    """Eight threads recording and retrying at once never get more than the allowance."""
    budget = RetryBudget(name="db", min_retries_per_second=0.0)
    granted: list[int] = []

    def worker() -> None:
        mine = 0
        for i in range(2000):
            budget.record_request(1.0)
            if i % 5 == 0 and budget.can_retry(1.0):
                mine += 1
        granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = budget.stats(1.0)
    assert stats.requests == 16_000
    assert sum(granted) == stats.retries
    assert stats.retries <= 0.1 * 16_000
    assert stats.retries + stats.denied == 8 * 400


# -- tokens mode --------------------------------------------------------------------------------


def test_tokens_follow_grpc_throttling() -> None:
    """max 10, ratio 0.1: 4 failures leave 6 (> 5, retry), a 5th leaves 5 (stop); 10 successes
    give one back."""
    budget = RetryBudget(name="api", mode=BudgetMode.TOKENS)
    assert budget.tokens == 10.0
    for _ in range(4):
        budget.record_failure(0.0)
    assert budget.tokens == 6.0 and budget.can_retry(0.0)
    budget.record_failure(0.0)
    assert budget.tokens == 5.0 and not budget.can_retry(0.0)
    for _ in range(10):
        budget.record_success(0.0)
    assert budget.tokens == 6.0 and budget.can_retry(0.0)
    stats = budget.stats()
    assert (stats.retries, stats.denied, stats.failures, stats.successes) == (2, 1, 5, 10)


@given(
    outcomes=st.lists(st.booleans(), max_size=400),
    max_tokens=st.sampled_from([1.0, 3.5, 10.0, 1000.0]),
    token_ratio=st.sampled_from([0.001, 0.1, 0.5, 1.0]),
)
def test_tokens_stay_within_zero_and_max(
    outcomes: list[bool], max_tokens: float, token_ratio: float
) -> None:
    """Tokens stay in [0, max_tokens]; a retry is allowed exactly while tokens > max / 2."""
    budget = RetryBudget(name="api", mode="tokens", max_tokens=max_tokens, token_ratio=token_ratio)
    for ok in outcomes:
        if ok:
            budget.record_success(0.0)
        else:
            budget.record_failure(0.0)
        tokens = budget.tokens
        assert tokens is not None
        assert 0.0 <= tokens <= max_tokens
        assert budget.can_retry(0.0) == (tokens > max_tokens / 2)


# -- registry -----------------------------------------------------------------------------------


def test_policies_guarding_one_dependency_share_its_budget() -> None:
    """budget_for(name) returns the same budget to every caller."""
    a = budget_for("db", min_retries_per_second=0.0)
    b = budget_for("db")
    assert a is b and "db" in retry_budgets and len(retry_budgets) == 1
    for _ in range(10):
        a.record_request(0.0)
    assert b.can_retry(0.0)
    assert not a.can_retry(0.0)
    assert budget_for("api") is not a
    assert sorted(retry_budgets.names()) == ["api", "db"]


def test_other_settings_for_an_existing_budget_are_refused() -> None:
    """Asking for a budget with other settings than it has raises naming it."""
    registry = BudgetRegistry("mine")
    registry.budget_for("db", RetryBudgetConfig(ratio=0.2))
    assert registry.budget_for("db", RetryBudgetConfig(ratio=0.2)).config.ratio == 0.2
    with pytest.raises(ValueError, match="'db'"):
        registry.budget_for("db", ratio=0.3)
    assert registry.get("db") is not None and registry.get("nope") is None
    assert [b.name for b in registry] == ["db"]
    registry.clear()
    assert len(registry) == 0
    assert "db" not in retry_budgets


# -- retry at one layer -------------------------------------------------------------------------


def test_nested_retry_is_seen_inside_the_block_only() -> None:
    """retrying() marks the block; nesting and retrying(False) restore on exit."""
    assert not nested_retry()
    with retrying():
        assert nested_retry()
        with retrying(False):
            assert not nested_retry()
        assert nested_retry()
    assert not nested_retry()
    token = enter_retrying()
    assert nested_retry()
    exit_retrying(token)
    assert not nested_retry()


def test_a_scope_cannot_be_entered_twice_at_once() -> None:
    """Re-entering the same scope object is an error (its token would be lost)."""
    scope = retrying()
    with scope, pytest.raises(RuntimeError, match="twice"), scope:
        pass
    assert not nested_retry()


def test_attempts_allowed_collapses_nested_retries() -> None:
    """Inside a retrying call a policy makes one attempt unless told to retry anyway."""
    assert attempts_allowed(3) == 3
    with retrying():
        assert attempts_allowed(3) == 1
        assert attempts_allowed(3, retry_nested=True) == 3
    with pytest.raises(ValueError, match="max_attempts"):
        attempts_allowed(0)


def _retry_call(fn: Callable[[], T], max_attempts: int = 3) -> T:
    """A minimal retry policy that follows the retry-at-one-layer protocol."""
    attempts = attempts_allowed(max_attempts)
    with retrying():
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except ConnectionError:
                if attempt == attempts:
                    raise
    raise AssertionError("unreachable")


def test_nested_retries_do_not_multiply_regression() -> None:
    """Regression (the seed's 27 attempts): three nested retry layers make 3 attempts, not 27."""
    attempts = 0

    def database() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("pool exhausted")

    with pytest.raises(ConnectionError):
        _retry_call(lambda: _retry_call(lambda: _retry_call(database)))
    assert attempts == 3


async def test_the_mark_crosses_await_and_tasks() -> None:
    """The mark survives await and is copied into tasks created inside the block."""

    async def inner() -> bool:
        await asyncio.sleep(0)
        return nested_retry()

    before = asyncio.create_task(inner())  # its context was copied before the block
    with retrying():
        await asyncio.sleep(0)
        assert nested_retry()
        assert await asyncio.create_task(inner())
        assert await asyncio.gather(inner(), inner()) == [True, True]
        assert await asyncio.to_thread(nested_retry)
        assert not await before
    assert not await asyncio.create_task(inner())


async def test_concurrent_tasks_do_not_see_each_others_mark() -> None:
    """One task retrying does not mark another task running at the same time."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def retrier() -> None:
        with retrying():
            started.set()
            await release.wait()

    async def bystander() -> bool:
        await started.wait()
        seen = nested_retry()
        release.set()
        return seen

    _, seen = await asyncio.gather(retrier(), bystander())
    assert seen is False


def test_threads_start_fresh_unless_given_the_context() -> None:
    """A plain thread starts unmarked; one running a copied context sees the mark."""
    seen: dict[str, bool] = {}
    with retrying():
        plain = threading.Thread(target=lambda: seen.update(plain=nested_retry()))
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=lambda: seen.update(copied=ctx.run(nested_retry)))
        for t in (plain, copied):
            t.start()
            t.join()
    assert seen == {"plain": False, "copied": True}
