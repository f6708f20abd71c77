"""WebRTC benchmark: ``MeteredPeer`` first-audio latency, and data channels against bare aiortc.

Run ``python bench/webrtc.py`` (from anywhere; ``--help`` for the flags; ``--quick`` for a smoke
run). It starts ``python -m metered_realtime serve --port 0 --secret kid1=secret1`` as a
**separate process** (cwd = the temp directory, so the repository's top-level
``metered_realtime/`` folder cannot shadow the installed package) and, unless ``--no-pin``, pins
the server to one CPU and this process to another. Both peers of every call live in this process,
on one asyncio loop (aiortc is asyncio-only), so they share one CPU: encoding, decoding, DTLS and
SCTP of *both* ends of a call compete for it. The bench prints numbers and asserts nothing.
Every run and every phase is bounded by ``--timeout``.

``--runner asyncio`` (default) drives everything with ``asyncio.run()``, as an application
would; ``--runner anyio`` uses ``anyio.run(backend="asyncio")`` (the same asyncio loop, with
sniffio's context variable set, as under pytest's anyio plugin). Comparing the two separates a
dependency on that context variable from everything else.

Network: 127.0.0.1 only. The signalling server binds 127.0.0.1; every ``MeteredPeer`` has
``loopback_only=True, ice_servers=[]``; the bare aiortc connections have no ICE servers and
their ICE gathering is restricted to a 127.0.0.1 host candidate (the same patch the SDK applies in
``MeteredPeer._restrict_gathering``), and the bench refuses to exchange descriptions if any local
candidate is not 127.0.0.1. After each SDK run the local descriptions are checked too (violations
are printed).

Part 1, first remote audio (``--runs`` runs per configuration, default 20). Peer ids are
``fa-<tag>-a`` (polite: ``local_id < remote_id``) and ``fa-<tag>-b`` (impolite), fresh for every
run, as is the channel name. Four configurations: the later joiner is the polite or the impolite
peer, times both peers send audio or only the polite peer does. A sending peer has an
``AudioSource`` (16 kHz mono in; a 440 Hz tone pushed in 20 ms chunks by a background task, kept
≤ 100 ms ahead) added with ``add_track`` before ``join``. The first peer joins, then the second;
**t0 = the later peer's ``join()`` returning**. For each peer that should receive audio (both;
or only the impolite peer when only the polite one sends), the figure is t0 → the first decoded
``av.AudioFrame`` returned by ``iter_frames(track)`` in its ``Track`` handler. A run fails if a
receiver has no frame within ``--timeout`` of the first ``join()`` call, or if either peer has
had no ``PeerJoined`` 2 s after t0 (failed runs are counted and left out of the percentiles;
after 3 consecutive failures the configuration stops, and if none of its runs succeeded, part 1
stops). Each run closes both peers and then ``stop()`` s its sources (the census after part 1
checks that ``MeteredPeer.close()`` left no relay reading them). Printed per configuration
and receiving side: p50 / p95 / max (nearest rank), against the target p95 ≤ 150 ms; the medians
of the intervals the time splits into (offer/answer, ICE checks, DTLS, sender start, and the
sender's first frame → the receiver's first decoded frame); loop stalls (the loop woke > 15 ms
late) and GC pauses (≥ 2 ms) during the runs; the median time from t0 of each step at each
peer (``PeerJoined``; the first ``have-local-offer`` / ``have-remote-offer`` / ``stable`` on
``remote.pc``; ICE ``completed``; ``connectionState`` ``connected``; the sender's first
``AudioSource.recv()``, i.e. the first frame pulled by the RTP sender; ``Track``; first frame),
the number of connection rebuilds (``ConnectionReset``, i.e. glare handled by the polite side)
and the full timeline of the slowest run, stalls and GC pauses included. After the part, the
asyncio tasks and threads still alive are counted (a leak shows up there).

Part 2, data channels: the same measurements through the SDK and through bare aiortc, in the
same process, ``--dc-rounds`` (3) times each, alternating which goes first.

* ``sdk``: two ``MeteredPeer`` s (``dc-<tag>-a`` polite, ``dc-<tag>-b``) join a fresh channel; ``a``
  opens channels ``echo`` and ``bulk`` in its ``PeerJoined`` handler (``create_data_channel``,
  wrapped ``DataChannel``); ``b`` gets them as ``DataChannelOpened`` and echoes every ``echo``
  message from an async ``DCMessage`` handler (``await channel.send(m.data)``), and counts
  ``bulk`` messages in a sync one.
* ``bare``: two ``RTCPeerConnection(RTCConfiguration(iceServers=[]))`` connected directly
  (offer/answer handed over in-process, non-trickle); the same two channels; the echo is
  ``channel.send(data)`` in the ``message`` listener.

Round trip: ``--rt-count`` (2,000) sequential ``--rt-size`` (64) byte messages on ``echo`` after
``--rt-warmup`` (100): ``send`` called → the echo's ``message`` handler runs at the sender
(``perf_counter_ns``, one process). Throughput: ``--tp-count`` (10,000) ``--tp-size`` (1,024)
byte messages on ``bulk``, sent in a loop, from the first ``send`` to the receiver's handler
getting the last one; messages/s and MB/s (10^6 bytes of payload per second). The SDK sends with
``await DataChannel.send()`` (its backpressure: wait while ``bufferedAmount + size`` exceeds
1 MiB, resume on ``bufferedamountlow`` at 512 KiB, or after 0.1 s polls); the bare sender applies
the same limit and threshold by hand (``bufferedamountlow`` event, no polling). Also printed: this
process's CPU time per message over each measured window, and ``SDK/bare`` ratios (for a latency
or a CPU cost above 1 is worse, for a rate below 1 is worse). Round-trip percentiles pool the
samples of all rounds; the other figures are medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import av
from _proc import pin_cpus, read_match  # bench/ is on sys.path when run as a script
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from metered_realtime.adapters.datachannel import DataChannel
from metered_realtime.adapters.peer import MeteredPeer, RemotePeer
from metered_realtime.adapters.peer_events import (
    ConnectionReset,
    DataChannelOpened,
    DCMessage,
    DCOpen,
    NegotiationError,
    PeerJoined,
    Track,
)
from metered_realtime.core.events import StateChange
from metered_realtime.core.jwt import sign_hs256
from metered_realtime.media.audio import AudioSource
from metered_realtime.media.frames import iter_frames
from metered_realtime.media.stream import MediaStream

KID = "kid1"
SECRET = "secret1"
LOOPBACK = "127.0.0.1"
SERVER_START_TIMEOUT = 15.0
CLOSE_TIMEOUT = 5.0
TARGET_P95_MS = 150.0
GIVE_UP_AFTER = 3  # consecutive failed runs that end a configuration
PEER_JOINED_TIMEOUT = 2.0  # after t0: no PeerJoined at both peers by then fails the run
INPUT_RATE = 16_000
CHUNK_SECONDS = 0.02
MAX_AHEAD_SECONDS = 0.1
DC_MAX_BUFFERED = 1_048_576  # DataChannel's default max_buffered_amount
DC_LOW_WATER = DC_MAX_BUFFERED // 2  # DataChannel's bufferedAmountLowThreshold

perf = time.perf_counter
perf_ns = time.perf_counter_ns


# --- helpers -------------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: list[float]) -> float:
    return percentile(sorted(values), 50)


def fmt_ms(value: float) -> str:
    return "    -" if math.isnan(value) else f"{value:7.1f}"


def ratio(a: float, b: float) -> str:
    return "   -" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:5.2f}"


def describe_failure(exc: BaseException, phase: str, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"{phase}: not done within {timeout:.0f} s"
    return f"{phase}: {type(exc).__name__}: {exc}"[:200]


def sdp_candidate_hosts(sdp: str) -> list[str]:
    """The connection address of every ``a=candidate`` line of ``sdp``."""
    hosts = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) > 4:
                hosts.append(parts[4])
    return hosts


class RecordingLogger:
    """A ``Logger`` for the SDK that keeps warnings/errors and rebuild notices of a run."""

    def __init__(self, name: str, sink: list[str], t0: Callable[[], float | None]) -> None:
        self.name = name
        self.sink = sink
        self._t0 = t0

    def _keep(self, level: str, msg: str, ctx: dict[str, Any] | None) -> None:
        t0 = self._t0()
        at = "" if t0 is None else f"{(perf() - t0) * 1000:+.1f}ms "
        self.sink.append(f"{at}{self.name} {level}: {msg} {ctx or ''}".rstrip())

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        pass

    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        if "rebuild" in msg:
            self._keep("info", msg, ctx)

    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._keep("warning", msg, ctx)

    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._keep("error", msg, ctx)


class Hiccups:
    """Loop stalls and GC pauses in this process (absolute ``perf()`` times), for timelines.

    A ticker task sleeps ``TICK`` s at a time; waking more than ``STALL`` s late is a stall (the
    loop was blocked, or the process was not scheduled). ``gc.callbacks`` time each collection.
    """

    TICK = 0.01
    STALL = 0.015
    GC_MIN = 0.002

    def __init__(self) -> None:
        self.entries: list[tuple[float, float, str]] = []  # (start, seconds, kind)
        self._gc_start = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = perf()
        elif (took := perf() - self._gc_start) >= self.GC_MIN:
            self.entries.append((self._gc_start, took, f"gc gen{info['generation']}"))

    async def _tick(self) -> None:
        while True:
            before = perf()
            await asyncio.sleep(self.TICK)
            late = perf() - before - self.TICK
            if late > self.STALL:
                self.entries.append((before + self.TICK, late, "loop stall"))

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def between(self, start: float, end: float) -> list[tuple[float, float, str]]:
        return [e for e in self.entries if start <= e[0] <= end]


HICCUPS = Hiccups()


# --- the server process --------------------------------------------------------------------


class ServerProcess:
    """``python -m metered_realtime serve --port 0`` in a child process (cwd outside the repo)."""

    def __init__(self) -> None:
        cmd = [sys.executable, "-m", "metered_realtime", "serve", "--port", "0"]
        cmd += ["--secret", f"{KID}={SECRET}", "--log-level", "WARNING"]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            cmd,
            cwd=tempfile.gettempdir(),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
        )
        found = read_match(
            self.proc, rb"listening on ws://127\.0\.0\.1:(\d+)", SERVER_START_TIMEOUT
        )
        if found is None:
            self.stop()
            raise RuntimeError(f"server did not start: {self.stderr_tail()}")
        self.port = int(found.group(1))

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


# --- peers ---------------------------------------------------------------------------------


def make_peer(port: int, sub: str, logger: object = None) -> MeteredPeer:
    def mint() -> str:
        claims = {
            "sub": sub,
            "exp": time.time() + 600,
            "channels": ["**"],
            "permissions": ["subscribe", "publish", "presence", "send"],
        }
        return sign_hs256(claims, SECRET, KID)

    return MeteredPeer(
        token_provider=mint,
        url=f"ws://{LOOPBACK}:{port}",
        loopback_only=True,
        ice_servers=[],
        logger=logger,
        reconnect=False,
    )


async def close_all(*peers: MeteredPeer) -> None:
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(p.close() for p in peers)), CLOSE_TIMEOUT)


def tone_chunk(seconds: float, rate: int = INPUT_RATE, hz: float = 440.0) -> bytes:
    """s16le mono PCM of a sine tone (a whole number of periods, so chunks join cleanly)."""
    n = int(seconds * rate)
    samples = (int(8000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(n))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


class TimedSource(AudioSource):
    """``AudioSource`` that notes when the RTP sender first pulls a frame from it."""

    def __init__(self, on_first_pull: Callable[[], None]) -> None:
        super().__init__(input_rate=INPUT_RATE)
        self._on_first_pull: Callable[[], None] | None = on_first_pull

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        if self._on_first_pull is not None:
            self._on_first_pull()
            self._on_first_pull = None
        return frame


async def produce(source: AudioSource) -> None:
    """Push a 440 Hz tone in 20 ms chunks at real time, at most 100 ms ahead of the track."""
    chunk = tone_chunk(CHUNK_SECONDS)
    with contextlib.suppress(RuntimeError):  # the source stopped
        while True:
            if source.buffered_seconds < MAX_AHEAD_SECONDS:
                await source.push(chunk)
            await asyncio.sleep(CHUNK_SECONDS)


# --- part 1: first remote audio ------------------------------------------------------------


@dataclass(frozen=True)
class AudioConfig:
    later_polite: bool
    senders: tuple[str, ...]  # roles that send audio
    target: bool = True  # one of the four target configurations

    @property
    def name(self) -> str:
        later = "later joiner polite  " if self.later_polite else "later joiner impolite"
        if len(self.senders) == 2:
            return later + " | both send          "
        return later + f" | only {self.senders[0]} sends".ljust(21)

    @property
    def receivers(self) -> list[str]:
        return [r for r in ("polite", "impolite") if r != self.senders[0] or len(self.senders) == 2]


@dataclass
class AudioRun:
    ok: bool = False
    error: str = ""
    first_frame_ms: dict[str, float] = field(default_factory=dict)  # role → ms after t0
    marks: dict[str, dict[str, float]] = field(default_factory=dict)  # role → step → ms
    events: list[tuple[float, str]] = field(default_factory=list)  # (ms after t0, text)
    rebuilds: int = 0
    negotiation_errors: int = 0
    logs: list[str] = field(default_factory=list)
    non_loopback: list[str] = field(default_factory=list)
    join_first_ms: float = math.nan  # first join() duration
    join_second_ms: float = math.nan  # second join() duration
    hiccup_ms: float = 0.0  # loop stalls + GC pauses of ≥ 2 ms during the run


STEPS = [
    "PeerJoined",
    "have-local-offer",
    "have-remote-offer",
    "stable",
    "ice completed",
    "connected",
    "first pull",
    "Track",
    "first frame",
]


async def audio_run(port: int, cfg: AudioConfig, index: int, timeout: float) -> AudioRun:
    """One call: first peer joins, then the second; time t0 → first decoded frame per receiver."""
    tag = f"{index:03d}{uuid.uuid4().hex[:6]}"
    ids = {"polite": f"fa-{tag}-a", "impolite": f"fa-{tag}-b"}
    first, second = ("impolite", "polite") if cfg.later_polite else ("polite", "impolite")
    senders = list(cfg.senders)
    receivers = cfg.receivers
    run = AudioRun(marks={"polite": {}, "impolite": {}})
    t0: list[float] = []
    t_start = perf()

    def rel() -> float:
        return (perf() - (t0[0] if t0 else t_start)) * 1000

    def mark(role: str, step: str, text: str | None = None, *, last: bool = False) -> None:
        at = rel()
        run.events.append((at, f"{role:8} {text or step}"))
        if last or step not in run.marks[role]:
            run.marks[role][step] = at

    peers: dict[str, MeteredPeer] = {}
    for role in ("polite", "impolite"):
        logger = RecordingLogger(role, run.logs, lambda: t0[0] if t0 else t_start)
        peers[role] = make_peer(port, ids[role], logger)
    got: dict[str, asyncio.Event] = {role: asyncio.Event() for role in receivers}
    seen: dict[str, asyncio.Event] = {role: asyncio.Event() for role in peers}
    remotes: dict[str, RemotePeer] = {}
    tasks: list[asyncio.Task[None]] = []

    def watch_pc(role: str, remote: RemotePeer) -> None:
        pc = remote.pc
        if pc is None:
            return

        def signaling() -> None:
            mark(role, pc.signalingState)

        def ice() -> None:
            mark(role, f"ice {pc.iceConnectionState}")

        def connection() -> None:
            mark(role, pc.connectionState, f"pc {pc.connectionState}")

        pc.on("signalingstatechange", signaling)
        pc.on("iceconnectionstatechange", ice)
        pc.on("connectionstatechange", connection)

    for role, peer in peers.items():

        def on_joined(ev: PeerJoined, role: str = role) -> None:
            remote = remotes[role] = ev.peer
            mark(role, "PeerJoined")
            seen[role].set()
            watch_pc(role, remote)

            def on_reset(_: ConnectionReset) -> None:
                run.rebuilds += 1
                mark(role, "rebuild", "ConnectionReset (connection rebuilt)")
                watch_pc(role, remote)

            def on_neg_error(e: NegotiationError) -> None:
                run.negotiation_errors += 1
                mark(role, "negotiation error", f"NegotiationError {e.err!r}"[:160])

            def on_state(e: StateChange) -> None:
                mark(role, f"remote {e.to}", f"RemotePeer state {e.from_}->{e.to}")

            remote.on(ConnectionReset, on_reset)
            remote.on(NegotiationError, on_neg_error)
            remote.on(StateChange, on_state)

            async def on_track(t: Track) -> None:
                mark(role, "Track", f"Track {t.track.kind}")
                if role not in got or t.track.kind != "audio":
                    return
                async for _frame in iter_frames(t.track):
                    mark(role, "first frame")
                    got[role].set()
                    return

            remote.on(Track, on_track)

        peer.on(PeerJoined, on_joined)

    sources: list[AudioSource] = []
    for role in senders:
        source = TimedSource(lambda role=role: mark(role, "first pull"))  # type: ignore[misc]
        peers[role].add_track(source, MediaStream(id=f"voice-{ids[role]}"))
        sources.append(source)
        tasks.append(asyncio.create_task(produce(source)))

    channel = f"fa-{tag}"

    async def call() -> None:
        j = perf()
        await peers[first].join(channel)
        run.join_first_ms = (perf() - j) * 1000
        j = perf()
        await peers[second].join(channel)
        now = perf()
        run.join_second_ms = (now - j) * 1000
        t0.append(now)
        # events logged before t0 were relative to t_start: shift them
        shift = (now - t_start) * 1000
        run.events[:] = [(at - shift, text) for at, text in run.events]
        for role_marks in run.marks.values():
            for step in role_marks:
                role_marks[step] -= shift
        mark(second, "join returned", "join() returned = t0")
        try:
            await asyncio.wait_for(
                asyncio.gather(*(e.wait() for e in seen.values())), PEER_JOINED_TIMEOUT
            )
        except asyncio.TimeoutError:
            missing = [r for r, e in seen.items() if not e.is_set()]
            raise RuntimeError(
                f"no PeerJoined at {', '.join(missing)} {PEER_JOINED_TIMEOUT:.0f} s after t0"
            ) from None
        await asyncio.gather(*(got[role].wait() for role in receivers))

    try:
        await asyncio.wait_for(call(), timeout)
        run.ok = True
        for role in receivers:
            run.first_frame_ms[role] = run.marks[role]["first frame"]
    except asyncio.TimeoutError:
        missing = [r for r in receivers if not got[r].is_set()]
        run.error = f"timeout after {timeout:.0f} s; no audio at {', '.join(missing)}"
    except Exception as exc:  # one failed run never stops the bench
        run.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        for role, remote in remotes.items():
            pc = remote.pc
            if pc is not None and pc.localDescription is not None:
                bad = [h for h in sdp_candidate_hosts(pc.localDescription.sdp) if h != LOOPBACK]
                run.non_loopback += [f"{role}: {h}" for h in bad]
        for task in tasks:
            task.cancel()
        await close_all(*peers.values())
        for local in sources:
            local.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    origin = t0[0] if t0 else t_start
    for at, took, kind in HICCUPS.between(t_start, perf()):
        run.hiccup_ms += took * 1000
        run.events.append(((at - origin) * 1000, f"-------- {kind} {took * 1000:.1f} ms"))
    run.events.sort()
    return run


BUDGET = [
    # (label, (role, step) → (role, step)); "rx" is the receiver, "tx" the side sending to it
    ("t0 → receiver's pc stable (signalling, offer/answer)", ("t0", ""), ("rx", "stable")),
    (
        "ICE checks: checking → completed (receiver)",
        ("rx", "ice checking"),
        ("rx", "ice completed"),
    ),
    ("DTLS: ICE completed → connected (receiver)", ("rx", "ice completed"), ("rx", "connected")),
    ("sender connected → its first AudioSource.recv()", ("tx", "connected"), ("tx", "first pull")),
    ("sender's first recv() → receiver's first frame", ("tx", "first pull"), ("rx", "first frame")),
]


def print_budget(ok: list[AudioRun], receivers: list[str]) -> None:
    """Medians of the intervals that add up to t0 → first frame, over runs and receivers."""
    print("  where the time goes (median ms over runs and receivers):")
    for label, start, end in BUDGET:
        values = []
        for r in ok:
            for rx in receivers:
                roles = {"rx": rx, "tx": "impolite" if rx == "polite" else "polite"}
                a = 0.0 if start[0] == "t0" else r.marks[roles[start[0]]].get(start[1])
                b = r.marks[roles[end[0]]].get(end[1])
                if a is not None and b is not None:
                    values.append(b - a)
        print(f"    {label:52} {fmt_ms(median(values))}")


def print_audio(cfg: AudioConfig, runs: list[AudioRun], seconds: float) -> None:
    receivers = cfg.receivers
    ok = [r for r in runs if r.ok]
    failed = [r for r in runs if not r.ok]
    timeouts = sum(1 for r in failed if r.error.startswith("timeout"))
    later = "polite" if cfg.later_polite else "impolite"
    print(f"\n[{cfg.name}]  later joiner = {later}; {len(runs)} runs in {seconds:.1f} s")
    print("  t0 → first decoded frame (ms)       n     p50     p95     max   target p95 ≤ 150")
    for role in receivers:
        values = sorted(r.first_frame_ms[role] for r in ok)
        p95 = percentile(values, 95)
        verdict = "-" if math.isnan(p95) else ("met" if p95 <= TARGET_P95_MS else "MISSED")
        if not cfg.target:
            verdict = "(not a target)"
        who = "later" if role == later else "first"
        top = values[-1] if values else math.nan
        print(
            f"  received by {role:8} ({who} joiner) {len(values):4d}"
            f" {fmt_ms(percentile(values, 50))} {fmt_ms(p95)} {fmt_ms(top)}   {verdict}"
        )
    print(f"  failed runs: {len(failed)} (timeouts {timeouts}, other {len(failed) - timeouts})")
    for r in failed[:3]:
        print(f"    - {r.error}")
    joins = [r.join_first_ms for r in runs if not math.isnan(r.join_first_ms)]
    joins2 = [r.join_second_ms for r in runs if not math.isnan(r.join_second_ms)]
    print(
        f"  join() duration median: first {median(joins):.1f} ms, second {median(joins2):.1f} ms;"
        f" rebuilds (glare) in {sum(1 for r in runs if r.rebuilds)}/{len(runs)} runs,"
        f" NegotiationError {sum(r.negotiation_errors for r in runs)},"
        f" SDK warnings {sum(1 for r in runs for line in r.logs if ' info: ' not in line)}"
    )
    stalled = [r.hiccup_ms for r in runs if r.hiccup_ms]
    print(
        f"  loop stalls (> {Hiccups.STALL * 1000:.0f} ms late) / GC pauses (≥ 2 ms) in"
        f" {len(stalled)}/{len(runs)} runs, {sum(stalled):.0f} ms in all"
    )
    bad = [h for r in runs for h in r.non_loopback]
    if bad:
        print(f"  !! non-loopback candidates in local descriptions: {bad[:5]}")
    print_budget(ok, receivers)
    print("  median ms from t0 of each step's first occurrence (n = runs where it happened):")
    print("    step                 polite             impolite")
    for step in STEPS:
        cells = []
        for role in ("polite", "impolite"):
            values = [r.marks[role][step] for r in ok if step in r.marks[role]]
            cells.append(
                f"{fmt_ms(median(values))} (n={len(values):2d})" if values else "      -       "
            )
        print(f"    {step:18} {cells[0]:>16}   {cells[1]:>16}")
    if ok:
        worst = max(ok, key=lambda r: max(r.first_frame_ms.values()))
        slowest = max(worst.first_frame_ms.values())
        print(f"  timeline of the slowest run ({slowest:.1f} ms), ms from t0:")
        for at, text in worst.events:
            print(f"    {at:+8.1f}  {text}")
        for line in worst.logs:
            print(f"    log {line}")
    counts: dict[str, int] = {}
    for r in runs:
        for line in r.logs:
            if " info: " not in line:
                text = line.split(" ", 1)[1] if line[:1] in "+-" else line  # drop the time
                counts[text] = counts.get(text, 0) + 1
    for text, n in sorted(counts.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  SDK log ×{n}: {text}"[:300])


async def part_audio(port: int, runs: int, timeout: float) -> None:
    print("\n== 1. first remote audio: later join() returns → first decoded frame ==")
    print(f"target: p95 ≤ {TARGET_P95_MS:.0f} ms in every configuration and at every receiver")
    both, polite = ("polite", "impolite"), ("polite",)
    configs = [AudioConfig(lp, senders) for lp in (True, False) for senders in (both, polite)]
    # not a target: the impolite side's first-offer hold (core.negotiation.FIRST_OFFER_HOLD)
    # is paid here, when the polite side has nothing to send
    configs += [AudioConfig(lp, ("impolite",), target=False) for lp in (True, False)]
    HICCUPS.start()
    try:
        for cfg in configs:
            start = perf()
            results: list[AudioRun] = []
            for i in range(runs):
                results.append(await audio_run(port, cfg, i, timeout))
                if len(results) >= GIVE_UP_AFTER and not any(
                    r.ok for r in results[-GIVE_UP_AFTER:]
                ):
                    print(
                        f"\n!! {GIVE_UP_AFTER} consecutive failed runs: skipping the remaining"
                        f" {runs - len(results)} runs of this configuration"
                    )
                    break
            print_audio(cfg, results, perf() - start)
            if not any(r.ok for r in results):
                print("\n!! no run of this configuration succeeded: skipping the rest of part 1")
                break
    finally:
        await HICCUPS.stop()
    await asyncio.sleep(0.1)  # a stopped source's reader notices at its next 20 ms frame
    print_census("after part 1, every peer closed and every source stopped")


READER = "TrackRelay._read"  # the relay's reader task per local source


def print_census(when: str) -> None:
    """What is still alive in this process (leaks show up here)."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    relays = sum(1 for t in tasks if getattr(t.get_coro(), "__qualname__", "") == READER)
    print(
        f"\n{when}: {len(tasks)} other asyncio tasks alive ({relays} relay readers),"
        f" {threading.active_count()} threads"
    )


