"""Failure classification: what kind of failure an exception is.

Retry and breaker decide from one classification (``../shared/DESIGN.md`` principle 9):

* ``ABORT``: not a failure of the dependency at all: cancellation, ``KeyboardInterrupt``,
  ``SystemExit``, ``GeneratorExit`` (every ``BaseException`` that is not an ``Exception``). Never
  retried, never counted.
* ``REJECTED``: refused by one of our own policies (:class:`RejectedError`). Not retried by default,
  never counted as a failure of the dependency.
* ``PERMANENT``: a 4xx-like error: retrying cannot help and the dependency is healthy. Not retried
  by default, never trips a breaker.
* ``THROTTLED``: the dependency asked us to slow down; retried after its hint.
* ``TRANSIENT``: everything else; retried and counted.

Exceptions are classified by the marker classes of :mod:`.errors` and by classifiers that the
integrations register (for example asyncpg's SQLSTATE classes). A classifier returns ``None`` when
it has no opinion.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable

from .errors import PermanentError, RejectedError, ThrottledError, TransientError

__all__ = [
    "Classifier",
    "FailureKind",
    "classify",
    "register_classifier",
    "unregister_classifier",
]


class FailureKind(enum.Enum):
    """What an exception says about the dependency."""

    TRANSIENT = "transient"
    THROTTLED = "throttled"
    PERMANENT = "permanent"
    REJECTED = "rejected"
    ABORT = "abort"


Classifier = Callable[[BaseException], FailureKind | None]

_log = logging.getLogger("sage_resilience")
_classifiers: tuple[Classifier, ...] = ()
_lock = threading.Lock()


def register_classifier(classifier: Classifier) -> None:
    """Add a classifier consulted (in registration order) for exceptions not marked explicitly."""
    global _classifiers
    if not callable(classifier):
        raise TypeError(f"classifier must be callable, got {classifier!r}")
    with _lock:
        if classifier not in _classifiers:
            _classifiers = (*_classifiers, classifier)


def unregister_classifier(classifier: Classifier) -> None:
    """Remove a classifier added by :func:`register_classifier` (no error if absent)."""
    global _classifiers
    with _lock:
        _classifiers = tuple(c for c in _classifiers if c is not classifier)


def _kind_of_class(cls: type[BaseException]) -> FailureKind | None:
    """The kind fixed by the class alone (``None``: no marker, ask the classifiers)."""
    if not issubclass(cls, Exception):
        return FailureKind.ABORT
    if issubclass(cls, RejectedError):
        return FailureKind.REJECTED
    if issubclass(cls, PermanentError):
        return FailureKind.PERMANENT
    if issubclass(cls, ThrottledError):
        return FailureKind.THROTTLED
    if issubclass(cls, TransientError):
        return FailureKind.TRANSIENT
    return None


# Class -> kind fixed by its markers (None: unmarked); exception classes are few, so this
# stays small, and classifying a seen class is one dictionary lookup.
_by_class: dict[type[BaseException], FailureKind | None] = {}
_UNSEEN = object()
_CACHE_LIMIT = 4096


def classify(exc: BaseException) -> FailureKind:
    """Classify ``exc``; see the module docstring for the kinds and their precedence."""
    cls = type(exc)
    kind = _by_class.get(cls, _UNSEEN)
    if kind is _UNSEEN:
        if len(_by_class) >= _CACHE_LIMIT:  # classes made on the fly: keep the cache bounded
            _by_class.clear()
        kind = _by_class[cls] = _kind_of_class(cls)
    if kind is not None:
        return kind  # type: ignore[return-value]
    for classifier in _classifiers:
        try:
            found = classifier(exc)
        except Exception:
            # A broken classifier must not replace the user's exception with its own.
            _log.exception("sage_resilience classifier %r failed on %r", classifier, exc)
            continue
        if found is not None:
            return found
    return FailureKind.TRANSIENT
