"""The rig's own database: created fresh on the real server, usable, and dropped afterwards."""

from __future__ import annotations

import asyncpg
import pytest
from sage_resilience.integrations.sage.rig import (
    DEFAULT_ADMIN_DSN,
    TemporaryDatabase,
    with_database,
    with_hostport,
)

pytestmark = pytest.mark.service


async def test_temporary_database_is_created_usable_and_dropped(pg_dsn: str) -> None:
    """Two temporary databases are distinct; each exists while used and is gone after."""
    async with TemporaryDatabase() as dsn:
        assert dsn != pg_dsn
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            await conn.execute("INSERT INTO t VALUES (1)")
            assert await conn.fetchval("SELECT count(*) FROM t") == 1
        finally:
            await conn.close()
        name = dsn.rsplit("/", 1)[1]
    admin = await asyncpg.connect(DEFAULT_ADMIN_DSN)
    try:
        left = await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
    finally:
        await admin.close()
    assert left == 0


def test_dsn_helpers_replace_database_and_address() -> None:
    dsn = "postgresql://postgres:pw@127.0.0.1:5432/postgres?sslmode=disable"
    assert with_database(dsn, "x") == "postgresql://postgres:pw@127.0.0.1:5432/x?sslmode=disable"
    assert with_hostport(dsn, "127.0.0.1", 6000) == (
        "postgresql://postgres:pw@127.0.0.1:6000/postgres?sslmode=disable"
    )


def test_bad_arguments_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="admin_dsn"):
        TemporaryDatabase("")
    with pytest.raises(ValueError, match="prefix"):
        TemporaryDatabase(prefix="not an identifier")
