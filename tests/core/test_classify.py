"""Failure classification and the package's own exceptions."""

from __future__ import annotations

import asyncio
import copy
import importlib
import pickle
from collections.abc import Iterator

import pytest
from sage_resilience.core import (
    CircuitBreakerOpenError,
    FailureKind,
    PermanentError,
    RejectedError,
    ResilienceError,
    ThrottledError,
    TransientError,
    classify,
    register_classifier,
    unregister_classifier,
)

# The attribute ``sage_resilience.core.classify`` is the function; this is the module.
classify_module = importlib.import_module("sage_resilience.core.classify")


@pytest.fixture(autouse=True)
def _no_leftover_classifiers() -> Iterator[None]:
    """Every test starts and ends with no registered classifier."""
    saved = classify_module._classifiers
    classify_module._classifiers = ()
    yield
    classify_module._classifiers = saved


class MyPermanent(PermanentError, ValueError):
    """A validation error marked permanent."""


class MyTransient(TransientError):
    """An error marked transient."""


class Unmarked(Exception):
    """An application error carrying no marker."""

    def __init__(self, status: int = 0) -> None:
        super().__init__(status)
        self.status = status


# -- the kinds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (asyncio.CancelledError(), FailureKind.ABORT),
        (KeyboardInterrupt(), FailureKind.ABORT),
        (SystemExit(1), FailureKind.ABORT),
        (GeneratorExit(), FailureKind.ABORT),
        (CircuitBreakerOpenError("db", 1.0), FailureKind.REJECTED),
        (RejectedError("full", name="bulkhead", reason="full"), FailureKind.REJECTED),
        (PermanentError("bad request"), FailureKind.PERMANENT),
        (MyPermanent("invalid"), FailureKind.PERMANENT),
        (ThrottledError(retry_after=2.0), FailureKind.THROTTLED),
        (TransientError("blip"), FailureKind.TRANSIENT),
        (MyTransient(), FailureKind.TRANSIENT),
        (ValueError("unmarked"), FailureKind.TRANSIENT),
        (ConnectionError(), FailureKind.TRANSIENT),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.name,
)
def test_kinds_of_builtin_and_marked_exceptions(exc: BaseException, kind: FailureKind) -> None:
    """Aborts, rejections and markers classify by class; an unmarked Exception is TRANSIENT."""
    assert classify(exc) is kind


@pytest.mark.parametrize(
    ("bases", "kind"),
    [
        ((RejectedError, PermanentError), FailureKind.REJECTED),
        ((PermanentError, ThrottledError), FailureKind.PERMANENT),
        ((ThrottledError, PermanentError), FailureKind.PERMANENT),
        ((TransientError, PermanentError), FailureKind.PERMANENT),
        ((MyTransient, ThrottledError), FailureKind.THROTTLED),
    ],
)
def test_marker_precedence(bases: tuple[type[Exception], ...], kind: FailureKind) -> None:
    """REJECTED beats PERMANENT beats THROTTLED beats TRANSIENT, whatever the base order."""

    def init(self: Exception, *args: object, **kwargs: object) -> None:
        Exception.__init__(self, "x")

    cls = type("Mixed", bases, {"__init__": init})
    assert classify(cls()) is kind


# -- classifiers -----------------------------------------------------------------------------------


def test_classifier_decides_for_unmarked_exceptions() -> None:
    """A registered classifier classifies unmarked exceptions, instance by instance."""

    def by_status(exc: BaseException) -> FailureKind | None:
        status = getattr(exc, "status", None)
        if status == 400:
            return FailureKind.PERMANENT
        if status == 429:
            return FailureKind.THROTTLED
        return None

    register_classifier(by_status)
    assert classify(Unmarked(400)) is FailureKind.PERMANENT
    assert classify(Unmarked(429)) is FailureKind.THROTTLED
    # No opinion: the default.
    assert classify(Unmarked(503)) is FailureKind.TRANSIENT


def test_classifier_is_not_asked_about_marked_exceptions() -> None:
    """Marker classes and non-Exceptions are decided by class; classifiers are not consulted."""
    asked: list[BaseException] = []

    def permanent_everything(exc: BaseException) -> FailureKind:
        asked.append(exc)
        return FailureKind.PERMANENT

    register_classifier(permanent_everything)
    assert classify(MyTransient()) is FailureKind.TRANSIENT
    assert classify(ThrottledError()) is FailureKind.THROTTLED
    assert classify(CircuitBreakerOpenError("x")) is FailureKind.REJECTED
    assert classify(KeyboardInterrupt()) is FailureKind.ABORT
    assert asked == []
    assert classify(Unmarked()) is FailureKind.PERMANENT
    assert len(asked) == 1


def test_classifiers_are_consulted_in_registration_order() -> None:
    """The first classifier with an opinion wins; those returning None are skipped."""
    calls: list[str] = []

    def silent(exc: BaseException) -> None:
        calls.append("silent")

    def first(exc: BaseException) -> FailureKind:
        calls.append("first")
        return FailureKind.PERMANENT

    def second(exc: BaseException) -> FailureKind:
        calls.append("second")
        return FailureKind.THROTTLED

    for c in (silent, first, second):
        register_classifier(c)
    assert classify(Unmarked()) is FailureKind.PERMANENT
    assert calls == ["silent", "first"]


