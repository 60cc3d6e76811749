"""OpenTelemetry metrics from policy events and live policies (extra ``otel``).

:class:`OpenTelemetryListener` exports the same instruments as the Prometheus listener (the table
in :mod:`sage_resilience.integrations.prometheus`) through the OpenTelemetry metrics API. Events
are counted by the listener itself (plain dictionaries under one lock) and reported through
observable counters; live values (tokens, calls in flight, breaker states) through observable
gauges whose callbacks read the watched policies when the SDK collects. Call durations go to a
synchronous histogram, the one instrument the API has no observable form of: with the SDK, its
``record()`` is the listener's main per-call cost (several microseconds). Instrument
names are the Prometheus names with the prefix dotted and without the unit and ``_total``
suffixes (``sage_resilience.calls``, ``sage_resilience.call_duration`` in ``s``), so an
OpenTelemetry-to-Prometheus exporter gives back the Prometheus names and the shipped dashboard and
alert rules apply unchanged::

    from opentelemetry import metrics

    listener = OpenTelemetryListener()  # the global meter provider, or meter_provider=...
    listener.watch(breaker_manager)

Only the API is needed at runtime (without an SDK configured the instruments are no-ops); the SDK
and an exporter are the application's choice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        Meter,
        MeterProvider,
        Observation,
        get_meter,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess
    raise ModuleNotFoundError(
        "sage_resilience.integrations.otel needs opentelemetry-api: "
        "pip install 'sage-resilience[otel]'",
        name=exc.name,
    ) from exc

from .. import __version__
from ..core import BreakerOutcome
from ._metrics import DEFAULT_BUCKETS, METRICS, PREFIX, MetricsBase, MetricSpec

__all__ = ["OpenTelemetryListener"]

_SPECS = {spec.name: spec for spec in METRICS}

Attributes = dict[str, str]


class OpenTelemetryListener(MetricsBase):
    """Counts policy events into OpenTelemetry instruments; observes live values on collection.

    Args:
        meter: the meter to create the instruments on (default: one named ``sage_resilience``
            from ``meter_provider``).
        meter_provider: where to get the meter (default: the global meter provider).
        buckets: the latency histogram's bucket boundaries in seconds, given to the SDK as advice
            (a view configured by the application takes precedence).
        watch: registries or policies to :meth:`watch` at once.
    """

    def __init__(
        self,
        *,
        meter: Meter | None = None,
        meter_provider: MeterProvider | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        watch: Iterable[Any] = (),
    ) -> None:
        super().__init__()
        if meter is None:
            meter = get_meter(PREFIX, __version__, meter_provider=meter_provider)
        self.meter = meter
        duration = _SPECS["call_duration"]
        self._duration = meter.create_histogram(
            duration.otel_name,
            unit=duration.unit,
            description=duration.help,
            explicit_bucket_boundaries_advisory=list(buckets),
        )
        # Attribute dicts of the histogram cached per label set: built once, never mutated.
        self._attributes: dict[tuple[str, str], Attributes] = {}
        for spec in METRICS:
            if spec.type == "histogram":
                continue
            create = (
                meter.create_observable_counter
                if spec.type == "counter"
                else meter.create_observable_gauge
            )
            create(
                spec.otel_name,
                callbacks=[self._observer(spec)],
                unit=spec.unit,
                description=spec.help,
            )
        for source in watch:
            self.watch(source)

    def __repr__(self) -> str:
        return f"OpenTelemetryListener(sources={len(self._sources)})"

    def _observer(self, spec: MetricSpec) -> Callable[[CallbackOptions], Iterable[Observation]]:
        names = (spec.name,)
        labels = spec.labels

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if spec.source == "events" and spec.type == "counter":
                values: dict[tuple[str, ...], float] = dict(self.collect_counts(spec.name))
            else:
                values = self.collect_live(names)[spec.name]
            return [
                Observation(value, dict(zip(labels, key, strict=True)))
                for key, value in values.items()
            ]

        return observe

    # -- the listener --------------------------------------------------------------------------

    def _on_outcome(self, event: BreakerOutcome) -> None:
        super()._on_outcome(event)
        key = (event.policy, event.outcome)
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = self._attributes[key] = {"policy": event.policy, "outcome": event.outcome}
        self._duration.record(event.duration, attributes)