# --- part 2: data channels -----------------------------------------------------------------


@dataclass
class DcFigures:
    rt_ms: list[float] = field(default_factory=list)
    rt_cpu_us: float = math.nan
    tp_seconds: float = math.nan
    tp_cpu_us: float = math.nan
    tp_count: int = 0
    tp_size: int = 0
    setup_ms: float = math.nan
    error: str = ""
    phase: str = "connect"  # where a failure happened

    @property
    def msgs_per_s(self) -> float:
        return self.tp_count / self.tp_seconds if self.tp_seconds else math.nan

    @property
    def mb_per_s(self) -> float:
        return self.tp_count * self.tp_size / 1e6 / self.tp_seconds if self.tp_seconds else math.nan


@dataclass
class DcParams:
    rt_count: int
    rt_warmup: int
    rt_size: int
    tp_count: int
    tp_size: int
    timeout: float


class EchoProbe:
    """Sender side of the round trip: one outstanding future, resolved by the echo."""

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None

    def on_echo(self, _data: object) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)


class BulkCounter:
    """Receiver side of the throughput: counts messages, notes the last one's time."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.last = 0.0
        self.done = asyncio.Event()

    def on_message(self, _data: object) -> None:
        self.count += 1
        if self.count == self.expected:
            self.last = perf()
            self.done.set()


async def measure(
    figures: DcFigures,
    params: DcParams,
    send_echo: Callable[[bytes], Awaitable[None]],
    probe: EchoProbe,
    send_bulk: Callable[[bytes], Awaitable[None]],
    bulk: BulkCounter,
) -> None:
    loop = asyncio.get_running_loop()
    msg = b"r" * params.rt_size
    figures.phase = "round trip"
    with anyio.fail_after(params.timeout):
        for _ in range(params.rt_warmup):
            probe.fut = loop.create_future()
            await send_echo(msg)
            await probe.fut
    cpu = time.process_time()
    with anyio.fail_after(params.timeout):
        for _ in range(params.rt_count):
            probe.fut = loop.create_future()
            sent = perf_ns()
            await send_echo(msg)
            await probe.fut
            figures.rt_ms.append((perf_ns() - sent) / 1e6)
    figures.rt_cpu_us = (time.process_time() - cpu) / params.rt_count * 1e6
    figures.rt_ms.sort()

    payload = b"b" * params.tp_size
    figures.phase = "throughput"
    cpu = time.process_time()
    start = perf()
    with anyio.fail_after(params.timeout):
        for _ in range(params.tp_count):
            await send_bulk(payload)
        await bulk.done.wait()
    figures.tp_seconds = bulk.last - start
    figures.tp_cpu_us = (time.process_time() - cpu) / params.tp_count * 1e6
    figures.tp_count = params.tp_count
    figures.tp_size = params.tp_size


async def dc_sdk(port: int, params: DcParams) -> DcFigures:
    figures = DcFigures()
    tag = uuid.uuid4().hex[:8]
    logs: list[str] = []
    a = make_peer(port, f"dc-{tag}-a", RecordingLogger("a", logs, lambda: None))
    b = make_peer(port, f"dc-{tag}-b", RecordingLogger("b", logs, lambda: None))
    probe = EchoProbe()
    bulk = BulkCounter(params.tp_count)
    channels: dict[str, DataChannel] = {}
    opened = {"echo": asyncio.Event(), "bulk": asyncio.Event()}

    @a.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        for label in ("echo", "bulk"):
            channel = channels[label] = ev.peer.create_data_channel(label)

            def on_open(_: DCOpen, label: str = label) -> None:
                opened[label].set()

            channel.on(DCOpen, on_open)
        channels["echo"].on(DCMessage, lambda m: probe.on_echo(m.data))

    @b.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        @ev.peer.on(DataChannelOpened)
        def _(dc: DataChannelOpened) -> None:
            channel = dc.channel
            if channel.label == "echo":

                @channel.on(DCMessage)
                async def _(m: DCMessage) -> None:
                    await channel.send(m.data)

            else:
                channel.on(DCMessage, lambda m: bulk.on_message(m.data))

    try:
        start = perf()
        with anyio.fail_after(params.timeout):
            await a.join(f"dc-{tag}")
            await b.join(f"dc-{tag}")
            await opened["echo"].wait()
            await opened["bulk"].wait()
        figures.setup_ms = (perf() - start) * 1000
        echo, bulk_ch = channels["echo"], channels["bulk"]
        await measure(figures, params, echo.send, probe, bulk_ch.send, bulk)
    except Exception as exc:
        figures.error = describe_failure(exc, figures.phase, params.timeout)
    finally:
        await close_all(a, b)
    if logs:
        figures.error += f" (SDK logs: {logs[:3]})"
    return figures


async def _gather_loopback(self: Any) -> None:
    """aioice ``Connection.gather_candidates`` restricted to a 127.0.0.1 host candidate
    (a copy of the SDK's ``adapters.peer._gather_loopback``)."""
    if not self._local_candidates_start:
        self._local_candidates_start = True
        for component in self._components:
            self._local_candidates += await self.get_component_candidates(
                component=component, addresses=[LOOPBACK]
            )
        self._local_candidates_end = True


def restrict_gathering(pc: RTCPeerConnection) -> None:
    """Patch every ICE transport of ``pc`` (call before ``setLocalDescription``)."""
    transports = getattr(pc, "_RTCPeerConnection__iceTransports", None)
    if not transports:
        raise RuntimeError("cannot restrict ICE gathering: aiortc internals changed")
    for transport in transports:
        conn = transport.iceGatherer._connection
        conn.gather_candidates = types.MethodType(_gather_loopback, conn)


async def set_local_loopback(pc: RTCPeerConnection, desc: RTCSessionDescription) -> None:
    """``setLocalDescription`` with loopback-only gathering; refuse any other candidate."""
    restrict_gathering(pc)
    await pc.setLocalDescription(desc)
    hosts = sdp_candidate_hosts(pc.localDescription.sdp)
    if not hosts or any(h != LOOPBACK for h in hosts):
        raise RuntimeError(f"refusing to connect: local candidates {hosts}")


async def wait_dc_room(channel: RTCDataChannel, low: asyncio.Event, size: int) -> None:
    while channel.bufferedAmount + size > DC_MAX_BUFFERED:
        low.clear()
        await low.wait()


async def dc_bare(params: DcParams) -> DcFigures:
    figures = DcFigures()
    pc1 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc2 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    probe = EchoProbe()
    bulk = BulkCounter(params.tp_count)
    opened = {"echo": asyncio.Event(), "bulk": asyncio.Event()}
    low = asyncio.Event()
    echo = pc1.createDataChannel("echo")
    bulk_ch = pc1.createDataChannel("bulk")
    bulk_ch.bufferedAmountLowThreshold = DC_LOW_WATER
    echo.on("open", lambda: opened["echo"].set())
    bulk_ch.on("open", lambda: opened["bulk"].set())
    echo.on("message", probe.on_echo)
    bulk_ch.on("bufferedamountlow", low.set)

    @pc2.on("datachannel")
    def _(channel: RTCDataChannel) -> None:
        if channel.label == "echo":
            channel.on("message", channel.send)
        else:
            channel.on("message", bulk.on_message)

    async def send_echo(data: bytes) -> None:
        echo.send(data)

    async def send_bulk(data: bytes) -> None:
        if bulk_ch.bufferedAmount + len(data) > DC_MAX_BUFFERED:
            await wait_dc_room(bulk_ch, low, len(data))
        bulk_ch.send(data)

    try:
        start = perf()
        with anyio.fail_after(params.timeout):
            await set_local_loopback(pc1, await pc1.createOffer())
            await pc2.setRemoteDescription(pc1.localDescription)
            await set_local_loopback(pc2, await pc2.createAnswer())
            await pc1.setRemoteDescription(pc2.localDescription)
            await opened["echo"].wait()
            await opened["bulk"].wait()
        figures.setup_ms = (perf() - start) * 1000
        await measure(figures, params, send_echo, probe, send_bulk, bulk)
    except Exception as exc:
        figures.error = describe_failure(exc, figures.phase, params.timeout)
    finally:
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(pc1.close(), pc2.close()), CLOSE_TIMEOUT)
    return figures


