"""FaultProxy in front of the real PostgreSQL: each mode as a client sees it, with the counters.

Real sockets and a real server, so real time: every wait is bounded by a timeout of a fraction
of a second, and every test ends well within a second or two. Connections are made without TLS
(``sslmode=disable``) so that what crosses the proxy is the plain protocol, chunk for chunk.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sage_resilience.integrations.sage.rig.proxy import FaultProxy, ProxyMode, ProxyStats

pytestmark = pytest.mark.service

# A connection lost mid-statement surfaces as one of these, depending on when asyncpg notices.
LOST = (OSError, asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)


def plain(dsn: str) -> str:
    """``dsn`` without TLS: the proxy then carries the protocol's own messages."""
    return dsn + ("&" if "?" in dsn else "?") + "sslmode=disable"


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    """A started proxy in front of the local server, stopped after the test."""
    with FaultProxy() as started:
        yield started


@pytest.fixture
async def table(pg_dsn: str) -> AsyncIterator[str]:
    """``pg_dsn`` with a table ``t (id int primary key)`` in it."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    finally:
        await conn.close()
    yield pg_dsn


async def connect(proxy: FaultProxy, dsn: str, timeout: float = 2.0) -> asyncpg.Connection:
    return await asyncpg.connect(plain(proxy.dsn(dsn)), timeout=timeout)


async def count_rows(dsn: str) -> int:
    """Rows in ``t``, counted on a direct connection (not through the proxy)."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM t"))
    finally:
        await conn.close()


async def test_forwards_a_session_and_counts_its_bytes(proxy: FaultProxy, pg_dsn: str) -> None:
    """Forwarding: a whole session works through the proxy; bytes are counted both ways."""
    conn = await connect(proxy, pg_dsn)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
        assert await conn.fetchval("SELECT inet_server_port()") == 5432
        stats = proxy.stats()
    finally:
        await conn.close()
    assert stats.mode is ProxyMode.FORWARD
    assert stats.accepted == 1
    assert stats.open == 1
    assert stats.bytes_up > 0
    assert stats.bytes_down > stats.bytes_up  # the server says more (parameters, row data)
    assert stats.reset == stats.closed == stats.swallowed == 0


async def test_refuse_refuses_new_connections_and_closes_open_ones(
    proxy: FaultProxy, pg_dsn: str
) -> None:
    """Refusing: new connections get ECONNREFUSED, open ones are closed; forward() listens again
    on the same port."""
    port = proxy.port
    conn = await connect(proxy, pg_dsn)
    try:
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            await connect(proxy, pg_dsn)
        with pytest.raises(LOST):
            await conn.fetchval("SELECT 1", timeout=1.0)
    finally:
        conn.terminate()
    stats = proxy.stats()
    assert stats.mode is ProxyMode.REFUSE
    assert stats.closed == 1
    assert stats.accepted == 1  # the refused attempt never reached the proxy

    proxy.forward()
    assert proxy.port == port
    conn = await connect(proxy, pg_dsn)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_while_refusing_the_port_stays_reserved(proxy: FaultProxy) -> None:
    """While refusing, nobody else can listen on the proxy's port (it is bound, not listening),
    and a plain TCP connect is refused by the kernel."""
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1.0).close()
    intruder = socket.socket()
    try:
        with pytest.raises(OSError):
            intruder.bind(proxy.address)
            intruder.listen()
    finally:
        intruder.close()


async def test_reset_resets_open_and_new_connections(proxy: FaultProxy, pg_dsn: str) -> None:
    """Reset mode: the open connection and every new one are reset (RST), and counted."""
    conn = await connect(proxy, pg_dsn)
    try:
        proxy.reset()
        with pytest.raises(LOST):
            await conn.fetchval("SELECT 1", timeout=1.0)
    finally:
        conn.terminate()
    with pytest.raises(LOST):
        await connect(proxy, pg_dsn)
    stats = proxy.stats()
    assert stats.mode is ProxyMode.RESET
    assert stats.reset == 2
    assert stats.accepted == 2


