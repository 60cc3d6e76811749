"""Sliding windows: bucket-by-bucket expiry of the time window, the last N of the count window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sage_resilience.core import CountWindow, TimeWindow, WindowSnapshot

T0 = 1000.0


def test_snapshot_rates_are_ratios_of_calls() -> None:
    """WindowSnapshot's failure and slow-call rates are fractions of its calls (0 when empty)."""
    snap = WindowSnapshot(calls=8, failures=2, slow_calls=6)
    assert snap.failure_rate == 2 / 8
    assert snap.slow_call_rate == 6 / 8
    assert WindowSnapshot(0, 0, 0).failure_rate == 0.0
    assert WindowSnapshot(0, 0, 0).slow_call_rate == 0.0


# -- TimeWindow ---------------------------------------------------------------------------------


def test_time_window_counts_successes_failures_and_slow_calls() -> None:
    """Calls are successes plus failures; slow calls are counted whatever the outcome."""
    w = TimeWindow(10.0, 5, now=T0)
    w.record_success(T0)
    w.record_success(T0, slow=True)
    w.record_failure(T0)
    w.record_failure(T0, slow=True)
    assert w.snapshot(T0) == WindowSnapshot(calls=4, failures=2, slow_calls=2)
    assert (w.total_successes, w.total_failures, w.total_slow) == (2, 2, 2)


def test_time_window_expires_bucket_by_bucket() -> None:
    """Each bucket leaves the window exactly `buckets` bucket widths after it began."""
    duration, buckets = 10.0, 5
    width = duration / buckets
    w = TimeWindow(duration, buckets, now=T0)
    # One failure in each of the first `buckets` buckets, i successes in bucket i.
    for i in range(buckets):
        t = T0 + i * width
        w.record_failure(t)
        for _ in range(i):
            w.record_success(t)
    full = w.snapshot(T0 + (buckets - 1) * width)
    assert full.calls == buckets + sum(range(buckets))
    assert full.failures == buckets
    for expired in range(1, buckets + 1):
        t = T0 + (buckets - 1 + expired) * width
        remaining = range(expired, buckets)
        assert w.snapshot(t) == WindowSnapshot(
            calls=len(remaining) + sum(remaining), failures=len(remaining), slow_calls=0
        )


def test_time_window_covers_current_partial_bucket_plus_full_ones() -> None:
    """An event late in a bucket expires with that bucket, not `duration` seconds after itself."""
    duration, buckets = 10.0, 5
    width = duration / buckets
    w = TimeWindow(duration, buckets, now=T0)
    late = T0 + 0.9 * width
    w.record_failure(late)
    # Still inside just before its bucket (which began at T0) is `duration` old...
    assert w.snapshot(T0 + duration - 0.01 * width).failures == 1
    # ...and gone when the bucket is, although the event itself is younger than `duration`.
    assert w.snapshot(T0 + duration).failures == 0
    assert T0 + duration - late < duration


def test_time_window_jump_longer_than_window_empties_it() -> None:
    """After a gap longer than the window, nothing recorded before the gap is counted."""
    w = TimeWindow(6.0, 3, now=T0)
    for k in range(3):
        w.record_failure(T0 + 2.0 * k, slow=True)
        w.record_success(T0 + 2.0 * k)
    after = T0 + 4.0 + 6.0 * 7
    assert w.snapshot(after) == WindowSnapshot(0, 0, 0)
    w.record_success(after)
    assert w.snapshot(after) == WindowSnapshot(1, 0, 0)
    assert w.total_failures == 3
    assert w.total_successes == 4


def test_time_window_snapshot_rotates_without_records() -> None:
    """Reading the window alone ages it: a snapshot never counts expired buckets."""
    w = TimeWindow(4.0, 4, now=T0)
    w.record_failure(T0)
    assert w.snapshot(T0 + 3.0).failures == 1
    assert w.snapshot(T0 + 4.0).failures == 0
    # and a second read at the same time changes nothing
    assert w.snapshot(T0 + 4.0).failures == 0


