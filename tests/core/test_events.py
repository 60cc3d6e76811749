"""Events: frozen records, delivery that survives raising listeners, and listener bookkeeping."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest
from sage_resilience.core import (
    BreakerOutcome,
    BreakerStateChanged,
    CallRejected,
    CircuitBreaker,
    Event,
    FakeClock,
    Listener,
    RetryAttempted,
    RetryGaveUp,
    RetrySucceeded,
)
from sage_resilience.core.events import Observable, emit


class Recorder:
    """A listener object (with a method) that records what it was given."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.seen.append(event)


class Policy(Observable):
    """The smallest Observable, counting how often its listener tuple changed."""

    __slots__ = ("changes",)

    def __init__(self) -> None:
        self._listeners = ()
        self.changes = 0

    def _listeners_changed(self) -> None:
        self.changes += 1


EVENT = BreakerStateChanged(
    policy="p", time=1.0, old_state="closed", new_state="open", reason="test"
)


@pytest.mark.parametrize(
    "event",
    [
        EVENT,
        BreakerOutcome(
            policy="p", time=1.0, outcome="success", duration=0.1, slow=False, exception=None
        ),
        CallRejected(policy="p", time=1.0, kind="circuit_breaker", reason="x", retry_after=None),
        RetryAttempted(policy="p", time=1.0, attempt=1, delay=0.5, exception="E"),
        RetrySucceeded(policy="p", time=1.0, attempts=2, elapsed=0.5),
        RetryGaveUp(policy="p", time=1.0, attempts=3, reason="attempts_exhausted", exception=None),
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_are_frozen_keyword_only_records(event: Event) -> None:
    """Every event is an immutable Event with a policy and a time, built by keyword only."""
    assert isinstance(event, Event)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.policy = "other"  # type: ignore[misc]
    values = [getattr(event, f.name) for f in dataclasses.fields(event)]
    with pytest.raises(TypeError):
        type(event)(*values)
    assert type(event)(**dataclasses.asdict(event)) == event


def test_emit_delivers_to_every_listener_in_order() -> None:
    """emit hands the same event to each listener, in order."""
    order: list[tuple[str, Event]] = []
    emit([lambda e: order.append(("a", e)), lambda e: order.append(("b", e))], EVENT)
    assert order == [("a", EVENT), ("b", EVENT)]


def test_emit_survives_a_raising_listener(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises is logged and the next listeners still get the event."""
    got: list[Event] = []

    def broken(event: Event) -> None:
        raise ValueError("listener bug")

    with caplog.at_level(logging.ERROR, logger="sage_resilience"):
        emit([broken, got.append, broken], EVENT)
    assert got == [EVENT]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info and r.exc_info[0] is ValueError for r in errors)


def test_emit_lets_base_exceptions_through() -> None:
    """Only Exceptions are swallowed: KeyboardInterrupt from a listener propagates."""

    def interrupt(event: Event) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        emit([interrupt], EVENT)


def test_any_callable_is_a_listener() -> None:
    """Functions, bound methods and lambdas satisfy the Listener protocol."""
    rec = Recorder()
    for candidate in (rec.on_event, print, lambda e: None):
        assert isinstance(candidate, Listener)


def test_add_listener_twice_has_no_effect() -> None:
    """Adding an equal listener again neither duplicates it nor reports a change."""
    policy = Policy()
    rec = Recorder()
    policy.add_listener(rec.on_event)
    policy.add_listener(rec.on_event)  # a new bound-method object, equal to the first
    assert policy.listeners == (rec.on_event,)
    assert policy.changes == 1


def test_add_listener_rejects_non_callables() -> None:
    """A listener must be callable."""
    with pytest.raises(TypeError, match="callable"):
        Policy().add_listener(42)  # type: ignore[arg-type]


def test_regression_remove_listener_matches_bound_methods() -> None:
    """Regression: remove_listener(obj.method) removes the listener added as obj.method."""
    # Each attribute access makes a new bound method; removal compared by identity.
    policy = Policy()
    rec, other = Recorder(), Recorder()
    policy.add_listener(rec.on_event)
    policy.add_listener(other.on_event)
    policy.remove_listener(rec.on_event)
    assert policy.listeners == (other.on_event,)
    assert policy.changes == 3


def test_regression_breaker_listener_removed_by_bound_method(clock: FakeClock) -> None:
    """Regression: a breaker stops delivering to a removed bound-method listener."""
    rec = Recorder()
    b = CircuitBreaker("rm", clock=clock, listeners=[rec.on_event])
    b.call(lambda: 1)
    b.remove_listener(rec.on_event)
    b.call(lambda: 1)
    assert len(rec.seen) == 1
    assert b._fast_gen >= 0
    assert b.stats().successes == 2


def test_remove_absent_listener_is_quiet() -> None:
    """Removing a listener that was never added is no error and no change."""
    policy = Policy()
    policy.remove_listener(Recorder().on_event)
    assert policy.listeners == ()
    assert policy.changes == 0


def test_concurrent_add_listener_loses_none() -> None:
    """Listeners added from many threads at once are all kept."""
    policy = Policy()
    recorders = [Recorder() for _ in range(64)]
    barrier = threading.Barrier(8)

    def add(chunk: list[Recorder]) -> None:
        barrier.wait(timeout=10)
        for r in chunk:
            policy.add_listener(r.on_event)

    threads = [threading.Thread(target=add, args=(recorders[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(policy.listeners) == len(recorders)
    assert set(policy.listeners) == {r.on_event for r in recorders}


def test_listener_added_mid_flight_sees_later_events(clock: FakeClock) -> None:
    """A listener attached to a breaker in use gets the events from then on, none before."""
    rec = Recorder()
    b = CircuitBreaker("late", clock=clock)
    b.call(lambda: 1)
    b.add_listener(rec.on_event)
    b.call(lambda: 2)
    assert [(type(e), e.time) for e in rec.seen] == [(BreakerOutcome, clock.now())]
