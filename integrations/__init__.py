"""sage_resilience.integrations: adapters to real systems and telemetry backends."""

__all__: list[str] = []
