"""Calls that change, between a Python MeteredPeer and the official JS SDK in headless Chromium.

Renegotiation mid-call (a second Python track), a rebuild of the Python side's connection after
an ICE failure (Chromium must accept the rebuilt connection's offer), the browser leaving (its
``close()`` and closing the tab), signalling without media (JS ``SignallingClient`` ↔ Python
``SignallingClient``) and per-track metadata on video from Chromium's fake camera. Where
politeness matters, both orders run: JWT subs pin the peer ids, and ``a-…`` < ``b-…`` is polite.
Real Chromium, real aiortc, loopback only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import av
import pytest
from playwright.async_api import Error as PlaywrightError

from metered_realtime.adapters.peer import MeteredPeer, RemotePeer
from metered_realtime.adapters.peer_events import (
    ConnectionReset,
    DataChannelOpened,
    DCMessage,
    DCOpen,
    IceCandidateError,
    NegotiationError,
    PeerJoined,
    PeerLeft,
    StreamAdded,
    StreamRemoved,
    Track,
)
from metered_realtime.adapters.server import LocalServer
from metered_realtime.adapters.signalling import SignallingClient
from metered_realtime.core.events import Direct, Message, StateChange
from metered_realtime.media.audio import AudioSource
from metered_realtime.media.frames import iter_frames
from metered_realtime.media.stream import MediaStream
from tests.browser.pages import routes
from tests.wire import DEV_KEY, default_config, mint_token

pytestmark = pytest.mark.anyio

ORDERS = pytest.mark.parametrize(
    ("browser_sub", "python_sub"),
    [("a-browser", "b-python"), ("b-browser", "a-python")],
    ids=["browser-polite", "python-polite"],
)
VOICE = {"role": "voice"}
TONE = bytes(
    b
    for i in range(320)
    for b in (int(8000 * ((i // 8) % 2 * 2 - 1)) & 0xFFFF).to_bytes(2, "little")
)  # 20 ms of a square wave at 16 kHz mono


async def feed(source: AudioSource) -> None:
    """Push a tone (paced by the source's bounded queue) for longer than any test runs."""
    for _ in range(6000):
        await source.push(TONE)


class Call:
    """The Python agent (a ``MeteredPeer`` with a voice track) and the page's JS peer.

    Everything the agent sees is recorded here; ``until`` / ``js`` wait on a condition and fail
    with the diagnostics of both sides."""

    def __init__(self, page: Any, port: int, python_sub: str, *, open_channel: bool = True):
        self.page = page
        self.port = port
        self.agent = MeteredPeer(
            token_provider=lambda: mint_token(python_sub),
            url=f"ws://127.0.0.1:{port}",
            loopback_only=True,
            ice_servers=[],
        )
        self.voice = AudioSource()
        self.agent.add_track(self.voice, MediaStream(id="agent-voice"), VOICE)
        self.frames: dict[str, int] = {}  # stream id (or track kind) → frames received
        self.video: list[av.VideoFrame] = []
        self.tracks: list[Track] = []
        self.added: list[StreamAdded] = []
        self.removed: list[StreamRemoved] = []
        self.states: list[str] = []
        self.resets = 0
        self.problems: list[Any] = []
        self.chat: list[str] = []
        self.left: list[PeerLeft] = []
        self.remotes: list[RemotePeer] = []
        self.channel: Any = None
        self.channel_open = False
        self.open_channel = open_channel
        self.agent.on(PeerJoined, self._joined)
        self.agent.on(PeerLeft, self.left.append)

    async def __aenter__(self) -> Call:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.agent.close()  # also when the test failed: no peer outlives its test

    def _joined(self, ev: PeerJoined) -> None:
        remote = ev.peer
        self.remotes.append(remote)
        remote.on(StreamAdded, self.added.append)
        remote.on(StreamRemoved, self.removed.append)
        remote.on(NegotiationError, self.problems.append)
        remote.on(IceCandidateError, self.problems.append)
        remote.on(StateChange, lambda s: self.states.append(s.to))

        @remote.on(ConnectionReset)
        def _(_: ConnectionReset) -> None:
            self.resets += 1

        @remote.on(Track)
        async def _(t: Track) -> None:
            self.tracks.append(t)
            key = t.streams[0].id if t.streams else t.track.kind
            key = f"{key}/{t.track.kind}"
            async for frame in iter_frames(t.track):
                self.frames[key] = self.frames.get(key, 0) + 1
                if isinstance(frame, av.VideoFrame) and len(self.video) < 50:
                    self.video.append(frame)

        @remote.on(DataChannelOpened)
        def _(dc: DataChannelOpened) -> None:
            dc.channel.on(DCMessage, lambda m: self.chat.append(f"{dc.channel.label}:{m.data}"))

        if self.open_channel:
            channel = self.channel = remote.create_data_channel("from-python")
            channel.on(DCMessage, lambda m: self.chat.append(f"from-python:{m.data}"))

            @channel.on(DCOpen)
            def _(_: DCOpen) -> None:
                self.channel_open = True

    def count(self, stream_id: str, kind: str = "audio") -> int:
        return self.frames.get(f"{stream_id}/{kind}", 0)

    async def start_browser(self, browser_sub: str, room: str, **opts: Any) -> dict[str, Any]:
        await self.page.goto(f"http://127.0.0.1:{self.port}/call.html")
        await self.js("() => window.ready === true", "the page's module script", 10)
        info: dict[str, Any] = await self.page.evaluate(
            "([t, c, o]) => window.start(t, c, o)", [mint_token(browser_sub), room, opts]
        )
        assert info["peerId"] == browser_sub
        return info

    async def diagnostics(self) -> str:
        try:
            log, problems = await self.page.evaluate("() => [window.log, window.problems]")
        except PlaywrightError as exc:
            log, problems = f"(page gone: {exc.message})", None
        remote = self.remotes[-1] if self.remotes else None
        pc = remote.pc if remote else None
        pcs = (pc.connectionState, pc.iceConnectionState, pc.signalingState) if pc else "no pc"
        return (
            f"\n python: remote states {self.states}, pc {pcs}, resets {self.resets}, "
            f"problems {self.problems!r}, frames {self.frames}, chat {self.chat}, "
            f"left {len(self.left)}, removed {[s.stream.id for s in self.removed]}"
            f"\n browser log: {log}\n browser problems: {problems}"
            f"\n console: {self.page.logs[-40:]}"
        )

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
        try:
            with anyio.fail_after(timeout):
                while not predicate():
                    await anyio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}{await self.diagnostics()}"
            ) from None

    async def js(self, expr: str, what: str, timeout: float = 10, arg: Any = None) -> Any:
        try:
            handle = await self.page.wait_for_function(expr, arg=arg, timeout=timeout * 1000)
        except PlaywrightError as exc:  # playwright's TimeoutError is one of its Errors
            raise AssertionError(
                f"timed out waiting for {what} ({exc.message.splitlines()[0]})"
                f"{await self.diagnostics()}"
            ) from None
        return await handle.json_value()

    async def inbound(self, stream_id: str) -> dict[str, int]:
        """The browser's inbound RTP packets per SSRC for the tracks of ``stream_id``."""
        packets: dict[str, int] = await self.page.evaluate(
            "(s) => window.inboundBySsrc(s)", stream_id
        )
        return packets

    async def inbound_grows(self, stream_id: str, by: int, what: str, timeout: float = 10) -> None:
        """Wait until the browser received ``by`` more packets of ``stream_id`` than now."""
        since = await self.inbound(stream_id)
        await self.js(
            "async ([s, since, by]) => {"
            "  const now = await window.inboundBySsrc(s);"
            "  let grown = 0;"
            "  for (const [k, v] of Object.entries(now)) grown += v - (since[k] || 0);"
            "  return grown >= by; }",
            what,
            timeout,
            [stream_id, since, by],
        )

    async def heard_more(self, stream_id: str, by: int, what: str, timeout: float = 10) -> None:
        """Wait until Python received ``by`` more audio frames of ``stream_id`` than now."""
        since = self.count(stream_id)
        await self.until(lambda: self.count(stream_id) >= since + by, what, timeout)

    async def established(self, browser: dict[str, Any]) -> None:
        """Audio flows both ways and (when asked for) both data channels are open."""
        mic = browser["streamId"]
        await self.until(lambda: self.count(mic) > 25, "the browser's microphone in Python")
        await self.inbound_grows("agent-voice", 25, "the agent's voice in the browser")
        if self.open_channel:
            await self.until(lambda: self.channel_open, "the Python channel to open")
            await self.js("() => window.log.includes('own-open')", "the browser channel to open")

    async def clean(self) -> None:
        """Neither side saw a negotiation or candidate error."""
        problems = await self.page.evaluate("() => window.problems")
        assert problems == [], await self.diagnostics()
        assert self.problems == [], await self.diagnostics()


