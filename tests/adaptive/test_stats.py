"""Statistics: rolling counts (expiry bucket by bucket, against a brute-force recount), the
time-based EWMA (hand-computed values, the same forgetting pace at any rate), the log-bucketed
latency histogram (nearest-rank quantiles within 5 % against exact ones, the range ends, merge,
reset) and rolling histograms; the lock-free paths under threads and their locked twins.

Time is always explicit: every method takes ``now``.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sage_resilience.adaptive.stats import (
    EWMA,
    LatencyHistogram,
    RollingCounts,
    RollingHistogram,
    _epoch_of,
)

MIN = LatencyHistogram.MIN_VALUE
TOP = LatencyHistogram.MAX_VALUE

# -- helpers ---------------------------------------------------------------------------------


def bucket_start(e: int, width: float) -> float:
    return e * width


def bucket_of(t: float, width: float) -> int:
    """The bucket ``e`` with ``e * width <= t < (e + 1) * width`` (float products), by search."""
    e = math.floor(t / width) - 2
    while bucket_start(e + 1, width) <= t:
        e += 1
    return e


def exact_quantile(samples: list[float], q: float) -> float:
    """Nearest rank, as the histogram defines it: the k-th smallest, k = ceil(q * n) (a product
    that should be whole but rounded up is taken as whole), at least 1."""
    ordered = sorted(samples)
    k = max(1, math.ceil(q * len(ordered) * (1.0 - 1e-12)))
    return ordered[k - 1]


def check_estimate(estimate: float, exact: float, largest: float) -> None:
    """The histogram's guarantee for one quantile, with its two range ends."""
    assert estimate <= largest
    if exact < MIN:
        # Below the range: between the true value and the range's bottom.
        assert exact <= estimate <= MIN
    elif exact >= TOP:
        # Above the range: the largest sample.
        assert estimate == largest
    else:
        assert abs(estimate - exact) / exact <= 0.05
        assert abs(estimate - exact) / exact <= LatencyHistogram.RELATIVE_ERROR * (1 + 1e-9)


@pytest.fixture
def _switch_often() -> Iterator[None]:
    """Make the interpreter switch threads far more often than usual, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def run_threads(target: Callable[[int], None], n: int) -> None:
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(30.0)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30.0)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


# -- bucket arithmetic -----------------------------------------------------------------------


@given(
    t=st.floats(-1e6, 1e6),
    width=st.sampled_from([0.1, 0.25, 0.3, 1.0, 7 / 3, 1e-3, 0.7]),
)
def test_epoch_agrees_with_the_bucket_starts(t: float, width: float) -> None:
    """The epoch of a time is the bucket whose float-product start is at or before it."""
    e = _epoch_of(t, width)
    assert e * width <= t < (e + 1) * width
    assert e == bucket_of(t, width)


def test_epoch_at_a_start_where_floor_division_disagrees() -> None:
    """1.0 // 0.1 is 9, yet 10 * 0.1 == 1.0: the time 1.0 starts bucket 10."""
    assert 1.0 // 0.1 == 9.0
    assert 10 * 0.1 == 1.0
    assert _epoch_of(1.0, 0.1) == 10


# -- RollingCounts ---------------------------------------------------------------------------


def test_counts_expire_bucket_by_bucket() -> None:
    """Each bucket's events leave the window together, when the bucket falls out of it."""
    counts = RollingCounts(["ok", "fail"], window=10.0, buckets=10)
    counts.add(0, 0.5)
    counts.add(0, 1.5)
    counts.add(1, 1.7)
    for t in (2.0, 2.2, 2.9):
        counts.add(1, t)
    assert counts.snapshot(9.99) == {"ok": 2, "fail": 4}
    assert counts.snapshot(10.0) == {"ok": 1, "fail": 4}  # bucket [0, 1) gone
    assert counts.snapshot(10.99) == {"ok": 1, "fail": 4}
    assert counts.snapshot(11.0) == {"ok": 0, "fail": 3}  # bucket [1, 2) gone
    assert counts.snapshot(12.0) == {"ok": 0, "fail": 0}
    assert counts.totals() == {"ok": 2, "fail": 4}


def test_counts_after_a_gap_longer_than_the_window() -> None:
    """A long silence empties the window; counting resumes from there, totals kept."""
    counts = RollingCounts(["hits"], window=2.0, buckets=4, now=100.0)
    for _ in range(5):
        counts.add(0, 100.1)
    assert counts.snapshot(100.2) == {"hits": 5}
    counts.add(0, 1000.0, count=3)
    assert counts.snapshot(1000.0) == {"hits": 3}
    assert counts.snapshot(1001.6) == {"hits": 3}
    assert counts.snapshot(1002.0) == {"hits": 0}
    assert counts.totals() == {"hits": 8}


