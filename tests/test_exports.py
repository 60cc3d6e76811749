"""The public API: each package's ``__all__`` is curated, importable and complete."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = [
    "sage_resilience",
    "sage_resilience.core",
    "sage_resilience.adaptive",
    "sage_resilience.integrations",
    "sage_resilience.benchmarks",
]

SEED_NAMES = {
    "retry",
    "RetryStrategy",
    "RetryConfig",
    "circuit_breaker",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitState",
    "CircuitBreakerOpenError",
    "breaker_manager",
    "DEFAULT_RETRY_CONFIG",
    "DATABASE_RETRY_CONFIG",
    "NETWORK_RETRY_CONFIG",
}


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_resolve(name: str) -> None:
    """Every name in ``__all__`` exists, and ``__all__`` has no duplicates."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported))
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("name", PACKAGES)
def test_no_public_name_left_out(name: str) -> None:
    """Every public (non-underscore, non-module) attribute of a package is in ``__all__``."""
    module = importlib.import_module(name)
    public = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and not isinstance(v, types.ModuleType)
        and n not in {"annotations", "PackageNotFoundError", "version"}
    }
    assert public - set(module.__all__) == set()


def test_seed_names_importable_from_core() -> None:
    """The seed's API is importable from ``sage_resilience.core`` (Sage code uses these names)."""
    core = importlib.import_module("sage_resilience.core")
    assert set(core.__all__) >= SEED_NAMES


def test_seed_strategies_exist() -> None:
    """The seed's four strategies are members of RetryStrategy, plus DECORRELATED."""
    from sage_resilience.core import RetryStrategy

    assert {s.name for s in RetryStrategy} == {
        "FIXED",
        "LINEAR",
        "EXPONENTIAL",
        "FIBONACCI",
        "DECORRELATED",
    }
