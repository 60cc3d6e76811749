"""The modelled dependency: capacity, the bounded queue, abandoned work, and every field of a
fault phase, each driven directly (no policy) on the virtual-time loop."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sage_resilience.benchmarks.sim import (
    Dependency,
    DependencyConfig,
    PermanentDependencyError,
    Phase,
    ServerOverloaded,
    SimulationDeadlock,
    Throttled,
    TransientDependencyError,
    run,
)
from sage_resilience.core import LoopClock

T = TypeVar("T")

# A server whose service time is exactly 1 s (median = p99: a log-normal of sigma 0).
FIXED = DependencyConfig(workers=1, service_median=1.0, service_p99=1.0, queue_limit=10)

# Sleeps here run on a virtual-time loop (looptime, or the simulator's): sleeping on the loop's
# clock takes no real time.
VIRTUAL = LoopClock()


def _sim(config: DependencyConfig, body: Callable[[Dependency], Awaitable[T]], seed: int = 1) -> T:
    async def main() -> T:
        return await body(Dependency(config, seed=seed))

    return run(main())


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _outcome(dep: Dependency) -> str:
    try:
        await dep.call()
    except Exception as exc:
        return type(exc).__name__
    return "ok"


async def _outcomes(dep: Dependency, n: int, spacing: float = 0.01) -> Counter[str]:
    """``n`` calls, one every ``spacing`` seconds, each awaited concurrently."""
    tasks = []
    for _ in range(n):
        tasks.append(asyncio.ensure_future(_outcome(dep)))
        await asyncio.sleep(spacing)
    return Counter(await asyncio.gather(*tasks))


def test_capacity_is_workers_over_mean_service_time() -> None:
    """Saturated for 400 s of virtual time, the server completes workers / mean service time
    requests per second (within 3 %)."""
    config = DependencyConfig(workers=3, service_median=0.05, service_p99=0.2, queue_limit=50)
    horizon = 400.0

    async def body(dep: Dependency) -> int:
        done = 0

        async def client() -> None:
            nonlocal done
            while _now() < horizon:
                await dep.call()
                done += 1

        # Twice as many closed-loop clients as workers: a worker is never idle.
        await asyncio.gather(*(client() for _ in range(2 * config.workers)))
        return done

    done = _sim(config, body)
    assert config.capacity == pytest.approx(3 / config.mean_service)
    assert done / horizon == pytest.approx(config.capacity, rel=0.03)


def test_full_queue_answers_server_overloaded() -> None:
    """With 1 worker and a queue of 3, of 6 simultaneous calls 1 runs, 3 wait and 2 are refused
    at once with ``ServerOverloaded`` (a fast 503)."""
    config = DependencyConfig(workers=1, service_median=1.0, service_p99=1.0, queue_limit=3)

    async def body(dep: Dependency) -> tuple[int, int, list[tuple[str, float]]]:
        answers: list[tuple[str, float]] = []

        async def one() -> None:
            answers.append((await _outcome(dep), _now()))

        tasks = [asyncio.ensure_future(one()) for _ in range(6)]
        await asyncio.sleep(0)
        busy, queued = dep.busy, dep.queued
        await asyncio.gather(*tasks)
        return busy, queued, answers

    busy, queued, answers = _sim(config, body)
    assert (busy, queued) == (1, 3)
    assert answers == [
        ("ServerOverloaded", config.network_rtt),
        ("ServerOverloaded", config.network_rtt),
        ("ok", 1.0),
        ("ok", 2.0),
        ("ok", 3.0),
        ("ok", 4.0),
    ]
    assert issubclass(ServerOverloaded, Exception)


def test_work_for_an_abandoned_request_is_still_done() -> None:
    """A client that gives up (its attempt cancelled while running or while queued) still costs
    the server the full service time: the next caller waits for that work to finish."""

    async def body(dep: Dependency) -> tuple[int, float, float]:
        async def impatient() -> None:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await dep.call()

        # A: running when it gives up; B: queued behind A when it gives up.
        await asyncio.gather(impatient(), impatient())
        busy_after_abandon = dep.busy
        await dep.call()  # C: arrives at 0.1, must wait for A's and B's work (0-1, 1-2)
        c_done = _now()
        await VIRTUAL.asleep(5)
        await dep.call()  # D: idle server, served at once
        return busy_after_abandon, c_done, _now()

    busy, c_done, d_done = _sim(FIXED, body)
    assert busy == 1
    assert c_done == pytest.approx(3.0)
    assert d_done == pytest.approx(9.0)


def test_error_prob_answers_transient_errors() -> None:
    """``error_prob=0.3`` fails about 30 % of attempts with ``TransientDependencyError``."""
    config = DependencyConfig(baseline=Phase(name="baseline", error_prob=0.3))
    counts = _sim(config, lambda dep: _outcomes(dep, 3000))
    assert set(counts) == {"ok", "TransientDependencyError"}
    assert counts["TransientDependencyError"] / 3000 == pytest.approx(0.3, abs=0.03)


def test_permanent_prob_answers_permanent_errors() -> None:
    """``permanent_prob`` and ``error_prob`` split the attempts into permanent errors, transient
    errors and successes in those proportions."""
    config = DependencyConfig(baseline=Phase(name="b", permanent_prob=0.2, error_prob=0.1))
    counts = _sim(config, lambda dep: _outcomes(dep, 3000))
    assert counts["PermanentDependencyError"] / 3000 == pytest.approx(0.2, abs=0.03)
    assert counts["TransientDependencyError"] / 3000 == pytest.approx(0.1, abs=0.03)
    assert counts["ok"] / 3000 == pytest.approx(0.7, abs=0.03)
    assert issubclass(PermanentDependencyError, Exception)
    assert issubclass(TransientDependencyError, Exception)


def test_latency_mult_scales_the_service_time() -> None:
    """Under ``latency_mult=10`` the same service-time draw (same seed) takes 10 times longer."""

    async def one_call(dep: Dependency) -> float:
        await dep.call()
        return _now()

    healthy = _sim(DependencyConfig(), one_call, seed=5)
    slow = _sim(DependencyConfig(baseline=Phase(name="b", latency_mult=10.0)), one_call, seed=5)
    assert 0 < healthy < 1
    assert slow == pytest.approx(10 * healthy)


def test_capacity_mult_changes_the_number_of_workers_at_the_phase_boundary() -> None:
    """``capacity_mult=0.5`` from t=10 leaves 2 of 4 workers taking new work; before and after
    the phase all 4 do."""
    config = DependencyConfig(
        workers=4,
        service_median=1.0,
        service_p99=1.0,
        faults=(Phase(start=10, end=20, capacity_mult=0.5),),
    )

    async def body(dep: Dependency) -> list[tuple[int, int]]:
        seen = []
        for t in (5.0, 15.0, 25.0):
            await asyncio.sleep(t - _now())
            tasks = [asyncio.ensure_future(dep.call()) for _ in range(8)]
            await asyncio.sleep(0)
            seen.append((dep.busy, dep.queued))
            await asyncio.gather(*tasks)
        return seen

    assert _sim(config, body) == [(4, 4), (2, 6), (4, 4)]


def test_refuse_outage_answers_connection_refused_at_once() -> None:
    """A ``refuse`` outage answers ``ConnectionRefusedError`` after the network round trip, from
    its start to its end, and the server does no work."""
    config = DependencyConfig(faults=(Phase(start=10, end=20, outage="refuse"),))

    async def body(dep: Dependency) -> list[tuple[str, float]]:
        out = []
        for t in (5.0, 10.0, 19.9, 20.0):
            await asyncio.sleep(t - _now())
            start = _now()
            answer = await _outcome(dep)
            out.append((answer, round(_now() - start, 6) if answer != "ok" else -1.0))
            assert dep.busy == 0
        return out

    rtt = DependencyConfig().network_rtt
    assert _sim(config, body) == [
        ("ok", -1.0),
        ("ConnectionRefusedError", rtt),
        ("ConnectionRefusedError", rtt),
        ("ok", -1.0),
    ]


def test_blackhole_outage_never_answers() -> None:
    """A ``blackhole`` attempt hangs until the client's own timeout; without one the simulation
    has nothing left to do (a deadlock), and no worker is ever busy."""
    config = DependencyConfig(baseline=Phase(name="b", outage="blackhole"))

    async def with_timeout(dep: Dependency) -> tuple[float, int]:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3.0):
                await dep.call()
        return _now(), dep.busy

    assert _sim(config, with_timeout) == (3.0, 0)

    async def without_timeout(dep: Dependency) -> None:
        await dep.call()

    with pytest.raises(SimulationDeadlock):
        _sim(config, without_timeout)


def test_throttle_rate_answers_429_above_the_limit_without_a_hint() -> None:
    """A provider limit of 10 rps (burst 1) with 40 rps offered for 10 s lets about 100 calls
    through and answers the rest ``Throttled`` with no retry-after."""
    config = DependencyConfig(baseline=Phase(name="b", throttle_rate=10.0, throttle_burst=1.0))

    async def body(dep: Dependency) -> tuple[Counter[str], set[float | None]]:
        hints: set[float | None] = set()

        async def one() -> str:
            try:
                await dep.call()
            except Throttled as exc:
                hints.add(exc.retry_after)
                return "throttled"
            return "ok"

        tasks = []
        for _ in range(400):
            tasks.append(asyncio.ensure_future(one()))
            await VIRTUAL.asleep(0.025)
        return Counter(await asyncio.gather(*tasks)), hints

    counts, hints = _sim(config, body)
    assert counts["ok"] == pytest.approx(101, abs=2)
    assert counts["throttled"] == 400 - counts["ok"]
    assert hints == {None}


def test_throttle_hint_gives_retry_after() -> None:
    """With ``throttle_hint`` the 429 carries ``retry_after`` = 1 / rate, and a call made after
    waiting that long is let through."""
    config = DependencyConfig(
        baseline=Phase(name="b", throttle_rate=4.0, throttle_burst=1.0, throttle_hint=True)
    )

    async def body(dep: Dependency) -> tuple[float | None, str]:
        await dep.call()  # takes the only token
        try:
            await dep.call()
        except Throttled as exc:
            hint = exc.retry_after
        else:
            raise AssertionError("not throttled")
        assert hint is not None
        await asyncio.sleep(hint)
        return hint, await _outcome(dep)

    assert _sim(config, body) == (0.25, "ok")


def test_phases_merge_over_the_baseline() -> None:
    """A fault phase changes only the fields it sets; the baseline's others stay in force, and
    where faults overlap the later one wins."""
    config = DependencyConfig(
        baseline=Phase(name="baseline", error_prob=0.1, latency_mult=2.0),
        faults=(
            Phase(start=10, end=30, capacity_mult=0.5, name="brownout"),
            Phase(start=20, end=25, latency_mult=3.0, name="spike"),
        ),
    )
    before = config.phase_at(5)
    assert (before.name, before.error_prob, before.latency_mult, before.capacity_mult) == (
        "baseline",
        0.1,
        2.0,
        1.0,
    )
    brown = config.phase_at(15)
    assert (brown.name, brown.error_prob, brown.latency_mult, brown.capacity_mult) == (
        "brownout",
        0.1,
        2.0,
        0.5,
    )
    spike = config.phase_at(22)
    assert (spike.name, spike.error_prob, spike.latency_mult, spike.capacity_mult) == (
        "spike",
        0.1,
        3.0,
        1.0,
    )
    assert config.phase_at(30).name == "baseline"
    assert config.boundaries() == [10, 20, 25, 30]


def test_phase_changes_take_effect_on_the_running_server() -> None:
    """A transient-error phase from t=10 to t=20 fails attempts only inside it (the baseline's
    healthy answers before and after)."""
    config = DependencyConfig(faults=(Phase(start=10, end=20, error_prob=1.0),))

    async def body(dep: Dependency) -> list[str]:
        out = []
        for t in (5.0, 12.0, 25.0):
            await asyncio.sleep(t - _now())
            out.append(await _outcome(dep))
        return out

    assert _sim(config, body) == ["ok", "TransientDependencyError", "ok"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"outage": "sometimes"},
        {"error_prob": 1.5},
        {"permanent_prob": -0.1},
        {"latency_mult": 0.0},
        {"capacity_mult": -1.0},
        {"start": 5.0, "end": 5.0},
    ],
)
def test_invalid_phases_are_refused(kwargs: dict[str, Any]) -> None:
    """A phase with an impossible field raises ``ValueError``."""
    with pytest.raises(ValueError):
        Phase(**kwargs)
