"""What every controller shares: bounds, the decision event, and the amortised tick.

A controller is pure: ``update(snapshot) -> new value | None`` reads a snapshot of statistics
(time arrives as data, inside the snapshot) and returns the new setting, clamped to
``[minimum, maximum]``, or ``None`` when the setting does not change. It never reads a clock,
sleeps or touches a policy: the adaptive policy applies its answers (``set_limit``,
``set_rate``, a config swapped with ``dataclasses.replace``) and emits a :class:`Decision` event
(the inputs, the old and the new value) for telemetry.

Controllers run amortised on the calling path: :class:`Ticker` tells a caller, with one float
comparison, whether the tick interval has passed, and lets exactly one caller run the update.
No thread or task is needed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from ..core._validate import check_float
from ..core.events import SettingChanged

__all__ = ["Bounds", "Controller", "Decision", "Ticker"]

S_contra = TypeVar("S_contra", contravariant=True)


@dataclass(frozen=True, slots=True)
class Bounds:
    """A closed interval a setting is kept in."""

    minimum: float
    maximum: float

    def __post_init__(self) -> None:
        check_float("minimum", self.minimum)
        check_float("maximum", self.maximum, allow_inf=True)
        if self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum!r}) must be <= maximum ({self.maximum!r})")

    def clamp(self, value: float) -> float:
        if value < self.minimum:
            return self.minimum
        if value > self.maximum:
            return self.maximum
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision(SettingChanged):
    """A controller changed a setting: which, from what, to what, and on which inputs.

    A :class:`~sage_resilience.core.SettingChanged`, so every listener that exports settings
    (the Prometheus and OpenTelemetry ``sage_resilience_setting`` gauge, the logging listener)
    reports the controllers' values without knowing about them.
    """

    controller: str
    reason: str = "controller"
    inputs: dict[str, float] = field(default_factory=dict)


class Controller(Protocol, Generic[S_contra]):
    """``update(snapshot)`` returns the new setting (within ``bounds``) or ``None``."""

    name: str
    setting: str
    bounds: Bounds

    @property
    def value(self) -> float: ...

    def update(self, snapshot: S_contra) -> float | None: ...


class Ticker:
    """Runs something at most once per ``interval`` seconds, on whichever call notices first.

    ``due(now)`` is one comparison; ``claim(now)`` lets exactly one of the callers that saw it
    due run the tick (the others carry on), then schedules the next one.
    """

    __slots__ = ("_lock", "interval", "next_at")

    def __init__(self, interval: float, *, start: float = 0.0) -> None:
        self.interval = check_float("interval", interval, positive=True)
        self.next_at = start + self.interval
        self._lock = threading.Lock()

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def claim(self, now: float) -> bool:
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if now < self.next_at:
                return False
            # Skip missed ticks rather than running them all: controllers read rates, not counts.
            self.next_at = now + self.interval
            return True
        finally:
            self._lock.release()
