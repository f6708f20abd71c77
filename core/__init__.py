"""The sans-IO core: protocol frames, the client connection machine, reconnect and presence.

Nothing here does I/O, reads a clock or draws randomness of its own: time comes in as ``now``
arguments and randomness as an injected ``random.Random``-like object. Drive it from any loop.
"""

from metered_realtime.core.client import ClientConfig, ClientConnection, ClientEvent
from metered_realtime.core.errors import (
    AckTimeoutError,
    DisconnectedError,
    FrameRejected,
    LocalProtocolError,
    MalformedFrameError,
    MeteredRealtimeError,
    NotConnectedError,
    OversizedPayloadError,
    ServerRequestError,
    SignallingConnectError,
    SignallingError,
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
    PresencePeer,
    ReconnectScheduled,
    RequestCompleted,
    RequestFailed,
    ServerError,
    StateChange,
    TokenProviderError,
)
from metered_realtime.core.presence import Roster, RosterChange
from metered_realtime.core.reconnect import Backoff, ReconnectOptions, WsCloseCode
from metered_realtime.core.validation import IceServerConfig

__all__ = [
    "AckTimeoutError",
    "Action",
    "AppEvent",
    "Backoff",
    "ClientConfig",
    "ClientConnection",
    "ClientEvent",
    "CloseTransport",
    "ConnectFailed",
    "Connected",
    "CredentialNeeded",
    "Direct",
    "Disconnected",
    "DisconnectedError",
    "FrameDropped",
    "FrameRejected",
    "GoingAway",
    "IceServerConfig",
    "LocalProtocolError",
    "MalformedFrameError",
    "Message",
    "MeteredRealtimeError",
    "NotConnectedError",
    "OpenTransport",
    "OversizedPayloadError",
    "Presence",
    "PresencePeer",
    "ReconnectOptions",
    "ReconnectScheduled",
    "RequestCompleted",
    "RequestFailed",
    "Roster",
    "RosterChange",
    "ServerError",
    "ServerRequestError",
    "SignallingConnectError",
    "SignallingError",
    "StateChange",
    "TokenProviderError",
    "WsCloseCode",
]
