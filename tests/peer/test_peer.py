"""MeteredPeer ↔ MeteredPeer through the local server: real aiortc, loopback-only ICE."""

from __future__ import annotations

import anyio
import pytest

from metered_realtime.adapters.datachannel import DataChannel
from metered_realtime.adapters.peer import RemotePeer
from metered_realtime.adapters.peer_events import (
    Data,
    DataChannelOpened,
    DCMessage,
    DCOpen,
    Joined,
    Left,
    PeerJoined,
    PeerLeft,
    StreamAdded,
    StreamRemoved,
    Track,
)
from metered_realtime.adapters.server import LocalServer
from metered_realtime.core.errors import MeteredPeerSendError, MeteredPeerStateError
from metered_realtime.core.events import StateChange
from metered_realtime.media.audio import AudioSource
from metered_realtime.media.frames import iter_frames
from metered_realtime.media.stream import MediaStream
from tests.peer.common import make_peer

pytestmark = pytest.mark.anyio
POLITE, IMPOLITE = "peer-a", "peer-b"  # "peer-a" < "peer-b": peer-a is the polite side


async def wait_for(event: anyio.Event, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        await event.wait()


@pytest.mark.parametrize("handler", ["sync", "async-after-await"])
@pytest.mark.parametrize("first", [POLITE, IMPOLITE])
async def test_data_channel_opened_in_peer_joined_opens_on_both_sides(
    server: LocalServer, first: str, handler: str
) -> None:
    """Sync handlers, and async ones that open the channel only after an await (which misses
    the first offer and rides a renegotiation)."""
    second = IMPOLITE if first == POLITE else POLITE
    peers = {name: make_peer(server.port, name) for name in (first, second)}
    opened = {name: anyio.Event() for name in peers}
    got = {name: anyio.Event() for name in peers}
    inbound: dict[str, list[DataChannel]] = {name: [] for name in peers}

    for name, peer in peers.items():

        def open_channel(ev: PeerJoined, name: str = name) -> None:
            channel = ev.peer.create_data_channel(f"from-{name}")

            @channel.on(DCOpen)
            async def _(_: DCOpen) -> None:
                opened[name].set()
                await channel.send(f"hello from {name}")

        async def on_joined_async(ev: PeerJoined, name: str = name) -> None:
            await anyio.sleep(0.1)  # e.g. a database lookup before deciding to talk
            open_channel(ev, name)

        peer.on(PeerJoined, open_channel if handler == "sync" else on_joined_async)

        def on_remote_joined(ev: PeerJoined, name: str = name) -> None:
            @ev.peer.on(DataChannelOpened)
            def _(dc: DataChannelOpened) -> None:
                inbound[name].append(dc.channel)
                dc.channel.on(DCMessage, lambda m: got[name].set())

        peer.on(PeerJoined, on_remote_joined)

    async with peers[first], peers[second]:
        await peers[first].join("room")
        await peers[second].join("room")
        for name in peers:
            await wait_for(opened[name])
            await wait_for(got[name])
        assert sorted(c.label for c in inbound[POLITE]) == [f"from-{IMPOLITE}"]
        assert sorted(c.label for c in inbound[IMPOLITE]) == [f"from-{POLITE}"]
        (remote,) = peers[POLITE].remote_peers
        assert remote.polite is True
        assert remote.state == "connected"


@pytest.mark.parametrize("sender", [POLITE, IMPOLITE])
async def test_audio_arrives_with_stream_id_and_metadata(server: LocalServer, sender: str) -> None:
    receiver = IMPOLITE if sender == POLITE else POLITE
    tx, rx = make_peer(server.port, sender), make_peer(server.port, receiver)
    source = AudioSource(input_rate=16_000)
    tx.add_track(source, MediaStream(id="agent-voice"), {"role": "voice"})
    streams: list[StreamAdded] = []
    tracks: list[Track] = []
    frames = anyio.Event()
    removed = anyio.Event()

    def on_joined(ev: PeerJoined) -> None:
        ev.peer.on(StreamAdded, streams.append)
        ev.peer.on(StreamRemoved, lambda _: removed.set())

        @ev.peer.on(Track)
        async def _(t: Track) -> None:
            tracks.append(t)
            count = 0
            async for _frame in iter_frames(t.track):
                count += 1
                if count == 5:
                    frames.set()

    rx.on(PeerJoined, on_joined)
    left = anyio.Event()
    rx.on(PeerLeft, lambda _: left.set())
    async with rx:
        await rx.join("room")
        await tx.join("room")
        await source.push(b"\x00\x10" * 16_000)  # a second of audio
        await wait_for(frames)
        assert [s.stream.id for s in streams] == ["agent-voice"]
        assert streams[0].metadata == {"role": "voice"}
        assert tracks[0].metadata == {"role": "voice"}
        assert tracks[0].track.kind == "audio"
        await tx.close()
        await wait_for(left)
        await wait_for(removed)


async def test_echo_over_a_data_channel_with_backpressure(server: LocalServer) -> None:
    a, b = make_peer(server.port, POLITE), make_peer(server.port, IMPOLITE)
    received: list[str] = []
    done = anyio.Event()
    channel_ready = anyio.Event()
    holder: list[DataChannel] = []

    @b.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        @ev.peer.on(DataChannelOpened)
        def _(dc: DataChannelOpened) -> None:
            @dc.channel.on(DCMessage)
            async def _(m: DCMessage) -> None:
                await dc.channel.send(m.data)

    @a.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        channel = ev.peer.create_data_channel("echo")
        holder.append(channel)
        channel.on(DCOpen, lambda _: channel_ready.set())

        @channel.on(DCMessage)
        def _(m: DCMessage) -> None:
            received.append(str(m.data))
            if len(received) == 1000:
                done.set()

    async with a, b:
        await a.join("room")
        await b.join("room")
        await wait_for(channel_ready)
        for i in range(1000):
            await holder[0].send(f"{i:04d}" + "x" * 200)
        await wait_for(done, 20)
    assert [r[:4] for r in received] == [f"{i:04d}" for i in range(1000)]


async def test_data_events_and_errors(server: LocalServer) -> None:
    a, b = make_peer(server.port, POLITE), make_peer(server.port, IMPOLITE)
    data: list[Data] = []
    a.on(Data, data.append)
    states: list[StateChange] = []
    a.on(StateChange, states.append)
    joined: list[Joined] = []
    a.on(Joined, joined.append)
    seen_b = anyio.Event()
    a.on(PeerJoined, lambda _: seen_b.set())
    with pytest.raises(MeteredPeerSendError) as reserved:
        await a.join("_system/x")
    assert reserved.value.code == "reserved_channel"
    with pytest.raises(MeteredPeerSendError) as not_joined:
        await a.send({"x": 1})
    assert not_joined.value.code == "not_joined"
    async with a, b:
        await a.join("room")
        with pytest.raises(MeteredPeerStateError):
            await a.join("room")
        await b.join("room")
        await wait_for(seen_b)
        await b.send({"chat": "hi"})
        await b.send_to(POLITE, {"op": "direct"})
        with anyio.fail_after(5):
            while len(data) < 2:
                await anyio.sleep(0.01)
        assert {(d.kind, str(d.data)) for d in data} == {
            ("broadcast", "{'chat': 'hi'}"),
            ("direct", "{'op': 'direct'}"),
        }
        with pytest.raises(MeteredPeerSendError) as self_send:
            await a.send_to(POLITE, 1)
        assert self_send.value.code == "self_send"
    assert joined == [Joined(POLITE, "room")]
    assert [s.to for s in states] == ["joining", "joined", "leaving", "closed"]


async def test_left_event_and_remote_peer_closed(server: LocalServer) -> None:
    a, b = make_peer(server.port, POLITE), make_peer(server.port, IMPOLITE)
    left: list[Left] = []
    a.on(Left, left.append)
    remotes: list[RemotePeer] = []
    gone = anyio.Event()
    a.on(PeerJoined, lambda ev: remotes.append(ev.peer))
    a.on(PeerLeft, lambda _: gone.set())
    await a.join("room")
    await b.join("room")
    await b.close("bye")
    await wait_for(gone)
    assert remotes[0].state == "closed"
    await a.close("done")
    assert left == [Left(POLITE, "room", "done")]
