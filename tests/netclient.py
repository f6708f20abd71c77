"""A bare WebSocket client over real anyio sockets (wsproto), for server tests."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from wsproto import WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.events import Message as WsMessage

TIMEOUT = 5.0


class WsClient:
    """``await WsClient.open(port, target)``; then ``send``/``recv``; bounded by timeouts."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.inbox: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.status: int | None = None
        self.eof = False
        self._partial: list[str] = []

    @classmethod
    async def open(cls, port: int, target: str = "/v1?key=pk_dev_local") -> WsClient:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        client = cls(stream)
        await stream.send(client.ws.send(Request(host=f"127.0.0.1:{port}", target=target)))
        with anyio.fail_after(TIMEOUT):
            while client.ws.state is ConnectionState.CONNECTING and client.status is None:
                await client._read()
        return client

    async def _read(self) -> None:
        try:
            data = await self.stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.eof = True
            raise
        self.ws.receive_data(data)
        for ev in self.ws.events():
            if isinstance(ev, AcceptConnection):
                pass
            elif isinstance(ev, RejectConnection):
                self.status = ev.status_code
            elif isinstance(ev, TextMessage):
                self._partial.append(ev.data)
                if ev.message_finished:
                    self.inbox.append(json.loads("".join(self._partial)))
                    self._partial.clear()
            elif isinstance(ev, Ping):
                await self.stream.send(self.ws.send(ev.response()))
            elif isinstance(ev, CloseConnection):
                self.close_code = ev.code
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self.stream.send(self.ws.send(ev.response()))

    async def send(self, obj: Any) -> None:
        await self.send_text(json.dumps(obj))

    async def send_text(self, text: str) -> None:
        await self.stream.send(self.ws.send(WsMessage(data=text)))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next text frame (fails after ``timeout``)."""
        with anyio.fail_after(timeout):
            while not self.inbox:
                await self._read()
        return self.inbox.pop(0)

    async def recv_type(self, ftype: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame of ``ftype``, skipping others."""
        with anyio.fail_after(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == ftype:
                    return frame

    async def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server's close frame or EOF; return the close code."""
        with anyio.fail_after(timeout):
            try:
                while self.close_code is None:
                    await self._read()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        return self.close_code

    async def close(self) -> None:
        if self.ws.state is ConnectionState.OPEN:
            await self.stream.send(self.ws.send(CloseConnection(code=1000, reason="bye")))
            with contextlib.suppress(TimeoutError):
                await self.wait_closed(2)
        await self.stream.aclose()

    async def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        await self.stream.aclose()


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET; returns the status and the body."""
    status, _head, body = await http_response(port, path)
    return status, body


async def http_response(port: int, path: str) -> tuple[int, bytes, bytes]:
    """A minimal HTTP/1.1 GET; returns the status, the head (status line and headers) and
    the body."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        await stream.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        with anyio.fail_after(TIMEOUT):
            try:
                while True:
                    data += await stream.receive()
            except anyio.EndOfStream:
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


def self_signed_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway certificate for localhost / 127.0.0.1 (openssl) and a server context."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context
