"""The client connection machine: one ``SignallingClient`` session, across reconnects, no I/O.

The machine is driven by three kinds of input, each taking ``now`` (seconds, any monotonic
clock): API calls (``connect``, ``subscribe``, ``publish``, ``send``, ``close``…), transport
notifications (``credential_resolved``, ``transport_opened``, ``receive_data``,
``connection_lost``…) and timer expiry (``handle_timer``). It answers with bytes to write
(``data_to_send()``), the next deadline (``get_timer()``) and a queue of events
(``next_event()``): public :class:`~metered_realtime.core.events.AppEvent` objects for the
application, and :class:`~metered_realtime.core.events.Action` objects for the driver.

States (public, ``state``)::

    idle ──connect()──▶ connecting ──welcome──▶ connected ◀──welcome── reconnecting
                           │                      │   ▲                   │   ▲
                first attempt fails         socket lost, retry ok ────────┘   │
                           ▼                      │                attempt fails, retry ok
                         closed ◀── terminal code / budget exhausted / close() ──┘

Per socket the driver sees this sequence of actions: (``CredentialNeeded`` →
``credential_resolved``) → ``OpenTransport`` → ``transport_opened`` → bytes both ways →
``CloseTransport`` (or ``connection_lost`` from the driver's side). After ``CloseTransport``
or ``connection_lost`` the driver must stop feeding that socket's bytes.

Timers owned here: opening handshake (10 s), welcome (10 s), per-request ack (15 s),
keepalive ping (``max(1, inactivity/3)`` after the last inbound text frame), inactivity
watchdog, close flush (1 s), reconnect backoff and the 2 s resubscribe retries.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import ProtocolError as WsProtocolError

from metered_realtime.core.errors import (
    AckTimeoutError,
    DisconnectedError,
    LocalProtocolError,
    MalformedFrameError,
    NotConnectedError,
    OversizedPayloadError,
    ServerRequestError,
    SignallingConnectError,
)
from metered_realtime.core.events import (
    Action,
    AppEvent,
    CloseTransport,
    Connected,
    ConnectFailed,
    CredentialNeeded,
    Direct,
    Disconnected,
    FrameDropped,
    GoingAway,
    Message,
    OpenTransport,
    Presence,
    ReconnectScheduled,
    RequestCompleted,
    RequestFailed,
    ServerError,
    StateChange,
    TokenProviderError,
)
from metered_realtime.core.frames import (
    AckFrame,
    DirectFrame,
    ErrorFrame,
    GoingAwayFrame,
    MessageFrame,
    PingFrame,
    PresenceFrame,
    PublishFrame,
    SendFrame,
    SubscribeFrame,
    UnsubscribeFrame,
    WelcomeFrame,
    decode_server_frame,
    dumps,
)
from metered_realtime.core.frames import decode_json as _decode_json
from metered_realtime.core.reconnect import TERMINAL_CLOSE_CODES, Backoff, ReconnectOptions
from metered_realtime.core.validation import (
    DEFAULT_URL,
    RandomSource,
    channel_problem,
    extract_ice_servers,
    peer_id_problem,
    split_base_url,
    uuid4,
)
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
    masked_text,
)

__all__ = ["ClientConfig", "ClientConnection", "ClientEvent"]

ClientEvent = AppEvent | Action

DEFAULT_MAX_MESSAGE_SIZE = 65_536
TOKEN_FAILURE_THRESHOLD = 3
_END_OF_HEAD = re.compile(rb"\n\r?\n")  # where h11 ends a response head
_ACK_HEAD = '{"type":"ack","requestId":"'
_MESSAGE_HEAD = '{"type":"message",'


@dataclass(frozen=True)
class ClientConfig:
    """Everything the machine needs to know up front."""

    url: str = DEFAULT_URL
    """Base URL (``wss://host[:port]``; ``ws:`` only to loopback names). ``/v1`` is added."""
    api_key: str | None = field(default=None, repr=False)
    """Publishable key, or ``None`` when a token provider is used."""
    use_token_provider: bool = False
    """Ask the driver for a token (``CredentialNeeded``) before every attempt."""
    reconnect: ReconnectOptions | None = field(default_factory=ReconnectOptions)
    """Backoff options; ``None`` disables automatic reconnects."""
    inactivity_timeout: float = 60.0
    """Watchdog; keepalive pings every ``max(1, t/3)``; ``<= 0`` disables both."""
    auto_resubscribe: bool = True
    """Replay tracked subscriptions after a reconnect."""
    ack_timeout: float = 15.0
    welcome_timeout: float = 10.0
    handshake_timeout: float = 10.0
    close_timeout: float = 1.0
    max_inbound_message: int = 1_048_576
    resubscribe_retry_delay: float = 2.0
    resubscribe_retries: int = 3

    def __post_init__(self) -> None:
        split_base_url(self.url)
        if (self.api_key is None) == (not self.use_token_provider):
            raise ValueError("exactly one of api_key and token_provider is required")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string")
        for name in ("inactivity_timeout", "ack_timeout", "welcome_timeout", "handshake_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"{name} must be a number")
        if self.reconnect is not None and not isinstance(self.reconnect, ReconnectOptions):
            raise TypeError("reconnect must be ReconnectOptions or None")


class _Pending:
    __slots__ = ("channel", "deadline", "internal")

    def __init__(self, deadline: float, internal: bool, channel: str | None) -> None:
        self.deadline = deadline
        self.internal = internal  # a subscription replay, not awaited by anyone
        self.channel = channel


_NO_SOCKET, _RESOLVING, _OPENING, _HANDSHAKE, _OPEN, _CLOSING = range(6)


class ClientConnection:
    """Sans-IO client of the Metered Realtime signalling protocol (see the module docstring)."""

    def __init__(
        self, config: ClientConfig, rng: RandomSource, *, mask_rng: RandomSource | None = None
    ) -> None:
        """``rng`` draws request ids and backoff jitter; ``mask_rng`` the WebSocket masking
        keys (default ``rng``). Give it a strong source (``random.SystemRandom()``): RFC 6455
        wants masking keys an application on the same host cannot predict."""
        self.config = config
        self._rng = rng
        self._mask_rng = rng if mask_rng is None else mask_rng
        _, host, port, secure = split_base_url(config.url)
        self._host, self._port, self._secure = host, port, secure
        self._base = config.url.rstrip("/")
        self._events: deque[ClientEvent] = deque()
        self._out = bytearray()
        self._state = "idle"
        self._phase = _NO_SOCKET
        self._ws: WSConnection | None = None  # wsproto, for the opening handshake only
        self._handshake_bytes = bytearray()  # the response so far, to find where frames start
        self._dec: FrameDecoder | None = None  # frames, once the upgrade is accepted
        self._ws_open = False  # upgraded, and no close frame sent or received yet
        self._credential: tuple[str, str] | None = None
        self._opened = False  # the current socket completed its opening handshake
        self._welcomed = False  # the current socket got its welcome
        self._welcomed_since_connect = False
        self._pending: dict[str, _Pending] = {}
        self._tracked: dict[str, bool] = {}  # channel → include_sender_metadata
        self._resub_used: dict[str, int] = {}
        self._resub_at: dict[str, float] = {}
        self._backoff = Backoff(config.reconnect or ReconnectOptions(), rng)
        self._last_close: tuple[int, str] | None = None
        self._token_failures = 0
        # deadlines (None = not armed)
        self._handshake_at: float | None = None
        self._welcome_at: float | None = None
        self._close_at: float | None = None
        self._reconnect_at: float | None = None
        self._last_rx = 0.0
        self._last_ping = 0.0
        interval = config.inactivity_timeout
        self._watchdog = interval if interval > 0 else None
        self._heartbeat = max(1.0, interval / 3) if interval > 0 else None
        self.peer_id: str | None = None
        """Peer id from the latest welcome."""
        self.max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        """The advertised per-message cap (65,536 before the first welcome)."""
        self._publish_heads: dict[str, str] = {}  # valid channel → '{"type":"publish",…"data":'

    # --- outputs ----------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``idle``, ``connecting``, ``connected``, ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def subscriptions(self) -> dict[str, bool]:
        """Tracked channels (replayed on reconnect) → their ``include_sender_metadata``."""
        return dict(self._tracked)

    @property
    def pending_requests(self) -> int:
        """How many requests wait for their reply."""
        return len(self._pending)

    def next_event(self) -> ClientEvent | None:
        """The next queued event or action, or ``None``."""
        return self._events.popleft() if self._events else None

    @property
    def bytes_to_send(self) -> int:
        """How many bytes :meth:`data_to_send` would return."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport (and forget)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called, or ``None``."""
        # called after every input by drivers: plain comparisons, no allocation
        best = self._handshake_at
        at = self._welcome_at
        if at is not None and (best is None or at < best):
            best = at
        at = self._close_at
        if at is not None and (best is None or at < best):
            best = at
        at = self._reconnect_at
        if at is not None and (best is None or at < best):
            best = at
        if self._pending:  # deadlines are now + ack_timeout: the oldest request is first
            for pending in self._pending.values():
                at = pending.deadline
                if best is None or at < best:
                    best = at
                break
        if self._resub_at:
            at = min(self._resub_at.values())
            if best is None or at < best:
                best = at
        if self._phase == _OPEN:
            if self._watchdog is not None:
                at = self._last_rx + self._watchdog
                if best is None or at < best:
                    best = at
            if self._heartbeat is not None and self._welcomed:
                last = self._last_rx if self._last_rx > self._last_ping else self._last_ping
                at = last + self._heartbeat
                if best is None or at < best:
                    best = at
        return best

    def _watchdog_at(self) -> float | None:
        if self._watchdog is None or self._phase != _OPEN:
            return None
        return self._last_rx + self._watchdog

    def _heartbeat_at(self) -> float | None:
        if self._heartbeat is None or self._phase != _OPEN or not self._welcomed:
            return None
        return max(self._last_rx, self._last_ping) + self._heartbeat

    # --- API calls --------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start the first attempt. Allowed from ``idle`` and ``closed``."""
        if self._state not in ("idle", "closed"):
            raise LocalProtocolError(f"connect() is not allowed in state {self._state}")
        if self._phase != _NO_SOCKET:  # a close() still flushing: drop that socket now
            self._drop_socket()
        self._welcomed_since_connect = False
        self._backoff.reset()
        self._token_failures = 0
        self._last_close = None
        self._set_state("connecting")
        self._begin_attempt(0, now)

    def close(self, now: float, code: int = 1000, reason: str = "client requested close") -> None:
        """Close for good: fail pending requests, send a close frame, wait ≤ 1 s for the echo.

        No ``Disconnected`` event follows an explicit close.
        """
        if not isinstance(code, int) or not (code == 1000 or 3000 <= code <= 4999):
            raise ValueError("close code must be 1000 or within 3000-4999")
        if not isinstance(reason, str) or len(reason.encode("utf-8")) > 123:
            raise ValueError("close reason must be a string of at most 123 UTF-8 bytes")
        self._reconnect_at = None
        self._resub_at.clear()
        self._tracked.clear()  # a later connect() is a new session, not a reconnect
        self._fail_pending()
        if self._state not in ("idle", "closed"):
            self._set_state("closed")
        if self._ws_open:
            self._send_close(code, reason)
            self._phase = _CLOSING
            self._handshake_at = self._welcome_at = None
            self._close_at = now + self.config.close_timeout
        elif self._phase != _NO_SOCKET:
            self._drop_socket()

    def subscribe(self, channel: str, now: float, *, include_sender_metadata: bool = False) -> str:
        """Send ``subscribe``; return its request id. Tracks the channel for replays first."""
        problem = channel_problem(channel)
        if problem:
            raise ValueError(problem)
        was_tracked = channel in self._tracked
        self._tracked[channel] = bool(include_sender_metadata)
        if not self._can_send():
            if not was_tracked:
                del self._tracked[channel]
            raise NotConnectedError()
        frame = SubscribeFrame(channel, self._new_id(), bool(include_sender_metadata))
        return self._request(frame, now, channel=channel)

    def unsubscribe(self, channel: str, now: float) -> str:
        """Forget ``channel`` (no replay), then send ``unsubscribe``; return the request id."""
        problem = channel_problem(channel)
        if problem:
            raise ValueError(problem)
        self._tracked.pop(channel, None)
        self._resub_at.pop(channel, None)
        if not self._can_send():
            raise NotConnectedError()
        return self._request(UnsubscribeFrame(channel, self._new_id()), now)

    def publish(self, channel: str, data: Any, now: float) -> str:
        """Send ``publish``; return its request id."""
        # exactly PublishFrame(channel, data, rid).encode() and _request(), inlined: this is
        # the one call an application makes thousands of times a second
        head = self._publish_heads.get(channel) if type(channel) is str else None
        if head is None:
            problem = channel_problem(channel)
            if problem:
                raise ValueError(problem)
            if len(self._publish_heads) >= 256:
                self._publish_heads.clear()
            head = self._publish_heads[channel] = (
                '{"type":"publish","channel":' + dumps(channel) + ',"data":'
            )
        rid = uuid4(self._rng)  # hex digits and dashes: its JSON text is '"' + rid + '"'
        text = head + dumps(data) + ',"requestId":"' + rid + '"}'
        if len(text) > self.max_message_size:
            raise OversizedPayloadError(len(text), self.max_message_size)
        if self._state != "connected" or self._phase != _OPEN:
            raise NotConnectedError()
        self._out += masked_text(text, self._mask_rng)
        self._pending[rid] = _Pending(now + self.config.ack_timeout, False, None)
        return rid

    def send(self, to: str, data: Any, now: float) -> str:
        """Send a directed message to peer ``to``; return its request id."""
        problem = peer_id_problem(to)
        if problem:
            raise ValueError(problem)
        return self._request(SendFrame(to, data, self._new_id()), now, check_size=True)

    # --- transport notifications ------------------------------------------------------

    def credential_resolved(self, credential: object, now: float) -> None:
        """The token provider returned ``credential``; open the transport next."""
        if self._phase != _RESOLVING:
            return
        if not isinstance(credential, str) or not credential:
            self.credential_failed(TypeError("token provider must return a non-empty string"), now)
            return
        self._token_failures = 0
        self._credential = ("token", credential)
        self._open_transport()

    def credential_failed(self, error: BaseException, now: float) -> None:
        """The token provider raised, timed out or returned garbage."""
        if self._phase != _RESOLVING:
            return
        self._phase = _NO_SOCKET
        if not self._welcomed_since_connect:
            self._set_state("closed")
            self._emit(ConnectFailed(error))
            return
        self._token_failures += 1
        if self._token_failures >= TOKEN_FAILURE_THRESHOLD:
            self._emit(TokenProviderError(self._token_failures, error))
        code = self._last_close[0] if self._last_close else 1006
        self._after_loss(code, "token provider failed", now, opened=False)

    def transport_opened(self, now: float) -> None:
        """The TCP (and TLS) connection is up: start the opening handshake."""
        if self._phase != _OPENING:
            if self._phase == _NO_SOCKET:  # closed meanwhile
                self._emit(CloseTransport())
            return
        assert self._credential is not None
        name, value = self._credential
        target = f"/v1?{name}={quote(value, safe='-_.~')}"
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = 443 if self._secure else 80
        if self._port != default_port:
            host = f"{host}:{self._port}"
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._handshake_bytes.clear()
        self._out += self._ws.send(Request(host=host, target=target))
        self._phase = _HANDSHAKE
        self._handshake_at = now + self.config.handshake_timeout

    def transport_failed(self, now: float, reason: str = "connect failed") -> None:
        """Opening the transport failed (DNS, refused, TLS…)."""
        if self._phase != _OPENING:
            return
        self._phase = _NO_SOCKET
        self._socket_lost(1006, reason, now)

    def connection_lost(self, now: float) -> None:
        """The transport ended (EOF, reset) without the core asking for it."""
        if self._phase in (_NO_SOCKET, _RESOLVING, _OPENING):
            return
        closing = self._phase == _CLOSING
        self._reset_socket()
        if not closing:
            self._socket_lost(1006, "connection lost", now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the transport."""
        dec = self._dec
        if dec is not None:
            if data:
                self._receive_frames(dec, data, now)
            return
        if self._ws is None or self._phase != _HANDSHAKE or not data:
            return
        ws = self._ws
        self._handshake_bytes += data
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    head = _END_OF_HEAD.search(self._handshake_bytes)
                    assert head is not None  # h11 has just parsed a whole response head
                    trailing = bytes(self._handshake_bytes[head.end() :])
                    self._handshake_bytes.clear()
                    self._ws = None
                    self._phase = _OPEN
                    self._opened = True
                    self._handshake_at = None
                    self._welcome_at = now + self.config.welcome_timeout
                    self._last_rx = now
                    self._ws_open = True
                    self._dec = dec = FrameDecoder(
                        client=True, max_message=self.config.max_inbound_message
                    )
                    if trailing:
                        self._receive_frames(dec, trailing, now)
                    return
                if isinstance(event, RejectConnection):
                    self._reset_socket()
                    self._emit(CloseTransport())
                    self._socket_lost(event.status_code, "handshake rejected", now)
                    return
        except WsProtocolError:
            self._reset_socket()
            self._emit(CloseTransport())
            self._socket_lost(1002, "protocol error", now)

    def _receive_frames(self, dec: FrameDecoder, data: bytes, now: float) -> None:
        for op, payload in dec.feed(data):
            if op == OP_TEXT:
                self._on_text(payload, now)
            elif op == OP_CLOSE:
                self._on_close_frame(payload[0], payload[1], now)
            elif op == OP_PING:
                if self._ws_open:
                    self._out += encode_frame(OP_PONG, payload, self._mask_rng)
            elif op == OP_BINARY:
                self._emit(FrameDropped("binary_frame", "binary frames are not used"))
            elif op == FAIL:
                self._on_protocol_failure(payload[0], payload[1], now)
            if self._dec is not dec:  # the socket was dropped while handling an event
                return

    # --- timers -----------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Run every deadline that is due at ``now``."""
        if self._close_at is not None and now >= self._close_at:
            self._close_at = None
            self._drop_socket()
        if self._handshake_at is not None and now >= self._handshake_at:
            self._reset_socket()
            self._emit(CloseTransport())
            self._socket_lost(1006, "opening handshake timed out", now)
        if self._welcome_at is not None and now >= self._welcome_at:
            self._local_close(1000, "no welcome", now)
        at = self._watchdog_at()
        if at is not None and now >= at:
            self._local_close(4000, "inactivity", now)
        at = self._heartbeat_at()
        if at is not None and now >= at:
            self._last_ping = now
            self._write(PingFrame().encode())
        while self._pending:
            rid, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                break
            del self._pending[rid]
            if pending.internal:
                self._resubscribe_failed(pending.channel, now)
            else:
                self._emit(RequestFailed(rid, AckTimeoutError(rid, self.config.ack_timeout)))
        for channel, at in list(self._resub_at.items()):
            if now >= at:
                del self._resub_at[channel]
                if channel in self._tracked and self._can_send():
                    self._replay(channel, now)
        if self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect_at = None
            self._begin_attempt(self._backoff.attempts, now)

    # --- internals: sending -----------------------------------------------------------

    def _can_send(self) -> bool:
        return self._state == "connected" and self._phase == _OPEN

    def _write(self, text: str) -> None:
        assert self._ws_open
        self._out += masked_text(text, self._mask_rng)

    def _send_close(self, code: int, reason: str) -> None:
        self._ws_open = False
        self._out += encode_frame(OP_CLOSE, close_payload(code, reason), self._mask_rng)

    def _new_id(self) -> str:
        return uuid4(self._rng)

    def _request(
        self,
        frame: SubscribeFrame | UnsubscribeFrame | PublishFrame | SendFrame,
        now: float,
        *,
        channel: str | None = None,
        internal: bool = False,
        check_size: bool = False,
    ) -> str:
        text = frame.encode()  # TypeError / ValueError for data that is not JSON
        if check_size and len(text) > self.max_message_size:
            raise OversizedPayloadError(len(text), self.max_message_size)
        if not self._can_send():
            raise NotConnectedError()
        rid = frame.request_id
        assert rid is not None
        self._write(text)
        self._pending[rid] = _Pending(now + self.config.ack_timeout, internal, channel)
        return rid

    def _replay(self, channel: str, now: float) -> None:
        frame = SubscribeFrame(channel, self._new_id(), self._tracked[channel])
        self._request(frame, now, channel=channel, internal=True)

    def _resubscribe_failed(self, channel: str | None, now: float) -> None:
        if channel is None or channel not in self._tracked:
            return
        used = self._resub_used.get(channel, 0)
        if used < self.config.resubscribe_retries:
            self._resub_used[channel] = used + 1
            self._resub_at[channel] = now + self.config.resubscribe_retry_delay

    # --- internals: receiving ---------------------------------------------------------

    def _on_text(self, chunk: str, now: float) -> None:
        if self._phase == _CLOSING:
            return  # after close() the session is over (§2.7): a late welcome must not revive it
        self._last_rx = now
        if self._welcomed:
            # fast paths for the two frames that carry the traffic; anything unusual about
            # them (escapes, extra members, bad members) takes the general path below
            if chunk.startswith(_ACK_HEAD) and chunk.endswith('"}'):
                rid = chunk[27:-2]
                if '"' not in rid and "\\" not in rid and rid.isprintable():
                    pending = self._pending.pop(rid, None)
                    if pending is not None and not pending.internal:
                        self._emit(RequestCompleted(rid))
                    return
            elif chunk.startswith(_MESSAGE_HEAD):
                message = _message_event(chunk)
                if message is not None:
                    self._emit(message)
                    return
        try:
            frame = decode_server_frame(chunk)
        except MalformedFrameError as exc:
            self._emit(FrameDropped(exc.code, str(exc), _peek_type(chunk)))
            return
        if not self._welcomed:
            if type(frame) is WelcomeFrame:
                self._on_welcome(frame, now)
            else:
                self._emit(FrameDropped("before_welcome", "frame before welcome", _type_of(frame)))
            return
        kind = type(frame)
        if kind is MessageFrame:
            assert isinstance(frame, MessageFrame)
            self._emit(Message(frame.channel, frame.sender, frame.data, frame.from_metadata))
        elif kind is AckFrame:
            assert isinstance(frame, AckFrame)
            pending = self._pending.pop(frame.request_id, None)
            if pending is not None and not pending.internal:
                self._emit(RequestCompleted(frame.request_id))
        elif kind is DirectFrame:
            assert isinstance(frame, DirectFrame)
            self._emit(Direct(frame.sender, frame.data, frame.from_metadata))
        elif kind is PresenceFrame:
            assert isinstance(frame, PresenceFrame)
            self._emit(Presence(frame.channel, frame.joined, frame.left))
        elif kind is ErrorFrame:
            assert isinstance(frame, ErrorFrame)
            self._on_error(frame, now)
        elif kind is GoingAwayFrame:
            assert isinstance(frame, GoingAwayFrame)
            self._emit(GoingAway(frame.retry_after_ms))
        elif kind is WelcomeFrame:
            self._emit(FrameDropped("duplicate_welcome", "second welcome ignored", "welcome"))

    def _on_error(self, frame: ErrorFrame, now: float) -> None:
        rid = frame.request_id
        pending = self._pending.pop(rid, None) if rid is not None else None
        if pending is None:
            if frame.code == "unknown_type" and rid is None:
                return  # ping compatibility with old servers (§2.5.1)
            self._emit(ServerError(frame.code, frame.message, rid))
        elif pending.internal:
            self._resubscribe_failed(pending.channel, now)
        else:
            assert rid is not None
            self._emit(RequestFailed(rid, ServerRequestError(frame.code, rid, frame.message)))

    def _on_welcome(self, frame: WelcomeFrame, now: float) -> None:
        self._welcomed = True
        self._welcome_at = None
        is_reconnect = self._welcomed_since_connect
        self._welcomed_since_connect = True
        self._backoff.reset()
        self._last_close = None
        self._resub_used.clear()
        self.peer_id = frame.peer_id
        self.max_message_size = frame.max_message_size
        self._set_state("connected")
        self._emit(
            Connected(
                peer_id=frame.peer_id,
                server_time=int(frame.server_time),
                expires_at=None if frame.expires_at is None else int(frame.expires_at),
                is_reconnect=is_reconnect,
                max_message_size=frame.max_message_size,
                ice_servers=extract_ice_servers(frame.metadata),
            )
        )
        if is_reconnect and self.config.auto_resubscribe and self._can_send():
            for channel in list(self._tracked):
                self._replay(channel, now)

    def _on_close_frame(self, code: int | None, reason: str, now: float) -> None:
        closing = self._phase == _CLOSING
        if self._ws_open:
            self._send_close(code if code is not None else 1000, reason)
        self._reset_socket()
        self._emit(CloseTransport())
        if not closing:
            self._socket_lost(int(code) if code is not None else 1005, reason, now)

    # --- internals: socket life -------------------------------------------------------

    def _begin_attempt(self, attempt: int, now: float) -> None:
        if self.config.use_token_provider:
            self._phase = _RESOLVING
            self._emit(CredentialNeeded(attempt))
        else:
            assert self.config.api_key is not None
            self._credential = ("key", self.config.api_key)
            self._open_transport()

    def _open_transport(self) -> None:
        self._phase = _OPENING
        self._opened = self._welcomed = False
        self._emit(OpenTransport(self._host, self._port, self._secure))

    def _reset_socket(self) -> None:
        self._ws = None
        self._dec = None
        self._ws_open = False
        self._handshake_bytes.clear()
        self._phase = _NO_SOCKET
        self._handshake_at = self._welcome_at = self._close_at = None

    def _drop_socket(self) -> None:
        self._reset_socket()
        self._emit(CloseTransport())

    def _local_close(self, code: int, reason: str, now: float) -> None:
        """The client gives up on the socket (watchdog, welcome timeout, cap) and moves on."""
        if self._ws_open:
            self._send_close(code, reason)
        self._reset_socket()
        self._emit(CloseTransport())
        self._socket_lost(code, reason, now)

    def _on_protocol_failure(self, code: int, reason: str, now: float) -> None:
        """The server broke RFC 6455 (1002, 1007) or sent a message over the cap (1009)."""
        if self._phase == _CLOSING:
            self._drop_socket()  # close() is already under way; nothing more to learn
            return
        self._local_close(code, "frame exceeded client cap" if code == 1009 else reason, now)

    def _socket_lost(self, code: int, reason: str, now: float) -> None:
        opened = self._opened
        self._opened = self._welcomed = False
        self._fail_pending()
        self._resub_at.clear()
        if self._state == "closed":
            return
        if not self._welcomed_since_connect:
            self._set_state("closed")
            self._emit(ConnectFailed(SignallingConnectError(code, reason)))
            return
        self._last_close = (code, reason)
        self._backoff.note_close(code)  # only a real close sets the 4010 floor (one delay, §4.3)
        self._after_loss(code, reason, now, opened=opened)

    def _after_loss(self, code: int, reason: str, now: float, *, opened: bool) -> None:
        will = (
            self.config.reconnect is not None
            and code not in TERMINAL_CLOSE_CODES
            and not self._backoff.exhausted()
        )
        self._set_state("reconnecting" if will else "closed")
        if opened or not will:
            self._emit(Disconnected(code, reason, will))
        if will:
            delay = self._backoff.next_delay()
            self._reconnect_at = now + delay
            self._emit(ReconnectScheduled(self._backoff.attempts, delay, code))

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for rid, record in pending.items():
            if not record.internal:
                self._emit(RequestFailed(rid, DisconnectedError()))

    def _set_state(self, to: str) -> None:
        if to != self._state:
            before, self._state = self._state, to
            self._emit(StateChange(before, to))

    def _emit(self, event: ClientEvent) -> None:
        self._events.append(event)


def _message_event(text: str) -> Message | None:
    """The ``Message`` of a well-formed ``message`` frame, else ``None`` (not an error)."""
    try:
        obj = _decode_json(text)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict or obj.get("type") != "message":
        return None
    channel, sender = obj.get("channel"), obj.get("from")
    if type(channel) is not str or type(sender) is not str or "data" not in obj:
        return None
    meta = obj.get("fromMetadata")
    return Message(channel, sender, obj["data"], meta if type(meta) is dict else None)


def _type_of(frame: object) -> str:
    return type(frame).__name__.removesuffix("Frame").lower()


def _peek_type(text: str) -> str | None:
    """The frame's ``type`` if it is a short plain string (for logs; never the frame itself)."""
    marker = '"type":"'
    i = text.find(marker)
    if i < 0:
        return None
    j = text.find('"', i + len(marker))
    value = text[i + len(marker) : j] if j > 0 else ""
    return value if 0 < len(value) <= 32 and value.isidentifier() else None
