"""The integrations package: lazy optional listeners, importable without the extras."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import sage_resilience.integrations as integrations


def _run_without(blocked: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing the ``blocked`` modules fails."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_package_imports_and_logs_without_the_extras() -> None:
    """With neither prometheus-client nor OpenTelemetry, the package and LoggingListener work."""
    proc = _run_without(
        ["prometheus_client", "opentelemetry", "opentelemetry.metrics"],
        """
        import logging
        import sage_resilience.integrations as i
        from sage_resilience.core import CircuitBreaker
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(state)s")
        b = CircuitBreaker("db", failure_threshold=1, listeners=[i.LoggingListener()])
        try:
            b.call(lambda: 1 / 0)
        except ZeroDivisionError:
            pass
        assert "prometheus_client" not in sys.modules or sys.modules["prometheus_client"] is None
        print("ok")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert "WARNING open" in proc.stderr


@pytest.mark.parametrize(
    ("name", "blocked", "extra"),
    [
        ("PrometheusListener", "prometheus_client", "sage-resilience[prometheus]"),
        ("serve_metrics", "prometheus_client", "sage-resilience[prometheus]"),
        ("OpenTelemetryListener", "opentelemetry.metrics", "sage-resilience[otel]"),
    ],
)
def test_optional_listener_without_its_extra_names_the_extra(
    name: str, blocked: str, extra: str
) -> None:
    """Using a listener whose extra is missing raises ModuleNotFoundError naming the extra."""
    proc = _run_without(
        [blocked],
        f"""
        import sage_resilience.integrations as i
        try:
            getattr(i, {name!r})
        except ModuleNotFoundError as exc:
            print(exc)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert extra in proc.stdout


def test_lazy_names_resolve_to_the_module_objects() -> None:
    """The package's lazy names are the classes and function of their modules."""
    pytest.importorskip("prometheus_client")
    pytest.importorskip("opentelemetry.metrics")
    from sage_resilience.integrations import otel, prometheus

    assert integrations.PrometheusListener is prometheus.PrometheusListener
    assert integrations.serve_metrics is prometheus.serve_metrics
    assert integrations.MetricsServer is prometheus.MetricsServer
    assert integrations.OpenTelemetryListener is otel.OpenTelemetryListener
    assert set(integrations.__all__) <= set(dir(integrations))


def test_unknown_attribute_is_an_attribute_error() -> None:
    """A name the package does not have raises AttributeError (so hasattr works)."""
    assert not hasattr(integrations, "NoSuchListener")
    with pytest.raises(AttributeError, match="NoSuchListener"):
        _ = integrations.NoSuchListener  # type: ignore[attr-defined]


def test_listeners_are_listeners() -> None:
    """Every listener class satisfies the core Listener protocol."""
    pytest.importorskip("prometheus_client")
    pytest.importorskip("opentelemetry.metrics")
    from opentelemetry.metrics import NoOpMeterProvider
    from sage_resilience.core import Listener

    listeners = [
        integrations.LoggingListener(),
        integrations.PrometheusListener(),
        integrations.OpenTelemetryListener(meter_provider=NoOpMeterProvider()),
    ]
    for listener in listeners:
        assert isinstance(listener, Listener)
