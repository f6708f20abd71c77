"""Test props on real loopback sockets: a TCP proxy that can go silent, and a scripted server."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from wsproto import WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage
from wsproto.events import Message as WsMessage


class Proxy:
    """Forwards 127.0.0.1:port → 127.0.0.1:upstream; ``silent`` stops forwarding both ways
    without closing anything (a dead link); ``kill()`` drops every live connection."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.silent = False
        self.connections = 0
        self._scopes: list[anyio.CancelScope] = []

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        task_status.started(self.port)
        await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.connections += 1
        with anyio.CancelScope() as scope:
            self._scopes.append(scope)
            async with (
                client,
                await anyio.connect_tcp("127.0.0.1", self.upstream) as server,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(self._pipe, client, server, tg.cancel_scope)
                tg.start_soon(self._pipe, server, client, tg.cancel_scope)

    async def _pipe(self, src: Any, dst: Any, scope: anyio.CancelScope) -> None:
        try:
            async for data in src:
                if not self.silent:
                    await dst.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    def kill(self) -> None:
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()


Script = Callable[["ScriptedSocket"], Awaitable[None]]


class ScriptedSocket:
    """The server end of one WebSocket in a ``ScriptedServer``."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.inbox: list[dict[str, Any]] = []
        self.target: str | None = None

    async def handshake(self) -> None:
        while self.target is None:
            self.ws.receive_data(await self.stream.receive())
            for ev in self.ws.events():
                if isinstance(ev, Request):
                    self.target = ev.target
                    await self.stream.send(self.ws.send(AcceptConnection()))

    async def send(self, obj: Any) -> None:
        await self.stream.send(self.ws.send(WsMessage(data=json.dumps(obj))))

    async def welcome(self, peer_id: str = "scripted-peer") -> None:
        frame = {
            "type": "welcome",
            "peerId": peer_id,
            "expiresAt": None,
            "serverTime": 1,
            "maxMessageSize": 65536,
        }
        await self.send(frame)

    async def recv(self) -> dict[str, Any]:
        while not self.inbox:
            self.ws.receive_data(await self.stream.receive())
            for ev in self.ws.events():
                if isinstance(ev, TextMessage):
                    self.inbox.append(json.loads(ev.data))
                elif isinstance(ev, Ping):
                    await self.stream.send(self.ws.send(ev.response()))
                elif isinstance(ev, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        await self.stream.send(self.ws.send(ev.response()))
                    raise anyio.EndOfStream
        return self.inbox.pop(0)

    async def close(self, code: int, reason: str = "") -> None:
        await self.stream.send(self.ws.send(CloseConnection(code=code, reason=reason)))
        try:
            with anyio.fail_after(2):
                while True:
                    await self.recv()
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            TimeoutError,
        ):
            pass


class ScriptedServer:
    """Runs ``script(sock)`` for each accepted WebSocket (after the opening handshake)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.accepted = 0

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        task_status.started(self.port)
        await listener.serve(self._handle)

    async def _handle(self, stream: anyio.abc.ByteStream) -> None:
        self.accepted += 1
        sock = ScriptedSocket(stream)
        async with stream:
            try:
                await sock.handshake()
                await self.script(sock)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
