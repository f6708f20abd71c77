"""Test helpers: a scripted WebSocket server end, a fake clock and a harness around the core."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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

from metered_realtime.core import (
    Action,
    AppEvent,
    ClientConfig,
    ClientConnection,
    CloseTransport,
    CredentialNeeded,
    OpenTransport,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "protocol-vectors.json").read_text(encoding="utf-8")
)


def vector(vid: str) -> dict[str, Any]:
    """The vector with id ``vid`` from any section."""
    for section in ("client_frames", "server_frames", "robustness", "urls", "jwt"):
        for v in VECTORS[section]:
            if v.get("id") == vid:
                return dict(v)
    raise KeyError(vid)


class ScriptedRandom(random.Random):
    """A ``random.Random`` whose request ids come from a list (then from the seed)."""

    def __init__(self, ids: Iterable[str] = (), seed: int = 7) -> None:
        super().__init__(seed)
        self._ids = [uuid.UUID(i).int for i in ids]

    def getrandbits(self, k: int, /) -> int:
        if k == 128 and self._ids:
            return self._ids.pop(0)
        return super().getrandbits(k)


class ScriptedServer:
    """The server end of one WebSocket, as bytes in and bytes out (wsproto's server side)."""

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)
        self.target: str | None = None
        self.texts: list[str] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.out = bytearray()
        self._partial: list[str] = []

    def receive(self, data: bytes) -> None:
        if not data or self.ws.state is ConnectionState.CLOSED:
            return
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Request):
                self.target = event.target
            elif isinstance(event, TextMessage):
                self._partial.append(event.data)
                if event.message_finished:
                    self.texts.append("".join(self._partial))
                    self._partial.clear()
            elif isinstance(event, CloseConnection):
                self.close_code, self.close_reason = event.code, event.reason
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.out += self.ws.send(event.response())
            elif isinstance(event, Ping):
                self.out += self.ws.send(event.response())

    def accept(self) -> None:
        self.out += self.ws.send(AcceptConnection())

    def reject(self, status: int) -> None:
        self.out += self.ws.send(RejectConnection(status_code=status))

    def send(self, text: str) -> None:
        self.out += self.ws.send(WsMessage(data=text))

    def close(self, code: int, reason: str = "") -> None:
        self.out += self.ws.send(CloseConnection(code=code, reason=reason))

    def take(self) -> bytes:
        out = bytes(self.out)
        self.out.clear()
        return out

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.texts]


WELCOME = (
    '{"type":"welcome","peerId":"%s","expiresAt":null,"serverTime":1767225660,'
    '"maxMessageSize":65536}'
)


class Harness:
    """A ``ClientConnection`` wired to scripted servers, with a fake clock.

    Opening handshakes are accepted automatically; welcomes are sent by the test (or by
    ``auto_welcome``). ``events`` collects every ``AppEvent``; ``actions`` every ``Action``.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        rng: random.Random | None = None,
        auto_welcome: bool = True,
        tokens: Iterable[str | BaseException] = (),
    ) -> None:
        self.config = config or ClientConfig(url="ws://127.0.0.1:8787", api_key="pk_test")
        self.client = ClientConnection(self.config, rng or random.Random(1))
        self.now = 1000.0
        self.server: ScriptedServer | None = None
        self.servers: list[ScriptedServer] = []
        self.events: list[AppEvent] = []
        self.actions: list[Action] = []
        self.auto_welcome = auto_welcome
        self.auto_accept = True
        self.refuse_connect = False
        self.tokens = list(tokens)
        self.welcome_count = 0

    # driving

    def connect(self) -> None:
        self.client.connect(self.now)
        self.pump()

    def pump(self) -> None:
        for _ in range(1000):
            progressed = False
            data = self.client.data_to_send()
            if data and self.server is not None:
                self.server.receive(data)
                progressed = True
            while (ev := self.client.next_event()) is not None:
                progressed = True
                if isinstance(ev, AppEvent):
                    self.events.append(ev)
                else:
                    self.actions.append(ev)
                    self._act(ev)
            if self.server is not None:
                back = self.server.take()
                if back:
                    self.client.receive_data(back, self.now)
                    progressed = True
            if not progressed:
                return
        raise AssertionError("harness did not settle")

    def _act(self, action: Action) -> None:
        if isinstance(action, OpenTransport):
            if self.refuse_connect:
                self.client.transport_failed(self.now)
                return
            self.server = ScriptedServer()
            self.servers.append(self.server)
            self.client.transport_opened(self.now)
            self.server.receive(self.client.data_to_send())
            if self.auto_accept:
                self.server.accept()
                if self.auto_welcome:
                    self.welcome_count += 1
                    self.server.send(WELCOME % f"peer-{self.welcome_count}")
        elif isinstance(action, CloseTransport):
            if self.server is not None:
                self.server.receive(self.client.data_to_send())
            self.server = None
        elif isinstance(action, CredentialNeeded):
            item = self.tokens.pop(0) if self.tokens else "tok-default"
            if isinstance(item, BaseException):
                self.client.credential_failed(item, self.now)
            else:
                self.client.credential_resolved(item, self.now)

    def server_send(self, text: str) -> None:
        assert self.server is not None
        self.server.send(text)
        self.pump()

    def server_close(self, code: int, reason: str = "") -> None:
        assert self.server is not None
        self.server.close(code, reason)
        self.pump()

    def drop(self) -> None:
        """The TCP connection dies without a close frame."""
        self.server = None
        self.client.connection_lost(self.now)
        self.pump()

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every due timer in order."""
        end = self.now + seconds
        while True:
            at = self.client.get_timer()
            if at is None or at > end:
                break
            self.now = max(self.now, at)
            self.client.handle_timer(self.now)
            self.pump()
        self.now = end

    # reading

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events + self.actions if isinstance(e, kind)]

    def sent(self) -> list[dict[str, Any]]:
        assert self.server is not None
        return self.server.frames()
