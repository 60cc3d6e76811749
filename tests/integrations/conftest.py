"""Fixtures of the telemetry tests; their helpers are in ``support.telemetry``."""

from __future__ import annotations

import pytest
from sage_resilience.core import FakeClock, Registry
from support.telemetry import Scenario, build, require_tool


@pytest.fixture
def promtool() -> str:
    """promtool from the Debian package ``prometheus``."""
    return require_tool("promtool", "apt-get install -y --no-install-recommends prometheus")


@pytest.fixture
def scenario(clock: FakeClock, registry: Registry) -> Scenario:
    """One policy of each kind in the test's private registry, not yet driven."""
    return build(clock, registry)
