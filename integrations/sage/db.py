"""Sage's PostgreSQL pool behind the adaptive policy: classified errors, honest writes.

:class:`ResilientDatabase` has the interface of Sage's database module (``connect``, ``close``,
``execute``, ``fetch``, ``fetchrow``, ``fetchval``, ``acquire``, ``transaction``) over an asyncpg
pool. Every operation is one :meth:`~sage_resilience.adaptive.AdaptivePolicy.acall`; one attempt
acquires a connection, runs the statement and releases the connection, so a retry gets a fresh
connection from the pool.

**What is retried.** Reads are retried on transient failures. A write (``execute``,
``executemany``) is retried when the caller declares it idempotent (``idempotent=True``), or when
its attempt failed before the statement was sent (acquiring a connection failed: refused, reset,
timed out, too many connections), or when the server answered with an error, which means the
statement took no effect (a serialization failure or a deadlock is rolled back). A
non-idempotent write that failed after it was sent, with no answer from the server (the
connection dropped, a timeout, a cancellation), raises
:class:`~sage_resilience.core.OutcomeUnknownError` ``from`` the original error: it counts against
the database, and no policy retries it, because the first attempt may have been applied. A read
that writes (``INSERT ... RETURNING`` through ``fetchval``) takes ``idempotent=False``.

Transactions: the point of no return is the ``COMMIT``. Before it, whatever fails, the server
rolls the transaction back, so :meth:`ResilientDatabase.run_in_transaction` runs its function
again on a transient failure; a ``COMMIT`` whose reply is lost raises ``OutcomeUnknownError``
unless the transaction is declared idempotent. The body of
:meth:`ResilientDatabase.transaction` (an ``async with`` block) cannot be run again: only
acquiring the connection and ``BEGIN`` are retried.

**Classification.** :func:`classify_database_error` is registered with
:func:`~sage_resilience.core.register_classifier` on import. For errors the server sends it uses
the SQLSTATE table of :func:`~sage_resilience.core.is_transient_database_error` (the database
presets'), so that one table decides; for asyncpg's own client-side errors it adds the rows below.

==================================================  ==========  ===================================
failure                                             kind        why
==================================================  ==========  ===================================
``OSError`` (refused, reset, broken pipe, ...)      transient   the network or the server is down
``TimeoutError`` (connect, command, acquire)        transient   the server is slow or unreachable
class 08: ``ConnectionDoesNotExistError`` (08003),  transient   the connection is gone
``ConnectionFailureError`` (08006), ...
57P01 admin shutdown, 57P02 crash shutdown,         transient   a restart, a failover, a dropped
57P03 cannot connect now, 57P04, 57P05, and 57014               session: another connection may
query cancelled (a ``statement_timeout``)                       work
class 53: 53300 too many connections, 53100 disk    transient   the server lacks resources now;
full, 53200 out of memory, 53400                                the breaker should see it
40001 serialization failure, 40P01 deadlock         transient   rolled back by the server;
                                                                the whole statement may run again
55P03 lock not available                            transient   ``NOWAIT``/``lock_timeout``: later
``InterfaceError`` saying the connection is closed  transient   raised before sending: the pooled
                                                                connection died since last use
``InternalClientError``, ``ProtocolError``,         transient   the protocol state is lost: the
``TargetServerAttributeNotMatched``                             connection is dropped
any other SQLSTATE: 42xxx syntax and undefined      permanent   the statement or its data is
names, 23xxx integrity (unique violation), 22xxx                wrong, or the configuration is:
data, 25xxx transaction state, 28xxx authorization,             retrying cannot help, and the
3D000 unknown database, 0A000, XX000 internal                   database is not unhealthy
other ``InterfaceError`` (pool closed, another      permanent   a misuse of the client
operation in progress, wrong argument count),
``ClientConfigurationError``, asyncpg's client-side
``DataError`` (an argument it cannot encode)
``OutdatedSchemaCacheError``                        permanent   the schema changed under the
                                                                statement; asyncpg has reloaded
                                                                it, the caller decides
==================================================  ==========  ===================================

Permanent errors are raised at once and never count against the breaker; transient ones are
retried (within the policy's attempts and retry budget) and counted.

**Connected means usable.** :meth:`ResilientDatabase.connect` creates the pool through the policy
(transient failures retried), runs the optional ``setup`` (schema creation, say) on one of its
connections, and only then is the database ``connected``. A failure closes whatever was built.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import asyncpg
import asyncpg.exceptions

from ...adaptive import AdaptiveOptions, AdaptivePolicy
from ...core import (
    FailureKind,
    OutcomeUnknownError,
    Registry,
    classify,
    is_transient_database_error,
    register_classifier,
)
from ...core._validate import check_int

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy
    from asyncpg.transaction import Transaction

__all__ = [
    "DatabaseStats",
    "IsolationLevel",
    "PooledConnection",
    "ResilientDatabase",
    "classify_database_error",
    "database_options",
]

T = TypeVar("T")

PooledConnection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"
"""A connection lent by the pool (what ``acquire``, ``transaction`` and ``setup`` receive)."""

IsolationLevel: TypeAlias = Literal[
    "read_committed", "read_uncommitted", "serializable", "repeatable_read"
]

_Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"

_log = logging.getLogger("sage_resilience")

_TRANSIENT = FailureKind.TRANSIENT
_PERMANENT = FailureKind.PERMANENT
_FAILED_AFTER_SENDING = frozenset({FailureKind.TRANSIENT, FailureKind.THROTTLED, FailureKind.ABORT})
_ASYNCPG_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
_CONNECTION_GONE = (
    "connection is closed",
    "connection was closed",
    "connection has been closed",
)


# -- classification ------------------------------------------------------------------------------


def classify_database_error(exc: BaseException) -> FailureKind | None:
    """The kind of an asyncpg error (the table in the module docstring); ``None`` for others.

    Registered with :func:`~sage_resilience.core.register_classifier` when this module is
    imported. ``OSError`` and ``TimeoutError`` need no classifier: unmarked errors are transient.
    """
    if isinstance(exc, asyncpg.PostgresError):
        return _TRANSIENT if is_transient_database_error(exc) else _PERMANENT
    if isinstance(exc, asyncpg.InterfaceError):
        message = str(exc)
        return _TRANSIENT if any(s in message for s in _CONNECTION_GONE) else _PERMANENT
    if isinstance(exc, asyncpg.exceptions.OutdatedSchemaCacheError):
        return _PERMANENT
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return _TRANSIENT
    return None


register_classifier(classify_database_error)


def _answered(exc: BaseException) -> bool:
    """Whether the server answered the statement with an error: it then took no effect (an
    ``ERROR`` ends the statement, and in autocommit its implicit transaction, in a rollback)."""
    if not isinstance(exc, asyncpg.PostgresError):
        return False
    severity = getattr(exc, "severity_en", None) or getattr(exc, "severity", None)
    return severity == "ERROR"


def _outcome_unknown(exc: BaseException) -> bool:
    """Whether a statement that was sent and failed with ``exc`` may have taken effect."""
    if _answered(exc) or isinstance(exc, asyncpg.InterfaceError):
        return False  # the server said no, or asyncpg refused before sending anything
    return classify(exc) in _FAILED_AFTER_SENDING


def _discard(connection: PooledConnection) -> None:
    """Close a connection that may be broken, so the pool does not lend it again (asyncpg may
    have detached it from the pool already, when it saw the connection drop)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        connection.terminate()


