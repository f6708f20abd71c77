// The demo page: the official browser SDK in a call with the Python agent.
// Query parameters (used by the browser tests): token, channel, autojoin=1.
import { MeteredPeer } from "/sdk/index.mjs";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const config = await (await fetch("/demo/config.json")).json();
const channel = params.get("channel") || config.channel;
const token = params.get("token");
$("channel").textContent = channel;

// What the tests read.
const demo = {
  log: [], // progress lines
  chat: [], // {from, kind, text}
  echoes: [], // data-channel replies
  remotes: {}, // id -> state
  heard: null, // the agent's last status report
  peer: null,
  join,
  sendChat,
  sendDataChannel,
  inboundAudio,
};
window.demo = demo;

function log(line) {
  demo.log.push(line);
  console.log("[demo] " + line);
}

function setState(el, state) {
  el.textContent = state;
  el.dataset.state = state;
}

function addChat(from, kind, text, css = "") {
  demo.chat.push({ from, kind, text });
  const line = document.createElement("div");
  line.className = css + (kind === "direct" ? " direct" : "");
  line.textContent = `${from}${kind === "direct" ? " (direct)" : ""}: ${text}`;
  $("chat").append(line);
  $("chat").scrollTop = $("chat").scrollHeight;
}

function renderPresence() {
  const ul = $("presence");
  ul.replaceChildren();
  const ids = Object.keys(demo.remotes);
  if (!ids.length) ul.innerHTML = '<li class="small">nobody else yet</li>';
  for (const id of ids) {
    const li = document.createElement("li");
    const state = document.createElement("span");
    state.className = "state";
    setState(state, demo.remotes[id]);
    li.append(`${id.slice(0, 8)}… `, state);
    ul.append(li);
  }
  const select = $("chat-to");
  const chosen = select.value;
  select.replaceChildren(new Option("everyone (broadcast)", ""));
  for (const id of ids) select.append(new Option(`only ${id.slice(0, 8)}… (direct)`, id));
  select.value = ids.includes(chosen) ? chosen : "";
}

// A level meter on a MediaStream (WebAudio); returns a function that stops it.
let audioContext = null;
function meter(stream, bar) {
  audioContext ??= new AudioContext();
  const source = audioContext.createMediaStreamSource(stream);
  const analyser = audioContext.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let running = true;
  const tick = () => {
    if (!running) return;
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const db = 20 * Math.log10(Math.sqrt(sum / buf.length) || 1e-9);
    bar.style.width = `${Math.max(0, Math.min(100, (db + 60) * (100 / 60)))}%`;
    requestAnimationFrame(tick);
  };
  tick();
  return () => { running = false; source.disconnect(); };
}

const channels = new Map(); // remote id -> our "chat" data channel

async function join() {
  $("join").disabled = true;
  let mic = null;
  try {
    mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    log("no microphone: " + err.name);
  }
  const peer = new MeteredPeer({
    ...(token ? { tokenProvider: async () => token } : { apiKey: config.key }),
    url: location.origin.replace(/^http/, "ws"),
    // Same machine: host candidates are enough, and no STUN server is ever contacted.
    rtcPeerConnectionFactory: (cfg) => new RTCPeerConnection({ ...cfg, iceServers: [] }),
  });
  demo.peer = peer;
  peer.on("state-change", ({ to }) => { setState($("state"), to); log("state " + to); });
  peer.on("error", ({ err }) => log("error " + err.message));
  if (mic) {
    peer.addStream(mic, { role: "mic", label: "browser microphone" });
    meter(mic, $("mic-meter"));
  }

  peer.on("peer-joined", ({ peer: remote }) => {
    log("peer-joined " + remote.id);
    demo.remotes[remote.id] = remote.state;
    renderPresence();
    remote.on("state-change", ({ to }) => { demo.remotes[remote.id] = to; renderPresence(); });
    remote.on("track", ({ track, streams }) => {
      const stream = streams[0] || new MediaStream([track]);
      log(`track ${track.kind} ${stream.id}`);
      if (track.kind !== "audio") return;
      $("agent-audio").srcObject = stream; // Chrome needs an element for WebAudio to get data
      $("agent-audio-info").textContent = `receiving stream ${stream.id} from ${remote.id.slice(0, 8)}…`;
      meter(stream, $("agent-meter"));
    });
    remote.on("data-channel", ({ channel: dc }) => {
      log("data-channel " + dc.label);
      dc.onmessage = (m) => {
        let status = null;
        try { status = JSON.parse(m.data); } catch { /* not a status */ }
        if (status && status.type === "status") {
          demo.heard = status;
          $("heard").textContent = status.level === null
            ? "the agent hears silence from you"
            : `the agent hears you at ${status.level} dBFS (${status.frames} frames so far)`;
        }
      };
    });
    // Our own P2P channel to each peer; the agent echoes what we send on it.
    const dc = remote.pc.createDataChannel("chat");
    channels.set(remote.id, dc);
    dc.onopen = () => log("dc-open " + remote.id);
    dc.onmessage = (m) => { demo.echoes.push(String(m.data)); addChat(remote.id.slice(0, 8), "p2p", m.data, "dc"); };
  });
  peer.on("peer-left", ({ peer: remote }) => {
    log("peer-left " + remote.id);
    delete demo.remotes[remote.id];
    channels.delete(remote.id);
    renderPresence();
  });
  peer.on("data", ({ senderPeerId, data, kind }) => {
    if (data && data.type === "chat") addChat(senderPeerId.slice(0, 8), kind, String(data.text));
  });

  await peer.join(channel);
  $("me").textContent = peer.peerId;
  log("joined " + peer.peerId);
  return peer.peerId;
}

async function sendChat(text, to = "") {
  if (!demo.peer || !text) return;
  if (to) await demo.peer.sendTo(to, { type: "chat", text });
  else await demo.peer.send({ type: "chat", text });
  addChat("me", to ? "direct" : "broadcast", text, "me");
}

function sendDataChannel(text) {
  let sent = 0;
  for (const dc of channels.values()) {
    if (dc.readyState === "open") { dc.send(text); sent += 1; }
  }
  if (sent) addChat("me", "p2p", text, "me dc");
  return sent;
}

// Inbound audio per the browser's own stats: packets and level (0..1).
async function inboundAudio() {
  let packets = 0;
  let level = 0;
  for (const remote of demo.peer ? demo.peer.remotePeers : []) {
    const stats = await remote.pc.getStats();
    stats.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        packets += r.packetsReceived || 0;
        level = Math.max(level, r.audioLevel || 0);
      }
    });
  }
  return { packets, level };
}

$("join").onclick = () => join().catch((err) => log("join failed: " + err.message));
$("chat-form").onsubmit = (e) => {
  e.preventDefault();
  sendChat($("chat-text").value, $("chat-to").value).catch((err) => log("send failed: " + err.message));
  $("chat-text").value = "";
};
$("dc-form").onsubmit = (e) => {
  e.preventDefault();
  if (!sendDataChannel($("dc-text").value)) log("no open data channel yet");
  $("dc-text").value = "";
};
demo.ready = true;
if (params.get("autojoin") === "1") join().catch((err) => log("join failed: " + err.message));
