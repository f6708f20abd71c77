"""Calls that change: glare, several streams, replace/mute, a signalling restart, an ICE
failure and a three-peer mesh. Real aiortc through the local server, loopback-only ICE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from metered_realtime.adapters.peer import MeteredPeer, RemotePeer
from metered_realtime.adapters.peer_events import (
    ConnectionReset,
    DataChannelOpened,
    DCMessage,
    DCOpen,
    PeerJoined,
    StreamAdded,
    StreamRemoved,
    Track,
)
from metered_realtime.adapters.runtime import in_trio_thread
from metered_realtime.adapters.server import LocalServer
from metered_realtime.core.events import StateChange
from metered_realtime.media.audio import AudioSource
from metered_realtime.media.frames import iter_frames
from metered_realtime.media.stream import MediaStream
from tests.peer.common import FAST, make_peer
from tests.wire import default_config

pytestmark = pytest.mark.anyio


def on_aiortc_thread(fn: Callable[[], None]) -> None:
    """Run a test seam that touches aiortc internals where aiortc runs (the bridge under trio)."""
    if in_trio_thread():
        from metered_realtime.adapters.bridge import run_sync_on_aiortc

        run_sync_on_aiortc(fn)
    else:
        fn()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


async def feed(source: AudioSource, seconds: float = 30.0) -> None:
    """Keep pushing a quiet tone so frames flow for the whole test."""
    chunk = b"\x00\x08\x00\xf8" * 80  # 20 ms at 16 kHz mono
    for _ in range(int(seconds / 0.02)):
        await source.push(chunk)


class Receiver:
    """Counts frames per stream id arriving at one peer."""

    def __init__(self, peer: MeteredPeer) -> None:
        self.frames: dict[str, int] = {}
        self.metadata: dict[str, Any] = {}
        self.remotes: list[RemotePeer] = []
        self.removed: list[str] = []
        peer.on(PeerJoined, self._joined)

    def _joined(self, ev: PeerJoined) -> None:
        self.remotes.append(ev.peer)
        ev.peer.on(StreamRemoved, lambda s: self.removed.append(s.stream.id))

        @ev.peer.on(StreamAdded)
        def _(s: StreamAdded) -> None:
            self.metadata[s.stream.id] = s.metadata

        @ev.peer.on(Track)
        async def _(t: Track) -> None:
            key = t.streams[0].id if t.streams else t.track.id
            async for _frame in iter_frames(t.track):
                self.frames[key] = self.frames.get(key, 0) + 1

    def count(self, key: str) -> int:
        return self.frames.get(key, 0)


@pytest.mark.parametrize("hold", [True, False], ids=["first-offer-hold", "no-hold"])
async def test_glare_both_send_and_both_open_channels(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, hold: bool
) -> None:
    """Both sides have media and open a channel at once. With the impolite side's first-offer
    hold, the polite side's offer wins without glare (no rebuild at all); without it, glare
    costs the polite side one rebuild. Either way nothing is lost."""
    import metered_realtime.core.negotiation as negotiation

    if not hold:
        monkeypatch.setattr(negotiation, "FIRST_OFFER_HOLD", 0.0)
    a, b = make_peer(server.port, "peer-a"), make_peer(server.port, "peer-b")  # a is polite
    resets = {"a": 0, "b": 0}
    sources = {}
    for name, peer in (("a", a), ("b", b)):
        sources[name] = AudioSource()
        peer.add_track(sources[name], MediaStream(id=f"voice-{name}"), {"who": name})
    rx = {"a": Receiver(a), "b": Receiver(b)}
    opened = {"a": anyio.Event(), "b": anyio.Event()}
    for name, peer in (("a", a), ("b", b)):

        def joined(ev: PeerJoined, name: str = name) -> None:
            ch = ev.peer.create_data_channel("glare")
            ch.on(DCOpen, lambda _: opened[name].set())

            def reset(_: ConnectionReset) -> None:
                resets[name] += 1

            ev.peer.on(ConnectionReset, reset)

        peer.on(PeerJoined, joined)
    async with a, b, anyio.create_task_group() as tg:
        for source in sources.values():
            tg.start_soon(feed, source)
        await a.join("glare-room")
        await b.join("glare-room")
        await until(lambda: rx["a"].count("voice-b") > 10 and rx["b"].count("voice-a") > 10)
        with anyio.fail_after(10):
            await opened["a"].wait()
            await opened["b"].wait()
        assert rx["a"].metadata == {"voice-b": {"who": "b"}}
        assert rx["b"].metadata == {"voice-a": {"who": "a"}}
        assert resets["b"] == 0  # the impolite side never rebuilds for glare
        if hold:
            assert resets["a"] == 0
        tg.cancel_scope.cancel()


async def test_two_streams_replace_and_mute(server: LocalServer) -> None:
    a, b = make_peer(server.port, "peer-a"), make_peer(server.port, "peer-b")
    mic, screen, other = AudioSource(), AudioSource(), AudioSource()
    a.add_track(mic, MediaStream(id="mic"), {"role": "voice"})
    a.add_track(screen, MediaStream(id="screen"), {"role": "screen-audio"})
    rx = Receiver(b)
    async with a, b, anyio.create_task_group() as tg:
        for source in (mic, screen, other):
            tg.start_soon(feed, source)
        await b.join("streams")
        await a.join("streams")
        await until(lambda: rx.count("mic") > 10 and rx.count("screen") > 10)
        assert rx.metadata == {"mic": {"role": "voice"}, "screen": {"role": "screen-audio"}}
        assert a.get_track_metadata(mic) == {"role": "voice"}
        # mute: frames stop arriving for "mic" while "screen" continues
        await a.replace_track(mic, None)
        await anyio.sleep(0.3)  # let in-flight frames drain before sampling
        muted_at = rx.count("mic")
        screen_at = rx.count("screen")
        await until(lambda: rx.count("screen") > screen_at + 20)
        assert rx.count("mic") <= muted_at + 2
        tg.cancel_scope.cancel()


async def test_signalling_restart_keeps_remote_peers_and_media() -> None:
    config = default_config()
    async with anyio.create_task_group() as tg:
        async with LocalServer(config, port=0) as first:
            port = first.port
            a, b = make_peer(port, "peer-a"), make_peer(port, "peer-b")
            source = AudioSource()
            a.add_track(source, MediaStream(id="voice"))
            rx = Receiver(b)
            states: list[str] = []
            b.on(StateChange, lambda ev: states.append(ev.to))
            tg.start_soon(feed, source, 60.0)
            await a.join("restart")
            await b.join("restart")
            await until(lambda: rx.count("voice") > 10)
            (remote_before,) = b.remote_peers
        # the server is gone: both peers reconnect; a new server takes the same port
        await until(lambda: b.state == "reconnecting")
        async with LocalServer(config, port=port):
            await until(lambda: b.state == "joined" and a.state == "joined", timeout=15)
            (remote_after,) = b.remote_peers
            assert remote_after is remote_before  # the same RemotePeer object survives
            frames_then = rx.count("voice")
            await until(lambda: rx.count("voice") > frames_then + 20, timeout=15)
            assert "reconnecting" in states
            await a.close()
            await b.close()
        tg.cancel_scope.cancel()


async def test_ice_failure_recovers(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the peer's datagrams: consent fails → reconnecting → rebuild → connected."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 2)
    a, b = make_peer(server.port, "peer-a"), make_peer(server.port, "peer-b")
    source = AudioSource()
    a.add_track(source, MediaStream(id="voice"))  # media: a rebuilt connection renegotiates
    rx = Receiver(b)
    remote_states: list[str] = []
    holder: list[RemotePeer] = []

    @a.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        holder.append(ev.peer)
        ev.peer.on(StateChange, lambda s: remote_states.append(s.to))

    async with a, b, anyio.create_task_group() as tg:
        tg.start_soon(feed, source)
        await a.join("ice")
        await b.join("ice")
        await until(lambda: holder and holder[0].state == "connected")
        # the test seam: every datagram reaching a's current ICE sockets is dropped
        pc = holder[0].pc

        def drop_datagrams() -> None:
            for transport in pc._RTCPeerConnection__iceTransports:
                for protocol in transport.iceGatherer._connection._protocols:
                    protocol.datagram_received = lambda data, addr: None

        on_aiortc_thread(drop_datagrams)
        await until(lambda: "reconnecting" in remote_states, timeout=15)
        await until(lambda: holder[0].state == "connected" and holder[0].pc is not pc, timeout=20)
        assert remote_states[-2:] == ["reconnecting", "connected"]
        assert "connecting" not in remote_states[remote_states.index("reconnecting") :]
        frames_then = rx.count("voice")
        await until(lambda: rx.count("voice") > frames_then + 10)  # media flows again
        assert rx.removed == []  # a failed connection is not a removed stream
        tg.cancel_scope.cancel()


async def test_stalled_connect_is_rebuilt(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote candidates that never come (a browser whose gathering stalled) leave ICE
    checking forever; the connect watchdog counts that as a failure and rebuilds."""
    import metered_realtime.adapters.peer as peer_module
    from metered_realtime.core.negotiation import EndOfCandidates, IceRecovery

    monkeypatch.setattr(IceRecovery, "CONNECT_TIMEOUT", 1.0)
    stalled = [2]  # the first offer and answer lose their candidates and end-of-candidates
    keep = peer_module.filter_candidates

    def filter_candidates(sdp: str, admit: Callable[[str], bool]) -> str:
        if stalled[0] > 0:
            stalled[0] -= 1
            lines = keep(sdp, lambda _ip: False).splitlines(keepends=True)
            return "".join(x for x in lines if not x.startswith("a=end-of-candidates"))
        return keep(sdp, admit)

    on_signal = RemotePeer._on_signal

    async def _on_signal(self: RemotePeer, signal: Any) -> None:
        pc = self._pc
        first = pc is not None and pc.connectionState != "connected"
        if isinstance(signal, EndOfCandidates) and first and self._recovery.attempts == 0:
            return  # swallowed while the first connection stalls
        await on_signal(self, signal)

    monkeypatch.setattr(peer_module, "filter_candidates", filter_candidates)
    monkeypatch.setattr(RemotePeer, "_on_signal", _on_signal)
    a, b = make_peer(server.port, "peer-a"), make_peer(server.port, "peer-b")
    source = AudioSource()
    b.add_track(source, MediaStream(id="voice"))
    rx = Receiver(a)
    states: list[str] = []
    a.on(PeerJoined, lambda ev: ev.peer.on(StateChange, lambda s: states.append(s.to)))
    async with a, b, anyio.create_task_group() as tg:
        tg.start_soon(feed, source)
        await a.join("stall")
        await b.join("stall")
        await until(lambda: rx.count("voice") > 10, timeout=15)
        assert stalled[0] == 0  # the first round really went without candidates
        assert rx.remotes[0].state == "connected"
        assert states[0] == "connecting"
        assert states[-1] == "connected"
        tg.cancel_scope.cancel()


