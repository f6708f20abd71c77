"""A runnable walkthrough of the sans-IO core over a plain blocking socket.

``metered-realtime walkthrough`` starts a small scripted peer on 127.0.0.1 (it speaks just
enough of the server side to show a session) and drives :class:`ClientConnection` against it
from an ordinary ``while`` loop: connect, welcome, subscribe, publish, receive, close. Every
frame on the wire and every event out of the core is printed.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable

from wsproto import WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.events import Message as WsMessage

from metered_realtime.core import (
    ClientConfig,
    ClientConnection,
    CloseTransport,
    Connected,
    Message,
    OpenTransport,
    RequestCompleted,
)
from metered_realtime.core.frames import (
    AckFrame,
    MessageFrame,
    PongFrame,
    PresenceFrame,
    WelcomeFrame,
)

__all__ = ["ScriptedPeer", "run"]


class ScriptedPeer(threading.Thread):
    """One-connection scripted server end on 127.0.0.1: welcome, acks, echo, pong, close echo.

    It is a prop for demonstrations and tests, not a server: use ``metered-realtime serve``.
    """

    def __init__(self, on_frame: Callable[[str], None] = lambda text: None) -> None:
        super().__init__(daemon=True, name="scripted-peer")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.on_frame = on_frame

    def run(self) -> None:
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        finally:
            self.listener.close()
        ws = WSConnection(ConnectionType.SERVER)
        with conn:
            conn.settimeout(10)
            while ws.state is not ConnectionState.CLOSED:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                ws.receive_data(data)
                out = bytearray()
                for event in ws.events():
                    out += self._handle(ws, event)
                if out:
                    conn.sendall(out)

    def _handle(self, ws: WSConnection, event: object) -> bytes:
        def text(frame_text: str) -> bytes:
            return ws.send(WsMessage(data=frame_text))

        if isinstance(event, Request):
            welcome = WelcomeFrame("walkthrough-peer", None, int(time.time()), 65536)
            return ws.send(AcceptConnection()) + text(welcome.encode())
        if isinstance(event, CloseConnection):
            return ws.send(event.response())
        if not isinstance(event, TextMessage):
            return b""
        self.on_frame(event.data)
        frame = json.loads(event.data)
        ftype, rid = frame.get("type"), frame.get("requestId")
        if ftype == "ping":
            return text(PongFrame().encode())
        out = text(AckFrame(rid).encode()) if isinstance(rid, str) else b""
        if ftype == "subscribe":
            out += text(PresenceFrame(frame["channel"], (), ()).encode())
        elif ftype == "publish":
            echo = MessageFrame(frame["channel"], "peer-echo", {"echo": frame.get("data")})
            out += text(echo.encode())
        return out


def run(url: str, api_key: str, out: Callable[[str], None] = print) -> list[object]:
    """Drive the core over a blocking socket until it closes; return every event it emitted."""
    conn = ClientConnection(ClientConfig(url=url, api_key=api_key), random.SystemRandom())
    sock: socket.socket | None = None
    seen: list[object] = []
    subscribe_id = None
    conn.connect(time.monotonic())
    while True:
        while (ev := conn.next_event()) is not None:
            seen.append(ev)
            out(f"  core → {ev!r}")
            if isinstance(ev, OpenTransport):
                sock = socket.create_connection((ev.host, ev.port), timeout=5)
                conn.transport_opened(time.monotonic())
            elif isinstance(ev, CloseTransport) and sock is not None:
                sock.sendall(conn.data_to_send())
                sock.close()
                sock = None
            elif isinstance(ev, Connected):
                subscribe_id = conn.subscribe("demo/lobby", time.monotonic())
            elif isinstance(ev, RequestCompleted) and ev.request_id == subscribe_id:
                conn.publish("demo/lobby", {"hello": "core"}, time.monotonic())
            elif isinstance(ev, Message):
                conn.close(time.monotonic())
        if sock is None:
            return seen
        sock.sendall(conn.data_to_send())
        timer = conn.get_timer()
        sock.settimeout(None if timer is None else max(0.001, timer - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            conn.handle_timer(time.monotonic())
            continue
        if data:
            conn.receive_data(data, time.monotonic())
        else:
            conn.connection_lost(time.monotonic())


def main() -> int:
    """Run the walkthrough against a scripted peer; print what crosses the wire."""
    peer = ScriptedPeer(on_frame=lambda text: print(f"  wire → {text}"))
    peer.start()
    print(f"scripted peer on 127.0.0.1:{peer.port}; driving ClientConnection over a socket:")
    events = run(f"ws://127.0.0.1:{peer.port}", "pk_dev_local")
    peer.join(timeout=5)
    got = [e for e in events if isinstance(e, Message)]
    print(f"done: {len(events)} core events, message received: {bool(got)}")
    return 0 if got else 1
