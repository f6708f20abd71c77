"""The server side of the protocol, no I/O: auth, channels, presence, routing and limits.

A :class:`Broker` owns the channel registry of one app and every :class:`Session` (one per
WebSocket). The driver parses HTTP, hands each ``/v1`` upgrade to :meth:`Broker.open_session`,
then feeds the session's bytes with :meth:`Session.receive_data` and reports a dead transport
with :meth:`Session.connection_lost`. Routing writes into the *recipients'* outbound buffers, so
after every input the driver flushes :meth:`Broker.take_dirty` sessions' ``data_to_send()`` and
closes the transports whose ``close_transport`` is set.

``now`` is wall-clock Unix seconds (JWT ``exp`` and ``welcome.serverTime`` need it); the broker
keeps its own deadlines (protocol pings, idle drops, token expiry, close flushes, the
``going_away`` grace) behind :meth:`Broker.get_timer` / :meth:`Broker.handle_timer`.

Every inbound frame is handled as one uninterrupted step, and each session has one ordered
outbound buffer, which gives the ordering guarantees O1–O6 of PROTOCOL §3.4: a subscribe's ack,
then its snapshot, then the others' ``joined`` deltas, all queued before the subscriber's next
frame is read; a closing connection's ``left`` deltas after everything it sent.
"""

from __future__ import annotations

import heapq
import hmac
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request
from wsproto.handshake import H11Handshake

from metered_realtime.core.errors import FrameRejected
from metered_realtime.core.events import PresencePeer
from metered_realtime.core.frames import (
    MISSING,
    AckFrame,
    DirectFrame,
    ErrorFrame,
    GoingAwayFrame,
    MessageFrame,
    PingFrame,
    PongFrame,
    PresenceFrame,
    PublishFrame,
    SendFrame,
    SubscribeFrame,
    UnsubscribeFrame,
    WelcomeFrame,
    decode_client_frame,
    dumps,
    split_publish,
)
from metered_realtime.core.jwt import PERMISSIONS, TokenClaims, TokenRejected, verify_hs256
from metered_realtime.core.validation import RandomSource, compile_pattern, uuid4
from metered_realtime.core.wsframe import (
    FAIL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    close_payload,
    encode_frame,
)
from metered_realtime.core.wsframe import server_text as _ws_text

__all__ = [
    "Broker",
    "Limits",
    "LogFn",
    "PublishableKey",
    "ServerConfig",
    "Session",
    "SigningKey",
]

ALL_ACTIONS = PERMISSIONS
LogFn = Callable[[str, str, Mapping[str, Any]], None]
"""``log(level, message, context)``; never receives a credential."""

CLOSE_REASONS = {
    1001: "going away",
    1009: "message too big",
    4001: "invalid token",
    4002: "token expired",
    4003: "channel not authorized",
    4010: "over concurrent limit",
    4011: "over message rate",
    4012: "account suspended",
    4020: "admin disconnect",
}


@dataclass(frozen=True)
class PublishableKey:
    """A ``pk`` key: the key string is the credential."""

    key: str = field(repr=False)
    channel_patterns: tuple[str, ...] = ("**",)
    actions: frozenset[str] = ALL_ACTIONS
    allowed_origins: tuple[str, ...] = ()
    ice_servers: tuple[Mapping[str, Any], ...] | None = None
    enabled: bool = True


