"""The overhead benchmark runs end to end and writes a well-formed document.

Timing figures are not asserted (speed is measured by the benchmark, not by tests); what is
checked is that every case runs, the JSON has the promised fields, and the memory measurement
covers each policy.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sage_resilience.benchmarks import overhead


def test_overhead_benchmark_writes_table_and_json(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """A tiny run prints the table and writes JSON with every case and a memory figure."""
    out = tmp_path / "overhead.json"
    assert (
        overhead.main(
            ["--calls", "200", "--rounds", "3", "--memory-calls", "2000", "--out", str(out)]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    names = {(r["name"], r["kind"]) for r in doc["results"]}
    assert names == {(c.name, c.kind) for c in overhead.CASES}
    for r in doc["results"]:
        assert r["bare_ns"] > 0
        assert r["meets_target"] is (
            None if r["target_ns"] is None else r["overhead_ns"] <= r["target_ns"]
        )
    assert set(doc["memory_growth_bytes"]) == {
        "retry",
        "breaker",
        "retry + breaker",
        "retry path",
        "adaptive policy",
    }
    printed = capsys.readouterr().out
    assert "retry + breaker" in printed
    assert "Memory growth" in printed


def test_retry_path_case_really_retries() -> None:
    """The retry-path case makes three attempts per call (so its per-attempt figure is honest)."""
    case = next(c for c in overhead.CASES if c.name.startswith("retry path") and c.kind == "sync")
    _bare, wrapped = case.make()
    for _ in range(10):
        assert wrapped() == 1
    stats = wrapped.retry.stats()  # type: ignore[attr-defined]
    assert stats.calls == 10
    assert stats.attempts == 30


def test_adaptive_cases_run_the_full_policy() -> None:
    """The adaptive rows use every default part: limiter, budget, breaker, rate, timeout."""
    for kind in ("sync", "async"):
        case = next(
            c for c in overhead.CASES if c.name == "adaptive policy (full)" and c.kind == kind
        )
        _bare, wrapped = case.make()
        policy = wrapped.policy  # type: ignore[attr-defined]
        assert policy.limiter is not None
        assert policy.budget is not None
        assert policy.breaker is not None
        assert policy.rate_controller is not None
        assert policy.bucket is None
        assert policy.timeout is not None
        assert policy.stats()["timeout"] < 30.0
        admitted = policy.limiter.stats().admitted["NORMAL"]
        requests = policy.budget.stats().requests

        async def run_async(fn: Any) -> None:
            for _ in range(10):
                assert await fn() == 1

        if kind == "sync":
            for _ in range(10):
                assert wrapped() == 1
        else:
            asyncio.run(run_async(wrapped))
        assert policy.limiter.stats().admitted["NORMAL"] == admitted + 10
        assert policy.budget.stats().requests == requests + 10
