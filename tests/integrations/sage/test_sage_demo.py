"""``sage-resilience demo``: a quick run end to end against the real PostgreSQL and embedding
stub (the table and the JSON hold every figure, for the adaptive wrappers and the seed's
decorators; no acknowledged save lost, none stored twice; the faults were injected and met),
clear refusals of bad arguments and of an unreachable server, and the figures' definitions on
hand-made records.

The quick run takes real time (about 10 s: two 4 s runs of the workload and the overhead
measurement); it runs once, through ``cli.main`` in a thread of its own (the command calls
``asyncio.run``), and the tests that read it share it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("httpx", reason="the Sage wrappers need the 'sage' extra")

from sage_resilience.benchmarks import cli
from sage_resilience.benchmarks.demo import (
    NORMAL_SHARE,
    SCHEDULE,
    DemoConfig,
    EpisodeRun,
    OpRecord,
    demo_config,
    integrity,
    summarize,
    wilson,
)

pytestmark = pytest.mark.service

# The figures of each configuration, and the overhead cases.
FIGURES = {
    "operations",
    "saves",
    "searches",
    "success",
    "degraded_searches",
    "auto_recovery",
    "outside_episodes",
    "first_success",
    "normal",
    "db_attempts_per_save_in_outage",
    "embed_requests_per_save_in_503",
    "db_attempts_per_op",
    "embed_requests_per_op",
    "latency_ms",
    "episodes",
    "integrity",
    "observed_s",
    "errors",
}
OVERHEAD = {
    "database",
    "database_pool_timeouts",
    "embeddings",
    "adaptive_policy",
    "seed_layer",
    "seed_three_layers",
}
# The rows of the printed comparison table.
ROWS = (
    "operations (saves/searches)",
    "success ratio [95 % CI]",
    "degraded searches",
    "auto-recovery (met a fault, ok)",
    "success outside episodes",
    "first success after, mean/p95",
    "back to normal after, mean/p95",
    "DB attempts per save in outage",
    "embed requests per save in 503s",
    "DB attempts/embed requests per op",
    "good latency p50/p99",
    "saves stored twice",
    "acknowledged saves lost",
    "failed saves stored anyway",
)


@dataclass
class Run:
    status: int
    out: str
    err: str
    doc: Any
    wall: float


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _run_cli(argv: list[str]) -> tuple[int, str, str, float]:
    """``cli.main(argv)`` in a thread of its own (it calls ``asyncio.run``), its output
    captured; returns ``(status, stdout, stderr, seconds)``."""
    out, err = io.StringIO(), io.StringIO()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["status"] = cli.main(argv)
        except BaseException as exc:  # handed to the test's thread
            result["error"] = exc

    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    wall = time.perf_counter() - start
    if "error" in result:
        raise result["error"]
    return result["status"], out.getvalue(), err.getvalue(), wall


_QUICK: dict[str, Run | BaseException] = {}


@pytest.fixture
def quick(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The quick demo's outcome, run once for the module (``pg_dsn`` skips, or fails under
    ``SAGE_RESILIENCE_REQUIRE_SERVICES=1``, when the server is not reachable)."""
    if "run" not in _QUICK:
        path = tmp_path_factory.mktemp("demo") / "demo.json"
        try:
            status, out, err, wall = _run_cli(
                ["demo", "--quick", "--json", str(path), "--no-progress"]
            )
            doc = _strict_json(path.read_text()) if path.exists() else None
            _QUICK["run"] = Run(status, out, err, doc, wall)
        except BaseException as exc:
            _QUICK["run"] = exc
    run = _QUICK["run"]
    if isinstance(run, BaseException):
        raise run
    return run


