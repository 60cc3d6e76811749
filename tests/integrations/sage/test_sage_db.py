"""ResilientDatabase against the real PostgreSQL, through the FaultProxy.

Classification of the errors the real server raises; reads retried through a reset; a write whose
reply is lost raises OutcomeUnknownError and is never applied twice; an idempotent one is retried
and stored once; connect() leaves nothing behind when it fails; the breaker opens on a refusing
database, fails fast, and lets the first call through soon after the database returns; blackhole
and latency bounded by the timeouts; transactions; a real restart of the server.

Real sockets and a real server, so real time: waits are bounded by timeouts of a fraction of a
second. Connections through the proxy are made without TLS (``sslmode=disable``), so that one
chunk the proxy sees is one protocol exchange and ``drop_reply`` hits the statement it is meant
to. Measured figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sage_resilience.adaptive import AdaptiveOptions, AdaptivePolicy, BudgetRegistry
from sage_resilience.core import (
    CircuitBreakerOpenError,
    CircuitState,
    FailureKind,
    OutcomeUnknownError,
    Registry,
    classify,
)
from sage_resilience.integrations.sage.db import (
    DatabaseStats,
    PooledConnection,
    ResilientDatabase,
    classify_database_error,
    database_options,
)
from sage_resilience.integrations.sage.rig import DEFAULT_ADMIN_DSN
from sage_resilience.integrations.sage.rig.proxy import FaultProxy

pytestmark = pytest.mark.service

SCHEMA = "CREATE TABLE IF NOT EXISTS t (id text PRIMARY KEY, note text)"
# A connection lost mid-statement surfaces as one of these, depending on when asyncpg notices.
LOST = (OSError, asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)


def plain(dsn: str) -> str:
    """``dsn`` without TLS: the proxy then carries the protocol's own messages."""
    return dsn + ("&" if "?" in dsn else "?") + "sslmode=disable"


async def create_schema(connection: PooledConnection) -> None:
    await connection.execute(SCHEMA)


def make_db(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    command_timeout: float = 2.0,
    connect_timeout: float = 1.0,
    setup: Callable[[PooledConnection], Awaitable[object]] | None = create_schema,
    registry: Registry | None = None,
    **options: Any,
) -> ResilientDatabase:
    """A database whose policy has a retry budget of its own (tests never share one)."""
    policy = AdaptivePolicy(
        "database", database_options(max_size, **options), budgets=BudgetRegistry()
    )
    return ResilientDatabase(
        dsn,
        min_size=min_size,
        max_size=max_size,
        policy=policy,
        registry=registry,
        command_timeout=command_timeout,
        connect_timeout=connect_timeout,
        setup=setup,
    )


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy() as started:
        yield started


@pytest.fixture
async def db(pg_dsn: str) -> AsyncIterator[ResilientDatabase]:
    """A connected database straight on the server (no proxy), with table ``t``."""
    async with make_db(pg_dsn) as database:
        yield database


@pytest.fixture
async def proxied(pg_dsn: str, proxy: FaultProxy) -> AsyncIterator[ResilientDatabase]:
    """A connected database through ``proxy``, with table ``t``, one idle connection."""
    async with make_db(plain(proxy.dsn(pg_dsn))) as database:
        yield database


async def rows(dsn: str) -> int:
    """Rows in ``t``, counted on a direct connection (never through the proxy)."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM t"))
    finally:
        await conn.close()


async def backends(dsn: str) -> int:
    """Server processes connected to ``dsn``'s database, once the count settles (a terminated
    connection's backend exits a moment after its socket closes)."""
    name = dsn.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
    admin = await asyncpg.connect(DEFAULT_ADMIN_DSN)
    try:
        count = -1
        for _ in range(50):
            count = int(
                await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name
                )
            )
            if count == 0:
                break
            await asyncio.sleep(0.02)  # real-time: waiting for backends to exit
        return count
    finally:
        await admin.close()


async def closed_links(proxy: FaultProxy) -> None:
    """Wait until the proxy has seen every client connection close."""
    for _ in range(200):
        if proxy.stats().open == 0:
            return
        await asyncio.sleep(0.005)  # real-time: the proxy's thread handles the close
    raise AssertionError(f"connections still open at the proxy: {proxy.stats()}")


