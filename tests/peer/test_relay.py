"""TrackRelay: one reader per source, only while someone listens (asyncio: aiortc's loop)."""

from __future__ import annotations

import asyncio
import fractions
from typing import Any

import av
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from metered_realtime.adapters.relay import TrackRelay

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the relay lives on aiortc's loop, which is asyncio


class Counter(MediaStreamTrack):
    """Numbered frames on demand; ``reads`` counts recv() calls; ends after ``limit``."""

    kind = "audio"

    def __init__(self, limit: int = 10**9) -> None:
        super().__init__()
        self.reads = 0
        self.limit = limit
        self.tick = asyncio.Event()

    async def recv(self) -> Any:
        await self.tick.wait()
        self.tick.clear()
        if self.reads >= self.limit:
            raise MediaStreamError
        self.reads += 1
        frame = av.AudioFrame(format="s16", layout="mono", samples=160)
        frame.pts = self.reads
        frame.time_base = fractions.Fraction(1, 8000)
        return frame


async def step(source: Counter) -> None:
    source.tick.set()
    for _ in range(20):  # let the reader run and the consumers wake
        await asyncio.sleep(0)


async def test_every_consumer_gets_each_frame_from_one_reader() -> None:
    relay, source = TrackRelay(), Counter()
    a, b = relay.subscribe(source), relay.subscribe(source)
    got_a, got_b = asyncio.ensure_future(a.recv()), asyncio.ensure_future(b.recv())
    await asyncio.sleep(0)
    assert relay.readers() == 1
    await step(source)
    assert (await asyncio.wait_for(got_a, 5)).pts == 1
    assert (await asyncio.wait_for(got_b, 5)).pts == 1
    assert source.reads == 1
    relay.close()


async def test_reading_stops_when_the_last_consumer_stops() -> None:
    relay, source = TrackRelay(), Counter()
    a, b = relay.subscribe(source), relay.subscribe(source)
    pending = [asyncio.ensure_future(t.recv()) for t in (a, b)]
    await step(source)
    await asyncio.wait_for(asyncio.gather(*pending), 5)
    a.stop()
    assert relay.readers() == 1  # b still listens
    b.stop()
    assert relay.readers() == 0
    await step(source)
    assert source.reads == 1  # nobody reads the source any more
    with pytest.raises(MediaStreamError):
        await a.recv()
    # a new consumer starts a new reader
    c = relay.subscribe(source)
    got = asyncio.ensure_future(c.recv())
    await asyncio.sleep(0)
    await step(source)
    assert (await asyncio.wait_for(got, 5)).pts == 2
    relay.close()


async def test_close_ends_readers_and_consumers_but_not_the_source() -> None:
    relay, source = TrackRelay(), Counter()
    a = relay.subscribe(source)
    got = asyncio.ensure_future(a.recv())
    await asyncio.sleep(0)
    relay.close()
    await asyncio.sleep(0)
    assert relay.readers() == 0
    assert a.readyState == "ended"
    assert source.readyState == "live"  # the caller owns the source
    got.cancel()
    with pytest.raises(MediaStreamError):
        await a.recv()
    b = relay.subscribe(source)  # a closed relay relays nothing
    with pytest.raises(MediaStreamError):
        await b.recv()
    assert relay.readers() == 0


async def test_a_source_that_ends_ends_its_consumers() -> None:
    relay, source = TrackRelay(), Counter(limit=1)
    a, b = relay.subscribe(source), relay.subscribe(source)
    pending = [asyncio.ensure_future(t.recv()) for t in (a, b)]
    await step(source)
    await asyncio.wait_for(asyncio.gather(*pending), 5)
    pending = [asyncio.ensure_future(t.recv()) for t in (a, b)]
    await step(source)  # the source raises MediaStreamError
    for fut in pending:
        with pytest.raises(MediaStreamError):
            await asyncio.wait_for(fut, 5)
    assert relay.readers() == 0
    assert (a.readyState, b.readyState) == ("ended", "ended")


async def test_a_closed_call_stops_reading_a_source_the_next_call_reuses(server: Any) -> None:
    """The same AudioSource in two calls one after the other: after the first call's close()
    nothing of it reads the source (else the two calls would split its frames)."""
    import anyio

    from metered_realtime.adapters.peer_events import PeerJoined, Track
    from metered_realtime.media.audio import AudioSource
    from metered_realtime.media.frames import iter_frames
    from metered_realtime.media.stream import MediaStream
    from tests.peer.common import make_peer

    def readers() -> int:
        return sum(
            1
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "TrackRelay._read"
        )

    source = AudioSource()
    listener = make_peer(server.port, "peer-b")
    heard = anyio.Event()

    @listener.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        @ev.peer.on(Track)
        async def _(t: Track) -> None:
            async for _frame in iter_frames(t.track):
                heard.set()

    async with listener:
        await listener.join("reuse")
        for _call in range(2):
            heard = anyio.Event()
            speaker = make_peer(server.port, "peer-a")
            speaker.add_track(source, MediaStream(id="voice"))
            await speaker.join("reuse")
            with anyio.fail_after(10):
                await heard.wait()
            assert readers() == 1
            await speaker.close()
            assert readers() == 0
    source.stop()


def test_loopback_only_drops_datagrams_from_other_hosts() -> None:
    from metered_realtime.adapters.peer import _loopback_datagrams_only

    class Protocol:
        def __init__(self) -> None:
            self.got: list[tuple[bytes, Any]] = []

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.got.append((data, addr))

    protocol = Protocol()
    _loopback_datagrams_only(protocol)
    sources = ["127.0.0.1", "192.0.2.7", "::1", "127.0.0.2", "fd00::2", "::ffff:127.0.0.1"]
    for _ in range(2):  # the second round comes from the cache
        for host in sources:
            protocol.datagram_received(b"x", (host, 9))
    assert [a[0] for _, a in protocol.got] == ["127.0.0.1", "::1", "127.0.0.2"] * 2
    for n in range(200):  # many sources: bounded cache, same verdicts
        protocol.datagram_received(b"y", (f"10.0.{n // 250}.{n % 250}", 9))
    protocol.datagram_received(b"z", ("127.0.0.1", 9))
    assert protocol.got[-1] == (b"z", ("127.0.0.1", 9))
    assert len(protocol.got) == 7
