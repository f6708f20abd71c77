"""MeteredPeer under trio: aiortc on the bridge thread, everything the user sees on trio.

Real aiortc through the local server, loopback-only ICE, trio only (the same peer tests run on
both backends in ``test_peer.py`` / ``test_peer_calls.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import trio
import trio.lowlevel

from metered_realtime.adapters import bridge
from metered_realtime.adapters.datachannel import DataChannel
from metered_realtime.adapters.peer import MeteredPeer
from metered_realtime.adapters.peer_events import (
    DataChannelOpened,
    DCClose,
    DCMessage,
    DCOpen,
    Joined,
    PeerJoined,
    PeerLeft,
    Track,
)
from metered_realtime.adapters.server import LocalServer
from metered_realtime.adapters.signalling import SignallingClient
from metered_realtime.core.errors import MeteredRealtimeError
from metered_realtime.media.audio import AudioSource
from metered_realtime.media.frames import iter_frames
from metered_realtime.media.stream import MediaStream
from tests.peer.common import make_peer
from tests.wire import mint_token

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


def mint_for(sub: str) -> Callable[[], str]:
    return lambda: mint_token(sub)


class Recorder:
    """A custom logger (user code): records which thread each call came on."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str]] = []

    def _record(self, level: str, msg: str) -> None:
        self.calls.append((threading.get_ident(), level, msg))

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._record("debug", msg)

    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._record("info", msg)

    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._record("warning", msg)

    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._record("error", msg)


def leftover_threads() -> list[str]:
    """Threads the bridge or aiortc could leave behind."""
    names = (bridge.THREAD_NAME, "AnyIO worker thread")
    return [
        t.name
        for t in threading.enumerate()
        if t.is_alive() and (t.name in names or t.name.endswith("-decoder"))
    ]


def sdk_trio_tasks() -> list[str]:
    """Trio tasks of this run that belong to the SDK's peers (their system tasks)."""
    found: list[str] = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task.name.startswith("metered_realtime:MeteredPeer"):
            found.append(task.name)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


