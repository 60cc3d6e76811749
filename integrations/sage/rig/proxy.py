"""A fault-injecting TCP proxy: put it between a client and PostgreSQL (or any TCP server) and make
the network refuse, reset, swallow, slow down or lose a reply, on demand.

:class:`FaultProxy` runs its own asyncio loop in a daemon thread, so it serves clients on any loop
(or none), and its controls are plain thread-safe methods that return once the change is in
force. It knows nothing of the protocol it carries: it moves byte chunks.

=============  ===================================================================================
mode           what the client sees
=============  ===================================================================================
FORWARD        a normal connection; with ``latency(s)``, every chunk is delayed ``s`` seconds on
               its way, in both directions
REFUSE         the proxy stops listening: new connections get ``ECONNREFUSED`` from the kernel;
               open connections are closed (FIN)
RESET          open connections are reset (RST: ``SO_LINGER`` 0); new ones are accepted and reset
BLACKHOLE      connections are accepted and kept, and nothing goes through either way, ever; on
               leaving the mode, the connections that lost data are reset (like a stateful
               firewall that dropped their packets)
=============  ===================================================================================

Beside the mode, :meth:`FaultProxy.drop_reply` loses replies: the next client-to-server chunk is
forwarded, the server's reply to it is swallowed and the client's connection reset. The client
cannot know whether its statement ran, which is the only honest way to test that a retried write
is not applied twice. :meth:`FaultProxy.sever` resets every open connection once.

A port refused by the kernel cannot be counted by the proxy: refused attempts are the client's to
count. While refusing, the proxy keeps its port bound (a socket with ``SO_REUSEPORT`` that does
not listen), so nothing else can take it before the proxy listens again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import math
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from .postgres import with_hostport

__all__ = ["FaultProxy", "ProxyMode", "ProxyStats"]

T = TypeVar("T")

_CHUNK = 65536
_CONTROL_TIMEOUT = 10.0  # seconds a control call waits for the proxy's loop
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


class ProxyMode(enum.Enum):
    """What :class:`FaultProxy` does with connections (see the module docstring)."""

    FORWARD = "forward"
    REFUSE = "refuse"
    RESET = "reset"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """A consistent snapshot of a :class:`FaultProxy`'s state and counters.

    Attributes:
        mode: the current mode.
        latency: the delay per chunk while forwarding, in seconds.
        open: connections open now.
        accepted: connections accepted.
        closed: connections closed (FIN) because the proxy began refusing.
        reset: connections the proxy reset (RST): reset mode, :meth:`FaultProxy.sever`, a
            dropped reply, a blackhole healed, an upstream that could not be reached.
        upstream_failures: connections whose upstream could not be reached.
        bytes_up: bytes forwarded from clients to the server.
        bytes_down: bytes forwarded from the server to clients.
        swallowed: bytes received and never forwarded (blackhole, dropped replies).
        replies_dropped: replies swallowed by :meth:`FaultProxy.drop_reply`.
        drops_pending: replies still to drop.
    """

    mode: ProxyMode
    latency: float
    open: int
    accepted: int
    closed: int
    reset: int
    upstream_failures: int
    bytes_up: int
    bytes_down: int
    swallowed: int
    replies_dropped: int
    drops_pending: int


class _Link:
    """One client connection and its upstream connection (``None`` while there is none)."""

    __slots__ = ("client", "done", "dropping", "holed", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.holed = False  # lost data to the blackhole: reset when the blackhole ends
        self.dropping = False  # its next reply is to be swallowed
        self.done = False

    def ended(self) -> bool:
        """Whether the link is reset or closed (a call, so that a check after an ``await``
        is not taken for the same as one before it)."""
        return self.done


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket with a reset rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


def _check_port(name: str, value: object, *, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not minimum <= value <= 65535:
        raise ValueError(f"{name} must be in [{minimum}, 65535], got {value!r}")
    return value


def _check_seconds(name: str, value: object, *, positive: bool) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0.0 or (positive and seconds == 0.0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return seconds


class FaultProxy:
    """A TCP proxy to ``upstream_host:upstream_port`` that injects faults on demand.

    Use it as a context manager (``with FaultProxy() as proxy:``) or call :meth:`start` and
    :meth:`stop`. Point the client at :attr:`address` (:meth:`dsn` rewrites a PostgreSQL DSN).
    The controls (:meth:`forward`, :meth:`refuse`, :meth:`reset`, :meth:`blackhole`,
    :meth:`latency`, :meth:`drop_reply`, :meth:`sever`) may be called from any thread and return
    once the change is in force; they block the caller for the time the proxy's own loop takes
    to apply it (well under a millisecond when idle). They must not be called from the proxy's
    own loop.

    Args:
        upstream_host: the server's host.
        upstream_port: the server's port.
        host: the IP address to listen on (a literal address, so that one port serves it).
        port: the port to listen on; 0 picks a free one (see :attr:`port` once started).
        connect_timeout: seconds to reach the upstream for a new connection before giving up
            (the client's connection is then reset).
    """

    def __init__(
        self,
        upstream_host: str = "127.0.0.1",
        upstream_port: int = 5432,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        if not isinstance(upstream_host, str) or not upstream_host:
            raise ValueError(f"upstream_host must be a non-empty string, got {upstream_host!r}")
        if not isinstance(host, str):
            raise TypeError(f"host must be an IP address string, got {host!r}")
        try:
            family = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host must be a literal IP address, got {host!r}") from None
        self.upstream_host = upstream_host
        self.upstream_port = _check_port("upstream_port", upstream_port, minimum=1)
        self.host = host
        self._port = _check_port("port", port, minimum=0)
        self.connect_timeout = _check_seconds("connect_timeout", connect_timeout, positive=True)
        self._family = socket.AF_INET6 if family.version == 6 else socket.AF_INET

        self._control = threading.Lock()  # serialises start, stop and the mode changes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # The state below is touched only on the proxy's loop (once started).
        self._server: asyncio.Server | None = None
        self._placeholder: socket.socket | None = None  # holds the port while refusing
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._mode = ProxyMode.FORWARD
        self._latency = 0.0
        self._drops = 0
        self._accepted = 0
        self._closed = 0
        self._reset = 0
        self._upstream_failures = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._swallowed = 0
        self._replies_dropped = 0

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start the proxy's thread and listen, forwarding (a stopped proxy may be started
        again, on the same port). Returns the proxy.

        Raises:
            RuntimeError: it is already running.
            OSError: the address cannot be listened on.
        """
        with self._control:
            if self._thread is not None:
                raise RuntimeError("FaultProxy is already started")
            # A restarted proxy forwards again, on the same port; its counters go on.
            self._mode = ProxyMode.FORWARD
            self._latency = 0.0
            self._drops = 0
            self._links.clear()
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(loop, ready),
                name=f"FaultProxy->{self.upstream_host}:{self.upstream_port}",
                daemon=True,
            )
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
            try:
                self._call(self._listen())
            except BaseException:
                self._halt()
                raise
        return self

    def stop(self) -> None:
        """Close every connection, stop listening and end the thread (no error if stopped)."""
        with self._control:
            if self._loop is None:
                return
            try:
                self._call(self._shutdown())
            finally:
                self._halt()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _halt(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_CONTROL_TIMEOUT)

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the proxy's loop and wait for its result."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("FaultProxy is not started")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FaultProxy controls cannot be called from the proxy's own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(_CONTROL_TIMEOUT)

    # -- where to connect --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started when ``port`` was 0)."""
        if self._port == 0:
            raise RuntimeError("FaultProxy is not started: its port is not chosen yet")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to."""
        return (self.host, self.port)

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a PostgreSQL URL) pointed at this proxy instead of its server."""
        host = f"[{self.host}]" if self._family == socket.AF_INET6 else self.host
        return with_hostport(dsn, host, self.port)

    # -- controls ----------------------------------------------------------------------------------

    @property
    def mode(self) -> ProxyMode:
        """The current mode."""
        return self._mode

    def set_mode(self, mode: ProxyMode | str, *, latency: float = 0.0) -> None:
        """Switch to ``mode`` (a :class:`ProxyMode` or its value); ``latency`` is the delay per
        chunk while forwarding. Returns once the change is in force."""
        if isinstance(mode, str):
            try:
                mode = ProxyMode(mode)
            except ValueError:
                names = ", ".join(repr(m.value) for m in ProxyMode)
                raise ValueError(f"mode must be one of {names}, got {mode!r}") from None
        elif not isinstance(mode, ProxyMode):
            raise TypeError(f"mode must be a ProxyMode, got {mode!r}")
        seconds = _check_seconds("latency", latency, positive=False)
        with self._control:
            self._call(self._apply(mode, seconds))

    def forward(self) -> None:
        """Forward everything at once (and listen again if refusing)."""
        self.set_mode(ProxyMode.FORWARD)

    def refuse(self) -> None:
        """Stop listening (new connections are refused) and close the open ones."""
        self.set_mode(ProxyMode.REFUSE)

    def reset(self) -> None:
        """Reset the open connections, and every new one as soon as it is accepted."""
        self.set_mode(ProxyMode.RESET)

    def blackhole(self) -> None:
        """Accept and keep connections, and forward nothing either way."""
        self.set_mode(ProxyMode.BLACKHOLE)

    def latency(self, seconds: float) -> None:
        """Forward, delaying every chunk by ``seconds`` in both directions."""
        self.set_mode(ProxyMode.FORWARD, latency=seconds)

    def drop_reply(self, times: int = 1) -> None:
        """Lose the reply to each of the next ``times`` client-to-server chunks (0 disarms).

        Each such chunk is forwarded; the server's reply to it is swallowed and the client's
        connection is reset, so the statement ran but the client cannot know it.
        """
        if not isinstance(times, int) or isinstance(times, bool):
            raise TypeError(f"times must be an int, got {times!r}")
        if times < 0:
            raise ValueError(f"times must be >= 0, got {times!r}")
        with self._control:
            self._call(self._arm(times))

    def sever(self) -> int:
        """Reset every open connection now, keeping the mode; returns how many were reset."""
        with self._control:
            return self._call(self._sever())

    def stats(self) -> ProxyStats:
        """A consistent snapshot of the mode and counters."""
        if self._loop is None:
            return self._snapshot()
        return self._call(self._stats())

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else self.host
        return (
            f"FaultProxy({where} -> {self.upstream_host}:{self.upstream_port}, "
            f"mode={self._mode.value})"
        )

    # -- on the proxy's loop -----------------------------------------------------------------------

    async def _stats(self) -> ProxyStats:
        return self._snapshot()

    def _snapshot(self) -> ProxyStats:
        return ProxyStats(
            mode=self._mode,
            latency=self._latency,
            open=len(self._links),
            accepted=self._accepted,
            closed=self._closed,
            reset=self._reset,
            upstream_failures=self._upstream_failures,
            bytes_up=self._bytes_up,
            bytes_down=self._bytes_down,
            swallowed=self._swallowed,
            replies_dropped=self._replies_dropped,
            drops_pending=self._drops,
        )

    async def _arm(self, times: int) -> None:
        self._drops = times

    async def _sever(self) -> int:
        links = [link for link in self._links if not link.done]
        for link in links:
            self._reset_link(link)
        return len(links)

    async def _listen(self) -> None:
        server = await asyncio.start_server(
            self._accept,
            self.host,
            self._port,
            family=self._family,
            reuse_address=True,
            reuse_port=_REUSE_PORT,
        )
        self._server = server
        self._port = server.sockets[0].getsockname()[1]
        placeholder, self._placeholder = self._placeholder, None
        if placeholder is not None:
            placeholder.close()

    def _reserve_port(self) -> None:
        """Keep the port bound, without listening, while refusing (connections to a bound port
        that nobody listens on are refused all the same)."""
        if not _REUSE_PORT:
            return
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self._port))
        except OSError:
            sock.close()
            return
        self._placeholder = sock

    async def _apply(self, mode: ProxyMode, latency: float) -> None:
        previous = self._mode
        if mode is ProxyMode.REFUSE and self._server is not None:
            self._reserve_port()
            server, self._server = self._server, None
            server.close()
        elif mode is not ProxyMode.REFUSE and self._server is None:
            await self._listen()
        self._mode = mode
        self._latency = latency
        for link in list(self._links):
            if link.done:
                continue
            if mode is ProxyMode.REFUSE:
                self._close_link(link)
                self._closed += 1
            elif mode is ProxyMode.RESET or (
                previous is ProxyMode.BLACKHOLE and mode is not ProxyMode.BLACKHOLE and link.holed
            ):
                self._reset_link(link)

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        placeholder, self._placeholder = self._placeholder, None
        if placeholder is not None:
            placeholder.close()
        for link in list(self._links):
            if not link.done:
                link.done = True
                link.client.transport.abort()
                if link.upstream is not None:
                    link.upstream.transport.abort()
        handlers = list(self._handlers)
        if handlers:  # their pumps end on the aborted transports; a straggler is cancelled
            _, pending = await asyncio.wait(handlers, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _reset_link(self, link: _Link) -> None:
        if link.done:
            return
        link.done = True
        self._reset += 1
        _rst(link.client)
        if link.upstream is not None:
            link.upstream.close()

    @staticmethod
    def _close_link(link: _Link) -> None:
        link.done = True
        link.client.close()
        if link.upstream is not None:
            link.upstream.close()

    def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Coroutine[Any, Any, None]:
        """The server's callback: count and register the connection at once (so that stop()
        closes it even if its task has not started yet), and return the coroutine serving it."""
        link = _Link(writer)
        self._links.add(link)
        self._accepted += 1
        return self._handle(link, reader, writer)

    async def _handle(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(link, reader, writer)
        except OSError:
            pass
        except asyncio.CancelledError:
            # Only stop() cancels a handler. Ending normally keeps asyncio's own callback on
            # the task (which asks a cancelled task for its exception in 3.11) quiet.
            pass
        finally:
            self._links.discard(link)
            if task is not None:
                self._handlers.discard(task)
            if not link.done:
                self._close_link(link)

    async def _serve(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        mode = self._mode
        if mode is ProxyMode.RESET:
            self._reset_link(link)
            return
        if mode is ProxyMode.REFUSE:  # accepted in the instant before the listener closed
            self._close_link(link)
            self._closed += 1
            return
        if mode is ProxyMode.BLACKHOLE:
            link.holed = True
            await self._pump(reader, None, link, up=True)
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
        except (OSError, TimeoutError):
            self._upstream_failures += 1
            self._reset_link(link)
            return
        link.upstream = up_writer
        if link.done:  # reset or closed while the upstream was being reached
            up_writer.close()
            return
        up = asyncio.ensure_future(self._pump(reader, up_writer, link, up=True))
        down = asyncio.ensure_future(self._pump(up_reader, writer, link, up=False))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in (up, down):
                pump.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    def _holing(self) -> bool:
        return self._mode is ProxyMode.BLACKHOLE

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        link: _Link,
        *,
        up: bool,
    ) -> None:
        """Move chunks from ``reader`` to ``writer`` until either side ends (``writer`` None:
        a connection accepted in blackhole mode, whose every byte is swallowed)."""
        try:
            while not link.done:
                data = await reader.read(_CHUNK)
                if not data or link.done:
                    return
                if writer is None or self._holing():
                    link.holed = True
                    self._swallowed += len(data)
                    continue
                if up:
                    if self._drops > 0 and not link.dropping:
                        self._drops -= 1
                        link.dropping = True
                elif link.dropping:  # the reply to the statement just forwarded
                    self._swallowed += len(data)
                    self._replies_dropped += 1
                    self._reset_link(link)
                    return
                delay = self._latency
                if delay > 0.0:
                    await asyncio.sleep(delay)
                    if link.ended():  # reset or closed while the chunk waited
                        return
                    if self._holing():  # the blackhole began while the chunk waited
                        link.holed = True
                        self._swallowed += len(data)
                        continue
                writer.write(data)
                await writer.drain()
                if up:
                    self._bytes_up += len(data)
                else:
                    self._bytes_down += len(data)
        except OSError:  # the peer went away: the link ends
            return
