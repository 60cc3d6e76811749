"""Run one scenario under one policy in virtual time, and a whole suite in parallel.

One run: a fresh :class:`~.loop.VirtualTimeLoop`; the dependency of the scenario; the policy's
:class:`~.policies.Stack` built on a :class:`~sage_resilience.core.LoopClock`; Poisson arrivals,
each request a task that runs through the layers under the client's deadline; a sampler that
records the policies' state twice a second; a :class:`~.metrics.Recorder` fed by the
dependency and by the policies' events. Three independent random streams, all derived from the
seed and the scenario (not the policy): arrivals, the dependency, and the policies' jitter. So
every policy faces the same arrivals, and the same seed gives identical results.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import random
import zlib
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from typing import Any

from ...core import (
    BreakerStateChanged,
    Bulkhead,
    CallRejected,
    CircuitBreaker,
    Event,
    LoopClock,
    RateLimiter,
    RejectedError,
    SettingChanged,
)
from .dependency import Dependency
from .loop import run as run_virtual
from .metrics import Recorder
from .policies import RunContext, breaker_state_value, resolve_policy
from .scenarios import Scenario, get_scenario

__all__ = ["RunResult", "run_one", "run_suite"]

_attempts: contextvars.ContextVar[list[int]] = contextvars.ContextVar("sim_attempts")

# Local rejections: refusals by our own policies (a timeout is not one).
_REJECTION_KINDS = frozenset({"circuit_breaker", "rate_limiter", "bulkhead", "shed", "throttle"})


@dataclass
class RunResult:
    scenario: str
    policy: str
    seed: int
    summary: dict[str, Any]
    series: dict[str, Any]
    samples: list[tuple[float, dict[str, float]]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "policy": self.policy,
            "seed": self.seed,
            "summary": self.summary,
            "series": self.series,
            "samples": self.samples,
        }


def _stream(seed: int, *parts: str) -> int:
    return zlib.crc32("/".join((str(seed), *parts)).encode())


def capacity_per_bin(scenario: Scenario, bins: int, width: float = 1.0) -> list[float]:
    """The dependency's nominal successful throughput in each bin (requests per bin)."""
    dep = scenario.dependency
    out = []
    steps = 10
    for b in range(bins):
        total = 0.0
        for k in range(steps):
            t = (b + (k + 0.5) / steps) * width
            phase = dep.phase_at(t)
            if phase.outage is not None:
                rate = 0.0
            else:
                workers = max(1, round(dep.workers * phase.capacity_mult))
                rate = workers / (dep.mean_service * phase.latency_mult)
                rate *= max(0.0, 1.0 - phase.error_prob - phase.permanent_prob)
                if phase.throttle_rate is not None:
                    rate = min(rate, phase.throttle_rate)
            total += rate * width / steps
        out.append(total)
    return out


async def _simulate(scenario: Scenario, policy: str, seed: int) -> RunResult:
    loop = asyncio.get_running_loop()
    clock = LoopClock(loop)
    fault = scenario.fault_window
    recorder = Recorder(
        duration=scenario.duration,
        fault_start=None if fault is None else fault[0],
        fault_end=None if fault is None else fault[1],
        settle=scenario.load.deadline,
    )
    dependency = Dependency(scenario.dependency, seed=_stream(seed, scenario.name, "dependency"))

    def on_attempt(t: float, answer: str) -> None:
        recorder.attempt(t, answer)
        counter = _attempts.get(None)
        if counter is not None:
            counter[0] += 1

    dependency.on_attempt = on_attempt

    def listener(event: Event) -> None:
        if isinstance(event, BreakerStateChanged):
            recorder.transition(event.time, event.policy, event.old_state, event.new_state)
        elif isinstance(event, CallRejected):
            if event.kind in _REJECTION_KINDS:
                recorder.local_rejection(event.time)
        elif isinstance(event, SettingChanged):
            recorder.setting(event.time, event.policy, event.setting, event.old, event.new)

    ctx = RunContext(
        clock=clock,
        rng=random.Random(_stream(seed, scenario.name, "policy")),
        listener=listener,
        layers=scenario.layers,
        healthy_p99=scenario.dependency.service_p99,
    )
    stack = resolve_policy(policy).build(ctx)

    chain: Callable[[], Awaitable[None]] = dependency.call
    for layer in reversed(stack.layers):
        if layer is not None:
            chain = partial(layer.acall, chain)

    deadline = scenario.load.deadline
    enter_priority = stack.priority

    async def request(priority: str) -> None:
        start = loop.time()
        recorder.request_started(start, priority)
        counter = [0]
        _attempts.set(counter)
        outcome = "success"
        try:
            async with asyncio.timeout(deadline):
                if enter_priority is None:
                    await chain()
                else:
                    with enter_priority(priority):
                        await chain()
        except RejectedError:
            outcome = "rejected"
        except Exception:
            outcome = "failed"
        recorder.request_finished(start, loop.time(), priority, outcome, counter[0])

    samples: list[tuple[float, dict[str, float]]] = []

    def sample() -> None:
        values: dict[str, float] = {}
        for p in ctx.registry:
            if isinstance(p, CircuitBreaker):
                values[f"{p.name}.state"] = breaker_state_value(p)
                values[f"{p.name}.calls"] = float(p.stats().calls)
            elif isinstance(p, RateLimiter):
                values[f"{p.name}.rate"] = p.rate
            elif isinstance(p, Bulkhead):
                values[f"{p.name}.limit"] = float(p.max_concurrent)
        if stack.state is not None:
            values.update(stack.state())
        values["server.queue"] = float(dependency.queued)
        samples.append((round(loop.time(), 3), values))

    async def sampler() -> None:
        while loop.time() <= scenario.duration:
            sample()
            await asyncio.sleep(0.5)

    rng = random.Random(_stream(seed, scenario.name, "arrivals"))
    names = [name for name, _ in scenario.load.mix]
    weights = [w for _, w in scenario.load.mix]
    tasks: set[asyncio.Task[None]] = set()
    sampler_task = asyncio.ensure_future(sampler())
    # Poisson arrivals with a piecewise-constant rate, by thinning at the maximum rate. Each
    # arrival is a timer that starts its request and schedules the next arrival (cheaper than
    # a coroutine sleeping from one arrival to the next).
    top = scenario.load.max_rate()
    rate_at = scenario.load.rate_at
    duration = scenario.duration
    single = names[0] if len(names) == 1 else None

    def next_arrival(t: float) -> None:
        while True:
            t += rng.expovariate(top)
            if t >= duration:
                return
            accept = rng.random() * top < rate_at(t)
            priority = single if single is not None else rng.choices(names, weights)[0]
            if accept:
                loop.call_at(t, arrive, t, priority)
                return

    def arrive(t: float, priority: str) -> None:
        task = loop.create_task(request(priority))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_arrival(t)

    next_arrival(0.0)
    await asyncio.sleep(duration - loop.time())
    # Requests still in flight get their deadline; then the run ends.
    if tasks:
        await asyncio.wait(tasks, timeout=deadline + 1.0)
    for task in list(tasks):
        task.cancel()
    sampler_task.cancel()
    await asyncio.gather(*tasks, sampler_task, return_exceptions=True)

    bins = len(recorder.offered)
    capacity = capacity_per_bin(scenario, bins)
    oracle = recorder.oracle(capacity, deadline)
    fresh = recorder.fresh_oracle(capacity)
    summary = recorder.summary(oracle, fresh)
    summary["innermost_calls_fault"] = _innermost_calls(samples, fault, recorder.in_fault_offered)
    return RunResult(
        scenario=scenario.name,
        policy=policy,
        seed=seed,
        summary=summary,
        series=recorder.series(oracle, fresh),
        samples=samples,
    )