def test_event_at_the_very_start_of_a_bucket_stays_the_whole_window() -> None:
    """Regression: at t = 1.0 with 0.1 s buckets, ``now // width`` said bucket 9, so the event
    expired a bucket early and the next boundary stayed at 1.0 (a rotation on every call)."""
    counts = RollingCounts(["n"], window=1.0, buckets=10)
    counts.add(0, 1.0)
    assert counts.next_boundary > 1.0
    assert counts.snapshot(1.95) == {"n": 1}
    assert counts.snapshot(2.0) == {"n": 0}


@st.composite
def count_scripts(draw: st.DrawFn) -> tuple[float, int, list[tuple[str, float, int]]]:
    width = draw(st.sampled_from([0.1, 0.25, 0.3, 1.0, 7 / 3]))
    buckets = draw(st.integers(1, 8))
    steps = draw(
        st.lists(st.tuples(st.sampled_from(["add", "snap"]), st.integers(0, 2)), max_size=60)
    )
    # Times: forward jumps of any size, often landing exactly on a bucket start.
    t = draw(st.floats(0, 50))
    script = []
    for kind, field in steps:
        if draw(st.booleans()):
            t = (
                bucket_of(t, width) + draw(st.sampled_from([1, 2, 3, buckets, 3 * buckets]))
            ) * width
        else:
            t += draw(st.floats(0, 3 * width))
        script.append((kind, t, field))
    return width * buckets, buckets, script


@given(count_scripts())
def test_snapshot_equals_a_brute_force_recount(
    case: tuple[float, int, list[tuple[str, float, int]]],
) -> None:
    """A snapshot holds exactly the events whose bucket is among the last ``buckets``."""
    window, buckets, script = case
    fields = ["a", "b", "c"]
    counts = RollingCounts(fields, window=window, buckets=buckets)
    width = counts.width
    events: list[tuple[float, int]] = []
    for kind, t, field in script:
        if kind == "add":
            counts.add(field, t)
            events.append((t, field))
        else:
            newest = bucket_of(t, width)
            expected = {f: 0 for f in fields}
            for et, ef in events:
                if bucket_of(et, width) > newest - buckets:
                    expected[fields[ef]] += 1
            assert counts.snapshot(t) == expected
    assert sum(counts.totals().values()) == len(events)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fields": [], "window": 1.0}, "fields"),
        ({"fields": ["a", "a"], "window": 1.0}, "fields"),
        ({"fields": ["a"], "window": 0.0}, "window"),
        ({"fields": ["a"], "window": math.nan}, "window"),
        ({"fields": ["a"], "window": 1.0, "buckets": 0}, "buckets"),
        ({"fields": ["a"], "window": 1.0, "now": math.inf}, "now"),
    ],
)
def test_counts_refuse_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    """Bad parameters raise ValueError at construction, naming the parameter."""
    with pytest.raises(ValueError, match=message):
        RollingCounts(**kwargs)


@pytest.mark.parametrize("fields", ["ok", ["ok", 1]])
def test_counts_refuse_fields_that_are_not_names(fields: Any) -> None:
    """A bare string (a sequence of letters) or a non-string name is a TypeError."""
    with pytest.raises(TypeError, match="fields"):
        RollingCounts(fields, window=1.0)


@pytest.mark.usefixtures("_switch_often")
@pytest.mark.parametrize("locked", [False, True], ids=["lock-free", "locked"])
def test_counts_lose_nothing_under_threads(locked: bool) -> None:
    """Eight threads adding at once, across bucket boundaries: every event is counted."""
    counts = RollingCounts(["a", "b"], window=1.0, buckets=4)
    add = counts._add_locked if locked else counts._add_unlocked

    def work(i: int) -> None:
        for k in range(5000):
            add(i % 2, k * 1e-4)

    run_threads(work, 8)
    assert counts.totals() == {"a": 20000, "b": 20000}
    assert counts.snapshot(0.4999) == {"a": 20000, "b": 20000}


# -- EWMA ------------------------------------------------------------------------------------


def test_ewma_before_and_at_the_first_sample() -> None:
    """No sample: the default (or ``initial``); the first sample sets the value."""
    ewma = EWMA(1.0)
    assert (ewma.value, ewma.get(), ewma.get(7.0)) == (None, 0.0, 7.0)
    assert ewma.update(42.0, 100.0) == 42.0
    primed = EWMA(1.0, initial=5.0)
    assert primed.get() == 5.0
    assert primed.update(42.0, 100.0) == 42.0
    assert primed.samples == 1