def test_time_window_rotate_then_plain_increment_is_the_hot_path() -> None:
    """The breaker's lock-free protocol (rotate at the boundary, then `successes += 1`) counts."""
    w = TimeWindow(4.0, 4, now=T0)
    w.record_failure(T0)
    t = T0 + 4.0
    assert t >= w.next_boundary
    w.rotate(t)
    assert w.next_boundary > t
    w.successes += 1
    assert w.snapshot(t) == WindowSnapshot(1, 0, 0)


def test_time_window_clear_keeps_totals() -> None:
    """clear() empties the window but keeps the cumulative counts."""
    w = TimeWindow(10.0, 5, now=T0)
    w.record_success(T0, slow=True)
    w.record_failure(T0)
    w.clear(T0 + 1.0)
    assert w.snapshot(T0 + 1.0) == WindowSnapshot(0, 0, 0)
    assert (w.total_successes, w.total_failures, w.total_slow) == (1, 1, 1)
    w.record_failure(T0 + 1.0)
    assert w.snapshot(T0 + 1.0) == WindowSnapshot(1, 1, 0)
    assert w.total_failures == 2


def test_time_window_reset_zeroes_everything() -> None:
    """reset() forgets the window and the cumulative totals."""
    w = TimeWindow(10.0, 5, now=T0)
    w.record_success(T0, slow=True)
    w.record_failure(T0)
    w.reset(T0 + 3.0)
    assert w.snapshot(T0 + 3.0) == WindowSnapshot(0, 0, 0)
    assert (w.total_successes, w.total_failures, w.total_slow) == (0, 0, 0)


def test_time_window_single_bucket() -> None:
    """With one bucket the window is the current bucket only."""
    w = TimeWindow(5.0, 1, now=T0)
    w.record_failure(T0 + 4.9)
    assert w.snapshot(T0 + 4.9).failures == 1
    assert w.snapshot(T0 + 5.0).failures == 0


@pytest.mark.parametrize(
    ("kwargs", "field", "error"),
    [
        ({"duration": 0.0}, "duration", ValueError),
        ({"duration": -1.0}, "duration", ValueError),
        ({"duration": float("inf")}, "duration", ValueError),
        ({"duration": "10"}, "duration", TypeError),
        ({"duration": 10.0, "buckets": 0}, "buckets", ValueError),
        ({"duration": 10.0, "buckets": 2.0}, "buckets", TypeError),
    ],
)
def test_time_window_rejects_bad_shape(
    kwargs: dict[str, object], field: str, error: type[Exception]
) -> None:
    """A bad duration or bucket count raises at construction, naming the argument."""
    with pytest.raises(error, match=field):
        TimeWindow(**kwargs)  # type: ignore[arg-type]


_OUTCOMES = st.sampled_from(["success", "failure", "slow_success", "slow_failure", "clear"])


