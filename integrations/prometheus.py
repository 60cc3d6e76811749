"""Prometheus metrics from policy events and live policies (extra ``prometheus``).

:class:`PrometheusListener` is a listener: attach it to policies, or ``watch`` a registry (every
policy it holds now or later), and it counts their events into prometheus-client counters and a
latency histogram. Values that change all the time without an event (a limiter's tokens, a
bulkhead's calls in flight) are read from the watched policies at scrape time by a collector, so
they cost nothing between scrapes. Metrics go to the listener's own ``CollectorRegistry`` unless
you pass one (pass ``prometheus_client.REGISTRY`` to join the process-wide one).
:func:`serve_metrics` exposes them over HTTP::

    metrics = PrometheusListener()
    metrics.watch(breaker_manager)  # every named breaker, now and later
    metrics.watch(limiter)  # and a policy of your own
    server = serve_metrics(9464)  # http://127.0.0.1:9464/metrics

Metrics ("live": read from the watched policies at each scrape; a breaker's state falls back to the
last transition heard when the breaker is not watched):

============================================  =========  =====================  ====================
metric                                        type       labels                 meaning
============================================  =========  =====================  ====================
sage_resilience_calls_total                   counter    policy, kind, outcome  calls through a
                                                                                breaker or a retry,
                                                                                by outcome
sage_resilience_rejections_total              counter    policy, kind, reason   calls a policy
                                                                                refused or cut short
sage_resilience_retries_total                 counter    policy                 retries scheduled
sage_resilience_retry_give_ups_total          counter    policy, reason         retried calls that
                                                                                failed
sage_resilience_breaker_transitions_total     counter    policy, state, reason  transitions, by the
                                                                                state entered
sage_resilience_fallbacks_total               counter    policy                 fallback answers
sage_resilience_call_duration_seconds         histogram  policy, outcome        breaker call latency
sage_resilience_breaker_state                 gauge      policy, state          live: 1 on the state
                                                                                it is in, else 0
sage_resilience_breaker_failure_ratio         gauge      policy                 live: failure ratio
                                                                                in the window
sage_resilience_setting                       gauge      policy, setting        last value set at
                                                                                runtime
sage_resilience_rate_limiter_rate_per_second  gauge      policy                 live: refill rate,
                                                                                tokens
sage_resilience_rate_limiter_burst            gauge      policy                 live: capacity,
                                                                                tokens
sage_resilience_rate_limiter_tokens           gauge      policy                 live: tokens
                                                                                available
sage_resilience_bulkhead_limit                gauge      policy                 live: max_concurrent
sage_resilience_bulkhead_in_use               gauge      policy                 live: calls in
                                                                                flight
sage_resilience_waiting_calls                 gauge      policy, kind           live: callers queued
sage_resilience_admitted_total                counter    policy, kind           live: calls a
                                                                                limiter or bulkhead
                                                                                admitted
============================================  =========  =====================  ====================

Label values:

* ``kind``: the policy's family: ``circuit_breaker``, ``retry``, ``rate_limiter``, ``bulkhead``,
  ``timeout``, ``fallback``, ``hedge``.
* ``outcome``: ``success``, ``failure``, ``ignored`` (breaker: neither, e.g. a 4xx-like error) or
  ``aborted`` (retry: cancelled or interrupted, never a failure).
* ``reason`` of a rejection: ``breaker_open``, ``half_open_full``, ``rate_limited``,
  ``bulkhead_full``, ``queue_timeout``, ``attempt_timeout``, ``total_timeout``; of a give-up:
  ``attempts_exhausted``, ``deadline``, ``retry_after_beyond_max_delay``, ``not_retryable``,
  ``aborted``; of a transition: ``consecutive_failures``, ``failure_rate``, ``slow_call_rate``,
  ``recovery_timeout_elapsed``, ``reset``, ... (as the breaker reports it).
* ``state``: ``closed``, ``open``, ``half_open``.
* ``setting``: the :class:`~sage_resilience.core.SettingChanged` setting (``rate``,
  ``max_concurrent``, ``hedge_delay``, and what adaptive controllers retune), in its own unit.

Rate limiters and bulkheads emit no event for an admitted call (that would tax their hot path), so
their admissions (``sage_resilience_admitted_total``) are read from their counters at scrape time:
watch them for the rejection ratio to cover them.

Cost: an attached listener makes a breaker build one :class:`~sage_resilience.core.BreakerOutcome`
per call (and leave its lock-free fast path); the listener then updates a count and a histogram
cell in plain dictionaries under one lock. Scrapes turn them into metric families; with no scrape
nothing else is done.
"""

from __future__ import annotations

import itertools
import math
import socket
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess
    raise ModuleNotFoundError(
        "sage_resilience.integrations.prometheus needs prometheus-client: "
        "pip install 'sage-resilience[prometheus]'",
        name=exc.name,
    ) from exc

from ..core import BreakerOutcome
from ._metrics import DEFAULT_BUCKETS, METRICS, MetricsBase, MetricSpec

__all__ = ["MetricsServer", "PrometheusListener", "serve_metrics"]

_EVENT_COUNTERS = tuple(
    spec for spec in METRICS if spec.type == "counter" and spec.source == "events"
)
_DURATION = next(spec for spec in METRICS if spec.type == "histogram")
_LIVE_SPECS = tuple(spec for spec in METRICS if spec.source == "live" or spec.name == "setting")


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    bounds = tuple(float(b) for b in buckets if b != math.inf)
    if not bounds or any(not math.isfinite(b) for b in bounds):
        raise ValueError(f"buckets must be finite numbers (+Inf is implied), got {buckets!r}")
    if any(b >= c for b, c in itertools.pairwise(bounds)):
        raise ValueError(f"buckets must increase strictly, got {buckets!r}")
    return bounds


