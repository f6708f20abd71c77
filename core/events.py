"""What the client core hands back from ``next_event()``.

Two families, both frozen dataclasses:

* :class:`AppEvent` subclasses are the public events of ``SignallingClient`` (``Connected``,
  ``Message``…); an adapter emits them to the application unchanged.
* :class:`Action` subclasses are instructions for the driver: open or close the transport,
  resolve a credential, resolve an awaited request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metered_realtime.core.validation import IceServerConfig

__all__ = [
    "Action",
    "AppEvent",
    "CloseTransport",
    "ConnectFailed",
    "Connected",
    "CredentialNeeded",
    "Direct",
    "Disconnected",
    "FrameDropped",
    "GoingAway",
    "Message",
    "OpenTransport",
    "Presence",
    "PresencePeer",
    "ReconnectScheduled",
    "RequestCompleted",
    "RequestFailed",
    "ServerError",
    "StateChange",
    "TokenProviderError",
]


class AppEvent:
    """Base of the public events an emitter surfaces to application handlers."""

    __slots__ = ()


class Action:
    """Base of the instructions the core gives its driver."""

    __slots__ = ()


# --- public events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PresencePeer:
    """One entry of a presence frame."""

    peer_id: str
    """The member's peer id."""
    metadata: dict[str, Any] | None = None
    """The member's ``peerMetadata`` (JWT path only), else ``None``."""


@dataclass(frozen=True, slots=True)
class Connected(AppEvent):
    """A valid ``welcome`` arrived."""

    peer_id: str
    """This connection's peer id."""
    server_time: int
    """Server clock at welcome, Unix seconds (truncated)."""
    expires_at: int | None
    """Token expiry (Unix seconds) or ``None`` for publishable keys."""
    is_reconnect: bool
    """True when a welcome had already been received since the last explicit ``connect()``."""
    max_message_size: int
    """The server's advertised per-message cap in bytes."""
    ice_servers: tuple[IceServerConfig, ...] | None
    """ICE servers from ``welcome.metadata``; ``None`` when absent or invalid."""


@dataclass(frozen=True, slots=True)
class Disconnected(AppEvent):
    """The socket of an established session closed."""

    code: int
    """WebSocket close code (1006 when the transport dropped without a close frame)."""
    reason: str
    """Close reason text (informational; never branch on it)."""
    will_reconnect: bool
    """Whether the client will try again on its own."""


@dataclass(frozen=True, slots=True)
class StateChange(AppEvent):
    """The emitter's state changed."""

    from_: str
    """Previous state."""
    to: str
    """New state."""


@dataclass(frozen=True, slots=True)
class Message(AppEvent):
    """A channel broadcast (``message`` frame)."""

    channel: str
    """The channel it was published to."""
    sender_peer_id: str
    """The publisher's peer id, stamped by the server."""
    data: Any
    """The published JSON value, ``None`` included."""
    sender_metadata: dict[str, Any] | None = None
    """The publisher's ``peerMetadata`` when the subscription asked for it."""


@dataclass(frozen=True, slots=True)
class Direct(AppEvent):
    """A directed message (``direct`` frame)."""

    sender_peer_id: str
    """The sender's peer id, stamped by the server."""
    data: Any
    """The sent JSON value."""
    sender_metadata: dict[str, Any] | None = None
    """The sender's ``peerMetadata``, whenever it has one."""


@dataclass(frozen=True, slots=True)
class Presence(AppEvent):
    """A presence snapshot or delta for a channel."""

    channel: str
    """The channel."""
    joined: tuple[PresencePeer, ...]
    """Members that joined (or, in a snapshot, every other member)."""
    left: tuple[PresencePeer, ...]
    """Members that left."""


@dataclass(frozen=True, slots=True)
class ServerError(AppEvent):
    """An ``error`` frame that matches no pending request."""

    code: str
    """The server's error code (unknown codes are passed through)."""
    message: str | None
    """The server's text, if any."""
    request_id: str | None
    """The ``requestId`` it carried, if any."""


@dataclass(frozen=True, slots=True)
class GoingAway(AppEvent):
    """The server announced a graceful shutdown; a 1001 close follows."""

    retry_after_ms: int
    """Advisory hint (1000 when missing, clamped to 300,000); reconnect uses normal backoff."""


@dataclass(frozen=True, slots=True)
class TokenProviderError(AppEvent):
    """The token provider failed ``consecutive_failures`` (≥ 3) times in a row."""

    consecutive_failures: int
    """How many consecutive resolutions failed."""
    err: BaseException
    """The last failure."""


# --- driver actions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CredentialNeeded(Action):
    """Resolve the token provider, then call ``credential_resolved`` or ``credential_failed``."""

    attempt: int
    """Reconnect attempt number (0 for the first connect)."""


@dataclass(frozen=True, slots=True)
class OpenTransport(Action):
    """Open a TCP (TLS when ``secure``) connection, then call ``transport_opened``."""

    host: str
    """Host to connect to."""
    port: int
    """TCP port."""
    secure: bool
    """Whether to wrap the stream in TLS."""


@dataclass(frozen=True, slots=True)
class CloseTransport(Action):
    """Flush ``data_to_send()`` and close the transport; then call ``transport_closed``."""


@dataclass(frozen=True, slots=True)
class ReconnectScheduled(Action):
    """The core will ask for a new transport after ``delay`` seconds (it arms the timer)."""

    attempt: int
    """1-based attempt number."""
    delay: float
    """Seconds until the attempt."""
    close_code: int
    """The close code that caused it."""


@dataclass(frozen=True, slots=True)
class ConnectFailed(Action):
    """The first ``connect()`` failed; the client is ``closed``. Raise ``error`` to the caller."""

    error: BaseException
    """A ``SignallingConnectError``, or the credential failure."""


@dataclass(frozen=True, slots=True)
class RequestCompleted(Action):
    """A request was acknowledged (resolve the awaiting call)."""

    request_id: str
    """The request's id."""


@dataclass(frozen=True, slots=True)
class RequestFailed(Action):
    """A request failed (raise ``error`` from the awaiting call)."""

    request_id: str
    """The request's id."""
    error: BaseException
    """``ServerRequestError``, ``AckTimeoutError`` or ``DisconnectedError``."""


@dataclass(frozen=True, slots=True)
class FrameDropped(Action):
    """An inbound frame was dropped as malformed or unknown (log it; nothing else happens)."""

    code: str
    """``malformed_message`` or ``unknown_type``, or ``binary_frame``."""
    reason: str
    """Why it was dropped (never includes the frame text)."""
    frame_type: str | None = field(default=None)
    """The frame's ``type`` when one could be read."""
