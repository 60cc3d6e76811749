"""Happy-path overhead of each policy, measured against a bare call in the same run.

Run it as ``python -m sage_resilience.benchmarks.overhead``. For each case, every round times
``n`` calls of the bare function and ``n`` calls through the policy, back to back, in alternating
order; the figure is the median over rounds of the per-call difference (paired samples, so
machine noise common to both halves cancels). Async cases run both halves in one event loop.
Memory: the growth of traced memory over a long run of calls through one policy, after warm-up.

The table goes to stdout and the figures to a JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import platform
import statistics
import sys
import time
import timeit
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..adaptive import AdaptivePolicy, BudgetRegistry, adaptive_policy
from ..core import (
    Bulkhead,
    CircuitBreaker,
    Event,
    Pipeline,
    RateLimiter,
    Registry,
    Retry,
    RetryConfig,
    Timeout,
)

__all__ = ["CASES", "Case", "Result", "main", "run"]


@dataclass(frozen=True)
class Case:
    """One measurement: ``make()`` returns ``(bare, wrapped)``; ``target`` is in ns per call."""

    name: str
    kind: str  # "sync" or "async"
    make: Callable[[], tuple[Callable[[], Any], Callable[[], Any]]]
    target_ns: float | None = None
    per: str = "call"  # what the figure is divided by: "call" or "attempt"
    attempts: int = 1


@dataclass(frozen=True)
class Result:
    name: str
    kind: str
    overhead_ns: float  # median over rounds of (wrapped - bare) per call, divided by ``attempts``
    spread_ns: float  # interquartile range of the same
    bare_ns: float  # median bare cost per call
    target_ns: float | None
    per: str
    meets_target: bool | None


def _sync_ok() -> int:
    return 1


async def _async_ok() -> int:
    return 1


def _flaky_factory() -> Callable[[], int]:
    """Fails twice, then succeeds, over and over: the retry path with three attempts."""
    n = 0

    def flaky() -> int:
        nonlocal n
        n += 1
        if n % 3:
            raise ValueError("transient")
        return 1

    return flaky


def _aflaky_factory() -> Callable[[], Awaitable[int]]:
    n = 0

    async def flaky() -> int:
        nonlocal n
        n += 1
        if n % 3:
            raise ValueError("transient")
        return 1

    return flaky


def _floor_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    def passthrough(*args: Any, **kwargs: Any) -> Any:
        return _sync_ok(*args, **kwargs)

    return _sync_ok, passthrough


def _floor_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    async def passthrough(*args: Any, **kwargs: Any) -> Any:
        return await _async_ok(*args, **kwargs)

    return _async_ok, passthrough


def _zero_retry() -> Retry:
    return Retry(RetryConfig(max_attempts=3, initial_delay=0.0, max_delay=0.0), name="bench")


def _retry_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _sync_ok, _zero_retry()(_sync_ok)


def _retry_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _async_ok, _zero_retry()(_async_ok)


def _breaker_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _sync_ok, CircuitBreaker("bench")(_sync_ok)


def _breaker_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _async_ok, CircuitBreaker("bench")(_async_ok)


def _both_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _sync_ok, _zero_retry()(CircuitBreaker("bench")(_sync_ok))


def _both_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _async_ok, _zero_retry()(CircuitBreaker("bench")(_async_ok))


def _retry_path_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    flaky_bare = _flaky_factory()

    def by_hand() -> int:
        # The least a caller could write: three attempts, no policy.
        for _ in range(2):
            try:
                return flaky_bare()
            except ValueError:
                pass
        return flaky_bare()

    return by_hand, _zero_retry()(_flaky_factory())


def _retry_path_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    flaky_bare = _aflaky_factory()

    async def by_hand() -> int:
        for _ in range(2):
            try:
                return await flaky_bare()
            except ValueError:
                pass
        return await flaky_bare()

    return by_hand, _zero_retry()(_aflaky_factory())


def _limiter() -> RateLimiter:
    # Effectively unlimited, so every permit is available: the happy path.
    return RateLimiter(rate=1e12, burst=1e12, name="bench")


def _limiter_try() -> tuple[Callable[[], Any], Callable[[], Any]]:
    limiter = _limiter()
    try_acquire = limiter.try_acquire

    def bare() -> bool:
        return _sync_ok() == 1

    def wrapped() -> bool:
        return try_acquire() and _sync_ok() == 1

    return bare, wrapped


def _limiter_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    limiter = _limiter()
    aacquire = limiter.aacquire

    async def bare() -> int:
        return await _async_ok()

    async def wrapped() -> int:
        await aacquire()
        return await _async_ok()

    return bare, wrapped


def _aiolimiter_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    from aiolimiter import AsyncLimiter  # noqa: PLC0415 - a reference, not a dependency

    limiter = AsyncLimiter(1e12, 1.0)
    acquire = limiter.acquire

    async def bare() -> int:
        return await _async_ok()

    async def wrapped() -> int:
        await acquire()
        return await _async_ok()

    return bare, wrapped


def _bulkhead_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _sync_ok, Bulkhead(64, name="bench")(_sync_ok)


def _bulkhead_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _async_ok, Bulkhead(64, name="bench")(_async_ok)


def _pipeline(timeout: bool) -> Pipeline:
    policies: list[Any] = [
        _limiter(),
        Bulkhead(64, name="bench"),
        _zero_retry(),
        CircuitBreaker("bench"),
    ]
    if timeout:
        policies.append(Timeout(10.0))
    return Pipeline.build(*policies)


def _pipeline_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _sync_ok, _pipeline(timeout=False)(_sync_ok)


def _pipeline_async_no_timeout() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _async_ok, _pipeline(timeout=False)(_async_ok)


def _pipeline_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _async_ok, _pipeline(timeout=True)(_async_ok)


def _asyncio_timeout_alone() -> tuple[Callable[[], Any], Callable[[], Any]]:
    async def wrapped() -> int:
        async with asyncio.timeout(10.0):
            return await _async_ok()

    return _async_ok, wrapped


def _adaptive() -> AdaptivePolicy:
    """``adaptive_policy`` at its defaults (Gradient2 concurrency limit with priorities,
    budgeted one-layer retries, adaptive breaker, rate limit dormant, adaptive timeout on async
    calls), in a private registry, warmed up: called for 0.3 s, so that its controllers have
    ticked (the timeout is learned and applies to async calls) and their updates are amortised
    in the figure as in a service."""
    policy = adaptive_policy("bench", registry=Registry("bench"), budgets=BudgetRegistry())
    call = policy.call
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:
        for _ in range(1000):
            call(_sync_ok)
    return policy


def _adaptive_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _sync_ok, _adaptive()(_sync_ok)


def _adaptive_async() -> tuple[Callable[[], Any], Callable[[], Any]]:
    policy = _adaptive()
    if policy.stats()["timeout"] >= 30.0:
        raise RuntimeError("the adaptive timeout was not learned during the warm-up")
    return _async_ok, policy(_async_ok)


def _noop_listener(event: Event) -> None:
    return None


def _breaker_listened_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    return _sync_ok, CircuitBreaker("bench", listeners=[_noop_listener])(_sync_ok)


def _retry_listened_sync() -> tuple[Callable[[], Any], Callable[[], Any]]:
    policy = _zero_retry()
    policy.add_listener(_noop_listener)
    return _sync_ok, policy(_sync_ok)


CASES: list[Case] = [
    # The floor: what any decorator costs (a pass-through *args/**kwargs wrapper).
    Case("pass-through wrapper (floor)", "sync", _floor_sync),
    Case("pass-through wrapper (floor)", "async", _floor_async),
    Case("retry", "sync", _retry_sync, 300),
    Case("retry", "async", _retry_async, 400),
    Case("breaker (closed)", "sync", _breaker_sync, 300),
    Case("breaker (closed)", "async", _breaker_async, 400),
    Case("retry + breaker", "sync", _both_sync, 600),
    Case("retry + breaker", "async", _both_async, 800),
    Case("retry path: fail, fail, ok", "sync", _retry_path_sync, 1000, "attempt", 3),
    Case("retry path: fail, fail, ok", "async", _retry_path_async, 1000, "attempt", 3),
    Case("limiter try_acquire", "sync", _limiter_try, 300),
    Case("limiter aacquire", "async", _limiter_async, 300),
    *(
        [Case("aiolimiter acquire (reference)", "async", _aiolimiter_async)]
        if importlib.util.find_spec("aiolimiter") is not None
        else []
    ),
    Case("bulkhead", "sync", _bulkhead_sync),
    Case("bulkhead", "async", _bulkhead_async),
    Case("pipeline: limit+bulkhead+retry+breaker", "sync", _pipeline_sync, 1500),
    Case("pipeline: limit+bulkhead+retry+breaker", "async", _pipeline_async_no_timeout, 1500),
    Case("pipeline: ... + timeout", "async", _pipeline_async, 5000),
    Case("asyncio.timeout alone (reference)", "async", _asyncio_timeout_alone),
    # The goal: <= 2 us per call (sync) for the full adaptive policy on the happy path.
    Case("adaptive policy (full)", "sync", _adaptive_sync, 2000),
    Case("adaptive policy (full)", "async", _adaptive_async),
    Case("breaker, one listener attached", "sync", _breaker_listened_sync),
    Case("retry, one listener attached", "sync", _retry_listened_sync),
]


def _time_sync(fn: Callable[[], Any], n: int) -> float:
    return timeit.Timer("fn()", globals={"fn": fn}).timeit(n)


async def _time_async(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    # The loop gets a turn every 100 calls, as it would in a service: without it, timers
    # cancelled by ``asyncio.timeout`` pile up in the loop's heap (only a loop iteration sweeps
    # them) and make every later timer dearer. Both halves of a pair pay the same turns.
    perf = time.perf_counter
    sleep = asyncio.sleep
    blocks = range(n // 100)
    inner = range(100)
    t0 = perf()
    for _ in blocks:
        for _ in inner:
            await fn()
        await sleep(0)
    return perf() - t0


def _measure(case: Case, n: int, rounds: int) -> Result:
    bare, wrapped = case.make()
    diffs: list[float] = []
    bares: list[float] = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        if case.kind == "sync":
            _time_sync(bare, n // 10 + 1)
            _time_sync(wrapped, n // 10 + 1)
            for i in range(rounds):
                if i % 2:
                    tw = _time_sync(wrapped, n)
                    tb = _time_sync(bare, n)
                else:
                    tb = _time_sync(bare, n)
                    tw = _time_sync(wrapped, n)
                diffs.append((tw - tb) / n)
                bares.append(tb / n)
        else:

            async def go() -> None:
                await _time_async(bare, n // 10 + 1)
                await _time_async(wrapped, n // 10 + 1)
                for i in range(rounds):
                    if i % 2:
                        tw = await _time_async(wrapped, n)
                        tb = await _time_async(bare, n)
                    else:
                        tb = await _time_async(bare, n)
                        tw = await _time_async(wrapped, n)
                    diffs.append((tw - tb) / n)
                    bares.append(tb / n)

            asyncio.run(go())
    finally:
        if gc_was:
            gc.enable()
    q = statistics.quantiles(diffs, n=4) if len(diffs) >= 2 else [diffs[0]] * 3
    overhead = statistics.median(diffs) * 1e9 / case.attempts
    target = case.target_ns
    return Result(
        name=case.name,
        kind=case.kind,
        overhead_ns=overhead,
        spread_ns=(q[2] - q[0]) * 1e9 / case.attempts,
        bare_ns=statistics.median(bares) * 1e9,
        target_ns=target,
        per=case.per,
        meets_target=None if target is None else overhead <= target,
    )


def _memory_growth(calls: int) -> dict[str, int]:
    """Bytes of traced memory gained over ``calls`` calls through one policy, after warm-up."""
    out: dict[str, int] = {}
    flaky = _flaky_factory()
    makers: dict[str, Callable[[], Callable[[], Any]]] = {
        "retry": lambda: _zero_retry()(_sync_ok),
        "breaker": lambda: CircuitBreaker("mem")(_sync_ok),
        "retry + breaker": lambda: _zero_retry()(CircuitBreaker("mem2")(_sync_ok)),
        "retry path": lambda: _zero_retry()(flaky),
        "adaptive policy": lambda: _adaptive()(_sync_ok),
    }
    for name, make in makers.items():
        fn = make()
        for _ in range(10_000):
            fn()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            fn()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        out[name] = after - before
    return out


def run(
    *,
    n: int = 20_000,
    rounds: int = 21,
    memory_calls: int = 1_000_000,
    cases: list[Case] | None = None,
    select: str | None = None,
) -> dict[str, Any]:
    """Measure every case; returns the JSON-ready document."""
    chosen = [c for c in (cases or CASES) if select is None or select in c.name]
    results = [_measure(case, n, rounds) for case in chosen]
    memory = _memory_growth(memory_calls) if memory_calls else {}
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "calls_per_round": n,
        "rounds": rounds,
        "results": [asdict(r) for r in results],
        "memory_calls": memory_calls,
        "memory_growth_bytes": memory,
    }


def format_table(doc: dict[str, Any]) -> str:
    floors = {
        r["kind"]: r["overhead_ns"] for r in doc["results"] if r["name"].startswith("pass-through")
    }
    lines = [
        f"Happy-path overhead over a bare call (median of {doc['rounds']} paired rounds of "
        f"{doc['calls_per_round']} calls; Python {doc['python']})",
        "x floor: the overhead in units of a pass-through *args/**kwargs wrapper measured in the",
        "same run (the speed of this machine varies; the anchors put it at 90 ns sync, 150 async)",
        "",
        f"{'case':<40} {'kind':<6} {'extra':>10} {'IQR':>6} {'x floor':>8} {'target':>8}  ok",
    ]
    for r in doc["results"]:
        unit = "ns/att" if r["per"] == "attempt" else "ns"
        target = "-" if r["target_ns"] is None else f"{r['target_ns']:.0f}"
        ok = {True: "yes", False: "NO", None: "-"}[r["meets_target"]]
        floor = floors.get(r["kind"])
        ratio = "-" if not floor else f"{r['overhead_ns'] / floor:.2f}"
        lines.append(
            f"{r['name']:<40} {r['kind']:<6} {r['overhead_ns']:>7.0f} {unit:<2} "
            f"{r['spread_ns']:>6.0f} {ratio:>8} {target:>8}  {ok}"
        )
    if doc["memory_growth_bytes"]:
        lines += [
            "",
            f"Memory growth over {doc['memory_calls']:,} calls (tracemalloc, after warm-up):",
        ]
        for name, growth in doc["memory_growth_bytes"].items():
            lines.append(f"  {name:<20} {growth:>8,} bytes")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sage_resilience.benchmarks.overhead")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--memory-calls", type=int, default=1_000_000, help="0 skips memory")
    parser.add_argument("--select", help="only cases whose name contains this")
    parser.add_argument("--out", type=Path, default=Path("bench-results/overhead.json"))
    args = parser.parse_args(argv)
    doc = run(n=args.calls, rounds=args.rounds, memory_calls=args.memory_calls, select=args.select)
    print(format_table(doc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
