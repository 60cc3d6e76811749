"""The Prometheus listener, scraped over real HTTP after driving real policies."""

from __future__ import annotations

import re
import threading
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from sage_resilience.core import (
    BreakerOutcome,
    BreakerStateChanged,
    CallRejected,
    CircuitBreaker,
    Event,
    FakeClock,
    Registry,
)
from sage_resilience.integrations import METRICS, MetricsServer, PrometheusListener, serve_metrics
from sage_resilience.integrations import prometheus as prometheus_module
from support.telemetry import Scenario, drive, parse, scrape, value


@dataclass
class Served:
    listener: PrometheusListener
    server: MetricsServer

    def samples(self) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
        return parse(scrape(self.server.url))


@pytest.fixture
def served(registry: Registry) -> Iterator[Served]:
    """A listener watching the test's registry, served on a free loopback port."""
    listener = PrometheusListener(watch=[registry])
    with serve_metrics(0, metrics=listener) as server:
        yield Served(listener, server)


def test_counters_count_the_events_of_real_policies(served: Served, scenario: Scenario) -> None:
    """Calls by outcome, rejections by kind and reason, retries, give-ups, fallbacks add up."""
    drive(scenario)
    s = served.samples()
    calls = "sage_resilience_calls_total"
    assert value(s, calls, policy="db", kind="circuit_breaker", outcome="success") == 2
    assert value(s, calls, policy="db", kind="circuit_breaker", outcome="failure") == 2
    assert value(s, calls, policy="embed", kind="retry", outcome="success") == 1
    assert value(s, calls, policy="embed", kind="retry", outcome="failure") == 2
    rejections = "sage_resilience_rejections_total"
    assert value(s, rejections, policy="db", kind="circuit_breaker", reason="breaker_open") == 1
    assert (
        value(s, rejections, policy="embed_rate", kind="rate_limiter", reason="rate_limited") == 1
    )
    assert value(s, rejections, policy="pool", kind="bulkhead", reason="bulkhead_full") == 1
    assert value(s, "sage_resilience_retries_total", policy="embed") == 2
    give_ups = "sage_resilience_retry_give_ups_total"
    assert value(s, give_ups, policy="embed", reason="attempts_exhausted") == 1
    assert value(s, give_ups, policy="embed", reason="not_retryable") == 1
    assert value(s, "sage_resilience_fallbacks_total", policy="search") == 1
    transitions = s["sage_resilience_breaker_transitions_total"]
    assert {dict(k)["state"]: v for k, v in transitions.items()} == {
        "open": 1,
        "half_open": 1,
        "closed": 1,
    }


def test_latency_histogram_buckets_breaker_durations(served: Served, scenario: Scenario) -> None:
    """Two 30 ms successes land in le=0.05 (not 0.025), two 2 s failures in le=2.5 (not 1)."""
    drive(scenario)
    s = served.samples()
    bucket = "sage_resilience_call_duration_seconds_bucket"
    assert value(s, bucket, policy="db", outcome="success", le="0.025") == 0
    assert value(s, bucket, policy="db", outcome="success", le="0.05") == 2
    assert value(s, bucket, policy="db", outcome="failure", le="1.0") == 0
    assert value(s, bucket, policy="db", outcome="failure", le="2.5") == 2
    assert value(s, bucket, policy="db", outcome="failure", le="+Inf") == 2
    total = value(s, "sage_resilience_call_duration_seconds_sum", policy="db", outcome="failure")
    assert total == pytest.approx(4.0)


def test_limiter_tokens_are_read_at_scrape_time(served: Served, scenario: Scenario) -> None:
    """Tokens refill between scrapes with no event at all: the gauge follows the clock."""
    limiter = scenario.limiter
    assert limiter.try_acquire(2)
    assert value(served.samples(), "sage_resilience_rate_limiter_tokens", policy="embed_rate") == 0
    scenario.clock.advance(0.2)
    tokens = value(served.samples(), "sage_resilience_rate_limiter_tokens", policy="embed_rate")
    assert tokens == pytest.approx(1.0)
    s = served.samples()
    assert value(s, "sage_resilience_rate_limiter_rate_per_second", policy="embed_rate") == 5
    assert value(s, "sage_resilience_rate_limiter_burst", policy="embed_rate") == 2
    assert value(s, "sage_resilience_admitted_total", policy="embed_rate", kind="rate_limiter") == 1