def _server() -> LocalServer:
    return LocalServer(default_config(), port=0, static=routes())


@ORDERS
async def test_python_adds_a_second_track_mid_call(
    browser_page: Any, browser_sub: str, python_sub: str
) -> None:
    """Renegotiation: a second Python track reaches the browser with its stream id and
    metadata, on the same connection, while the first track and the data channels keep going."""
    async with (
        _server() as server,
        Call(browser_page, server.port, python_sub) as call,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(feed, call.voice)
        browser = await call.start_browser(browser_sub, "renegotiate")
        await call.agent.join("renegotiate")
        await call.established(browser)
        (remote,) = call.agent.remote_peers
        pc, resets = remote.pc, call.resets

        second = AudioSource()
        tg.start_soon(feed, second)
        call.agent.add_track(second, MediaStream(id="second-voice"), {"role": "second"})
        await call.js(
            """() => window.log.includes('track audio second-voice {"role":"second"}')""",
            "the second track (stream id and metadata) in the browser",
        )
        await call.inbound_grows("second-voice", 25, "the second track's packets")
        await call.inbound_grows("agent-voice", 25, "the first track after renegotiation")
        await call.heard_more(browser["streamId"], 25, "the browser's microphone after it")
        await call.channel.send("after renegotiation")
        await call.until(
            lambda: "from-python:echo:after renegotiation" in call.chat,
            "the data channel's echo after renegotiation",
        )
        log = await browser_page.evaluate("() => window.log")
        assert any(line.startswith("track audio agent-voice ") for line in log)
        assert remote.pc is pc  # renegotiated on the same connection, never rebuilt
        assert call.resets == resets
        assert call.states == ["connecting", "connected"]
        await call.clean()
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("second_track", [False, True], ids=["one-track", "after-second-track"])
@ORDERS
async def test_rebuilt_python_connection_is_accepted_by_chromium(
    browser_page: Any,
    browser_sub: str,
    python_sub: str,
    second_track: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ICE recovery: every datagram reaching the Python side's ICE sockets is dropped (the seam
    of tests/peer/test_peer_calls.py::test_ice_failure_recovers, with aioice's consent checks
    sped up), so aioice's consent expires, the connection fails and the recovery ladder
    rebuilds it: a new RTCPeerConnection whose offer (new ICE credentials, new DTLS
    certificate) Chromium applies to its existing connection without a negotiation error.

    ``after-second-track``: a second Python track was added after the data channels, so the
    negotiated m-lines are audio, application, audio — an order aiortc never generates on a
    fresh connection; the rebuilt offer must still keep it (and the mids)."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 2)
    async with (
        _server() as server,
        Call(browser_page, server.port, python_sub) as call,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(feed, call.voice)
        browser = await call.start_browser(browser_sub, "rebuild")
        await call.agent.join("rebuild")
        await call.established(browser)
        if second_track:
            second = AudioSource()
            tg.start_soon(feed, second)
            call.agent.add_track(second, MediaStream(id="second-voice"), {"role": "second"})
            await call.inbound_grows("second-voice", 25, "the second track's packets")
        (remote,) = call.agent.remote_peers
        pc = remote.pc
        connected_before = len(call.states)
        added_before = len(call.added)

        def drop_datagrams() -> None:
            for transport in pc._RTCPeerConnection__iceTransports:
                for protocol in transport.iceGatherer._connection._protocols:
                    protocol.datagram_received = lambda data, addr: None

        drop_datagrams()
        await call.until(lambda: "reconnecting" in call.states, "the ICE failure")
        await call.until(
            lambda: remote.state == "connected" and remote.pc is not pc,
            "the rebuilt connection to connect",
        )
        await call.inbound_grows("agent-voice", 25, "the agent's voice after the rebuild")
        await call.heard_more(browser["streamId"], 25, "the browser's microphone after it")
        if second_track:
            await call.inbound_grows("second-voice", 25, "the second track after the rebuild")
        assert call.states[connected_before - 1 :] == ["connected", "reconnecting", "connected"]
        assert call.resets >= 1
        assert call.removed == []  # a failed connection is not a removed stream
        # the new connection's stream is a new object with the same id: StreamAdded again
        assert [s.stream.id for s in call.added[added_before:]] == [browser["streamId"]]
        await call.clean()
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("how", "browser_sub", "python_sub"),
    [("close", "a-browser", "b-python"), ("tab", "b-browser", "a-python")],
    ids=["peer-close-browser-polite", "tab-close-python-polite"],
)
async def test_browser_leaving(
    browser_page: Any, how: str, browser_sub: str, python_sub: str
) -> None:
    """The browser's ``peer.close()`` — or closing its tab — ends the call in Python:
    ``PeerLeft`` for it, ``StreamRemoved`` for its stream, no remote peers left."""
    async with (
        _server() as server,
        Call(browser_page, server.port, python_sub) as call,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(feed, call.voice)
        browser = await call.start_browser(browser_sub, "leaving")
        await call.agent.join("leaving")
        await call.established(browser)
        (remote,) = call.agent.remote_peers
        assert [s.stream.id for s in call.added] == [browser["streamId"]]
        if how == "close":
            await browser_page.evaluate("() => window.peer.close()")
        else:
            await browser_page.close()
        await call.until(lambda: bool(call.left), f"PeerLeft after the browser's {how}")
        assert [ev.peer for ev in call.left] == [remote]
        assert remote.id == browser_sub
        await call.until(lambda: bool(call.removed), "StreamRemoved for the browser's stream")
        assert [s.stream.id for s in call.removed] == [browser["streamId"]]
        assert call.agent.remote_peers == []
        assert remote.state == "closed"
        assert remote.pc is None
        assert call.agent.state == "joined"  # the agent stays in the channel
        assert call.problems == []
        tg.cancel_scope.cancel()


async def test_signalling_only_between_js_and_python_clients(browser_page: Any) -> None:
    """JS ``SignallingClient`` ↔ Python ``SignallingClient``: broadcasts both ways with the
    right sender ids, and directed messages both ways."""
    page = browser_page
    async with _server() as server:
        py = SignallingClient(api_key=DEV_KEY, url=f"ws://127.0.0.1:{server.port}")
        messages: list[Message] = []
        directs: list[Direct] = []
        py.on(Message, messages.append)
        py.on(Direct, directs.append)
        async with py:  # connects
            await py.subscribe("news/lobby")
            py_id = py.peer_id
            assert py_id
            await page.goto(f"http://127.0.0.1:{server.port}/signal.html")
            await page.wait_for_function("() => window.ready === true", timeout=10_000)
            js_id = await page.evaluate(
                "(token) => window.connect({token})", mint_token("js-client")
            )
            assert js_id == "js-client"
            await page.evaluate("() => window.client.subscribe('news/lobby')")

            async def diagnostics() -> str:
                seen = await page.evaluate("() => window.seen")
                return f"python {messages} {directs}; browser {seen}; console {page.logs}"

            async def until(predicate: Callable[[], bool], what: str) -> None:
                try:
                    with anyio.fail_after(10):
                        while not predicate():
                            await anyio.sleep(0.02)
                except TimeoutError:
                    problem = f"timed out waiting for {what}: {await diagnostics()}"
                    raise AssertionError(problem) from None

            async def in_browser(name: str) -> Any:
                try:
                    got = await page.wait_for_function(
                        "(n) => window.seen.find((e) => e.name === n)", arg=name, timeout=10_000
                    )
                except PlaywrightError:
                    problem = f"no {name!r} in the browser: {await diagnostics()}"
                    raise AssertionError(problem) from None
                return (await got.json_value())["ev"]

            # browser → Python, broadcast then direct
            await page.evaluate(
                "() => window.client.publish('news/lobby', {hello: 'from js', n: [1, 2]})"
            )
            await until(lambda: bool(messages), "the browser's broadcast in Python")
            (msg,) = messages
            assert (msg.channel, msg.sender_peer_id) == ("news/lobby", js_id)
            assert msg.data == {"hello": "from js", "n": [1, 2]}
            await page.evaluate("(to) => window.client.send(to, 'psst from js é')", py_id)
            await until(lambda: bool(directs), "the browser's direct message in Python")
            assert (directs[0].sender_peer_id, directs[0].data) == (js_id, "psst from js é")

            # Python → browser, broadcast then direct
            await py.publish("news/lobby", {"hello": "from python", "ok": True})
            ev = await in_browser("message")
            assert (ev["channel"], ev["from"]) == ("news/lobby", py_id)
            assert ev["data"] == {"hello": "from python", "ok": True}
            await py.send(js_id, [3, "four"])
            ev = await in_browser("direct")
            assert (ev["from"], ev["data"]) == (py_id, [3, "four"])
            assert len(messages) == 1  # the publisher does not hear its own broadcast
            await page.evaluate("() => window.client.close()")


@ORDERS
async def test_browser_camera_and_microphone_with_per_track_metadata(
    browser_page: Any, browser_sub: str, python_sub: str
) -> None:
    """Chromium's fake camera and microphone, added with ``addTrack`` and different metadata
    per track: Python decodes ``av.VideoFrame``s and sees each track's own metadata; the
    browser sees the Python stream id and its metadata."""
    camera = {"role": "camera", "label": "fake camera"}
    mic = {"role": "mic", "label": "fake microphone"}
    async with (
        _server() as server,
        Call(browser_page, server.port, python_sub, open_channel=False) as call,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(feed, call.voice)
        browser = await call.start_browser(
            browser_sub,
            "camera",
            video=True,
            channel=False,
            perTrack={"video": camera, "audio": mic},
        )
        await call.agent.join("camera")
        stream = browser["streamId"]
        await call.until(lambda: len(call.video) >= 10, "video frames from the fake camera")
        await call.until(lambda: call.count(stream) > 25, "the browser's microphone in Python")
        await call.inbound_grows("agent-voice", 25, "the agent's voice in the browser")
        by_kind = {t.track.kind: t for t in call.tracks}
        assert sorted(by_kind) == ["audio", "video"]
        assert by_kind["video"].metadata == camera
        assert by_kind["audio"].metadata == mic
        assert [s.id for s in by_kind["video"].streams] == [stream]
        assert [s.id for s in by_kind["audio"].streams] == [stream]
        assert [s.stream.id for s in call.added] == [stream]
        assert call.added[0].metadata in (camera, mic)  # the first track's (JS SDK's rule)
        frame = call.video[-1]
        assert frame.width > 0
        assert frame.height > 0
        # The browser sees the Python stream id. (Not its metadata: the browser's offer made
        # this m-line, and the JS SDK looks metadata up by the receiving track's id, which
        # Chromium chose at random for its own transceiver — see the renegotiation test for
        # metadata on an m-line Python offered.)
        log = await browser_page.evaluate("() => window.log")
        assert any(line.startswith("track audio agent-voice ") for line in log)
        await call.clean()
        tg.cancel_scope.cancel()
