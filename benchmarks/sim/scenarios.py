"""The fault scenarios: a dependency, its fault schedule, and the load offered to it.

The healthy dependency has 10 workers, a log-normal service time with median 50 ms and p99
200 ms (capacity about 167 requests per second) and a queue of 100. Unless a scenario says
otherwise, 100 requests per second arrive (Poisson), each through three nested layers (manager,
storage, database, as in Sage), and each client waits at most 5 s for its answer (an interactive
request).

``quick`` variants (for the tests and ``--quick``) shorten every phase and lower the load by
the same factor, so the same phenomena appear in a fraction of the time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .dependency import DependencyConfig, Phase

__all__ = ["SCENARIOS", "Load", "Scenario", "get_scenario"]

PRIORITIES = ("CRITICAL", "HIGH", "NORMAL", "LOW", "SHEDDABLE")


@dataclass(frozen=True)
class Load:
    """Open-loop Poisson arrivals at ``rate`` per second, changed by ``schedule`` phases
    ``(start, end, rate)``; each request's priority drawn from ``mix``."""

    rate: float = 100.0
    schedule: tuple[tuple[float, float, float], ...] = ()
    mix: tuple[tuple[str, float], ...] = (("NORMAL", 1.0),)
    deadline: float = 5.0

    def rate_at(self, t: float) -> float:
        rate = self.rate
        for start, end, r in self.schedule:
            if start <= t < end:
                rate = r
        return rate

    def max_rate(self) -> float:
        return max([self.rate, *(r for _s, _e, r in self.schedule)])


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration: float
    dependency: DependencyConfig = field(default_factory=DependencyConfig)
    load: Load = field(default_factory=Load)
    fault_window: tuple[float, float] | None = None
    layers: tuple[str, ...] = ("manager", "storage", "database")

    def scaled(self, time_factor: float, load_factor: float) -> Scenario:
        """The same scenario with every time multiplied by ``time_factor`` and the load (and
        the server's workers and queue, and the provider's rate limit) by ``load_factor``: each
        worker sees the same load, and a full queue the same waiting time."""

        def phase(p: Phase) -> Phase:
            return replace(
                p,
                start=p.start * time_factor,
                end=p.end * time_factor,
                throttle_rate=None if p.throttle_rate is None else p.throttle_rate * load_factor,
            )

        dep = self.dependency
        dep = replace(
            dep,
            workers=max(1, round(dep.workers * load_factor)),
            queue_limit=max(1, round(dep.queue_limit * load_factor)),
            baseline=replace(
                dep.baseline,
                throttle_rate=None
                if dep.baseline.throttle_rate is None
                else dep.baseline.throttle_rate * load_factor,
            ),
            faults=tuple(phase(p) for p in dep.faults),
        )
        load = replace(
            self.load,
            rate=self.load.rate * load_factor,
            schedule=tuple(
                (s * time_factor, e * time_factor, r * load_factor)
                for s, e, r in self.load.schedule
            ),
        )
        window = (
            None
            if self.fault_window is None
            else (self.fault_window[0] * time_factor, self.fault_window[1] * time_factor)
        )
        return replace(
            self,
            duration=self.duration * time_factor,
            dependency=dep,
            load=load,
            fault_window=window,
        )


def _dep(*faults: Phase, baseline: Phase | None = None) -> DependencyConfig:
    return DependencyConfig(baseline=baseline or Phase(name="baseline"), faults=faults)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "blips",
            "5 % transient errors for 60 s",
            duration=100.0,
            dependency=_dep(Phase(start=20, end=80, error_prob=0.05, name="blips")),
            fault_window=(20.0, 80.0),
        ),
        Scenario(
            "outage",
            "30 s hard outage (connections refused), then recovery",
            duration=120.0,
            dependency=_dep(Phase(start=20, end=50, outage="refuse", name="outage")),
            fault_window=(20.0, 50.0),
        ),
        Scenario(
            "blackhole",
            "30 s of requests that hang until the client gives up",
            duration=100.0,
            dependency=_dep(Phase(start=20, end=50, outage="blackhole", name="blackhole")),
            fault_window=(20.0, 50.0),
        ),
        Scenario(
            "brownout",
            "capacity halves for 60 s (100 rps offered, ~83 rps served)",
            duration=110.0,
            dependency=_dep(Phase(start=20, end=80, capacity_mult=0.5, name="brownout")),
            fault_window=(20.0, 80.0),
        ),
        Scenario(
            "latency-spike",
            "latency x10 for 20 s",
            duration=80.0,
            dependency=_dep(Phase(start=20, end=40, latency_mult=10.0, name="spike")),
            fault_window=(20.0, 40.0),
        ),
        Scenario(
            "throttled",
            "provider limit 50 rps, 75 rps offered: 429 above the limit, no retry-after hint",
            duration=60.0,
            dependency=_dep(
                baseline=Phase(name="baseline", throttle_rate=50.0, throttle_burst=5.0)
            ),
            load=Load(rate=75.0),
            fault_window=(0.0, 60.0),
        ),
        Scenario(
            "metastable",
            "load at 90 % of capacity, capacity dips to 50 % for 10 s",
            duration=90.0,
            dependency=_dep(Phase(start=20, end=30, capacity_mult=0.5, name="dip")),
            load=Load(rate=150.0),
            fault_window=(20.0, 30.0),
        ),
        Scenario(
            "noisy",
            "a steady 10 % of transient errors: healthy but noisy, no breaker should trip",
            duration=60.0,
            dependency=_dep(baseline=Phase(name="baseline", error_prob=0.10)),
            fault_window=None,
        ),
        Scenario(
            "flapping",
            "down 5 s, up 5 s, four times",
            duration=80.0,
            dependency=_dep(
                *(
                    Phase(start=s, end=s + 5, outage="refuse", name=f"down{i}")
                    for i, s in enumerate((20, 30, 40, 50))
                )
            ),
            fault_window=(20.0, 55.0),
        ),
        Scenario(
            "priority-overload",
            "offered 2x capacity for 30 s with a priority mix",
            duration=60.0,
            load=Load(
                rate=100.0,
                schedule=((10.0, 40.0, 335.0),),
                mix=(
                    ("CRITICAL", 0.1),
                    ("HIGH", 0.2),
                    ("NORMAL", 0.4),
                    ("LOW", 0.2),
                    ("SHEDDABLE", 0.1),
                ),
            ),
            fault_window=(10.0, 40.0),
        ),
    ]
}


def get_scenario(name: str, *, quick: bool = False) -> Scenario:
    """The scenario ``name`` (``quick``: a third of the time at half the load)."""
    try:
        scenario = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}") from None
    return scenario.scaled(1 / 3, 0.5) if quick else scenario