# -- classification --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "error", "sqlstate"),
    [
        ("SELEC 1", asyncpg.PostgresSyntaxError, "42601"),
        ("SELECT nope FROM t", asyncpg.UndefinedColumnError, "42703"),
        ("INSERT INTO t VALUES ('taken')", asyncpg.UniqueViolationError, "23505"),
        ("SELECT 1 / 0", asyncpg.DivisionByZeroError, "22012"),
        ("SELECT 'x'::int", asyncpg.InvalidTextRepresentationError, "22P02"),
    ],
)
async def test_sql_errors_from_the_server_are_permanent_raised_once_and_never_trip(
    db: ResilientDatabase, query: str, error: type[asyncpg.PostgresError], sqlstate: str
) -> None:
    """A statement's own error (syntax, undefined column, unique violation, data) is permanent:
    raised at its first attempt, counted by no breaker, however many there are."""
    await db.execute("INSERT INTO t VALUES ('taken')")
    breaker = db.policy.breaker
    assert breaker is not None
    for _ in range(30):  # more than any failure threshold
        before = db.stats().attempts
        with pytest.raises(error) as info:
            await db.execute(query)
        assert db.stats().attempts == before + 1
        assert info.value.sqlstate == sqlstate
        assert classify(info.value) is FailureKind.PERMANENT
    assert breaker.state is CircuitState.CLOSED
    assert breaker.stats().failures == 0
    assert await db.fetchval("SELECT 1") == 1


