"""Policy events as stdlib log records, quiet by default.

:class:`LoggingListener` turns each event into one record on the ``sage_resilience`` logger (or
yours), with the event's fields as structured ``extra`` attributes, so a JSON formatter or a log
pipeline can filter on them (``record.policy``, ``record.event``, ``record.state``, ...).

Default levels (a call that goes well logs nothing; what an operator must see is a WARNING):

=====================  ================================================================
event                  level
=====================  ================================================================
BreakerStateChanged    WARNING
RetryGaveUp            WARNING when attempts or time ran out; DEBUG when the error was
                       not retryable or the call was cancelled (the caller sees it)
RetryAttempted         INFO
RetrySucceeded         INFO after a retry; not logged on the first attempt
SettingChanged         INFO
CallRejected           DEBUG (one per refused call: an open breaker refuses them all)
FallbackUsed           DEBUG (one per degraded call)
BreakerOutcome         not logged (one per call)
=====================  ================================================================

Pass ``levels={EventType: level or None}`` to change one (``None`` silences it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Final

from ..core import (
    BreakerOutcome,
    BreakerStateChanged,
    CallRejected,
    Event,
    FallbackUsed,
    RetryAttempted,
    RetryGaveUp,
    RetrySucceeded,
    SettingChanged,
)

__all__ = ["LoggingListener"]

DEBUG: Final = logging.DEBUG
INFO: Final = logging.INFO
WARNING: Final = logging.WARNING

# Give-ups an operator should hear about; the others end in an error the caller sees anyway.
_LOUD_GIVE_UPS: Final = frozenset(
    {"attempts_exhausted", "deadline", "retry_after_beyond_max_delay"}
)

# The family of the policy behind each event type (CallRejected says its own).
_KINDS: Final[Mapping[type[Event], str]] = {
    BreakerStateChanged: "circuit_breaker",
    BreakerOutcome: "circuit_breaker",
    RetryAttempted: "retry",
    RetrySucceeded: "retry",
    RetryGaveUp: "retry",
    FallbackUsed: "fallback",
}


def _default_level(event: Event) -> int | None:
    if isinstance(event, BreakerStateChanged):
        return WARNING
    if isinstance(event, RetryGaveUp):
        return WARNING if event.reason in _LOUD_GIVE_UPS else DEBUG
    if isinstance(event, RetryAttempted | SettingChanged):
        return INFO
    if isinstance(event, RetrySucceeded):
        return INFO if event.attempts > 1 else None
    if isinstance(event, BreakerOutcome):
        return None
    return DEBUG


def _message(event: Event) -> tuple[str, tuple[object, ...]]:
    """The record's format string and arguments (formatted only if the record is emitted)."""
    p = event.policy
    if isinstance(event, BreakerStateChanged):
        return "circuit breaker %r: %s -> %s (%s)", (
            p,
            event.old_state,
            event.new_state,
            event.reason,
        )
    if isinstance(event, RetryAttempted):
        return "retry %r: attempt %d failed (%s), next in %.3fs", (
            p,
            event.attempt,
            event.exception or "rejected result",
            event.delay,
        )
    if isinstance(event, RetrySucceeded):
        return "retry %r: succeeded after %d attempts in %.3fs", (p, event.attempts, event.elapsed)
    if isinstance(event, RetryGaveUp):
        return "retry %r: gave up after %d attempts (%s; last error: %s)", (
            p,
            event.attempts,
            event.reason,
            event.exception or "rejected result",
        )
    if isinstance(event, CallRejected):
        return "%s %r refused a call (%s)", (event.kind, p, event.reason)
    if isinstance(event, SettingChanged):
        return "%r: %s %g -> %g (%s)", (p, event.setting, event.old, event.new, event.reason)
    if isinstance(event, FallbackUsed):
        return "fallback %r answered in place of %s", (p, event.exception)
    if isinstance(event, BreakerOutcome):
        return "circuit breaker %r: %s in %.3fs", (p, event.outcome, event.duration)
    return "%r: %s", (p, type(event).__name__)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _extra(event: Event) -> dict[str, Any]:
    """The event's fields as record attributes (``time`` as ``event_time``: the policy clock's
    reading, not the record's wall-clock ``created``), plus ``event`` and the policy ``kind``."""
    extra: dict[str, Any] = {"event": _snake(type(event).__name__)}
    kind = _KINDS.get(type(event))
    if kind is not None:
        extra["kind"] = kind
    for f in fields(event):
        extra["event_time" if f.name == "time" else f.name] = getattr(event, f.name)
    if isinstance(event, BreakerStateChanged):
        extra["state"] = event.new_state
    return extra


class LoggingListener:
    """Log policy events through :mod:`logging`.

    Args:
        logger: a logger or a logger name (default the ``sage_resilience`` logger).
        levels: per event type, the level to log it at, or ``None`` not to log it; types not
            given keep their default (see the module's table). Subclasses of an event type
            follow their base's entry.

    Records are built only when the logger is enabled for the level, so a silenced event costs a
    dictionary lookup and a level check.
    """

    __slots__ = ("_levels", "logger")

    def __init__(
        self,
        logger: logging.Logger | str | None = None,
        *,
        levels: Mapping[type[Event], int | None] | None = None,
    ) -> None:
        if logger is None or isinstance(logger, str):
            logger = logging.getLogger(logger or "sage_resilience")
        if not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger or a name, got {logger!r}")
        self.logger = logger
        self._levels: dict[type[Event], int | None] = {}
        for cls, level in (levels or {}).items():
            if not (isinstance(cls, type) and issubclass(cls, Event)):
                raise TypeError(f"levels keys must be event types, got {cls!r}")
            if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
                raise TypeError(f"level for {cls.__name__} must be an int or None, got {level!r}")
            self._levels[cls] = level

    def __repr__(self) -> str:
        return f"LoggingListener(logger={self.logger.name!r})"

    def level_for(self, event: Event) -> int | None:
        """The level ``event`` is logged at, or ``None`` if it is not logged."""
        levels = self._levels
        if levels:
            for cls in type(event).__mro__:
                if cls in levels:
                    return levels[cls]
        return _default_level(event)

    def __call__(self, event: Event) -> None:
        """Log ``event`` if its level is enabled."""
        level = self.level_for(event)
        if level is None or not self.logger.isEnabledFor(level):
            return
        message, args = _message(event)
        self.logger.log(level, message, *args, extra=_extra(event))
