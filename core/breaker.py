"""Circuit breaker: a permission protocol over an explicit state machine.

The breaker is split the way Polly v8 and Resilience4j split theirs:

* **state controller**: :class:`CircuitState`, one :meth:`CircuitBreaker._transition` that checks
  a table of legal moves, bumps a generation number and emits an event;
* **"when to trip"**: :meth:`CircuitBreaker._should_trip`, reading consecutive failures and the
  sliding window's failure and slow-call rates (:mod:`.window`);
* **glue**: the permission protocol shared by every way of calling: :meth:`~CircuitBreaker.acquire`
  returns a permit (the generation it was granted in), then exactly one of
  :meth:`~CircuitBreaker.on_success`, :meth:`~CircuitBreaker.on_failure`,
  :meth:`~CircuitBreaker.on_ignored` or :meth:`~CircuitBreaker.release` reports the outcome.
  ``call``/``acall`` and the decorator drive it; no lock is held across the user's call.

The permit's generation makes late outcomes harmless: a call admitted before a transition that
finishes after it is still counted in the statistics, but cannot close a half-open breaker or
free a half-open slot it never took.

**The hot path.** While the breaker is closed, uses a time window, has no slow-call threshold
and nobody listens, a successful call costs one clock read, one comparison with the window's next
bucket boundary and one increment, with no lock (see :class:`.window.TimeWindow`; on a
free-threaded build the locked path is used). Everything else takes the breaker's lock briefly,
never across the user's call; events and callbacks are delivered after the lock is released.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._callables import is_async_callable
from ._gil import GIL_ENABLED
from ._validate import (
    check_callable,
    check_exceptions,
    check_float,
    check_int,
    check_optional_float,
    check_optional_int,
    check_probability,
)
from .classify import FailureKind, classify
from .clock import Clock, resolve_clock
from .errors import CircuitBreakerOpenError
from .events import (
    BreakerOutcome,
    BreakerStateChanged,
    CallRejected,
    Event,
    Listener,
    Observable,
    emit,
)
from .window import CountWindow, TimeWindow, Window

if TYPE_CHECKING:
    from .registry import Registry

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerStats",
    "CircuitState",
    "WindowType",
    "circuit_breaker",
]

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger("sage_resilience")


class CircuitState(enum.Enum):
    """The three states of a breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class WindowType(enum.Enum):
    """Whether the rate thresholds look at the last seconds or the last calls."""

    TIME = "time"
    COUNT = "count"


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN

_LEGAL: dict[CircuitState, frozenset[CircuitState]] = {
    _CLOSED: frozenset({_OPEN}),
    _OPEN: frozenset({_HALF_OPEN, _CLOSED}),
    _HALF_OPEN: frozenset({_CLOSED, _OPEN}),
}


