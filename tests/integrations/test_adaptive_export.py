"""The adaptive controllers' values reach Prometheus through the existing listener."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client")

from sage_resilience.adaptive import AdaptivePolicy, Decision
from sage_resilience.core import Event, FakeClock, Registry, SettingChanged
from sage_resilience.integrations import PrometheusListener, serve_metrics
from support.telemetry import parse, scrape, value


def test_decisions_are_setting_changes() -> None:
    """A controller's Decision is a SettingChanged, so every setting exporter sees it."""
    assert issubclass(Decision, SettingChanged)


def test_controller_values_are_exported_as_setting_gauges() -> None:
    """Driving an adaptive policy until its controllers decide puts their values on the
    ``sage_resilience_setting`` gauge of a real scrape, with the controllers' decisions."""
    clock = FakeClock()
    registry = Registry("adaptive")
    policy = AdaptivePolicy("db", clock=clock)
    policy.register(registry)
    listener = PrometheusListener(watch=[registry])
    events: list[Event] = []
    policy.add_listener(listener)
    policy.add_listener(events.append)

    def work() -> int:
        clock.advance(0.02)  # each call takes 20 ms of fake time
        return 1

    for _ in range(2000):
        policy.call(work)
    decisions = [e for e in events if isinstance(e, Decision)]
    assert decisions, "the controllers made no decision in 40 s of calls"
    with serve_metrics(0, metrics=listener) as server:
        samples = parse(scrape(server.url))
    latest = {(d.policy, d.setting): d.new for d in decisions}
    assert any(policy == "db" for policy, _setting in latest)  # the policy's own controllers
    for (policy_name, setting), new in latest.items():
        exported = value(samples, "sage_resilience_setting", policy=policy_name, setting=setting)
        assert exported == pytest.approx(new)
