"""sage_resilience.adaptive: controllers that read rolling statistics and retune the core
primitives at runtime, priorities and load shedding, and ``adaptive_policy`` composing them."""

from .breaker import AdaptiveBreakerConfig, AdaptiveCircuitBreaker, adaptive_breaker
from .budget import (
    BudgetMode,
    BudgetRegistry,
    RetryBudget,
    RetryBudgetConfig,
    budget_for,
    nested_retry,
    retry_budgets,
    retrying,
)
from .controller import Bounds, Controller, Decision, Ticker
from .delays import AdaptiveDelays, AdaptiveDelaysConfig, DelaySettings, DelaySnapshot
from .limits import AIMDLimit, Gradient2Limit, LimitSample, LimitWindow, VegasLimit
from .policy import AdaptiveOptions, AdaptivePolicy, adaptive_policy
from .priority import (
    DEFAULT_MAX_WAIT,
    Priority,
    PriorityLimiter,
    PriorityLimiterStats,
    current_priority,
    priority,
)
from .rate import AIMDRate, CubicRate, RateSample
from .stats import EWMA, LatencyHistogram, RollingCounts, RollingHistogram
from .throttle import AdaptiveThrottle, ThrottleSample, should_reject
from .timeouts import AdaptiveTimeout, TimeoutSample

__all__ = [
    "DEFAULT_MAX_WAIT",
    "EWMA",
    "AIMDLimit",
    "AIMDRate",
    "AdaptiveBreakerConfig",
    "AdaptiveCircuitBreaker",
    "AdaptiveDelays",
    "AdaptiveDelaysConfig",
    "AdaptiveOptions",
    "AdaptivePolicy",
    "AdaptiveThrottle",
    "AdaptiveTimeout",
    "Bounds",
    "BudgetMode",
    "BudgetRegistry",
    "Controller",
    "CubicRate",
    "Decision",
    "DelaySettings",
    "DelaySnapshot",
    "Gradient2Limit",
    "LatencyHistogram",
    "LimitSample",
    "LimitWindow",
    "Priority",
    "PriorityLimiter",
    "PriorityLimiterStats",
    "RateSample",
    "RetryBudget",
    "RetryBudgetConfig",
    "RollingCounts",
    "RollingHistogram",
    "ThrottleSample",
    "Ticker",
    "TimeoutSample",
    "VegasLimit",
    "adaptive_breaker",
    "adaptive_policy",
    "budget_for",
    "current_priority",
    "nested_retry",
    "priority",
    "retry_budgets",
    "retrying",
    "should_reject",
]
