"""The part every one-number controller shares: its name, its bounds and the clamped update.

A controller subclasses :class:`BoundedController`, computes a proposed setting from a snapshot,
and hands it to :meth:`~BoundedController._propose`, which clamps it to the bounds and returns
the new value, or ``None`` when the clamped value equals the current one. That single exit is
what makes "``update`` returns ``None`` exactly when the value does not change" hold for every
controller.
"""

from __future__ import annotations

import math

from ..core._validate import check_float
from ..core._waiting import check_name
from .controller import Bounds

__all__ = ["BoundedController", "check_bounds"]


def check_bounds(bounds: object) -> Bounds:
    if not isinstance(bounds, Bounds):
        raise TypeError(f"bounds must be a Bounds, got {bounds!r}")
    return bounds


class BoundedController:
    """A setting kept within ``bounds``; subclasses implement ``update`` and ``inputs``."""

    __slots__ = ("_value", "bounds", "name", "setting")

    name: str
    setting: str
    bounds: Bounds

    def __init__(self, *, name: str, setting: str, bounds: Bounds, initial: float) -> None:
        self.name = check_name(name)
        self.setting = setting
        self.bounds = check_bounds(bounds)
        value = check_float("initial", initial, allow_inf=True)
        if not bounds.minimum <= value <= bounds.maximum:
            raise ValueError(
                f"initial must be within [{bounds.minimum!r}, {bounds.maximum!r}], got {initial!r}"
            )
        self._value = value

    @property
    def value(self) -> float:
        """The current setting."""
        return self._value

    def _propose(self, proposed: float) -> float | None:
        """Clamp ``proposed`` and adopt it; the new value, or ``None`` when it is unchanged."""
        if math.isnan(proposed):  # snapshots reject NaN; this keeps a bug from spreading one
            return None
        new = self.bounds.clamp(proposed)
        if new == self._value:
            return None
        self._value = new
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, {self.setting}={self._value!r})"
