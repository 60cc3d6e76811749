"""A Hypothesis rule-based state machine for the circuit breaker.

Random configs, outcomes (success, failure, ignored, cancelled, slow), time advances, permits
held open across other calls and completed later, reset, force_open and config swaps. After every
step: only legal transitions happened (each event continuing from the previous one), half-open
trials in flight never exceed the limit, and the stats match a model's counts and add up.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from sage_resilience.core import (
    BreakerStateChanged,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitState,
    Event,
    FakeClock,
    WindowType,
)

LEGAL = {
    ("closed", "open"),
    ("open", "half_open"),
    ("open", "closed"),
    ("half_open", "closed"),
    ("half_open", "open"),
}
SLOW = 2.0


@st.composite
def configs(draw: st.DrawFn) -> CircuitBreakerConfig:
    slow = draw(st.booleans())
    return CircuitBreakerConfig(
        failure_threshold=draw(st.one_of(st.none(), st.integers(1, 4))),
        recovery_timeout=draw(st.sampled_from([0.0, 1.0, 5.0])),
        success_threshold=draw(st.integers(1, 3)),
        half_open_max_calls=draw(st.one_of(st.none(), st.integers(1, 3))),
        failure_rate_threshold=draw(st.sampled_from([None, 0.5, 1.0])),
        minimum_calls=draw(st.integers(1, 5)),
        monitoring_window=draw(st.sampled_from([3.0, 10.0])),
        slow_call_duration=SLOW if slow else None,
        slow_call_rate_threshold=draw(st.sampled_from([None, 0.5])) if slow else None,
        ignore_exceptions=(KeyError,),
        window_type=draw(st.sampled_from(WindowType)),
        window_size=draw(st.sampled_from([None, 1, 4])),
    )


OUTCOMES = st.sampled_from(
    ["success", "failure", "ignored", "cancelled", "slow_success", "slow_failure"]
)


class BreakerMachine(RuleBasedStateMachine):
    """The breaker against a model of its counts, with every transition checked."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1000.0)
        self.events: list[Event] = []
        self.held: list[int] = []
        self.counts = {"successes": 0, "failures": 0, "ignored": 0, "rejected": 0}
        self.forced = False
        self.limit_high_water = 0
        self.breaker: CircuitBreaker

    @initialize(config=configs())
    def build(self, config: CircuitBreakerConfig) -> None:
        self.breaker = CircuitBreaker(
            "sm", config, clock=self.clock, listeners=[self.events.append]
        )

    # -- calls --------------------------------------------------------------------------------

    def _body(self, outcome: str) -> Any:
        clock = self.clock

        def fn() -> str:
            if outcome.startswith("slow"):
                clock.advance(SLOW)
            if outcome.endswith("failure"):
                raise ConnectionError("down")
            if outcome == "ignored":
                raise KeyError("ignored")
            if outcome == "cancelled":
                raise asyncio.CancelledError
            return "ok"

        return fn

    @rule(outcome=OUTCOMES)
    def call(self, outcome: str) -> None:
        try:
            self.breaker.call(self._body(outcome))
        except CircuitBreakerOpenError:
            self.counts["rejected"] += 1
        except (ConnectionError, KeyError, asyncio.CancelledError):
            self._count(outcome)
        else:
            self._count(outcome)

    def _count(self, outcome: str) -> None:
        if outcome.endswith("success"):
            self.counts["successes"] += 1
        elif outcome.endswith("failure"):
            self.counts["failures"] += 1
        elif outcome == "ignored":
            self.counts["ignored"] += 1

    @rule(n=st.integers(1, 4))
    def hold_permits(self, n: int) -> None:
        """Take up to n permits (concurrent callers) and keep them in flight across steps."""
        b = self.breaker
        for _ in range(n):
            permit = b.try_acquire()
            if permit is None:
                self.counts["rejected"] += 1
            else:
                self.held.append(permit)
                if b._state is CircuitState.HALF_OPEN:
                    # admitted only if a slot was free under the limit in force
                    assert b._half_open_in_flight <= b.config.max_half_open_calls

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), outcome=OUTCOMES, duration=st.sampled_from([0.0, SLOW]))
    def complete_permit(self, data: st.DataObject, outcome: str, duration: float) -> None:
        """Finish one held call, in any order, with any outcome."""
        permit = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        b = self.breaker
        if outcome.startswith("slow"):
            duration = SLOW
        if outcome.endswith("success"):
            b.on_success(permit, duration)
        elif outcome.endswith("failure"):
            b.on_failure(permit, duration, ConnectionError("down"))
        elif outcome == "ignored":
            b.on_exception(permit, KeyError("ignored"), duration)
        else:
            b.on_exception(permit, asyncio.CancelledError(), duration)
        self._count(outcome)

    # -- time and control ---------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def read_state(self) -> None:
        _ = self.breaker.state  # reading may move OPEN to HALF_OPEN

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.counts = dict.fromkeys(self.counts, 0)
        self.forced = False

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        self.forced = True

    @rule(config=configs())
    def update_config(self, config: CircuitBreakerConfig) -> None:
        self.breaker.update_config(config)

    @rule(failure_threshold=st.integers(1, 4))
    def retune_threshold(self, failure_threshold: int) -> None:
        b = self.breaker
        b.update_config(dataclasses.replace(b.config, failure_threshold=failure_threshold))

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def only_legal_transitions(self) -> None:
        changes = [e for e in self.events if isinstance(e, BreakerStateChanged)]
        previous = "closed"
        for e in changes:
            assert (e.old_state, e.new_state) in LEGAL, e
            assert e.old_state == previous, (previous, e)
            previous = e.new_state
        if hasattr(self, "breaker"):
            assert previous == self.breaker._state.value

    @invariant()
    def half_open_trials_within_limit(self) -> None:
        if not hasattr(self, "breaker"):
            return
        b = self.breaker
        limit = b.config.max_half_open_calls
        in_flight = b._half_open_in_flight
        if b._state is CircuitState.HALF_OPEN:
            # A config swap may lower the limit below the trials already admitted: bound by the
            # highest limit in force since this half-open phase began.
            self.limit_high_water = max(self.limit_high_water, limit)
            current = sum(1 for p in self.held if p == b._gen)
            assert in_flight == current
            assert 0 <= in_flight <= self.limit_high_water
        else:
            self.limit_high_water = limit
            assert in_flight == 0

    @invariant()
    def counts_add_up_and_match_the_model(self) -> None:
        if not hasattr(self, "breaker"):
            return
        s = self.breaker.stats()
        assert s.calls == s.successes + s.failures + s.ignored + s.rejected
        assert {
            "successes": s.successes,
            "failures": s.failures,
            "ignored": s.ignored,
            "rejected": s.rejected,
        } == self.counts
        assert 0.0 <= s.failure_rate <= 1.0

    @invariant()
    def forced_stays_open(self) -> None:
        if self.forced:
            assert self.breaker.state is CircuitState.OPEN
            assert self.breaker.retry_after is None


class TestBreakerStateMachine(BreakerMachine.TestCase):  # type: ignore[misc,valid-type]
    """Random operations never make an illegal transition, overfill half-open or lose a count."""

    settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
