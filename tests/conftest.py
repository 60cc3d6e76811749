"""Shared fixtures: a fake clock, a fresh registry, and a clean default registry per test."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from sage_resilience.core import FakeClock, Registry, breaker_manager

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def clock() -> FakeClock:
    """A clock at t=1000 that moves only when told to (or when something sleeps on it)."""
    return FakeClock(start=1000.0)


@pytest.fixture
def rng() -> random.Random:
    """A seeded random source; pass ``rng.random`` as ``random=``."""
    return random.Random(1234)


@pytest.fixture
def registry() -> Registry:
    """A private registry, so tests never share breakers by accident."""
    return Registry("test")


@pytest.fixture(autouse=True)
def _clean_default_registry() -> Iterator[None]:
    """The seed's decorators register in ``breaker_manager``: start and end every test empty."""
    breaker_manager.clear()
    yield
    breaker_manager.clear()