def print_dc(results: dict[str, list[DcFigures]], params: DcParams) -> None:
    for name, figs in results.items():
        for i, fig in enumerate(figs):
            if fig.error:
                print(f"  !! {name} round {i + 1}: {fig.error}")

    def pooled_rt(name: str) -> list[float]:
        return sorted(v for f in results[name] if not f.error for v in f.rt_ms)

    def med(name: str, get: Callable[[DcFigures], float]) -> float:
        values = [get(f) for f in results[name] if not f.error and not math.isnan(get(f))]
        return median(values) if values else math.nan

    def spread(name: str, get: Callable[[DcFigures], float], digits: int) -> str:
        values = [get(f) for f in results[name] if not f.error and not math.isnan(get(f))]
        if len(values) < 2:
            return ""
        return f"{min(values):.{digits}f}–{max(values):.{digits}f}"

    def num(value: float, digits: int) -> str:
        return f"{'-':>10}" if math.isnan(value) else f"{value:10.{digits}f}"

    def row(label: str, s: float, b: float, unit: str, digits: int = 3, note: str = "") -> None:
        print(f"  {label:34} {num(s, digits)} {num(b, digits)}   {ratio(s, b)}  {unit:7}{note}")

    sdk_rt, bare_rt = pooled_rt("sdk"), pooled_rt("bare")
    print(f"  {'figure':34} {'sdk':>10} {'bare':>10}   sdk/bare")
    row("connect → both channels open", med("sdk", _setup), med("bare", _setup), "ms", 1)
    n = len(sdk_rt)
    row(
        f"round trip p50 ({params.rt_size} B, n={n})",
        percentile(sdk_rt, 50),
        percentile(bare_rt, 50),
        "ms",
    )
    row("round trip p99", percentile(sdk_rt, 99), percentile(bare_rt, 99), "ms")
    row(
        "round trip max",
        sdk_rt[-1] if sdk_rt else math.nan,
        bare_rt[-1] if bare_rt else math.nan,
        "ms",
    )
    row("round trip CPU / message", med("sdk", _rt_cpu), med("bare", _rt_cpu), "µs", 1)
    spreads = [f"{n} {spread(n, _rate, 0)}" for n in ("sdk", "bare") if spread(n, _rate, 0)]
    note = f"  range over rounds: {', '.join(spreads)}" if spreads else ""
    row(
        f"throughput ({params.tp_count}×{params.tp_size} B)",
        med("sdk", _rate),
        med("bare", _rate),
        "msgs/s",
        0,
        note,
    )
    row("throughput", med("sdk", _mbps), med("bare", _mbps), "MB/s", 2)
    row("throughput CPU / message", med("sdk", _tp_cpu), med("bare", _tp_cpu), "µs", 1)
    print("  (round trips pooled over the rounds; every other figure is the median of the rounds)")


