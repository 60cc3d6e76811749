"""Delay schedules for retries: strategy first, then the cap, then jitter.

For retry ``n`` (1 for the first retry) with ``d0 = initial_delay`` and ``b = exponential_base``:

=============  ==========================================
FIXED          ``d0``
LINEAR         ``d0 * n``
EXPONENTIAL    ``d0 * b ** (n - 1)``
FIBONACCI      ``d0 * F(n)`` with ``F = 1, 1, 2, 3, 5, ...``
DECORRELATED   ``min(cap, U(d0, 3 * previous))``, ``previous = d0`` before the first retry
=============  ==========================================

The strategy's delay is capped at ``max_delay`` and jitter is then applied to the capped value
(AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): ``NONE`` keeps it, ``FULL`` draws
``U(0, d)``, ``EQUAL`` draws ``d/2 + U(0, d/2)``. Full and decorrelated jitter spread retries of
many clients best; no jitter synchronises them. The seed's ``jitter=True`` (a multiplier in
[0.5, 1.0]) is ``EQUAL``. Decorrelated jitter carries its own randomness; ``jitter`` does not apply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ._validate import check_float
from .clock import RandomSource

__all__ = ["Backoff", "Jitter", "RetryStrategy"]


class RetryStrategy(enum.Enum):
    """How the delay grows from one retry to the next."""

    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"
    FIBONACCI = "fibonacci"
    DECORRELATED = "decorrelated"


class Jitter(enum.Enum):
    """How a delay is randomised after the cap."""

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"

    @classmethod
    def coerce(cls, value: Jitter | bool | str) -> Jitter:
        """``True`` is the seed's multiplier in [0.5, 1.0] (EQUAL), ``False`` is NONE."""
        if isinstance(value, Jitter):
            return value
        if value is True:
            return cls.EQUAL
        if value is False:
            return cls.NONE
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        raise ValueError(
            f"jitter must be a Jitter, a bool or one of none/full/equal, got {value!r}"
        )


def _coerce_strategy(value: RetryStrategy | str) -> RetryStrategy:
    if isinstance(value, RetryStrategy):
        return value
    if isinstance(value, str):
        try:
            return RetryStrategy(value.lower())
        except ValueError:
            pass
    raise ValueError(f"strategy must be a RetryStrategy, got {value!r}")


_TABLE_LIMIT = 64
_DECORRELATED = RetryStrategy.DECORRELATED
_NO_JITTER = Jitter.NONE
_FULL = Jitter.FULL


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """A validated delay schedule; :meth:`delay` is pure given the random draw."""

    strategy: RetryStrategy = RetryStrategy.EXPONENTIAL
    initial_delay: float = 1.0
    max_delay: float = 60.0
    exponential_base: float = 2.0
    jitter: Jitter = Jitter.EQUAL
    # Capped delays without jitter for retries 1..len(_table); past the end the last value holds
    # (the table stops once the cap is reached) or is computed directly.
    _table: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", _coerce_strategy(self.strategy))
        object.__setattr__(self, "jitter", Jitter.coerce(self.jitter))
        initial = check_float("initial_delay", self.initial_delay, minimum=0.0)
        cap = check_float("max_delay", self.max_delay, minimum=0.0)
        base = check_float("exponential_base", self.exponential_base, minimum=1.0)
        if initial > cap:
            raise ValueError(f"initial_delay ({initial!r}) must be <= max_delay ({cap!r})")
        object.__setattr__(self, "initial_delay", initial)
        object.__setattr__(self, "max_delay", cap)
        object.__setattr__(self, "exponential_base", base)
        table: list[float] = []
        for n in range(1, _TABLE_LIMIT + 1):
            d = self._capped(n)
            table.append(d)
            if d >= cap:
                break
        object.__setattr__(self, "_table", tuple(table))

    def _capped(self, n: int) -> float:
        d0, cap = self.initial_delay, self.max_delay
        if d0 == 0.0:
            # Every strategy scales d0; short-circuit so the overflow fallback below (which
            # assumes growth towards the cap) cannot turn 0 * huge into the cap.
            return 0.0
        strategy = self.strategy
        if strategy is RetryStrategy.FIXED or strategy is RetryStrategy.DECORRELATED:
            raw = d0
        elif strategy is RetryStrategy.LINEAR:
            raw = d0 * n
        elif strategy is RetryStrategy.EXPONENTIAL:
            try:
                raw = d0 * self.exponential_base ** (n - 1)
            except OverflowError:
                raw = cap
        else:  # FIBONACCI
            a, b = 1, 1
            try:
                for _ in range(n - 1):
                    a, b = b, a + b
                    if d0 * a >= cap:
                        break
                raw = d0 * a
            except OverflowError:
                # F(n) beyond float range before d0 * F(n) reached the cap (a subnormal d0).
                raw = cap
        return raw if raw < cap else cap

    def base_delay(self, retry: int) -> float:
        """The capped delay before retry ``retry`` (1-based) without jitter."""
        table = self._table
        if retry <= len(table):
            return table[retry - 1]
        last = table[-1]
        if last >= self.max_delay or self.strategy is RetryStrategy.FIXED:
            return last
        return self._capped(retry)

    def delay(self, retry: int, previous: float, random: RandomSource) -> float:
        """The delay before retry ``retry`` (1-based).

        Args:
            retry: 1 for the first retry.
            previous: the delay actually used before the previous retry of this call
                (0.0 before the first); only DECORRELATED reads it.
            random: a source of floats in [0, 1); not called when there is no jitter.
        """
        if self.strategy is _DECORRELATED:
            low = self.initial_delay
            high = 3.0 * (previous if previous > 0.0 else low)
            d = low + (high - low) * random()
            return d if d < self.max_delay else self.max_delay
        table = self._table
        d = table[retry - 1] if retry <= len(table) else self.base_delay(retry)
        jitter = self.jitter
        if jitter is _NO_JITTER or d == 0.0:
            return d
        if jitter is _FULL:
            return d * random()
        return d * (0.5 + 0.5 * random())
