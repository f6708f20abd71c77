"""metered-realtime: a sans-IO Python SDK for Metered Realtime Messaging.

Every public name lives here (``__all__``). The core (``metered_realtime.core``) is importable
on its own and never does I/O; the runtime classes (``SignallingClient``, ``MeteredPeer``…) and
the media helpers load on first use, so ``import metered_realtime`` stays light and needs neither
aiortc nor av (the WebRTC and media names need the ``webrtc`` extra).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metered_realtime.core.errors import (
    AckTimeoutError,
    DataChannelOverflowError,
    DisconnectedError,
    IceRestartExhaustedError,
    MeteredPeerOversizedError,
    MeteredPeerReplaceTrackError,
    MeteredPeerSendError,
    MeteredPeerStateError,
    MeteredRealtimeError,
    NotConnectedError,
    ReplaceTrackFailure,
    ServerRequestError,
    SignallingConnectError,
    SignallingError,
)
from metered_realtime.core.events import (
    Connected,
    Direct,
    Disconnected,
    GoingAway,
    Message,
    Presence,
    PresencePeer,
    ServerError,
    StateChange,
    TokenProviderError,
)
from metered_realtime.core.options import SubscribeOptions
from metered_realtime.core.reconnect import ReconnectOptions, WsCloseCode
from metered_realtime.core.validation import IceServerConfig
from metered_realtime.media.stream import MediaStream, StreamMetadata

if TYPE_CHECKING:
    from metered_realtime.adapters.datachannel import DataChannel
    from metered_realtime.adapters.log import Logger, StdlibLogger
    from metered_realtime.adapters.peer import MeteredPeer, RemotePeer
    from metered_realtime.adapters.peer_events import (
        ConnectionReset,
        Data,
        DataChannelOpened,
        DCClose,
        DCError,
        DCMessage,
        DCOpen,
        FatalError,
        IceCandidateError,
        Joined,
        Left,
        NegotiationError,
        PeerJoined,
        PeerLeft,
        StreamAdded,
        StreamRemoved,
        Track,
    )
    from metered_realtime.adapters.signalling import SignallingClient
    from metered_realtime.media.audio import AudioSource
    from metered_realtime.media.frames import iter_frames
    from metered_realtime.media.sources import (
        from_camera,
        from_file,
        from_microphone,
        from_rtsp,
        screen_share,
    )

__version__ = "0.1.0"

_PEER_EVENTS = [
    "ConnectionReset",
    "Data",
    "DataChannelOpened",
    "DCClose",
    "DCError",
    "DCMessage",
    "DCOpen",
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
_MEDIA_SOURCES = ["from_camera", "from_file", "from_microphone", "from_rtsp", "screen_share"]
_LAZY = {
    "Logger": "metered_realtime.adapters.log",
    "StdlibLogger": "metered_realtime.adapters.log",
    "SignallingClient": "metered_realtime.adapters.signalling",
    "MeteredPeer": "metered_realtime.adapters.peer",
    "RemotePeer": "metered_realtime.adapters.peer",
    "DataChannel": "metered_realtime.adapters.datachannel",
    "AudioSource": "metered_realtime.media.audio",
    "iter_frames": "metered_realtime.media.frames",
    **dict.fromkeys(_MEDIA_SOURCES, "metered_realtime.media.sources"),
    **dict.fromkeys(_PEER_EVENTS, "metered_realtime.adapters.peer_events"),
}
_NEEDS_WEBRTC = {
    "MeteredPeer",
    "RemotePeer",
    "DataChannel",
    "AudioSource",
    "iter_frames",
    *_MEDIA_SOURCES,
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metered_realtime' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        if name in _NEEDS_WEBRTC:
            raise ImportError(
                f'{name} needs aiortc and PyAV: pip install ".[webrtc]" (from the source tree)'
            ) from exc
        raise
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AckTimeoutError",
    "AudioSource",
    "Connected",
    "ConnectionReset",
    "DCClose",
    "DCError",
    "DCMessage",
    "DCOpen",
    "Data",
    "DataChannel",
    "DataChannelOpened",
    "DataChannelOverflowError",
    "Direct",
    "Disconnected",
    "DisconnectedError",
    "FatalError",
    "GoingAway",
    "IceCandidateError",
    "IceRestartExhaustedError",
    "IceServerConfig",
    "Joined",
    "Left",
    "Logger",
    "MediaStream",
    "Message",
    "MeteredPeer",
    "MeteredPeerOversizedError",
    "MeteredPeerReplaceTrackError",
    "MeteredPeerSendError",
    "MeteredPeerStateError",
    "MeteredRealtimeError",
    "NegotiationError",
    "NotConnectedError",
    "PeerJoined",
    "PeerLeft",
    "Presence",
    "PresencePeer",
    "ReconnectOptions",
    "RemotePeer",
    "ReplaceTrackFailure",
    "ServerError",
    "ServerRequestError",
    "SignallingClient",
    "SignallingConnectError",
    "SignallingError",
    "StateChange",
    "StdlibLogger",
    "StreamAdded",
    "StreamMetadata",
    "StreamRemoved",
    "SubscribeOptions",
    "TokenProviderError",
    "Track",
    "WsCloseCode",
    "from_camera",
    "from_file",
    "from_microphone",
    "from_rtsp",
    "iter_frames",
    "screen_share",
    "__version__",
]