def test_bulkhead_in_use_is_read_at_scrape_time(served: Served, scenario: Scenario) -> None:
    """in_use follows acquire and release (which emit nothing); the limit follows set_limit."""
    bulkhead = scenario.bulkhead
    assert value(served.samples(), "sage_resilience_bulkhead_in_use", policy="pool") == 0
    assert bulkhead.try_acquire()
    s = served.samples()
    assert value(s, "sage_resilience_bulkhead_in_use", policy="pool") == 1
    assert value(s, "sage_resilience_bulkhead_limit", policy="pool") == 1
    bulkhead.release()
    bulkhead.set_limit(4)
    s = served.samples()
    assert value(s, "sage_resilience_bulkhead_in_use", policy="pool") == 0
    assert value(s, "sage_resilience_bulkhead_limit", policy="pool") == 4
    assert value(s, "sage_resilience_setting", policy="pool", setting="max_concurrent") == 4


def _state(samples: dict[str, dict[frozenset[tuple[str, str]], float]], policy: str) -> str:
    """The one state whose breaker_state sample is 1 (and check the other two are 0)."""
    states = {
        dict(k)["state"]: v
        for k, v in samples["sage_resilience_breaker_state"].items()
        if dict(k)["policy"] == policy
    }
    assert sorted(states.values()) == [0, 0, 1]
    return next(state for state, v in states.items() if v == 1)


def test_breaker_state_is_live_for_watched_breakers(served: Served, scenario: Scenario) -> None:
    """An open breaker whose recovery timeout elapsed is reported half-open at the next scrape."""
    breaker = scenario.breaker
    assert _state(served.samples(), "db") == "closed"
    breaker.force_open()
    assert _state(served.samples(), "db") == "open"
    breaker.reset()
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_broken)
    assert _state(served.samples(), "db") == "open"
    scenario.clock.advance(10.0)
    assert _state(served.samples(), "db") == "half_open"


def test_unwatched_breaker_state_comes_from_its_events(served: Served, clock: FakeClock) -> None:
    """A breaker the listener only hears (add_listener) shows the state of its last transition."""
    breaker = CircuitBreaker("side", failure_threshold=1, recovery_timeout=5.0, clock=clock)
    breaker.add_listener(served.listener)
    assert "side" not in str(served.samples().get("sage_resilience_breaker_state", {}))
    with pytest.raises(ConnectionError):
        breaker.call(_broken)
    assert _state(served.samples(), "side") == "open"
    s = served.samples()
    assert not any(
        dict(k)["policy"] == "side" for k in s.get("sage_resilience_breaker_failure_ratio", {})
    )


def test_breaker_failure_ratio_gauge(served: Served, scenario: Scenario) -> None:
    """The failure-ratio gauge is the breaker's window failure rate."""
    scenario.breaker.call(lambda: 1)
    with pytest.raises(ConnectionError):
        scenario.breaker.call(_broken)
    ratio = value(served.samples(), "sage_resilience_breaker_failure_ratio", policy="db")
    assert ratio == pytest.approx(0.5)


def test_setting_gauge_exports_every_setting_changed(served: Served, scenario: Scenario) -> None:
    """Each SettingChanged (limiter rate, bulkhead limit, hedge delay) sets the setting gauge."""
    drive(scenario)
    s = served.samples()
    assert value(s, "sage_resilience_setting", policy="embed_rate", setting="rate") == 3
    assert value(s, "sage_resilience_setting", policy="pool", setting="max_concurrent") == 2
    assert value(s, "sage_resilience_setting", policy="hedged", setting="hedge_delay") == 0.1
    scenario.limiter.set_rate(7.5)
    s = served.samples()
    assert value(s, "sage_resilience_setting", policy="embed_rate", setting="rate") == 7.5
    assert value(s, "sage_resilience_rate_limiter_rate_per_second", policy="embed_rate") == 7.5


def test_a_registry_watched_before_its_policies_exports_them(clock: FakeClock) -> None:
    """Policies registered after ``watch`` are counted and read like the ones before."""
    registry = Registry("later")
    listener = PrometheusListener()
    listener.watch(registry)
    breaker = registry.get_or_create("late", clock=clock)
    breaker.call(lambda: 1)
    with serve_metrics(0, metrics=listener) as server:
        s = parse(scrape(server.url))
    assert (
        value(
            s,
            "sage_resilience_calls_total",
            policy="late",
            kind="circuit_breaker",
            outcome="success",
        )
        == 1
    )
    assert _state(s, "late") == "closed"


