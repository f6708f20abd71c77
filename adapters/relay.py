"""Fan one local track out to every peer connection of a ``MeteredPeer``.

aiortc's ``MediaRelay`` keeps reading a source for as long as the source lives, even after every
consumer stopped. With a source that outlives a call (an ``AudioSource`` re-used by the next
``MeteredPeer``), the old reader then competes with the new one for frames and each gets every
other frame. This relay reads a source only while at least one relayed track is live, and
:meth:`TrackRelay.close` ends every reader at once.

Everything here runs on the asyncio loop aiortc runs on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = ["RelayedTrack", "TrackRelay"]


class RelayedTrack(MediaStreamTrack):
    """One consumer's view of a relayed source: the latest frame, never a backlog."""

    def __init__(self, relay: TrackRelay, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._relay = relay
        self.source = source
        self._frame: Any = None
        self._event = asyncio.Event()
        self._ended = False

    async def recv(self) -> Any:
        if self.readyState != "live" or self._relay._closed:
            self.stop()
            raise MediaStreamError
        self._relay._start(self)
        await self._event.wait()
        self._event.clear()
        if self._ended:
            self.stop()
            raise MediaStreamError
        return self._frame

    def _deliver(self, frame: Any) -> None:
        self._frame = frame
        self._event.set()

    def _end(self) -> None:
        self._ended = True
        self._event.set()

    def stop(self) -> None:
        super().stop()
        self._relay._stop(self)


class TrackRelay:
    """Relays each source to its live :class:`RelayedTrack`\\s; one reader task per source."""

    def __init__(self) -> None:
        self._consumers: dict[MediaStreamTrack, set[RelayedTrack]] = {}
        self._readers: dict[MediaStreamTrack, asyncio.Task[None]] = {}
        self._closed = False

    def subscribe(self, source: MediaStreamTrack) -> RelayedTrack:
        """A new consumer of ``source``; reading starts at its first ``recv()``."""
        return RelayedTrack(self, source)

    def readers(self) -> int:
        """Sources being read right now."""
        return len(self._readers)

    def close(self) -> None:
        """Stop every relayed track and every reader; the sources themselves are left alone."""
        self._closed = True
        for consumers in list(self._consumers.values()):
            for track in list(consumers):
                track.stop()
        for task in self._readers.values():
            task.cancel()
        self._readers.clear()
        self._consumers.clear()

    def _start(self, track: RelayedTrack) -> None:
        if self._closed or track.readyState != "live":
            return
        consumers = self._consumers.setdefault(track.source, set())
        consumers.add(track)
        if track.source not in self._readers:
            self._readers[track.source] = asyncio.ensure_future(self._read(track.source))

    def _stop(self, track: RelayedTrack) -> None:
        consumers = self._consumers.get(track.source)
        if consumers is None:
            return
        consumers.discard(track)
        if not consumers:
            del self._consumers[track.source]
            reader = self._readers.pop(track.source, None)
            if reader is not None:
                reader.cancel()

    async def _read(self, source: MediaStreamTrack) -> None:
        try:
            while True:
                try:
                    frame = await source.recv()
                except MediaStreamError:
                    break
                for track in list(self._consumers.get(source, ())):
                    track._deliver(frame)
        finally:
            # Cancelled readers were already unregistered (and may have a successor).
            if self._readers.get(source) is asyncio.current_task():
                del self._readers[source]
                for track in list(self._consumers.pop(source, ())):
                    track._end()