def _suspect(exc: BaseException) -> bool:
    """Whether the connection a call failed on may be broken (and must not be reused): a
    connection-level failure, a timeout or a cancellation (which leaves a statement running);
    not the server's answer, nor an error of the caller's own code."""
    if _answered(exc):
        return False
    if isinstance(exc, OSError | TimeoutError) or not isinstance(exc, Exception):
        return True
    if isinstance(exc, _ASYNCPG_ERRORS):
        return classify(exc) is _TRANSIENT
    return False


# -- configuration -------------------------------------------------------------------------------


def database_options(max_size: int = 10, **overrides: Any) -> AdaptiveOptions:
    """The :class:`~sage_resilience.adaptive.AdaptiveOptions` of a database with a pool of
    ``max_size`` connections (``overrides`` are further fields).

    * the concurrency limit starts at, and never exceeds, the pool size: a call beyond it waits
      in the priority limiter (and is shed by priority) instead of the pool's FIFO queue;
    * no rate controller: a database does not answer "slow down" the way an HTTP API does;
    * no adaptive attempt timeout: statements differ by orders of magnitude in duration, and one
      learned quantile would cut the rare slow ones (making their writes' outcome unknown). The
      pool's ``command_timeout`` (or ``timeout=`` per call) bounds each statement instead.

    Everything else is the policy's default, ``hold`` included: while the database is down, a
    call waits (up to ``hold``) for the breaker's next trial rather than fail at once; pass
    ``hold=0.0`` for calls that must fail fast.
    """
    check_int("max_size", max_size, minimum=1)
    fields: dict[str, Any] = {
        "initial_limit": max_size,
        "max_limit": max_size,
        "rate": None,
        "timeout": False,
    }
    fields.update(overrides)
    return AdaptiveOptions(**fields)


