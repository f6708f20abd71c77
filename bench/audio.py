"""AudioSource benchmark: CPU per 20 ms frame, and real-time pacing (jitter, drift).

Run ``python bench/audio.py`` (``--help`` for the flags; ``--quick`` for a smoke run). It prints
figures and asserts nothing.

Part 1, CPU (``--part cpu``): ``push()`` + ``recv()`` per 20 ms frame on asyncio with a fake
clock (``_clock`` / ``_sleep``: nothing sleeps), ``--frames`` (50,000) frames after 1,000 of
warm-up, ``--reps`` (5) repetitions, median reported, measured with ``time.thread_time_ns``.
Patterns: *in step* (push 20 ms, recv one frame: a real-time stream such as TTS or a relay),
*ahead* (push 1 s in 20 ms chunks, then recv 50 frames: a producer faster than real time; the
two halves are also timed apart). Every figure is also given as a ratio to a **baseline measured
in the same process**: an ``async`` ``recv()`` that only builds the 20 ms 48 kHz stereo
``av.AudioFrame`` from bytes, as aiortc's own ``AudioStreamTrack`` does for silence — the least
work any track does per frame — so ratios compare across machines. Rows marked *fallback* force
PyAV's ``AudioResampler`` (what ``AudioSource`` does where libswresample cannot be called
directly). Under trio, ``push`` from the trio thread is forwarded to the aiortc bridge thread:
its row is CPU time of the whole process (both threads) per push, and the wall time per push.

Part 2, real time (``--part rt``): ``--seconds`` (30) per row on the real loop clock. A producer
pushes 20 ms of 16 kHz mono (a 440 Hz tone) every 20 ms, one chunk ahead; the consumer calls
``recv()`` like aiortc's ``RTCRtpSender``: ``compute_audio_level_dbov`` then Opus encoding in
the loop's default executor (``--no-encode`` to skip it). Lateness of frame ``i`` = when its
``recv()`` returned − (``start + i * 20 ms``), ``start`` being the track's own schedule origin.
Printed: jitter p50 / p99 / max of that lateness (first 10 frames excluded), drift = the median
lateness of the last 50 frames − that of frames 10-59 (the schedule error accumulated over the
run) and the same against ``CLOCK_MONOTONIC_RAW`` (the loop's clock vs the hardware's),
re-anchors, silent frames after the start, CPU per frame of the loop thread running the track
and of the whole process (Opus included). Rows: asyncio; trio (the track and its consumer on
the bridge loop, the producer on trio: ``push`` crosses threads, its wall time per call is
printed too); each again ``+ load``: a task on the *producer's* loop busy for 2 ms of pure
Python every 10 ms.

Targets (2-core VM): in-step CPU ≤ 10 µs per frame on asyncio; jitter p99 ≤ 1 ms on asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from av.audio.format import AudioFormat
from av.audio.layout import AudioLayout

import metered_realtime.media.audio as audio_module
from metered_realtime.media.audio import AudioSource

FRAME = 960
FRAME_BYTES = FRAME * 4
CPU_TARGET_US = 10.0
JITTER_TARGET_MS = 1.0
REPO = Path(__file__).resolve().parent.parent


def tone(rate: int, channels: int, seconds: float, freq: float = 440.0) -> bytes:
    """s16 little-endian interleaved sine, ``channels`` copies per sample."""
    out = bytearray()
    for i in range(round(rate * seconds)):
        v = round(8000 * math.sin(2 * math.pi * freq * i / rate))
        out += v.to_bytes(2, "little", signed=True) * channels
    return bytes(out)


# ---------------------------------------------------------------- part 1: CPU


class FakeClock:
    """``_clock`` / ``_sleep`` for AudioSource: a sleep only moves the clock (no yield)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay


class BaselineTrack:
    """The least a track does per frame: build a 20 ms 48 kHz stereo frame from bytes."""

    def __init__(self) -> None:
        self.payload = bytes(FRAME_BYTES)
        self.index = 0
        self.fmt = AudioFormat("s16")
        self.layout = AudioLayout("stereo")
        self.time_base = fractions.Fraction(1, 48_000)

    async def recv(self) -> av.AudioFrame:
        frame = av.AudioFrame(format=self.fmt, layout=self.layout, samples=FRAME)
        frame.planes[0].update(self.payload)
        frame.pts = self.index * FRAME
        frame.sample_rate = 48_000
        frame.time_base = self.time_base
        self.index += 1
        return frame