@dataclass(frozen=True)
class SigningKey:
    """A secret key pair: ``kid`` names it in JWT headers, ``secret`` signs HS256."""

    kid: str
    secret: str = field(repr=False)
    channel_patterns: tuple[str, ...] = ("**",)
    actions: frozenset[str] = ALL_ACTIONS
    ice_servers: tuple[Mapping[str, Any], ...] | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Limits:
    """Server limits (PROTOCOL §6.8); the rate and connect limits are off unless set."""

    max_frame_bytes: int = 65_536
    max_message_size: int = 65_536
    max_channels_per_connection: int = 100
    rate_per_second: float | None = None
    rate_burst: int = 200
    max_concurrent_connections: int | None = None
    connect_attempts_per_ip_per_minute: int | None = None
    message_quota: int | None = None
    idle_timeout: float = 90.0
    ping_interval: float = 30.0
    close_timeout: float = 1.0
    going_away_grace: float = 0.25
    max_outbound_buffer: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Credentials, limits and switches of one app."""

    keys: tuple[PublishableKey, ...] = ()
    signing_keys: tuple[SigningKey, ...] = ()
    limits: Limits = field(default_factory=Limits)
    ice_servers: tuple[Mapping[str, Any], ...] | None = None
    """Injected into every welcome (a key's own list, then a token's claim, win)."""
    suspended: bool = False
    close_on_unauthorized_channel: bool = False
    app: str = "local"


@dataclass(frozen=True)
class _Grant:
    peer_id: str
    actions: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    key_patterns: tuple[re.Pattern[str], ...] | None
    peer_metadata: dict[str, Any] | None
    welcome_metadata: dict[str, Any] | None
    expires_at: float | None

    def allows(self, channel: str) -> bool:
        if not any(p.fullmatch(channel) for p in self.patterns):
            return False
        return self.key_patterns is None or any(p.fullmatch(channel) for p in self.key_patterns)


class _Channel:
    __slots__ = ("members", "name", "sessions")

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions: dict[Session, bool] = {}  # subscriber → include_sender_metadata
        self.members: dict[str, list[Any]] = {}  # peer id → [connection count, metadata]


_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)


class Session:
    """One WebSocket connection on the server."""

    def __init__(self, broker: Broker, sid: int, remote: str, origin: str | None) -> None:
        self.broker = broker
        self.sid = sid
        self.remote = remote
        self.origin = origin
        self.out = bytearray()
        self.close_transport = False
        """Set when the driver must close the transport after flushing ``data_to_send()``."""
        self.peer_id: str | None = None
        self.grant: _Grant | None = None
        self.subs: dict[str, bool] = {}
        self._phase = _HANDSHAKE
        self._handshake: H11Handshake | None = H11Handshake(ConnectionType.SERVER)
        self._dec: FrameDecoder | None = None  # frames, once the upgrade is accepted
        self._ws_open = False  # upgraded, and no close frame sent or received yet
        self.last_rx = 0.0
        self._tokens = float(broker.config.limits.rate_burst)
        self._tokens_at = 0.0
        self.close_code: int | None = None
        # channel → the text of our message frames up to "data": for every channel this session
        # was already allowed to publish to (the grant never changes, so neither does that)
        self._routes: dict[str, str] = {}
        self._meta_json: str | None = None  # ',"fromMetadata":{…}' when the grant has metadata

    def __repr__(self) -> str:
        return f"<Session {self.sid} peer={self.peer_id!r}>"

    @property
    def is_open(self) -> bool:
        """True between the welcome and the start of closing."""
        return self._phase == _OPEN

    def data_to_send(self) -> bytes:
        """Bytes to write to this session's transport."""
        out = bytes(self.out)
        self.out.clear()
        return out

    # --- inputs -----------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the transport."""
        dec = self._dec
        if dec is None or self._phase == _CLOSED or not data:
            return
        self.last_rx = now
        for op, payload in dec.feed(data):
            if op == OP_TEXT:
                self._on_text(payload, now)
            elif op == OP_BINARY:
                self._on_binary(now)
            elif op == OP_CLOSE:
                self._on_close(payload[0], payload[1], now)
            elif op == OP_PING:
                if self._ws_open:
                    self.broker._queue(self, encode_frame(OP_PONG, payload))
            elif op == FAIL:
                self._on_failure(payload[0], payload[1], now)
            if self._phase == _CLOSED:
                break
        self.broker._settle(now)

    def connection_lost(self, now: float) -> None:
        """The transport ended (EOF, reset) without a closing handshake."""
        if self._phase != _CLOSED:
            self.broker._finish(self, 1006, "connection lost", now)

    def close(self, code: int, reason: str | None, now: float) -> None:
        """Start the closing handshake with ``code``; leave every channel at once."""
        if self._phase in (_CLOSING, _CLOSED):
            return
        was_open = self._phase == _OPEN
        self._phase = _CLOSING
        self.close_code = code
        if self._ws_open:
            self._send_close(code, reason or CLOSE_REASONS.get(code, ""))
        self.broker._leave_all(self, now)
        if was_open:
            self.broker._log("info", "disconnect", {"peer": self.peer_id, "code": code})
        self.broker._schedule(now + self.broker.config.limits.close_timeout, self, "close")

    # --- frames -----------------------------------------------------------------------

    def _send_close(self, code: int | None, reason: str) -> None:
        self._ws_open = False
        self.broker._queue(self, encode_frame(OP_CLOSE, close_payload(code, reason)))

    def _on_binary(self, now: float) -> None:
        if self._phase == _OPEN:
            self._reply(ErrorFrame("malformed_message", None, "binary frames are not supported"))

    def _on_failure(self, code: int, reason: str, now: float) -> None:
        """The client broke RFC 6455 (1002, 1007) or sent a message over the cap (1009)."""
        if code == 1009:
            self.close(1009, None, now)  # the decoder drains, so the closing handshake can end
            return
        if self._ws_open:
            self._send_close(code, reason)
        self.broker._finish(self, code, reason, now)

    def _on_text(self, chunk: str, now: float) -> None:
        if self._phase != _OPEN:
            return
        broker = self.broker
        limits = broker.config.limits
        if limits.rate_per_second is not None:
            elapsed = now - self._tokens_at
            self._tokens_at = now
            self._tokens = min(
                float(limits.rate_burst), self._tokens + elapsed * limits.rate_per_second
            )
            if self._tokens < 1.0:
                self.close(4011, None, now)
                return
            self._tokens -= 1.0
        if self._routes and broker._fast_publish(self, chunk):
            return
        try:
            frame = decode_client_frame(chunk)
        except FrameRejected as exc:
            self._reply(ErrorFrame(exc.code, exc.request_id, str(exc)))
            return
        broker._dispatch(self, frame, now)

    def _on_close(self, code: int | None, reason: str, now: float) -> None:
        if self._ws_open:
            self._send_close(code, reason)  # the echo (empty when the close was)
        self.broker._finish(self, code if code is not None else 1005, reason, now)

    def _reply(self, frame: Any) -> None:
        self.broker._queue(self, _ws_text(frame.encode()))


