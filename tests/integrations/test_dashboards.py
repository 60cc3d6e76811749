"""The shipped Grafana dashboard and Prometheus alert rules use exactly the exported names, and
promtool accepts (and unit-tests) the rules."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client")
pytest.importorskip("yaml")

import yaml
from sage_resilience.core import FakeClock, Registry
from sage_resilience.integrations import PrometheusListener, serve_metrics
from support.telemetry import REQUIRE_ENV, build, drive, parse, require_tool, scrape

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = files("sage_resilience.integrations") / "dashboards"
DASHBOARD = "grafana-sage-resilience.json"
RULES = "prometheus-alerts.yml"
NAME = re.compile(r"\bsage_resilience_[A-Za-z0-9_:]+")
ALERTS = {
    "SageResilienceBreakerOpen",
    "SageResilienceRejectionRatioHigh",
    "SageResilienceRetryRatioHigh",
}


def _text(name: str) -> str:
    return (DASHBOARDS / name).read_text(encoding="utf-8")


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, depth first."""
    if isinstance(node, dict):
        for key, item in node.items():
            yield key, item
            yield from _walk(item)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _dashboard_exprs() -> list[str]:
    return [v for k, v in _walk(json.loads(_text(DASHBOARD))) if k == "expr"]


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(_text(RULES))
    return [rule for group in doc["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """Every sample name a real scrape shows after each kind of event has happened."""
    registry = Registry("dashboards")
    listener = PrometheusListener(watch=[registry])
    drive(build(FakeClock(1000.0), registry))
    with serve_metrics(0, metrics=listener) as server:
        return set(parse(scrape(server.url)))


@pytest.mark.parametrize("name", [DASHBOARD, RULES])
def test_every_metric_name_referenced_is_exported(name: str, exposed: set[str]) -> None:
    """Each sage_resilience_* name in the file is a sample name the exporter really exposes."""
    referenced = set(NAME.findall(_text(name)))
    assert len(referenced) >= 4
    assert referenced - exposed == set()


def test_dashboard_covers_every_exported_metric(exposed: set[str]) -> None:
    """Each exported family (counters, gauges, the histogram) appears in some dashboard query."""
    referenced = set(NAME.findall(" ".join(_dashboard_exprs())))
    families = {
        re.sub(r"_(bucket|count|sum)$", "", n) if "call_duration" in n else n
        for n in exposed
        if n.startswith("sage_resilience_") and not n.endswith("_created")
    }
    used = {
        re.sub(r"_(bucket|count|sum)$", "", n) if "call_duration" in n else n for n in referenced
    }
    assert families - used == set()


def test_dashboard_is_well_formed() -> None:
    """Panels have unique ids, fit the 24-column grid, and query the ${datasource} variable."""
    dashboard = json.loads(_text(DASHBOARD))
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "sage-resilience"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance", "policy"} <= variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["expr"].strip(), panel["title"]


def test_rules_file_holds_the_three_alerts() -> None:
    """The rules are the breaker-open, rejection-ratio and retry-ratio alerts, with a for: each."""
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["for"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    by_name = {r["alert"]: r for r in rules}
    assert (
        'sage_resilience_breaker_state{state!="closed"}'
        in by_name["SageResilienceBreakerOpen"]["expr"]
    )


def test_promtool_check_rules_accepts_the_alerts(promtool: str) -> None:
    """promtool check rules validates the shipped alert rules."""
    path = str(DASHBOARDS / RULES)
    proc = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 3 rules found" in proc.stdout


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each dashboard query, its Grafana variables filled in, parses as PromQL (via promtool)."""
    exprs = _dashboard_exprs()
    assert len(exprs) >= 20
    rules = []
    for i, expr in enumerate(exprs):
        filled = (
            expr.replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*")
            .replace("$policy", ".*")
        )
        assert "$" not in filled, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": filled})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {"job": "sage", "instance": "a", **labels}
    rendered = ",".join(f'{k}="{v}"' for k, v in all_labels.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def test_promtool_unit_tests_of_the_alerts(promtool: str, tmp_path: Path) -> None:
    """The alerts fire on the situations they describe and stay silent just below them."""
    exprs = {r["alert"]: r["expr"] for r in _rules()}
    series = [
        # Breaker db: open at 1m, probing (half-open) at 3m, open again: never closed since 1m.
        _series("sage_resilience_breaker_state", "1 0 0 0 0 0 0", policy="db", state="closed"),
        _series("sage_resilience_breaker_state", "0 1 1 0 1 1 1", policy="db", state="open"),
        _series("sage_resilience_breaker_state", "0 0 0 1 0 0 0", policy="db", state="half_open"),
        # Breaker cache: opens for a minute now and then, closes again: no alert.
        _series("sage_resilience_breaker_state", "1 0 1 0 1 0 1", policy="cache", state="closed"),
        _series("sage_resilience_breaker_state", "0 1 0 1 0 1 0", policy="cache", state="open"),
        _series(
            "sage_resilience_breaker_state", "0 0 0 0 0 0 0", policy="cache", state="half_open"
        ),
        # Limiter embed: 30 refused and 60 admitted a minute (33%): fires.
        _series(
            "sage_resilience_rejections_total",
            "0+30x30",
            policy="embed",
            kind="rate_limiter",
            reason="rate_limited",
        ),
        _series("sage_resilience_admitted_total", "0+60x30", policy="embed", kind="rate_limiter"),
        # Breaker db2: 1 refused for 100 calls a minute (1%): silent.
        _series(
            "sage_resilience_rejections_total",
            "0+1x30",
            policy="db2",
            kind="circuit_breaker",
            reason="breaker_open",
        ),
        _series(
            "sage_resilience_calls_total",
            "0+100x30",
            policy="db2",
            kind="circuit_breaker",
            outcome="success",
        ),
        # Bulkhead pool: 50% refused but only 1 call a minute (< 10 in 5 min): silent.
        _series(
            "sage_resilience_rejections_total",
            "0+0.5x30",
            policy="pool",
            kind="bulkhead",
            reason="bulkhead_full",
        ),
        _series("sage_resilience_admitted_total", "0+0.5x30", policy="pool", kind="bulkhead"),
        # Retry r: 50 retries for 100 calls a minute (0.5 per call): fires.
        _series("sage_resilience_retries_total", "0+50x30", policy="r"),
        _series(
            "sage_resilience_calls_total", "0+100x30", policy="r", kind="retry", outcome="success"
        ),
        # Retry q: 10 retries for 100 calls (0.1 per call): silent.
        _series("sage_resilience_retries_total", "0+10x30", policy="q"),
        _series(
            "sage_resilience_calls_total", "0+100x30", policy="q", kind="retry", outcome="success"
        ),
    ]
    ids = {"job": "sage", "instance": "a"}
    tests = {
        "rule_files": [str(DASHBOARDS / RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": exprs["SageResilienceBreakerOpen"],
                        "eval_time": "4m",
                        "exp_samples": [{"labels": _labels({**ids, "policy": "db"}), "value": 1}],
                    },
                    {
                        "expr": exprs["SageResilienceRejectionRatioHigh"],
                        "eval_time": "15m",
                        "exp_samples": [
                            {
                                "labels": _labels(
                                    {**ids, "policy": "embed", "kind": "rate_limiter"}
                                ),
                                "value": 1 / 3,
                            }
                        ],
                    },
                    {
                        "expr": exprs["SageResilienceRetryRatioHigh"],
                        "eval_time": "25m",
                        "exp_samples": [{"labels": _labels({**ids, "policy": "r"}), "value": 0.5}],
                    },
                ],
                "alert_rule_test": [
                    # for: 2m, open since 1m: pending at 2m, firing from 3m (checked via the
                    # expression above); nothing fires before.
                    {"eval_time": "2m", "alertname": "SageResilienceBreakerOpen", "exp_alerts": []},
                    {
                        "eval_time": "4m",
                        "alertname": "SageResilienceRetryRatioHigh",
                        "exp_alerts": [],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def test_missing_promtool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without promtool the test is skipped with the install command, or fails when required."""
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install"):
        require_tool("promtool", "apt-get install -y --no-install-recommends prometheus")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_ENV):
        require_tool("promtool", "apt-get install -y --no-install-recommends prometheus")


def test_dashboards_ship_in_the_wheel(tmp_path: Path) -> None:
    """The built wheel holds both files under sage_resilience/integrations/dashboards/."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("sage_resilience-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (DASHBOARD, RULES):
        assert f"sage_resilience/integrations/dashboards/{name}" in names