async def test_connection_failures_from_real_sockets_are_transient(
    pg_dsn: str, proxy: FaultProxy
) -> None:
    """Lost mid-statement, reset, refused, timed out: what asyncpg raises for each is transient,
    and each counts against the breaker."""
    seen: list[BaseException] = []
    async with make_db(plain(proxy.dsn(pg_dsn)), min_size=0, max_attempts=1) as db:
        breaker = db.policy.breaker
        assert breaker is not None
        faults: list[tuple[Callable[[], None], bool]] = [
            (proxy.drop_reply, True),  # the pooled connection dies mid-statement
            (proxy.reset, False),  # a new connection is reset
            (proxy.refuse, False),  # a new connection is refused
            (proxy.blackhole, True),  # nothing answers: the command timeout fires
        ]
        for fault, pooled in faults:
            proxy.forward()
            async with db.acquire() as connection:
                assert await connection.fetchval("SELECT 1") == 1
                if not pooled:
                    connection.terminate()  # the next call must open a new connection
            fault()
            with pytest.raises(Exception) as info:
                await db.fetchval("SELECT 1", timeout=0.3)
            seen.append(info.value)
        proxy.forward()
        failures = breaker.stats().failures
    kinds = [classify(exc) for exc in seen]
    assert kinds == [FailureKind.TRANSIENT] * 4, seen
    assert isinstance(seen[0], asyncpg.ConnectionDoesNotExistError)
    assert isinstance(seen[1], LOST)
    assert isinstance(seen[2], ConnectionRefusedError)
    assert isinstance(seen[3], TimeoutError)
    assert failures == 4


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.ConnectionFailureError("08006"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.AdminShutdownError("57P01"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.CrashShutdownError("57P02"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.CannotConnectNowError("57P03"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.QueryCanceledError("57014"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.TooManyConnectionsError("53300"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.SerializationError("40001"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.DeadlockDetectedError("40P01"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.LockNotAvailableError("55P03"), FailureKind.TRANSIENT),
        (asyncpg.InterfaceError("connection is closed"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.ProtocolError("out of sync"), FailureKind.TRANSIENT),
        (asyncpg.exceptions.InternalClientError("?"), FailureKind.TRANSIENT),
        (asyncpg.PostgresSyntaxError("42601"), FailureKind.PERMANENT),
        (asyncpg.UniqueViolationError("23505"), FailureKind.PERMANENT),
        (asyncpg.exceptions.InvalidPasswordError("28P01"), FailureKind.PERMANENT),
        (asyncpg.exceptions.InvalidCatalogNameError("3D000"), FailureKind.PERMANENT),
        (asyncpg.exceptions.InFailedSQLTransactionError("25P02"), FailureKind.PERMANENT),
        (asyncpg.exceptions.InternalServerError("XX000"), FailureKind.PERMANENT),
        (
            asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
            FailureKind.PERMANENT,
        ),
        (asyncpg.InterfaceError("pool is closing"), FailureKind.PERMANENT),
        (asyncpg.exceptions.ClientConfigurationError("bad dsn"), FailureKind.PERMANENT),
        (asyncpg.exceptions.OutdatedSchemaCacheError("schema"), FailureKind.PERMANENT),
    ],
)
def test_classification_table(exc: BaseException, kind: FailureKind) -> None:
    """The module's table, row by row, through the registered classifier."""
    assert classify_database_error(exc) is kind
    assert classify(exc) is kind


def test_other_errors_are_left_to_the_defaults() -> None:
    """The classifier has no opinion on what is not asyncpg's (OSError, TimeoutError stay
    transient by default; a ValueError is not the database's)."""
    for exc in (OSError("x"), ConnectionResetError(), TimeoutError(), ValueError("x")):
        assert classify_database_error(exc) is None
    assert classify(ConnectionRefusedError()) is FailureKind.TRANSIENT


# -- retries and writes ----------------------------------------------------------------------------


async def test_reads_are_retried_through_a_reset(
    proxied: ResilientDatabase, proxy: FaultProxy, pg_dsn: str
) -> None:
    """A read whose connection is reset mid-statement is retried on a new connection and
    returns the right answer; the caller never sees the reset."""
    await proxied.execute("INSERT INTO t VALUES ('a'), ('b')")
    before = proxied.stats().attempts
    proxy.drop_reply()
    assert await proxied.fetchval("SELECT count(*) FROM t") == 2
    assert proxied.stats().attempts == before + 2
    assert proxy.stats().replies_dropped == 1
    proxy.drop_reply()
    fetched = await proxied.fetch("SELECT id FROM t ORDER BY id")
    assert [r["id"] for r in fetched] == ["a", "b"]
    proxy.drop_reply()
    row = await proxied.fetchrow("SELECT id FROM t WHERE id = $1", "b")
    assert row is not None and row["id"] == "b"
    assert proxy.stats().replies_dropped == 3
    assert proxied.stats().attempts == before + 6


async def test_a_lost_reply_to_a_non_idempotent_insert_raises_outcome_unknown(
    proxied: ResilientDatabase, proxy: FaultProxy, pg_dsn: str
) -> None:
    """The INSERT reaches the server and its reply is lost: OutcomeUnknownError from the
    original error, one attempt only, and the row is there once (never twice)."""
    breaker = proxied.policy.breaker
    assert breaker is not None
    failures = breaker.stats().failures
    before = proxied.stats().attempts
    proxy.drop_reply()
    with pytest.raises(OutcomeUnknownError) as info:
        await proxied.execute("INSERT INTO t (id, note) VALUES (gen_random_uuid()::text, 'x')")
    assert isinstance(info.value.__cause__, LOST)
    assert proxied.stats().attempts == before + 1  # not retried
    assert proxied.stats().outcome_unknown == 1
    assert breaker.stats().failures == failures + 1  # counted against the database
    assert proxy.stats().replies_dropped == 1
    assert await rows(pg_dsn) == 1  # it was applied: a retry would have made two


async def test_a_lost_reply_while_preparing_leaves_zero_rows_and_is_not_retried(
    proxied: ResilientDatabase, proxy: FaultProxy, pg_dsn: str
) -> None:
    """With arguments, asyncpg prepares first: the reply lost is the preparation's. The client
    cannot tell the difference, so it is outcome-unknown all the same, and not retried: zero
    rows this time, and never two."""
    before = proxied.stats().attempts
    proxy.drop_reply()
    with pytest.raises(OutcomeUnknownError):
        await proxied.execute("INSERT INTO t (id, note) VALUES ($1, $2)", "p", "x")
    assert proxied.stats().attempts == before + 1
    assert await rows(pg_dsn) == 0


async def test_an_idempotent_insert_is_retried_and_stored_once(
    proxied: ResilientDatabase, proxy: FaultProxy, pg_dsn: str
) -> None:
    """ON CONFLICT DO NOTHING with a client-made id, declared idempotent: retried after the lost
    reply, and the retry finds the row the first attempt stored ("INSERT 0 0")."""
    before = proxied.stats().attempts
    proxy.drop_reply()
    status = await proxied.execute(
        "INSERT INTO t (id, note) VALUES ('client-1', 'x') ON CONFLICT (id) DO NOTHING",
        idempotent=True,
    )
    assert status == "INSERT 0 0"  # the first attempt had written it
    assert proxied.stats().attempts == before + 2
    assert proxied.stats().outcome_unknown == 0
    assert await rows(pg_dsn) == 1


async def test_a_write_that_failed_before_reaching_the_server_is_retried(
    pg_dsn: str, proxy: FaultProxy
) -> None:
    """No pooled connection: the write's first attempt fails while connecting (nothing sent),
    so even a non-idempotent INSERT is retried, and stored once."""
    async with make_db(plain(proxy.dsn(pg_dsn)), min_size=0) as db:
        async with db.acquire() as connection:
            connection.terminate()  # the pool keeps no connection now
        assert db.stats().pool_size == 0
        await closed_links(proxy)  # its last bytes (a Terminate message) are through
        before = db.stats().attempts
        proxy.drop_reply()  # the next chunk is the new connection's startup message
        assert await db.execute("INSERT INTO t VALUES ('w', 'x')") == "INSERT 0 1"
        assert db.stats().attempts == before + 2
        assert db.stats().outcome_unknown == 0
    assert proxy.stats().replies_dropped == 1
    assert await rows(pg_dsn) == 1


async def test_a_read_that_writes_can_say_so(
    proxied: ResilientDatabase, proxy: FaultProxy, pg_dsn: str
) -> None:
    """fetchval of INSERT ... RETURNING with idempotent=False gets the write's treatment: its
    lost reply raises OutcomeUnknownError, one attempt, the row stored once."""
    query = "INSERT INTO t VALUES ($1, 'x') RETURNING id"
    assert await proxied.fetchval(query, "r0", idempotent=False) == "r0"  # prepared now
    before = proxied.stats().attempts
    proxy.drop_reply()  # the next chunk executes the prepared statement
    with pytest.raises(OutcomeUnknownError):
        await proxied.fetchval(query, "r1", idempotent=False)
    assert proxied.stats().attempts == before + 1
    assert await rows(pg_dsn) == 2  # r0 and r1: r1 was applied, once


async def test_executemany_is_atomic_and_a_write(db: ResilientDatabase, pg_dsn: str) -> None:
    """executemany stores every row or none (a duplicate fails them all, permanently)."""
    await db.executemany("INSERT INTO t VALUES ($1, $2)", [("a", "1"), ("b", "2")])
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.executemany("INSERT INTO t VALUES ($1, $2)", iter([("c", "3"), ("a", "4")]))
    assert await rows(pg_dsn) == 2


# -- connect and close -----------------------------------------------------------------------------


async def test_connected_only_after_setup_and_async_with_closes(pg_dsn: str) -> None:
    """connect() runs setup before the database counts as connected; async with closes it."""
    seen: list[bool] = []
    database: ResilientDatabase | None = None

    async def setup(connection: PooledConnection) -> None:
        assert database is not None
        seen.append(database.connected)
        await connection.execute(SCHEMA)

    database = make_db(pg_dsn, setup=setup)
    assert not database.connected
    with pytest.raises(RuntimeError, match="not connected"):
        await database.fetchval("SELECT 1")
    async with database as db:
        assert db is database
        assert db.connected and db.pool is not None
        await db.connect()  # already connected: nothing happens
        assert await db.fetchval("SELECT count(*) FROM t") == 0
        stats = db.stats()
    assert seen == [False]
    assert isinstance(stats, DatabaseStats)
    assert stats.connected and stats.pool_size >= 1 and stats.connect_attempts == 1
    assert not database.connected and database.pool is None
    await database.close()  # closing twice is harmless


async def test_connect_against_a_refusing_proxy_leaves_nothing_then_succeeds(
    pg_dsn: str, proxy: FaultProxy
) -> None:
    """Refused: connect() retries, fails, and leaves no pool and connected False; once the proxy
    forwards, connect() succeeds."""
    db = make_db(plain(proxy.dsn(pg_dsn)))
    proxy.refuse()
    with pytest.raises((ConnectionRefusedError, CircuitBreakerOpenError)):
        await db.connect()
    assert not db.connected and db.pool is None
    assert db.stats().pool_size == 0
    assert db.stats().connect_attempts >= 2  # retried: refused is transient
    print(f"\nconnect attempts while refused: {db.stats().connect_attempts}")
    proxy.forward()
    await db.connect()
    try:
        assert db.connected
        assert await db.fetchval("SELECT 1") == 1
    finally:
        await db.close()


async def test_a_failing_setup_closes_the_half_built_pool(pg_dsn: str) -> None:
    """A setup with an SQL error: raised once (permanent), not connected, and the pool it had
    opened is closed (no server process left on the database)."""
    calls = 0

    async def setup(connection: PooledConnection) -> None:
        nonlocal calls
        calls += 1
        await connection.execute("CREATE TABLE broken (")

    db = make_db(pg_dsn, min_size=2, setup=setup)
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await db.connect()
    assert calls == 1
    assert db.stats().connect_attempts == 1
    assert not db.connected and db.pool is None
    assert await backends(pg_dsn) == 0


async def test_a_transient_setup_failure_is_retried_with_a_new_pool(pg_dsn: str) -> None:
    """A setup that fails transiently once: the pool is rebuilt and connect() succeeds."""
    calls = 0

    async def setup(connection: PooledConnection) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError("setup lost its connection")
        await connection.execute(SCHEMA)

    async with make_db(pg_dsn, setup=setup) as db:
        assert calls == 2
        assert db.stats().connect_attempts == 2
        assert await db.fetchval("SELECT count(*) FROM t") == 0


# -- the breaker -----------------------------------------------------------------------------------


async def open_breaker(db: ResilientDatabase) -> tuple[int, int]:
    """Call ``db`` (whose database refuses) until its breaker opens; returns the calls and the
    attempts that took."""
    breaker = db.policy.breaker
    assert breaker is not None
    before = db.stats().attempts
    calls = 0
    while breaker.state is not CircuitState.OPEN:
        calls += 1
        assert calls <= 50, "the breaker never opened"
        # Refused; or the breaker opened between this call's attempts.
        with pytest.raises((*LOST, CircuitBreakerOpenError)):
            await db.fetchval("SELECT 1")
    return calls, db.stats().attempts - before


async def test_breaker_opens_on_a_refusing_database_fails_fast_and_recovers(
    pg_dsn: str, proxy: FaultProxy
) -> None:
    """Refused, with hold=0 (fail fast): the breaker opens within a few calls; then calls are
    refused in microseconds without touching the network (but for the breaker's rare trials);
    once the proxy forwards, a call succeeds within about a second."""
    async with make_db(plain(proxy.dsn(pg_dsn)), hold=0.0) as db:
        proxy.refuse()
        before = db.stats().attempts
        calls, attempts_to_open = await open_breaker(db)

        fast: list[float] = []  # calls refused without an attempt
        trials: list[int] = []  # attempts of the calls that made one
        for _ in range(20):
            tried = db.stats().attempts
            started = time.perf_counter()
            with contextlib.suppress(CircuitBreakerOpenError, *LOST):
                await db.fetchval("SELECT 1")
            elapsed = time.perf_counter() - started
            if db.stats().attempts == tried:
                fast.append(elapsed)
            else:  # the breaker let a trial through
                trials.append(db.stats().attempts - tried)
        attempts_down = db.stats().attempts - before

        proxy.forward()
        returned = time.perf_counter()
        while True:
            try:
                value = await db.fetchval("SELECT 1")
                break
            except (CircuitBreakerOpenError, *LOST):
                assert time.perf_counter() - returned < 3.0, "no success 3 s after the return"
                await asyncio.sleep(0.01)  # real-time: polling for the breaker's next trial
        recovery = time.perf_counter() - returned
    assert len(fast) >= 15
    print(
        f"\nbreaker (hold 0): opened after {calls} calls / {attempts_to_open} attempts; then 20 "
        f"calls: {len(fast)} refused at once (median {statistics.median(fast) * 1e6:.0f} us, "
        f"max {max(fast) * 1e6:.0f} us), {len(trials)} trials; attempts while down "
        f"{attempts_down}; first success {recovery * 1000:.0f} ms after the database returned"
    )
    assert value == 1
    assert all(n == 1 for n in trials)  # a trial's retry finds the breaker open again
    assert len(trials) <= 3  # one trial per open period (0.1 s, growing) at most
    assert statistics.median(fast) < 0.001
    assert max(fast) < 0.02
    assert recovery < 1.0


async def test_with_the_default_hold_a_call_waits_for_the_trial_and_is_served_on_return(
    proxied: ResilientDatabase, proxy: FaultProxy
) -> None:
    """The policy's default hold: while the database is down a call waits for the breaker's
    next trial (not longer than the hold) and makes one attempt at most; a call made while the
    breaker is open just before the database returns is served, not refused."""
    hold = proxied.policy.options.hold
    assert hold > 0.0
    proxy.refuse()
    await open_breaker(proxied)
    waits: list[float] = []
    for _ in range(5):
        tried = proxied.stats().attempts
        started = time.perf_counter()
        with pytest.raises((CircuitBreakerOpenError, *LOST)):
            await proxied.fetchval("SELECT 1")
        waits.append(time.perf_counter() - started)
        assert proxied.stats().attempts - tried <= 1
    await open_breaker(proxied)  # the last call may have left it half-open
    proxy.forward()
    started = time.perf_counter()
    assert await proxied.fetchval("SELECT 1") == 1  # held, then the trial succeeds
    served = time.perf_counter() - started
    print(
        f"\nbreaker (hold {hold} s): calls while down took "
        f"{', '.join(f'{w * 1000:.0f}' for w in waits)} ms; a call made while open was "
        f"served {served * 1000:.0f} ms later"
    )
    assert max(waits) < hold + 0.2  # the hold, one refused trial and a retry delay
    assert served < hold + 0.1


# -- blackhole and latency -------------------------------------------------------------------------


async def test_blackhole_is_bounded_by_the_timeouts(pg_dsn: str, proxy: FaultProxy) -> None:
    """Nothing answers: a write on a pooled connection raises OutcomeUnknownError at the command
    timeout; a read that needs a new connection, and connect(), end at the connect timeout
    (the read then never reached the server: a plain TimeoutError)."""
    dsn = plain(proxy.dsn(pg_dsn))
    async with make_db(dsn, command_timeout=0.3, connect_timeout=0.5, max_attempts=1) as db:
        proxy.blackhole()
        started = time.perf_counter()
        with pytest.raises(OutcomeUnknownError) as info:
            await db.execute("INSERT INTO t VALUES ('b', 'x')")
        write = time.perf_counter() - started
        assert isinstance(info.value.__cause__, TimeoutError)
        started = time.perf_counter()
        with pytest.raises(TimeoutError):  # its connection was closed: a new one is needed
            await db.fetchval("SELECT 1")
        read = time.perf_counter() - started
        fresh = make_db(dsn, connect_timeout=0.5, max_attempts=1)
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await fresh.connect()
        connect = time.perf_counter() - started
        assert not fresh.connected
        proxy.forward()
    print(f"\nblackhole: write {write:.3f} s, read {read:.3f} s, connect {connect:.3f} s")
    assert 0.28 <= write < 0.6
    assert 0.45 <= read < 0.8
    assert 0.45 <= connect < 0.8


async def test_blackhole_with_retries_is_bounded_too(pg_dsn: str, proxy: FaultProxy) -> None:
    """With the default three attempts, a blackholed read still ends: within the attempts'
    timeouts and the delays between them."""
    async with make_db(plain(proxy.dsn(pg_dsn)), command_timeout=0.2, connect_timeout=0.3) as db:
        proxy.blackhole()
        before = db.stats().attempts
        started = time.perf_counter()
        with pytest.raises((TimeoutError, CircuitBreakerOpenError)):
            await db.fetchval("SELECT 1")
        elapsed = time.perf_counter() - started
        attempts = db.stats().attempts - before
        proxy.forward()
    print(f"\nblackhole, retried: {attempts} attempts in {elapsed:.3f} s")
    assert attempts >= 2
    # Each attempt ends at its timeout (0.2 s on the pooled connection, 0.3 s for a new one);
    # between attempts the policy waits at most its max_delay (2 s) each.
    assert elapsed < attempts * 0.3 + (attempts - 1) * 2.0


async def test_latency_below_the_timeout_is_served_and_above_it_times_out(
    pg_dsn: str, proxy: FaultProxy
) -> None:
    """50 ms each way: served (slower); 400 ms each way against a 300 ms command timeout:
    timed out at the timeout, not at the latency."""
    async with make_db(plain(proxy.dsn(pg_dsn)), command_timeout=0.3, max_attempts=1) as db:
        proxy.latency(0.05)
        started = time.perf_counter()
        assert await db.fetchval("SELECT 1") == 1
        served = time.perf_counter() - started
        proxy.latency(0.4)
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await db.fetchval("SELECT 1")
        cut = time.perf_counter() - started
        proxy.forward()
    assert 0.1 <= served < 0.3 + 0.2  # request and reply delayed, plus the release's reset
    assert 0.28 <= cut < 0.6


# -- transactions and connections ------------------------------------------------------------------


async def test_transaction_commits_or_rolls_back(db: ResilientDatabase, pg_dsn: str) -> None:
    """The block's writes are committed together, or rolled back when the block raises."""
    async with db.transaction() as connection:
        await connection.execute("INSERT INTO t VALUES ('a', 'x')")
        await connection.execute("INSERT INTO t VALUES ('b', 'x')")
    with pytest.raises(ZeroDivisionError):
        async with db.transaction() as connection:
            await connection.execute("INSERT INTO t VALUES ('c', 'x')")
            raise ZeroDivisionError
    assert await rows(pg_dsn) == 2
    async with db.transaction(isolation="serializable", readonly=True) as connection:
        assert await connection.fetchval("SHOW transaction_isolation") == "serializable"
    assert db.stats().pool_idle == db.stats().pool_size  # every connection handed back


async def test_a_lost_commit_reply_raises_outcome_unknown(
    proxied: ResilientDatabase, proxy: FaultProxy, pg_dsn: str
) -> None:
    """The COMMIT reaches the server and its reply is lost: OutcomeUnknownError, and the rows
    are committed; declared idempotent, the original error is raised instead."""
    with pytest.raises(OutcomeUnknownError) as info:
        async with proxied.transaction() as connection:
            await connection.execute("INSERT INTO t VALUES ('a', 'x')")
            proxy.drop_reply()  # the next chunk is the COMMIT
    assert isinstance(info.value.__cause__, LOST)
    assert await rows(pg_dsn) == 1
    with pytest.raises(LOST):
        async with proxied.transaction(idempotent=True) as connection:
            await connection.execute("INSERT INTO t VALUES ('b', 'x')")
            proxy.drop_reply()
    assert await rows(pg_dsn) == 2
    assert proxied.stats().outcome_unknown == 1


async def test_run_in_transaction_is_retried_after_a_real_serialization_failure(
    db: ResilientDatabase, pg_dsn: str
) -> None:
    """Two serializable transactions that read what the other writes: the server aborts ours
    (40001, rolled back), it is run again, and both rows are stored once."""
    calls = 0

    async def body(connection: PooledConnection) -> int:
        nonlocal calls
        calls += 1
        seen = int(await connection.fetchval("SELECT count(*) FROM t"))
        if calls == 1:  # a concurrent transaction reads the table and writes it first
            other = await asyncpg.connect(pg_dsn)
            try:
                async with other.transaction(isolation="serializable"):
                    await other.fetchval("SELECT count(*) FROM t")
                    await other.execute("INSERT INTO t VALUES ('other', 'x')")
            finally:
                await other.close()
        await connection.execute("INSERT INTO t VALUES ('mine', $1)", str(seen))
        return seen

    seen = await db.run_in_transaction(body, isolation="serializable")
    assert calls == 2
    assert seen == 1  # the second run saw the other transaction's row
    assert await rows(pg_dsn) == 2


async def test_run_in_transaction_with_a_lost_commit_reply(
    proxied: ResilientDatabase, proxy: FaultProxy, pg_dsn: str
) -> None:
    """Lost COMMIT reply: not idempotent, OutcomeUnknownError after one run; idempotent (ON
    CONFLICT), run again and stored once."""
    calls = 0

    async def insert(connection: PooledConnection) -> None:
        nonlocal calls
        calls += 1
        await connection.execute("INSERT INTO t VALUES ('k', 'x') ON CONFLICT (id) DO NOTHING")
        if calls == 1:
            proxy.drop_reply()  # the next chunk is the COMMIT

    with pytest.raises(OutcomeUnknownError):
        await proxied.run_in_transaction(insert)
    assert calls == 1
    calls = 0
    await proxied.execute("DELETE FROM t")
    await proxied.run_in_transaction(insert, idempotent=True)
    assert calls == 2
    assert await rows(pg_dsn) == 1


async def test_acquire_lends_a_connection_and_takes_it_back(db: ResilientDatabase) -> None:
    """acquire(): a working connection, handed back after the block, even when it raises."""
    async with db.acquire() as connection:
        assert await connection.fetchval("SELECT 2") == 2
    with pytest.raises(KeyError):
        async with db.acquire() as connection:
            raise KeyError("x")
    assert db.stats().pool_idle == db.stats().pool_size >= 1


# -- construction ----------------------------------------------------------------------------------


def test_default_policy_and_registration(registry: Registry) -> None:
    """Without a policy: an adaptive one named after the database with database_options, its
    parts registered in the registry given."""
    db = ResilientDatabase("postgresql://x@127.0.0.1/db", name="sage-db", registry=registry)
    assert db.policy.name == "sage-db"
    assert db.policy.options == database_options(10)
    assert registry.get("sage-db.breaker") is db.policy.breaker
    options = database_options(4, max_attempts=2)
    assert isinstance(options, AdaptiveOptions)
    assert (options.max_limit, options.initial_limit, options.max_attempts) == (4, 4, 2)
    assert options.rate is None and options.timeout is False


def test_bad_arguments_name_the_parameter() -> None:
    """Bad arguments raise ValueError/TypeError naming the parameter."""
    dsn = "postgresql://x@127.0.0.1/db"
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"dsn": ""}, ValueError, "dsn"),
        ({"name": ""}, ValueError, "name"),
        ({"min_size": -1}, ValueError, "min_size"),
        ({"max_size": 0}, ValueError, "max_size"),
        ({"min_size": 5, "max_size": 2}, ValueError, "min_size"),
        ({"command_timeout": 0}, ValueError, "command_timeout"),
        ({"command_timeout": "1"}, TypeError, "command_timeout"),
        ({"connect_timeout": float("inf")}, ValueError, "connect_timeout"),
        ({"setup": 3}, TypeError, "setup"),
        ({"init": "x"}, TypeError, "init"),
        ({"policy": object()}, TypeError, "policy"),
        ({"registry": {}}, TypeError, "registry"),
    ]
    for kwargs, error, word in cases:
        arguments = {"dsn": dsn, **kwargs}
        with pytest.raises(error, match=word):
            ResilientDatabase(**arguments)
    with pytest.raises(ValueError, match="max_size"):
        database_options(0)


# -- a real restart of the server ------------------------------------------------------------------


def _cluster() -> tuple[str, str]:
    """The (version, name) of the local cluster to restart, or skip saying why not."""
    if os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root (pg_ctlcluster runs as root here)")
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_isready") is None:
        pytest.skip("pg_ctlcluster/pg_isready not found: not a Debian-style PostgreSQL install")
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*") if p.name.isdigit())
    if not versions or not (Path("/etc/postgresql") / versions[-1] / "main").is_dir():
        pytest.skip("no cluster 'main' under /etc/postgresql")
    if "127.0.0.1:5432" not in DEFAULT_ADMIN_DSN:
        pytest.skip("the rig's server is not the local cluster on 127.0.0.1:5432")
    return versions[-1], "main"


def _wait_ready(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready = subprocess.run(
            ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-t", "1"], check=False
        )
        if ready.returncode == 0:
            return True
        time.sleep(0.1)  # real-time: the server is starting
    return False


async def test_the_pool_recovers_after_a_real_restart_of_the_server(pg_dsn: str) -> None:
    """pg_ctlcluster stop, then start: while the server is down calls fail (transient, the
    breaker counts them); once it is back the same pool serves again, within a second or so."""
    version, cluster = _cluster()
    ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster]
    async with make_db(pg_dsn, min_size=2) as db:
        assert await db.fetchval("SELECT 1") == 1
        errors: list[BaseException] = []
        try:
            stopped = await asyncio.to_thread(
                subprocess.run, [*ctl, "stop", "-m", "fast"], capture_output=True, check=False
            )
            assert stopped.returncode == 0, stopped.stderr
            for _ in range(3):
                try:
                    await db.fetchval("SELECT 1")
                except Exception as exc:
                    errors.append(exc)
        finally:
            started = await asyncio.to_thread(
                subprocess.run, [*ctl, "start"], capture_output=True, check=False
            )
            ready = await asyncio.to_thread(_wait_ready, 30.0)
        assert started.returncode == 0, started.stderr
        assert ready, "PostgreSQL did not come back within 30 s"
        back = time.perf_counter()
        while True:
            try:
                value = await db.fetchval("SELECT 1")
                break
            except (CircuitBreakerOpenError, *LOST, asyncpg.PostgresError):
                assert time.perf_counter() - back < 5.0, "the pool did not recover in 5 s"
                await asyncio.sleep(0.01)  # real-time: polling for the breaker's next trial
        recovery = time.perf_counter() - back
        assert value == 1
    print(
        f"\nrestart: {len(errors)} failed calls while down "
        f"({sorted({type(e).__name__ for e in errors})}); "
        f"first success {recovery * 1000:.0f} ms after the server was ready"
    )
    assert errors, "no call failed while the server was stopped"
    assert all(
        classify(e) is FailureKind.TRANSIENT or isinstance(e, CircuitBreakerOpenError)
        for e in errors
    ), errors
    assert recovery < 1.5