def test_ewma_hand_computed_values() -> None:
    """Weights halve each half-life: mean = sum(w x) / sum(w), computed by hand."""
    ewma = EWMA(1.0)
    assert ewma.update(10.0, 0.0) == 10.0
    # t=1: the 10 has weight 1/2, the 20 weight 1: (5 + 20) / 1.5
    assert ewma.update(20.0, 1.0) == pytest.approx(25.0 / 1.5, rel=1e-12)
    # t=3: weights 1/8, 1/4, 1: (1.25 + 5 + 40) / 1.375
    assert ewma.update(40.0, 3.0) == pytest.approx(46.25 / 1.375, rel=1e-12)
    assert ewma.samples == 3


def test_ewma_samples_at_one_instant_count_equally() -> None:
    """Regression: a burst at one instant averages (the old code gave the second sample 1/3
    of the weight, and almost none after a long history)."""
    ewma = EWMA(2.0)
    for x in (10.0, 20.0, 30.0):
        ewma.update(x, 5.0)
    assert ewma.get() == pytest.approx(20.0, rel=1e-12)
    long = EWMA(1.0)
    for k in range(10):
        long.update(1.0, float(k))  # ones at t = 0..9, then three threes at t = 10
    for _ in range(3):
        long.update(3.0, 10.0)
    old_weight = sum(2.0**-j for j in range(1, 11))
    assert long.get() == pytest.approx((old_weight + 9.0) / (old_weight + 3.0), rel=1e-12)


def test_ewma_forgets_at_the_same_pace_whatever_the_rate() -> None:
    """Ones for 60 s then zeros: after one half-life the mean is 1/2, after two 1/4, at 1 or
    at 1000 samples per second."""
    for rate in (1.0, 1000.0):
        ewma = EWMA(5.0)
        dt = 1.0 / rate
        n = round(60 * rate)
        for k in range(n):
            ewma.update(1.0, k * dt)
        switch = (n - 1) * dt
        values = [ewma.update(0.0, switch + k * dt) for k in range(1, round(10 * rate) + 1)]
        assert values[round(5 * rate) - 1] == pytest.approx(0.5, rel=1e-3), rate
        assert values[-1] == pytest.approx(0.25, rel=1e-3), rate


def test_ewma_sample_from_the_past_decays_nothing() -> None:
    """A sample stamped before the latest one counts with weight 1 and moves no time."""
    ewma = EWMA(1.0)
    ewma.update(10.0, 10.0)
    ewma.update(20.0, 9.0)
    assert ewma.get() == pytest.approx(15.0)
    # Time still starts from 10.0: at 11.0 both earlier samples have weight 1/2.
    assert ewma.update(0.0, 11.0) == pytest.approx((5.0 + 10.0) / 2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"half_life": 0.0}, "half_life"),
        ({"half_life": -1.0}, "half_life"),
        ({"half_life": math.inf}, "half_life"),
        ({"half_life": 1.0, "initial": math.nan}, "initial"),
    ],
)
def test_ewma_refuses_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    """Bad parameters raise ValueError at construction, naming the parameter."""
    with pytest.raises(ValueError, match=message):
        EWMA(**kwargs)


def test_ewma_locked_twin_computes_the_same() -> None:
    """The free-threaded path (under a lock) gives the same values."""
    a, b = EWMA(3.0), EWMA(3.0)
    for k, x in enumerate([5.0, 1.0, 8.0, 8.0, 2.0]):
        assert a._update_unlocked(x, k * 0.7) == b._update_locked(x, k * 0.7)


# -- LatencyHistogram ------------------------------------------------------------------------


def test_empty_histogram() -> None:
    """Nothing recorded: no quantile, no mean, a count of zero."""
    h = LatencyHistogram()
    assert (h.n, h.mean, h.quantile(0.5), h.quantiles([0.5, 0.99])) == (0, None, None, None)


def test_quantiles_are_nearest_rank() -> None:
    """1..100 ms: p50 is about 50 ms, p90 about 90, p99 about 99, p100 exactly the max."""
    h = LatencyHistogram()
    samples = [k * 1e-3 for k in range(1, 101)]
    for x in reversed(samples):
        h.record(x)
    assert h.n == 100
    assert h.mean == pytest.approx(0.0505)
    for q, exact in [(0.5, 0.050), (0.9, 0.090), (0.99, 0.099), (0.01, 0.001)]:
        assert h.quantile(q) == pytest.approx(exact, rel=0.05)
    assert h.quantile(1.0) == 0.1


