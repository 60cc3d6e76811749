"""The virtual-time simulator: the real policies against a modelled dependency.

See :mod:`.loop` (virtual time), :mod:`.dependency` (the server and its faults),
:mod:`.scenarios`, :mod:`.policies` (the policies compared), :mod:`.metrics` (what is measured,
and the oracle) and :mod:`.runner`.
"""

from .dependency import (
    Dependency,
    DependencyConfig,
    PermanentDependencyError,
    Phase,
    ServerOverloaded,
    Throttled,
    TransientDependencyError,
)
from .loop import SimulationDeadlock, VirtualTimeLoop, run
from .metrics import Recorder, percentile
from .policies import POLICIES, PolicySpec, RunContext, SeedBreaker, Stack, register_policy
from .runner import RunResult, capacity_per_bin, run_one, run_suite
from .scenarios import SCENARIOS, Load, Scenario, get_scenario

__all__ = [
    "POLICIES",
    "SCENARIOS",
    "Dependency",
    "DependencyConfig",
    "Load",
    "PermanentDependencyError",
    "Phase",
    "PolicySpec",
    "Recorder",
    "RunContext",
    "RunResult",
    "Scenario",
    "SeedBreaker",
    "ServerOverloaded",
    "SimulationDeadlock",
    "Stack",
    "Throttled",
    "TransientDependencyError",
    "VirtualTimeLoop",
    "capacity_per_bin",
    "get_scenario",
    "percentile",
    "register_policy",
    "run",
    "run_one",
    "run_suite",
]
