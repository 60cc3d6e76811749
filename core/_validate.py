"""Checks shared by every config's ``__post_init__``: each error names the field."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "check_callable",
    "check_exceptions",
    "check_float",
    "check_int",
    "check_optional_float",
    "check_optional_int",
    "check_probability",
]


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_optional_int(name: str, value: object, *, minimum: int | None = None) -> int | None:
    return None if value is None else check_int(name, value, minimum=minimum)


def check_float(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
    allow_inf: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    result = float(value)
    if math.isnan(result) or (math.isinf(result) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and result <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and result > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return result


def check_optional_float(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> float | None:
    if value is None:
        return None
    return check_float(name, value, minimum=minimum, maximum=maximum, positive=positive)


def check_probability(name: str, value: object) -> float | None:
    """A ratio in (0, 1], or ``None`` for "off"."""
    if value is None:
        return None
    result = check_float(name, value)
    if not 0.0 < result <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return result


def check_callable(name: str, value: object) -> Callable[..., Any] | None:
    if value is None:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be callable or None, got {value!r}")
    return value


def check_exceptions(name: str, value: object) -> tuple[type[BaseException], ...]:
    """An exception class or a tuple/list of them, normalised to a tuple."""
    items = value if isinstance(value, tuple | list | frozenset | set) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{name} must hold exception classes, got {item!r}")
    return tuple(items)