def test_unwatch_stops_counting_and_reading(served: Served, scenario: Scenario) -> None:
    """After unwatch, the registry's policies are neither counted nor read any more."""
    scenario.breaker.call(lambda: 1)
    served.listener.unwatch(scenario.registry)
    scenario.breaker.call(lambda: 1)
    s = served.samples()
    calls = "sage_resilience_calls_total"
    assert value(s, calls, policy="db", kind="circuit_breaker", outcome="success") == 1
    assert s.get("sage_resilience_rate_limiter_tokens", {}) == {}
    assert scenario.breaker.listeners == ()


def test_exposed_names_are_exactly_the_documented_metrics(
    served: Served, scenario: Scenario
) -> None:
    """After every event kind, the scrape holds each METRICS name and no other of ours."""
    drive(scenario)
    exposed = {
        name
        for name in served.samples()
        if name.startswith("sage_resilience_") and not name.endswith("_created")
    }
    expected: set[str] = set()
    for spec in METRICS:
        if spec.type == "histogram":
            expected |= {f"{spec.prometheus_name}_{s}" for s in ("bucket", "count", "sum")}
        else:
            expected.add(spec.prometheus_name)
    assert exposed == expected


def test_module_docstring_table_lists_every_metric() -> None:
    """The metric table in prometheus.py's docstring names each metric with its type and labels."""
    doc = prometheus_module.__doc__
    assert doc is not None
    rows = re.findall(
        r"^(sage_resilience_\w+)\s+(counter|gauge|histogram)\s+([a-z, ]+?)\s{2}", doc, re.M
    )
    table = {
        name: (type_, tuple(label.strip() for label in labels.split(",")))
        for name, type_, labels in rows
    }
    assert table == {spec.prometheus_name: (spec.type, spec.labels) for spec in METRICS}


def test_listener_uses_its_own_collector_registry() -> None:
    """Two listeners register the same names without colliding, and none in the global one."""
    first, second = PrometheusListener(), PrometheusListener()
    assert first.collector_registry is not second.collector_registry
    assert REGISTRY.get_sample_value("sage_resilience_retries_total", {"policy": "x"}) is None
    global_names = {m.name for m in REGISTRY.collect()}
    assert not any(name.startswith("sage_resilience") for name in global_names)


def test_given_collector_registry_is_used_and_served() -> None:
    """A CollectorRegistry passed in holds the metrics, beside the application's own."""
    shared = CollectorRegistry()
    app = Counter("app_requests", "the application's", registry=shared)
    app.inc()
    listener = PrometheusListener(collector_registry=shared)
    listener(
        CallRejected(
            policy="p", time=0.0, kind="bulkhead", reason="bulkhead_full", retry_after=None
        )
    )
    with serve_metrics(0, metrics=shared) as server:
        s = parse(scrape(server.url))
    assert value(s, "app_requests_total") == 1
    assert (
        value(
            s,
            "sage_resilience_rejections_total",
            policy="p",
            kind="bulkhead",
            reason="bulkhead_full",
        )
        == 1
    )


def test_event_subclasses_count_as_their_base_and_unknown_events_are_ignored() -> None:
    """A subclass of CallRejected is counted as one; an unknown Event type changes nothing."""

    class Shed(CallRejected):
        pass

    class Custom(Event):
        pass

    listener = PrometheusListener()
    listener(Shed(policy="p", time=0.0, kind="shedder", reason="shed", retry_after=None))
    listener(Custom(policy="p", time=0.0))
    registry = listener.collector_registry
    labels = {"policy": "p", "kind": "shedder", "reason": "shed"}
    assert registry.get_sample_value("sage_resilience_rejections_total", labels) == 1


