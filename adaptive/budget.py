"""Retry budgets shared per dependency, and "retry at one layer".

A retry budget bounds the extra load that retries add to a dependency, whoever retries: every
policy that guards the same dependency takes its budget from :func:`budget_for` (one
:class:`RetryBudget` per dependency name) and asks :meth:`RetryBudget.can_retry` before each
retry. Two ways to bound it, chosen at construction:

* **ratio** (Google SRE book, "Handling Overload"; Finagle's ``RetryBudget``): over a rolling
  window (10 s), retries may not exceed ``ratio`` (10 %) of the requests, plus a small allowance
  of ``min_retries_per_second`` (1/s) so that a quiet service can still retry at all. Load on a
  failing dependency stays at about ``1 + ratio`` times the request rate instead of
  ``max_attempts`` times. The window is the same cumulative-counter ring as the breaker's
  :class:`~sage_resilience.core.TimeWindow`: recording a request is one comparison and one
  increment.
* **tokens** (gRPC retry throttling, proposal A6): ``tokens`` starts at ``max_tokens`` (10);
  each failure takes 1, each success gives back ``token_ratio`` (0.1), within ``[0,
  max_tokens]``; retries are allowed only while ``tokens > max_tokens / 2``. Tokens are kept in
  thousandths (as gRPC does), so the arithmetic is exact. No clock: it reacts to the outcome
  mix (more than one failure per ten successes, sustained, stops retries) whatever the rate.

**Retry at one layer** (SRE: "retry at one layer only"). A context variable says that the
current call is already inside a retrying call. A retry policy enters :func:`retrying` around
its attempts; a retry policy nested inside it sees :func:`nested_retry` return ``True`` and makes
one attempt (:func:`attempts_allowed`) unless told to retry anyway. The variable travels with
``await``, into tasks created inside the block (they copy the context) and into
``asyncio.to_thread``; a thread started by hand or a bare executor starts with a fresh context,
so the work there counts as a new call. This is what ends the seed's 3 x 3 x 3 = 27 attempts.

Hot paths (``record_request``, ``record_success``) take no lock on GIL builds (plain increments
of slotted attributes, which the GIL never interrupts, see :mod:`sage_resilience.core.window`);
``can_retry`` and ``record_failure`` take the budget's lock briefly, and on a free-threaded
build everything does.
"""

from __future__ import annotations

import contextvars
import enum
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import Any

from ..core._gil import GIL_ENABLED
from ..core._nesting import RETRYING
from ..core._validate import check_float, check_int

__all__ = [
    "BudgetMode",
    "BudgetRegistry",
    "RetryBudget",
    "RetryBudgetConfig",
    "RetryBudgetStats",
    "RetryingScope",
    "attempts_allowed",
    "budget_for",
    "enter_retrying",
    "exit_retrying",
    "nested_retry",
    "retry_budgets",
    "retrying",
]


class BudgetMode(enum.Enum):
    """How a :class:`RetryBudget` bounds retries."""

    RATIO = "ratio"
    TOKENS = "tokens"


_MILLI = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetConfig:
    """A retry budget's settings. Frozen; derive variants with ``dataclasses.replace``.

    Attributes:
        mode: ``BudgetMode.RATIO`` or ``BudgetMode.TOKENS`` (or their names).
        ratio: ratio mode: retries allowed per request over the window (>= 0).
        min_retries_per_second: ratio mode: retries allowed per second of window whatever the
            traffic (>= 0); the window holds ``min_retries_per_second * window`` of them.
        window: ratio mode: the rolling window, in seconds.
        buckets: ratio mode: buckets of the window (it slides a bucket at a time).
        max_tokens: tokens mode: the bucket's size, in (0, 1000] as in gRPC.
        token_ratio: tokens mode: tokens a success gives back, in [0.001, max_tokens]
            (three decimals are kept).
    """

    mode: BudgetMode = BudgetMode.RATIO
    ratio: float = 0.1
    min_retries_per_second: float = 1.0
    window: float = 10.0
    buckets: int = 10
    max_tokens: float = 10.0
    token_ratio: float = 0.1

    def __post_init__(self) -> None:
        mode = self.mode
        if isinstance(mode, str):
            try:
                mode = BudgetMode(mode.lower())
            except ValueError:
                raise ValueError(f"mode must be 'ratio' or 'tokens', got {self.mode!r}") from None
        if not isinstance(mode, BudgetMode):
            raise TypeError(f"mode must be a BudgetMode, got {mode!r}")
        object.__setattr__(self, "mode", mode)
        check_float("ratio", self.ratio, minimum=0.0)
        check_float("min_retries_per_second", self.min_retries_per_second, minimum=0.0)
        check_float("window", self.window, positive=True)
        check_int("buckets", self.buckets, minimum=1)
        check_float("max_tokens", self.max_tokens, positive=True, maximum=1000.0)
        check_float("token_ratio", self.token_ratio, minimum=0.001)
        if self.token_ratio > self.max_tokens:
            raise ValueError(
                f"token_ratio ({self.token_ratio!r}) must be <= max_tokens ({self.max_tokens!r})"
            )