async def test_three_peer_mesh(server: LocalServer) -> None:
    peers = {name: make_peer(server.port, name) for name in ("peer-a", "peer-b", "peer-c")}
    got: dict[str, set[str]] = {name: set() for name in peers}
    for name, peer in peers.items():

        def joined(ev: PeerJoined, name: str = name) -> None:
            @ev.peer.on(DataChannelOpened)
            def _(dc: DataChannelOpened) -> None:
                dc.channel.on(DCMessage, lambda m: got[name].add(str(m.data)))

            ch = ev.peer.create_data_channel("mesh")

            @ch.on(DCOpen)
            async def _(_: DCOpen) -> None:
                await ch.send(f"{name}->{ev.peer.id}")

        peer.on(PeerJoined, joined)
    async with peers["peer-a"], peers["peer-b"], peers["peer-c"]:
        for peer in peers.values():
            await peer.join("mesh")
        await until(lambda: all(len(v) == 2 for v in got.values()), timeout=20)
    assert got["peer-a"] == {"peer-b->peer-a", "peer-c->peer-a"}
    assert got["peer-c"] == {"peer-a->peer-c", "peer-b->peer-c"}


async def test_data_channel_added_to_a_call_with_media(server: LocalServer) -> None:
    """A channel created after audio was negotiated renegotiates and opens on both sides."""
    a, b = make_peer(server.port, "peer-a"), make_peer(server.port, "peer-b")
    source = AudioSource()
    a.add_track(source, MediaStream(id="voice"))
    rx = Receiver(b)
    inbound = anyio.Event()

    @b.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        ev.peer.on(DataChannelOpened, lambda _: inbound.set())

    async with a, b, anyio.create_task_group() as tg:
        tg.start_soon(feed, source)
        await a.join("late-channel")
        await b.join("late-channel")
        await until(lambda: rx.count("voice") > 10)
        (remote,) = a.remote_peers
        opened = anyio.Event()
        channel = remote.create_data_channel("late")
        channel.on(DCOpen, lambda _: opened.set())
        with anyio.fail_after(10):
            await opened.wait()
            await inbound.wait()
        tg.cancel_scope.cancel()


