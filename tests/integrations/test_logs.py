"""The logging listener: levels, messages and structured fields of real policies' events."""

from __future__ import annotations

import logging

import pytest
from sage_resilience.core import (
    BreakerOutcome,
    BreakerStateChanged,
    CallRejected,
    CircuitBreaker,
    Event,
    FakeClock,
    FallbackUsed,
    PermanentError,
    Retry,
    RetryAttempted,
    RetryConfig,
    RetryGaveUp,
    RetrySucceeded,
    SettingChanged,
)
from sage_resilience.integrations import LoggingListener
from support.telemetry import Scenario, drive

ALL_DEBUG = {
    cls: logging.DEBUG
    for cls in (
        BreakerOutcome,
        BreakerStateChanged,
        CallRejected,
        FallbackUsed,
        RetryAttempted,
        RetryGaveUp,
        RetrySucceeded,
        SettingChanged,
    )
}


def _ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "event")]


def test_breaker_transitions_log_a_warning_with_fields(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """Opening logs one WARNING on 'sage_resilience' carrying policy, event, state, reason."""
    breaker = CircuitBreaker("db", failure_threshold=1, clock=clock, listeners=[LoggingListener()])
    caplog.set_level(logging.DEBUG, logger="sage_resilience")
    with pytest.raises(ConnectionError):
        breaker.call(_broken)
    (record,) = [r for r in _ours(caplog) if r.levelno >= logging.WARNING]
    assert record.name == "sage_resilience"
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "circuit breaker 'db': closed -> open (consecutive_failures)"
    fields = record.__dict__
    assert fields["policy"] == "db"
    assert fields["event"] == "breaker_state_changed"
    assert fields["kind"] == "circuit_breaker"
    assert fields["state"] == "open"
    assert fields["old_state"] == "closed"
    assert fields["reason"] == "consecutive_failures"
    assert fields["event_time"] == clock.now()


def test_retries_log_info_and_give_ups_warn(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """Each retry is INFO with attempt and delay; running out of attempts is a WARNING."""
    retry = Retry(
        RetryConfig(max_attempts=3, initial_delay=0.5, jitter=False, clock=clock), name="embed"
    )
    retry.add_listener(LoggingListener())
    caplog.set_level(logging.DEBUG, logger="sage_resilience")
    with pytest.raises(ConnectionError):
        retry.call(_broken)
    records = _ours(caplog)
    assert [(r.levelno, r.__dict__["event"]) for r in records] == [
        (logging.INFO, "retry_attempted"),
        (logging.INFO, "retry_attempted"),
        (logging.WARNING, "retry_gave_up"),
    ]
    first, second, gave_up = records
    assert (first.__dict__["attempt"], first.__dict__["delay"]) == (1, 0.5)
    assert (second.__dict__["attempt"], second.__dict__["delay"]) == (2, 1.0)
    assert first.__dict__["exception"] == "ConnectionError"
    assert gave_up.__dict__["reason"] == "attempts_exhausted"
    assert gave_up.__dict__["attempts"] == 3
    assert "gave up after 3 attempts (attempts_exhausted" in gave_up.getMessage()


def test_success_after_retry_is_info_and_first_try_success_is_silent(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """A call that needed a retry logs its success at INFO; one that did not logs nothing."""
    retry = Retry(
        RetryConfig(max_attempts=2, initial_delay=0.1, jitter=False, clock=clock), name="r"
    )
    retry.add_listener(LoggingListener())
    caplog.set_level(logging.DEBUG, logger="sage_resilience")
    assert retry.call(lambda: 1) == 1
    assert _ours(caplog) == []
    outcomes = iter([ConnectionError(), None])

    def flaky() -> int:
        error = next(outcomes)
        if error is not None:
            raise error
        return 2

    assert retry.call(flaky) == 2
    succeeded = [r for r in _ours(caplog) if r.__dict__["event"] == "retry_succeeded"]
    assert len(succeeded) == 1
    assert succeeded[0].levelno == logging.INFO
    assert succeeded[0].getMessage() == "retry 'r': succeeded after 2 attempts in 0.100s"


def test_not_retryable_give_up_is_only_debug(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    """A permanent error ends the retry at once: DEBUG, since the caller sees the error."""
    retry = Retry(RetryConfig(max_attempts=3, clock=clock), name="r")
    retry.add_listener(LoggingListener())
    caplog.set_level(logging.DEBUG, logger="sage_resilience")
    with pytest.raises(PermanentError):
        retry.call(_permanent)
    (record,) = _ours(caplog)
    assert record.levelno == logging.DEBUG
    assert record.__dict__["reason"] == "not_retryable"


def test_defaults_are_quiet_at_info(scenario: Scenario, caplog: pytest.LogCaptureFixture) -> None:
    """Driving every policy logs at INFO and above only transitions, retries, give-ups, settings."""
    scenario.registry.add_listener(LoggingListener())
    caplog.set_level(logging.INFO, logger="sage_resilience")
    drive(scenario)
    seen = {(r.levelname, r.__dict__["event"]) for r in _ours(caplog)}
    assert seen == {
        ("WARNING", "breaker_state_changed"),
        ("INFO", "retry_attempted"),
        ("INFO", "retry_succeeded"),
        ("WARNING", "retry_gave_up"),
        ("INFO", "setting_changed"),
    }


def test_per_call_outcomes_are_never_logged_by_default(
    scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    """Even at DEBUG, a breaker's per-call outcomes produce no record unless asked for."""
    scenario.registry.add_listener(LoggingListener())
    caplog.set_level(logging.DEBUG, logger="sage_resilience")
    drive(scenario)
    events = {r.__dict__["event"] for r in _ours(caplog)}
    assert "breaker_outcome" not in events
    assert {"call_rejected", "fallback_used"} <= events


def test_levels_override_per_event_type(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    """levels= can turn outcomes on at INFO and silence transitions with None."""
    listener = LoggingListener(levels={BreakerOutcome: logging.INFO, BreakerStateChanged: None})
    breaker = CircuitBreaker("db", failure_threshold=1, clock=clock, listeners=[listener])
    caplog.set_level(logging.DEBUG, logger="sage_resilience")
    breaker.call(lambda: 1)
    with pytest.raises(ConnectionError):
        breaker.call(_broken)
    assert [(r.levelno, r.__dict__["outcome"]) for r in _ours(caplog)] == [
        (logging.INFO, "success"),
        (logging.INFO, "failure"),
    ]


def test_every_event_logs_without_clashing_with_record_attributes(
    scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    """With every event type at DEBUG, each becomes a record whose fields are all present."""
    scenario.registry.add_listener(LoggingListener(levels=ALL_DEBUG))
    caplog.set_level(logging.DEBUG, logger="sage_resilience")
    drive(scenario)
    records = _ours(caplog)
    assert {r.__dict__["event"] for r in records} == {
        "breaker_outcome",
        "breaker_state_changed",
        "call_rejected",
        "fallback_used",
        "retry_attempted",
        "retry_gave_up",
        "retry_succeeded",
        "setting_changed",
    }
    for record in records:
        assert isinstance(record.__dict__["policy"], str)
        assert record.getMessage()


def test_a_disabled_level_builds_no_record(
    caplog: pytest.LogCaptureFixture, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the logger is not enabled for the level, the fields are never even built."""
    from sage_resilience.integrations import logs

    def boom(event: Event) -> dict[str, object]:
        raise AssertionError("built a record for a disabled level")

    monkeypatch.setattr(logs, "_extra", boom)
    logger = logging.getLogger("sage_resilience.test.quiet")
    logger.setLevel(logging.ERROR)
    breaker = CircuitBreaker(
        "db", failure_threshold=1, clock=clock, listeners=[LoggingListener(logger)]
    )
    with pytest.raises(ConnectionError):
        breaker.call(_broken)
    assert _ours(caplog) == []


def test_logger_by_name_and_level_for(caplog: pytest.LogCaptureFixture) -> None:
    """A logger name is resolved; level_for reports what an event would be logged at."""
    listener = LoggingListener("sage.custom")
    assert listener.logger is logging.getLogger("sage.custom")
    change = SettingChanged(policy="p", time=0.0, setting="rate", old=1.0, new=2.0, reason="x")
    outcome = BreakerOutcome(
        policy="p", time=0.0, outcome="success", duration=0.1, slow=False, exception=None
    )
    assert listener.level_for(change) == logging.INFO
    assert listener.level_for(outcome) is None
    caplog.set_level(logging.INFO, logger="sage.custom")
    listener(change)
    (record,) = _ours(caplog)
    assert record.name == "sage.custom"
    assert record.getMessage() == "'p': rate 1 -> 2 (x)"


def test_subclass_events_follow_their_base_entry() -> None:
    """A level given for an event type applies to its subclasses too."""

    class Shed(CallRejected):
        pass

    listener = LoggingListener(levels={CallRejected: logging.ERROR})
    shed = Shed(policy="p", time=0.0, kind="shedder", reason="shed", retry_after=None)
    assert listener.level_for(shed) == logging.ERROR
    assert LoggingListener().level_for(shed) == logging.DEBUG


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logger": 3}, "logger"),
        ({"levels": {int: logging.INFO}}, "event types"),
        ({"levels": {CallRejected: "INFO"}}, "int or None"),
        ({"levels": {CallRejected: True}}, "int or None"),
    ],
)
def test_bad_arguments_are_type_errors(kwargs: dict[str, object], match: str) -> None:
    """A logger that is not one, or levels not keyed by event types or not ints, is refused."""
    with pytest.raises(TypeError, match=match):
        LoggingListener(**kwargs)  # type: ignore[arg-type]


def _broken() -> int:
    raise ConnectionError("down")


def _permanent() -> int:
    raise PermanentError("bad request")
