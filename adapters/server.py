"""Run the sans-IO broker over TCP (optionally TLS) with anyio — on asyncio or trio.

The adapter only moves bytes and time: every decision (HTTP routing, auth, routing, presence,
limits, keepalive) is made by :class:`~metered_realtime.core.server.ServerConnection` and
:class:`~metered_realtime.core.broker.Broker`.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
from anyio.streams.tls import TLSListener

from metered_realtime.core.broker import Broker, ServerConfig
from metered_realtime.core.server import HttpRequest, ServerConnection

__all__ = ["LocalServer", "StaticHandler"]

StaticHandler = Callable[[HttpRequest], "tuple[int, bytes, str] | None"]
"""Answers a request the core does not route: ``(status, body, content type)`` or ``None``."""

HTTP_PHASE_TIMEOUT = 10.0
READ_SIZE = 65_536


class _Link:
    """One accepted connection: its protocol object and its writer's wake-up."""

    __slots__ = ("conn", "stream", "wake")

    def __init__(self, conn: ServerConnection, stream: anyio.abc.ByteStream) -> None:
        self.conn = conn
        self.stream = stream
        self.wake = anyio.Event()


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
        self._links: dict[int, _Link] = {}  # session id → link
        self._timer_wake = anyio.Event()
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

    async def shutdown(self, timeout: float = 2.0) -> None:
        """``going_away`` to every client, 1001 closes after the grace, wait ≤ ``timeout``."""
        self.broker.shutdown(time.time())
        self._flush()
        self._poke_timer()
        with anyio.move_on_after(timeout):
            while self._links:
                await anyio.sleep(0.02)

    # --- connections ------------------------------------------------------------------

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
                        self._input(link, data)
                if http_phase.cancelled_caught and conn.session is None:
                    conn.connection_lost(time.time())
                    link.wake.set()
                    return
                while not conn.close_transport:
                    data = await stream.receive(READ_SIZE)
                    self._input(link, data)
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

    def _input(self, link: _Link, data: bytes) -> None:
        conn = link.conn
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
        link.wake.set()
        self._flush()
        self._poke_timer()

    async def _writer(self, link: _Link, scope: anyio.CancelScope) -> None:
        conn, stream = link.conn, link.stream
        try:
            while True:
                await link.wake.wait()
                link.wake = anyio.Event()
                data = conn.data_to_send()
                if data:
                    await stream.send(data)
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

    def _flush(self) -> None:
        for session in self.broker.take_dirty():
            link = self._links.get(session.sid)
            if link is not None:
                link.wake.set()

    # --- timers -----------------------------------------------------------------------

    def _poke_timer(self) -> None:
        at = self.broker.get_timer()
        if at is not None and (self._timer_at is None or at < self._timer_at):
            self._timer_wake.set()

    async def _timers(self) -> None:
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
