"""Ready-made configurations: the seed's DEFAULT, DATABASE and NETWORK presets, and matching
breaker presets, with failure classification that the seed lacked.

The seed retried everything, including SQL errors (syntax, unique violations) and validation
errors. Here the database presets retry and count only connection-level failures and timeouts,
recognised without importing a driver: OS-level connection errors, and PostgreSQL SQLSTATE classes
08 (connection exception), 53 (insufficient resources), 57 (operator intervention: admin
shutdown, cannot connect now, query cancelled by timeout), plus serialization failures and
deadlocks (40001, 40P01) which a retry of the whole statement resolves. Anything else carrying a
SQLSTATE is an error of the statement itself: permanent.
"""

from __future__ import annotations

from .backoff import RetryStrategy
from .breaker import CircuitBreakerConfig
from .errors import ThrottledError
from .retry import RetryConfig

__all__ = [
    "DATABASE_BREAKER_CONFIG",
    "DATABASE_RETRY_CONFIG",
    "DEFAULT_BREAKER_CONFIG",
    "DEFAULT_RETRY_CONFIG",
    "NETWORK_BREAKER_CONFIG",
    "NETWORK_RETRY_CONFIG",
    "is_network_failure",
    "is_transient_database_error",
    "is_transient_network_error",
]

_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
# asyncpg's client-side connection errors that carry no SQLSTATE.
_CONNECTION_ERROR_NAMES = frozenset(
    {"ConnectionDoesNotExistError", "InternalClientError", "ConnectionResetError"}
)
_TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_NETWORK_ERROR_SUFFIXES = (
    "Timeout",
    "TimeoutError",
    "ConnectError",
    "ConnectionError",
    "ReadError",
    "WriteError",
    "RemoteProtocolError",
    "ServerDisconnectedError",
    "ClientConnectorError",
    "ClientOSError",
)


def is_transient_database_error(exc: BaseException) -> bool:
    """Whether a database error is worth retrying (and counting against the database)."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES
    return type(exc).__name__ in _CONNECTION_ERROR_NAMES


def _status_of(exc: BaseException) -> int | None:
    for holder in (exc, getattr(exc, "response", None)):
        for attr in ("status_code", "status"):
            value = getattr(holder, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def is_transient_network_error(exc: BaseException) -> bool:
    """Whether a network/HTTP error is worth retrying: connection failures, timeouts, 408, 425,
    429 and 5xx gateway/unavailable answers (recognised for httpx and aiohttp by name)."""
    if isinstance(exc, OSError | TimeoutError | ThrottledError):
        return True
    status = _status_of(exc)
    if status is not None:
        return status in _TRANSIENT_HTTP_STATUS
    return type(exc).__name__.endswith(_NETWORK_ERROR_SUFFIXES)


def is_network_failure(exc: BaseException) -> bool:
    """Whether a network/HTTP error counts against the dependency's health (for a breaker):
    a transient one that is not throttling. A 429 means the service is up and asks us to slow
    down; that is the rate limiter's business, and counting it would open the breaker on a
    healthy, busy service."""
    if isinstance(exc, ThrottledError) or _status_of(exc) == 429:
        return False
    return is_transient_network_error(exc)


DEFAULT_RETRY_CONFIG = RetryConfig()
"""The seed's defaults: 3 attempts, 1 s exponential backoff (x2, capped at 60 s), jitter."""

DATABASE_RETRY_CONFIG = RetryConfig(
    max_attempts=3,
    initial_delay=0.5,
    max_delay=10.0,
    strategy=RetryStrategy.EXPONENTIAL,
    jitter=True,
    retry_condition=is_transient_database_error,
)
"""3 attempts, 0.5 s exponential (x2, capped at 10 s) with the seed's jitter; connection-level
errors only."""

NETWORK_RETRY_CONFIG = RetryConfig(
    max_attempts=4,
    initial_delay=1.0,
    max_delay=30.0,
    strategy=RetryStrategy.EXPONENTIAL,
    jitter=True,
    retry_condition=is_transient_network_error,
)
"""4 attempts, 1 s exponential (x2, capped at 30 s) with the seed's jitter; connection errors,
timeouts, 408, 425, 429 and 5xx gateway/unavailable answers only."""

DEFAULT_BREAKER_CONFIG = CircuitBreakerConfig()
"""The seed's defaults: open after 5 consecutive failures, 60 s recovery, 2 trial successes."""

DATABASE_BREAKER_CONFIG = CircuitBreakerConfig(
    failure_threshold=5,
    recovery_timeout=30.0,
    failure_condition=is_transient_database_error,
)
"""Open after 5 consecutive connection-level failures; SQL errors never count."""

NETWORK_BREAKER_CONFIG = CircuitBreakerConfig(
    failure_threshold=5,
    recovery_timeout=30.0,
    failure_condition=is_network_failure,
)
"""Open after 5 consecutive transport failures or 5xx answers; 4xx and 429 never count."""
