"""sage_resilience.adaptive: controllers that retune the core primitives at runtime (issue 5)."""

__all__: list[str] = []
