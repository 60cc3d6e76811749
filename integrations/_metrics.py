"""What the metric listeners export, and the state both backends share.

The Prometheus and OpenTelemetry listeners export the same instruments, described once here in
:data:`METRICS`. Each backend counts events with its own counters and histogram; what is not an
event (a limiter's tokens, a bulkhead's calls in flight, a breaker's state right now) is read from
the live policies when the backend collects (a scrape, an export), through :class:`MetricsBase`.

Names follow the Prometheus conventions (``sage_resilience_`` prefix, ``_total`` counters, base
units). The OpenTelemetry names are the same without the unit and ``_total`` suffixes and with the
prefix dotted (``sage_resilience.calls``, unit ``{call}``), so an OpenTelemetry-to-Prometheus
exporter, which appends the unit and ``_total`` as the compatibility specification says, yields
the Prometheus names again and the dashboard and alert rules work on either path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..core import (
    BreakerOutcome,
    BreakerStateChanged,
    Bulkhead,
    CallRejected,
    CircuitBreaker,
    CircuitState,
    Event,
    FallbackUsed,
    RateLimiter,
    Registry,
    RetryAttempted,
    RetryGaveUp,
    RetrySucceeded,
    SettingChanged,
)

__all__ = [
    "BREAKER_STATES",
    "DEFAULT_BUCKETS",
    "METRICS",
    "PREFIX",
    "MetricSpec",
    "MetricsBase",
    "retry_outcome",
]

PREFIX: Final = "sage_resilience"

DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Latency histogram bounds in seconds: 1 ms (a cached lookup) to 60 s (a slow embedding)."""

BREAKER_STATES: Final[tuple[str, ...]] = tuple(s.value for s in CircuitState)

MetricType = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported instrument.

    Attributes:
        name: the base name, without prefix or suffixes (``"calls"``).
        type: ``"counter"``, ``"gauge"`` or ``"histogram"``.
        labels: label (attribute) names, in order.
        unit: the OpenTelemetry unit (``"s"``, ``"1"``, or an annotation such as ``"{call}"``).
        help: one line saying what it measures.
        source: ``"events"`` (counted from events) or ``"live"`` (read from the watched policies
            at collection time; breaker states fall back to the last event for unwatched ones).
    """

    name: str
    type: MetricType
    labels: tuple[str, ...]
    unit: str
    help: str
    source: Literal["events", "live"]

    @property
    def prometheus_name(self) -> str:
        """The exposed name: the OpenTelemetry name as the OpenTelemetry-to-Prometheus
        compatibility rules translate it (dots to underscores, the unit's suffix, ``_total``)."""
        name = f"{PREFIX}_{self.name}"
        suffix = _unit_suffix(self.unit, self.type)
        if suffix and not name.endswith(f"_{suffix}"):
            name += f"_{suffix}"
        if self.type == "counter":
            name += "_total"
        return name

    @property
    def otel_name(self) -> str:
        """The OpenTelemetry instrument name."""
        return f"{PREFIX}.{self.name}"


_UNIT_WORDS: Final = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}
_PER_WORDS: Final = {"s": "second", "min": "minute", "h": "hour"}


def _unit_suffix(unit: str, type_: MetricType) -> str:
    """The Prometheus suffix of an OpenTelemetry unit: annotations (``{call}``) say nothing,
    ``s`` is ``seconds``, ``X/s`` is ``X_per_second``, and a gauge in ``1`` is a ``ratio``."""
    main, _, per = unit.partition("/")
    if main.startswith("{"):
        main = ""
    words = [_UNIT_WORDS.get(main, main)] if main and main != "1" else []
    if per:
        words.append(f"per_{_PER_WORDS.get(per, per)}")
    if unit == "1" and type_ == "gauge":
        words.append("ratio")
    return "_".join(words)


def _spec(
    name: str,
    type_: MetricType,
    labels: tuple[str, ...],
    unit: str,
    help_: str,
    *,
    source: Literal["events", "live"] = "events",
) -> MetricSpec:
    return MetricSpec(name=name, type=type_, labels=labels, unit=unit, help=help_, source=source)