def _callback_arity(name: str, fn: Callable[..., Any] | None) -> int:
    """0 or 1: whether a state callback takes the breaker's name."""
    if fn is None:
        return 0
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    try:
        sig.bind("name")
    except TypeError:
        try:
            sig.bind()
        except TypeError:
            raise TypeError(
                f"{name} must take no argument or the breaker's name, got {fn!r}"
            ) from None
        return 0
    return 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    """How a breaker trips and recovers. Frozen; derive variants with ``dataclasses.replace``.

    Attributes:
        failure_threshold: consecutive failures that trip it (a success resets the count);
            ``None`` trips on rates only.
        recovery_timeout: seconds open before trial calls are let through (half-open).
        expected_exception: what counts as a failure; other exceptions pass through uncounted.
            Whatever it says, cancellation, our own rejections, permanent (4xx-like) errors and
            throttling (429: the dependency is up and asks us to slow down) never count.
        success_threshold: successful trials in half-open that close it.
        monitoring_window: the time window of the rate thresholds, in seconds.
        on_open, on_close, on_half_open: called on entering the state, with the breaker's name
            if they take one argument, else with none.
        failure_rate_threshold: trip when the window's failure rate reaches it (in (0, 1]);
            ``None`` is off.
        minimum_calls: calls the window must hold before a rate can trip it.
        slow_call_duration: a call at least this long (seconds) is slow.
        slow_call_rate_threshold: trip when the window's slow-call rate reaches it.
        half_open_max_calls: trial calls admitted at once in half-open (default
            ``success_threshold``).
        ignore_exceptions: count as neither success nor failure.
        failure_condition: ``(exc) -> bool``; when given, an expected exception counts as a
            failure only if it returns ``True`` (else it is ignored). The database preset uses it
            so that SQL errors do not trip the breaker.
        window_type: ``TIME`` (``monitoring_window`` seconds) or ``COUNT`` (``window_size`` calls).
        window_size: the number of calls of a count window (default 100), or the number of
            buckets of a time window (default 10).
    """

    failure_threshold: int | None = 5
    recovery_timeout: float = 60.0
    expected_exception: type[BaseException] | tuple[type[BaseException], ...] = Exception
    success_threshold: int = 2
    monitoring_window: float = 60.0
    on_open: Callable[..., object] | None = field(default=None, compare=False)
    on_close: Callable[..., object] | None = field(default=None, compare=False)
    on_half_open: Callable[..., object] | None = field(default=None, compare=False)
    failure_rate_threshold: float | None = None
    minimum_calls: int = 20
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float | None = None
    half_open_max_calls: int | None = None
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    failure_condition: Callable[[BaseException], bool] | None = None
    window_type: WindowType = WindowType.TIME
    window_size: int | None = None
    _callback_arity: tuple[int, int, int] = field(
        init=False, compare=False, repr=False, default=(0, 0, 0)
    )

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        check_optional_int("failure_threshold", self.failure_threshold, minimum=1)
        setattr_(
            self,
            "recovery_timeout",
            check_float("recovery_timeout", self.recovery_timeout, minimum=0.0),
        )
        expected = check_exceptions("expected_exception", self.expected_exception)
        if not expected:
            raise ValueError("expected_exception must name at least one exception class")
        setattr_(self, "expected_exception", expected[0] if len(expected) == 1 else expected)
        check_int("success_threshold", self.success_threshold, minimum=1)
        setattr_(
            self,
            "monitoring_window",
            check_float("monitoring_window", self.monitoring_window, positive=True),
        )
        arity = []
        for name in ("on_open", "on_close", "on_half_open"):
            fn = check_callable(name, getattr(self, name))
            arity.append(_callback_arity(name, fn))
        setattr_(self, "_callback_arity", tuple(arity))
        setattr_(
            self,
            "failure_rate_threshold",
            check_probability("failure_rate_threshold", self.failure_rate_threshold),
        )
        check_int("minimum_calls", self.minimum_calls, minimum=1)
        setattr_(
            self,
            "slow_call_duration",
            check_optional_float("slow_call_duration", self.slow_call_duration, positive=True),
        )
        setattr_(
            self,
            "slow_call_rate_threshold",
            check_probability("slow_call_rate_threshold", self.slow_call_rate_threshold),
        )
        if self.slow_call_rate_threshold is not None and self.slow_call_duration is None:
            raise ValueError("slow_call_rate_threshold needs slow_call_duration")
        check_optional_int("half_open_max_calls", self.half_open_max_calls, minimum=1)
        check_callable("failure_condition", self.failure_condition)
        setattr_(
            self,
            "ignore_exceptions",
            check_exceptions("ignore_exceptions", self.ignore_exceptions),
        )
        window_type = self.window_type
        if isinstance(window_type, str):
            try:
                window_type = WindowType(window_type.lower())
            except ValueError:
                raise ValueError(
                    f"window_type must be 'time' or 'count', got {self.window_type!r}"
                ) from None
        if not isinstance(window_type, WindowType):
            raise TypeError(f"window_type must be a WindowType, got {window_type!r}")
        setattr_(self, "window_type", window_type)
        check_optional_int("window_size", self.window_size, minimum=1)

    @property
    def max_half_open_calls(self) -> int:
        """``half_open_max_calls``, defaulting to ``success_threshold``."""
        return (
            self.success_threshold if self.half_open_max_calls is None else self.half_open_max_calls
        )

    @property
    def expected_exceptions(self) -> tuple[type[BaseException], ...]:
        exp = self.expected_exception
        return exp if isinstance(exp, tuple) else (exp,)

    def _window_key(self) -> tuple[object, ...]:
        return (self.window_type, self.monitoring_window, self.window_size)


