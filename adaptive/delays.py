"""Adaptive retry delays: backoff scaled to the dependency, hints honoured, futile retries cut.

Two pieces, both pure (no clock, no sleep, no policy touched):

* :func:`retry_delay` computes one delay from (attempt, previous delay, hint, random draw) and
  the current base and cap: AWS's full, equal or decorrelated jitter ("Exponential Backoff And
  Jitter", 2015), with a retry-after hint (a 429's ``Retry-After``, gRPC pushback, or our own
  breaker's ``retry_after``) as a floor.
* :class:`AdaptiveDelays` is a controller: ``update(snapshot)`` reads the recent median latency,
  recovery time and failure rate of the dependency and returns new :class:`DelaySettings` (the
  base delay and the attempts) when they change, else ``None``. The policy applies them and
  emits the :class:`~.controller.Decision` events :meth:`AdaptiveDelays.decisions` builds.

Why scale the base delay to latency: a retry that fires sooner than the dependency answers
competes with the calls still in flight on it (and with the failed attempt's own server-side
work); waiting about two median latencies lets that work drain, and it scales by itself from a
1 ms cache to a 500 ms embedding API, where any fixed base is wrong for one of them. Why scale
it to the recovery time: when transient failures are observed to clear in ``R`` seconds (the
time from a failed attempt to the retry that succeeded), the first retry's window ``U(0,
base)`` with ``base = R / 2`` and the second's ``U(0, 2 base)`` straddle it, so the second
retry usually lands after the recovery rather than into the fault.

Why shrink the attempts: with independent failures at rate ``p`` another attempt succeeds with
probability ``1 - p``, but every attempt adds load to a dependency that is failing because of
load as often as not. At ``p >= 0.5`` (``futile_failure_rate``) a retry is more likely to fail
than to help and doubles the load of the failures: one attempt only. At ``p >= 0.2``
(``degraded_failure_rate``) two attempts recover ``1 - p`` of the failures for at most ``p``
extra load; below it, ``max_attempts`` (3, the SRE book's limit). Loosening needs the rate to
fall under ``hysteresis`` (0.8) times the threshold, so the attempts do not flap at a boundary.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from ..core._validate import check_float, check_int
from .controller import Bounds, Decision

__all__ = [
    "AdaptiveDelays",
    "AdaptiveDelaysConfig",
    "DelayJitter",
    "DelaySettings",
    "DelaySnapshot",
    "hint_from",
    "retry_delay",
]


class DelayJitter(enum.Enum):
    """How a delay is drawn, with ``e = min(cap, base * 2**(attempt-1))``: ``FULL`` ``U(0, e)``,
    ``EQUAL`` ``e/2 + U(0, e/2)``, ``DECORRELATED`` ``min(cap, U(base, 3 * previous))``."""

    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"


_FULL = DelayJitter.FULL
_EQUAL = DelayJitter.EQUAL


def retry_delay(
    attempt: int,
    previous: float,
    hint: float | None,
    draw: float,
    *,
    base: float,
    cap: float,
    jitter: DelayJitter = DelayJitter.FULL,
    hint_spread: float = 0.1,
) -> float:
    """The delay before retry number ``attempt`` (1 for the first retry). Pure.

    Args:
        attempt: 1 for the first retry.
        previous: the delay used before the previous retry (0 before the first); only
            ``DECORRELATED`` reads it.
        hint: a retry-after in seconds from the dependency or our own breaker, or ``None``.
            It is a floor: the result is at least ``hint``, spread over ``[hint, hint * (1 +
            hint_spread))`` by the same draw so that clients told the same hint do not all
            come back at once. A hint may exceed ``cap``; the policy decides whether to wait
            that long or give up.
        draw: a random number in [0, 1).
        base: the base delay (>= 0); cap: the largest delay without a hint (>= base).
        jitter: see :class:`DelayJitter`.
        hint_spread: the relative spread above a hint (>= 0).

    Without a hint the result is in ``[0, cap]`` (``[min(base, cap), cap]`` when decorrelated).
    """
    if jitter is DelayJitter.DECORRELATED:
        low = base
        high = 3.0 * (previous if previous > base else base)
        delay = min(low + (high - low) * draw, cap)
    else:
        try:
            expo = min(math.ldexp(base, attempt - 1 if attempt > 1 else 0), cap)
        except OverflowError:  # base * 2**n beyond the floats: far past the cap
            expo = cap
        delay = expo * draw if jitter is _FULL else expo * (0.5 + 0.5 * draw)
    if hint is not None and hint >= delay:
        delay = hint * (1.0 + hint_spread * draw)
    return delay


def hint_from(exception: BaseException | None) -> float | None:
    """A retry-after hint carried by ``exception`` (its ``retry_after`` attribute: throttling
    errors and our own rejections, a breaker's included), or ``None``."""
    value = getattr(exception, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        return None
    return value


@dataclass(frozen=True, slots=True)
class DelaySnapshot:
    """What :meth:`AdaptiveDelays.update` reads: the dependency's recent behaviour.

    Attributes:
        time: when it was taken (the policy's clock).
        failure_rate: failed attempts / attempts over the recent window.
        calls: attempts behind ``failure_rate``.
        median_latency: the recent p50 of attempt latency in seconds, ``None`` if unknown.
        recovery_time: the recent typical time from a failed attempt to the retry that
            succeeded, in seconds, ``None`` if unknown.
    """

    time: float
    failure_rate: float = 0.0
    calls: int = 0
    median_latency: float | None = None
    recovery_time: float | None = None


@dataclass(frozen=True, slots=True)
class DelaySettings:
    """The settings a retry policy applies: ``base_delay`` and ``max_delay`` (the cap, without
    a hint) in seconds, and ``max_attempts`` (the first attempt included)."""

    base_delay: float
    max_delay: float
    max_attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveDelaysConfig:
    """How :class:`AdaptiveDelays` moves (see the module docstring for why these defaults).

    Attributes:
        latency_multiple: the base delay is at least this many median latencies (2).
        recovery_fraction: ... and at least this fraction of the recovery time (0.5).
        min_base_delay, max_base_delay: bounds of the base delay (10 ms, 1 s).
        initial_base_delay: the base delay before anything is known (0.1 s).
        max_delay: the cap on one delay without a hint (2 s, >= ``max_base_delay``): past it
            a retry waits longer than the breaker's own probing, which notices a return sooner.
        max_attempts: attempts while the failure rate is low (3).
        degraded_failure_rate: at or above it, 2 attempts (0.2).
        futile_failure_rate: at or above it, 1 attempt (0.5).
        hysteresis: loosening the attempts needs the rate under this times the threshold (0.8).
        min_calls: the attempts move only on a failure rate behind this many calls (20).
        change: the relative change of the base delay worth an update (0.1).
        jitter: see :class:`DelayJitter` (FULL: least work under contention, per AWS).
        hint_spread: see :func:`retry_delay` (0.1).
    """

    latency_multiple: float = 2.0
    recovery_fraction: float = 0.5
    min_base_delay: float = 0.01
    max_base_delay: float = 1.0
    initial_base_delay: float = 0.1
    max_delay: float = 2.0
    max_attempts: int = 3
    degraded_failure_rate: float = 0.2
    futile_failure_rate: float = 0.5
    hysteresis: float = 0.8
    min_calls: int = 20
    change: float = 0.1
    jitter: DelayJitter = DelayJitter.FULL
    hint_spread: float = 0.1
    bounds: Bounds = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_float("latency_multiple", self.latency_multiple, minimum=0.0)
        check_float("recovery_fraction", self.recovery_fraction, minimum=0.0)
        low = check_float("min_base_delay", self.min_base_delay, minimum=0.0)
        high = check_float("max_base_delay", self.max_base_delay, minimum=0.0)
        if high < low:
            raise ValueError(f"max_base_delay ({high!r}) must be >= min_base_delay ({low!r})")
        initial = check_float("initial_base_delay", self.initial_base_delay, minimum=0.0)
        if not low <= initial <= high:
            raise ValueError(
                f"initial_base_delay ({initial!r}) must be within "
                f"[min_base_delay, max_base_delay] = [{low!r}, {high!r}]"
            )
        cap = check_float("max_delay", self.max_delay, minimum=0.0)
        if cap < high:
            raise ValueError(f"max_delay ({cap!r}) must be >= max_base_delay ({high!r})")
        check_int("max_attempts", self.max_attempts, minimum=1)
        degraded = check_float("degraded_failure_rate", self.degraded_failure_rate)
        futile = check_float("futile_failure_rate", self.futile_failure_rate)
        if not 0.0 < degraded <= futile <= 1.0:
            raise ValueError(
                "degraded_failure_rate and futile_failure_rate must satisfy "
                f"0 < degraded_failure_rate <= futile_failure_rate <= 1, got {degraded!r}, "
                f"{futile!r}"
            )
        h = check_float("hysteresis", self.hysteresis)
        if not 0.0 < h <= 1.0:
            raise ValueError(f"hysteresis must be in (0, 1], got {h!r}")
        check_int("min_calls", self.min_calls, minimum=1)
        check_float("change", self.change, minimum=0.0)
        jitter: object = self.jitter
        if not isinstance(jitter, DelayJitter):
            try:
                object.__setattr__(self, "jitter", DelayJitter(str(jitter).lower()))
            except ValueError:
                raise ValueError(
                    f"jitter must be full, equal or decorrelated, got {jitter!r}"
                ) from None
        check_float("hint_spread", self.hint_spread, minimum=0.0)
        object.__setattr__(self, "bounds", Bounds(low, high))


class AdaptiveDelays:
    """A controller of retry delays and attempts for one dependency (pure; see the module).

    ``update(snapshot)`` returns the new :class:`DelaySettings` when the base delay moved by
    at least ``change`` or the attempts changed, else ``None``; :meth:`delay` computes one delay
    with the current settings.
    """

    __slots__ = ("_settings", "config", "name")

    setting = "base_delay"

    def __init__(
        self, config: AdaptiveDelaysConfig | None = None, *, name: str = "adaptive_delays"
    ) -> None:
        if config is None:
            config = AdaptiveDelaysConfig()
        elif not isinstance(config, AdaptiveDelaysConfig):
            raise TypeError(f"config must be an AdaptiveDelaysConfig, got {config!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.config = config
        self.name = name
        self._settings = DelaySettings(
            base_delay=config.initial_base_delay,
            max_delay=config.max_delay,
            max_attempts=config.max_attempts,
        )

    @property
    def bounds(self) -> Bounds:
        """The base delay's bounds."""
        return self.config.bounds

    @property
    def value(self) -> float:
        """The current base delay."""
        return self._settings.base_delay

    @property
    def settings(self) -> DelaySettings:
        return self._settings

    def _attempts(self, rate: float, relax: float) -> int:
        config = self.config
        if rate >= config.futile_failure_rate * relax:
            return 1
        if rate >= config.degraded_failure_rate * relax:
            return min(2, config.max_attempts)
        return config.max_attempts

    def _base(self, snapshot: DelaySnapshot) -> float | None:
        config = self.config
        candidates: list[float] = []
        latency = snapshot.median_latency
        if latency is not None and math.isfinite(latency) and latency >= 0.0:
            candidates.append(config.latency_multiple * latency)
        recovery = snapshot.recovery_time
        if recovery is not None and math.isfinite(recovery) and recovery >= 0.0:
            candidates.append(config.recovery_fraction * recovery)
        if not candidates:
            return None
        return config.bounds.clamp(max(candidates))

    def update(self, snapshot: DelaySnapshot) -> DelaySettings | None:
        """New settings from ``snapshot``, or ``None`` when nothing changed materially."""
        config = self.config
        old = self._settings
        base = old.base_delay
        wanted = self._base(snapshot)
        if wanted is not None and abs(wanted - base) > config.change * base:
            base = wanted
        attempts = old.max_attempts
        rate = snapshot.failure_rate
        if snapshot.calls >= config.min_calls and math.isfinite(rate):
            target = self._attempts(rate, 1.0)
            if target > attempts:
                # Loosen only once the rate is clearly below the threshold that was crossed.
                target = max(attempts, self._attempts(rate, config.hysteresis))
            attempts = target
        if base == old.base_delay and attempts == old.max_attempts:
            return None
        self._settings = DelaySettings(
            base_delay=base, max_delay=config.max_delay, max_attempts=attempts
        )
        return self._settings

    def delay(self, attempt: int, previous: float, hint: float | None, draw: float) -> float:
        """:func:`retry_delay` with the current base, cap and jitter."""
        settings = self._settings
        return retry_delay(
            attempt,
            previous,
            hint,
            draw,
            base=settings.base_delay,
            cap=settings.max_delay,
            jitter=self.config.jitter,
            hint_spread=self.config.hint_spread,
        )

    def decisions(
        self, old: DelaySettings, new: DelaySettings, snapshot: DelaySnapshot, *, policy: str
    ) -> list[Decision]:
        """The :class:`~.controller.Decision` events for a change from ``old`` to ``new``."""
        inputs = {"failure_rate": snapshot.failure_rate, "calls": float(snapshot.calls)}
        if snapshot.median_latency is not None:
            inputs["median_latency"] = snapshot.median_latency
        if snapshot.recovery_time is not None:
            inputs["recovery_time"] = snapshot.recovery_time
        out: list[Decision] = []
        for setting, before, after in (
            ("base_delay", old.base_delay, new.base_delay),
            ("max_attempts", float(old.max_attempts), float(new.max_attempts)),
        ):
            if before != after:
                out.append(
                    Decision(
                        policy=policy,
                        time=snapshot.time,
                        controller=self.name,
                        setting=setting,
                        old=before,
                        new=after,
                        inputs=dict(inputs),
                    )
                )
        return out

    def __repr__(self) -> str:
        return f"AdaptiveDelays(name={self.name!r}, settings={self._settings!r})"