class Broker:
    """Channel registry, presence and routing of one app (see the module docstring)."""

    def __init__(self, config: ServerConfig, rng: RandomSource, log: LogFn | None = None) -> None:
        self.config = config
        self._rng = rng
        self._log_fn = log
        self._keys = {k.key: k for k in config.keys}
        self._signing = {k.kid: k for k in config.signing_keys}
        self._key_patterns: dict[str, tuple[re.Pattern[str], ...]] = {}
        all_patterns = [k.channel_patterns for k in config.keys]
        all_patterns += [k.channel_patterns for k in config.signing_keys]
        for patterns in all_patterns:
            for pattern in patterns:
                compile_pattern(pattern)  # fail fast on a bad configuration
        self.sessions: dict[int, Session] = {}
        self.channels: dict[str, _Channel] = {}
        self.peers: dict[str, list[Session]] = {}
        self._dirty: dict[Session, None] = {}
        self._timers: list[tuple[float, int, int, str]] = []
        self._seq = 0
        self._next_sid = 0
        self._connects: dict[str, deque[float]] = {}
        self._messages_sent = 0
        self._overflowed: list[Session] = []
        self._max_out = config.limits.max_outbound_buffer
        self.shutting_down = False

    # --- driver API -------------------------------------------------------------------

    def allow_connect(self, remote: str, now: float) -> bool:
        """Per-source-IP connect rate (HTTP 429 when False); always True when not configured."""
        limit = self.config.limits.connect_attempts_per_ip_per_minute
        if limit is None:
            return True
        window = self._connects.setdefault(remote, deque())
        while window and window[0] <= now - 60.0:
            window.popleft()
        if len(window) >= limit:
            return False
        window.append(now)
        return True

    def open_session(
        self,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        remote: str,
        now: float,
        trailing: bytes = b"",
    ) -> Session:
        """Accept a parsed ``GET /v1`` upgrade; authenticate; welcome or close with a 4xxx code.

        ``headers`` are the request's raw header pairs; ``trailing`` is any data the HTTP
        parser read past the request.
        """
        origin = None
        for name, value in headers:
            if name.lower() == b"origin":
                origin = value.decode("latin-1")
        self._next_sid += 1
        session = Session(self, self._next_sid, remote, origin)
        session.last_rx = now
        hs = session._handshake
        assert hs is not None
        hs.initiate_upgrade_connection(list(headers), target)
        for event in hs.events():
            if isinstance(event, Request):
                self._queue(session, hs.send(AcceptConnection()))
        if hs.connection is None:
            raise ValueError("not a WebSocket upgrade request")
        session._handshake = None  # wsproto's part ends here: frames go through the codec
        session._dec = FrameDecoder(client=False, max_message=self.config.limits.max_frame_bytes)
        session._ws_open = True
        self.sessions[session.sid] = session
        self._authenticate(session, target, now)
        if trailing and session._phase != _CLOSED:
            session.receive_data(trailing, now)
        return session

    def take_dirty(self) -> list[Session]:
        """Sessions with bytes to write or a transport to close since the last call."""
        dirty = list(self._dirty)
        self._dirty.clear()
        return dirty

    def get_timer(self) -> float | None:
        """The next deadline, or ``None``."""
        while self._timers:
            at, _, sid, kind = self._timers[0]
            if sid in self.sessions or kind == "shutdown":
                return at
            heapq.heappop(self._timers)
        return None

    def handle_timer(self, now: float) -> None:
        """Run every due deadline."""
        limits = self.config.limits
        while self._timers and self._timers[0][0] <= now:
            _, _, sid, kind = heapq.heappop(self._timers)
            if kind == "shutdown":
                # Everyone is leaving at once: no presence deltas, so peers that reconnect
                # to the next server instance keep their view of each other (§5.4).
                self._closing_all = True
                for each in list(self.sessions.values()):
                    each.close(1001, None, now)
                continue
            session = self.sessions.get(sid)
            if session is None:
                continue
            if kind == "close":
                self._finish(session, session.close_code or 1006, "close timeout", now)
            elif kind == "idle":
                due = session.last_rx + limits.idle_timeout
                if due <= now:
                    self._log("info", "idle timeout", {"peer": session.peer_id})
                    self._finish(session, 1006, "idle timeout", now)
                else:
                    self._schedule(due, session, "idle")
            elif kind == "ping" and session._phase == _OPEN and session._ws_open:
                self._queue(session, encode_frame(OP_PING, b""))
                self._schedule(now + limits.ping_interval, session, "ping")
            elif kind == "expiry" and session._phase == _OPEN:
                session.close(4002, None, now)
        self._settle(now)

    def shutdown(self, now: float) -> None:
        """Graceful shutdown: ``going_away`` to everyone now, 1001 closes after the grace."""
        self.shutting_down = True
        frame = _ws_text(GoingAwayFrame(1000).encode())
        for session in self.sessions.values():
            if session._phase == _OPEN:
                self._queue(session, frame)
        self._seq += 1
        heapq.heappush(
            self._timers, (now + self.config.limits.going_away_grace, self._seq, 0, "shutdown")
        )

    def kick(self, peer_id: str, now: float) -> int:
        """Close every connection of ``peer_id`` with 4020; return how many."""
        targets = list(self.peers.get(peer_id, ()))
        for session in targets:
            session.close(4020, None, now)
        return len(targets)

    def signing_key(self, kid: str, secret: str) -> SigningKey | None:
        """The enabled signing key matching a REST ``Bearer kid:secret``, else ``None``."""
        key = self._signing.get(kid)
        if key is None or not key.enabled:
            return None
        if not hmac.compare_digest(key.secret.encode(), secret.encode()):
            return None
        return key

    @property
    def connection_count(self) -> int:
        """Open (welcomed) connections."""
        return sum(1 for s in self.sessions.values() if s._phase == _OPEN)

    # --- internals: auth --------------------------------------------------------------

    def _authenticate(self, session: Session, target: str, now: float) -> None:
        query = parse_qs(urlsplit(target).query, keep_blank_values=True)
        keys, tokens = query.get("key", []), query.get("token", [])
        if len(keys) + len(tokens) != 1:
            self._reject(session, 4001, "credential missing or ambiguous", now)
            return
        try:
            grant = (
                self._grant_for_key(keys[0], session)
                if keys
                else self._grant_for_token(tokens[0], now)
            )
        except TokenRejected as exc:
            self._reject(session, exc.close_code, exc.reason, now)
            return
        if self.config.suspended:
            self._reject(session, 4012, "account suspended", now)
            return
        cap = self.config.limits.max_concurrent_connections
        if cap is not None and self.connection_count >= cap:
            self._reject(session, 4010, "over concurrent limit", now)
            return
        if self.shutting_down:
            self._reject(session, 1001, "going away", now)
            return
        session.grant = grant
        session.peer_id = grant.peer_id
        session._phase = _OPEN
        self.peers.setdefault(grant.peer_id, []).append(session)
        limits = self.config.limits
        welcome = WelcomeFrame(
            grant.peer_id,
            None if grant.expires_at is None else int(grant.expires_at),
            int(now),
            limits.max_message_size,
            grant.welcome_metadata,
        )
        self._queue(session, _ws_text(welcome.encode()))
        self._log("info", "connect", {"peer": grant.peer_id, "remote": session.remote})
        self._schedule(now + limits.idle_timeout, session, "idle")
        self._schedule(now + limits.ping_interval, session, "ping")
        if grant.expires_at is not None:
            self._schedule(max(now, grant.expires_at - 0.25), session, "expiry")

    def _reject(self, session: Session, code: int, reason: str, now: float) -> None:
        self._log(
            "warning",
            "connection refused",
            {"code": code, "reason": reason, "remote": session.remote},
        )
        session.close(code, CLOSE_REASONS.get(code, reason), now)

    def _ice_metadata(self, own: tuple[Mapping[str, Any], ...] | None) -> list[Any] | None:
        servers = own if own is not None else self.config.ice_servers
        return None if servers is None else [dict(s) for s in servers]

    def _grant_for_key(self, key: str, session: Session) -> _Grant:
        entry = self._keys.get(key)
        if entry is None or not entry.enabled:
            raise TokenRejected(4001, "unknown or disabled key")
        origin = session.origin
        if entry.allowed_origins and origin is not None and origin not in entry.allowed_origins:
            raise TokenRejected(4001, "origin not allowed")
        ice = self._ice_metadata(entry.ice_servers)
        return _Grant(
            peer_id=uuid4(self._rng),
            actions=frozenset(entry.actions),
            patterns=self._patterns(entry.key, entry.channel_patterns),
            key_patterns=None,
            peer_metadata=None,
            welcome_metadata=None if ice is None else {"iceServers": ice},
            expires_at=None,
        )

    def _grant_for_token(self, token: str, now: float) -> _Grant:
        secrets = {k.kid: k.secret for k in self.config.signing_keys if k.enabled}
        claims: TokenClaims = verify_hs256(token, secrets, now)
        key = self._signing[claims.kid]
        metadata = dict(claims.metadata) if claims.metadata is not None else None
        if metadata is None or "iceServers" not in metadata:
            ice = self._ice_metadata(key.ice_servers)
            if ice is not None:
                metadata = {**(metadata or {}), "iceServers": ice}
        return _Grant(
            peer_id=claims.sub,
            actions=claims.permissions & frozenset(key.actions),
            patterns=tuple(compile_pattern(p) for p in claims.channels),
            key_patterns=self._patterns("kid:" + key.kid, key.channel_patterns),
            peer_metadata=claims.peer_metadata,
            welcome_metadata=metadata,
            expires_at=claims.exp,
        )

    def _patterns(self, cache_key: str, patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
        cached = self._key_patterns.get(cache_key)
        if cached is None:
            cached = self._key_patterns[cache_key] = tuple(compile_pattern(p) for p in patterns)
        return cached

    # --- internals: routing -----------------------------------------------------------

    def _dispatch(self, session: Session, frame: Any, now: float) -> None:
        kind = type(frame)
        if kind is PublishFrame:
            self._publish(session, frame, now)
        elif kind is SendFrame:
            self._send(session, frame, now)
        elif kind is SubscribeFrame:
            self._subscribe(session, frame, now)
        elif kind is UnsubscribeFrame:
            self._unsubscribe(session, frame)
        elif kind is PingFrame:
            session._reply(PongFrame(frame.request_id))

    def _error(self, session: Session, code: str, rid: str | None, message: str) -> None:
        session._reply(ErrorFrame(code, rid, message))

    def _authorize_channel(
        self, session: Session, action: str, channel: str, rid: str | None, now: float
    ) -> bool:
        grant = session.grant
        assert grant is not None
        if action not in grant.actions:
            self._error(
                session, "action_not_permitted", rid, f"credential lacks the {action} permission"
            )
            return False
        if not grant.allows(channel):
            if self.config.close_on_unauthorized_channel:
                session.close(4003, None, now)
            else:
                self._error(
                    session, "channel_not_authorized", rid, "channel outside credential scope"
                )
            return False
        return True

    def _quota_ok(self, session: Session, rid: str | None) -> bool:
        quota = self.config.limits.message_quota
        if quota is None:
            return True
        if self._messages_sent >= quota:
            self._error(
                session, "over_message_quota", rid, "message quota exhausted for this period"
            )
            return False
        self._messages_sent += 1
        return True

    def _subscribe(self, session: Session, frame: SubscribeFrame, now: float) -> None:
        channel, rid = frame.channel, frame.request_id
        if not self._authorize_channel(session, "subscribe", channel, rid, now):
            return
        limit = self.config.limits.max_channels_per_connection
        if channel not in session.subs and len(session.subs) >= limit:
            self._error(session, "channel_limit_exceeded", rid, f"at most {limit} subscriptions")
            return
        grant = session.grant
        assert grant is not None
        assert session.peer_id is not None
        ch = self.channels.get(channel)
        if ch is None:
            ch = self.channels[channel] = _Channel(channel)
        session.subs[channel] = frame.include_sender_metadata
        is_new_member = False
        if session not in ch.sessions:
            member = ch.members.get(session.peer_id)
            if member is None:
                ch.members[session.peer_id] = [1, grant.peer_metadata]
                is_new_member = True
            else:
                member[0] += 1
        ch.sessions[session] = frame.include_sender_metadata
        if rid is not None:
            session._reply(AckFrame(rid))
        if "presence" in grant.actions:
            others = tuple(
                PresencePeer(pid, entry[1])
                for pid, entry in ch.members.items()
                if pid != session.peer_id
            )
            session._reply(PresenceFrame(channel, others, ()))
        if is_new_member:
            entry = PresencePeer(session.peer_id, grant.peer_metadata)
            self._presence_to_others(ch, session, PresenceFrame(channel, (entry,), ()))

    _closing_all = False

    def _presence_to_others(self, ch: _Channel, session: Session, frame: PresenceFrame) -> None:
        if self._closing_all:
            return
        data: bytes | None = None
        for other in ch.sessions:
            if (
                other is not session
                and other.grant is not None
                and "presence" in other.grant.actions
            ):
                if data is None:
                    data = _ws_text(frame.encode())
                self._queue(other, data)

    def _unsubscribe(self, session: Session, frame: UnsubscribeFrame) -> None:
        self._drop_subscription(session, frame.channel)
        if frame.request_id is not None:
            session._reply(AckFrame(frame.request_id))

    def _fast_publish(self, session: Session, text: str) -> bool:
        """A ``publish`` to a channel this session already published to, in the SDKs' layout.

        Same outcome as the general path (ack, then the fan-out; the channel's name and the
        grant were checked on the first publish), minus the decode/encode round trip of
        ``data`` and the frame objects. Returns False (nothing done) for anything else.
        """
        parts = split_publish(text)
        if parts is None:
            return False
        channel, data_json, rid, rid_json = parts
        prefix = session._routes.get(channel)
        if prefix is None or not 0 < len(rid) <= 128 or not rid.isascii():
            return False
        if self.config.limits.message_quota is not None:
            return False  # counted on the general path
        self._queue(session, _ws_text('{"type":"ack","requestId":' + rid_json + "}"))
        ch = self.channels.get(channel)
        if ch is None:
            return True
        plain: bytes | None = None
        stamped: bytes | None = None
        meta_json = session._meta_json
        dirty, cap, overflowed = self._dirty, self._max_out, self._overflowed
        for other, include in ch.sessions.items():
            if other is session or other._phase == _CLOSED:
                continue
            if include and meta_json is not None:
                if stamped is None:
                    stamped = _ws_text(prefix + data_json + meta_json + "}")
                data = stamped
            else:
                if plain is None:
                    plain = _ws_text(prefix + data_json + "}")
                data = plain
            out = other.out
            out += data
            dirty[other] = None
            if len(out) > cap:
                overflowed.append(other)
        return True

    def _publish(self, session: Session, frame: PublishFrame, now: float) -> None:
        channel, rid = frame.channel, frame.request_id
        if not self._authorize_channel(session, "publish", channel, rid, now):
            return
        routes = session._routes
        if channel not in routes:
            if len(routes) >= 1024:
                routes.clear()
            assert session.peer_id is not None
            routes[channel] = (
                '{"type":"message","channel":'
                + dumps(channel)
                + ',"from":'
                + dumps(session.peer_id)
                + ',"data":'
            )
            meta = session.grant.peer_metadata if session.grant is not None else None
            if meta is not None and session._meta_json is None:
                session._meta_json = ',"fromMetadata":' + dumps(meta)
        if frame.data is MISSING:
            self._error(session, "missing_data", rid, "publish needs data")
            return
        if not self._quota_ok(session, rid):
            return
        if rid is not None:
            session._reply(AckFrame(rid))
        ch = self.channels.get(channel)
        if ch is None:
            return
        assert session.peer_id is not None
        assert session.grant is not None
        plain: bytes | None = None
        stamped: bytes | None = None
        meta = session.grant.peer_metadata
        for other, include in ch.sessions.items():
            if other is session:
                continue
            if include and meta is not None:
                if stamped is None:
                    stamped = _ws_text(
                        MessageFrame(channel, session.peer_id, frame.data, meta).encode()
                    )
                self._queue(other, stamped)
            else:
                if plain is None:
                    plain = _ws_text(MessageFrame(channel, session.peer_id, frame.data).encode())
                self._queue(other, plain)

    def _send(self, session: Session, frame: SendFrame, now: float) -> None:
        rid = frame.request_id
        grant = session.grant
        assert grant is not None
        assert session.peer_id is not None
        if "send" not in grant.actions:
            self._error(
                session, "action_not_permitted", rid, "credential lacks the send permission"
            )
            return
        if frame.data is MISSING:
            self._error(session, "missing_data", rid, "send needs data")
            return
        targets = [
            s for s in self.peers.get(frame.to, ()) if s is not session and s._phase == _OPEN
        ]
        if not targets:
            self._error(session, "peer_not_found", rid, "no such peer online")
            return
        if not self._quota_ok(session, rid):
            return
        if rid is not None:
            session._reply(AckFrame(rid))
        out = _ws_text(DirectFrame(session.peer_id, frame.data, grant.peer_metadata).encode())
        for target in targets:
            self._queue(target, out)

    def _drop_subscription(self, session: Session, channel: str) -> None:
        if session.subs.pop(channel, None) is None:
            return
        ch = self.channels.get(channel)
        if ch is None:
            return
        if ch.sessions.pop(session, None) is None:
            return
        pid = session.peer_id
        assert pid is not None
        entry = ch.members[pid]
        entry[0] -= 1
        if entry[0] == 0:
            del ch.members[pid]
            self._presence_to_others(
                ch, session, PresenceFrame(channel, (), (PresencePeer(pid, entry[1]),))
            )
        if not ch.sessions:
            del self.channels[channel]

    def _leave_all(self, session: Session, now: float) -> None:
        for channel in list(session.subs):
            self._drop_subscription(session, channel)
        if session.peer_id is not None:
            others = self.peers.get(session.peer_id)
            if others is not None and session in others:
                others.remove(session)
                if not others:
                    del self.peers[session.peer_id]

    def _finish(self, session: Session, code: int, reason: str, now: float) -> None:
        """The transport is done: leave everything, forget the session, close the transport."""
        was_open = session._phase == _OPEN
        if session._phase != _CLOSED:
            self._leave_all(session, now)
            session._phase = _CLOSED
        if was_open:
            self._log("info", "disconnect", {"peer": session.peer_id, "code": code})
        self.sessions.pop(session.sid, None)
        session.close_transport = True
        self._dirty[session] = None

    # --- internals: plumbing ----------------------------------------------------------

    def _queue(self, session: Session, data: bytes) -> None:
        if session._phase == _CLOSED:
            return
        session.out += data
        self._dirty[session] = None
        if len(session.out) > self._max_out:
            self._overflowed.append(session)

    def _settle(self, now: float) -> None:
        """Drop the sessions whose outbound buffer overflowed (slow consumers), after routing."""
        while self._overflowed:
            session = self._overflowed.pop()
            if session._phase != _CLOSED:
                self._log("warning", "slow consumer dropped", {"peer": session.peer_id})
                session.out.clear()
                self._finish(session, 1008, "slow consumer", now)

    def _schedule(self, at: float, session: Session, kind: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, session.sid, kind))

    def _log(self, level: str, message: str, ctx: Mapping[str, Any]) -> None:
        if self._log_fn is not None:
            self._log_fn(level, message, ctx)