def test_rank_of_a_product_that_rounded_up() -> None:
    """0.07 * 100 is 7.000000000000001 in floats: the 7th value is still p7, not the 8th."""
    h = LatencyHistogram()
    for k in range(1, 101):
        h.record(k * 1e-3)
    assert h.quantile(0.07) == pytest.approx(0.007, rel=0.05)
    assert exact_quantile([k * 1e-3 for k in range(1, 101)], 0.07) == 0.007


def test_a_quantile_never_exceeds_the_largest_sample() -> None:
    """One sample: every quantile is that sample exactly (the bucket's middle would be above)."""
    h = LatencyHistogram()
    h.record(0.01234)
    assert h.quantiles([0.01, 0.5, 1.0]) == [0.01234] * 3


def test_quantiles_in_one_pass_match_one_at_a_time() -> None:
    """quantiles() answers in the order asked, the same as quantile() each."""
    h = LatencyHistogram()
    for k in range(1, 500):
        h.record((k % 37 + 1) * 1e-3 * k)
    qs = [0.99, 0.5, 0.9, 0.01, 1.0, 0.5]
    assert h.quantiles(qs) == [h.quantile(q) for q in qs]


@pytest.mark.parametrize("q", [0.0, -0.1, 1.01, math.nan])
def test_quantile_outside_zero_one(q: float) -> None:
    """q must be in (0, 1]."""
    h = LatencyHistogram()
    h.record(0.1)
    with pytest.raises(ValueError, match="q must be"):
        h.quantile(q)


