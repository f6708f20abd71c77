"""``iter_frames``: consume any aiortc track with ``async for``."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from aiortc.mediastreams import MediaStreamError

from metered_realtime.adapters.runtime import in_trio_thread

__all__ = ["iter_frames"]

_FrameT_co = TypeVar("_FrameT_co", covariant=True)


class _ReceivingTrack(Protocol[_FrameT_co]):
    """Anything with aiortc's ``recv()``: a ``MediaStreamTrack`` of any kind."""

    def recv(self) -> Awaitable[_FrameT_co]: ...


async def iter_frames(track: _ReceivingTrack[_FrameT_co]) -> AsyncIterator[_FrameT_co]:
    """Yield ``await track.recv()`` until the track ends.

    Works for audio (``av.AudioFrame``, 20 ms each from a remote WebRTC track) and video
    (``av.VideoFrame``) tracks alike. The iteration stops cleanly when ``recv()`` raises aiortc's
    ``MediaStreamError`` (the track has ended); any other exception propagates. Run it on the
    asyncio loop the track belongs to; under trio, each ``recv()`` runs on the aiortc bridge
    thread and the frames are delivered to the trio caller.
    """
    receive: Callable[[], Awaitable[_FrameT_co]] = track.recv
    if in_trio_thread():
        from metered_realtime.adapters.bridge import run_on_aiortc

        receive = functools.partial(run_on_aiortc, track.recv)
    while True:
        try:
            frame = await receive()
        except MediaStreamError:
            return
        yield frame
