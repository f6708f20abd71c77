"""Page snippets for the browser tests: the official JS SDK driven from a small HTML page.

``CALL_PAGE`` holds one JS ``MeteredPeer`` (``window.start(token, channel, opts)``) that logs
everything a test may wait on into ``window.log`` and every ``negotiation-error`` /
``ice-candidate-error`` into ``window.problems``; ``window.inboundBySsrc(streamId)`` gives
the ``packetsReceived`` of each inbound RTP stream (by SSRC) carrying that stream's tracks.
``SIGNAL_PAGE`` holds one JS ``SignallingClient`` (``window.connect(opts)``, events in
``window.seen``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.browser.conftest import SDK, static_routes

__all__ = ["CALL_PAGE", "SIGNAL_PAGE", "routes"]

CALL_PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>js call</title>
<script type="module">
import { MeteredPeer } from "/sdk/index.mjs";
window.log = [];
window.problems = [];
window.tracks = {};
const note = (line) => window.log.push(line);
const problem = (kind) => ({ err }) =>
  window.problems.push(kind + " " + (err && err.name) + ": " + (err && err.message));
window.start = async (token, channel, opts) => {
  opts = opts || {};
  const local = await navigator.mediaDevices.getUserMedia({
    audio: opts.audio !== false,
    video: !!opts.video,
  });
  const peer = new MeteredPeer({
    tokenProvider: async () => token,
    url: location.origin.replace("http", "ws"),
    rtcPeerConnectionFactory: (cfg) => new RTCPeerConnection({ ...cfg, iceServers: [] }),
  });
  window.peer = peer;
  window.local = local;
  if (opts.perTrack) {
    for (const track of local.getTracks()) peer.addTrack(track, local, opts.perTrack[track.kind]);
  } else {
    peer.addStream(local, opts.metadata || { role: "mic" });
  }
  peer.on("peer-joined", ({ peer: remote }) => {
    note("peer-joined " + remote.id);
    window.remote = remote;
    remote.on("state-change", ({ to }) => note("state " + to));
    remote.on("negotiation-error", problem("negotiation-error"));
    remote.on("ice-candidate-error", problem("ice-candidate-error"));
    remote.on("connection-reset", () => note("connection-reset"));
    remote.on("track", ({ track, streams, metadata }) => {
      const sid = streams[0] ? streams[0].id : "-";
      const meta = JSON.stringify(metadata === undefined ? null : metadata);
      note("track " + track.kind + " " + sid + " " + meta);
      (window.tracks[sid] = window.tracks[sid] || []).push(track);
    });
    remote.on("stream-added", ({ stream }) => note("stream-added " + stream.id));
    remote.on("data-channel", ({ channel }) => {
      note("data-channel " + channel.label);
      channel.onmessage = (m) => {
        note("dc-message " + m.data);
        channel.send("echo:" + m.data);
      };
    });
    if (opts.channel !== false) {
      const ours = remote.pc.createDataChannel("from-browser");
      window.own = ours;
      ours.onopen = () => note("own-open");
      ours.onmessage = (m) => note("own-message " + m.data);
    }
  });
  peer.on("peer-left", ({ peer: remote }) => note("peer-left " + remote.id));
  await peer.join(channel);
  const ids = {};
  for (const track of local.getTracks()) ids[track.kind] = track.id;
  return { peerId: peer.peerId, streamId: local.id, trackIds: ids };
};
window.inboundBySsrc = async (streamId) => {
  const remote = window.remote;
  const ids = new Set((window.tracks[streamId] || []).map((t) => t.id));
  const packets = {};
  if (!remote || !ids.size) return packets;
  const stats = await remote.pc.getStats();
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && ids.has(r.trackIdentifier)) packets[r.ssrc] = r.packetsReceived;
  });
  return packets;
};
window.ready = true;
</script>
"""

SIGNAL_PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>js signalling</title>
<script type="module">
import { SignallingClient } from "/sdk/index.mjs";
window.seen = [];
window.connect = async (opts) => {
  const url = location.origin.replace("http", "ws");
  const cfg = opts.token
    ? { tokenProvider: async () => opts.token, url }
    : { apiKey: opts.apiKey, url };
  const client = new SignallingClient(cfg);
  const names = ["connected", "message", "direct", "presence", "server-error", "disconnected"];
  for (const name of names) {
    client.on(name, (ev) => window.seen.push({ name, ev: JSON.parse(JSON.stringify(ev)) }));
  }
  await client.connect();
  window.client = client;
  return window.seen.find((e) => e.name === "connected").ev.peerId;
};
window.ready = true;
</script>
"""


def routes() -> Callable[[Any], tuple[int, bytes, str] | None]:
    """``/call.html``, ``/signal.html`` and the SDK at ``/sdk/index.mjs``."""
    return static_routes(
        {
            "/call.html": (CALL_PAGE, "text/html; charset=utf-8"),
            "/signal.html": (SIGNAL_PAGE, "text/html; charset=utf-8"),
            "/sdk/index.mjs": (SDK.read_bytes(), "text/javascript"),
        }
    )
