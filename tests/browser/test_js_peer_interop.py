"""A Python MeteredPeer in a call with the official JS SDK's MeteredPeer in Chromium.

Audio both ways (Chromium's fake microphone, a Python AudioSource), per-track metadata from the
browser into Python, the Python stream id in the browser, and data channels opened from both
sides — in both politeness orders (pinned with JWT subs).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from metered_realtime.adapters.peer import MeteredPeer
from metered_realtime.adapters.peer_events import (
    DataChannelOpened,
    DCMessage,
    DCOpen,
    IceCandidateError,
    NegotiationError,
    PeerJoined,
    StreamAdded,
    Track,
)
from metered_realtime.adapters.server import LocalServer
from metered_realtime.core.jwt import sign_hs256
from metered_realtime.media.audio import AudioSource
from metered_realtime.media.frames import iter_frames
from metered_realtime.media.stream import MediaStream
from tests.browser.conftest import SDK, static_routes
from tests.wire import KID, SECRET, default_config

pytestmark = pytest.mark.anyio

PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>js peer</title>
<script type="module">
import { MeteredPeer } from "/sdk/index.mjs";
window.log = [];
window.ready = true;
window.start = async (token, channel) => {
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  const peer = new MeteredPeer({
    tokenProvider: async () => token,
    url: location.origin.replace("http", "ws"),
    rtcPeerConnectionFactory: (cfg) => new RTCPeerConnection({ ...cfg, iceServers: [] }),
  });
  window.peer = peer;
  window.micStreamId = mic.id;
  peer.addStream(mic, { role: "mic" });
  peer.on("peer-joined", ({ peer: remote }) => {
    window.log.push("peer-joined " + remote.id);
    remote.on("track", ({ track, streams }) => {
      window.log.push("track " + track.kind + " " + (streams[0] ? streams[0].id : "-"));
      window.remoteTrack = track;
    });
    remote.on("data-channel", ({ channel }) => {
      window.log.push("data-channel " + channel.label);
      channel.onmessage = (m) => {
        window.log.push("dc-message " + m.data);
        channel.send("echo:" + m.data);
      };
    });
    const ours = remote.pc.createDataChannel("from-browser");
    ours.onopen = () => { window.log.push("own-open"); ours.send("hello from the browser"); };
  });
  await peer.join(channel);
  return peer.peerId;
};
window.inboundAudio = async () => {
  const remote = window.peer.remotePeers[0];
  if (!remote) return 0;
  const stats = await remote.pc.getStats();
  let packets = 0;
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") packets += r.packetsReceived;
  });
  return packets;
};
</script>
"""


def token(sub: str) -> str:
    claims = {
        "sub": sub,
        "exp": time.time() + 600,
        "channels": ["**"],
        "permissions": ["subscribe", "publish", "presence", "send"],
    }
    return sign_hs256(claims, SECRET, KID)


async def feed(source: AudioSource) -> None:
    tone = bytes(
        b
        for i in range(320)
        for b in (int(8000 * ((i // 8) % 2 * 2 - 1)) & 0xFFFF).to_bytes(2, "little")
    )
    for _ in range(3000):
        await source.push(tone)


@pytest.mark.parametrize(
    ("browser_sub", "python_sub"),
    [("a-browser", "b-python"), ("b-browser", "a-python")],
    ids=["browser-polite", "python-polite"],
)
async def test_python_agent_and_browser_human_in_one_call(
    browser_page: Any, browser_sub: str, python_sub: str
) -> None:
    page = browser_page
    routes = static_routes(
        {
            "/peer.html": (PAGE, "text/html; charset=utf-8"),
            "/sdk/index.mjs": (SDK.read_bytes(), "text/javascript"),
        }
    )
    async with (
        LocalServer(default_config(), port=0, static=routes) as server,
        anyio.create_task_group() as tg,
    ):
        agent = MeteredPeer(
            token_provider=lambda: token(python_sub),
            url=f"ws://127.0.0.1:{server.port}",
            loopback_only=True,
            ice_servers=[],
        )
        voice = AudioSource()
        agent.add_track(voice, MediaStream(id="agent-voice"), {"role": "voice"})
        tg.start_soon(feed, voice)
        heard: list[Any] = []
        total: list[int] = []
        streams: list[StreamAdded] = []
        chat: list[str] = []
        py_channel_open = anyio.Event()

        problems: list[Any] = []

        @agent.on(PeerJoined)
        def _(ev: PeerJoined) -> None:
            ev.peer.on(StreamAdded, streams.append)
            ev.peer.on(NegotiationError, problems.append)
            ev.peer.on(IceCandidateError, problems.append)

            @ev.peer.on(Track)
            async def _(t: Track) -> None:
                async for frame in iter_frames(t.track):
                    total.append(1)
                    if any(bytes(frame.planes[0])):  # non-silent
                        heard.append(frame)

            @ev.peer.on(DataChannelOpened)
            def _(dc: DataChannelOpened) -> None:
                dc.channel.on(DCMessage, lambda m: chat.append(f"{dc.channel.label}:{m.data}"))

            channel = ev.peer.create_data_channel("from-python")
            channel.on(DCMessage, lambda m: chat.append(f"from-python:{m.data}"))

            @channel.on(DCOpen)
            async def _(_: DCOpen) -> None:
                py_channel_open.set()
                await channel.send("hello from python")

        await page.goto(f"http://127.0.0.1:{server.port}/peer.html")
        await page.wait_for_function("() => window.ready === true", timeout=10_000)
        browser_id = await page.evaluate(
            "([t, c]) => window.start(t, c)", [token(browser_sub), "call"]
        )
        assert browser_id == browser_sub
        await agent.join("call")
        try:
            with anyio.fail_after(20):
                while len(heard) < 50 or not py_channel_open.is_set() or len(chat) < 2:
                    await anyio.sleep(0.05)
            await page.wait_for_function("() => window.log.includes('own-open')", timeout=20_000)
            await page.wait_for_function(
                "() => window.log.some((l) => l === 'dc-message hello from python')", timeout=20_000
            )
            await page.wait_for_function(
                "async () => (await window.inboundAudio()) > 20", timeout=20_000
            )
        except TimeoutError:
            logs = await page.evaluate("() => window.log")
            remote = agent.remote_peers[0] if agent.remote_peers else None
            pc = remote.pc if remote else None
            pcs = (
                (remote.state, pc.connectionState, pc.iceConnectionState, pc.signalingState)
                if pc
                else None
            )
            raise AssertionError(
                f"{pcs} {problems} browser log: {logs}; console: {page.logs}; "
                f"chat: {chat}; heard: {len(heard)} of {len(total)}"
            ) from None
        logs = await page.evaluate("() => window.log")
        mic_stream = await page.evaluate("() => window.micStreamId")
        assert "track audio agent-voice" in logs  # the browser sees the Python stream id
        assert [s.stream.id for s in streams] == [mic_stream]
        assert streams[0].metadata == {"role": "mic"}  # browser → Python metadata (P29)
        assert "from-browser:hello from the browser" in chat
        assert "from-python:echo:hello from python" in chat
        await agent.close()
        tg.cancel_scope.cancel()