def test_quick_demo_prints_every_figure_for_both_configurations(quick: Run) -> None:
    """``demo --quick`` ends well, within a few seconds, and prints the comparison table with
    every row for both configurations, each run's episodes, the overhead and the definitions."""
    assert quick.status == 0, quick.err
    # The quick run takes ~10 s here; a shared machine gets three times that.
    assert quick.wall < 30.0, f"quick demo took {quick.wall:.1f} s"
    lines = quick.out.splitlines()
    header = next(line for line in lines if line.split() == ["adaptive", "seed"])
    table = lines[lines.index(header) : lines.index(header) + 1 + len(ROWS)]
    for row, line in zip(ROWS, table[1:], strict=True):
        assert line.startswith(row), (row, line)
        # One value per configuration after the label (the success row has two intervals).
        assert line[len(row) :].strip(), line
    success = table[1 + ROWS.index("success ratio [95 % CI]")][len("success ratio [95 % CI]") :]
    assert success.count("%") == 2 and success.count("[") == 2, success  # ratio [CI] each
    for name in ("adaptive", "seed"):
        section = lines.index(f"{name}, per episode:")
        for spec in SCHEDULE:
            assert any(line.split()[:1] == [spec.name] for line in lines[section:]), spec.name
    assert "seed: at the manager, storage and database layers" in quick.out
    assert "ResilientDatabase.fetchval('SELECT 1')" in quick.out
    assert "AdaptivePolicy.acall(no-op)" in quick.out
    assert "seed, three nested layers" in quick.out
    for word in ("auto_recovery:", "first_success:", "normal:", "met:", "censored:"):
        assert f"  {word}" in quick.out, word
    assert "Task exception was never retrieved" not in quick.err


def test_quick_demo_json_holds_every_figure(quick: Run) -> None:
    """The JSON holds every figure of both configurations, as numbers within their bounds, the
    schedule as it was scaled, the overhead cases and the definitions."""
    doc = quick.doc
    assert doc is not None, quick.err
    assert doc["meta"]["quick"] is True
    assert set(doc["configurations"]) == {"adaptive", "seed"}  # the seed comparison ran
    duration = doc["meta"]["duration_s"]
    assert [s["name"] for s in doc["schedule"]] == [s.name for s in SCHEDULE]
    for name, run in doc["configurations"].items():
        assert set(run) >= FIGURES, (name, FIGURES - set(run))
        assert run["operations"] == doc["meta"]["operations"] == run["saves"] + run["searches"]
        for key in ("success", "auto_recovery", "outside_episodes"):
            ratio = run[key]
            if ratio["trials"]:
                low, high = ratio["ci95"]
                assert 0.0 <= low <= ratio["ratio"] <= high <= 1.0, (name, key, ratio)
        for key in ("first_success", "normal"):
            assert run[key]["mean_s"] is not None and run[key]["mean_s"] >= 0.0, (name, key)
            assert run[key]["p95_s"] >= 0.0
        assert [e["name"] for e in run["episodes"]] == [s.name for s in SCHEDULE]
        previous_end = 0.0
        for episode in run["episodes"]:
            assert previous_end <= episode["start_s"] < episode["end_s"] <= duration + 0.5
            previous_end = episode["end_s"]
            assert episode["met"]["trials"] > 0, (name, episode["name"])  # every fault met
            failed = episode["met"]["trials"] - episode["met"]["successes"]
            assert sum(episode["errors"].values()) == failed, (name, episode)
        assert run["db_attempts_per_save_in_outage"]["ops"] > 0
    assert set(doc["overhead"]) >= OVERHEAD
    for case in doc["overhead"].values():
        assert case["bare_us"] > 0.0 and case["wrapped_us"] > 0.0
        assert math.isfinite(case["overhead_us"])
    # Against a real server, a call costs far more than the policy around a no-op.
    assert doc["overhead"]["database"]["bare_us"] > doc["overhead"]["adaptive_policy"]["wrapped_us"]
    assert {"auto_recovery", "first_success", "normal", "met", "stored_twice"} <= set(
        doc["definitions"]
    )


def test_no_acknowledged_save_is_lost_or_stored_twice(quick: Run) -> None:
    """Counted in the database afterwards: the adaptive wrappers stored every acknowledged save
    exactly once, faults and all; the seed lost no acknowledged save either."""
    doc = quick.doc
    assert doc is not None, quick.err
    adaptive = doc["configurations"]["adaptive"]["integrity"]
    assert adaptive["acknowledged_saves"] > 0
    assert adaptive["rows"] >= adaptive["acknowledged_saves"]
    assert adaptive["stored_twice"] == 0
    assert adaptive["extra_rows"] == 0
    assert adaptive["acknowledged_lost"] == 0
    seed = doc["configurations"]["seed"]["integrity"]
    assert seed["acknowledged_lost"] == 0


