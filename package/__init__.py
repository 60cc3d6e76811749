"""sage-resilience: adaptive, self-tuning resilience middleware for Python.

The packages:

* :mod:`sage_resilience.core`: retry, circuit breaker, registry, presets, events, clock;
* :mod:`sage_resilience.adaptive`: controllers that retune the core primitives at runtime;
* :mod:`sage_resilience.integrations`: adapters to real systems and telemetry backends;
* :mod:`sage_resilience.benchmarks`: the virtual-time simulator and the overhead benchmark.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sage-resilience")
except PackageNotFoundError:  # pragma: no cover - running from a checkout without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