@settings(max_examples=200)
@given(
    duration=st.sampled_from([1.0, 6.0, 10.0, 60.0, 0.3]),
    buckets=st.integers(min_value=1, max_value=12),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=25.0, allow_nan=False), _OUTCOMES),
        max_size=60,
    ),
)
def test_time_window_matches_brute_force_recount(
    duration: float, buckets: int, steps: list[tuple[float, str]]
) -> None:
    """Snapshots equal a recount of events in the last `buckets` bucket epochs (since clear())."""
    width = duration / buckets
    t = T0
    w = TimeWindow(duration, buckets, now=t)
    events: list[tuple[int, bool, bool]] = []  # (epoch, failed, slow)
    totals = [0, 0, 0]
    for advance, outcome in steps:
        t += advance
        epoch = int(t // width)
        if outcome == "clear":
            w.clear(t)
            events.clear()
        else:
            failed = outcome.endswith("failure")
            slow = outcome.startswith("slow")
            (w.record_failure if failed else w.record_success)(t, slow)
            events.append((epoch, failed, slow))
            totals[1 if failed else 0] += 1
            totals[2] += slow
        live = [e for e in events if e[0] > epoch - buckets]
        expected = WindowSnapshot(
            calls=len(live),
            failures=sum(1 for e in live if e[1]),
            slow_calls=sum(1 for e in live if e[2]),
        )
        assert w.snapshot(t) == expected
        assert [w.total_successes, w.total_failures, w.total_slow] == totals


# -- CountWindow --------------------------------------------------------------------------------


def test_count_window_keeps_last_n_outcomes() -> None:
    """Only the last `size` outcomes are in the window; older ones drop out one by one."""
    w = CountWindow(3, now=T0)
    w.record_failure(T0, slow=True)
    w.record_failure(T0)
    w.record_success(T0)
    assert w.snapshot(T0) == WindowSnapshot(3, 2, 1)
    w.record_success(T0)  # pushes out the slow failure
    assert w.snapshot(T0) == WindowSnapshot(3, 1, 0)
    w.record_success(T0, slow=True)  # pushes out the second failure
    assert w.snapshot(T0) == WindowSnapshot(3, 0, 1)
    assert (w.total_successes, w.total_failures, w.total_slow) == (3, 2, 2)


def test_count_window_does_not_age_with_time() -> None:
    """A count window keeps its outcomes however much time passes."""
    w = CountWindow(5, now=T0)
    w.record_failure(T0)
    w.rotate(T0 + 10_000.0)
    assert w.snapshot(T0 + 10_000.0) == WindowSnapshot(1, 1, 0)


def test_count_window_clear_keeps_totals_and_reset_zeroes() -> None:
    """clear() empties the ring but keeps totals; reset() zeroes both."""
    w = CountWindow(4, now=T0)
    w.record_failure(T0, slow=True)
    w.record_success(T0)
    w.clear(T0)
    assert w.snapshot(T0) == WindowSnapshot(0, 0, 0)
    assert (w.total_successes, w.total_failures, w.total_slow) == (1, 1, 1)
    w.record_failure(T0)
    assert w.snapshot(T0) == WindowSnapshot(1, 1, 0)
    w.reset(T0)
    assert w.snapshot(T0) == WindowSnapshot(0, 0, 0)
    assert (w.total_successes, w.total_failures, w.total_slow) == (0, 0, 0)


@pytest.mark.parametrize(("size", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError)])
def test_count_window_rejects_bad_size(size: object, error: type[Exception]) -> None:
    """A bad size raises at construction, naming it."""
    with pytest.raises(error, match="size"):
        CountWindow(size)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(
    size=st.integers(min_value=1, max_value=10),
    outcomes=st.lists(_OUTCOMES, max_size=60),
)
def test_count_window_equals_last_n_of_sequence(size: int, outcomes: list[str]) -> None:
    """Snapshots equal a recount of the last `size` outcomes of any sequence (since clear())."""
    w = CountWindow(size, now=T0)
    seen: list[tuple[bool, bool]] = []
    for outcome in outcomes:
        if outcome == "clear":
            w.clear(T0)
            seen.clear()
        else:
            failed = outcome.endswith("failure")
            slow = outcome.startswith("slow")
            (w.record_failure if failed else w.record_success)(T0, slow)
            seen.append((failed, slow))
        last = seen[-size:]
        assert w.snapshot(T0) == WindowSnapshot(
            calls=len(last),
            failures=sum(1 for f, _ in last if f),
            slow_calls=sum(1 for _, s in last if s),
        )


def test_windows_do_not_grow_with_calls() -> None:
    """Recording 100k outcomes leaves both windows' storage the size it was built with."""
    tw = TimeWindow(10.0, 7, now=T0)
    cw = CountWindow(50, now=T0)
    shapes_before = (len(tw._pos_succ), len(tw._pos_fail), len(tw._pos_slow), len(cw._ring))
    t = T0
    for i in range(100_000):
        t += 0.01
        if i % 3:
            tw.record_success(t)
            cw.record_success(t)
        else:
            tw.record_failure(t, slow=True)
            cw.record_failure(t, slow=True)
    shapes_after = (len(tw._pos_succ), len(tw._pos_fail), len(tw._pos_slow), len(cw._ring))
    assert shapes_after == shapes_before == (7, 7, 7, 50)
    assert cw.snapshot(t).calls == 50