async def test_reconcile_timeout_after_forced_resubscribes(monkeypatch: pytest.MonkeyPatch) -> None:
    """No roster after a reconnect: two forced resubscribes, then FatalError (PROTOCOL §5.4)."""
    from metered_realtime.adapters.peer_events import FatalError
    from metered_realtime.core.errors import ReconcileTimeoutError
    from tests.proxy import ScriptedServer, ScriptedSocket

    monkeypatch.setattr(MeteredPeer, "RECONCILE_DEADLINE", 0.3)
    subscribes: list[int] = []

    async def script(sock: ScriptedSocket) -> None:
        first = not subscribes
        await sock.welcome("peer-a")
        while True:
            frame = await sock.recv()
            if frame["type"] == "subscribe":
                subscribes.append(1)
                await sock.send({"type": "ack", "requestId": frame["requestId"]})
                if first:
                    roster = {
                        "type": "presence",
                        "channel": frame["channel"],
                        "joined": [{"peerId": "peer-b"}],
                        "left": [],
                    }
                    await sock.send(roster)
                    await sock.close(1001, "going away")  # then never another snapshot
                    return

    scripted = ScriptedServer(script)
    async with anyio.create_task_group() as tg:
        await tg.start(scripted.run)
        peer = MeteredPeer(
            api_key="pk_x",
            url=f"ws://127.0.0.1:{scripted.port}",
            loopback_only=True,
            ice_servers=[],
            reconnect=FAST,
        )
        fatal: list[FatalError] = []
        peer.on(FatalError, fatal.append)
        await peer.join("room")
        await until(lambda: bool(fatal), timeout=10)
        assert isinstance(fatal[0].err, ReconcileTimeoutError)
        assert len(subscribes) == 4  # join, replay, two forced resubscribes
        assert peer.state == "reconnecting"
        assert [r.id for r in peer.remote_peers] == ["peer-b"]
        await peer.close()
        tg.cancel_scope.cancel()