def pcm_frame(pcm: bytes, rate: int, layout: str) -> av.AudioFrame:
    channels = 1 if layout == "mono" else 2
    frame = av.AudioFrame(format="s16", layout=layout, samples=len(pcm) // (2 * channels))
    frame.planes[0].update(pcm)
    frame.sample_rate = rate
    return frame


@dataclass
class Scenario:
    name: str
    rate: int = 16_000
    layout: str = "mono"
    pattern: str = "in step"  # or "ahead"
    frames: bool = False  # push av.AudioFrames instead of bytes
    fallback: bool = False  # PyAV's AudioResampler instead of libswresample


SCENARIOS = [
    Scenario("16 kHz mono bytes, in step"),
    Scenario("16 kHz mono bytes, ahead", pattern="ahead"),
    Scenario("24 kHz mono bytes, in step", rate=24_000),
    Scenario("24 kHz mono bytes, ahead", rate=24_000, pattern="ahead"),
    Scenario("8 kHz mono bytes, in step", rate=8_000),
    Scenario("48 kHz stereo bytes (passthrough), in step", rate=48_000, layout="stereo"),
    Scenario(
        "48 kHz stereo bytes (passthrough), ahead",
        rate=48_000,
        layout="stereo",
        pattern="ahead",
    ),
    Scenario("AudioFrame 16 kHz mono s16, in step", frames=True),
    Scenario("AudioFrame 48 kHz stereo s16, in step", rate=48_000, layout="stereo", frames=True),
    Scenario("16 kHz mono bytes, in step, fallback", fallback=True),
    Scenario("16 kHz mono bytes, ahead, fallback", pattern="ahead", fallback=True),
]


async def _time_baseline(frames: int) -> float:
    track = BaselineTrack()
    for _ in range(1000):
        await track.recv()
    t0 = time.thread_time_ns()
    for _ in range(frames):
        await track.recv()
    return (time.thread_time_ns() - t0) / frames / 1000


async def _time_scenario(sc: Scenario, frames: int) -> tuple[float, float, float]:
    """µs per frame: total, push part, recv part (the parts only for the ahead pattern)."""
    saved = getattr(audio_module, "_SWR", None)
    if sc.fallback:
        audio_module._SWR = None
    try:
        clock = FakeClock()
        channels = 1 if sc.layout == "mono" else 2
        src = AudioSource(
            input_rate=sc.rate,
            input_layout=sc.layout,
            max_buffered_seconds=3600,
            _clock=clock.time,
            _sleep=clock.sleep,
        )
        pcm = tone(sc.rate, channels, 1.0)
        step = len(pcm) // 50
        items: list[Any] = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        if sc.frames:
            items = [pcm_frame(chunk, sc.rate, sc.layout) for chunk in items]
        push, recv = src.push, src.recv
        for i in range(1000):  # warm-up, in step
            await push(items[i % 50])
            await recv()
        if sc.pattern == "in step":
            t0 = time.thread_time_ns()
            for i in range(frames):
                await push(items[i % 50])
                await recv()
            total = (time.thread_time_ns() - t0) / frames / 1000
            return total, math.nan, math.nan
        pushing = receiving = 0
        for _ in range(frames // 50):
            t0 = time.thread_time_ns()
            for item in items:
                await push(item)
            t1 = time.thread_time_ns()
            for _ in range(50):
                await recv()
            t2 = time.thread_time_ns()
            pushing += t1 - t0
            receiving += t2 - t1
        n = frames // 50 * 50
        return (pushing + receiving) / n / 1000, pushing / n / 1000, receiving / n / 1000
    finally:
        audio_module._SWR = saved


def _trio_push_cost(pushes: int) -> tuple[float, float]:
    """(process CPU µs, wall µs) per 20 ms push from trio, forwarded to the bridge."""
    import trio

    from metered_realtime.adapters import bridge

    result: list[float] = []

    async def main() -> None:
        lease = bridge.acquire()
        try:
            src = AudioSource(max_buffered_seconds=3600)
            chunk = tone(16_000, 1, 0.02)
            for _ in range(200):
                await src.push(chunk)
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            for _ in range(pushes):
                await src.push(chunk)
            c1, w1 = time.process_time_ns(), time.perf_counter_ns()
            result[:] = [(c1 - c0) / pushes / 1000, (w1 - w0) / pushes / 1000]
            src.stop()
        finally:
            await lease.release()

    trio.run(main)
    return result[0], result[1]


def part_cpu(args: argparse.Namespace) -> dict[str, float]:
    frames = args.frames
    print(f"\n== Part 1: CPU per 20 ms frame (fake clock, {frames} frames x {args.reps} reps)")
    print(
        f"   libswresample called directly: {getattr(audio_module, '_SWR', None) is not None}; "
        f"precise timer: {getattr(audio_module, '_TIMERFD', None) is not None}"
    )
    baselines: list[float] = []
    results: dict[str, list[tuple[float, float, float]]] = {sc.name: [] for sc in SCENARIOS}

    async def run_all() -> None:
        for _ in range(args.reps):  # interleaved, so load from elsewhere hits every row alike
            baselines.append(await _time_baseline(frames))
            for sc in SCENARIOS:
                results[sc.name].append(await _time_scenario(sc, frames))

    asyncio.run(run_all())
    base = statistics.median(baselines)
    print(f"   baseline (build a 48 kHz stereo frame from bytes): {base:.2f} µs/frame")
    print(f"   {'scenario':<48} {'µs/frame':>9} {'x base':>7} {'push':>7} {'recv':>7}")
    summary: dict[str, float] = {"baseline": base}
    for sc in SCENARIOS:
        rows = results[sc.name]
        total = statistics.median(r[0] for r in rows)
        parts = ""
        if sc.pattern == "ahead":
            parts = (
                f" {statistics.median(r[1] for r in rows):>7.2f}"
                f" {statistics.median(r[2] for r in rows):>7.2f}"
            )
        print(f"   {sc.name:<48} {total:>9.2f} {total / base:>7.2f}{parts}")
        summary[sc.name] = total
    if not args.no_trio:
        pushes = max(500, frames // 10)
        costs = [_trio_push_cost(pushes) for _ in range(max(1, args.reps // 2))]
        cpu = statistics.median(c[0] for c in costs)
        wall = statistics.median(c[1] for c in costs)
        print(
            f"   {'trio: push only, forwarded (process CPU)':<48} {cpu:>9.2f} {cpu / base:>7.2f}"
            f"   wall {wall:.1f} µs per push"
        )
    spread = (max(baselines) - min(baselines)) / base
    print(f"   baseline spread over reps: {spread:.0%} (high: the machine was busy, rerun)")
    in_step = summary[SCENARIOS[0].name]
    verdict = "met" if in_step <= CPU_TARGET_US else "MISSED"
    print(
        f"   target: 16 kHz in step ≤ {CPU_TARGET_US:.0f} µs/frame on asyncio: "
        f"{in_step:.2f} µs → {verdict}"
    )
    return summary


# ---------------------------------------------------------------- part 2: real time


@dataclass
class RtResult:
    late: list[float] = field(default_factory=list)  # seconds, per frame
    loop: list[float] = field(default_factory=list)  # the loop's clock at each return
    raw: list[float] = field(default_factory=list)  # CLOCK_MONOTONIC_RAW at each return
    silent: int = 0
    reanchors: int = 0
    loop_cpu_ns: int = 0  # the loop thread running the track, aiortc's level excluded
    level_cpu_ns: int = 0  # aiortc's compute_audio_level_dbov (pure Python, per sample)
    process_cpu_ns: int = 0
    push_wall: list[float] = field(default_factory=list)


def busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


class Consumer:
    """aiortc's RTCRtpSender loop, minus the network: recv, audio level, Opus in the executor."""

    def __init__(self, src: AudioSource, frames: int, encode: bool, result: RtResult) -> None:
        self.src = src
        self.frames = frames
        self.encode = encode
        self.result = result

    async def run(self) -> None:
        from aiortc import rtp
        from aiortc.codecs.opus import OpusEncoder

        loop = asyncio.get_running_loop()
        encoder = OpusEncoder()
        src, res = self.src, self.result
        raw = time.CLOCK_MONOTONIC_RAW
        start: float | None = None
        cpu0 = time.thread_time_ns()
        for i in range(self.frames):
            frame = await src.recv()
            now = loop.time()
            res.raw.append(time.clock_gettime(raw))
            res.loop.append(now)
            if src._start != start:
                if start is not None:
                    res.reanchors += 1
                start = src._start
            assert start is not None
            res.late.append(now - (start + i * 0.02))
            c0 = time.thread_time_ns()
            level = rtp.compute_audio_level_dbov(frame)
            res.level_cpu_ns += time.thread_time_ns() - c0
            if i > 10 and level == -127:  # digital silence
                res.silent += 1
            if self.encode:
                await loop.run_in_executor(None, encoder.encode, frame, False)
        res.loop_cpu_ns = time.thread_time_ns() - cpu0 - res.level_cpu_ns


async def _asyncio_rt(seconds: float, load: bool, encode: bool) -> RtResult:
    loop = asyncio.get_running_loop()
    res = RtResult()
    src = AudioSource()
    chunk = tone(16_000, 1, 0.02)
    frames = round(seconds / 0.02)

    async def produce() -> None:
        t0 = loop.time()
        await src.push(chunk)  # one chunk ahead
        k = 0
        while True:
            await src.push(chunk)
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))

    async def loader() -> None:
        while True:
            await asyncio.sleep(0.01)
            busy(2.0)

    tasks = [asyncio.create_task(produce())]
    if load:
        tasks.append(asyncio.create_task(loader()))
    await asyncio.sleep(0)
    cpu0 = time.process_time_ns()
    try:
        await Consumer(src, frames, encode, res).run()
    finally:
        res.process_cpu_ns = time.process_time_ns() - cpu0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        src.stop()
    return res


def _trio_rt(seconds: float, load: bool, encode: bool) -> RtResult:
    import trio

    from metered_realtime.adapters import bridge

    res = RtResult()
    frames = round(seconds / 0.02)

    async def main() -> None:
        lease = bridge.acquire()
        src = AudioSource()
        chunk = tone(16_000, 1, 0.02)
        try:
            async with trio.open_nursery() as nursery:
                if load:

                    async def loader() -> None:
                        while True:
                            await trio.sleep(0.01)
                            busy(2.0)

                    nursery.start_soon(loader)
                t0 = time.monotonic()
                await src.push(chunk)  # one chunk ahead
                await src.push(chunk)
                cpu0 = time.process_time_ns()
                future = asyncio.run_coroutine_threadsafe(
                    Consumer(src, frames, encode, res).run(), lease.loop
                )
                k = 1
                while not future.done():
                    k += 1
                    await trio.sleep(max(0.0, t0 + (k - 1) * 0.02 - time.monotonic()))
                    w0 = time.perf_counter()
                    await src.push(chunk)
                    res.push_wall.append(time.perf_counter() - w0)
                res.process_cpu_ns = time.process_time_ns() - cpu0
                future.result()
                nursery.cancel_scope.cancel()
        finally:
            src.stop()
            await lease.release()

    trio.run(main)
    return res


async def _idle_wake_cost(seconds: float) -> float:
    """CPU µs per wake-up of a loop whose only task sleeps until every 20 ms due time."""
    loop = asyncio.get_running_loop()
    n = round(seconds / 0.02)
    t0 = loop.time()
    c0 = time.thread_time_ns()
    for i in range(1, n + 1):
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - loop.time()))
    return (time.thread_time_ns() - c0) / n / 1000


FLOOR_SCRIPT = """
import sys, time
n = int(sys.argv[1])
t0 = time.monotonic() + 0.02
late = []
for i in range(n):
    due = t0 + i * 0.02
    time.sleep(max(0.0, due - time.monotonic()))
    late.append(time.monotonic() - due)
late.sort()
print(late[len(late) // 2], late[min(len(late) - 1, int(0.99 * len(late)))], late[-1])
"""


class Floor:
    """A bare process sleeping on the same 20 ms grid meanwhile (``time.sleep``: no loop, no
    GIL shared with the bench): the lateness the machine itself adds."""

    def __init__(self, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FLOOR_SCRIPT, str(round(seconds / 0.02))],
            stdout=subprocess.PIPE,
            text=True,
        )

    def result(self) -> tuple[float, float, float]:
        out, _ = self.proc.communicate(timeout=30)
        p50, p99, top = (float(x) * 1e3 for x in out.split())
        return p50, p99, top


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _report(name: str, res: RtResult) -> dict[str, float]:
    late = res.late[10:]
    n = len(res.late)
    head = statistics.median(res.late[10:60])
    tail = statistics.median(res.late[-50:])
    # how far the loop's clock (CLOCK_MONOTONIC, NTP-slewed) moved from the hardware's meanwhile
    raw_drift = (res.loop[-1] - res.loop[10]) - (res.raw[-1] - res.raw[10])
    row = {
        "p50": _pct(late, 0.5) * 1e3,
        "p99": _pct(late, 0.99) * 1e3,
        "max": max(late) * 1e3,
        "drift": (tail - head) * 1e3,
        "loop_cpu": res.loop_cpu_ns / n / 1000,
        "level_cpu": res.level_cpu_ns / n / 1000,
        "cpu": res.process_cpu_ns / n / 1000,
    }
    push = ""
    if res.push_wall:
        push = (
            f"  push wall p50 {_pct(res.push_wall, 0.5) * 1e6:.0f} µs"
            f" p99 {_pct(res.push_wall, 0.99) * 1e6:.0f} µs"
        )
    print(
        f"   {name:<16} {row['p50']:>6.3f} {row['p99']:>6.3f} {row['max']:>7.3f}"
        f" {row['drift']:>+8.3f} {raw_drift * 1e3:>+8.3f} {res.reanchors:>4} {res.silent:>6}"
        f" {row['loop_cpu']:>7.1f} {row['level_cpu']:>6.0f} {row['cpu']:>7.0f}{push}"
    )
    return row


def part_rt(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    encode = not args.no_encode
    print(
        f"\n== Part 2: real time, {args.seconds:g} s per row, 16 kHz mono pushed in step "
        f"(one chunk ahead); consumer: recv + audio level{' + Opus in executor' if encode else ''}"
    )
    if args.fifo:
        print("   SCHED_FIFO: the rows and the floor run at real-time priority 10")
    print(
        f"   precise timer (timerfd): {getattr(audio_module, '_TIMERFD', None) is not None}; "
        f"libswresample direct: {getattr(audio_module, '_SWR', None) is not None}"
    )
    print(
        f"   {'row':<16} {'p50':>6} {'p99':>6} {'max':>7} {'drift':>8} {'vs raw':>8} {'re-a':>4}"
        f" {'silent':>6} {'loop µs':>7} {'level':>6} {'proc µs':>7}   (ms; CPU µs per frame)"
    )
    idle = asyncio.run(_idle_wake_cost(min(args.seconds, 5.0)))
    print(
        f"   reference: an idle asyncio loop waking every 20 ms costs {idle:.0f} µs of CPU per "
        "wake-up here (the kernel's share included); a row has ~3 wake-ups per frame"
    )
    rows: dict[str, dict[str, float]] = {}
    runs: list[tuple[str, Callable[[], RtResult]]] = []
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    for backend in backends:
        for load in (False, True):
            name = backend + (" + load" if load else "")
            if backend == "asyncio":

                def go(load: bool = load) -> RtResult:
                    return asyncio.run(_asyncio_rt(args.seconds, load, encode))

            else:

                def go(load: bool = load) -> RtResult:
                    return _trio_rt(args.seconds, load, encode)

            runs.append((name, go))
    floors: list[tuple[float, float, float]] = []
    if args.fifo:  # threads started from here on (and the floor process) inherit it
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    try:
        for name, go in runs:
            floor = Floor(args.seconds)
            rows[name] = _report(name, go())
            floors.append(floor.result())
    finally:
        if args.fifo:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    print(
        "   floor (a bare process on the same grid meanwhile, ms p50/p99/max): "
        + "; ".join(f"{p50:.3f}/{p99:.3f}/{top:.3f}" for p50, p99, top in floors)
    )
    if "asyncio" in rows:
        p99 = rows["asyncio"]["p99"]
        verdict = "met" if p99 <= JITTER_TARGET_MS else "MISSED"
        print(f"   target: asyncio jitter p99 ≤ {JITTER_TARGET_MS:g} ms: {p99:.3f} ms → {verdict}")
    return rows


# ---------------------------------------------------------------- main


def describe() -> None:
    def git(*argv: str) -> str:
        try:
            out = subprocess.run(
                ["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return "?"
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--", "media/audio.py")
    print(
        f"AudioSource bench: commit {git('rev-parse', '--short', 'HEAD')}"
        f"{' (media/audio.py modified)' if dirty else ''}; Python {platform.python_version()}, "
        f"PyAV {av.__version__}, {os.cpu_count()} CPUs, "
        f"affinity {sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--part", choices=["cpu", "rt", "both"], default="both")
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--frames", type=int, default=50_000, help="frames per CPU figure")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per CPU figure (5)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per real-time row")
    parser.add_argument("--no-encode", action="store_true", help="consumer skips Opus encoding")
    parser.add_argument("--no-timerfd", action="store_true", help="recv() uses asyncio.sleep")
    parser.add_argument("--pin", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument(
        "--fifo",
        action="store_true",
        help="real-time rows under SCHED_FIFO (root): the machine's other load out of the figures",
    )
    parser.add_argument("--quick", action="store_true", help="smoke: 5,000 frames, 3 s rows")
    args = parser.parse_args(argv)
    args.no_trio = args.backend == "asyncio"
    if args.quick:
        args.frames = min(args.frames, 5_000)
        args.reps = min(args.reps, 2)
        args.seconds = min(args.seconds, 3.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pin is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.pin})
    if args.no_timerfd:
        audio_module._TIMERFD = None
    describe()
    if args.part in ("cpu", "both"):
        part_cpu(args)
    if args.part in ("rt", "both"):
        part_rt(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
