"""sage_resilience.core: the standard resilience primitives, correct and cheap.

Retry with every strategy and jitter, a circuit breaker over sliding windows, a registry, presets,
events and an injectable clock. Standard library only.
"""

from ._callables import Policy, decorate, is_async_callable
from .backoff import Backoff, Jitter, RetryStrategy
from .breaker import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerStats,
    CircuitState,
    WindowType,
    circuit_breaker,
)
from .bulkhead import Bulkhead, BulkheadStats
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
    LoopClock,
    RandomSource,
    SystemClock,
    default_clock,
    resolve_clock,
    use_clock,
)
from .errors import (
    BulkheadFull,
    CircuitBreakerOpenError,
    PermanentError,
    RateLimitExceeded,
    RejectedError,
    ResilienceError,
    ResilienceTimeoutError,
    ShedError,
    ThrottledError,
    TransientError,
)
from .events import (
    BreakerOutcome,
    BreakerStateChanged,
    CallRejected,
    Event,
    FallbackUsed,
    Listener,
    RetryAttempted,
    RetryGaveUp,
    RetrySucceeded,
    SettingChanged,
)
from .fallback import Fallback, FallbackStats
from .hedge import Hedge, HedgeStats
from .pipeline import DEFAULT_ORDER, Pipeline
from .presets import (
    DATABASE_BREAKER_CONFIG,
    DATABASE_RETRY_CONFIG,
    DEFAULT_BREAKER_CONFIG,
    DEFAULT_RETRY_CONFIG,
    NETWORK_BREAKER_CONFIG,
    NETWORK_RETRY_CONFIG,
    is_network_failure,
    is_transient_database_error,
    is_transient_network_error,
)
from .ratelimit import RateLimiter, RateLimiterStats
from .registry import NamedPolicy, Registry, breaker_manager
from .retry import AttemptContext, Retry, RetryConfig, RetryStats, retry
from .timeout import Timeout, TimeoutStats
from .window import CountWindow, TimeWindow, WindowSnapshot

__all__ = [
    "DATABASE_BREAKER_CONFIG",
    "DATABASE_RETRY_CONFIG",
    "DEFAULT_BREAKER_CONFIG",
    "DEFAULT_ORDER",
    "DEFAULT_RETRY_CONFIG",
    "NETWORK_BREAKER_CONFIG",
    "NETWORK_RETRY_CONFIG",
    "SYSTEM_CLOCK",
    "AttemptContext",
    "Backoff",
    "BreakerOutcome",
    "BreakerStateChanged",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadStats",
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
    "Fallback",
    "FallbackStats",
    "FallbackUsed",
    "Hedge",
    "HedgeStats",
    "Jitter",
    "Listener",
    "LoopClock",
    "NamedPolicy",
    "PermanentError",
    "Pipeline",
    "Policy",
    "RandomSource",
    "RateLimitExceeded",
    "RateLimiter",
    "RateLimiterStats",
    "Registry",
    "RejectedError",
    "ResilienceError",
    "ResilienceTimeoutError",
    "Retry",
    "RetryAttempted",
    "RetryConfig",
    "RetryGaveUp",
    "RetryStats",
    "RetryStrategy",
    "RetrySucceeded",
    "SettingChanged",
    "ShedError",
    "SystemClock",
    "ThrottledError",
    "TimeWindow",
    "Timeout",
    "TimeoutStats",
    "TransientError",
    "WindowSnapshot",
    "WindowType",
    "breaker_manager",
    "circuit_breaker",
    "classify",
    "decorate",
    "default_clock",
    "is_async_callable",
    "is_network_failure",
    "is_transient_database_error",
    "is_transient_network_error",
    "register_classifier",
    "resolve_clock",
    "retry",
    "unregister_classifier",
    "use_clock",
]
