"""An audio agent: speak synthesized audio into a room, and listen to a remote peer's level.

The agent pushes 16 kHz mono PCM (a short melody standing in for TTS output) through an
``AudioSource`` and reads every remote peer's audio with ``iter_frames``, printing its level
once a second — where a real agent would feed speech-to-text.

By default one process plays both sides, so it runs anywhere: the agent, and a "human" peer
that sends a 330 Hz tone and reports the pitch it hears from the agent. With
``METERED_ROLE=agent`` only the agent runs, and stays until ``METERED_SECONDS`` have passed:
join the same channel from a browser or another process to talk to it.

Env: METERED_URL (default ws://127.0.0.1:8787), METERED_KEY (default pk_dev_local),
METERED_CHANNEL (default examples/audio), METERED_SECONDS (default 4), METERED_ROLE
(both | agent, default both), METERED_LOOPBACK_ONLY (default 1: ICE on 127.0.0.1 only; set 0
for a browser on another machine). Start a server first: ``metered-realtime serve``.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import math
import os
import sys
import time
from collections import Counter

import av

from metered_realtime import (
    AudioSource,
    MediaStream,
    MeteredPeer,
    PeerJoined,
    PeerLeft,
    Track,
    iter_frames,
)

URL = os.environ.get("METERED_URL", "ws://127.0.0.1:8787")
KEY = os.environ.get("METERED_KEY", "pk_dev_local")
CHANNEL = os.environ.get("METERED_CHANNEL", "examples/audio")
SECONDS = float(os.environ.get("METERED_SECONDS", "4"))
ROLE = os.environ.get("METERED_ROLE", "both")
LOOPBACK = os.environ.get("METERED_LOOPBACK_ONLY", "1") == "1"

RATE = 16_000
MELODY = (440.0, 554.37, 659.25, 554.37)  # the agent "speaks" A, C#, E, C#, 250 ms each
HUMAN_TONE = 330.0


def tone(freq: float, seconds: float, rate: int = RATE, level: float = 0.3) -> bytes:
    """s16 mono PCM of a sine (what a TTS engine would hand us)."""
    n = int(rate * seconds)
    step = 2 * math.pi * freq / rate
    return array.array("h", (int(level * 32767 * math.sin(i * step)) for i in range(n))).tobytes()


def samples(frame: av.AudioFrame) -> array.array[int]:
    """The s16 samples of a decoded frame (interleaved when stereo)."""
    channels = len(frame.layout.channels)
    pcm = array.array("h")
    pcm.frombytes(bytes(frame.planes[0])[: frame.samples * channels * 2])
    return pcm


def level_dbfs(pcm: array.array[int]) -> float:
    """RMS level in dB relative to full scale (-inf for digital silence)."""
    if not pcm:
        return -math.inf
    rms = math.sqrt(sum(s * s for s in pcm) / len(pcm))
    return 20 * math.log10(rms / 32768) if rms else -math.inf


def pitch_hz(pcm: array.array[int], rate: int, channels: int) -> float:
    """Rough pitch of a tone from its rising zero crossings (first channel)."""
    mono = pcm[::channels]
    rising = sum(1 for a, b in itertools.pairwise(mono) if a < 0 <= b)
    return rising * rate / max(1, len(mono))


async def speak(source: AudioSource, stop: asyncio.Event) -> None:
    """Push the melody in 20 ms chunks, as a streaming TTS would; AudioSource paces it."""
    notes = [tone(f, 0.25) for f in MELODY]
    chunk = RATE * 2 // 50  # 20 ms of s16 mono
    while not stop.is_set():
        for note in notes:
            for i in range(0, len(note), chunk):
                await source.push(note[i : i + chunk])


def make_peer() -> MeteredPeer:
    return MeteredPeer(api_key=KEY, url=URL, loopback_only=LOOPBACK, ice_servers=[])


async def run_agent(stop: asyncio.Event, heard: dict[str, float]) -> None:
    agent = make_peer()
    voice = AudioSource(input_rate=RATE)
    agent.add_track(voice, MediaStream(id="agent-voice"), {"role": "voice"})

    @agent.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        print(f"agent: {ev.peer.id[:8]} joined")

        @ev.peer.on(Track)
        async def _(t: Track) -> None:
            if t.track.kind != "audio":
                return
            window: array.array[int] = array.array("h")
            last = time.monotonic()
            async for frame in iter_frames(t.track):  # a real agent feeds speech-to-text here
                window.extend(samples(frame))
                if time.monotonic() - last >= 1.0:
                    level = level_dbfs(window)
                    heard[ev.peer.id] = max(heard.get(ev.peer.id, -math.inf), level)
                    print(f"agent: level from {ev.peer.id[:8]}: {level:6.1f} dBFS")
                    window, last = array.array("h"), time.monotonic()

    agent.on(PeerLeft, lambda ev: print(f"agent: {ev.peer.id[:8]} left"))
    async with agent:
        speaking = asyncio.create_task(speak(voice, stop))
        await agent.join(CHANNEL)
        print(f"agent: joined {CHANNEL} as {agent.peer_id}, speaking")
        await stop.wait()
        speaking.cancel()
        voice.end()


async def run_human(stop: asyncio.Event, pitches: list[float]) -> None:
    """The other side: sends a steady tone, reports the pitch of the agent's voice."""
    human = make_peer()
    mic = AudioSource(input_rate=RATE)
    human.add_track(mic, MediaStream(id="human-mic"))

    @human.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        @ev.peer.on(Track)
        async def _(t: Track) -> None:
            window: array.array[int] = array.array("h")
            async for frame in iter_frames(t.track):
                window.extend(samples(frame))
                channels = len(frame.layout.channels)
                if len(window) >= frame.sample_rate // 10 * channels:  # 100 ms
                    if level_dbfs(window) > -40:
                        pitches.append(pitch_hz(window, frame.sample_rate, channels))
                    window = array.array("h")

    async def talk() -> None:
        note = tone(HUMAN_TONE, 1.0)
        while not stop.is_set():
            await mic.push(note)

    async with human:
        talking = asyncio.create_task(talk())
        await human.join(CHANNEL)
        await stop.wait()
        talking.cancel()


async def main() -> int:
    stop = asyncio.Event()
    heard: dict[str, float] = {}
    pitches: list[float] = []
    asyncio.get_running_loop().call_later(SECONDS, stop.set)
    if ROLE == "agent":
        await run_agent(stop, heard)
        print(f"audio agent: done, heard {len(heard)} peer(s)")
        return 0
    await asyncio.gather(run_agent(stop, heard), run_human(stop, pitches))
    if not heard or max(heard.values()) < -40:
        print("audio agent: the agent heard nothing", file=sys.stderr)
        return 1
    common = Counter(round(p / 10) * 10 for p in pitches).most_common(3)
    notes = sorted(hz for hz, _ in common)
    print(f"human: heard the agent mostly at {notes} Hz (melody {[round(f) for f in MELODY]})")
    if not pitches:
        print("audio agent: the human heard nothing", file=sys.stderr)
        return 1
    print("audio agent: ok")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