async def test_blackhole_answers_nothing_and_resets_the_damaged_links_after(
    proxy: FaultProxy, pg_dsn: str
) -> None:
    """Blackhole: a query and a new connection get no answer (only the client's timeout ends
    them); leaving the mode resets the connections that lost data, and new ones work."""
    conn = await connect(proxy, pg_dsn)
    try:
        proxy.blackhole()
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 1", timeout=0.2)
        with pytest.raises(TimeoutError):
            await connect(proxy, pg_dsn, timeout=0.2)
        elapsed = time.perf_counter() - started
        stats = proxy.stats()
        assert stats.swallowed > 0
        assert stats.open >= 2  # kept open, never answered
        assert 0.4 <= elapsed < 1.5
        proxy.forward()
        assert proxy.stats().reset >= 1  # the connection whose query was swallowed
    finally:
        conn.terminate()
    fresh = await connect(proxy, pg_dsn)
    try:
        assert await fresh.fetchval("SELECT 1") == 1
    finally:
        await fresh.close()


async def test_latency_delays_each_chunk_both_ways(proxy: FaultProxy, pg_dsn: str) -> None:
    """Latency: a round trip takes at least twice the delay (request and reply), and switching
    back to forward removes it."""
    conn = await connect(proxy, pg_dsn)
    try:
        started = time.perf_counter()
        await conn.fetchval("SELECT 1")
        fast = time.perf_counter() - started
        proxy.latency(0.1)
        assert proxy.stats().latency == 0.1
        started = time.perf_counter()
        assert await conn.fetchval("SELECT 1") == 1
        slow = time.perf_counter() - started
        proxy.forward()
        started = time.perf_counter()
        await conn.fetchval("SELECT 1")
        again = time.perf_counter() - started
    finally:
        await conn.close()
    assert fast < 0.05
    assert 0.2 <= slow < 0.6
    assert again < 0.05


async def test_drop_reply_forwards_the_statement_and_loses_its_reply(
    proxy: FaultProxy, table: str
) -> None:
    """drop_reply: the INSERT reaches the server and is applied, but its reply is swallowed and
    the client's connection reset: the client sees a failure for a write that happened."""
    conn = await connect(proxy, table)
    try:
        proxy.drop_reply()
        assert proxy.stats().drops_pending == 1
        with pytest.raises(LOST):
            await conn.execute("INSERT INTO t VALUES (1)")
    finally:
        conn.terminate()
    stats = proxy.stats()
    assert stats.replies_dropped == 1
    assert stats.drops_pending == 0
    assert stats.reset == 1
    assert await count_rows(table) == 1  # applied, though the client was told nothing


async def test_drop_reply_times_and_disarm(proxy: FaultProxy, table: str) -> None:
    """drop_reply(times=2) loses the next two replies, on two connections, then traffic flows
    again; drop_reply(0) disarms."""
    first = await connect(proxy, table)
    second = await connect(proxy, table)
    try:
        proxy.drop_reply(2)
        for row, conn in enumerate((first, second), start=1):
            with pytest.raises(LOST):
                await conn.execute(f"INSERT INTO t VALUES ({row})")
    finally:
        first.terminate()
        second.terminate()
    conn = await connect(proxy, table)
    try:
        await conn.execute("INSERT INTO t VALUES (3)")
        proxy.drop_reply(1)
        proxy.drop_reply(0)
        await conn.execute("INSERT INTO t VALUES (4)")
    finally:
        await conn.close()
    assert proxy.stats().replies_dropped == 2
    assert await count_rows(table) == 4


async def test_drop_reply_on_a_new_connection_loses_the_handshake(
    proxy: FaultProxy, pg_dsn: str
) -> None:
    """Armed with no connection open, the first chunk is a new connection's startup message:
    the connection attempt fails before any statement could be sent."""
    proxy.drop_reply()
    with pytest.raises(LOST):
        await connect(proxy, pg_dsn)
    assert proxy.stats().replies_dropped == 1
    conn = await connect(proxy, pg_dsn)
    await conn.close()


async def test_sever_resets_open_connections_once(proxy: FaultProxy, pg_dsn: str) -> None:
    """sever(): every open connection is reset, the mode stays forward, new connections work."""
    first = await connect(proxy, pg_dsn)
    second = await connect(proxy, pg_dsn)
    try:
        assert proxy.sever() == 2
        for conn in (first, second):
            with pytest.raises(LOST):
                await conn.fetchval("SELECT 1", timeout=1.0)
    finally:
        first.terminate()
        second.terminate()
    assert proxy.mode is ProxyMode.FORWARD
    third = await connect(proxy, pg_dsn)
    try:
        assert await third.fetchval("SELECT 1") == 1
    finally:
        await third.close()
    assert proxy.stats().reset == 2