class PrometheusListener(MetricsBase):
    """Counts policy events for Prometheus; reads live values at scrape time.

    Args:
        collector_registry: where the metrics are registered (default: a new
            ``CollectorRegistry`` of this listener's own).
        buckets: the latency histogram's upper bounds in seconds (default
            :data:`~sage_resilience.integrations._metrics.DEFAULT_BUCKETS`, 1 ms to 60 s;
            ``+Inf`` is implied).
        watch: registries or policies to :meth:`watch` at once.

    A listener is a plain callable: ``policy.add_listener(listener)`` counts that policy's
    events; :meth:`watch` also exports its live values. Counts live in the listener (plain
    dictionaries under one lock, about a third of the cost of prometheus-client's own counter and
    histogram objects per event) and one collector turns them into metric families per scrape.
    """

    def __init__(
        self,
        *,
        collector_registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        watch: Iterable[Any] = (),
    ) -> None:
        super().__init__()
        self.buckets = _bounds(buckets)
        # Per (policy, outcome): [count, sum, one count per bucket, then the +Inf bucket].
        self._durations: dict[tuple[str, str], list[float]] = {}
        registry = CollectorRegistry() if collector_registry is None else collector_registry
        self.collector_registry = registry
        registry.register(_Collector(self))
        for source in watch:
            self.watch(source)

    def __repr__(self) -> str:
        return f"PrometheusListener(sources={len(self._sources)})"

    def _on_outcome(self, event: BreakerOutcome) -> None:
        # The hot one (an event per call): both updates under a single lock acquisition.
        duration = event.duration
        labels = (event.policy, "circuit_breaker", event.outcome)
        key = (event.policy, event.outcome)
        index = 2 + bisect_left(self.buckets, duration)
        calls = self._calls
        with self._lock:
            calls[labels] = calls.get(labels, 0) + 1
            cell = self._durations.get(key)
            if cell is None:
                cell = self._durations[key] = [0.0] * (len(self.buckets) + 3)
            cell[0] += 1
            cell[1] += duration
            cell[index] += 1

    def collect_durations(self) -> dict[tuple[str, str], list[float]]:
        """A copy of the latency histogram: per (policy, outcome), ``[count, sum, buckets...]``
        with one (non-cumulative) count per bound and a last one for ``+Inf``."""
        with self._lock:
            return {key: list(cell) for key, cell in self._durations.items()}


def _family(spec: MetricSpec) -> CounterMetricFamily | GaugeMetricFamily:
    if spec.type == "counter":
        return CounterMetricFamily(spec.prometheus_name, spec.help, labels=spec.labels)
    return GaugeMetricFamily(spec.prometheus_name, spec.help, labels=spec.labels)


def _histogram(spec: MetricSpec) -> HistogramMetricFamily:
    return HistogramMetricFamily(spec.prometheus_name, spec.help, labels=spec.labels)


class _Collector:
    """Turns the listener's counts and the watched policies' live values into metric families
    when the registry is scraped."""

    def __init__(self, listener: PrometheusListener) -> None:
        self._listener = listener

    def describe(self) -> Iterable[Metric]:
        # Declares the names without reading any policy (else registering would collect).
        return [_histogram(s) if s.type == "histogram" else _family(s) for s in METRICS]

    def collect(self) -> Iterable[Metric]:
        listener = self._listener
        for spec in _EVENT_COUNTERS:
            counter = _family(spec)
            for labels, count in listener.collect_counts(spec.name).items():
                counter.add_metric(labels, count)
            yield counter
        histogram = _histogram(_DURATION)
        bounds = [*(repr(b) for b in listener.buckets), "+Inf"]  # as prometheus-client writes le
        for labels, cell in listener.collect_durations().items():
            cumulative = itertools.accumulate(cell[2:])
            histogram.add_metric(labels, list(zip(bounds, cumulative, strict=True)), cell[1])
        yield histogram
        values = listener.collect_live()
        for spec in _LIVE_SPECS:
            family = _family(spec)
            for labels, value in values[spec.name].items():
                family.add_metric(labels, value)
            yield family


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint (a daemon thread); ``close()`` stops it.

    Attributes:
        host: the address it listens on.
        port: the port it listens on (the one chosen by the system when asked for port 0).
    """

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = server.server_address[0]
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        """The URL to scrape."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricsServer(url={self.url!r})"


def serve_metrics(
    port: int,
    addr: str = "127.0.0.1",
    *,
    metrics: PrometheusListener | CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve Prometheus metrics over HTTP on ``addr:port`` from a daemon thread.

    Args:
        port: the port (0: any free port; read it back from :attr:`MetricsServer.port`).
        addr: the address to bind; the loopback by default, so nothing is exposed by accident.
        metrics: a :class:`PrometheusListener` (its registry is served), a ``CollectorRegistry``,
            or ``None`` for prometheus-client's process-wide ``REGISTRY``.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
    if isinstance(metrics, PrometheusListener):
        registry = metrics.collector_registry
    elif metrics is None:
        registry = REGISTRY
    else:
        registry = metrics
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = _IPv6Server if family == socket.AF_INET6 else ThreadingWSGIServer
    server = make_server(
        addr, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler
    )
    # A short poll so close() returns within 50 ms (the stdlib default of 0.5 s is slow to stop).
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"sage-resilience-metrics:{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return MetricsServer(server, thread)


class _IPv6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """No access log line on stderr for every scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        return None
