"""AudioSource and iter_frames, on generated audio and an injected clock (no real-time waits)."""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import fractions
import gc
import itertools
import math
import os
import random
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import av
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

import metered_realtime.media.audio as audio_module
from metered_realtime.media import AudioSource, iter_frames

pytestmark = pytest.mark.anyio

RATE = 48_000
FRAME = 960
FRAME_BYTES = FRAME * 4
SILENCE = bytes(FRAME_BYTES)


@pytest.fixture
def anyio_backend() -> str:
    """aiortc tracks live on asyncio."""
    return "asyncio"


@pytest.fixture(params=["libswresample", "pyav"])
def resampler(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libswresample called directly (where reachable) and with PyAV's
    ``AudioResampler``, the fallback."""
    if request.param == "pyav":
        monkeypatch.setattr(audio_module, "_SWR", None)
    elif audio_module._SWR is None:
        pytest.skip("libswresample is not reachable through ctypes here")
    return str(request.param)


class FakeClock:
    """The pacing clock: ``sleep`` advances ``now`` (plus optional oversleep) and yields once."""

    def __init__(self, start: float = 1000.0, oversleep: Callable[[], float] | None = None):
        self.now = start
        self.sleeps: list[float] = []
        self.oversleep = oversleep

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay + (self.oversleep() if self.oversleep else 0.0)
        await asyncio.sleep(0)


def source(clock: FakeClock, **kwargs: Any) -> AudioSource:
    return AudioSource(_clock=clock.time, _sleep=clock.sleep, **kwargs)


def pack(samples: Sequence[int]) -> bytes:
    data = array.array("h", samples)
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def unpack(data: bytes) -> array.array[int]:
    samples = array.array("h", data)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def tone(
    rate: int, seconds: float, freqs: Sequence[float], amp: float = 10_000.0, offset: float = 0.0
) -> list[int]:
    """Interleaved s16 samples: one sine per channel (``len(freqs)`` channels)."""
    out: list[int] = []
    for i in range(round(rate * seconds)):
        for f in freqs:
            out.append(round(offset + amp * math.sin(2 * math.pi * f * i / rate)))
    return out


def frame_bytes(frame: av.AudioFrame) -> bytes:
    return bytes(frame.planes[0])[: frame.samples * 4]


def power(samples: Sequence[int], rate: int, freq: float) -> float:
    """Goertzel: the signal's power at ``freq``."""
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


CANDIDATES = (250.0, 500.0, 1000.0, 1500.0, 2500.0, 4000.0, 7000.0)


def peak(samples: Sequence[int]) -> float:
    return max(CANDIDATES, key=lambda f: power(samples, RATE, f))


async def collect(src: AudioSource) -> bytes:
    """Every byte the source sends until it ends."""
    return b"".join([frame_bytes(f) async for f in iter_frames(src)])


# ---------------------------------------------------------------- frames and pacing


async def test_frames_are_20ms_48k_stereo_s16() -> None:
    src = source(FakeClock())
    assert src.kind == "audio"
    assert src.readyState == "live"
    frame = await src.recv()
    assert isinstance(frame, av.AudioFrame)
    assert (frame.samples, frame.sample_rate, frame.format.name, frame.layout.name) == (
        960,
        48_000,
        "s16",
        "stereo",
    )
    assert frame.pts == 0
    assert frame.time_base == fractions.Fraction(1, 48_000)
    assert frame_bytes(frame) == SILENCE


async def test_pacing_is_exact_with_a_perfect_clock() -> None:
    clock = FakeClock(start=5.0)
    src = source(clock)
    for i in range(500):
        frame = await src.recv()
        assert frame.pts == i * FRAME
        assert clock.now == pytest.approx(5.0 + i * 0.02, abs=1e-9)
    assert len(clock.sleeps) == 499  # frame 0 is due at once


async def test_no_drift_over_ten_minutes_of_oversleeping() -> None:
    """30,000 frames with every sleep running 0-4 ms long: the error never accumulates."""
    rng = random.Random(7)
    clock = FakeClock(start=1000.0, oversleep=lambda: rng.uniform(0, 0.004))
    src = source(clock)
    start = clock.now
    worst = 0.0
    for i in range(30_000):
        frame = await src.recv()
        assert frame.pts == i * FRAME
        late = clock.now - (start + i * 0.02)
        assert -1e-9 <= late <= 0.004 + 1e-9
        worst = max(worst, late)
        if i % 1000 == 0:
            assert frame_bytes(frame) == SILENCE  # nothing pushed: silence in every slot
    assert clock.now - start == pytest.approx(599.98, abs=0.005)
    assert worst > 0.003  # the oversleep really happened


async def test_late_frames_are_not_waited_for_and_long_stalls_reanchor() -> None:
    clock = FakeClock(start=0.0)
    src = source(clock)
    for _ in range(3):
        await src.recv()  # frames 0..2; frame 3 is due at 0.06
    clock.now += 0.1  # a short stall: frames 3..7 are overdue and come at once
    sleeps = len(clock.sleeps)
    for _ in range(5):
        await src.recv()
    assert len(clock.sleeps) == sleeps
    frame = await src.recv()  # frame 8 is due at 0.16: the schedule still holds
    assert frame.pts == 8 * FRAME
    assert clock.now == pytest.approx(0.16)

    clock.now += 5.0  # a long stall (e.g. a gap between connections): no 250-frame burst
    frame = await src.recv()
    assert frame.pts == 9 * FRAME
    resumed = clock.now
    for i in range(1, 4):
        frame = await src.recv()
        assert frame.pts == (9 + i) * FRAME
        assert clock.now == pytest.approx(resumed + i * 0.02)


@pytest.mark.usefixtures("resampler")
async def test_underrun_sends_silence_and_keeps_the_partial_frame() -> None:
    clock = FakeClock()
    src = source(clock, input_rate=48_000, input_layout="stereo")
    ramp = pack([(i % 30_000) + 1 for i in range(6 * FRAME)])  # 3 frames' worth, never zero
    await src.push(ramp[: FRAME_BYTES + FRAME_BYTES // 2])  # 1.5 frames
    assert frame_bytes(await src.recv()) == ramp[:FRAME_BYTES]
    before = clock.now
    assert frame_bytes(await src.recv()) == SILENCE  # half a frame queued: silence, no wait
    assert clock.now == pytest.approx(before + 0.02)
    await src.push(ramp[FRAME_BYTES + FRAME_BYTES // 2 : 2 * FRAME_BYTES + FRAME_BYTES // 2])
    assert frame_bytes(await src.recv()) == ramp[FRAME_BYTES : 2 * FRAME_BYTES]
    assert src.buffered_seconds == pytest.approx(0.01)


async def test_underrun_is_logged_once_per_episode() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
            self.lines.append(msg)

        info = warning = error = debug

    log = Recorder()
    src = source(FakeClock(), input_rate=48_000, input_layout="stereo", logger=log)
    for _ in range(5):
        await src.recv()
    await src.push(bytes(2 * FRAME_BYTES))
    for _ in range(5):
        await src.recv()
    assert [line for line in log.lines if "underrun" in line] == [
        "audio source underrun: sending silence",
        "audio source recovered from underrun",
        "audio source underrun: sending silence",
    ]


async def test_default_clock_is_the_running_loop() -> None:
    src = AudioSource()
    t0 = time.monotonic()
    frames = [await src.recv() for _ in range(3)]
    assert [f.pts for f in frames] == [0, 960, 1920]
    assert time.monotonic() - t0 >= 0.035


# ---------------------------------------------------------------- resampling


@pytest.mark.usefixtures("resampler")
@pytest.mark.parametrize(
    ("rate", "layout", "freqs"),
    [
        (16_000, "mono", (1000.0,)),
        (8_000, "mono", (1000.0,)),
        (44_100, "stereo", (1000.0, 2500.0)),
        (48_000, "stereo", (1000.0, 2500.0)),
        (96_000, "mono", (1000.0,)),
    ],
)
async def test_pcm_is_resampled_to_48k_stereo(
    rate: int, layout: str, freqs: tuple[float, ...]
) -> None:
    src = source(FakeClock(), input_rate=rate, input_layout=layout)
    await src.push(pack(tone(rate, 0.5, freqs)))
    out = b"".join([frame_bytes(await src.recv()) for _ in range(20)])
    samples = unpack(out)
    window = slice(2 * 4800, 2 * 9600)  # 0.1-0.2 s: past the filter's start-up
    left, right = samples[window][0::2], samples[window][1::2]
    assert peak(left) == freqs[0]
    assert peak(right) == freqs[-1]  # mono is copied to both channels
    for channel, freq in ((left, freqs[0]), (right, freqs[-1])):
        signal = power(channel, RATE, freq)
        assert all(power(channel, RATE, f) < signal / 1000 for f in CANDIDATES if f != freq)
        rms = math.sqrt(sum(x * x for x in channel) / len(channel))
        assert rms == pytest.approx(10_000 / math.sqrt(2), rel=0.03)


@pytest.mark.parametrize(
    ("direct", "in_ffmpeg"),
    [(True, True), (False, True), (False, False)],
    ids=["swr", "pyav", "dup"],
)
async def test_mono_is_copied_to_both_channels_at_full_level(
    direct: bool, in_ffmpeg: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FFmpeg alone would pan mono -3 dB; with or without resampler options, it is 0 dB."""
    if direct and audio_module._SWR is None:
        pytest.skip("libswresample is not reachable through ctypes here")
    if not direct:
        monkeypatch.setattr(audio_module, "_SWR", None)
    monkeypatch.setattr(audio_module, "_UPMIX_IN_FFMPEG", in_ffmpeg)
    src = source(FakeClock(), input_rate=16_000)
    await src.push(pack(tone(16_000, 0.2, (1000.0,), amp=20_000, offset=5_000)))
    await src.push(pack([-32768] * 1600 + [32767] * 1600))  # full scale does not clip or wrap
    src.end()
    samples = unpack(await collect(src))
    left, right = samples[0::2], samples[1::2]
    assert left == right
    window = left[2400:7200]
    assert max(window) == pytest.approx(25_000, abs=60)
    assert min(window) == pytest.approx(-15_000, abs=60)
    assert min(left[9600 + 1000 : 14400 - 1000]) == -32768
    assert max(left[14400 + 1000 : 19200 - 1000]) == 32767


def _float_frame(rate: int, seconds: float, freqs: Sequence[float]) -> av.AudioFrame:
    """A planar float (fltp) stereo frame: a format AudioSource never sees as bytes."""
    n = round(rate * seconds)
    frame = av.AudioFrame(format="fltp", layout="stereo", samples=n)
    for plane, f in zip(frame.planes, freqs, strict=True):
        plane.update(
            struct.pack(f"={n}f", *(0.3 * math.sin(2 * math.pi * f * i / rate) for i in range(n)))
        )
    frame.sample_rate = rate
    return frame


@pytest.mark.usefixtures("resampler")
async def test_audio_frames_of_any_format_are_resampled() -> None:
    src = source(FakeClock())  # input_rate/layout apply to bytes only
    await src.push(_float_frame(22_050, 0.5, (1000.0, 2500.0)))
    samples = unpack(b"".join([frame_bytes(await src.recv()) for _ in range(20)]))
    window = samples[2 * 4800 : 2 * 9600]
    assert peak(window[0::2]) == 1000.0
    assert peak(window[1::2]) == 2500.0


@pytest.mark.usefixtures("resampler")
async def test_s16_mono_audio_frame_matches_the_same_pcm_as_bytes() -> None:
    pcm = pack(tone(16_000, 0.3, (1000.0,)))
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm)
    frame.sample_rate = 16_000
    as_bytes, as_frame = source(FakeClock()), source(FakeClock())
    await as_bytes.push(pcm)
    await as_frame.push(frame)
    as_bytes.end()
    as_frame.end()
    assert await collect(as_bytes) == await collect(as_frame)


async def test_48k_stereo_s16_passes_through_untouched() -> None:
    pcm = pack([(i * 37) % 20_000 + 1 for i in range(2 * 2 * FRAME)])
    frame = av.AudioFrame(format="s16", layout="stereo", samples=2 * FRAME)
    frame.planes[0].update(pcm)
    frame.sample_rate = 48_000
    src = source(FakeClock())
    await src.push(frame)
    await src.push(pcm[: 2 * FRAME_BYTES])  # bytes at 16 kHz mono are resampled as usual
    assert frame_bytes(await src.recv()) + frame_bytes(await src.recv()) == pcm
    src2 = source(FakeClock(), input_rate=48_000, input_layout="stereo")
    await src2.push(pcm)
    assert frame_bytes(await src2.recv()) + frame_bytes(await src2.recv()) == pcm


async def test_a_frame_in_the_input_format_after_a_partial_sample_stays_aligned() -> None:
    """Such frames are queued as PCM, except behind a trailing partial sample, which would
    shift them by a byte: then they are resampled as frames."""
    src = source(FakeClock())
    await src.push(pack(tone(16_000, 0.1, (500.0,))) + b"\x01")  # 1 byte carried over
    pcm = pack(tone(16_000, 0.3, (1000.0,)))
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm)
    frame.sample_rate = 16_000
    await src.push(frame)
    src.end()
    left = unpack(await collect(src))[0::2]
    assert peak(left[7200:16800]) == 1000.0  # 0.15-0.35 s: the frame, intact
    assert peak(left[1000:4000]) == 500.0


@pytest.mark.usefixtures("resampler")
async def test_mixed_pushes_keep_their_order() -> None:
    """PCM, then a frame in another format, then PCM: out in that order, none lost."""
    src = source(FakeClock(), input_rate=16_000)
    await src.push(pack([1000] * 1600))  # 0.1 s at 16 kHz
    frame = av.AudioFrame(format="s16", layout="stereo", samples=4410)  # 0.1 s at 44.1 kHz
    frame.planes[0].update(pack([2000] * 2 * 4410))
    frame.sample_rate = 44_100
    await src.push(frame)
    await src.push(pack([3000] * 1600))
    src.end()
    left = unpack(await collect(src))[0::2]
    for centre, level in ((0.05, 1000), (0.15, 2000), (0.25, 3000)):
        at = round(centre * RATE)
        assert sorted(left[at - 1000 : at + 1000])[1000] == pytest.approx(level, abs=5)
    last = max(i for i, x in enumerate(left) if x)
    assert last + 1 == pytest.approx(3 * 4800, abs=48)


@pytest.mark.usefixtures("resampler")
async def test_a_resampled_frame_is_flushed_before_passthrough_pcm() -> None:
    src = source(FakeClock(), input_rate=48_000, input_layout="stereo")
    frame = av.AudioFrame(format="s16", layout="mono", samples=1600)  # 0.1 s at 16 kHz
    frame.planes[0].update(pack([1000] * 1600))
    frame.sample_rate = 16_000
    await src.push(frame)
    tail = pack([2000] * 2 * 4800)  # 0.1 s at 48 kHz stereo: no resampler
    await src.push(tail)
    src.end()
    out = await collect(src)
    assert out[4800 * 4 : 4800 * 4 + len(tail)] == tail  # exactly 0.1 s of the frame came first
    left = unpack(out[: 4800 * 4])[0::2]
    assert min(left[100:-100]) == max(left[100:-100]) == 1000


@pytest.mark.usefixtures("resampler")
@pytest.mark.parametrize(("rate", "layout"), [(16_000, "mono"), (44_100, "stereo")])
async def test_partial_samples_carry_over_between_pushes(rate: int, layout: str) -> None:
    channels = 1 if layout == "mono" else 2
    pcm = pack(tone(rate, 0.25, (1000.0,) * channels))
    whole, chopped = source(FakeClock(), input_rate=rate, input_layout=layout), None
    chopped = source(FakeClock(), input_rate=rate, input_layout=layout)
    await whole.push(pcm)
    rng = random.Random(11)
    pos = 0
    while pos < len(pcm):  # odd sizes: samples split across pushes at every byte offset
        size = rng.choice((1, 2, 3, 5, 7, 333, 1001))
        await chopped.push(pcm[pos : pos + size])
        pos += size
    whole.end()
    chopped.end()
    out = await collect(whole)
    assert out == await collect(chopped)
    assert len(out) >= 0.25 * RATE * 4


async def test_bytearray_and_memoryview_are_accepted_and_copied() -> None:
    src = source(FakeClock(), input_rate=48_000, input_layout="stereo")
    buf = bytearray(b"\x01\x00" * 2 * FRAME)
    await src.push(buf)
    buf[:] = bytes(len(buf))  # the caller reuses its buffer: the queued audio is a copy
    await src.push(memoryview(b"\x02\x00" * 2 * FRAME))
    await src.push(b"")
    assert frame_bytes(await src.recv()) == b"\x01\x00" * 2 * FRAME
    assert frame_bytes(await src.recv()) == b"\x02\x00" * 2 * FRAME


# ---------------------------------------------------------------- libswresample, called directly


async def _played(
    monkeypatch: pytest.MonkeyPatch,
    direct: bool,
    pushes: Sequence[bytes | av.AudioFrame],
    in_step: bool,
    **kwargs: Any,
) -> bytes:
    """What a source sends for ``pushes``: one push per recv (in step), or all of them first."""
    with monkeypatch.context() as patch:
        if not direct:
            patch.setattr(audio_module, "_SWR", None)
        src = source(FakeClock(), **kwargs)
        sent = b""
        for data in pushes:
            await src.push(data)
            if in_step:
                sent += frame_bytes(await src.recv())
        src.end()
        return sent + await collect(src)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


needs_swr = pytest.mark.skipif(
    audio_module._SWR is None, reason="libswresample is not reachable through ctypes here"
)


@needs_swr
@pytest.mark.parametrize("in_step", [True, False], ids=["in_step", "ahead"])
@pytest.mark.parametrize(
    ("rate", "layout"),
    [
        (16_000, "mono"),
        (8_000, "mono"),
        (24_000, "mono"),  # resampled as mono, then upmixed by a second context
        (22_050, "mono"),
        (44_100, "mono"),
        (96_000, "mono"),
        (48_000, "mono"),  # no resampling: the upmix alone
        (44_100, "stereo"),
    ],
)
async def test_direct_libswresample_matches_pyav_sample_for_sample(
    monkeypatch: pytest.MonkeyPatch, rate: int, layout: str, in_step: bool
) -> None:
    """Same library, same options: the direct calls send exactly what PyAV's resampler would,
    whether recv() converts 20 ms at a time (in step) or in batches (pushed ahead)."""
    channels = 1 if layout == "mono" else 2
    pcm = pack(tone(rate, 0.6, (1000.0,) * channels, amp=12_000))
    chunks = _chunks(pcm, rate // 50 * 2 * channels)
    kwargs: dict[str, Any] = {"input_rate": rate, "input_layout": layout}
    direct = await _played(monkeypatch, True, chunks, in_step, **kwargs)
    via_pyav = await _played(monkeypatch, False, chunks, in_step, **kwargs)
    assert direct == via_pyav
    samples = unpack(direct)
    assert len(samples) // 2 >= 0.6 * RATE
    window = samples[2 * 9600 : 2 * 19200]  # 0.2-0.4 s
    assert peak(window[0::2]) == peak(window[1::2]) == 1000.0


@needs_swr
async def test_direct_libswresample_matches_pyav_for_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Frames of another format (planar float, 22.05 kHz), 20 ms each, between PCM pushes."""
    pushes: list[bytes | av.AudioFrame] = []
    pushes += _chunks(pack(tone(16_000, 0.1, (500.0,))), 640)
    pushes += [_float_frame(22_050, 0.02, (1000.0, 2500.0)) for _ in range(10)]
    pushes += _chunks(pack(tone(16_000, 0.1, (500.0,))), 640)
    for in_step in (True, False):
        direct = await _played(monkeypatch, True, pushes, in_step)
        assert direct == await _played(monkeypatch, False, pushes, in_step)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: PyAV's wheels")
async def test_libswresample_is_called_directly_on_linux() -> None:
    """The fast path is really in use here (it is not silently the fallback)."""
    assert audio_module._SWR is not None
    src = source(FakeClock())
    for _ in range(3):
        await src.push(pack([1000] * 320))
        await src.recv()
    assert isinstance(src._resampler, audio_module._Swr)


# ---------------------------------------------------------------- the loop's clock


@pytest.mark.parametrize("timerfd", [True, False], ids=["timerfd", "asyncio_sleep"])
async def test_frames_are_never_early_on_the_loop_clock(
    timerfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not timerfd:
        monkeypatch.setattr(audio_module, "_TIMERFD", None)
    elif audio_module._TIMERFD is None:
        pytest.skip("no timerfd here")
    loop = asyncio.get_running_loop()
    src = AudioSource()
    for i in range(5):
        frame = await src.recv()
        assert frame.pts == i * FRAME
        assert src._start is not None
        assert loop.time() >= src._start + i * 0.02
    assert (src._timer is not None) == timerfd
    src.stop()
    assert src._timer is None


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.skipif(audio_module._TIMERFD is None, reason="no timerfd here")
async def test_stop_wakes_a_recv_waiting_on_the_timerfd_and_closes_it() -> None:
    src = AudioSource()
    await src.recv()  # frame 0 at once; frame 1 is due 20 ms later
    waiting = asyncio.create_task(src.recv())
    await asyncio.sleep(0)
    assert src._timer is not None
    fd = src._timer._fd
    assert _fd_is_open(fd)
    src.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 5)
    assert not _fd_is_open(fd)


async def test_two_consumers_at_once_both_get_frames() -> None:
    """Not a supported set-up (use a relay), but it must not hang: each gets every other frame."""
    src = AudioSource()
    first, second = await asyncio.wait_for(asyncio.gather(src.recv(), src.recv()), 5)
    third, fourth = await asyncio.wait_for(asyncio.gather(src.recv(), src.recv()), 5)
    assert sorted(f.pts for f in (first, second, third, fourth)) == [0, 960, 1920, 2880]
    src.stop()


@pytest.mark.skipif(audio_module._TIMERFD is None, reason="no timerfd here")
async def test_a_cancelled_wait_and_a_dropped_source_leave_nothing_behind() -> None:
    src = AudioSource()
    await src.recv()
    waiting = asyncio.create_task(src.recv())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    frame = await src.recv()  # the cancelled slot is sent now
    assert frame.pts == FRAME
    assert src._timer is not None
    fd = src._timer._fd
    del src, frame
    gc.collect()
    for _ in range(3):  # the fd is released on the loop, soon after the source is collected
        await asyncio.sleep(0)
    assert not _fd_is_open(fd)


# ---------------------------------------------------------------- backpressure


@pytest.mark.usefixtures("resampler")
async def test_push_suspends_while_the_buffer_is_full() -> None:
    """10 s pushed into a 1 s buffer: push waits, the queue stays bounded, nothing is lost."""
    src = source(FakeClock(), input_rate=16_000, max_buffered_seconds=1.0)
    pcm = pack(tone(16_000, 10.0, (440.0,), offset=12_000, amp=8_000))  # never near zero
    pusher = asyncio.create_task(src.push(pcm))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not pusher.done()
    assert 0.99 <= src.buffered_seconds <= 1.0

    sent = bytearray()
    levels: list[float] = []
    while not pusher.done():
        sent += frame_bytes(await src.recv())
        levels.append(src.buffered_seconds)
    frames = len(levels)
    assert frames == pytest.approx((10.0 - 1.0) / 0.02, abs=10)  # ~9 s played before it all fit
    assert max(levels) <= 1.0 + 1e-9
    # push resumes once the queue is down to 0.9 s (100 ms below the limit), then refills
    # (the last refill is the remainder of the 10 s, which may be small: not counted):
    assert min(levels[:-2]) == pytest.approx(0.9, abs=0.005)
    refills = sum(1 for a, b in itertools.pairwise(levels) if b > a)
    assert refills == pytest.approx(frames / 5, abs=3)
    src.end()
    sent += await collect(src)
    samples = unpack(bytes(sent))
    assert min(samples) > 1000  # no silence slipped in: the producer was always ahead
    assert len(samples) // 2 == pytest.approx(10 * RATE, abs=FRAME)


@pytest.mark.usefixtures("resampler")
async def test_many_small_pushes_are_bounded_too() -> None:
    clock = FakeClock()
    src = source(clock, input_rate=16_000, max_buffered_seconds=1.0)
    chunk = pack([500] * 320)  # 20 ms

    async def produce() -> None:
        for _ in range(500):  # 10 s
            await src.push(chunk)
        src.end()

    producer = asyncio.create_task(produce())
    frames = 0
    async for frame in iter_frames(src):
        frames += 1
        assert src.buffered_seconds <= 1.0 + 1e-9
        assert frame.pts == (frames - 1) * FRAME
    await producer
    assert frames == pytest.approx(500, abs=2)


async def test_concurrent_pushes_keep_call_order() -> None:
    src = source(FakeClock(), input_rate=48_000, input_layout="stereo", max_buffered_seconds=0.1)
    parts = [pack([n + 1] * 2 * FRAME * 4) for n in range(4)]  # 80 ms each
    tasks = [asyncio.create_task(src.push(p)) for p in parts]
    await asyncio.sleep(0)
    src.end()
    out = await collect(src)
    await asyncio.gather(*tasks)
    assert out == b"".join(parts)


# ---------------------------------------------------------------- end / stop


@pytest.mark.usefixtures("resampler")
@pytest.mark.parametrize(("rate", "seconds"), [(16_000, 1.234), (44_100, 0.5), (48_000, 0.31)])
async def test_end_drains_exactly_then_iter_frames_stops(rate: int, seconds: float) -> None:
    src = source(FakeClock(), input_rate=rate)
    pcm = tone(rate, seconds, (300.0,), amp=4000, offset=8000)  # never near zero
    for i in range(0, len(pcm), 1234):
        await src.push(pack(pcm[i : i + 1234]))
    src.end()
    frames = [f async for f in iter_frames(src)]
    assert src.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await src.recv()
    samples = unpack(b"".join(frame_bytes(f) for f in frames))
    expected = len(pcm) * RATE / rate
    sent = max(i for i, x in enumerate(samples) if x) // 2 + 1
    assert sent == pytest.approx(expected, abs=2)  # the resampler's delay line was flushed
    assert min(samples[: 2 * (sent - 24)]) > 1000  # no gap of silence inside
    assert len(frames) == math.ceil(sent / FRAME)  # the last frame is padded, no extra frame
    assert [f.pts for f in frames] == [i * FRAME for i in range(len(frames))]


async def test_end_with_nothing_queued_stops_at_once() -> None:
    src = source(FakeClock())
    src.end()
    src.end()  # idempotent
    assert [f async for f in iter_frames(src)] == []
    assert src.readyState == "ended"


async def test_push_after_end_raises() -> None:
    src = source(FakeClock())
    await src.push(b"\x01\x00" * 320)
    src.end()
    with pytest.raises(RuntimeError, match="after end"):
        await src.push(b"\x01\x00" * 320)
    assert len(await collect(src)) > 0


async def test_a_push_in_flight_at_end_still_completes() -> None:
    src = source(FakeClock(), input_rate=48_000, input_layout="stereo", max_buffered_seconds=0.2)
    pcm = pack([7] * 2 * RATE)  # 1 s into a 0.2 s buffer: suspends
    pusher = asyncio.create_task(src.push(pcm))
    await asyncio.sleep(0)
    assert not pusher.done()
    src.end()
    out = await collect(src)
    await pusher
    assert out == pcm


async def test_stop_wakes_a_blocked_push_with_an_error() -> None:
    src = source(FakeClock(), input_rate=48_000, input_layout="stereo", max_buffered_seconds=0.2)
    pusher = asyncio.create_task(src.push(bytes(4 * RATE)))
    await asyncio.sleep(0)
    ended: list[bool] = []
    src.on("ended", lambda: ended.append(True))
    src.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await pusher
    assert ended == [True]
    assert src.readyState == "ended"
    assert src.buffered_seconds == 0
    with pytest.raises(MediaStreamError):
        await src.recv()
    with pytest.raises(RuntimeError, match="stopped"):
        await src.push(b"\x00\x00")


async def test_stop_during_a_paced_wait_ends_recv() -> None:
    clock = FakeClock()
    src = source(clock)
    await src.recv()

    async def stop_while_sleeping(delay: float) -> None:
        src.stop()

    src._sleep = stop_while_sleeping
    with pytest.raises(MediaStreamError):
        await src.recv()


# ---------------------------------------------------------------- pushes from trio


def _on_trio(body: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run ``body(bridge)`` in a trio run holding a lease on the aiortc bridge thread."""
    trio = pytest.importorskip("trio")
    from metered_realtime.adapters import bridge as bridge_module

    async def main() -> Any:
        lease = bridge_module.acquire()
        try:
            with trio.fail_after(30):
                return await body(lease)
        finally:
            await lease.release()

    return trio.run(main)


async def _wait_future(future: concurrent.futures.Future[Any]) -> Any:
    """Await, from trio, a future of a coroutine running on the bridge loop."""
    import trio

    return await trio.to_thread.run_sync(future.result, 20)


def test_bytes_pushed_from_trio_play_in_order() -> None:
    """Odd-sized pushes on the trio thread, played on the bridge loop: exactly what the same
    pushes give on asyncio."""
    pcm = pack(tone(16_000, 0.5, (1000.0,)))
    rng = random.Random(5)
    pieces: list[bytes] = []
    pos = 0
    while pos < len(pcm):
        size = rng.choice((1, 3, 640, 641, 2000))
        pieces.append(pcm[pos : pos + size])
        pos += size

    async def reference() -> bytes:
        src = source(FakeClock())
        for piece in pieces:
            await src.push(piece)
        src.end()
        return await collect(src)

    expected = asyncio.run(reference())

    async def body(lease: Any) -> bytes:
        src = source(FakeClock())
        for piece in pieces:
            await src.push(bytearray(piece))  # copied on trio
        assert src.buffered_seconds == pytest.approx(len(pcm) / 32_000)
        src.end()
        with pytest.raises(RuntimeError, match="after end"):
            await src.push(b"\x00\x00")
        future = asyncio.run_coroutine_threadsafe(collect(src), lease.loop)
        out: bytes = await _wait_future(future)
        return out

    assert _on_trio(body) == expected


def test_trio_pushes_wait_for_room_and_keep_order_with_frames() -> None:
    """48 kHz stereo (no resampling, so exact): 1 s from trio into a 0.2 s buffer while the
    bridge loop consumes, 20 ms at a time, with an av.AudioFrame in the middle."""
    chunks = [pack([n + 1] * 2 * FRAME) for n in range(50)]  # never zero: silence is visible
    frame = av.AudioFrame(format="s16", layout="stereo", samples=FRAME)
    frame.planes[0].update(pack([99] * 2 * FRAME))
    frame.sample_rate = RATE
    expected = b"".join(chunks[:25]) + frame_bytes(frame) + b"".join(chunks[25:])

    async def consume(src: AudioSource) -> bytes:
        sent = bytearray()
        async for f in iter_frames(src):
            data = frame_bytes(f)
            if data != SILENCE:  # underruns while trio catches up
                sent += data
        return bytes(sent)

    async def body(lease: Any) -> tuple[bytes, float]:
        src = source(
            FakeClock(), input_rate=48_000, input_layout="stereo", max_buffered_seconds=0.2
        )
        future = asyncio.run_coroutine_threadsafe(consume(src), lease.loop)
        most = 0.0
        for n, chunk in enumerate(chunks):
            if n == 25:
                await src.push(frame)
            await src.push(chunk)
            most = max(most, src.buffered_seconds)
        src.end()
        out: bytes = await _wait_future(future)
        return out, most

    out, most = _on_trio(body)
    assert out[: len(expected)] == expected
    assert not out[len(expected) :].strip(b"\x00")  # the last frame's padding
    assert most <= 0.2 + 0.04  # a soft bound on trio: what the loop moves meanwhile


def test_push_from_trio_after_stop_raises() -> None:
    async def body(lease: Any) -> None:
        src = source(FakeClock())
        await src.push(b"\x00\x01" * 320)
        src.stop()
        with pytest.raises(RuntimeError, match="stopped"):
            await src.push(b"\x00\x01" * 320)
        future = asyncio.run_coroutine_threadsafe(src.recv(), lease.loop)
        with pytest.raises(MediaStreamError):
            await _wait_future(future)
        assert src.buffered_seconds == 0

    _on_trio(body)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("layout", ["5.1", "MONO", "quad", ""])
def test_bad_layout(layout: str) -> None:
    with pytest.raises(ValueError, match="input_layout"):
        AudioSource(input_layout=layout)


@pytest.mark.parametrize("rate", [0, -16_000, 7_999, 192_001, 16_000.0, True, "16000"])
def test_bad_rate(rate: Any) -> None:
    with pytest.raises(ValueError, match="input_rate"):
        AudioSource(input_rate=rate)


@pytest.mark.parametrize("seconds", [0, -1.0, 0.05, math.nan, math.inf, "5"])
def test_bad_max_buffered_seconds(seconds: Any) -> None:
    with pytest.raises(ValueError, match="max_buffered_seconds"):
        AudioSource(max_buffered_seconds=seconds)


def test_edge_values_are_accepted() -> None:
    AudioSource(input_rate=8_000, input_layout="stereo", max_buffered_seconds=0.1)
    AudioSource(input_rate=192_000, max_buffered_seconds=3600)


async def test_bad_push_types() -> None:
    src = source(FakeClock())
    with pytest.raises(TypeError, match=r"PCM bytes or an av\.AudioFrame"):
        await src.push("not audio")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await src.push([0, 1])  # type: ignore[arg-type]
    frame = av.AudioFrame(format="s16", layout="mono", samples=10)
    frame.planes[0].update(bytes(20))
    with pytest.raises(ValueError, match="sample_rate"):
        await src.push(frame)


# ---------------------------------------------------------------- iter_frames


class ScriptedTrack(MediaStreamTrack):
    """A track that yields given frames, then raises ``then``."""

    def __init__(self, kind: str, frames: list[Any], then: BaseException) -> None:
        super().__init__()
        self.kind = kind
        self.frames = frames
        self.then = then

    async def recv(self) -> Any:
        if self.frames:
            return self.frames.pop(0)
        raise self.then


async def test_iter_frames_video_track_until_ended() -> None:
    frames = [av.VideoFrame(width=16, height=16, format="yuv420p") for _ in range(3)]
    track = ScriptedTrack("video", list(frames), MediaStreamError())
    assert [f async for f in iter_frames(track)] == frames


async def test_iter_frames_propagates_other_errors() -> None:
    frames = iter_frames(ScriptedTrack("audio", [1], OSError("boom")))
    assert await anext(frames) == 1
    with pytest.raises(OSError, match="boom"):
        await anext(frames)


async def test_iter_frames_on_a_stopped_aiortc_track() -> None:
    src = source(FakeClock())
    src.stop()
    assert [f async for f in iter_frames(src)] == []
