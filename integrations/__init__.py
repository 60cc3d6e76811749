"""sage_resilience.integrations: adapters to real systems and telemetry backends.

Telemetry is events (:mod:`sage_resilience.core.events`); these listeners turn them into logs and
metrics:

* :class:`LoggingListener`: stdlib :mod:`logging`, structured ``extra`` fields, quiet by default;
* :class:`PrometheusListener` and :func:`serve_metrics` (extra ``prometheus``): counters, a
  latency histogram and scrape-time gauges (the metric table is in
  :mod:`sage_resilience.integrations.prometheus`);
* :class:`OpenTelemetryListener` (extra ``otel``): the same instruments on the OpenTelemetry API.

The optional ones are imported on first use, so this package imports without the extras; using
one without its extra raises ``ModuleNotFoundError`` naming the extra to install. A Grafana
dashboard and Prometheus alert rules over the exported names ship in ``dashboards/`` (read them
with ``importlib.resources.files("sage_resilience.integrations") / "dashboards"``).
"""

from __future__ import annotations

import importlib
import typing

from ._metrics import METRICS, MetricSpec
from .logs import LoggingListener

if typing.TYPE_CHECKING:
    from .otel import OpenTelemetryListener
    from .prometheus import MetricsServer, PrometheusListener, serve_metrics

__all__ = [
    "METRICS",
    "LoggingListener",
    "MetricSpec",
    "MetricsServer",
    "OpenTelemetryListener",
    "PrometheusListener",
    "serve_metrics",
]

_LAZY = {
    "MetricsServer": ".prometheus",
    "PrometheusListener": ".prometheus",
    "serve_metrics": ".prometheus",
    "OpenTelemetryListener": ".otel",
}


def __getattr__(name: str) -> typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
