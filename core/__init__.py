"""sage_resilience.core: the standard resilience primitives, correct and cheap.

Retry with every strategy and jitter, a circuit breaker over sliding windows, a registry, presets,
events and an injectable clock. Standard library only.
"""

from .backoff import Backoff, Jitter, RetryStrategy
from .breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerStats,
    CircuitState,
    WindowType,
    circuit_breaker,
)
from .classify import (
    Classifier,
    FailureKind,
    classify,
    register_classifier,
    unregister_classifier,
)
from .clock import (
    SYSTEM_CLOCK,
    Clock,
    FakeClock,
    RandomSource,
    SystemClock,
    default_clock,
    resolve_clock,
    use_clock,
)
from .errors import (
    CircuitBreakerOpenError,
    PermanentError,
    RejectedError,
    ResilienceError,
    ThrottledError,
    TransientError,
)
from .events import (
    BreakerOutcome,
    BreakerStateChanged,
    CallRejected,
    Event,
    Listener,
    RetryAttempted,
    RetryGaveUp,
    RetrySucceeded,
    SettingChanged,
)
from .presets import (
    DATABASE_BREAKER_CONFIG,
    DATABASE_RETRY_CONFIG,
    DEFAULT_BREAKER_CONFIG,
    DEFAULT_RETRY_CONFIG,
    NETWORK_BREAKER_CONFIG,
    NETWORK_RETRY_CONFIG,
    is_transient_database_error,
    is_transient_network_error,
)
from .registry import NamedPolicy, Registry, breaker_manager
from .retry import AttemptContext, Retry, RetryConfig, RetryStats, retry
from .window import CountWindow, TimeWindow, WindowSnapshot

__all__ = [
    "DATABASE_BREAKER_CONFIG",
    "DATABASE_RETRY_CONFIG",
    "DEFAULT_BREAKER_CONFIG",
    "DEFAULT_RETRY_CONFIG",
    "NETWORK_BREAKER_CONFIG",
    "NETWORK_RETRY_CONFIG",
    "SYSTEM_CLOCK",
    "AttemptContext",
    "Backoff",
    "BreakerOutcome",
    "BreakerStateChanged",
    "CallRejected",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerOpenError",
    "CircuitBreakerStats",
    "CircuitState",
    "Classifier",
    "Clock",
    "CountWindow",
    "Event",
    "FailureKind",
    "FakeClock",
    "Jitter",
    "Listener",
    "NamedPolicy",
    "PermanentError",
    "RandomSource",
    "Registry",
    "RejectedError",
    "ResilienceError",
    "Retry",
    "RetryAttempted",
    "RetryConfig",
    "RetryGaveUp",
    "RetryStats",
    "RetryStrategy",
    "RetrySucceeded",
    "SettingChanged",
    "SystemClock",
    "ThrottledError",
    "TimeWindow",
    "TransientError",
    "WindowSnapshot",
    "WindowType",
    "breaker_manager",
    "circuit_breaker",
    "classify",
    "default_clock",
    "is_transient_database_error",
    "is_transient_network_error",
    "register_classifier",
    "resolve_clock",
    "retry",
    "unregister_classifier",
    "use_clock",
]
