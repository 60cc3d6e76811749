"""The OpenTelemetry listener, read through the SDK's in-memory reader."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.metrics")
pytest.importorskip("prometheus_client")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    Sum,
)
from sage_resilience.core import CallRejected, Event, Registry
from sage_resilience.integrations import METRICS, OpenTelemetryListener, PrometheusListener
from sage_resilience.integrations._metrics import DEFAULT_BUCKETS, MetricSpec, _unit_suffix
from support.telemetry import Scenario, drive

Points = dict[frozenset[tuple[str, Any]], Any]


def _metrics(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def _points(metric: Metric) -> Points:
    out: Points = {}
    for point in metric.data.data_points:
        key = frozenset((point.attributes or {}).items())
        out[key] = point if isinstance(point, HistogramDataPoint) else point.value
    return out


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def listener(reader: InMemoryMetricReader, registry: Registry) -> OpenTelemetryListener:
    """A listener on its own SDK meter provider, watching the test's registry."""
    return OpenTelemetryListener(
        meter_provider=MeterProvider(metric_readers=[reader]), watch=[registry]
    )


def test_instruments_are_the_documented_ones(
    reader: InMemoryMetricReader, listener: OpenTelemetryListener, scenario: Scenario
) -> None:
    """After every event kind, the instruments are exactly METRICS' OpenTelemetry names."""
    drive(scenario)
    metrics = _metrics(reader)
    assert set(metrics) == {spec.otel_name for spec in METRICS}
    kinds = {"counter": Sum, "gauge": Gauge, "histogram": Histogram}
    for spec in METRICS:
        metric = metrics[spec.otel_name]
        assert isinstance(metric.data, kinds[spec.type]), spec.name
        assert metric.unit == spec.unit
        if spec.type == "counter":
            assert isinstance(metric.data, Sum)
            assert metric.data.is_monotonic
        for attributes in _points(metric):
            assert {k for k, _ in attributes} == set(spec.labels), spec.name


def test_values_match_the_prometheus_listener(
    reader: InMemoryMetricReader,
    listener: OpenTelemetryListener,
    registry: Registry,
    scenario: Scenario,
) -> None:
    """Both listeners on the same policies report the same value for every label set."""
    prometheus = PrometheusListener(watch=[registry])
    drive(scenario)
    metrics = _metrics(reader)
    get = prometheus.collector_registry.get_sample_value
    compared = 0
    for spec in METRICS:
        for attributes, point in _points(metrics[spec.otel_name]).items():
            labels = dict(attributes)
            if spec.type == "histogram":
                name = spec.prometheus_name
                assert get(f"{name}_count", labels) == point.count
                assert get(f"{name}_sum", labels) == pytest.approx(point.sum)
                cumulative = list(itertools.accumulate(point.bucket_counts))
                for bound, count in zip(point.explicit_bounds, cumulative, strict=False):
                    assert get(f"{name}_bucket", {**labels, "le": str(bound)}) == count
            else:
                assert get(spec.prometheus_name, labels) == pytest.approx(point), spec.name
            compared += 1
    assert compared >= 30


def test_histogram_uses_the_advised_buckets(
    reader: InMemoryMetricReader, listener: OpenTelemetryListener, scenario: Scenario
) -> None:
    """The duration histogram has DEFAULT_BUCKETS as boundaries and counts 30 ms under 50 ms."""
    drive(scenario)
    points = _points(_metrics(reader)["sage_resilience.call_duration"])
    success = points[frozenset({("policy", "db"), ("outcome", "success")})]
    assert tuple(success.explicit_bounds) == DEFAULT_BUCKETS
    index = DEFAULT_BUCKETS.index(0.05)
    assert success.bucket_counts[index] == 2
    assert sum(success.bucket_counts) == 2