METRICS: Final[tuple[MetricSpec, ...]] = (
    _spec(
        "calls",
        "counter",
        ("policy", "kind", "outcome"),
        "{call}",
        "Calls that ran through a circuit breaker (success, failure, ignored) or a retry "
        "(success, failure, aborted).",
    ),
    _spec(
        "rejections",
        "counter",
        ("policy", "kind", "reason"),
        "{call}",
        "Calls a policy refused or cut short (breaker open, rate limited, bulkhead full, "
        "timeout), by reason.",
    ),
    _spec(
        "retries",
        "counter",
        ("policy",),
        "{retry}",
        "Retries scheduled: an attempt failed and another one follows.",
    ),
    _spec(
        "retry_give_ups",
        "counter",
        ("policy", "reason"),
        "{call}",
        "Retried calls that ended in failure, by reason (attempts_exhausted, deadline, "
        "not_retryable, aborted, ...).",
    ),
    _spec(
        "breaker_transitions",
        "counter",
        ("policy", "state", "reason"),
        "{transition}",
        "Circuit breaker transitions, by the state entered and why.",
    ),
    _spec(
        "fallbacks",
        "counter",
        ("policy",),
        "{call}",
        "Calls a fallback answered in place of an error.",
    ),
    _spec(
        "call_duration",
        "histogram",
        ("policy", "outcome"),
        "s",
        "Duration of the calls a circuit breaker recorded, by outcome.",
    ),
    _spec(
        "breaker_state",
        "gauge",
        ("policy", "state"),
        "{state}",
        "1 for the state each circuit breaker is in (closed, open, half_open), 0 for the others.",
        source="live",
    ),
    _spec(
        "breaker_failure_ratio",
        "gauge",
        ("policy",),
        "1",
        "Failure ratio over each watched circuit breaker's sliding window.",
        source="live",
    ),
    _spec(
        "setting",
        "gauge",
        ("policy", "setting"),
        "",
        "Last value of each setting changed at runtime (rate, max_concurrent, hedge_delay, "
        "adaptive controllers' settings), in the setting's own unit.",
    ),
    _spec(
        "rate_limiter_rate",
        "gauge",
        ("policy",),
        "{token}/s",
        "Token refill rate of each watched rate limiter, tokens per second.",
        source="live",
    ),
    _spec(
        "rate_limiter_burst",
        "gauge",
        ("policy",),
        "{token}",
        "Bucket capacity of each watched rate limiter, tokens.",
        source="live",
    ),
    _spec(
        "rate_limiter_tokens",
        "gauge",
        ("policy",),
        "{token}",
        "Tokens available now in each watched rate limiter.",
        source="live",
    ),
    _spec(
        "bulkhead_limit",
        "gauge",
        ("policy",),
        "{call}",
        "Concurrent calls allowed by each watched bulkhead (max_concurrent).",
        source="live",
    ),
    _spec(
        "bulkhead_in_use",
        "gauge",
        ("policy",),
        "{call}",
        "Calls in flight in each watched bulkhead.",
        source="live",
    ),
    _spec(
        "waiting_calls",
        "gauge",
        ("policy", "kind"),
        "{call}",
        "Callers queued in each watched rate limiter or bulkhead.",
        source="live",
    ),
    _spec(
        "admitted",
        "counter",
        ("policy", "kind"),
        "{call}",
        "Calls admitted by each watched rate limiter or bulkhead (they emit no event per call).",
        source="live",
    ),
)
"""Every exported instrument, in the order of the documentation table."""

Samples = dict[tuple[str, ...], float]


def retry_outcome(reason: str) -> str:
    """The ``outcome`` label of a retried call that stopped for ``reason``."""
    return "aborted" if reason == "aborted" else "failure"


