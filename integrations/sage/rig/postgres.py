"""A PostgreSQL database of one's own on a real server: created on entry, dropped on exit.

The integration tests and ``sage-resilience demo`` run against the machine's real PostgreSQL
(``DEFAULT_ADMIN_DSN``: 127.0.0.1:5432, user ``postgres``, trust authentication). Each run gets
a fresh database named ``sage_resilience_<random>`` so that nothing it writes outlives it or
meets another run's rows.
"""

from __future__ import annotations

import os
import secrets
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = ["DEFAULT_ADMIN_DSN", "TemporaryDatabase", "with_database", "with_hostport"]

DEFAULT_ADMIN_DSN = os.environ.get(
    "SAGE_RESILIENCE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""The server the rig uses (override with ``SAGE_RESILIENCE_PG_DSN``)."""


def with_database(dsn: str, database: str) -> str:
    """``dsn`` with its database replaced by ``database``."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def with_hostport(dsn: str, host: str, port: int) -> str:
    """``dsn`` pointed at ``host:port`` (a fault proxy in front of the server), same user."""
    parts = urlsplit(dsn)
    user = "" if parts.username is None else parts.username
    if parts.password is not None:
        user += ":" + parts.password
    netloc = f"{user}@{host}:{port}" if user else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class TemporaryDatabase:
    """``async with TemporaryDatabase() as dsn:`` a fresh database on the server, dropped after.

    Args:
        admin_dsn: a DSN of the server with the right to create databases.
        prefix: the new database's name starts with it.
    """

    def __init__(
        self, admin_dsn: str = DEFAULT_ADMIN_DSN, *, prefix: str = "sage_resilience"
    ) -> None:
        if not isinstance(admin_dsn, str) or not admin_dsn:
            raise ValueError(f"admin_dsn must be a non-empty DSN string, got {admin_dsn!r}")
        if not prefix.isidentifier():
            raise ValueError(f"prefix must be an identifier, got {prefix!r}")
        self.admin_dsn = admin_dsn
        self.name = f"{prefix}_{secrets.token_hex(6)}"
        self.dsn = with_database(admin_dsn, self.name)

    async def __aenter__(self) -> str:
        conn = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        return self.dsn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()
