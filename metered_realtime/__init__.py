"""metered-realtime: a sans-IO Python SDK for Metered Realtime Messaging.

Public names are exported here as their layer lands; see ``docs/`` for the roadmap. The core
(``metered_realtime.core``) is importable on its own and never does I/O.
"""

from __future__ import annotations

from metered_realtime.core.errors import (
    AckTimeoutError,
    DisconnectedError,
    MeteredRealtimeError,
    NotConnectedError,
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

__version__ = "0.1.0"

__all__ = [
    "AckTimeoutError",
    "Connected",
    "Direct",
    "Disconnected",
    "DisconnectedError",
    "GoingAway",
    "IceServerConfig",
    "Message",
    "MeteredRealtimeError",
    "NotConnectedError",
    "Presence",
    "PresencePeer",
    "ReconnectOptions",
    "ServerError",
    "ServerRequestError",
    "SignallingConnectError",
    "SignallingError",
    "StateChange",
    "SubscribeOptions",
    "TokenProviderError",
    "WsCloseCode",
    "__version__",
]
