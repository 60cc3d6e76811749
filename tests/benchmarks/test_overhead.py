"""The overhead benchmark runs end to end and writes a well-formed document.

Timing figures are not asserted (speed is measured by the benchmark, not by tests); what is
checked is that every case runs, the JSON has the promised fields, and the memory measurement
covers each policy.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    assert set(doc["memory_growth_bytes"]) == {"retry", "breaker", "retry + breaker", "retry path"}
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
