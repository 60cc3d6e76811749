"""Telemetry as events: small frozen records delivered to listeners.

Every policy keeps a tuple of listeners. When something happens (a state transition, a
rejection, a recorded outcome, a retry), the policy builds one event and hands it to each
listener. A listener is any callable taking the event; one that raises is logged and ignored, it
never breaks the call. Events are only built when at least one listener is attached, so an
unobserved policy pays nothing for telemetry.

Logging, Prometheus and OpenTelemetry are listeners (see :mod:`sage_resilience.integrations`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "BreakerOutcome",
    "BreakerStateChanged",
    "CallRejected",
    "Event",
    "FallbackUsed",
    "Listener",
    "Observable",
    "RetryAttempted",
    "RetryGaveUp",
    "RetrySucceeded",
    "SettingChanged",
    "emit",
]

_log = logging.getLogger("sage_resilience")

# Serialises the read-modify-write of listener tuples (two threads adding at once must not lose
# one); never held while delivering, so the hot path never touches it.
_change_lock = threading.Lock()


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: which policy, of which kind, and when (the policy's clock)."""

    policy: str
    time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStateChanged(Event):
    """A circuit breaker moved from one state to another."""

    old_state: str
    new_state: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOutcome(Event):
    """A call through a breaker finished and was recorded.

    ``outcome`` is ``"success"``, ``"failure"`` or ``"ignored"``; ``slow`` says whether it took at
    least the slow-call duration; ``exception`` is the exception's type name, if any.
    """

    outcome: str
    duration: float
    slow: bool
    exception: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(Event):
    """A policy refused a call without making it."""

    kind: str
    reason: str
    retry_after: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryAttempted(Event):
    """An attempt failed and another one is scheduled after ``delay`` seconds."""

    attempt: int
    delay: float
    exception: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySucceeded(Event):
    """A call through a retry policy succeeded, after ``attempts`` attempts (1: no retry).

    ``elapsed`` runs from the call's start (emitted only while someone listens, and listening
    makes the policy read the clock at the start of every call).
    """

    attempts: int
    elapsed: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUp(Event):
    """A retry policy stopped: attempts exhausted, deadline reached, or error not retryable."""

    attempts: int
    reason: str
    exception: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingChanged(Event):
    """A policy's setting changed at runtime (a rate, a limit, a threshold), by a controller or
    by hand; ``reason`` says who or why."""

    setting: str
    old: float
    new: float
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """A fallback answered in place of a call that raised ``exception``."""

    exception: str


@runtime_checkable
class Listener(Protocol):
    """Receives events; any ``(event) -> None`` callable qualifies."""

    def __call__(self, event: Event) -> None: ...


def emit(listeners: Iterable[Listener], event: Event) -> None:
    """Deliver ``event`` to each listener; a listener that raises is logged, never propagated."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            _log.exception("sage_resilience listener %r failed on %r", listener, event)


class Observable:
    """Mixin: a policy's listeners, an immutable tuple swapped whole on change.

    Reading it on the hot path is one attribute load (``if self._listeners:``); adding or removing
    replaces the tuple, so a call in flight keeps delivering to the set it started with.
    Subclasses that cache "nobody listens" override :meth:`_listeners_changed`.
    """

    __slots__ = ("_listeners",)
    _listeners: tuple[Listener, ...]

    def add_listener(self, listener: Listener) -> None:
        """Deliver this policy's events to ``listener`` too (adding it twice has no effect)."""
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {listener!r}")
        with _change_lock:
            if listener in self._listeners:
                return
            self._listeners = (*self._listeners, listener)
        self._listeners_changed()

    def remove_listener(self, listener: Listener) -> None:
        """Stop delivering to ``listener`` (no error if it was not attached).

        Listeners are matched by equality, as :meth:`add_listener` does: a bound method such as
        ``collector.append`` is a new object at each access, so identity would never match it.
        """
        with _change_lock:
            kept = tuple(x for x in self._listeners if x != listener)
            if len(kept) == len(self._listeners):
                return
            self._listeners = kept
        self._listeners_changed()

    @property
    def listeners(self) -> tuple[Listener, ...]:
        return self._listeners

    def _listeners_changed(self) -> None:
        """Hook called after the listener tuple changed."""