async def wait_for(event: trio.Event, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        await event.wait()


async def test_bare_lifecycle_leaves_nothing_running(server: LocalServer) -> None:
    """join/close without ``async with`` or a caller task group, media and a data channel in
    between; once the last peer closes, the bridge thread and every aiortc thread are gone."""
    assert bridge.running() is None
    a, b = make_peer(server.port, "peer-a"), make_peer(server.port, "peer-b")
    loop_bridge = bridge.running()
    assert loop_bridge is not None
    assert loop_bridge.thread.is_alive()
    source = AudioSource()
    a.add_track(source, MediaStream(id="voice"))
    frames = trio.Event()
    message = trio.Event()
    channels: list[DataChannel] = []

    @a.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        channel = ev.peer.create_data_channel("bare")
        channels.append(channel)

        @channel.on(DCOpen)
        async def _(_: DCOpen) -> None:
            await channel.send("hi")

    @b.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        @ev.peer.on(Track)
        async def _(t: Track) -> None:
            count = 0
            async for _frame in iter_frames(t.track):
                count += 1
                if count == 5:
                    frames.set()

        ev.peer.on(DataChannelOpened, lambda dc: dc.channel.on(DCMessage, lambda _: message.set()))

    await a.join("bare")
    await b.join("bare")
    await source.push(b"\x00\x10" * 16_000)
    await wait_for(frames)
    await wait_for(message)
    (channel,) = channels
    assert DataChannel(channel) is channel  # wrapping a wrapper returns it
    assert (channel.label, channel.ready_state) == ("bare", "open")
    assert [r.id for r in a.remote_peers] == ["peer-b"]
    assert sdk_trio_tasks() == ["metered_realtime:MeteredPeer"] * 2
    await a.close()
    assert loop_bridge.thread.is_alive()  # b still holds it
    await b.close()
    assert bridge.running() is None
    assert not loop_bridge.thread.is_alive()
    assert leftover_threads() == []
    assert sdk_trio_tasks() == []
    await b.close()  # closing again is a no-op
    assert bridge.running() is None


async def test_handlers_logger_and_token_provider_run_on_the_trio_thread(
    server: LocalServer,
) -> None:
    me = threading.get_ident()
    seen: dict[str, int] = {}
    log = Recorder()

    async def async_mint() -> str:
        await trio.sleep(0)  # trio-only: this would fail on the aiortc thread's asyncio loop
        seen["token_provider"] = threading.get_ident()
        return mint_for("peer-a")()

    a = make_peer(server.port, "peer-a", token_provider=async_mint, logger=log)
    b = make_peer(server.port, "peer-b")
    a.add_track(AudioSource(logger=log))  # its recv() logs from the aiortc thread (underruns)
    got = trio.Event()
    joined_events: list[PeerJoined] = []

    @a.on(Joined)
    async def _(_: Joined) -> None:
        seen["async handler"] = threading.get_ident()

    @a.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        seen["sync handler"] = threading.get_ident()
        channel = ev.peer.create_data_channel("threads")

        @channel.on(DCOpen)
        async def _(_: DCOpen) -> None:
            await channel.send("ping")

    @b.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        @ev.peer.on(DataChannelOpened)
        def _(dc: DataChannelOpened) -> None:
            @dc.channel.on(DCMessage)
            def _(m: DCMessage) -> None:
                seen["channel handler"] = threading.get_ident()
                got.set()

    async def consume() -> None:
        async for ev in a.events(PeerJoined):
            seen["events() iterator"] = threading.get_ident()
            joined_events.append(ev)
            return

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await a.join("threads")
            await b.join("threads")
            await wait_for(got)
    finally:
        await a.close()
        await b.close()
    assert set(seen) == {
        "token_provider",
        "async handler",
        "sync handler",
        "channel handler",
        "events() iterator",
    }
    assert set(seen.values()) == {me}
    assert log.calls, "the SDK logs while connecting"
    assert {ident for ident, _, _ in log.calls} == {me}
    assert joined_events[0].peer.id == "peer-b"
    assert isinstance(joined_events[0].peer.state, str)


async def test_cancelling_a_pending_join_is_clean() -> None:
    """A server that accepts and never answers: join() is cancelled promptly, nothing leaks."""
    held: list[anyio.abc.SocketStream] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def hold(stream: anyio.abc.SocketStream) -> None:
        held.append(stream)
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        peer = make_peer(port, "peer-a")
        try:
            started = trio.current_time()
            with trio.move_on_after(0.3) as scope:
                await peer.join("room")
            assert scope.cancelled_caught
            assert trio.current_time() - started < 1.5
            assert peer.state == "idle"
        finally:
            await peer.close()
        assert peer.state == "closed"
        tg.cancel_scope.cancel()
    assert bridge.running() is None
    assert leftover_threads() == []


async def test_cancelling_a_pending_send_is_clean(server: LocalServer) -> None:
    """A data channel to a member that never answers stays ``connecting``: a send waits on the
    aiortc thread; cancelling it from trio returns promptly and leaves the peer usable."""
    a = make_peer(server.port, "peer-a")
    silent = SignallingClient(
        token_provider=mint_for("peer-b"), url=f"ws://127.0.0.1:{server.port}"
    )
    channels: list[DataChannel] = []
    a.on(PeerJoined, lambda ev: channels.append(ev.peer.create_data_channel("never")))
    try:
        await silent.connect()
        await silent.subscribe("room")
        await a.join("room")
        with trio.fail_after(5):
            while not channels:
                await trio.sleep(0.01)
        (channel,) = channels
        for _ in range(2):
            started = trio.current_time()
            with trio.move_on_after(0.2) as scope:
                await channel.send("never delivered")
            assert scope.cancelled_caught
            assert trio.current_time() - started < 1.2
        assert channel.ready_state == "connecting"
        await a.send({"still": "usable"})  # the peer itself is unaffected
    finally:
        await a.close()
        await silent.close()
    assert bridge.running() is None


async def test_sends_then_close_arrive_in_order(server: LocalServer) -> None:
    """Fast-path sends are queued for the aiortc thread; a close() right after them must not
    overtake them."""
    a, b = make_peer(server.port, "peer-a"), make_peer(server.port, "peer-b")
    got: list[str | bytes] = []
    opened, closed = trio.Event(), trio.Event()
    channels: list[DataChannel] = []

    @a.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        channel = ev.peer.create_data_channel("ordered")
        channel.on(DCOpen, lambda _: opened.set())
        channels.append(channel)

    @b.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        @ev.peer.on(DataChannelOpened)
        def _(dc: DataChannelOpened) -> None:
            dc.channel.on(DCMessage, lambda m: got.append(m.data))
            dc.channel.on(DCClose, lambda _: closed.set())

    try:
        await a.join("room")
        await b.join("room")
        await wait_for(opened)
        for i in range(200):
            await channels[0].send(str(i))
        channels[0].close()
        with pytest.raises(MeteredRealtimeError) as refused:
            await channels[0].send("late")
        assert refused.value.code == "channel_closed"
        await wait_for(closed)
    finally:
        await a.close()
        await b.close()
    assert got == [str(i) for i in range(200)]


async def test_a_raising_sync_handler_is_isolated(server: LocalServer) -> None:
    log = Recorder()
    a = make_peer(server.port, "peer-a", logger=log)
    b = make_peer(server.port, "peer-b")
    calls: list[str] = []

    def boom(_: Joined) -> None:
        calls.append("boom")
        raise RuntimeError("handler bug")

    async def async_boom(_: Joined) -> None:
        calls.append("async boom")
        raise RuntimeError("async handler bug")

    a.on(Joined, boom)
    a.on(Joined, async_boom)
    a.on(Joined, lambda _: calls.append("after"))
    seen_b = trio.Event()
    a.on(PeerJoined, lambda _: seen_b.set())
    left = trio.Event()
    a.on(PeerLeft, lambda _: left.set())
    try:
        await a.join("room")
        assert a.state == "joined"
        await b.join("room")
        await wait_for(seen_b)  # later events still arrive
        await b.close()
        await wait_for(left)
    finally:
        await a.close()
        await b.close()
    assert calls[0] == "boom"
    assert "after" in calls
    assert "async boom" in calls
    errors = [msg for _, level, msg in log.calls if level == "error"]
    assert "event handler raised" in errors
    assert "async event handler raised" in errors


async def test_a_custom_track_is_refused(server: LocalServer) -> None:
    """Its recv() would be user code on the aiortc thread."""
    from aiortc.mediastreams import AudioStreamTrack

    class Custom(AudioStreamTrack):
        async def recv(self) -> Any:
            return await super().recv()

    a = make_peer(server.port, "peer-a")
    try:
        with pytest.raises(TypeError, match="push-style"):
            a.add_track(Custom())
        a.add_track(AudioSource())  # push-style is fine
    finally:
        await a.close()
    assert bridge.running() is None


async def test_constructor_errors_leave_no_bridge_running() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        MeteredPeer(url="ws://127.0.0.1:9")
    with pytest.raises(TypeError):
        MeteredPeer(api_key="pk_dev_local", url="ws://127.0.0.1:9", logger=object())
    assert bridge.running() is None
    assert leftover_threads() == []


def test_every_public_member_is_bridged_or_safe() -> None:
    """A public method added to MeteredPeer, RemotePeer or DataChannel must be forwarded by the
    trio classes (or listed as safe on the trio thread)."""
    for base, trio_cls in bridge.TRIO_CLASSES.items():
        public = {name for name in dir(base) if not name.startswith("_")}
        missing = {
            name
            for name in public
            if name not in bridge.SAFE_ON_TRIO[base] and name not in vars(trio_cls)
        }
        assert not missing, f"{trio_cls.__name__} must forward {sorted(missing)}"
