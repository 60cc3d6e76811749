"""Presets: the seed's retry configs with failure classification, and matching breaker configs."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from sage_resilience.core import (
    DATABASE_BREAKER_CONFIG,
    DATABASE_RETRY_CONFIG,
    DEFAULT_BREAKER_CONFIG,
    DEFAULT_RETRY_CONFIG,
    NETWORK_BREAKER_CONFIG,
    NETWORK_RETRY_CONFIG,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    FakeClock,
    Jitter,
    Retry,
    RetryConfig,
    RetryStrategy,
    ThrottledError,
    is_transient_database_error,
    is_transient_network_error,
)

# -- fake driver exceptions ---------------------------------------------------------------------


class PostgresError(Exception):
    """Shaped like asyncpg's and psycopg's errors: the SQLSTATE in ``.sqlstate``."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


class ConnectionDoesNotExistError(Exception):
    """asyncpg's client-side error for a connection that went away (no SQLSTATE here)."""


class HTTPStatusError(Exception):
    """Shaped like httpx's: the status on ``.response.status_code``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.response = type("Response", (), {"status_code": status})()


class ClientResponseError(Exception):
    """Shaped like aiohttp's: the status on ``.status``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class ConnectError(Exception):
    """Named like httpx's ConnectError (not an OSError)."""


class ReadTimeout(Exception):
    """Named like httpx's ReadTimeout."""


SQL_PERMANENT = {
    "syntax_error": PostgresError("42601"),
    "unique_violation": PostgresError("23505"),
    "invalid_text_representation": PostgresError("22P02"),
    "undefined_table": PostgresError("42P01"),
}
SQL_TRANSIENT = {
    "connection_failure": PostgresError("08006"),
    "admin_shutdown": PostgresError("57P01"),
    "too_many_connections": PostgresError("53300"),
    "serialization_failure": PostgresError("40001"),
    "deadlock": PostgresError("40P01"),
    "connection_refused": ConnectionRefusedError("refused"),
    "timeout": TimeoutError("timed out"),
    "asyncpg_connection_gone": ConnectionDoesNotExistError("gone"),
}
HTTP_TRANSIENT_STATUS = [429, 500, 503, 504]
HTTP_PERMANENT_STATUS = [400, 401, 403, 404]


def _attempts(config: RetryConfig, exc: Exception, clock: FakeClock) -> int:
    """How many times a call that always raises ``exc`` is attempted under ``config``."""
    attempts = 0

    def op() -> None:
        nonlocal attempts
        attempts += 1
        raise exc

    with pytest.raises(type(exc)):
        Retry(config, clock=clock).call(op)
    return attempts


def _breaker_state_after(
    config: CircuitBreakerConfig, exc: Exception, clock: FakeClock, n: int
) -> Any:
    b = CircuitBreaker("preset", config, clock=clock)

    def op() -> None:
        raise exc

    for _ in range(n):
        with pytest.raises(type(exc)):
            b.call(op)
    return b.state, b.stats()


# -- classification -----------------------------------------------------------------------------


@pytest.mark.parametrize("exc", SQL_TRANSIENT.values(), ids=SQL_TRANSIENT.keys())
def test_connection_level_database_errors_are_transient(exc: Exception) -> None:
    """Connection, resource, shutdown, serialization and timeout errors are transient."""
    assert is_transient_database_error(exc)


@pytest.mark.parametrize("exc", SQL_PERMANENT.values(), ids=SQL_PERMANENT.keys())
def test_sql_errors_are_permanent(exc: Exception) -> None:
    """Errors of the statement itself (syntax, constraint, data) are not transient."""
    assert not is_transient_database_error(exc)


def test_plain_errors_are_not_transient_database_errors() -> None:
    """An exception with no SQLSTATE and no connection-level type is not transient."""
    assert not is_transient_database_error(ValueError("bad input"))


@pytest.mark.parametrize("status", HTTP_TRANSIENT_STATUS)
@pytest.mark.parametrize("shape", [HTTPStatusError, ClientResponseError])
def test_transient_http_statuses(status: int, shape: type[Exception]) -> None:
    """429 and the 5xx answers are transient, on .response.status_code or on .status."""
    assert is_transient_network_error(shape(status))


