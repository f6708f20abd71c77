"""The server's front door, no I/O: HTTP/1.1 (h11) until a ``/v1`` upgrade, then a session.

One :class:`ServerConnection` per accepted TCP connection. It answers ``GET /healthz``, the REST
routes of PROTOCOL §6.10 (``POST /v1/tokens``, ``DELETE /v1/peers/{id}``) and the per-IP connect
limit (HTTP 429) itself, hands ``GET /v1`` upgrades to the :class:`~.broker.Broker`, and queues
any other request as an :class:`HttpRequest` for the driver to answer with :meth:`respond`
(static pages, for instance) — or 404 when the driver has nothing for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import h11

from metered_realtime.core.broker import ALL_ACTIONS, Broker, Session
from metered_realtime.core.jwt import MAX_TTL, sign_hs256
from metered_realtime.core.validation import compile_pattern

__all__ = ["HttpRequest", "ServerConnection"]

MAX_BODY = 65_536


@dataclass(frozen=True)
class HttpRequest:
    """A request the core does not route itself."""

    method: str
    target: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]


class ServerConnection:
    """One TCP connection on the server (see the module docstring)."""

    def __init__(self, broker: Broker, remote: str) -> None:
        self.broker = broker
        self.remote = remote
        self.session: Session | None = None
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        self._out = bytearray()
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._pending: HttpRequest | None = None
        self._http_done = False

    @property
    def close_transport(self) -> bool:
        """True when the driver must close the transport once ``data_to_send()`` is written."""
        if self.session is not None:
            return self.session.close_transport
        return self._http_done

    def data_to_send(self) -> bytes:
        """Bytes to write: HTTP responses, then (after an upgrade) the session's frames."""
        out = bytes(self._out)
        self._out.clear()
        if self.session is not None:
            out += self.session.data_to_send()
        return out

    def next_request(self) -> HttpRequest | None:
        """A request for the driver to answer with :meth:`respond`, if any."""
        pending, self._pending = self._pending, None
        return pending

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the transport."""
        if self.session is not None:
            self.session.receive_data(data, now)
            return
        if self._http_done:
            return
        try:
            self._http.receive_data(data)
            self._drain(now)
        except h11.RemoteProtocolError:
            self._reply(400, {"error": "bad request"})

    def connection_lost(self, now: float) -> None:
        """The transport ended."""
        if self.session is not None:
            self.session.connection_lost(now)
        self._http_done = True

    def respond(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        """Answer the request returned by :meth:`next_request`, then close."""
        headers = [
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("cache-control", "no-store"),
            ("connection", "close"),
        ]
        try:
            self._out += self._http.send(h11.Response(status_code=status, headers=headers))
            self._out += self._http.send(h11.Data(data=body)) or b""
            self._out += self._http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            pass
        self._http_done = True

    # --- internals --------------------------------------------------------------------

    def _drain(self, now: float) -> None:
        while not self._http_done and self.session is None:
            event = self._http.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._request = event
                self._body.clear()
                if self._is_upgrade(event):
                    self._upgrade(event, now)
                    return
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY:
                    self._reply(413, {"error": "body too large"})
            elif isinstance(event, h11.EndOfMessage):
                self._route(now)
            elif event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                self._http_done = True
                return

    @staticmethod
    def _is_upgrade(request: h11.Request) -> bool:
        for name, value in request.headers:
            if name == b"upgrade" and value.lower() == b"websocket":
                return True
        return False

    def _upgrade(self, request: h11.Request, now: float) -> None:
        target = request.target.decode("latin-1")
        if urlsplit(target).path != "/v1" or request.method != b"GET":
            self._reply(404, {"error": "not found"})
            return
        if not self.broker.allow_connect(self.remote, now):
            self._reply(429, {"error": "too many connection attempts"})
            return
        trailing, _ = self._http.trailing_data
        try:
            self.session = self.broker.open_session(
                target, list(request.headers), self.remote, now, bytes(trailing)
            )
        except Exception:  # wsproto refused the handshake headers
            self.session = None
            self._reply(400, {"error": "bad websocket upgrade"})

    def _route(self, now: float) -> None:
        request = self._request
        assert request is not None
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("latin-1")
        path = urlsplit(target).path
        if path == "/healthz" and method in ("GET", "HEAD"):
            self._reply(200, {"status": "ok", "connections": self.broker.connection_count})
        elif path == "/v1/tokens":
            if method != "POST":
                self._reply(405, {"error": "method not allowed"})
            else:
                self._mint(request, now)
        elif path.startswith("/v1/peers/"):
            if method != "DELETE":
                self._reply(405, {"error": "method not allowed"})
            elif self._bearer(request) is None:
                self._reply(401, {"error": "unauthorized"})
            else:
                peer_id = unquote(path[len("/v1/peers/") :])
                kicked = self.broker.kick(peer_id, now)
                self._reply(200 if kicked else 404, {"peerId": peer_id, "disconnected": kicked})
        else:
            self._pending = HttpRequest(method, target, path, tuple(request.headers))

    def _bearer(self, request: h11.Request) -> Any:
        for name, value in request.headers:
            if name == b"authorization":
                text = value.decode("latin-1")
                if text[:7].lower() == "bearer " and ":" in text[7:]:
                    kid, _, secret = text[7:].strip().partition(":")
                    return self.broker.signing_key(kid, secret)
        return None

    def _mint(self, request: h11.Request, now: float) -> None:
        key = self._bearer(request)
        if key is None:
            self._reply(401, {"error": "unauthorized"})
            return
        try:
            body = json.loads(bytes(self._body) or b"{}")
            claims = _claims_from_request(body, now)
        except (ValueError, TypeError, RecursionError) as exc:
            self._reply(400, {"error": str(exc) if isinstance(exc, ValueError) else "bad body"})
            return
        token = sign_hs256(claims, key.secret, key.kid)
        self._reply(200, {"token": token, "expiresAt": claims["exp"]})

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        self.respond(status, json.dumps(payload).encode(), "application/json")


def _claims_from_request(body: Any, now: float) -> dict[str, Any]:
    """Validate a ``POST /v1/tokens`` body into JWT claims (ValueError with a reason)."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    peer_id = body.get("peerId")
    if not isinstance(peer_id, str) or not 1 <= len(peer_id) <= 128 or not peer_id.isprintable():
        raise ValueError("peerId must be 1-128 printable characters")
    channels = body.get("channels")
    if not isinstance(channels, list) or not 1 <= len(channels) <= 100:
        raise ValueError("channels must be a list of 1-100 patterns")
    for pattern in channels:
        if not isinstance(pattern, str) or not 1 <= len(pattern) <= 256:
            raise ValueError("channels must be strings of 1-256 characters")
        compile_pattern(pattern)
    perms = body.get("permissions", sorted(ALL_ACTIONS))
    if not isinstance(perms, list) or len(perms) > 16 or not set(perms) <= ALL_ACTIONS:
        raise ValueError(f"permissions must be a subset of {sorted(ALL_ACTIONS)}")
    ttl = body.get("expiresInSec", 3600)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise ValueError("expiresInSec must be an integer within 1-86400")
    claims: dict[str, Any] = {
        "sub": peer_id,
        "iat": int(now),
        "exp": int(now) + ttl,
        "channels": channels,
        "permissions": perms,
    }
    for name in ("metadata", "peerMetadata"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be an object")
            claims[name] = value
    return claims
