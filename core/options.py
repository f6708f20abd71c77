"""Per-call options of the signalling API."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SubscribeOptions"]


@dataclass(frozen=True)
class SubscribeOptions:
    """Options of ``SignallingClient.subscribe``."""

    include_sender_metadata: bool = False
    """Ask the server to stamp the publisher's ``peerMetadata`` on this channel's messages."""