class MetricsBase:
    """What the backends share: event counting, the watched sources, the live values.

    Events are counted here, into plain dictionaries under one lock (an uncontended lock and a
    dictionary update cost a fraction of a prometheus-client child's ``inc()`` or an
    OpenTelemetry SDK ``add()``, which matters because a breaker emits an outcome per call); the
    backends read the counts when they collect. Breaker states and runtime settings heard from
    events are kept too. A backend extends :meth:`_on_outcome` to record call durations.

    ``watch(source)`` attaches the listener to a :class:`~sage_resilience.core.Registry` (every
    policy it holds now or later) or to one policy, and makes its live values (tokens, calls in
    flight, state) part of every collection.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: tuple[Any, ...] = ()
        self._breaker_states: dict[str, str] = {}
        self._settings: Samples = {}
        self._counts: dict[str, dict[tuple[str, ...], int]] = {
            spec.name: {} for spec in METRICS if spec.type == "counter" and spec.source == "events"
        }
        self._calls = self._counts["calls"]
        self._rejections = self._counts["rejections"]
        self._retries = self._counts["retries"]
        self._give_ups = self._counts["retry_give_ups"]
        self._transitions = self._counts["breaker_transitions"]
        self._fallbacks = self._counts["fallbacks"]
        self._handlers: dict[type, Callable[[Any], None]] = {
            BreakerOutcome: self._on_outcome,
            CallRejected: self._on_rejected,
            BreakerStateChanged: self._on_transition,
            RetryAttempted: self._on_retry,
            RetrySucceeded: self._on_retry_succeeded,
            RetryGaveUp: self._on_give_up,
            SettingChanged: self._on_setting,
            FallbackUsed: self._on_fallback,
        }

    # -- the listener --------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """Count one event (event types it does not know are ignored)."""
        handler = self._handlers.get(type(event))
        if handler is None:
            handler = self._resolve(type(event))
        handler(event)

    def _resolve(self, cls: type) -> Callable[[Any], None]:
        """The handler of an event subclass (its nearest known base), cached."""
        for base in cls.__mro__[1:]:
            handler = self._handlers.get(base)
            if handler is not None:
                break
        else:
            handler = _ignore
        self._handlers[cls] = handler
        return handler

    def _inc(self, counts: dict[tuple[str, ...], int], labels: tuple[str, ...]) -> None:
        with self._lock:
            counts[labels] = counts.get(labels, 0) + 1

    def _on_outcome(self, event: BreakerOutcome) -> None:
        """Counts the call; each backend extends it to record the duration in its histogram."""
        self._inc(self._calls, (event.policy, "circuit_breaker", event.outcome))

    def _on_rejected(self, event: CallRejected) -> None:
        self._inc(self._rejections, (event.policy, event.kind, event.reason))

    def _on_transition(self, event: BreakerStateChanged) -> None:
        with self._lock:
            self._breaker_states[event.policy] = event.new_state
            labels = (event.policy, event.new_state, event.reason)
            self._transitions[labels] = self._transitions.get(labels, 0) + 1

    def _on_retry(self, event: RetryAttempted) -> None:
        self._inc(self._retries, (event.policy,))

    def _on_retry_succeeded(self, event: RetrySucceeded) -> None:
        self._inc(self._calls, (event.policy, "retry", "success"))

    def _on_give_up(self, event: RetryGaveUp) -> None:
        self._inc(self._calls, (event.policy, "retry", retry_outcome(event.reason)))
        self._inc(self._give_ups, (event.policy, event.reason))

    def _on_setting(self, event: SettingChanged) -> None:
        with self._lock:
            self._settings[(event.policy, event.setting)] = event.new

    def _on_fallback(self, event: FallbackUsed) -> None:
        self._inc(self._fallbacks, (event.policy,))

    def collect_counts(self, name: str) -> dict[tuple[str, ...], int]:
        """A copy of the event counter ``name`` (base name): ``{labels: count}``."""
        with self._lock:
            return dict(self._counts[name])

    # -- sources -------------------------------------------------------------------------------

    def watch(self, source: Any) -> None:
        """Listen to ``source`` (a Registry or a policy) and export its live values."""
        add = getattr(source, "add_listener", None)
        if not callable(add):
            raise TypeError(f"can only watch a Registry or a policy, got {source!r}")
        with self._lock:
            if not any(s is source for s in self._sources):
                self._sources = (*self._sources, source)
        add(self)

    def unwatch(self, source: Any) -> None:
        """Stop listening to ``source`` and stop exporting its live values."""
        with self._lock:
            self._sources = tuple(s for s in self._sources if s is not source)
        remove = getattr(source, "remove_listener", None)
        if callable(remove):
            remove(self)

    def _policies(self) -> Iterator[Any]:
        seen: set[int] = set()
        for source in self._sources:
            members = list(source) if isinstance(source, Registry) else [source]
            for policy in members:
                if id(policy) not in seen:
                    seen.add(id(policy))
                    yield policy

    # -- collection ----------------------------------------------------------------------------

    def collect_live(self, names: Collection[str] | None = None) -> dict[str, Samples]:
        """The ``live`` metrics and ``setting`` by base name, as ``{labels: value}``.

        ``names`` limits the work to those metrics (an OpenTelemetry callback asks for one). No
        lock is held while the policies are read: reading an open breaker's state may move it to
        half-open, which emits an event back to this listener.
        """
        wanted = _COLLECTED if names is None else _COLLECTED & set(names)
        out: dict[str, Samples] = {name: {} for name in wanted}
        breakers = not wanted.isdisjoint(_BREAKER_METRICS)
        limiters = not wanted.isdisjoint(_LIMITER_METRICS)
        bulkheads = not wanted.isdisjoint(_BULKHEAD_METRICS)
        scratch: dict[str, Samples] = {name: {} for name in _COLLECTED}
        states: dict[str, str] = {}
        for policy in self._policies():
            if isinstance(policy, CircuitBreaker):
                if breakers:
                    stats = policy.stats()
                    states[policy.name] = stats.state
                    scratch["breaker_failure_ratio"][(policy.name,)] = stats.failure_rate
            elif isinstance(policy, RateLimiter):
                if limiters:
                    lstats = policy.stats()
                    key = (policy.name,)
                    scratch["rate_limiter_rate"][key] = lstats.rate
                    scratch["rate_limiter_burst"][key] = lstats.burst
                    scratch["rate_limiter_tokens"][key] = lstats.tokens
                    scratch["waiting_calls"][(policy.name, "rate_limiter")] = lstats.waiting
                    scratch["admitted"][(policy.name, "rate_limiter")] = lstats.acquired
            elif isinstance(policy, Bulkhead) and bulkheads:
                bstats = policy.stats()
                key = (policy.name,)
                scratch["bulkhead_limit"][key] = bstats.max_concurrent
                scratch["bulkhead_in_use"][key] = bstats.in_use
                scratch["waiting_calls"][(policy.name, "bulkhead")] = bstats.waiting
                scratch["admitted"][(policy.name, "bulkhead")] = bstats.admitted
        with self._lock:
            known = dict(self._breaker_states)
            scratch["setting"] = dict(self._settings)
        known.update(states)
        breaker_state = scratch["breaker_state"]
        for name, current in known.items():
            for state in BREAKER_STATES:
                breaker_state[(name, state)] = 1.0 if state == current else 0.0
        for name in wanted:
            out[name] = scratch[name]
        return out


_COLLECTED: Final = frozenset(
    spec.name for spec in METRICS if spec.source == "live" or spec.name == "setting"
)
_BREAKER_METRICS: Final = frozenset({"breaker_state", "breaker_failure_ratio"})
_LIMITER_METRICS: Final = frozenset(
    {"rate_limiter_rate", "rate_limiter_burst", "rate_limiter_tokens", "waiting_calls", "admitted"}
)
_BULKHEAD_METRICS: Final = frozenset(
    {"bulkhead_limit", "bulkhead_in_use", "waiting_calls", "admitted"}
)


def _ignore(event: Event) -> None:
    return None