def test_concurrent_calls_are_all_counted(registry: Registry, clock: FakeClock) -> None:
    """Eight threads through one breaker: the counter and the histogram count every call."""
    listener = PrometheusListener(watch=[registry])
    breaker = registry.get_or_create("shared", clock=clock)
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(2000):
            breaker.call(lambda: 1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registry_ = listener.collector_registry
    labels = {"policy": "shared", "kind": "circuit_breaker", "outcome": "success"}
    assert registry_.get_sample_value("sage_resilience_calls_total", labels) == 16000
    count = registry_.get_sample_value(
        "sage_resilience_call_duration_seconds_count", {"policy": "shared", "outcome": "success"}
    )
    assert count == 16000


def test_transition_reasons_are_labels(served: Served, scenario: Scenario) -> None:
    """A forced open and a reset count as transitions with reasons 'forced' and 'reset'."""
    scenario.breaker.force_open()
    scenario.breaker.reset()
    s = served.samples()
    transitions = "sage_resilience_breaker_transitions_total"
    assert value(s, transitions, policy="db", state="open", reason="forced") == 1
    assert value(s, transitions, policy="db", state="closed", reason="reset") == 1


def test_listener_state_events_can_come_from_anywhere() -> None:
    """A BreakerStateChanged handed straight to the listener sets that breaker's state gauge."""
    listener = PrometheusListener()
    listener(
        BreakerStateChanged(policy="b", time=0.0, old_state="closed", new_state="open", reason="x")
    )
    get = listener.collector_registry.get_sample_value
    assert get("sage_resilience_breaker_state", {"policy": "b", "state": "open"}) == 1
    assert get("sage_resilience_breaker_state", {"policy": "b", "state": "closed"}) == 0


def test_watch_refuses_what_is_not_a_policy_or_registry() -> None:
    """watch() of an object without add_listener is a TypeError."""
    with pytest.raises(TypeError, match="Registry or a policy"):
        PrometheusListener().watch(object())


# -- serve_metrics ------------------------------------------------------------------------------


def test_serve_metrics_binds_loopback_and_reports_the_chosen_port() -> None:
    """Port 0 picks a free port, reported back; the default address is 127.0.0.1."""
    listener = PrometheusListener()
    with serve_metrics(0, metrics=listener) as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert "sage_resilience_calls_total" in scrape(server.url)


def test_close_stops_serving_and_frees_the_port() -> None:
    """After close() the endpoint refuses connections and the same port can be bound again."""
    server = serve_metrics(0, metrics=PrometheusListener())
    port = server.port
    server.close()
    server.close()  # idempotent
    with pytest.raises(urllib.error.URLError):
        scrape(f"http://127.0.0.1:{port}/metrics")
    with serve_metrics(port, metrics=PrometheusListener()) as again:
        assert again.port == port


@pytest.mark.parametrize("port", [-1, 65536, 1.5, True, "9464"])
def test_serve_metrics_rejects_bad_ports(port: object) -> None:
    """A port outside [0, 65535], or not an int, is a ValueError before anything binds."""
    with pytest.raises(ValueError, match="port"):
        serve_metrics(port)  # type: ignore[arg-type]


def _broken() -> int:
    raise ConnectionError("down")


def test_serve_metrics_on_ipv6_loopback() -> None:
    """An IPv6 address is served too, and the URL brackets it."""
    try:
        server = serve_metrics(0, "::1", metrics=PrometheusListener())
    except OSError as exc:  # pragma: no cover - hosts without IPv6
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with server:
        assert server.url == f"http://[::1]:{server.port}/metrics"
        assert "sage_resilience_calls_total" in scrape(server.url)


def test_custom_buckets_shape_the_histogram() -> None:
    """Given bounds (+Inf implied) are the histogram's le values; a duration on a bound counts."""
    listener = PrometheusListener(buckets=[0.1, 1.0])
    for duration in (0.1, 0.5, 3.0):
        listener(
            BreakerOutcome(
                policy="p",
                time=0.0,
                outcome="success",
                duration=duration,
                slow=False,
                exception=None,
            )
        )
    get = listener.collector_registry.get_sample_value
    name = "sage_resilience_call_duration_seconds_bucket"
    counts = [
        get(name, {"policy": "p", "outcome": "success", "le": le}) for le in ("0.1", "1.0", "+Inf")
    ]
    assert counts == [1, 2, 3]
    assert get(name, {"policy": "p", "outcome": "success", "le": "0.25"}) is None


@pytest.mark.parametrize("buckets", [[], [1.0, 0.5], [0.5, 0.5], [float("nan")]])
def test_bad_buckets_are_refused(buckets: list[float]) -> None:
    """Empty, unsorted, repeated or non-finite bounds are a ValueError."""
    with pytest.raises(ValueError, match="buckets"):
        PrometheusListener(buckets=buckets)