@dataclass(frozen=True, slots=True)
class CircuitBreakerStats:
    """A breaker's counts and state at one moment.

    ``calls`` = ``successes + failures + ignored + rejected``, cumulative since creation or the
    last :meth:`CircuitBreaker.reset`; ``failure_rate`` is over the current window.
    """

    name: str
    state: str
    calls: int
    successes: int
    failures: int
    ignored: int
    rejected: int
    slow_calls: int
    failure_rate: float
    last_failure_at: float | None
    state_since: float
    retry_after: float | None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class CircuitBreaker(Observable):
    """A three-state circuit breaker.

    Args:
        name: the breaker's name (events, stats, the registry).
        config: a :class:`CircuitBreakerConfig` (default: the seed's defaults).
        clock: time source (default the system's monotonic clock).
        listeners: callables receiving this breaker's events.
        **overrides: fields of :class:`CircuitBreakerConfig` replacing those of ``config``.
    """

    __slots__ = (
        "_base_failures",
        "_base_slow",
        "_base_successes",
        "_consecutive",
        "_fast_gen",
        "_forced",
        "_gen",
        "_half_open_in_flight",
        "_half_open_successes",
        "_ignored",
        "_last_failure_at",
        "_lock",
        "_now",
        "_open_reason",
        "_open_until",
        "_opens_in_a_row",
        "_rejected",
        "_state",
        "_state_since",
        "_successes_at_failure",
        "_window",
        "clock",
        "config",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        listeners: tuple[Listener, ...] | list[Listener] = (),
        **overrides: Any,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if config is None:
            config = CircuitBreakerConfig(**overrides)
        elif not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        elif overrides:
            config = replace(config, **overrides)
        clock = resolve_clock(clock)
        if not callable(getattr(clock, "now", None)):
            raise TypeError(f"clock must provide now(), got {clock!r}")
        self.name = name
        self.config = config
        self.clock = clock
        self._now = clock.now
        self._lock = threading.Lock()
        self._listeners: tuple[Listener, ...] = ()
        now = self._now()
        self._window = self._make_window(config, now)
        self._state = _CLOSED
        self._gen = 0
        self._fast_gen = -1
        self._state_since = now
        self._open_until = 0.0
        self._forced = False
        self._opens_in_a_row = 0
        self._open_reason = ""
        self._reset_counts()
        self._refresh_fast()
        for listener in listeners:
            self.add_listener(listener)

    @staticmethod
    def _make_window(config: CircuitBreakerConfig, now: float) -> Window:
        if config.window_type is WindowType.COUNT:
            return CountWindow(config.window_size or 100, now=now)
        return TimeWindow(config.monitoring_window, config.window_size or 10, now=now)

    def _reset_counts(self) -> None:
        self._consecutive = 0
        self._successes_at_failure = -1
        self._half_open_in_flight = 0
        self._half_open_successes = 0
        self._ignored = 0
        self._rejected = 0
        self._last_failure_at: float | None = None
        # Cumulative counts of windows replaced by update_config.
        self._base_successes = 0
        self._base_failures = 0
        self._base_slow = 0

    def _refresh_fast(self) -> None:
        """Enable the lock-free closed-state path when nothing needs more than a count."""
        fast = (
            GIL_ENABLED
            and self._state is _CLOSED
            and self._window.fast_path
            and self.config.slow_call_duration is None
            and not self._listeners
        )
        self._fast_gen = self._gen if fast else -1

    def _listeners_changed(self) -> None:
        with self._lock:
            self._refresh_fast()

    # -- public state --------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker whose timeout elapsed reports HALF_OPEN)."""
        if self._state is _OPEN and not self._forced:
            pending: list[Event | tuple[Callable[..., object], int]] = []
            with self._lock:
                now = self._now()
                if self._state is _OPEN and not self._forced and now >= self._open_until:
                    self._transition(_HALF_OPEN, now, "recovery_timeout_elapsed", pending)
            self._deliver(pending)
        return self._state

    @property
    def open_reason(self) -> str:
        """Why the breaker last opened from closed (``"consecutive_failures"``,
        ``"failure_rate"``, ``"slow_call_rate"``, ``"forced"``, ...; ``""`` before it ever
        opened). Failed trials in half-open keep the reason of the trip."""
        return self._open_reason

    @property
    def retry_after(self) -> float | None:
        """Seconds until a call may be admitted: 0 when closed or half-open, None if forced."""
        state = self.state
        if state is not _OPEN:
            return 0.0
        if self._forced:
            return None
        return max(0.0, self._open_until - self._now())

    def update_config(self, config: CircuitBreakerConfig) -> None:
        """Swap in a new config (the adaptive controllers do this); the state is kept.

        A different window shape starts a new, empty window; cumulative counts carry over.
        """
        if not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"config must be a CircuitBreakerConfig, got {config!r}")
        with self._lock:
            old = self.config
            if config._window_key() != old._window_key():
                old_window = self._window
                self._base_successes += old_window.total_successes
                self._base_failures += old_window.total_failures
                self._base_slow += old_window.total_slow
                self._window = self._make_window(config, self._now())
            self.config = config
            if self._state is _OPEN and not self._forced:
                self._open_until = self._state_since + self._open_duration()
            self._refresh_fast()

    # -- the permission protocol ---------------------------------------------------------------

    def acquire(self) -> int:
        """Ask to make one call; returns the permit or raises :class:`CircuitBreakerOpenError`.

        The permit must be handed back to exactly one of :meth:`on_success`, :meth:`on_failure`,
        :meth:`on_ignored`, :meth:`on_exception` or :meth:`release`.
        """
        # Read the generation before the state: a generation read after a CLOSED state could
        # already belong to a half-open breaker (two transitions in between) and would then be a
        # trial permit that no slot was taken for. Read first, it is at worst stale.
        gen = self._gen
        if self._state is _CLOSED:
            return gen
        pending: list[Event | tuple[Callable[..., object], int]] = []
        try:
            with self._lock:
                return self._acquire_locked(pending)
        finally:
            self._deliver(pending)

    def try_acquire(self) -> int | None:
        """Like :meth:`acquire`, but returns ``None`` instead of raising."""
        try:
            return self.acquire()
        except CircuitBreakerOpenError:
            return None

    def _acquire_locked(self, pending: list[Event | tuple[Callable[..., object], int]]) -> int:
        now = self._now()
        state = self._state
        if state is _OPEN:
            if self._forced or now < self._open_until:
                retry_after = None if self._forced else self._open_until - now
                self._reject(now, "breaker_open", retry_after, pending)
                raise CircuitBreakerOpenError(self.name, retry_after)
            self._transition(_HALF_OPEN, now, "recovery_timeout_elapsed", pending)
            state = _HALF_OPEN
        if state is _HALF_OPEN:
            if self._half_open_in_flight >= self.config.max_half_open_calls:
                self._reject(now, "half_open_full", 0.0, pending)
                raise CircuitBreakerOpenError(self.name, 0.0, reason="half_open_full")
            self._half_open_in_flight += 1
        return self._gen

    def _reject(
        self,
        now: float,
        reason: str,
        retry_after: float | None,
        pending: list[Event | tuple[Callable[..., object], int]],
    ) -> None:
        self._rejected += 1
        if self._listeners:
            pending.append(
                CallRejected(
                    policy=self.name,
                    time=now,
                    kind="circuit_breaker",
                    reason=reason,
                    retry_after=retry_after,
                )
            )

    def on_success(self, permit: int, duration: float = 0.0) -> None:
        """Report a successful call that took ``duration`` seconds."""
        config = self.config
        slow = config.slow_call_duration is not None and duration >= config.slow_call_duration
        pending: list[Event | tuple[Callable[..., object], int]] = []
        with self._lock:
            now = self._now()
            self._window.record_success(now, slow)
            if permit == self._gen:
                state = self._state
                if state is _HALF_OPEN:
                    self._half_open_in_flight -= 1
                    if slow and config.slow_call_rate_threshold is not None:
                        self._transition(_OPEN, now, "slow_trial", pending)
                    else:
                        self._half_open_successes += 1
                        if self._half_open_successes >= config.success_threshold:
                            self._transition(_CLOSED, now, "trials_succeeded", pending)
                elif state is _CLOSED and slow:
                    reason = self._should_trip(now)
                    if reason:
                        self._transition(_OPEN, now, reason, pending)
            if self._listeners:
                pending.insert(0, self._outcome_event(now, "success", duration, slow, None))
        self._deliver(pending)

    def on_failure(
        self, permit: int, duration: float = 0.0, exception: BaseException | None = None
    ) -> None:
        """Report a failed call (one that counts against the dependency)."""
        config = self.config
        slow = config.slow_call_duration is not None and duration >= config.slow_call_duration
        pending: list[Event | tuple[Callable[..., object], int]] = []
        with self._lock:
            now = self._now()
            self._window.record_failure(now, slow)
            self._last_failure_at = now
            if permit == self._gen:
                state = self._state
                if state is _HALF_OPEN:
                    self._half_open_in_flight -= 1
                    self._transition(_OPEN, now, "trial_failed", pending)
                elif state is _CLOSED:
                    # Consecutive failures without a store on the success path: the run
                    # continues only if no success was counted since the previous failure.
                    # Cumulative successes include those of windows replaced by update_config.
                    successes = self._base_successes + self._window.total_successes
                    if successes == self._successes_at_failure:
                        self._consecutive += 1
                    else:
                        self._consecutive = 1
                        self._successes_at_failure = successes
                    reason = self._should_trip(now)
                    if reason:
                        self._transition(_OPEN, now, reason, pending)
            if self._listeners:
                pending.insert(
                    0,
                    self._outcome_event(
                        now,
                        "failure",
                        duration,
                        slow,
                        None if exception is None else type(exception).__name__,
                    ),
                )
        self._deliver(pending)

    def on_ignored(
        self, permit: int, duration: float = 0.0, exception: BaseException | None = None
    ) -> None:
        """Report a call whose outcome says nothing about the dependency (counted as ignored)."""
        pending: list[Event | tuple[Callable[..., object], int]] = []
        with self._lock:
            self._ignored += 1
            self._release_locked(permit)
            if self._listeners:
                pending.append(
                    self._outcome_event(
                        self._now(),
                        "ignored",
                        duration,
                        False,
                        None if exception is None else type(exception).__name__,
                    )
                )
        self._deliver(pending)

    def release(self, permit: int) -> None:
        """Give a permit back without any outcome (a cancelled call): counted nowhere."""
        if self._state is _CLOSED and permit == self._gen:
            return
        with self._lock:
            self._release_locked(permit)

    def _release_locked(self, permit: int) -> None:
        if permit == self._gen and self._state is _HALF_OPEN:
            self._half_open_in_flight -= 1

    def on_exception(self, permit: int, exception: BaseException, duration: float = 0.0) -> None:
        """Classify ``exception`` and report it as a failure, an ignored call, or release.

        The permit is always handed back: a classifier or ``failure_condition`` that raises is
        logged and the exception counts as a failure if it is an expected one (a leaked
        half-open permit would keep the breaker half-open and full until :meth:`reset`).
        """
        config = self.config
        try:
            kind = classify(exception)
        except Exception:
            _log.exception("circuit breaker %r: classifying %r failed", self.name, exception)
            kind = FailureKind.TRANSIENT if isinstance(exception, Exception) else FailureKind.ABORT
        if kind is FailureKind.ABORT:
            self.release(permit)
        elif (
            kind is FailureKind.REJECTED
            or kind is FailureKind.PERMANENT
            or kind is FailureKind.THROTTLED
            or (config.ignore_exceptions and isinstance(exception, config.ignore_exceptions))
            or not isinstance(exception, config.expected_exception)
            or (
                config.failure_condition is not None
                and not self._failure_condition_holds(config.failure_condition, exception)
            )
        ):
            self.on_ignored(permit, duration, exception)
        else:
            self.on_failure(permit, duration, exception)

    def _failure_condition_holds(
        self, condition: Callable[[BaseException], bool], exception: BaseException
    ) -> bool:
        try:
            return bool(condition(exception))
        except Exception:
            _log.exception(
                "circuit breaker %r: failure_condition %r failed on %r; counted as a failure",
                self.name,
                condition,
                exception,
            )
            return True

    def _outcome_event(
        self, now: float, outcome: str, duration: float, slow: bool, exc: str | None
    ) -> BreakerOutcome:
        return BreakerOutcome(
            policy=self.name,
            time=now,
            outcome=outcome,
            duration=duration,
            slow=slow,
            exception=exc,
        )

    # -- when to trip --------------------------------------------------------------------------

    def _should_trip(self, now: float) -> str:
        """The reason to open now, or ``""``. Called in CLOSED under the lock.

        It runs when a failure or a slow call is recorded (the only outcomes that can raise a
        rate), so the closed-state success path stays a plain increment: a success that merely
        lifts the window to ``minimum_calls`` does not trip it, the next failure or slow call
        does. A count window smaller than ``minimum_calls`` uses its size as the minimum (as
        Resilience4j does), else it could never hold enough calls to trip.
        """
        config = self.config
        if config.failure_threshold is not None and self._consecutive >= config.failure_threshold:
            return "consecutive_failures"
        rate = config.failure_rate_threshold
        slow_rate = config.slow_call_rate_threshold
        if rate is None and slow_rate is None:
            return ""
        window = self._window
        snap = window.snapshot(now)
        minimum = config.minimum_calls
        if isinstance(window, CountWindow) and window.size < minimum:
            minimum = window.size
        if snap.calls < minimum:
            return ""
        # Compare the ratio, not ``failures >= rate * calls``: the quotient of two integers
        # rounds to the same double as the threshold written in decimal (7/25 == 0.28), while
        # the product can land above the integer (0.28 * 25 > 7) and miss an exact hit.
        if rate is not None and snap.failures / snap.calls >= rate:
            return "failure_rate"
        if slow_rate is not None and snap.slow_calls / snap.calls >= slow_rate:
            return "slow_call_rate"
        return ""

    def _open_duration(self) -> float:
        """How long to stay open this time (a hook for adaptive open durations)."""
        return self.config.recovery_timeout

    # -- the state controller ------------------------------------------------------------------

    def _transition(
        self,
        to: CircuitState,
        now: float,
        reason: str,
        pending: list[Event | tuple[Callable[..., object], int]],
    ) -> None:
        """Move to ``to`` (lock held); events and callbacks are queued in ``pending``."""
        old = self._state
        if to not in _LEGAL[old]:
            raise RuntimeError(f"illegal circuit transition {old.value} -> {to.value}")
        if to is _OPEN:
            if old is _HALF_OPEN:
                self._opens_in_a_row += 1
            else:
                self._opens_in_a_row = 1
                self._open_reason = reason
        elif to is _CLOSED:
            self._opens_in_a_row = 0
            self._forced = False
            self._window.clear(now)
        self._state = to
        self._gen += 1
        self._state_since = now
        self._consecutive = 0
        self._successes_at_failure = -1
        self._half_open_in_flight = 0
        self._half_open_successes = 0
        if to is _OPEN:
            self._open_until = now + self._open_duration()
        self._refresh_fast()
        if self._listeners:
            pending.append(
                BreakerStateChanged(
                    policy=self.name,
                    time=now,
                    old_state=old.value,
                    new_state=to.value,
                    reason=reason,
                )
            )
        config = self.config
        callback, arity = {
            _OPEN: (config.on_open, config._callback_arity[0]),
            _CLOSED: (config.on_close, config._callback_arity[1]),
            _HALF_OPEN: (config.on_half_open, config._callback_arity[2]),
        }[to]
        if callback is not None:
            pending.append((callback, arity))

    def _deliver(self, pending: list[Event | tuple[Callable[..., object], int]]) -> None:
        """Emit queued events and run queued callbacks, outside the lock."""
        if not pending:
            return
        for item in pending:
            if isinstance(item, tuple):
                callback, arity = item
                try:
                    if arity:
                        callback(self.name)
                    else:
                        callback()
                except Exception:
                    _log.exception(
                        "circuit breaker %r: state callback %r failed", self.name, callback
                    )
            else:
                emit(self._listeners, item)

    # -- manual control ------------------------------------------------------------------------

    def reset(self) -> None:
        """Close the breaker and zero every count, cumulative ones included."""
        pending: list[Event | tuple[Callable[..., object], int]] = []
        with self._lock:
            now = self._now()
            if self._state is not _CLOSED:
                self._transition(_CLOSED, now, "reset", pending)
            self._forced = False
            self._window.reset(now)
            self._reset_counts()
            self._gen += 1
            self._state_since = now
            self._refresh_fast()
        self._deliver(pending)

    def force_open(self) -> None:
        """Open the breaker and keep it open until :meth:`reset`."""
        pending: list[Event | tuple[Callable[..., object], int]] = []
        with self._lock:
            now = self._now()
            if self._state is not _OPEN:
                self._transition(_OPEN, now, "forced", pending)
            self._forced = True
        self._deliver(pending)

    def stats(self) -> CircuitBreakerStats:
        """Counts, state and timing at this moment."""
        _ = self.state  # moves an open breaker whose timeout elapsed to half-open
        with self._lock:
            now = self._now()
            window = self._window
            successes = self._base_successes + window.total_successes
            failures = self._base_failures + window.total_failures
            snap = window.snapshot(now)
            # The state read under the lock, so that state and retry_after agree.
            if self._state is _OPEN:
                retry_after = None if self._forced else max(0.0, self._open_until - now)
            else:
                retry_after = 0.0
            return CircuitBreakerStats(
                name=self.name,
                state=self._state.value,
                calls=successes + failures + self._ignored + self._rejected,
                successes=successes,
                failures=failures,
                ignored=self._ignored,
                rejected=self._rejected,
                slow_calls=self._base_slow + window.total_slow,
                failure_rate=snap.failure_rate,
                last_failure_at=self._last_failure_at,
                state_since=self._state_since,
                retry_after=retry_after,
            )

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.value})"

    # -- drivers -------------------------------------------------------------------------------

    def _fast_success(self) -> None:
        """Count the success of a call admitted on the lock-free path (``_fast_gen >= 0``).

        What :meth:`call`, :meth:`acall` and the decorator do inline (a call here would cost them
        a frame); the fused path of :class:`~.pipeline.Pipeline` calls it, so that it records a
        success exactly as they do. No call between the clock read and the increment.
        """
        window = self._window
        now = self._now()
        if now >= window.next_boundary:
            window.rotate(now)
        window.successes += 1

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` through the breaker."""
        gen = self._fast_gen
        if gen >= 0:
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self.on_exception(gen, exc)
                raise
            window = self._window
            now = self._now()
            if now >= window.next_boundary:
                window.rotate(now)
            window.successes += 1
            return result
        now_ = self._now
        permit = self.acquire()
        start = now_()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.on_exception(permit, exc, now_() - start)
            raise
        self.on_success(permit, now_() - start)
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        gen = self._fast_gen
        if gen >= 0:
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self.on_exception(gen, exc)
                raise
            window = self._window
            now = self._now()
            if now >= window.next_boundary:
                window.rotate(now)
            window.successes += 1
            return result
        now_ = self._now
        permit = self.acquire()
        start = now_()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.on_exception(permit, exc, now_() - start)
            raise
        self.on_success(permit, now_() - start)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (sync or async); the wrapper exposes the breaker as ``.breaker``."""
        if not callable(fn):
            raise TypeError(f"circuit_breaker decorates a callable, got {fn!r}")
        breaker = self
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                gen = breaker._fast_gen
                if gen >= 0:
                    try:
                        result = await fn(*args, **kwargs)
                    except BaseException as exc:
                        breaker.on_exception(gen, exc)
                        raise
                    window = breaker._window
                    now = breaker._now()
                    if now >= window.next_boundary:
                        window.rotate(now)
                    window.successes += 1
                    return result
                return await breaker.acall(fn, *args, **kwargs)

            async_wrapper.breaker = breaker  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            gen = breaker._fast_gen
            if gen >= 0:
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    breaker.on_exception(gen, exc)
                    raise
                window = breaker._window
                now = breaker._now()
                if now >= window.next_boundary:
                    window.rotate(now)
                window.successes += 1
                return result
            return breaker.call(fn, *args, **kwargs)

        wrapper.breaker = breaker  # type: ignore[attr-defined]
        return wrapper


def circuit_breaker(
    name: str,
    failure_threshold: int | None = 5,
    recovery_timeout: float = 60.0,
    expected_exception: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    *,
    config: CircuitBreakerConfig | None = None,
    registry: Registry | None = None,
    clock: Clock | None = None,
    listeners: tuple[Listener, ...] | list[Listener] = (),
    **kwargs: Any,
) -> CircuitBreaker:
    """The seed's decorator: ``@circuit_breaker("database", failure_threshold=3)``.

    Returns the breaker named ``name`` from ``registry`` (default :data:`breaker_manager`),
    creating it on first use: two functions decorated with the same name share one breaker. The
    same name with different settings is a ``ValueError``. The breaker decorates sync and async
    functions; the wrapper exposes it as ``.breaker``. ``kwargs`` are further
    :class:`CircuitBreakerConfig` fields. With ``config=`` the three positional settings are
    ignored (as in :func:`~.retry.retry`); give changes to it as keyword overrides in ``kwargs``.
    """
    from .registry import breaker_manager  # noqa: PLC0415 - registry imports this module

    if config is None:
        config = CircuitBreakerConfig(
            failure_threshold=failure_threshold,
            recovery_timeout=recovery_timeout,
            expected_exception=expected_exception,
            **kwargs,
        )
    elif kwargs:
        config = replace(config, **kwargs)
    target = breaker_manager if registry is None else registry
    breaker = target.get_or_create(name, config, clock=clock)
    if not isinstance(breaker, CircuitBreaker):
        raise ValueError(f"{name!r} is registered as a {type(breaker).__name__}, not a breaker")
    for listener in listeners:
        breaker.add_listener(listener)
    return breaker