@pytest.mark.parametrize("status", HTTP_PERMANENT_STATUS)
@pytest.mark.parametrize("shape", [HTTPStatusError, ClientResponseError])
def test_client_error_statuses_are_permanent(status: int, shape: type[Exception]) -> None:
    """4xx answers other than 408/425/429 are not transient."""
    assert not is_transient_network_error(shape(status))


@pytest.mark.parametrize(
    "exc",
    [
        ConnectError("refused"),
        ReadTimeout("slow"),
        ConnectionResetError("reset"),
        TimeoutError("timed out"),
        ThrottledError("slow down", retry_after=2.0),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transport_failures_are_transient(exc: Exception) -> None:
    """Connection failures and timeouts (by type, or named like httpx/aiohttp's) are transient."""
    assert is_transient_network_error(exc)


def test_unrelated_errors_are_not_transient_network_errors() -> None:
    """A bug in our own code (ValueError) is not a network error."""
    assert not is_transient_network_error(ValueError("bad payload"))


# -- retry presets ------------------------------------------------------------------------------


def test_default_retry_config_is_the_seeds() -> None:
    """DEFAULT: 3 attempts, 1 s exponential backoff x2 capped at 60 s, the seed's jitter."""
    c = DEFAULT_RETRY_CONFIG
    assert (c.max_attempts, c.initial_delay, c.max_delay, c.exponential_base) == (3, 1.0, 60.0, 2.0)
    assert c.strategy is RetryStrategy.EXPONENTIAL
    assert c.jitter is Jitter.EQUAL
    assert c == RetryConfig()


def test_database_retry_config_numbers() -> None:
    """DATABASE: 3 attempts, 0.5 s exponential (x2) capped at 10 s, the seed's jitter."""
    c = DATABASE_RETRY_CONFIG
    assert (c.max_attempts, c.initial_delay, c.max_delay, c.exponential_base) == (3, 0.5, 10.0, 2.0)
    assert c.strategy is RetryStrategy.EXPONENTIAL
    assert c.jitter is Jitter.EQUAL


def test_network_retry_config_numbers() -> None:
    """NETWORK: 4 attempts, 1 s exponential (x2) capped at 30 s, the seed's jitter."""
    c = NETWORK_RETRY_CONFIG
    assert (c.max_attempts, c.initial_delay, c.max_delay, c.exponential_base) == (4, 1.0, 30.0, 2.0)
    assert c.strategy is RetryStrategy.EXPONENTIAL
    assert c.jitter is Jitter.EQUAL


@pytest.mark.parametrize("exc", SQL_TRANSIENT.values(), ids=SQL_TRANSIENT.keys())
def test_database_retry_retries_transient_errors(exc: Exception, clock: FakeClock) -> None:
    """DATABASE_RETRY_CONFIG uses every attempt on transient errors, with jittered x2 delays."""
    assert _attempts(DATABASE_RETRY_CONFIG, exc, clock) == DATABASE_RETRY_CONFIG.max_attempts
    assert len(clock.sleeps) == DATABASE_RETRY_CONFIG.max_attempts - 1
    for n, slept in enumerate(clock.sleeps):
        d = DATABASE_RETRY_CONFIG.initial_delay * 2**n
        assert d / 2 <= slept <= d


@pytest.mark.parametrize("exc", SQL_PERMANENT.values(), ids=SQL_PERMANENT.keys())
def test_database_retry_does_not_retry_sql_errors(exc: Exception, clock: FakeClock) -> None:
    """DATABASE_RETRY_CONFIG never retries SQL errors: one attempt, no sleep."""
    assert _attempts(DATABASE_RETRY_CONFIG, exc, clock) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", HTTP_TRANSIENT_STATUS)
def test_network_retry_retries_transient_statuses(status: int, clock: FakeClock) -> None:
    """NETWORK_RETRY_CONFIG retries 429 and 5xx up to its attempts."""
    attempts = _attempts(NETWORK_RETRY_CONFIG, HTTPStatusError(status), clock)
    assert attempts == NETWORK_RETRY_CONFIG.max_attempts


@pytest.mark.parametrize("status", HTTP_PERMANENT_STATUS)
def test_network_retry_does_not_retry_client_errors(status: int, clock: FakeClock) -> None:
    """NETWORK_RETRY_CONFIG does not retry 4xx client errors."""
    assert _attempts(NETWORK_RETRY_CONFIG, HTTPStatusError(status), clock) == 1


def test_network_retry_retries_httpx_style_connect_error(clock: FakeClock) -> None:
    """A ConnectError named like httpx's is retried by NETWORK_RETRY_CONFIG."""
    assert _attempts(NETWORK_RETRY_CONFIG, ConnectError("x"), clock) == 4


# -- breaker presets ----------------------------------------------------------------------------


def test_default_breaker_config_is_the_seeds() -> None:
    """DEFAULT_BREAKER_CONFIG is the seed's: 5 failures, 60 s, 2 trial successes."""
    assert CircuitBreakerConfig() == DEFAULT_BREAKER_CONFIG
    assert (DEFAULT_BREAKER_CONFIG.failure_threshold, DEFAULT_BREAKER_CONFIG.recovery_timeout) == (
        5,
        60.0,
    )
    assert DEFAULT_BREAKER_CONFIG.success_threshold == 2


@pytest.mark.parametrize("config", [DATABASE_BREAKER_CONFIG, NETWORK_BREAKER_CONFIG])
def test_breaker_preset_numbers(config: CircuitBreakerConfig) -> None:
    """The database and network breakers open after 5 counted failures and wait 30 s."""
    assert (config.failure_threshold, config.recovery_timeout) == (5, 30.0)


@pytest.mark.parametrize("exc", SQL_PERMANENT.values(), ids=SQL_PERMANENT.keys())
def test_database_breaker_ignores_sql_errors(exc: Exception, clock: FakeClock) -> None:
    """SQL errors never count against the database: many of them leave the breaker closed."""
    state, stats = _breaker_state_after(DATABASE_BREAKER_CONFIG, exc, clock, 20)
    assert state is CircuitState.CLOSED
    assert (stats.failures, stats.ignored) == (0, 20)


@pytest.mark.parametrize("exc", SQL_TRANSIENT.values(), ids=SQL_TRANSIENT.keys())
def test_database_breaker_counts_connection_errors(exc: Exception, clock: FakeClock) -> None:
    """Connection-level errors count: failure_threshold of them in a row open the breaker."""
    n = DATABASE_BREAKER_CONFIG.failure_threshold
    assert n is not None
    state, stats = _breaker_state_after(DATABASE_BREAKER_CONFIG, exc, clock, n)
    assert state is CircuitState.OPEN
    assert stats.failures == n


@pytest.mark.parametrize("status", HTTP_PERMANENT_STATUS)
def test_network_breaker_ignores_client_errors(status: int, clock: FakeClock) -> None:
    """4xx answers never trip the network breaker."""
    state, stats = _breaker_state_after(NETWORK_BREAKER_CONFIG, HTTPStatusError(status), clock, 20)
    assert state is CircuitState.CLOSED
    assert stats.ignored == 20


@pytest.mark.parametrize("status", [s for s in HTTP_TRANSIENT_STATUS if s != 429])
def test_network_breaker_counts_transient_statuses(status: int, clock: FakeClock) -> None:
    """Transient answers (408, 425, 5xx) count against the network dependency."""
    n = NETWORK_BREAKER_CONFIG.failure_threshold
    assert n is not None
    state, _ = _breaker_state_after(NETWORK_BREAKER_CONFIG, ClientResponseError(status), clock, n)
    assert state is CircuitState.OPEN


def test_network_breaker_ignores_throttling(clock: FakeClock) -> None:
    """429 answers (status or ThrottledError) never open the network breaker: the service is up."""
    from sage_resilience.core import ThrottledError

    for exc in (ClientResponseError(429), ThrottledError("429", retry_after=1.0)):
        state, stats = _breaker_state_after(NETWORK_BREAKER_CONFIG, exc, clock, 20)
        assert state is CircuitState.CLOSED
        assert stats.failures == 0


def test_presets_are_frozen() -> None:
    """Presets cannot be changed in place; variants come from dataclasses.replace."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATABASE_RETRY_CONFIG.max_attempts = 10  # type: ignore[misc]
    variant = dataclasses.replace(DATABASE_BREAKER_CONFIG, failure_threshold=2)
    assert variant.failure_condition is DATABASE_BREAKER_CONFIG.failure_condition
    assert DATABASE_BREAKER_CONFIG.failure_threshold == 5
