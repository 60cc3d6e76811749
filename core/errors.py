"""The exceptions this package raises.

Every refusal made by one of our own policies (a breaker that is open, and in later modules a rate
limiter, a bulkhead or a load shedder) is a :class:`RejectedError`. A rejection means the call was
never made, so retrying it at once is pointless: retries never retry rejections unless told to.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BulkheadFull",
    "CircuitBreakerOpenError",
    "OutcomeUnknownError",
    "PermanentError",
    "RateLimitExceeded",
    "RejectedError",
    "ResilienceError",
    "ResilienceTimeoutError",
    "ShedError",
    "ThrottledError",
    "TransientError",
]


class ResilienceError(Exception):
    """Base class of every exception raised by sage-resilience itself."""


class RejectedError(ResilienceError):
    """A call refused locally by one of our policies; the dependency was not called.

    Attributes:
        name: the name of the policy that refused.
        reason: a short machine-readable reason (``"breaker_open"``, ``"half_open_full"``, ...).
        retry_after: seconds until a call may be admitted again, when known; ``None`` otherwise.
    """

    def __init__(
        self, message: str, *, name: str, reason: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.name = name
        self.reason = reason
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds with ``cls(*args)``, which cannot work with keyword-only fields
        # (pickling, ``copy.copy`` and process pools failed). Rebuild without ``__init__`` from
        # the message and the attributes instead; subclasses with other signatures inherit it.
        return (_rebuild, (type(self), self.args), self.__dict__)


def _rebuild(cls: type[RejectedError], args: tuple[Any, ...]) -> RejectedError:
    return cls.__new__(cls, *args)


class CircuitBreakerOpenError(RejectedError):
    """The circuit breaker ``name`` refused the call (open, or half-open with every trial taken)."""

    def __init__(
        self, name: str, retry_after: float | None = None, *, reason: str = "breaker_open"
    ) -> None:
        when = "until reset" if retry_after is None else f"retry after {retry_after:.3f}s"
        super().__init__(
            f"circuit breaker {name!r} is open ({when})",
            name=name,
            reason=reason,
            retry_after=retry_after,
        )


class RateLimitExceeded(RejectedError):
    """The rate limiter ``name`` could not grant a token within the allowed wait."""

    def __init__(self, name: str, retry_after: float | None = None) -> None:
        when = "" if retry_after is None else f"; a token in {retry_after:.3f}s"
        super().__init__(
            f"rate limiter {name!r} refused the call{when}",
            name=name,
            reason="rate_limited",
            retry_after=retry_after,
        )


class BulkheadFull(RejectedError):
    """The bulkhead ``name`` had no free slot (its queue was full, or the wait timed out)."""

    def __init__(self, name: str, *, reason: str = "bulkhead_full") -> None:
        super().__init__(f"bulkhead {name!r} is full ({reason})", name=name, reason=reason)


class ShedError(RejectedError):
    """The load shedder ``name`` refused the call to protect the dependency under overload.

    Attributes:
        priority: the name of the refused call's priority level.
    """

    def __init__(
        self,
        name: str,
        *,
        priority: str,
        retry_after: float | None = None,
        reason: str = "shed",
    ) -> None:
        super().__init__(
            f"{name!r} shed a {priority} call ({reason})",
            name=name,
            reason=reason,
            retry_after=retry_after,
        )
        self.priority = priority


class ResilienceTimeoutError(ResilienceError, TimeoutError):
    """A :class:`~.timeout.Timeout` fired: the call took longer than ``seconds``.

    A ``TimeoutError`` (so code catching the builtin keeps working) that says which limit fired:
    ``kind`` is ``"attempt"`` (a per-attempt timeout inside a retry, which the retry may retry)
    or ``"total"`` (the overall deadline of the call).
    """

    def __init__(self, name: str, *, seconds: float, kind: str) -> None:
        super().__init__(f"{kind} timeout {name!r} fired after {seconds:g}s")
        self.name = name
        self.seconds = seconds
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_timeout, (type(self), self.args), self.__dict__)


def _rebuild_timeout(
    cls: type[ResilienceTimeoutError], args: tuple[Any, ...]
) -> ResilienceTimeoutError:
    # TimeoutError (an OSError) fills ``args`` in ``__init__``, which unpickling skips.
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class TransientError(Exception):
    """Mark an error as transient: worth retrying, counted by breakers.

    Subclass it (alone or beside another base) to classify your own exceptions explicitly.
    """


class PermanentError(Exception):
    """Mark an error as permanent (4xx-like): never retried by default, never trips a breaker."""


class ThrottledError(TransientError):
    """The dependency asked us to slow down (HTTP 429, 503 with Retry-After, gRPC pushback).

    Attributes:
        retry_after: the server's hint in seconds, if it gave one.
    """

    def __init__(self, message: str = "throttled", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OutcomeUnknownError(TransientError):
    """The call failed after the dependency may have acted on it (a write whose reply was lost).

    It counts as a failure of the dependency, like any transient error, but no retry policy
    repeats it: the first attempt may already have taken effect. Raise it ``from`` the original
    error around a non-idempotent operation that failed after it was sent.
    """
