"""``metered-realtime demo``: a browser human and a Python agent in one call, on the local server.

One process runs the local server (which also serves the demo page at ``/demo`` and the
official browser SDK at ``/sdk/index.mjs``) and a Python agent — a :class:`MeteredPeer` that
greets by chat, speaks through an :class:`AudioSource`, listens to the browser's microphone with
:func:`iter_frames` and echoes data-channel messages. ``--headless`` puts a second Python peer
where the browser would be, on loopback-only ICE, and exits after ``--seconds`` with a summary.

The pieces (:func:`page_routes`, :class:`Agent`, :class:`HeadlessHuman`) are reused by the
browser tests.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import importlib.resources
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metered_realtime.adapters.log import as_logger
from metered_realtime.adapters.runtime import BackgroundTasks

__all__ = [
    "DEFAULT_CHANNEL",
    "Agent",
    "AgentStats",
    "HeadlessHuman",
    "Speech",
    "find_sdk",
    "level_dbfs",
    "main",
    "page_routes",
]

DEFAULT_CHANNEL = "demo/room"
SDK_RELATIVE = Path("web/node_modules/@metered-ca/realtime/dist/index.mjs")
SILENT_DBFS = -60.0  # quieter than this counts as silence
GREETING = "Hello! I am a Python agent, talking to you through the local Metered server."
PHRASES = (
    "I can hear your microphone. Say something, or type in the chat.",
    "Messages you send over the data channel come straight back to you.",
    "Everything here runs on this machine. No cloud account needed.",
)


def find_sdk(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The official browser SDK (``dist/index.mjs`` of ``@metered-ca/realtime``), or ``None``.

    Looked for at ``explicit``, ``$METERED_JS_SDK``, ``./web/node_modules/...`` and next to this
    package's source tree (editable installs); ``npm ci --prefix web`` puts it there.
    """
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("METERED_JS_SDK"):
        candidates.append(Path(os.environ["METERED_JS_SDK"]))
    candidates.append(Path.cwd() / SDK_RELATIVE)
    candidates.append(Path(__file__).resolve().parents[1] / SDK_RELATIVE)
    for path in candidates:
        if path.is_file():
            return path
    return None


def _page_file(name: str) -> bytes:
    return importlib.resources.files("metered_realtime").joinpath("demo_page", name).read_bytes()


StaticAnswer = tuple[int, bytes, str]


def page_routes(
    sdk: Path, *, channel: str = DEFAULT_CHANNEL, key: str | None = "pk_dev_local"
) -> Callable[[Any], StaticAnswer | None]:
    """A ``LocalServer`` static handler: ``/demo`` (page), its script and config, and the SDK.

    The page reads ``/demo/config.json`` (channel and publishable key); query parameters
    ``?token=…&channel=…&autojoin=1`` override it (the browser tests pin peer ids that way).
    """
    files: dict[str, StaticAnswer] = {
        "/demo": (200, _page_file("index.html"), "text/html; charset=utf-8"),
        "/demo/": (200, _page_file("index.html"), "text/html; charset=utf-8"),
        "/demo/app.js": (200, _page_file("app.js"), "text/javascript; charset=utf-8"),
        "/demo/config.json": (
            200,
            json.dumps({"channel": channel, "key": key}).encode(),
            "application/json",
        ),
        "/sdk/index.mjs": (200, sdk.read_bytes(), "text/javascript; charset=utf-8"),
        "/": (200, b'<!doctype html><a href="/demo">the demo is at /demo</a>', "text/html"),
    }

    def handler(request: Any) -> StaticAnswer | None:
        if request.method != "GET":
            return None
        return files.get(request.path)

    return handler


# --- audio helpers ------------------------------------------------------------------------


def level_dbfs(frame: Any) -> float:
    """RMS level of an s16 ``av.AudioFrame`` in dBFS (every 4th sample; ``-inf`` if silent)."""
    channels = len(frame.layout.channels)
    pcm = array.array("h")
    pcm.frombytes(bytes(frame.planes[0])[: frame.samples * channels * 2])
    sub = pcm[::4]
    if not sub:
        return -math.inf
    rms = math.sqrt(sum(s * s for s in sub) / len(sub))
    return 20 * math.log10(rms / 32768) if rms >= 1 else -math.inf


