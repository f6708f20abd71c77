"""metered-realtime: a sans-IO Python SDK for Metered Realtime Messaging.

Public names are exported here as their layer lands; see ``docs/`` for the roadmap. The core
(``metered_realtime.core``) is importable on its own and never does I/O; the runtime classes
(``SignallingClient``…) load on first use, so ``import metered_realtime`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from metered_realtime.adapters.log import Logger, StdlibLogger
    from metered_realtime.adapters.signalling import SignallingClient

__version__ = "0.1.0"

_LAZY = {
    "Logger": "metered_realtime.adapters.log",
    "StdlibLogger": "metered_realtime.adapters.log",
    "SignallingClient": "metered_realtime.adapters.signalling",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metered_realtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AckTimeoutError",
    "Connected",
    "Direct",
    "Disconnected",
    "DisconnectedError",
    "GoingAway",
    "IceServerConfig",
    "Logger",
    "Message",
    "MeteredRealtimeError",
    "NotConnectedError",
    "Presence",
    "PresencePeer",
    "ReconnectOptions",
    "ServerError",
    "ServerRequestError",
    "SignallingClient",
    "SignallingConnectError",
    "SignallingError",
    "StateChange",
    "StdlibLogger",
    "SubscribeOptions",
    "TokenProviderError",
    "WsCloseCode",
    "__version__",
]