positive = st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False)
in_range = st.floats(MIN, TOP, exclude_max=True)
log_uniform = st.floats(math.log(1e-7), math.log(1e4)).map(math.exp)
quantile_levels = st.lists(
    st.one_of(st.sampled_from([0.5, 0.9, 0.99, 1.0]), st.floats(0.0, 1.0, exclude_min=True)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300)
@given(
    samples=st.lists(st.one_of(positive, in_range, log_uniform), min_size=1, max_size=300),
    qs=quantile_levels,
)
def test_quantiles_within_five_percent_of_exact(samples: list[float], qs: list[float]) -> None:
    """Against the exact nearest-rank quantile of the sorted samples: within 5 % in range;
    below 10 µs between the truth and 10 µs; above the top bucket, the largest sample."""
    h = LatencyHistogram()
    for x in samples:
        h.record(x)
    estimates = h.quantiles(qs)
    assert estimates is not None
    largest = max(samples)
    assert h.max == largest
    for q, estimate in zip(qs, estimates, strict=True):
        assert h.quantile(q) == estimate
        check_estimate(estimate, exact_quantile(samples, q), largest)


def test_accuracy_at_every_bucket_boundary() -> None:
    """Values on and one ulp around every bucket edge are reported within the bound."""
    v = MIN / 2
    edges = []
    while v < TOP * 2:
        edges.append(v)
        v *= 1.1
    edges += [MIN * 1.1**i for i in range(200)]
    checked = 0
    for edge in edges:
        for x in (math.nextafter(edge, 0.0), edge, math.nextafter(edge, math.inf)):
            h = LatencyHistogram()
            h.record(x)
            h.record(1e9)  # so the cap at the largest sample does not help
            estimate = h.quantile(0.5)
            assert estimate is not None
            check_estimate(estimate, x, 1e9)
            checked += 1
    assert checked > 1000


def test_below_and_above_the_range() -> None:
    """Under 10 µs the answer is at most 10 µs; over the top bucket it is the largest sample."""
    h = LatencyHistogram()
    for x in (1e-9, 2e-7, 3e-6):
        h.record(x)
    assert h.quantile(0.5) == 3e-6  # capped at the largest sample
    h.record(0.5)
    assert h.quantile(0.5) == MIN
    big = LatencyHistogram()
    for x in (2000.0, 5000.0, 1e12):
        big.record(x)
    assert big.quantile(0.01) == 1e12
    assert big.quantile(1.0) == 1e12
    big.record(math.inf)  # regression: log(inf) made int() raise OverflowError
    assert big.n == 4
    assert big.quantile(1.0) == math.inf


def test_merge_adds_counts_and_leaves_the_parts_alone() -> None:
    """A merge equals one histogram fed every sample; the merged ones are unchanged."""
    a, b, c, whole = (LatencyHistogram() for _ in range(4))
    for i, x in enumerate(k * 1.7e-3 for k in range(1, 301)):
        (a, b, c)[i % 3].record(x)
        whole.record(x)
    a_before = list(a.counts)
    merged = a.merge([b, c])
    assert merged.counts == whole.counts
    assert (merged.n, merged.max) == (300, whole.max)
    assert merged.total == pytest.approx(whole.total)
    assert merged.quantiles([0.5, 0.9, 0.99]) == whole.quantiles([0.5, 0.9, 0.99])
    assert a.counts == a_before
    assert a.n == 100
    assert a.merge([]).counts == a.counts


def test_reset_forgets_everything() -> None:
    """After reset the histogram is empty again and records afresh."""
    h = LatencyHistogram()
    for x in (0.1, 0.2, 5.0):
        h.record(x)
    h.reset()
    assert (h.n, h.mean, h.max, h.quantile(0.5)) == (0, None, 0.0, None)
    h.record(0.3)
    assert h.quantile(1.0) == 0.3


@pytest.mark.usefixtures("_switch_often")
@pytest.mark.parametrize("locked", [False, True], ids=["lock-free", "locked"])
def test_histogram_loses_nothing_under_threads(locked: bool) -> None:
    """Eight threads recording at once: every duration counted, the total and max exact."""
    h = LatencyHistogram()
    record = h._record_locked if locked else h._record_unlocked

    def work(i: int) -> None:
        for _ in range(5000):
            record(0.001 * (i + 1))

    run_threads(work, 8)
    assert h.n == 40000
    assert h.total == pytest.approx(sum(0.005 * (i + 1) for i in range(8)) * 1000)
    assert h.max == 0.008


# -- RollingHistogram ------------------------------------------------------------------------


def test_rolling_histogram_drops_expired_slices() -> None:
    """A slice's durations leave the window together when the slice falls out of it."""
    rh = RollingHistogram(window=3.0, slices=3)
    rh.record(0.010, 0.5)
    rh.record(0.020, 1.5)
    rh.record(0.030, 2.5)
    assert rh.snapshot(2.9).n == 3
    after = rh.snapshot(3.0)
    assert after.n == 2
    assert after.quantile(0.01) == pytest.approx(0.020, rel=0.05)
    assert rh.snapshot(4.0).quantiles([1.0]) == [0.030]
    assert rh.snapshot(5.0).n == 0
    assert rh.snapshot(100.0).quantile(0.5) is None


@settings(max_examples=150)
@given(
    slices=st.integers(1, 6),
    width=st.sampled_from([0.1, 0.25, 1.0, 7 / 3]),
    script=st.lists(
        st.tuples(st.booleans(), st.floats(0, 1.0), log_uniform), min_size=1, max_size=60
    ),
)
def test_rolling_histogram_equals_a_histogram_of_the_window(
    slices: int, width: float, script: list[tuple[bool, float, float]]
) -> None:
    """A snapshot has exactly the counts of a histogram fed the durations of its window."""
    rh = RollingHistogram(window=width * slices, slices=slices)
    t = 0.0
    events: list[tuple[float, float]] = []
    for is_snapshot, step, seconds in script:
        t += step * width * 2
        if not is_snapshot:
            rh.record(seconds, t)
            events.append((t, seconds))
            continue
        expected = LatencyHistogram()
        newest = bucket_of(t, rh.width)
        for et, x in events:
            if bucket_of(et, rh.width) > newest - slices:
                expected.record(x)
        got = rh.snapshot(t)
        assert got.counts == expected.counts
        assert got.max == expected.max


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0.0}, "window"),
        ({"window": -1.0}, "window"),
        ({"window": 1.0, "slices": 0}, "slices"),
        ({"window": 1.0, "now": math.nan}, "now"),
    ],
)
def test_rolling_histogram_refuses_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    """Bad parameters raise ValueError at construction, naming the parameter."""
    with pytest.raises(ValueError, match=message):
        RollingHistogram(**kwargs)


@pytest.mark.usefixtures("_switch_often")
@pytest.mark.parametrize("locked", [False, True], ids=["lock-free", "locked"])
def test_rolling_histogram_loses_nothing_under_threads(locked: bool) -> None:
    """Threads recording across slice boundaries: the snapshot holds every duration."""
    rh = RollingHistogram(window=10.0, slices=5)
    record = rh._record_locked if locked else rh._record_unlocked

    def work(i: int) -> None:
        for k in range(4000):
            record(0.002, k * 1e-3)  # 0..4 s: three slices

    run_threads(work, 8)
    assert rh.snapshot(4.0).n == 32000