def _tone(freqs: tuple[float, ...], seconds: float, rate: int, level: float = 0.25) -> bytes:
    n = int(rate * seconds)
    fade = max(1, int(rate * 0.01))
    out = array.array("h", bytes(2 * n))
    for i in range(n):
        env = min(1.0, i / fade, (n - i) / fade)
        value = sum(math.sin(2 * math.pi * f * i / rate) for f in freqs) / len(freqs)
        out[i] = int(level * env * 32767 * value)
    return out.tobytes()


class Speech:
    """Turns phrases into s16 mono PCM: espeak-ng when installed, else a short chime per phrase."""

    def __init__(self, *, use_espeak: bool | None = None) -> None:
        found = shutil.which("espeak-ng")
        self.espeak = found if (use_espeak is None or use_espeak) and found else None
        self.rate = 22_050 if self.espeak else 16_000

    @property
    def engine(self) -> str:
        return "espeak-ng" if self.espeak else "tones (install espeak-ng for speech)"

    def say(self, text: str) -> bytes:
        """PCM at :attr:`rate` for ``text``."""
        if self.espeak:
            try:
                wav = subprocess.run(
                    [self.espeak, "--stdout", "-s", "165", text],
                    capture_output=True,
                    timeout=10,
                    check=True,
                ).stdout
                with wave.open(io.BytesIO(wav)) as w:
                    if w.getframerate() == self.rate and w.getnchannels() == 1:
                        return bytes(w.readframes(w.getnframes()))
            except (OSError, subprocess.SubprocessError, wave.Error, EOFError):
                pass
        # a chime: three notes whose pitch depends on the phrase, then a rest
        base = 440.0 * 2 ** ((sum(map(ord, text)) % 7) / 12)
        notes = [_tone((base * r, base * r * 2), 0.18, self.rate) for r in (1.0, 1.26, 1.5)]
        return b"".join(notes) + bytes(int(self.rate * 0.1) * 2)


# --- the agent ----------------------------------------------------------------------------


@dataclass
class AgentStats:
    """What the agent did and heard (shown on the status line and in the summary)."""

    peers: set[str] = field(default_factory=set)
    frames_heard: int = 0
    loud_frames: int = 0
    level: float = -math.inf
    chat_in: int = 0
    chat_out: int = 0
    dc_echoes: int = 0
    seconds_spoken: float = 0.0


def _chat(text: str) -> dict[str, str]:
    return {"type": "chat", "text": text}


