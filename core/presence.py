"""Presence bookkeeping and reconnect reconciliation (PROTOCOL §5.3, §5.4).

A :class:`Roster` follows one channel. The first presence frame after a subscribe (and after
:meth:`Roster.mark_stale`, i.e. after a signalling drop) is the complete roster; later frames are
deltas. Each frame yields a :class:`RosterChange` that says exactly which members arrived, which
departed and which survived a reconnect, so that a member still present keeps its identity
(its ``RemotePeer`` object) instead of being reported as left and joined again.
"""

from __future__ import annotations

from dataclasses import dataclass

from metered_realtime.core.events import PresencePeer

__all__ = ["Roster", "RosterChange"]


@dataclass(frozen=True, slots=True)
class RosterChange:
    """What one presence frame changed."""

    arrived: tuple[PresencePeer, ...] = ()
    """Members not known before (surface as joined)."""
    departed: tuple[PresencePeer, ...] = ()
    """Known members now gone (surface as left)."""
    survivors: tuple[PresencePeer, ...] = ()
    """Known members confirmed by a snapshot, with refreshed metadata (surface nothing)."""
    snapshot: bool = False
    """Whether the frame was treated as the complete roster."""


class Roster:
    """The other members of one channel, as this client knows them."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.members: dict[str, PresencePeer] = {}
        """peer id → latest entry, in arrival order."""
        self.awaiting_snapshot = True
        """True until the first presence frame after a subscribe or a drop."""

    def mark_stale(self) -> None:
        """The signalling link dropped: the next frame for the channel is a full roster."""
        self.awaiting_snapshot = True

    def apply(
        self,
        joined: tuple[PresencePeer, ...],
        left: tuple[PresencePeer, ...],
        self_id: str | None,
    ) -> RosterChange:
        """Apply one presence frame for this channel and return the effective change."""
        if self.awaiting_snapshot:
            self.awaiting_snapshot = False
            return self._reconcile(joined, self_id)
        arrived: list[PresencePeer] = []
        for entry in joined:  # joined first, then left (§5.3)
            if entry.peer_id == self_id:
                continue
            if entry.peer_id not in self.members:
                arrived.append(entry)
            self.members[entry.peer_id] = entry
        departed: list[PresencePeer] = []
        for entry in left:
            gone = self.members.pop(entry.peer_id, None)
            if gone is not None:
                departed.append(gone)
        return RosterChange(arrived=tuple(arrived), departed=tuple(departed))

    def _reconcile(self, roster: tuple[PresencePeer, ...], self_id: str | None) -> RosterChange:
        latest: dict[str, PresencePeer] = {}
        for entry in roster:
            if entry.peer_id != self_id:
                latest.setdefault(entry.peer_id, entry)
        departed = tuple(p for pid, p in self.members.items() if pid not in latest)
        survivors = tuple(p for pid, p in latest.items() if pid in self.members)
        arrived = tuple(p for pid, p in latest.items() if pid not in self.members)
        self.members = latest
        return RosterChange(arrived, departed, survivors, snapshot=True)
