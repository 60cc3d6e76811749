"""Fixtures of the Sage integration tests: the real PostgreSQL in a database of the test's own.

Without a reachable server the tests skip with the reason, unless
``SAGE_RESILIENCE_REQUIRE_SERVICES=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

asyncpg = pytest.importorskip("asyncpg", reason="the Sage wrappers need the 'sage' extra")

from sage_resilience.integrations.sage.rig import (  # noqa: E402
    DEFAULT_ADMIN_DSN,
    TemporaryDatabase,
)

REQUIRE_ENV = "SAGE_RESILIENCE_REQUIRE_SERVICES"


async def _server_up() -> str | None:
    """``None`` when the server answers, else why not."""
    try:
        conn = await asyncpg.connect(DEFAULT_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL at {DEFAULT_ADMIN_DSN} is not reachable: {exc!r}"
    await conn.close()
    return None


def need_service(reason: str) -> None:
    """Skip with ``reason``, or fail when CI requires the services."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 makes a missing service a failure")
    pytest.skip(f"{reason}; set {REQUIRE_ENV}=1 to make this a failure")


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """The DSN of a fresh database on the real PostgreSQL, dropped after the test."""
    problem = await _server_up()
    if problem is not None:
        need_service(problem)
    async with TemporaryDatabase() as dsn:
        yield dsn