def test_the_faults_were_injected_and_bit(quick: Run) -> None:
    """The proxy and the stub count what they injected, the adaptive wrappers retried, and the
    seed's breakers refused calls after the outage."""
    doc = quick.doc
    assert doc is not None, quick.err
    adaptive = {e["name"]: e for e in doc["configurations"]["adaptive"]["episodes"]}
    assert adaptive["db-resets"]["injected"].get("connections_reset", 0) > 0
    assert adaptive["db-blackhole"]["injected"].get("bytes_swallowed", 0) > 0
    assert adaptive["embed-503"]["injected"].get("answered_503", 0) > 0
    assert any(e["attempts_per_op"]["max"] >= 2 for e in adaptive.values())
    seed = doc["configurations"]["seed"]
    assert seed["errors"].get("CircuitBreakerOpenError", 0) > 0


def test_no_seed_runs_the_adaptive_configuration_only(pg_dsn: str, tmp_path: Path) -> None:
    """``--no-seed`` skips the seed's run: one column, and no seed in the JSON."""
    path = tmp_path / "demo.json"
    status, out, err, _ = _run_cli(
        [
            "demo",
            "--quick",
            "--no-seed",
            "--duration",
            "2",
            "--rate",
            "20",
            "--json",
            str(path),
            "--no-progress",
        ]
    )
    assert status == 0, err
    doc = _strict_json(path.read_text())
    assert set(doc["configurations"]) == {"adaptive"}
    assert doc["meta"]["duration_s"] == 2.0 and doc["meta"]["operations"] == 40
    header = next(line for line in out.splitlines() if line.strip() == "adaptive")
    assert "seed" not in header
    assert "seed, per episode:" not in out
    assert "seed: at the manager" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "rate must be > 0"),
        (["--rate", "-5"], "rate must be > 0"),
        (["--rate", "5000"], "rate must be > 0 and <= 1000"),
        (["--duration", "1"], "duration must be >= 2"),
        (["--duration", "nan"], "duration must be a finite number"),
        (["--save-share", "1.5"], "save_share must be >= 0 and <= 1"),
        (["--deadline", "0"], "deadline must be > 0"),
        (["--dsn", "mysql://x@127.0.0.1/db"], "dsn must be a postgresql:// URL"),
    ],
)
def test_bad_arguments_are_refused_clearly(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value exits with status 2 and names the option, before anything runs."""
    assert cli.main(["demo", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_unparsable_numbers_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """``--rate abc`` is argparse's error (status 2, naming the option)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--rate", "abc"])
    assert exc.value.code == 2
    assert "--rate: invalid float value: 'abc'" in capsys.readouterr().err


def test_an_unreachable_server_is_a_clear_error() -> None:
    """Nothing listens on port 1: status 1 and a message naming the server, no traceback."""
    status, out, err, wall = _run_cli(
        ["demo", "--quick", "--dsn", "postgresql://postgres@127.0.0.1:1/postgres"]
    )
    assert status == 1
    assert "cannot create a database on the PostgreSQL server" in err
    assert "127.0.0.1:1" in err
    assert "Traceback" not in err
    assert out == ""
    assert wall < 10.0


def test_quick_defaults_and_explicit_values() -> None:
    """``--quick`` shortens the defaults; values given explicitly win over them."""
    quick = demo_config(quick=True)
    assert quick.quick and quick.duration == 4.0 and quick.deadline == 1.5
    assert quick.db_pairs < DemoConfig().db_pairs
    assert demo_config(quick=True, duration=6.0, rate=None).duration == 6.0
    assert demo_config(quick=True, rate=None).rate == DemoConfig().rate
    with pytest.raises(ValueError, match="pool_size must be an int >= 1"):
        DemoConfig(pool_size=0)


# -- the definitions, on hand-made records ---------------------------------------------------------


def _op(start: float, end: float, *, ok: bool = True, degraded: bool = False) -> OpRecord:
    return OpRecord(0, "save", "x", start=start, end=end, ok=ok, degraded=degraded)


def test_wilson_interval_matches_known_values() -> None:
    """0 of 10: [0, 0.2775]; 5 of 10: [0.2366, 0.7634]; no trial: [0, 1]."""
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson(0, 0) == (0.0, 1.0)


def test_an_operation_meets_an_episode_when_their_lifetimes_overlap() -> None:
    """In flight when the fault began, or started during it: met; ended before it or started
    after it: not met. The auto-recovery rate is over the met ones only."""
    episode = EpisodeRun("db-outage", "database", "", start=10.0, end=12.0)
    records = [
        _op(9.0, 10.5, ok=True),  # in flight at the start: met, recovered
        _op(11.0, 11.5, ok=False),  # during: met, failed
        _op(11.9, 12.4, ok=True),  # started during: met, recovered
        _op(8.0, 9.9, ok=False),  # ended before: not met
        _op(12.1, 12.2, ok=True),  # started after: not met
    ]
    summary = summarize(records, [episode], duration=20.0, window=1.0)
    assert summary["auto_recovery"]["successes"] == 2
    assert summary["auto_recovery"]["trials"] == 3
    assert summary["outside_episodes"]["trials"] == 2
    assert summary["episodes"][0]["met"]["trials"] == 3


def test_recovery_times_after_an_episode() -> None:
    """First success: the first good operation ending after the episode's end; normal: the
    first window whose operations are at least NORMAL_SHARE good; a degraded answer is not
    good."""
    episode = EpisodeRun("embed-503", "embeddings", "", start=2.0, end=4.0)
    records = [_op(4.0 + 0.1 * i, 4.05 + 0.1 * i, ok=False) for i in range(5)]  # 4.0-4.5 fail
    records.append(_op(4.05, 4.3, ok=True, degraded=True))  # not good
    records += [_op(4.5 + 0.1 * i, 4.55 + 0.1 * i) for i in range(30)]  # good from 4.5 on
    summary = summarize(records, [episode], duration=8.0, window=1.0)
    result = summary["episodes"][0]
    assert result["first_success_s"] == pytest.approx(0.55)
    assert not result["first_success_censored"]
    # Windows of 1 s from 4.0, by 0.1 s: [4.5, 5.5) is the first all good; NORMAL_SHARE of
    # 0.95 does not let [4.4, 5.4) through with 1 failure in 10.
    assert NORMAL_SHARE == 0.95
    assert result["normal_s"] == pytest.approx(0.5)
    assert summary["first_success"]["lower_bound"] is False


def test_an_episode_that_never_recovers_is_censored() -> None:
    """No good operation before the next episode: censored at its start, and the mean and
    p95 over episodes become lower bounds."""
    first = EpisodeRun("db-outage", "database", "", start=1.0, end=2.0)
    second = EpisodeRun("db-resets", "database", "", start=5.0, end=6.0)
    records = [_op(2.0 + 0.1 * i, 2.1 + 0.1 * i, ok=False) for i in range(30)]  # 2.0-5.0
    records += [_op(6.0 + 0.1 * i, 6.05 + 0.1 * i) for i in range(20)]  # good after the second
    summary = summarize(records, [first, second], duration=8.0, window=1.0)
    one, two = summary["episodes"]
    assert one["first_success_censored"] and one["first_success_s"] == pytest.approx(3.0)
    assert one["normal_censored"] and one["normal_s"] == pytest.approx(3.0)
    assert not two["first_success_censored"] and two["first_success_s"] == pytest.approx(0.05)
    assert summary["first_success"]["lower_bound"] is True
    assert summary["first_success"]["censored"] == 1
    assert summary["first_success"]["p95_s"] == pytest.approx(3.0)


def test_integrity_counts_duplicates_losses_and_failed_saves_stored() -> None:
    """Rows against records: a content in two rows is stored twice, an acknowledged id that is
    missing (or holds another content) is lost, a failed save whose content is there is
    counted apart."""
    saved = [
        OpRecord(0, "save", "a", ok=True, memory_id="id-a"),
        OpRecord(1, "save", "b", ok=True, memory_id="id-b"),  # its row is missing
        OpRecord(2, "save", "c", ok=True, memory_id="id-c"),  # its row holds another content
        OpRecord(3, "save", "d", ok=False),  # failed, stored twice all the same
        OpRecord(4, "search", "q", ok=True),
    ]
    rows = [("id-a", "a"), ("id-c", "other"), ("id-d1", "d"), ("id-d2", "d")]
    assert integrity(rows, saved) == {
        "rows": 4,
        "acknowledged_saves": 3,
        "stored_twice": 1,
        "extra_rows": 1,
        "acknowledged_lost": 2,
        "failed_but_stored": 1,
    }
    clean = integrity([("id-a", "a"), ("id-b", "b"), ("id-c", "c")], saved[:3])
    assert clean["stored_twice"] == clean["acknowledged_lost"] == clean["failed_but_stored"] == 0