async def test_unreachable_upstream_resets_the_client() -> None:
    """An upstream that refuses: the client's connection is reset and the failure counted."""
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()  # nothing listens there now
    with FaultProxy("127.0.0.1", port) as proxy:
        with pytest.raises(ConnectionResetError):
            # The reset may come before the handshake completes, or at the first read.
            reader, writer = await asyncio.open_connection(*proxy.address)
            try:
                await asyncio.wait_for(reader.read(1), 1.0)
            finally:
                writer.close()
        stats = proxy.stats()
    assert stats.upstream_failures == 1
    assert stats.reset == 1


def test_controls_are_thread_safe_and_take_effect_on_return(proxy: FaultProxy) -> None:
    """Mode switches from several threads at once leave a consistent proxy that still forwards
    and refuses as told."""
    errors: list[BaseException] = []

    def flip() -> None:
        try:
            for _ in range(20):
                proxy.refuse()
                proxy.latency(0.0)
                proxy.reset()
                proxy.forward()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flip) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert proxy.mode is ProxyMode.FORWARD
    socket.create_connection(proxy.address, timeout=1.0).close()
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1.0).close()


def test_stop_closes_everything_and_is_idempotent(pg_dsn: str) -> None:
    """stop() closes the listener and the thread; calling it again is harmless; a stopped proxy
    refuses controls and may be started again; set_mode takes the mode's name."""
    proxy = FaultProxy().start()
    address = proxy.address
    proxy.set_mode("blackhole")
    assert proxy.mode is ProxyMode.BLACKHOLE
    proxy.stop()
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=1.0).close()
    with pytest.raises(RuntimeError, match="not started"):
        proxy.forward()
    assert isinstance(proxy.stats(), ProxyStats)
    assert not any(t.name.startswith("FaultProxy") for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="already started"), FaultProxy() as running:
        running.start()
    proxy.start()  # again, forwarding, on the same port
    try:
        assert proxy.address == address
        assert proxy.stats().mode is ProxyMode.FORWARD
        socket.create_connection(address, timeout=1.0).close()
    finally:
        proxy.stop()


def test_dsn_points_at_the_proxy() -> None:
    """dsn() keeps user, database and options and replaces the address (IPv6 bracketed)."""
    with FaultProxy() as proxy:
        dsn = proxy.dsn("postgresql://postgres@127.0.0.1:5432/db?sslmode=disable")
        assert dsn == f"postgresql://postgres@127.0.0.1:{proxy.port}/db?sslmode=disable"
    six = FaultProxy(host="::1", port=6543)
    assert six.dsn("postgresql://u@h:1/d") == "postgresql://u@[::1]:6543/d"


def test_bad_arguments_name_the_parameter() -> None:
    """Bad constructor and control arguments raise ValueError/TypeError naming the parameter."""
    with pytest.raises(ValueError, match="upstream_host"):
        FaultProxy("")
    with pytest.raises(ValueError, match="upstream_port"):
        FaultProxy(upstream_port=0)
    with pytest.raises(TypeError, match="upstream_port"):
        FaultProxy(upstream_port="5432")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="host"):
        FaultProxy(host="localhost")
    with pytest.raises(ValueError, match="port"):
        FaultProxy(port=70000)
    with pytest.raises(TypeError, match="port"):
        FaultProxy(port=True)
    with pytest.raises(ValueError, match="connect_timeout"):
        FaultProxy(connect_timeout=0)
    with pytest.raises(RuntimeError, match="port"):
        _ = FaultProxy().port
    with FaultProxy() as proxy:
        with pytest.raises(ValueError, match="latency"):
            proxy.latency(-1.0)
        with pytest.raises(ValueError, match="latency"):
            proxy.latency(float("nan"))
        with pytest.raises(TypeError, match="latency"):
            proxy.latency("1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="times"):
            proxy.drop_reply(-1)
        with pytest.raises(TypeError, match="times"):
            proxy.drop_reply(1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="mode"):
            proxy.set_mode("sideways")
        with pytest.raises(TypeError, match="mode"):
            proxy.set_mode(3)  # type: ignore[arg-type]
        assert proxy.mode is ProxyMode.FORWARD  # nothing was applied