@dataclass(frozen=True, slots=True)
class DatabaseStats:
    """What a :class:`ResilientDatabase` has done.

    Attributes:
        connected: whether the pool is up (created and set up).
        pool_size: connections open in the pool.
        pool_idle: of which idle.
        operations: operations called (statements, transactions, acquisitions, ``connect``).
        attempts: attempts they made (the first included; a call the breaker refuses makes
            none).
        connect_attempts: attempts at creating the pool.
        outcome_unknown: writes that raised :class:`~sage_resilience.core.OutcomeUnknownError`.
    """

    connected: bool
    pool_size: int
    pool_idle: int
    operations: int
    attempts: int
    connect_attempts: int
    outcome_unknown: int


class _Write:
    """A non-idempotent write across its attempts: whether the current attempt has sent it,
    and the failure that left an earlier attempt's outcome unknown."""

    __slots__ = ("lost", "sent")

    def __init__(self) -> None:
        self.sent = False
        self.lost: BaseException | None = None


# -- the database ---------------------------------------------------------------------------------


class ResilientDatabase:
    """An asyncpg pool with Sage's interface, every operation under an adaptive policy.

    ``async with ResilientDatabase(dsn) as db:`` connects and closes. Statements: ``execute``,
    ``executemany`` (writes), ``fetch``, ``fetchrow``, ``fetchval`` (reads); ``transaction()``
    and ``acquire()`` lend a connection to a block; ``run_in_transaction(fn)`` is a transaction
    that can be run again. See the module docstring for what is retried and why.

    Args:
        dsn: the PostgreSQL URL.
        min_size: connections the pool keeps open.
        max_size: the most connections the pool opens.
        policy: the policy every operation goes through; default an
            :class:`~sage_resilience.adaptive.AdaptivePolicy` named ``name`` with
            :func:`database_options`.
        name: the dependency's name (names the default policy's parts: ``name.breaker``, ...).
        registry: where to register the policy's parts (none if ``None``).
        command_timeout: seconds a statement may run (asyncpg's per-statement default; a call's
            ``timeout=`` overrides it), or ``None`` for no limit.
        connect_timeout: seconds to open a connection, to wait for a free one, to hand one back
            and to close the pool.
        setup: ``async (connection) -> ...`` run once when the pool is created, before the
            database counts as connected (create the schema here); it should be idempotent, as
            a failed connect is retried.
        init: ``async (connection) -> ...`` run on every new connection (register codecs here).
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        policy: AdaptivePolicy | None = None,
        name: str = "database",
        registry: Registry | None = None,
        command_timeout: float | None = 30.0,
        connect_timeout: float = 10.0,
        setup: Callable[[PooledConnection], Awaitable[object]] | None = None,
        init: Callable[[asyncpg.Connection[asyncpg.Record]], Awaitable[object]] | None = None,
    ) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise ValueError(f"dsn must be a non-empty string, got {dsn!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        check_int("min_size", min_size, minimum=0)
        check_int("max_size", max_size, minimum=1)
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size!r}) must be <= max_size ({max_size!r})")
        if command_timeout is not None:
            _check_seconds("command_timeout", command_timeout)
        _check_seconds("connect_timeout", connect_timeout)
        for label, hook in (("setup", setup), ("init", init)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{label} must be an async callable or None, got {hook!r}")
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError(f"registry must be a Registry or None, got {registry!r}")
        if policy is None:
            policy = AdaptivePolicy(name, database_options(max_size))
        elif not isinstance(policy, AdaptivePolicy):
            raise TypeError(f"policy must be an AdaptivePolicy or None, got {policy!r}")
        if registry is not None:
            policy.register(registry)
        self.dsn = dsn
        self.name = name
        self.policy = policy
        self.min_size = min_size
        self.max_size = max_size
        self.command_timeout = None if command_timeout is None else float(command_timeout)
        self.connect_timeout = float(connect_timeout)
        self._setup = setup
        self._init = init
        self._pool: _Pool | None = None
        self._lock = asyncio.Lock()  # connect and close, one at a time
        self._operations = 0
        self._attempts = 0
        self._connect_attempts = 0
        self._unknown = 0

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the pool is created and set up (operations may be called)."""
        return self._pool is not None

    @property
    def pool(self) -> _Pool | None:
        """The asyncpg pool while connected (``None`` otherwise)."""
        return self._pool

    async def connect(self) -> None:
        """Create the pool and run ``setup``, through the policy (no-op if connected).

        On failure nothing is left open and ``connected`` stays ``False``; the error is the
        last attempt's (or the breaker's refusal).
        """
        async with self._lock:
            if self._pool is not None:
                return
            self._operations += 1
            self._pool = await self.policy.acall(self._open)

    async def close(self) -> None:
        """Close the pool: wait up to ``connect_timeout`` for connections to be handed back and
        closed, then terminate the rest. No-op if not connected."""
        async with self._lock:
            pool, self._pool = self._pool, None
            if pool is None:
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await pool.close()
            except Exception:  # a timeout, or a connection that would not close
                _log.debug("database %r: pool did not close in time; terminated", self.name)
                pool.terminate()

    async def __aenter__(self) -> ResilientDatabase:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _open(self) -> _Pool:
        """One attempt at a usable pool: create it, take a connection, run ``setup`` on it; on
        failure terminate the pool."""
        self._attempts += 1
        self._connect_attempts += 1
        init = self._init

        async def init_connection(connection: asyncpg.Connection[asyncpg.Record]) -> None:
            if init is not None:
                await init(connection)

        pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            init=init_connection if init is not None else None,
        )
        try:
            # One connection in hand, even with min_size 0: connected means the server was
            # reached (and set up).
            connection = await self._acquire(pool)
            try:
                if self._setup is not None:
                    await self._setup(connection)
            finally:
                await self._release(pool, connection)
        except BaseException:
            pool.terminate()
            raise
        return pool

    def _require_pool(self) -> _Pool:
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"database {self.name!r} is not connected: await connect() first")
        return pool

    # -- statements ----------------------------------------------------------------------------

    async def execute(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> str:
        """Run a statement; returns its status (``"INSERT 0 1"``).

        A write: retried only if ``idempotent``, or if it failed before it was sent or was
        refused by the server; else a lost reply raises ``OutcomeUnknownError``.
        """
        write = None if idempotent else _Write()

        async def run(connection: PooledConnection) -> str:
            if write is not None:
                write.sent = True
            return await connection.execute(query, *args, timeout=timeout)

        return await self._operation(run, write)

    async def executemany(
        self,
        command: str,
        args: Iterable[Sequence[object]],
        *,
        timeout: float | None = None,
        idempotent: bool = False,
    ) -> None:
        """Run ``command`` for each argument tuple, atomically (all or none); a write, like
        :meth:`execute`."""
        rows = list(args)  # an iterator could not be replayed by a retry
        write = None if idempotent else _Write()

        async def run(connection: PooledConnection) -> None:
            if write is not None:
                write.sent = True
            await connection.executemany(command, rows, timeout=timeout)

        await self._operation(run, write)

    async def fetch(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> list[asyncpg.Record]:
        """Run a query and return its rows; retried (pass ``idempotent=False`` if it writes)."""
        write = None if idempotent else _Write()

        async def run(connection: PooledConnection) -> list[asyncpg.Record]:
            if write is not None:
                write.sent = True
            return await connection.fetch(query, *args, timeout=timeout)

        return await self._operation(run, write)

    async def fetchrow(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> asyncpg.Record | None:
        """Run a query and return its first row (``None`` if none); retried (pass
        ``idempotent=False`` if it writes)."""
        write = None if idempotent else _Write()

        async def run(connection: PooledConnection) -> asyncpg.Record | None:
            if write is not None:
                write.sent = True
            return await connection.fetchrow(query, *args, timeout=timeout)

        return await self._operation(run, write)

    async def fetchval(
        self,
        query: str,
        *args: object,
        column: int = 0,
        timeout: float | None = None,
        idempotent: bool = True,
    ) -> Any:
        """Run a query and return one value of its first row (``None`` if no row); retried
        (pass ``idempotent=False`` if it writes, as ``INSERT ... RETURNING id`` does)."""
        write = None if idempotent else _Write()

        async def run(connection: PooledConnection) -> Any:
            if write is not None:
                write.sent = True
            return await connection.fetchval(query, *args, column=column, timeout=timeout)

        return await self._operation(run, write)

    # -- connections and transactions ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[PooledConnection]:
        """``async with db.acquire() as connection:`` a connection of the pool.

        Acquiring goes through the policy (retried when it fails). What the block does with
        the connection is the caller's: not retried, and not seen by the breaker; a block that
        fails on a broken connection closes it rather than hand it back.
        """
        pool = self._require_pool()
        self._operations += 1
        connection = await self.policy.acall(self._acquire_attempt, pool)
        try:
            yield connection
        except BaseException as exc:
            if _suspect(exc):
                _discard(connection)
            raise
        finally:
            await self._release(pool, connection)

    @contextlib.asynccontextmanager
    async def transaction(
        self,
        *,
        idempotent: bool = False,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> AsyncIterator[PooledConnection]:
        """``async with db.transaction() as connection:`` a connection inside a transaction,
        committed when the block ends, rolled back if it raises.

        Acquiring the connection and starting the transaction go through the policy (retried:
        nothing is written yet). The block itself cannot be run again (use
        :meth:`run_in_transaction` for that). A commit whose reply is lost raises
        ``OutcomeUnknownError``, unless ``idempotent`` (then the original error).
        """
        pool = self._require_pool()
        self._operations += 1
        connection, tx = await self.policy.acall(
            self._begin_attempt, pool, isolation, readonly, deferrable
        )
        try:
            try:
                yield connection
            except BaseException as exc:
                await self._rollback(connection, tx, exc)
                raise
            await self._commit(connection, tx, None if idempotent else _Write())
        finally:
            await self._release(pool, connection)

    async def run_in_transaction(
        self,
        fn: Callable[[PooledConnection], Awaitable[T]],
        *,
        idempotent: bool = False,
        isolation: IsolationLevel | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> T:
        """Await ``fn(connection)`` inside a transaction and commit; returns what ``fn`` returned.

        The whole transaction is one attempt, so a failure before the commit (a serialization
        failure, a deadlock, a dropped connection: the server rolls the transaction back) is
        retried with a new transaction, and ``fn`` may run more than once: keep it free of
        effects outside the transaction. A commit whose reply is lost raises
        ``OutcomeUnknownError`` and is not retried, unless ``idempotent``.
        """
        write = None if idempotent else _Write()

        async def run(connection: PooledConnection) -> T:
            tx = connection.transaction(
                isolation=isolation, readonly=readonly, deferrable=deferrable
            )
            await tx.start()
            try:
                result = await fn(connection)
            except BaseException as exc:
                await self._rollback(connection, tx, exc)
                raise
            await self._commit(connection, tx, write)
            return result

        return await self._operation(run, write)

    # -- statistics ----------------------------------------------------------------------------

    def stats(self) -> DatabaseStats:
        """What this database has done so far, and its pool now."""
        pool = self._pool
        return DatabaseStats(
            connected=pool is not None,
            pool_size=0 if pool is None else pool.get_size(),
            pool_idle=0 if pool is None else pool.get_idle_size(),
            operations=self._operations,
            attempts=self._attempts,
            connect_attempts=self._connect_attempts,
            outcome_unknown=self._unknown,
        )

    def __repr__(self) -> str:
        state = "connected" if self._pool is not None else "not connected"
        return f"ResilientDatabase(name={self.name!r}, {state}, policy={self.policy.name!r})"

    # -- one operation, one attempt --------------------------------------------------------------

    async def _operation(
        self, run: Callable[[PooledConnection], Awaitable[T]], write: _Write | None
    ) -> T:
        pool = self._require_pool()
        self._operations += 1
        try:
            return await self.policy.acall(self._attempt, pool, run, write)
        except OutcomeUnknownError:
            raise
        except Exception as exc:
            if write is not None and write.lost is not None:
                # An attempt was cut while its write was on the wire (the policy's own timeout
                # cancels it from outside), and the call ended on another error: the write
                # may have been applied all the same.
                raise self._outcome_unknown(exc) from exc
            raise

    async def _attempt(
        self,
        pool: _Pool,
        run: Callable[[PooledConnection], Awaitable[T]],
        write: _Write | None,
    ) -> T:
        self._attempts += 1
        if write is not None:
            if write.lost is not None:
                # An earlier attempt may have been applied: never send the write again.
                raise self._outcome_unknown(write.lost) from write.lost
            write.sent = False
        connection = await self._acquire(pool)  # a failure here: nothing was sent
        try:
            return await run(connection)
        except OutcomeUnknownError:  # raised by _commit, which has dealt with the connection
            raise
        except BaseException as exc:
            if _suspect(exc):
                _discard(connection)
            if write is not None and write.sent and _outcome_unknown(exc):
                write.lost = exc
                if isinstance(exc, Exception):  # a cancellation stays a cancellation
                    raise self._outcome_unknown(exc) from exc
            raise
        finally:
            await self._release(pool, connection)

    def _outcome_unknown(self, exc: BaseException) -> OutcomeUnknownError:
        self._unknown += 1
        return OutcomeUnknownError(
            f"database {self.name!r}: a write failed after it was sent and may have been "
            f"applied; not retried ({type(exc).__name__}: {exc})"
        )

    async def _acquire_attempt(self, pool: _Pool) -> PooledConnection:
        self._attempts += 1
        return await self._acquire(pool)

    async def _begin_attempt(
        self,
        pool: _Pool,
        isolation: IsolationLevel | None,
        readonly: bool,
        deferrable: bool,
    ) -> tuple[PooledConnection, Transaction]:
        self._attempts += 1
        connection = await self._acquire(pool)
        try:
            tx = connection.transaction(
                isolation=isolation, readonly=readonly, deferrable=deferrable
            )
            await tx.start()
        except BaseException as exc:
            if _suspect(exc):
                _discard(connection)
            await self._release(pool, connection)
            raise
        return connection, tx

    async def _acquire(self, pool: _Pool) -> PooledConnection:
        return await pool.acquire(timeout=self.connect_timeout)

    async def _release(self, pool: _Pool, connection: PooledConnection) -> None:
        """Hand ``connection`` back; a failure to reset it is not the caller's (asyncpg has
        closed the connection, and the pool opens another when needed)."""
        try:
            await pool.release(connection, timeout=self.connect_timeout)
        except Exception as exc:
            _log.debug(
                "database %r: a connection failed to reset and was closed: %r", self.name, exc
            )

    @staticmethod
    async def _rollback(connection: PooledConnection, tx: Transaction, exc: BaseException) -> None:
        """Roll back after ``exc``; on a connection that may be broken, close it instead (the
        server rolls back a transaction whose connection is gone)."""
        if _suspect(exc):
            _discard(connection)
            return
        try:
            await tx.rollback()
        except Exception:
            _discard(connection)

    async def _commit(
        self, connection: PooledConnection, tx: Transaction, write: _Write | None
    ) -> None:
        if write is not None:
            write.sent = True
        try:
            await tx.commit()
        except BaseException as exc:
            if _suspect(exc):
                _discard(connection)
            if write is not None and _outcome_unknown(exc) and isinstance(exc, Exception):
                write.lost = exc
                raise self._outcome_unknown(exc) from exc
            raise


def _check_seconds(name: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not 0.0 < float(value) < float("inf"):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
