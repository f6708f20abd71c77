"""Events of ``MeteredPeer``, ``RemotePeer`` and ``DataChannel`` (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metered_realtime.adapters.datachannel import DataChannel
    from metered_realtime.adapters.peer import RemotePeer
    from metered_realtime.media.stream import MediaStream

__all__ = [
    "ConnectionReset",
    "DCClose",
    "DCError",
    "DCMessage",
    "DCOpen",
    "Data",
    "DataChannelOpened",
    "FatalError",
    "IceCandidateError",
    "Joined",
    "Left",
    "NegotiationError",
    "PeerJoined",
    "PeerLeft",
    "StreamAdded",
    "StreamRemoved",
    "Track",
]


# --- MeteredPeer --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    """``join()`` succeeded."""

    peer_id: str
    """This peer's id."""
    channel: str
    """The joined channel."""


@dataclass(frozen=True, slots=True)
class Left:
    """The peer reached ``closed`` from a session."""

    peer_id: str | None
    """This peer's id, if it had one."""
    channel: str | None
    """The channel it had joined, if any."""
    reason: str | None
    """Why (the ``close()`` reason, or the close reason / ``disconnected (code N)``)."""


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """Another peer appeared in the channel (its connection already carries your media)."""

    peer: RemotePeer
    """The remote peer."""


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """A remote peer left or dropped."""

    peer: RemotePeer
    """The remote peer (now ``closed``)."""


@dataclass(frozen=True, slots=True)
class Data:
    """A customer payload from a peer seen in presence."""

    sender_peer_id: str
    """Server-stamped sender id."""
    data: Any
    """The JSON value."""
    kind: str
    """``"broadcast"`` or ``"direct"``."""
    sender_metadata: dict[str, Any] | None = None
    """The sender's ``peerMetadata`` (JWT path; broadcasts need ``include_sender_metadata``)."""


@dataclass(frozen=True, slots=True)
class FatalError:
    """A condition to act on: terminal close, fatal server error, token provider failing."""

    err: BaseException
    """The typed error (branch on ``isinstance`` and ``.code``)."""


# --- RemotePeer ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Track:
    """The remote peer added a track."""

    track: Any
    """An aiortc ``MediaStreamTrack``."""
    streams: tuple[MediaStream, ...]
    """Its streams (empty for an unaffiliated track)."""
    metadata: dict[str, Any] | None
    """The sender's per-track metadata, if announced."""


@dataclass(frozen=True, slots=True)
class StreamAdded:
    """The first track of a stream id arrived (fires again after a reconnect)."""

    stream: MediaStream
    """A fresh ``MediaStream`` with the sender's stream id."""
    metadata: dict[str, Any] | None
    """The metadata of its first track."""


@dataclass(frozen=True, slots=True)
class StreamRemoved:
    """Every track of a stream ended (not fired during reconnects)."""

    stream: MediaStream
    """The stream."""


@dataclass(frozen=True, slots=True)
class DataChannelOpened:
    """The remote peer opened a data channel."""

    channel: DataChannel
    """The channel, already wrapped (``DataChannel(channel)`` returns it as is)."""


@dataclass(frozen=True, slots=True)
class NegotiationError:
    """Negotiation failed, or the ICE recovery ladder gave up."""

    err: BaseException
    """The error (``IceRestartExhaustedError`` when recovery is exhausted)."""


@dataclass(frozen=True, slots=True)
class IceCandidateError:
    """A well-formed inbound candidate was rejected."""

    err: BaseException
    """The error."""


@dataclass(frozen=True, slots=True)
class ConnectionReset:
    """The connection was replaced (reconnect reconcile or rebuild): re-read ``pc``."""


# --- DataChannel --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DCOpen:
    """The data channel opened."""


@dataclass(frozen=True, slots=True)
class DCClose:
    """The data channel closed."""


@dataclass(frozen=True, slots=True)
class DCError:
    """The data channel reported an error."""

    err: BaseException
    """The error."""


@dataclass(frozen=True, slots=True)
class DCMessage:
    """A message arrived."""

    data: str | bytes
    """Text or binary payload."""