def test_observable_gauges_read_live_values(
    reader: InMemoryMetricReader, listener: OpenTelemetryListener, scenario: Scenario
) -> None:
    """Tokens and calls in flight are read at each collection, without any event."""
    assert scenario.limiter.try_acquire(2)
    assert scenario.bulkhead.try_acquire()
    first = _metrics(reader)
    key = frozenset({("policy", "embed_rate")})
    assert _points(first["sage_resilience.rate_limiter_tokens"])[key] == 0
    assert _points(first["sage_resilience.bulkhead_in_use"])[frozenset({("policy", "pool")})] == 1
    scenario.clock.advance(0.2)
    scenario.bulkhead.release()
    second = _metrics(reader)
    assert _points(second["sage_resilience.rate_limiter_tokens"])[key] == pytest.approx(1.0)
    assert _points(second["sage_resilience.bulkhead_in_use"])[frozenset({("policy", "pool")})] == 0


def test_breaker_state_gauge_follows_the_breaker(
    reader: InMemoryMetricReader, listener: OpenTelemetryListener, scenario: Scenario
) -> None:
    """The state gauge has 1 on the breaker's state: open after force_open, closed after reset."""

    def state() -> str:
        points = _points(_metrics(reader)["sage_resilience.breaker_state"])
        on = [dict(k)["state"] for k, v in points.items() if dict(k)["policy"] == "db" and v == 1]
        assert len(on) == 1
        return on[0]

    assert state() == "closed"
    scenario.breaker.force_open()
    assert state() == "open"
    scenario.breaker.reset()
    assert state() == "closed"


def test_without_an_sdk_the_listener_is_a_cheap_no_op(scenario: Scenario) -> None:
    """On the API's default (no-op) meter provider, events are accepted and nothing breaks."""
    from opentelemetry.metrics import NoOpMeterProvider

    listener = OpenTelemetryListener(meter_provider=NoOpMeterProvider())
    scenario.registry.add_listener(listener)
    drive(scenario)
    listener(CallRejected(policy="p", time=0.0, kind="bulkhead", reason="x", retry_after=None))


def test_unknown_events_are_ignored(
    reader: InMemoryMetricReader, listener: OpenTelemetryListener
) -> None:
    """An unknown Event type adds no data point; a CallRejected subclass counts as one."""

    class Custom(Event):
        pass

    class Shed(CallRejected):
        pass

    listener(Custom(policy="p", time=0.0))
    listener(Shed(policy="p", time=0.0, kind="shedder", reason="shed", retry_after=None))
    metrics = _metrics(reader)
    rejections = _points(metrics["sage_resilience.rejections"])
    assert rejections == {frozenset({("policy", "p"), ("kind", "shedder"), ("reason", "shed")}): 1}
    assert "sage_resilience.calls" not in metrics


@pytest.mark.parametrize(
    ("unit", "type_", "suffix"),
    [
        ("s", "histogram", "seconds"),
        ("{call}", "counter", ""),
        ("{token}/s", "gauge", "per_second"),
        ("1", "gauge", "ratio"),
        ("", "gauge", ""),
    ],
)
def test_unit_suffixes_follow_the_otel_to_prometheus_rules(
    unit: str, type_: Any, suffix: str
) -> None:
    """Units translate as the compatibility spec says: annotations vanish, s is seconds, ..."""
    assert _unit_suffix(unit, type_) == suffix


def test_prometheus_names_are_the_translated_otel_names() -> None:
    """Each Prometheus name is its OTel name with dots as underscores, unit suffix and _total."""
    for spec in METRICS:
        base = spec.otel_name.replace(".", "_")
        suffix = _unit_suffix(spec.unit, spec.type)
        if suffix and not base.endswith(suffix):
            base += f"_{suffix}"
        assert spec.prometheus_name == base + ("_total" if spec.type == "counter" else "")
    spec = MetricSpec(name="x_ratio", type="gauge", labels=(), unit="1", help="", source="events")
    assert spec.prometheus_name == "sage_resilience_x_ratio"