class Agent:
    """The Python side of the demo: a :class:`MeteredPeer` that talks, listens and echoes."""

    def __init__(
        self,
        *,
        url: str,
        channel: str = DEFAULT_CHANNEL,
        api_key: str | None = None,
        token_provider: Any = None,
        loopback_only: bool = False,
        speech: Speech | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        from metered_realtime import AudioSource, MediaStream, MeteredPeer

        auth: dict[str, Any] = (
            {"token_provider": token_provider} if token_provider else {"api_key": api_key}
        )
        self.peer = MeteredPeer(url=url, ice_servers=[], loopback_only=loopback_only, **auth)
        self.channel = channel
        self.speech = speech or Speech()
        self.voice = AudioSource(input_rate=self.speech.rate)
        self.stream = MediaStream(id="agent-voice")
        self.peer.add_track(self.voice, self.stream, {"role": "voice", "label": "Python agent"})
        self.stats = AgentStats()
        self._say = say
        self._bg = BackgroundTasks(type(self).__name__, as_logger(None))  # logged, not lost
        self._to_speak: asyncio.Queue[str] = asyncio.Queue()
        self._wire()

    def _wire(self) -> None:
        from metered_realtime import (
            Data,
            DataChannelOpened,
            DCMessage,
            PeerJoined,
            PeerLeft,
            StateChange,
            Track,
        )

        peer, stats = self.peer, self.stats

        @peer.on(PeerJoined)
        def _(ev: PeerJoined) -> None:
            remote = ev.peer
            stats.peers.add(remote.id)
            self._say(f"agent: {remote.id} joined the call")
            self._bg.spawn(self._send_to, remote.id, _chat(f"Hi {remote.id[:8]}! {GREETING}"))

            @remote.on(StateChange)
            def _(s: StateChange) -> None:
                self._say(f"agent: connection to {remote.id[:8]}: {s.to}")
                if s.to == "connected" and s.from_ in ("idle", "connecting"):
                    self._to_speak.put_nowait(GREETING)

            @remote.on(Track)
            async def _(t: Track) -> None:
                if t.track.kind != "audio":
                    return
                self._say(f"agent: hearing {remote.id[:8]}'s audio ({t.metadata or {}})")
                await self._listen(t.track)

            @remote.on(DataChannelOpened)
            def _(dc: DataChannelOpened) -> None:
                channel = dc.channel

                @channel.on(DCMessage)
                async def _(m: DCMessage) -> None:
                    stats.dc_echoes += 1
                    data = m.data
                    await channel.send(
                        b"echo: " + data if isinstance(data, bytes) else f"echo: {data}"
                    )

            status = remote.create_data_channel("agent-status")
            self._bg.spawn(self._report, remote, status)

        @peer.on(PeerLeft)
        def _(ev: PeerLeft) -> None:
            stats.peers.discard(ev.peer.id)
            self._say(f"agent: {ev.peer.id} left")

        @peer.on(Data)
        def _(ev: Data) -> None:
            if not (isinstance(ev.data, dict) and ev.data.get("type") == "chat"):
                return
            stats.chat_in += 1
            text = str(ev.data.get("text", ""))[:500]
            self._say(f"agent: chat ({ev.kind}) from {ev.sender_peer_id[:8]}: {text}")
            if ev.kind == "direct":
                reply = _chat(f"(direct) You said: {text}")
                self._bg.spawn(self._send_to, ev.sender_peer_id, reply)
            else:
                self._bg.spawn(self._broadcast, _chat(f"You said: {text}"))

    async def _send_to(self, peer_id: str, data: Any) -> None:
        with contextlib.suppress(Exception):  # the peer may have left meanwhile
            await self.peer.send_to(peer_id, data)
            self.stats.chat_out += 1

    async def _broadcast(self, data: Any) -> None:
        with contextlib.suppress(Exception):
            await self.peer.send(data)
            self.stats.chat_out += 1

    async def _listen(self, track: Any) -> None:
        from metered_realtime import iter_frames

        async for frame in iter_frames(track):
            self.stats.frames_heard += 1
            level = level_dbfs(frame)
            self.stats.level = level
            if level > SILENT_DBFS:
                self.stats.loud_frames += 1

    async def _report(self, remote: Any, channel: Any) -> None:
        """Tell the page what the agent hears, twice a second, over its own data channel."""
        from metered_realtime import DCOpen

        opened = asyncio.Event()
        channel.on(DCOpen, lambda _: opened.set())
        await opened.wait()
        while channel.ready_state == "open":
            level = self.stats.level
            status = {
                "type": "status",
                "level": None if math.isinf(level) else round(level, 1),
                "frames": self.stats.frames_heard,
            }
            with contextlib.suppress(Exception):
                await channel.send(json.dumps(status))
            await asyncio.sleep(0.5)

    async def _speak(self) -> None:
        """Speak queued phrases; while someone is connected, a phrase every few seconds."""
        index = 0
        while True:
            try:
                text = await asyncio.wait_for(self._to_speak.get(), 6.0)
            except asyncio.TimeoutError:
                if not self.stats.peers:
                    continue
                text = PHRASES[index % len(PHRASES)]
                index += 1
            pcm = await asyncio.to_thread(self.speech.say, text)
            await self.voice.push(pcm)
            self.stats.seconds_spoken += len(pcm) / 2 / self.speech.rate
            while self.voice.buffered_seconds > 0.05:  # wait for it to be played out
                await asyncio.sleep(0.05)

    async def run(self, stop: asyncio.Event) -> None:
        """Join, then talk and listen until ``stop`` is set; leaves the call on the way out."""
        async with self.peer:
            await self._bg.start()
            try:
                await self.peer.join(self.channel)
                self._say(
                    f"agent: joined {self.channel} as {self.peer.peer_id} ({self.speech.engine})"
                )
                self._bg.spawn(self._speak)
                await stop.wait()
            finally:
                await self._bg.stop()
                self.voice.stop()


# --- the headless human -------------------------------------------------------------------


@dataclass
class HumanStats:
    """What the headless "browser" peer measured."""

    frames: int = 0
    loud_frames: int = 0
    chat_replies: list[str] = field(default_factory=list)
    rtts_ms: list[float] = field(default_factory=list)
    status_messages: int = 0


class HeadlessHuman:
    """A second Python peer standing in for the browser: a tone as its microphone, chat both
    ways, data-channel round trips, and the agent's audio counted."""

    def __init__(self, *, url: str, channel: str, api_key: str = "pk_dev_local") -> None:
        from metered_realtime import AudioSource, MediaStream, MeteredPeer

        self.peer = MeteredPeer(api_key=api_key, url=url, ice_servers=[], loopback_only=True)
        self.channel = channel
        self.mic = AudioSource(input_rate=16_000)
        self.peer.add_track(self.mic, MediaStream(id="human-mic"), {"role": "mic"})
        self.stats = HumanStats()
        self._bg = BackgroundTasks(type(self).__name__, as_logger(None))  # logged, not lost
        self._wire()

    def _wire(self) -> None:
        from metered_realtime import (
            Data,
            DataChannelOpened,
            DCMessage,
            DCOpen,
            PeerJoined,
            StateChange,
            Track,
            iter_frames,
        )

        stats = self.stats

        @self.peer.on(PeerJoined)
        def _(ev: PeerJoined) -> None:
            remote = ev.peer

            @remote.on(Track)
            async def _(t: Track) -> None:
                async for frame in iter_frames(t.track):
                    stats.frames += 1
                    if level_dbfs(frame) > SILENT_DBFS:
                        stats.loud_frames += 1

            @remote.on(DataChannelOpened)
            def _(dc: DataChannelOpened) -> None:
                def status(_: DCMessage) -> None:
                    stats.status_messages += 1

                dc.channel.on(DCMessage, status)

            @remote.on(StateChange)
            def _(s: StateChange) -> None:
                if s.to == "connected" and s.from_ in ("idle", "connecting"):
                    self._bg.spawn(self.peer.send, _chat("hello everyone"))
                    self._bg.spawn(self.peer.send_to, remote.id, _chat("hello agent"))

            channel = remote.create_data_channel("chat")
            replies: asyncio.Queue[str] = asyncio.Queue()
            channel.on(DCMessage, lambda m: replies.put_nowait(str(m.data)))
            channel.on(DCOpen, lambda _: self._bg.spawn(self._pings, channel, replies))

        @self.peer.on(Data)
        def _(ev: Data) -> None:
            if isinstance(ev.data, dict) and ev.data.get("type") == "chat":
                stats.chat_replies.append(f"{ev.kind}: {ev.data.get('text')}")

    async def _pings(self, channel: Any, replies: asyncio.Queue[str]) -> None:
        for i in range(20):
            started = time.perf_counter()
            await channel.send(f"ping {i}")
            reply = await asyncio.wait_for(replies.get(), 5)
            if reply == f"echo: ping {i}":
                self.stats.rtts_ms.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)

    async def _talk(self) -> None:
        tone = _tone((330.0,), 0.5, 16_000, level=0.3)
        while True:
            await self.mic.push(tone)

    async def run(self, stop: asyncio.Event) -> None:
        async with self.peer:
            await self._bg.start()
            try:
                self._bg.spawn(self._talk)
                await self.peer.join(self.channel)
                await stop.wait()
            finally:
                await self._bg.stop()
                self.mic.stop()