@dataclass(frozen=True, slots=True)
class RetryBudgetStats:
    """A budget's counts at one moment.

    ``requests``, ``successes``, ``failures``, ``retries`` (granted) and ``denied`` are
    cumulative. Ratio mode: ``window_requests`` and ``window_retries`` are inside the window and
    ``allowance`` is how many retries the window allows in all; tokens mode: ``tokens`` is the
    current count (the window fields are 0).
    """

    name: str
    mode: str
    requests: int
    successes: int
    failures: int
    retries: int
    denied: int
    window_requests: int
    window_retries: int
    allowance: float
    tokens: float | None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class RetryBudget:
    """One dependency's retry budget (see the module docstring for the two modes).

    Per call: ``record_request(now)`` when a call starts (its first attempt; a retry is not a
    request), ``record_success(now)`` / ``record_failure(now)`` for each attempt's outcome that
    says something about the dependency, and ``can_retry(now)`` before each retry: it answers
    and, when it says yes, counts the retry. ``now`` is the caller's clock reading; tokens mode
    ignores it.

    Args:
        config: a :class:`RetryBudgetConfig` (default: ratio mode with its defaults).
        name: the dependency's name (stats).
        now: the time the window starts at.
        **overrides: fields of :class:`RetryBudgetConfig` replacing those of ``config``.
    """

    __slots__ = (
        "_denied",
        "_epoch",
        "_failures",
        "_half_m",
        "_lock",
        "_max_m",
        "_ratio_m",
        "_ring_req",
        "_ring_ret",
        "_tokens_m",
        "config",
        "name",
        "next_boundary",
        "ratio_mode",
        "requests",
        "retries",
        "successes",
        "width",
    )

    def __init__(
        self,
        config: RetryBudgetConfig | None = None,
        *,
        name: str = "retry_budget",
        now: float = 0.0,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = RetryBudgetConfig(**overrides)
        elif not isinstance(config, RetryBudgetConfig):
            raise TypeError(f"config must be a RetryBudgetConfig, got {config!r}")
        elif overrides:
            config = replace(config, **overrides)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        check_float("now", now)
        self.name = name
        self.config = config
        self.ratio_mode = config.mode is BudgetMode.RATIO
        self._lock = threading.Lock()
        self._max_m = round(config.max_tokens * _MILLI)
        self._ratio_m = round(config.token_ratio * _MILLI)
        self._half_m = self._max_m / 2
        self.width = config.window / config.buckets
        self._reset(now)

    def _reset(self, now: float) -> None:
        self.requests = 0
        self.retries = 0
        self.successes = 0
        self._failures = 0
        self._denied = 0
        self._tokens_m = self._max_m
        n = self.config.buckets
        # Cumulative requests and retries at the start of each bucket, by epoch % buckets.
        self._ring_req = [0] * n
        self._ring_ret = [0] * n
        self._epoch = math.floor(now / self.width)
        self.next_boundary = (self._epoch + 1) * self.width

    def reset(self, now: float = 0.0) -> None:
        """Forget every count and refill the tokens."""
        with self._lock:
            self._reset(now)

    # -- the rolling window (ratio mode) -------------------------------------------------------

    def _rotate(self, now: float) -> None:
        """Start the buckets that began since the last rotation (lock held)."""
        epoch = math.floor(now / self.width)
        old = self._epoch
        if epoch <= old:
            return
        req, ret = self.requests, self.retries
        n = self.config.buckets
        ring_req, ring_ret = self._ring_req, self._ring_ret
        for e in range(max(old + 1, epoch - n + 1), epoch + 1):
            ring_req[e % n] = req
            ring_ret[e % n] = ret
        self._epoch = epoch
        self.next_boundary = (epoch + 1) * self.width

    def _window_locked(self) -> tuple[int, int, float]:
        """Requests and retries inside the window, and the retries it allows (lock held)."""
        start = (self._epoch + 1) % self.config.buckets
        requests = self.requests - self._ring_req[start]
        retries = self.retries - self._ring_ret[start]
        config = self.config
        allowance = config.ratio * requests + config.min_retries_per_second * config.window
        return requests, retries, allowance

    # -- the hot path --------------------------------------------------------------------------

    def record_request(self, now: float) -> None:
        """A call started (count once per call, not per attempt). O(1), no lock under a GIL."""
        if GIL_ENABLED:
            if now >= self.next_boundary:
                with self._lock:
                    self._rotate(now)
            self.requests += 1
            return
        with self._lock:
            if now >= self.next_boundary:
                self._rotate(now)
            self.requests += 1

    def record_success(self, now: float) -> None:
        """An attempt succeeded. Tokens mode gives back ``token_ratio``; O(1)."""
        if GIL_ENABLED:
            self.successes += 1
            if not self.ratio_mode:
                tokens = self._tokens_m + self._ratio_m
                self._tokens_m = tokens if tokens < self._max_m else self._max_m
            return
        with self._lock:
            self.successes += 1
            if not self.ratio_mode:
                tokens = self._tokens_m + self._ratio_m
                self._tokens_m = tokens if tokens < self._max_m else self._max_m

    def record_failure(self, now: float) -> None:
        """An attempt failed in a way that counts against the dependency. Tokens mode takes 1."""
        with self._lock:
            self._failures += 1
            if not self.ratio_mode:
                tokens = self._tokens_m - _MILLI
                self._tokens_m = tokens if tokens > 0 else 0

    def can_retry(self, now: float) -> bool:
        """Whether one more retry fits the budget; a ``True`` counts that retry."""
        with self._lock:
            if self.ratio_mode:
                if now >= self.next_boundary:
                    self._rotate(now)
                _, retries, allowance = self._window_locked()
                allowed = retries + 1 <= allowance
            else:
                allowed = self._tokens_m > self._half_m
            if allowed:
                self.retries += 1
            else:
                self._denied += 1
            return allowed

    # -- reading -------------------------------------------------------------------------------

    @property
    def tokens(self) -> float | None:
        """Tokens mode: the current tokens; ratio mode: ``None``."""
        return None if self.ratio_mode else self._tokens_m / _MILLI

    def stats(self, now: float | None = None) -> RetryBudgetStats:
        """Counts at ``now`` (without ``now``, the window as of the last call that moved it)."""
        with self._lock:
            if self.ratio_mode:
                if now is not None and now >= self.next_boundary:
                    self._rotate(now)
                window_requests, window_retries, allowance = self._window_locked()
            else:
                window_requests = window_retries = 0
                allowance = 0.0
            return RetryBudgetStats(
                name=self.name,
                mode=self.config.mode.value,
                requests=self.requests,
                successes=self.successes,
                failures=self._failures,
                retries=self.retries,
                denied=self._denied,
                window_requests=window_requests,
                window_retries=window_retries,
                allowance=allowance,
                tokens=self.tokens,
            )

    def __repr__(self) -> str:
        return f"RetryBudget(name={self.name!r}, mode={self.config.mode.value})"


class BudgetRegistry:
    """Retry budgets by dependency name, so that every policy guarding one dependency shares
    one budget. Thread-safe; create your own or use :data:`retry_budgets`."""

    __slots__ = ("_budgets", "_lock", "name")

    def __init__(self, name: str = "retry_budgets") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._budgets: dict[str, RetryBudget] = {}

    def budget_for(
        self,
        name: str,
        config: RetryBudgetConfig | None = None,
        *,
        now: float = 0.0,
        **overrides: Any,
    ) -> RetryBudget:
        """The budget of dependency ``name``, created from ``config`` (and ``overrides``) on
        first use. Given settings must match an existing budget's (else ``ValueError``);
        without any, the existing budget is returned as it is."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        wanted: RetryBudgetConfig | None = None
        if config is not None or overrides:
            base = RetryBudgetConfig() if config is None else config
            if not isinstance(base, RetryBudgetConfig):
                raise TypeError(f"config must be a RetryBudgetConfig, got {base!r}")
            wanted = replace(base, **overrides) if overrides else base
        with self._lock:
            existing = self._budgets.get(name)
            if existing is not None:
                if wanted is not None and wanted != existing.config:
                    raise ValueError(
                        f"retry budget {name!r} already exists with other settings: "
                        f"{existing.config!r} != {wanted!r}"
                    )
                return existing
            budget = RetryBudget(wanted, name=name, now=now)
            self._budgets[name] = budget
            return budget

    def get(self, name: str) -> RetryBudget | None:
        """The budget of ``name``, or ``None``."""
        return self._budgets.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._budgets)

    def clear(self) -> None:
        """Forget every budget (policies holding one keep it)."""
        with self._lock:
            self._budgets.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._budgets

    def __len__(self) -> int:
        return len(self._budgets)

    def __iter__(self) -> Iterator[RetryBudget]:
        with self._lock:
            return iter(list(self._budgets.values()))

    def __repr__(self) -> str:
        return f"BudgetRegistry(name={self.name!r}, budgets={self.names()!r})"


retry_budgets = BudgetRegistry()
"""The default registry of retry budgets."""


def budget_for(
    name: str,
    config: RetryBudgetConfig | None = None,
    *,
    registry: BudgetRegistry | None = None,
    now: float = 0.0,
    **overrides: Any,
) -> RetryBudget:
    """The shared budget of dependency ``name`` in ``registry`` (default :data:`retry_budgets`);
    see :meth:`BudgetRegistry.budget_for`."""
    target = retry_budgets if registry is None else registry
    return target.budget_for(name, config, now=now, **overrides)


# -- retry at one layer ------------------------------------------------------------------------

# Shared with core's Retry, which marks its repeated attempts too.
_RETRYING = RETRYING


def nested_retry() -> bool:
    """Whether the current call runs inside a retrying call (one that will retry it)."""
    return _RETRYING.get()


def enter_retrying(active: bool = True) -> contextvars.Token[bool]:
    """Mark the current context as retrying (``active``) or not; give the token back to
    :func:`exit_retrying`. The cheapest form of :func:`retrying`, for a policy's hot path."""
    return _RETRYING.set(active)


exit_retrying: Callable[[contextvars.Token[bool]], None] = _RETRYING.reset
"""``exit_retrying(token)`` undoes :func:`enter_retrying` (in the same context). The context
variable's own ``reset``: no Python frame, the pair costs ~160 ns (a ``with retrying():`` block
~500 ns)."""


class RetryingScope:
    """The context manager returned by :func:`retrying`."""

    __slots__ = ("_active", "_token")

    def __init__(self, active: bool = True) -> None:
        self._active = active
        self._token: contextvars.Token[bool] | None = None

    def __enter__(self) -> RetryingScope:
        if self._token is not None:
            raise RuntimeError("a retrying() scope cannot be entered twice at once")
        self._token = _RETRYING.set(self._active)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _RETRYING.reset(token)


def retrying(active: bool = True) -> RetryingScope:
    """``with retrying():`` around a retry policy's attempts: calls made inside see
    :func:`nested_retry` as ``True``. ``retrying(False)`` marks the block as a fresh call (for
    work that outlives the retrying call, such as a background task started from it)."""
    return RetryingScope(active)


def attempts_allowed(max_attempts: int, *, retry_nested: bool = False) -> int:
    """The attempts a retry policy should make here: ``max_attempts``, or 1 when it runs inside
    a retrying call and was not told to retry anyway (``retry_nested``)."""
    check_int("max_attempts", max_attempts, minimum=1)
    if _RETRYING.get() and not retry_nested:
        return 1
    return max_attempts
