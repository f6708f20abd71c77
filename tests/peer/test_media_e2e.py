"""A generated file's audio and video, sent by one MeteredPeer, arrive at another intact.

Real aiortc through the local server, loopback-only ICE, on asyncio and on trio (where the
source's tracks run on the aiortc bridge thread and the receiver reads through ``iter_frames``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from metered_realtime.adapters.peer_events import PeerJoined, Track
from metered_realtime.adapters.server import LocalServer
from metered_realtime.media.frames import iter_frames
from metered_realtime.media.sources import from_file
from metered_realtime.media.stream import MediaStream
from tests.media.test_sources import left_channel, pitch, tone_share, write_media
from tests.peer.common import make_peer

pytestmark = pytest.mark.anyio

RATE = 48_000


async def test_file_audio_and_video_reach_the_other_peer(
    server: LocalServer, tmp_path: Path
) -> None:
    clip = write_media(
        tmp_path / "clip.mp4", audio="aac", video="libx264", seconds=6.0, freq=1000.0
    )
    source = from_file(clip)
    assert source.audio is not None
    assert source.video is not None
    tx, rx = make_peer(server.port, "peer-a"), make_peer(server.port, "peer-b")
    tx.add_track(source.audio, MediaStream(id="clip"))
    tx.add_track(source.video, MediaStream(id="clip"))

    samples: list[int] = []
    sizes: list[tuple[int, int]] = []
    heard, seen = anyio.Event(), anyio.Event()

    def on_joined(ev: PeerJoined) -> None:
        @ev.peer.on(Track)
        async def _(t: Track) -> None:
            async for frame in iter_frames(t.track):
                if t.track.kind == "audio":
                    samples.extend(left_channel([frame]))
                    if len(samples) >= RATE:  # a second of received audio
                        heard.set()
                        return
                else:
                    sizes.append((frame.width, frame.height))
                    if len(sizes) >= 3:
                        seen.set()
                        return

    rx.on(PeerJoined, on_joined)
    try:
        async with rx, tx:
            await rx.join("room")
            await tx.join("room")
            with anyio.fail_after(20):
                await heard.wait()
                await seen.wait()
    finally:
        source.stop()
    tail: Any = samples[RATE // 3 :]  # past the start of the stream (codec warm-up)
    assert abs(pitch(tail) - 1000.0) <= 3.0, pitch(tail)
    assert tone_share(tail, 1000.0) > 0.8
    assert sizes[-1] == (160, 120)