def _setup(f: DcFigures) -> float:
    return f.setup_ms


def _rt_cpu(f: DcFigures) -> float:
    return f.rt_cpu_us


def _rate(f: DcFigures) -> float:
    return f.msgs_per_s


def _mbps(f: DcFigures) -> float:
    return f.mb_per_s


def _tp_cpu(f: DcFigures) -> float:
    return f.tp_cpu_us


async def part_dc(port: int, params: DcParams, rounds: int) -> None:
    print("\n== 2. data channel: SDK (MeteredPeer + DataChannel) vs bare aiortc, same process ==")
    results: dict[str, list[DcFigures]] = {"sdk": [], "bare": []}
    start = perf()
    for i in range(rounds):  # alternate the order, so neither always runs on a warmer process
        order = ("bare", "sdk") if i % 2 == 0 else ("sdk", "bare")
        for impl in order:
            if results[impl] and all(f.error for f in results[impl]):
                continue  # it failed before: don't wait for the timeout again
            fig = await (dc_bare(params) if impl == "bare" else dc_sdk(port, params))
            results[impl].append(fig)
    print(f"  {rounds} rounds, bare and SDK alternating first ({perf() - start:.1f} s)")
    print_dc(results, params)
    print_census("after part 2")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per audio configuration (20)")
    parser.add_argument("--quick", action="store_true", help="smoke: 3 runs, small data figures")
    parser.add_argument("--timeout", type=float, default=10.0, help="bound per run / phase (10 s)")
    parser.add_argument("--rt-count", type=int, default=2000, help="round trips measured (2000)")
    parser.add_argument("--rt-warmup", type=int, default=100, help="round trips not measured (100)")
    parser.add_argument("--rt-size", type=int, default=64, help="round-trip message bytes (64)")
    parser.add_argument("--tp-count", type=int, default=10_000, help="throughput messages (10000)")
    parser.add_argument("--tp-size", type=int, default=1024, help="throughput message bytes (1024)")
    parser.add_argument("--dc-rounds", type=int, default=3, help="data-channel rounds (3)")
    parser.add_argument(
        "--part", choices=["audio", "dc", "both"], default="both", help="what to run (both)"
    )
    parser.add_argument(
        "--runner",
        choices=["asyncio", "anyio"],
        default="asyncio",
        help="asyncio.run() (default, what applications do) or anyio.run(backend='asyncio')",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin server/bench CPUs")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 3
        args.rt_count, args.rt_warmup, args.tp_count, args.dc_rounds = 200, 20, 1000, 1
    return args


async def run(args: argparse.Namespace, port: int) -> None:
    if args.part in ("audio", "both"):
        await part_audio(port, args.runs, args.timeout)
    if args.part in ("dc", "both"):
        params = DcParams(
            args.rt_count, args.rt_warmup, args.rt_size, args.tp_count, args.tp_size, args.timeout
        )
        await part_dc(port, params, args.dc_rounds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = perf()
    server = ServerProcess()
    try:
        pinned = None if args.no_pin else pin_cpus(server.proc.pid)
        where = (
            "not pinned"
            if pinned is None
            else f"bench on CPU {pinned[0]}, server on CPU {pinned[1]}"
        )
        print(
            f"server: separate process, pid {server.proc.pid},"
            f" ws://{LOOPBACK}:{server.port}; {where}"
        )
        print(
            f"python {sys.version.split()[0]}, aiortc {_version('aiortc')}, av {av.__version__},"
            f" {os.cpu_count()} CPUs; both peers of each call share this process and loop"
        )
        print(_source_state())
        print(f"runner: {args.runner}.run() on an asyncio loop")
        if args.runner == "anyio":
            anyio.run(run, args, server.port, backend="asyncio")
        else:
            asyncio.run(run(args, server.port))
    finally:
        server.stop()
    print(f"\ntotal {perf() - started:.1f} s")
    return 0


def _source_state() -> str:
    """The SDK's git commit and whether its working tree has changes (what was measured)."""
    import metered_realtime.adapters.peer as peer_module

    repo = os.path.dirname(os.path.dirname(os.path.abspath(peer_module.__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", repo, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return f"SDK at {repo}"
    if not head:
        return f"SDK at {repo} (not a git checkout)"
    changed = [line[3:] for line in status.splitlines() if len(line) > 3]
    state = f" + uncommitted changes in {', '.join(changed)}" if changed else ""
    return f"SDK at {repo}, commit {head or '?'}{state}"


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
