"""Run the sans-IO broker over TCP (optionally TLS) with anyio — on asyncio or trio.

The adapter only moves bytes and time: every decision (HTTP routing, auth, routing, presence,
limits, keepalive) is made by :class:`~metered_realtime.core.server.ServerConnection` and
:class:`~metered_realtime.core.broker.Broker`.

On asyncio each connection is an :class:`asyncio.Protocol`: its bytes go to the core in the
loop's read callback, and the sessions the broker dirtied are written straight to their
transports once per loop iteration (one ``call_soon``), so a publish fanned out to many
subscribers costs no task switch at all. A session's bytes stay in its own ordered buffer while
its transport is paused (the kernel buffer is full), which is what lets the broker detect a slow
consumer. On trio each connection has a reader task and a writer task on an anyio stream; the
reader writes its own session's replies itself when the writer is idle, so an ack costs no
wake-up either. Timers: one ``call_later`` handle (asyncio) or one task (trio).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSListener

from metered_realtime.adapters.runtime import current_backend
from metered_realtime.core.broker import Broker, ServerConfig
from metered_realtime.core.server import HttpRequest, ServerConnection

__all__ = ["LocalServer", "StaticHandler"]

StaticHandler = Callable[[HttpRequest], "tuple[int, bytes, str] | None"]
"""Answers a request the core does not route: ``(status, body, content type)`` or ``None``."""

HTTP_PHASE_TIMEOUT = 10.0
READ_SIZE = 65_536
READ_BUFFER = 1 << 20
CLOSE_FLUSH_TIMEOUT = 1.0
WRITE_BUFFER_HIGH = 65_536


class _Link:
    """One accepted connection (trio / anyio stream): its protocol object and writer state."""

    __slots__ = ("conn", "sending", "stream", "wake")

    def __init__(self, conn: ServerConnection, stream: anyio.abc.ByteStream) -> None:
        self.conn = conn
        self.stream = stream
        self.wake = anyio.Event()
        self.sending = False  # a task is inside stream.send(): it drains the buffer

    def poke(self) -> None:
        self.wake.set()


class _Connection(asyncio.BufferedProtocol):
    """One accepted connection (asyncio): the transport's events go to the server.

    Buffered: every connection reads into the server's one preallocated buffer (a plain
    ``Protocol`` gets a fresh 256 KiB ``recv()`` per read, which the allocator serves with
    mmap/munmap: ~12 µs a read on Linux); the bytes are copied out before the callback ends.
    """

    __slots__ = ("closing", "conn", "http_timer", "lost", "paused", "server", "transport")

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.conn: ServerConnection | None = None
        self.transport: asyncio.Transport | None = None
        self.paused = False  # the transport's buffer is over its limit: keep bytes in the core
        self.closing = False
        self.lost = False  # connection_lost() was called: the transport is gone for good
        self.http_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # pause once 64 KiB wait in user space (the kernel is full): later bytes stay in the
        # session's buffer, where the broker's slow-consumer bound sees them
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        peer = transport.get_extra_info("peername")
        remote = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "unknown"
        self.conn = ServerConnection(self.server.broker, remote)
        self.server._conns.add(self)
        loop = asyncio.get_running_loop()
        self.http_timer = loop.call_later(HTTP_PHASE_TIMEOUT, self._http_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.server._read_view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or self.closing:
            return
        if conn.session is not None:
            conn.session.receive_data(data, time.time())
            self.server._schedule_flush(self)
            return
        self.server._input(self, conn, data)
        if conn.session is not None or conn.close_transport:
            self._cancel_http_timer()
        self.poke()  # the HTTP phase: answer at once, this connection is not in the broker yet
        self.server._schedule_flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.lost = True
        self._cancel_http_timer()
        server = self.server
        server._conns.discard(self)
        conn = self.conn
        if conn is not None:
            if conn.session is not None:
                server._links.pop(conn.session.sid, None)
            conn.connection_lost(time.time())
            server._schedule_flush()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.poke()

    # writing

    def poke(self) -> None:
        """Write what the core has for this connection (unless the kernel is full)."""
        conn, transport = self.conn, self.transport
        if conn is None or transport is None or self.closing:
            return
        if conn.close_transport:
            data = conn.data_to_send()
            if data:
                transport.write(data)
            self.closing = True
            if transport.get_write_buffer_size():
                asyncio.get_running_loop().call_later(CLOSE_FLUSH_TIMEOUT, self._abort)
            transport.close()
            return
        if not self.paused:
            data = conn.data_to_send()
            if data:
                transport.write(data)

    def _abort(self) -> None:
        """The peer did not take our last bytes in time: drop them (unless already closed;
        asyncio's abort() fails on a transport that finished closing on its own)."""
        if not self.lost and self.transport is not None:
            self.transport.abort()

    def _http_timeout(self) -> None:
        self.http_timer = None
        conn = self.conn
        if conn is not None and conn.session is None and self.transport is not None:
            conn.connection_lost(time.time())
            self.closing = True
            self.transport.close()

    def _cancel_http_timer(self) -> None:
        if self.http_timer is not None:
            self.http_timer.cancel()
            self.http_timer = None


class LocalServer:
    """The local Metered Realtime server: ``async with LocalServer(config) as server: ...``.

    ``port=0`` picks a free port (read it from :attr:`port` once started).
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 8787,
        ssl_context: ssl.SSLContext | None = None,
        static: StaticHandler | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.static = static
        self.logger = logger or logging.getLogger("metered_realtime.server")
        self.broker = Broker(config, random.SystemRandom(), self._log)
        self._links: dict[int, _Link | _Connection] = {}  # session id → connection
        self._conns: set[_Connection] = set()  # asyncio: every open connection
        self._loop: asyncio.AbstractEventLoop | None = None  # set while serving on asyncio
        self._read_view = memoryview(bytearray(READ_BUFFER))  # asyncio: every connection's reads
        self._flush_scheduled = False
        self._senders: set[_Link | _Connection] = set()  # asyncio: read from since the flush
        self._timer_handle: asyncio.TimerHandle | None = None  # asyncio
        self._timer_wake = anyio.Event()  # trio
        self._timer_at: float | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stopped = anyio.Event()

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> LocalServer:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self.serve)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None
        await self.shutdown()
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report the port through ``task_status``, and serve until cancelled."""
        if current_backend() == "asyncio":
            await self._serve_asyncio(task_status)
            return
        listener: anyio.abc.Listener[Any] = await anyio.create_tcp_listener(
            local_host=self.host, local_port=self.port, reuse_port=False
        )
        sock_listener = listener
        if self.ssl_context is not None:
            listener = TLSListener(listener, self.ssl_context, standard_compatible=False)
        from anyio.abc import SocketAttribute

        self.port = sock_listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(self._timers)
            task_status.started(self.port)
            await listener.serve(self._handle, task_group=tg)

    async def _serve_asyncio(self, task_status: anyio.abc.TaskStatus[int]) -> None:
        loop = asyncio.get_running_loop()
        _mark_asyncio_context()  # for a static handler that uses anyio in a read callback
        server = await loop.create_server(
            lambda: _Connection(self),
            self.host,
            self.port,
            ssl=self.ssl_context,
            reuse_port=False,
        )
        self._loop = loop
        try:
            self.port = server.sockets[0].getsockname()[1]
            task_status.started(self.port)
            await anyio.sleep_forever()
        finally:
            server.close()
            for each in list(self._conns):
                each._abort()
            self._conns.clear()
            self._links.clear()
            if self._timer_handle is not None:
                self._timer_handle.cancel()
                self._timer_handle = None
            self._loop = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await server.wait_closed()

    async def shutdown(self, timeout: float = 2.0) -> None:
        """``going_away`` to every client, 1001 closes after the grace, wait ≤ ``timeout``."""
        self.broker.shutdown(time.time())
        self._flush()
        self._poke_timer()
        with anyio.move_on_after(timeout):
            while self._links:
                await anyio.sleep(0.02)

    # --- shared -----------------------------------------------------------------------

    def _input(self, link: _Link | _Connection, conn: ServerConnection, data: bytes) -> None:
        """HTTP-phase input (and trio input): feed it, register an upgraded session."""
        conn.receive_data(data, time.time())
        if conn.session is not None and conn.session.sid not in self._links:
            self._links[conn.session.sid] = link
        request = conn.next_request()
        if request is not None:
            answer = self.static(request) if self.static is not None else None
            if answer is None:
                conn.respond(404, b'{"error":"not found"}', "application/json")
            else:
                conn.respond(*answer)

    def _flush(self, own: _Link | None = None) -> None:
        """Write (asyncio) or wake the writers of (trio) every session the broker dirtied.

        ``own``: a trio reader's link, which it writes itself (see :meth:`_send_own`). On
        asyncio the connections that sent what is being answered go last: their acks matter
        less than getting the fan-out to everyone else one ``send`` sooner.
        """
        self._flush_scheduled = False
        links = self._links
        senders = self._senders
        later: list[_Link | _Connection] = []
        for session in self.broker.take_dirty():
            link = links.get(session.sid)
            if link is None or link is own:
                continue
            if link in senders:
                later.append(link)
            else:
                link.poke()
        for link in later:
            link.poke()
        senders.clear()
        self._poke_timer()

    def _schedule_flush(self, sender: _Connection | None = None) -> None:
        """asyncio: flush once, after every read callback of this loop iteration."""
        if sender is not None:
            self._senders.add(sender)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    # --- connections (trio: anyio streams) ----------------------------------------------

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        from anyio.abc import SocketAttribute

        try:
            remote = str(stream.extra(SocketAttribute.remote_address)[0])
        except Exception:
            remote = "unknown"
        conn = ServerConnection(self.broker, remote)
        link = _Link(conn, stream)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer, link, tg.cancel_scope)
            try:
                with anyio.move_on_after(HTTP_PHASE_TIMEOUT) as http_phase:
                    while conn.session is None and not conn.close_transport:
                        data = await stream.receive(READ_SIZE)
                        self._input(link, conn, data)
                        link.wake.set()
                        self._flush()
                if http_phase.cancelled_caught and conn.session is None:
                    conn.connection_lost(time.time())
                    link.wake.set()
                    return
                session = conn.session
                while not conn.close_transport:
                    data = await stream.receive(READ_SIZE)
                    if session is not None:
                        session.receive_data(data, time.time())
                    self._flush(own=link)
                    if not link.sending:  # else the task that is sending drains our bytes too
                        await self._send_own(link)
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                pass
            finally:
                conn.connection_lost(time.time())
                self._flush()
                link.wake.set()

    async def _send_own(self, link: _Link) -> None:
        """The reader writes its own session's replies while the writer is idle (no wake-up)."""
        conn, stream = link.conn, link.stream
        link.sending = True
        try:
            while True:
                data = conn.data_to_send()
                if not data:
                    break
                await stream.send(data)
        finally:
            link.sending = False
        if conn.close_transport:
            link.wake.set()  # the writer closes the transport

    async def _writer(self, link: _Link, scope: anyio.CancelScope) -> None:
        conn, stream = link.conn, link.stream
        try:
            while True:
                await link.wake.wait()
                link.wake = anyio.Event()
                if link.sending:
                    continue  # the reader is sending: it drains the buffer before it stops
                link.sending = True
                try:
                    while True:
                        data = conn.data_to_send()
                        if not data:
                            break
                        await stream.send(data)
                finally:
                    link.sending = False
                if conn.close_transport:
                    break
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            conn.connection_lost(time.time())
            self._flush()
        finally:
            if conn.session is not None:
                self._links.pop(conn.session.sid, None)
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await stream.aclose()
            scope.cancel()

    # --- timers -----------------------------------------------------------------------

    def _poke_timer(self) -> None:
        at = self.broker.get_timer()
        if at is None or (self._timer_at is not None and at >= self._timer_at):
            return
        loop = self._loop
        if loop is not None:
            if self._timer_handle is not None:
                self._timer_handle.cancel()
            self._timer_at = at
            self._timer_handle = loop.call_later(max(0.0, at - time.time()), self._on_timer)
        else:
            self._timer_wake.set()

    def _on_timer(self) -> None:
        """asyncio: the armed deadline passed (or moved; running early is harmless)."""
        self._timer_handle = None
        self._timer_at = None
        self.broker.handle_timer(time.time())
        self._flush()

    async def _timers(self) -> None:
        """trio: sleep until the next deadline (or an earlier one is poked), run it."""
        while True:
            at = self.broker.get_timer()
            self._timer_at = at
            delay = 3600.0 if at is None else max(0.0, at - time.time())
            with anyio.move_on_after(delay):
                await self._timer_wake.wait()
            self._timer_wake = anyio.Event()
            self.broker.handle_timer(time.time())
            self._flush()

    def _log(self, level: str, message: str, ctx: Mapping[str, Any]) -> None:
        fields = " ".join(f"{k}={v}" for k, v in ctx.items())
        self.logger.log(getattr(logging, level.upper(), logging.INFO), "%s %s", message, fields)


def _mark_asyncio_context() -> None:
    """Let protocol callbacks (outside any task) be recognised as asyncio code by anyio.

    The connections' read callbacks run in copies of the serving task's context; with sniffio
    installed, anyio identifies the running library from a context variable or the current
    task, so set the variable in the context they copy (as the client does).
    """
    try:
        import sniffio
    except ModuleNotFoundError:  # anyio falls back to asyncio.get_running_loop()
        return
    sniffio.current_async_library_cvar.set("asyncio")
