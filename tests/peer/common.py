"""Shared by the peer tests: peers with pinned ids (so politeness is known) on a local server."""

from __future__ import annotations

from typing import Any

from metered_realtime.adapters.peer import MeteredPeer
from metered_realtime.core.reconnect import ReconnectOptions
from tests.wire import mint_token

FAST = ReconnectOptions(initial_delay=0.05, max_delay=0.3, jitter_ratio=0.0)


def make_peer(port: int, sub: str, **kwargs: Any) -> MeteredPeer:
    """A loopback-only peer whose JWT ``sub`` (its peer id) is ``sub``."""
    options: dict[str, Any] = {
        "token_provider": lambda: mint_token(sub),
        "loopback_only": True,
        "ice_servers": [],
        "reconnect": FAST,
    }
    options.update(kwargs)
    return MeteredPeer(url=f"ws://127.0.0.1:{port}", **options)