def test_registering_twice_keeps_one_entry() -> None:
    """Registering the same classifier twice consults it once per classification."""
    calls: list[BaseException] = []

    def counting(exc: BaseException) -> None:
        calls.append(exc)

    register_classifier(counting)
    register_classifier(counting)
    classify(Unmarked())
    assert len(calls) == 1


def test_unregister_removes_and_tolerates_absent() -> None:
    """unregister_classifier stops consulting it; unregistering an absent one is no error."""

    def permanent(exc: BaseException) -> FailureKind:
        return FailureKind.PERMANENT

    register_classifier(permanent)
    assert classify(Unmarked()) is FailureKind.PERMANENT
    unregister_classifier(permanent)
    assert classify(Unmarked()) is FailureKind.TRANSIENT
    unregister_classifier(permanent)
    assert classify(Unmarked()) is FailureKind.TRANSIENT


def test_register_rejects_non_callables() -> None:
    """register_classifier(non-callable) raises TypeError naming the classifier."""
    with pytest.raises(TypeError, match="classifier"):
        register_classifier("not a function")  # type: ignore[arg-type]


def test_classification_of_a_class_is_stable_after_caching() -> None:
    """The per-class cache is stable and later classifiers still see unmarked classes."""
    assert classify(Unmarked()) is FailureKind.TRANSIENT
    assert classify(MyPermanent()) is FailureKind.PERMANENT
    assert classify(MyPermanent()) is FailureKind.PERMANENT
    register_classifier(lambda exc: FailureKind.THROTTLED)
    assert classify(Unmarked()) is FailureKind.THROTTLED


# -- the exceptions --------------------------------------------------------------------------------


def test_exception_hierarchy() -> None:
    """Our rejections are ResilienceErrors; markers are plain Exceptions usable as mixins."""
    assert issubclass(CircuitBreakerOpenError, RejectedError)
    assert issubclass(RejectedError, ResilienceError)
    assert issubclass(ResilienceError, Exception)
    assert issubclass(ThrottledError, TransientError)
    assert not issubclass(PermanentError, ResilienceError)
    assert not issubclass(TransientError, ResilienceError)


def test_circuit_breaker_open_error_fields_and_message() -> None:
    """CircuitBreakerOpenError carries name, retry_after and reason, and says them."""
    exc = CircuitBreakerOpenError("database", 12.5)
    assert (exc.name, exc.retry_after, exc.reason) == ("database", 12.5, "breaker_open")
    assert "database" in str(exc)
    assert "12.500" in str(exc)
    forced = CircuitBreakerOpenError("database")
    assert forced.retry_after is None
    assert "until reset" in str(forced)
    full = CircuitBreakerOpenError("database", 0.0, reason="half_open_full")
    assert full.reason == "half_open_full"
    assert full.retry_after == 0.0


def test_rejected_error_fields() -> None:
    """RejectedError keeps its message, name, reason and optional retry_after."""
    exc = RejectedError("no room", name="pool", reason="full")
    assert str(exc) == "no room"
    assert (exc.name, exc.reason, exc.retry_after) == ("pool", "full", None)


def test_throttled_error_carries_the_hint() -> None:
    """ThrottledError keeps the server's retry_after (None when absent)."""
    assert ThrottledError(retry_after=3.0).retry_after == 3.0
    assert ThrottledError("slow down").retry_after is None
    assert str(ThrottledError()) == "throttled"


@pytest.mark.parametrize(
    "exc",
    [
        CircuitBreakerOpenError("db", 1.5),
        CircuitBreakerOpenError("db", None, reason="forced_open"),
        RejectedError("no room", name="pool", reason="full", retry_after=2.0),
        ThrottledError("429", retry_after=3.0),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("copier", ["pickle", "copy"])
def test_regression_exceptions_survive_pickle_and_copy(exc: Exception, copier: str) -> None:
    """Our exceptions survive pickle and copy.copy with message and fields intact."""
    # Before the fix RejectedError could not be unpickled or copied at all (keyword-only
    # fields) and CircuitBreakerOpenError came back with its message wrapped twice.
    clone = pickle.loads(pickle.dumps(exc)) if copier == "pickle" else copy.copy(exc)
    assert type(clone) is type(exc)
    assert str(clone) == str(exc)
    assert clone.args == exc.args
    assert vars(clone) == vars(exc)


def test_a_raising_classifier_is_skipped_not_propagated() -> None:
    """A classifier that raises is logged and skipped; the next one still decides."""
    from sage_resilience.core import (
        FailureKind,
        classify,
        register_classifier,
        unregister_classifier,
    )

    class Odd(Exception):
        pass

    def broken(exc: BaseException) -> FailureKind | None:
        raise RuntimeError("bug in classifier")

    def permanent(exc: BaseException) -> FailureKind | None:
        return FailureKind.PERMANENT if isinstance(exc, Odd) else None

    register_classifier(broken)
    register_classifier(permanent)
    try:
        assert classify(Odd()) is FailureKind.PERMANENT
    finally:
        unregister_classifier(broken)
        unregister_classifier(permanent)


def test_class_cache_stays_bounded() -> None:
    """Classifying thousands of classes made on the fly keeps the per-class cache bounded."""
    import importlib

    from sage_resilience.core import classify

    # The package re-exports the function under the module's name: fetch the module itself.
    module = importlib.import_module("sage_resilience.core.classify")

    for i in range(module._CACHE_LIMIT + 10):
        classify(type(f"Dyn{i}", (Exception,), {})())
    assert len(module._by_class) <= module._CACHE_LIMIT
