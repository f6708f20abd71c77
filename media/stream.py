"""``MediaStream``: a named group of tracks, sent together under one stream id.

The stream id travels to the remote side (it is the SDP ``msid`` stream id), so a receiver sees the
same ``stream.id`` the sender chose; the Python object itself is local. Tracks are duck-typed:
anything with ``.kind`` (``"audio"`` / ``"video"``) and ``.id`` works at runtime — in practice an
aiortc ``MediaStreamTrack``. This module does not import aiortc.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from aiortc.mediastreams import MediaStreamTrack

__all__ = ["MAX_STREAM_ID_LENGTH", "MediaStream", "StreamMetadata"]

StreamMetadata: TypeAlias = dict[str, Any]
"""Sender-stamped metadata for a stream (convention: ``role``, ``label``). Untrusted."""

MAX_STREAM_ID_LENGTH = 256


def _check_stream_id(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"MediaStream id must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError("MediaStream id must not be empty")
    if len(value) > MAX_STREAM_ID_LENGTH:
        raise ValueError(
            f"MediaStream id is {len(value)} characters; the limit is {MAX_STREAM_ID_LENGTH}"
        )
    # Whitespace (and any other non-printable character) would break the SDP msid line.
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise ValueError("MediaStream id must not contain whitespace or control characters")
    return value


def _check_track(track: object) -> tuple[str, str]:
    kind = getattr(track, "kind", None)
    track_id = getattr(track, "id", None)
    if not isinstance(kind, str) or not isinstance(track_id, str):
        raise TypeError(
            "a track needs str attributes .kind and .id (an aiortc MediaStreamTrack), "
            f"got {type(track).__name__}"
        )
    return kind, track_id


class MediaStream:
    """A group of tracks with a stable id, like the browser's ``MediaStream``.

    ``MediaStream(tracks=(), *, id=None)``: ``id`` defaults to 32 random hex characters; a given
    id must be a non-empty string of at most 256 characters without whitespace (else
    ``ValueError``). Tracks keep the order they were added in; adding a track twice is a no-op.
    """

    __slots__ = ("_id", "_tracks")

    def __init__(self, tracks: Iterable[MediaStreamTrack] = (), *, id: str | None = None) -> None:
        self._id = os.urandom(16).hex() if id is None else _check_stream_id(id)
        self._tracks: list[MediaStreamTrack] = []
        for track in tracks:
            self.add_track(track)

    @property
    def id(self) -> str:
        """The stream id: stable from sender to receiver."""
        return self._id

    def get_tracks(self) -> list[MediaStreamTrack]:
        """All tracks, in the order they were added (a new list)."""
        return list(self._tracks)

    def get_audio_tracks(self) -> list[MediaStreamTrack]:
        """The tracks whose ``kind`` is ``"audio"``."""
        return [t for t in self._tracks if t.kind == "audio"]

    def get_video_tracks(self) -> list[MediaStreamTrack]:
        """The tracks whose ``kind`` is ``"video"``."""
        return [t for t in self._tracks if t.kind == "video"]

    def add_track(self, track: MediaStreamTrack) -> None:
        """Add ``track``; a no-op if it is already in the stream.

        A *different* track object with the id of one already in the stream raises ``ValueError``:
        the remote side tells tracks apart by id.
        """
        _, track_id = _check_track(track)
        for existing in self._tracks:
            if existing is track:
                return
            if existing.id == track_id:
                raise ValueError(f"the stream already has another track with id {track_id!r}")
        self._tracks.append(track)

    def remove_track(self, track: MediaStreamTrack) -> None:
        """Remove ``track``; a no-op if it is not in the stream."""
        for index, existing in enumerate(self._tracks):
            if existing is track:
                del self._tracks[index]
                return

    def __repr__(self) -> str:
        kinds = ", ".join(f"{t.kind}:{t.id}" for t in self._tracks)
        return f"MediaStream(id={self._id!r}, tracks=[{kinds}])"