# --- the command --------------------------------------------------------------------------


class StatusLine:
    """A live status line on a terminal; a plain line every few seconds elsewhere."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown = False
        self._last_plain = 0.0

    def say(self, text: str) -> None:
        """A progress line (above the status line)."""
        if self._shown:
            self.stream.write("\r\x1b[2K")
            self._shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._shown = True
            self.stream.flush()
        elif time.monotonic() - self._last_plain >= 5:
            self._last_plain = time.monotonic()
            self.say(text)


def _status_text(stats: AgentStats) -> str:
    level = "-" if math.isinf(stats.level) else f"{stats.level:5.1f} dBFS"
    return (
        f"[agent] peers {len(stats.peers)} | heard {stats.frames_heard} frames, level {level}"
        f" | spoke {stats.seconds_spoken:4.1f} s | chat {stats.chat_in} in / {stats.chat_out} out"
        f" | data-channel echoes {stats.dc_echoes}"
    )


async def run(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    channel: str = DEFAULT_CHANNEL,
    headless: bool = False,
    seconds: float | None = None,
    sdk: Path,
    speech: Speech | None = None,
    out: StatusLine | None = None,
) -> int:
    """Run the demo; returns the exit code."""
    from metered_realtime.adapters.server import LocalServer
    from metered_realtime.core.broker import ServerConfig
    from metered_realtime.serverconfig import DEV_KEY, with_dev_key

    out = out or StatusLine()
    config, _ = with_dev_key(ServerConfig())
    routes = page_routes(sdk, channel=channel, key=DEV_KEY)
    async with LocalServer(config, host=host, port=port, static=routes) as server:
        base = f"http://{host}:{server.port}"
        url = f"ws://{host}:{server.port}"
        out.say(f"demo: local server on {url} (development key {DEV_KEY})")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if seconds is not None:
            loop.call_later(seconds, stop.set)
        agent = Agent(
            url=url,
            channel=channel,
            api_key=DEV_KEY,
            loopback_only=headless,
            speech=speech,
            say=out.say,
        )
        human = HeadlessHuman(url=url, channel=channel) if headless else None
        if not headless:
            out.say(f"demo: open {base}/demo in a browser, click Join and allow the microphone")
            out.say("demo: Ctrl-C to stop")

        async def status() -> None:
            while True:
                out.update(_status_text(agent.stats))
                await asyncio.sleep(0.5)

        ticker = asyncio.ensure_future(status())
        try:
            runners = [agent.run(stop)] + ([human.run(stop)] if human else [])
            await asyncio.gather(*runners)
        finally:
            ticker.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        out.say(_status_text(agent.stats))
        if human is None:
            out.say("demo: stopped")
            return 0
        return _summary(agent.stats, human.stats, out)


def _summary(agent: AgentStats, human: HumanStats, out: StatusLine) -> int:
    rtts = sorted(human.rtts_ms)
    rtt = f"p50 {rtts[len(rtts) // 2]:.2f} ms" if rtts else "none"
    checks = {
        "agent heard the peer's audio": agent.loud_frames >= 50,
        "the peer heard the agent": human.frames >= 50 and human.loud_frames > 0,
        "chat both ways": agent.chat_in >= 2 and len(human.chat_replies) >= 2,
        "data-channel echoes": len(rtts) >= 5,
    }
    out.say(
        "demo summary:"
        f" agent heard {agent.frames_heard} frames ({agent.loud_frames} non-silent);"
        f" peer heard {human.frames} frames of the agent ({human.loud_frames} non-silent);"
        f" chat {agent.chat_in} to the agent, {len(human.chat_replies)} replies;"
        f" data channel {len(rtts)} echoes, round trip {rtt};"
        f" {human.status_messages} status messages"
    )
    failed = [name for name, ok in checks.items() if not ok]
    out.say("demo: ok" if not failed else f"demo: FAILED ({', '.join(failed)})")
    return 0 if not failed else 1


def main(args: Any) -> int:
    """``metered-realtime demo`` (``args`` from the CLI parser)."""
    sdk = find_sdk(args.sdk)
    if sdk is None:
        print(
            "metered-realtime demo: the browser SDK is missing — run `npm ci --prefix web` in the"
            " source tree (bash scripts/setup.sh does it), or pass --sdk PATH/TO/index.mjs",
            file=sys.stderr,
        )
        return 2
    try:
        import aiortc  # noqa: F401
    except ImportError:
        print('metered-realtime demo: needs aiortc: pip install ".[webrtc]"', file=sys.stderr)
        return 2
    seconds = args.seconds if args.seconds is not None else (8.0 if args.headless else None)
    try:
        return asyncio.run(
            run(
                host=args.host,
                port=args.port,
                channel=args.channel,
                headless=args.headless,
                seconds=seconds,
                sdk=sdk,
                speech=Speech(use_espeak=not args.no_speech),
            )
        )
    except OSError as exc:
        print(
            f"metered-realtime demo: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 0