def _innermost_calls(
    samples: list[tuple[float, dict[str, float]]],
    fault: tuple[float, float] | None,
    requests: int,
) -> float | None:
    """Calls entering the innermost breaker (the database layer's attempts, whether the breaker
    let them through or not) per request offered during the fault: the nested retries'
    multiplication as far as it reaches the database layer (once an outer layer's breaker is
    open, it stops the calls before they get there)."""
    if fault is None or not requests or not samples:
        return None
    keys = [k for k in samples[0][1] if k.endswith(".calls")]
    if not keys:
        return None
    key = keys[-1]  # registered last: the innermost layer

    def at(t: float) -> float:
        best = samples[0][1].get(key, 0.0)
        for ts, values in samples:
            if ts > t:
                break
            best = values.get(key, best)
        return best

    return (at(fault[1]) - at(fault[0])) / requests


def run_one(
    scenario: str | Scenario, policy: str, *, seed: int = 1, quick: bool = False
) -> RunResult:
    """Simulate ``scenario`` under ``policy``; deterministic for a given seed."""
    resolve_policy(policy)  # fails early, naming the known policies
    sc = get_scenario(scenario, quick=quick) if isinstance(scenario, str) else scenario
    return run_virtual(_simulate(sc, policy, seed))


def _run_job(job: tuple[str, str, int, bool]) -> dict[str, Any]:
    scenario, policy, seed, quick = job
    return run_one(scenario, policy, seed=seed, quick=quick).as_dict()


def run_suite(
    scenarios: Iterable[str],
    policies: Iterable[str],
    *,
    seed: int = 1,
    quick: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every scenario under every policy, in parallel processes; results in input order."""
    jobs = [(s, p, seed, quick) for s in scenarios for p in policies]
    for _s, p, _seed, _q in jobs:
        resolve_policy(p)
    n = len(jobs)
    workers = workers if workers is not None else min(n, os.cpu_count() or 1)
    results: list[dict[str, Any] | None] = [None] * n
    if workers <= 1 or n <= 1:
        for i, job in enumerate(jobs):
            results[i] = _run_job(job)
            if progress is not None:
                progress(i + 1, n, f"{job[0]} / {job[1]}")
    else:
        # Longest first, so two slow jobs do not end up last on one worker.
        order = sorted(range(n), key=lambda i: -_cost(jobs[i]))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_run_job, jobs[i]): i for i in order}
            for done, future in enumerate(as_completed(futures), start=1):
                i = futures[future]
                results[i] = future.result()
                if progress is not None:
                    progress(done, n, f"{jobs[i][0]} / {jobs[i][1]}")
    return [r for r in results if r is not None]


def _cost(job: tuple[str, str, int, bool]) -> float:
    sc = get_scenario(job[0], quick=job[3])
    return sc.duration * sc.load.max_rate() * (3.0 if job[1] == "seed" else 1.0) + math.ulp(1)
