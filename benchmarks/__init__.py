"""sage_resilience.benchmarks: the overhead benchmark and (later) the virtual-time simulator."""

__all__: list[str] = []
