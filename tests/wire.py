"""``client_and_server()``: core clients wired to the core broker with no network.

Every client is a real :class:`ClientConnection`; every server end is a real
:class:`ServerConnection` of one shared :class:`Broker`. Bytes move between them in memory,
time is a fake clock, so protocol behaviour is testable in microseconds and deterministically.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from wsproto import WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.events import Message as WsMessage

from metered_realtime.core import (
    Action,
    AppEvent,
    ClientConfig,
    ClientConnection,
    CloseTransport,
    CredentialNeeded,
    OpenTransport,
)
from metered_realtime.core.broker import Broker, PublishableKey, ServerConfig, SigningKey
from metered_realtime.core.jwt import sign_hs256
from metered_realtime.core.server import ServerConnection

NOW = 1767225660.0
DEV_KEY = "pk_dev_local"
KID, SECRET = "sk_id_localtest01", "sk_secret_local_only_do_not_use"


def mint_token(sub: str, ttl: float = 600, **claims: Any) -> str:
    """A JWT for ``sub`` signed with the test signing key (all permissions, any channel)."""
    body: dict[str, Any] = {
        "sub": sub,
        "exp": time.time() + ttl,
        "channels": ["**"],
        "permissions": ["subscribe", "publish", "presence", "send"],
    }
    body.update(claims)
    return sign_hs256(body, SECRET, KID)


def default_config(**overrides: Any) -> ServerConfig:
    base: dict[str, Any] = {
        "keys": (PublishableKey(DEV_KEY),),
        "signing_keys": (SigningKey(KID, SECRET),),
    }
    base.update(overrides)
    return ServerConfig(**base)


class Endpoint:
    """One client: its machine, its server end, and what it saw."""

    def __init__(self, net: Net, config: ClientConfig, tokens: list[str]) -> None:
        self.net = net
        self.conn = ClientConnection(config, random.Random(len(net.endpoints) + 1))
        self.server: ServerConnection | None = None
        self.events: list[AppEvent] = []
        self.actions: list[Action] = []
        self.tokens = tokens

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events + self.actions if isinstance(e, kind)]

    @property
    def peer_id(self) -> str:
        assert self.conn.peer_id is not None
        return self.conn.peer_id


class Net:
    """A broker and any number of core clients, over in-memory pipes."""

    def __init__(self, config: ServerConfig | None = None, now: float = NOW) -> None:
        self.now = now
        self.logs: list[tuple[str, str, dict[str, Any]]] = []
        self.broker = Broker(
            config or default_config(),
            random.Random(99),
            lambda level, msg, ctx: self.logs.append((level, msg, dict(ctx))),
        )
        self.endpoints: list[Endpoint] = []
        self.raws: list[RawClient] = []

    def client(
        self,
        *,
        api_key: str | None = DEV_KEY,
        tokens: list[str] | None = None,
        connect: bool = True,
        **kw: Any,
    ) -> Endpoint:
        if tokens is not None:
            config = ClientConfig(url="ws://127.0.0.1:8787", use_token_provider=True, **kw)
        else:
            config = ClientConfig(url="ws://127.0.0.1:8787", api_key=api_key, **kw)
        ep = Endpoint(self, config, list(tokens or []))
        self.endpoints.append(ep)
        if connect:
            ep.conn.connect(self.now)
            self.pump()
        return ep

    def pump(self) -> None:
        for _ in range(10_000):
            moved = False
            for ep in self.endpoints:
                while (ev := ep.conn.next_event()) is not None:
                    moved = True
                    if isinstance(ev, AppEvent):
                        ep.events.append(ev)
                        continue
                    ep.actions.append(ev)
                    if isinstance(ev, OpenTransport):
                        ep.server = ServerConnection(self.broker, "127.0.0.1")
                        ep.conn.transport_opened(self.now)
                    elif isinstance(ev, CloseTransport):
                        if ep.server is not None:
                            ep.server.receive_data(ep.conn.data_to_send(), self.now)
                            ep.server.connection_lost(self.now)
                            ep.server = None
                    elif isinstance(ev, CredentialNeeded):
                        token = ep.tokens.pop(0) if ep.tokens else ""
                        ep.conn.credential_resolved(token, self.now)
                data = ep.conn.data_to_send()
                if data and ep.server is not None:
                    ep.server.receive_data(data, self.now)
                    moved = True
            # raw clients: only those whose session has output (or that are still in HTTP)
            dirty = {s.sid for s in self.broker.take_dirty()}
            for raw in self.raws:
                server = raw.server
                if server is None:
                    continue
                if server.session is None or server.session.sid in dirty:
                    moved = raw.pump() or moved
            for ep in self.endpoints:
                if ep.server is None:
                    continue
                back = ep.server.data_to_send()
                if back:
                    ep.conn.receive_data(back, self.now)
                    moved = True
                if ep.server.close_transport and ep.server is not None:
                    ep.server = None
                    ep.conn.connection_lost(self.now)
                    moved = True
            if not moved:
                return
        raise AssertionError("network did not settle")

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            timers = [
                t
                for t in [self.broker.get_timer(), *(e.conn.get_timer() for e in self.endpoints)]
                if t is not None
            ]
            at = min(timers, default=None)
            if at is None or at > end:
                break
            self.now = max(self.now, at)
            self.broker.handle_timer(self.now)
            for ep in self.endpoints:
                ep.conn.handle_timer(self.now)
            self.pump()
        self.now = end


class RawClient:
    """A bare WebSocket client (wsproto) on a ``ServerConnection``: any bytes, any frame."""

    def __init__(
        self,
        net: Net,
        target: str = f"/v1?key={DEV_KEY}",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.net = net
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.server: ServerConnection | None = ServerConnection(net.broker, "127.0.0.1")
        self.texts: list[str] = []
        self.binary: list[bytes] = []
        self.pings = 0
        self.accepted = False
        self.status: int | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.transport_closed = False
        self.welcome: dict[str, Any] | None = None
        self._partial: list[str] = []
        request = Request(host="127.0.0.1", target=target, extra_headers=headers or [])
        self.server.receive_data(self.ws.send(request), net.now)
        net.raws.append(self)
        net.pump()

    # sending

    def send_raw(self, data: bytes) -> None:
        assert self.server is not None
        self.server.receive_data(data, self.net.now)
        self.net.pump()

    def send_text(self, text: str) -> None:
        self.send_raw(self.ws.send(WsMessage(data=text)))

    def send_json(self, obj: Any) -> None:
        self.send_text(json.dumps(obj))

    def send_bytes(self, data: bytes) -> None:
        self.send_raw(self.ws.send(WsMessage(data=data)))

    def close(self, code: int = 1000) -> None:
        self.send_raw(self.ws.send(CloseConnection(code=code, reason="bye")))

    def drop(self) -> None:
        """The TCP connection dies."""
        if self.server is not None:
            self.server.connection_lost(self.net.now)
            self.server = None
        self.transport_closed = True
        self.net.pump()

    # receiving

    def pump(self) -> bool:
        if self.server is None:
            return False
        data = self.server.data_to_send()
        closing = self.server.close_transport
        if data and self.ws.state is not ConnectionState.CLOSED:
            self.ws.receive_data(data)
            for ev in self.ws.events():
                if isinstance(ev, AcceptConnection):
                    self.accepted = True
                elif isinstance(ev, RejectConnection):
                    self.status = ev.status_code
                elif isinstance(ev, RejectData):
                    pass
                elif isinstance(ev, TextMessage):
                    self._partial.append(ev.data)
                    if ev.message_finished:
                        text = "".join(self._partial)
                        self._partial.clear()
                        self.texts.append(text)
                        if self.welcome is None and text.startswith('{"type":"welcome"'):
                            self.welcome = json.loads(text)
                elif isinstance(ev, BytesMessage):
                    self.binary.append(bytes(ev.data))
                elif isinstance(ev, Ping):
                    self.pings += 1
                    self.server.receive_data(self.ws.send(ev.response()), self.net.now)
                elif isinstance(ev, CloseConnection):
                    self.close_code, self.close_reason = ev.code, ev.reason
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        self.server.receive_data(self.ws.send(ev.response()), self.net.now)
        if closing:
            self.server = None
            self.transport_closed = True
        return bool(data) or closing

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.texts]

    def take(self) -> list[dict[str, Any]]:
        """Frames received since the last ``take``."""
        out = self.frames()
        self.texts.clear()
        return out

    @property
    def peer_id(self) -> str:
        assert self.welcome is not None, "no welcome received"
        return str(self.welcome["peerId"])


def client_and_server(config: ServerConfig | None = None) -> tuple[Endpoint, Net]:
    """One connected core client and the network it lives on."""
    net = Net(config)
    return net.client(), net
