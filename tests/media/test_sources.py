"""from_file / from_rtsp / from_camera / from_microphone / screen_share on generated media.

Files are written by PyAV in ``tmp_path`` (tones, FFmpeg test patterns); RTSP comes from a
GStreamer RTSP server on 127.0.0.1 (``rtsp_server.py``, Debian packages installed by
``scripts/setup.sh``); devices run through FFmpeg's ``lavfi`` virtual inputs. Every async test
runs on asyncio and on trio (tracks consumed through ``iter_frames``, i.e. the aiortc bridge).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fractions
import logging
import math
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import av
import pytest
from aiortc.contrib.media import PlayerStreamTrack
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

import metered_realtime
import metered_realtime.media
from metered_realtime.adapters.runtime import current_backend
from metered_realtime.media import (
    MediaSourceError,
    from_camera,
    from_file,
    from_microphone,
    from_rtsp,
    iter_frames,
    screen_share,
)
from metered_realtime.media import sources as sources_module
from metered_realtime.media.sources import THREAD_NAME, MediaSource, _FrameQueue

pytestmark = pytest.mark.anyio

RATE = 48_000
HERE = Path(__file__).parent
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-ugly"
)
RTSP_LAUNCH = (
    "( audiotestsrc is-live=true wave=sine freq=1000 volume=0.5 ! audioconvert ! audioresample"
    " ! opusenc ! rtpopuspay name=pay0 pt=97"
    " videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=15/1"
    " ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15"
    " ! rtph264pay name=pay1 pt=96 config-interval=-1 )"
)
RTSP_USER, RTSP_SECRET = "alice", "s3cret-Pa55"


# --- generated media ----------------------------------------------------------------------------


def write_media(
    path: Path,
    *,
    audio: str | None = None,
    video: str | None = None,
    seconds: float = 1.0,
    freq: float = 1000.0,
    rate: int = RATE,
    size: tuple[int, int] = (160, 120),
    fps: int = 15,
) -> Path:
    """A file with a sine tone (mono, ``audio`` codec) and/or FFmpeg's test pattern."""
    with av.open(str(path), "w") as out:
        encode: list[tuple[Any, str]] = []  # every stream is added before the first packet
        if video is not None:
            fast = {"deadline": "realtime", "cpu-used": "8"} if "vpx" in video else None
            vstream = out.add_stream(video, rate=fps, options=fast)
            vstream.width, vstream.height = size
            vstream.pix_fmt = "yuv420p"
            encode.append((vstream, f"testsrc=size={size[0]}x{size[1]}:rate={fps}"))
        if audio is not None:
            astream = out.add_stream(audio, rate=rate)
            astream.layout = "mono"
            encode.append((astream, f"sine=frequency={freq}:sample_rate={rate}"))
        for stream, graph in encode:
            with av.open(f"{graph}:duration={seconds}", format="lavfi") as src:
                for frame in src.decode(src.streams[0]):
                    if stream.type == "video":
                        frame = frame.reformat(format="yuv420p")
                    frame.pts = None
                    out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    return path


def wav(tmp_path: Path, seconds: float = 1.0, freq: float = 1000.0, rate: int = 44_100) -> Path:
    return write_media(
        tmp_path / "tone.wav", audio="pcm_s16le", seconds=seconds, freq=freq, rate=rate
    )


# --- signal checks ------------------------------------------------------------------------------


def left_channel(frames: Sequence[av.AudioFrame]) -> list[int]:
    """The first channel of packed s16 frames, as ints."""
    out: list[int] = []
    for frame in frames:
        assert frame.format.name == "s16", frame.format.name
        channels = len(frame.layout.channels)
        pcm = array.array("h", bytes(frame.planes[0])[: frame.samples * 2 * channels])
        if sys.byteorder == "big":
            pcm.byteswap()
        out.extend(pcm[0::channels])
    return out


def pitch(samples: Sequence[int], rate: int = RATE) -> float:
    """Frequency of a clean tone from its rising zero crossings (interpolated, with hysteresis)."""
    threshold = 0.25 * max(abs(s) for s in samples)
    assert threshold > 100, "no tone: the audio is (near) silent"
    crossings: list[float] = []
    armed = False
    for i in range(1, len(samples)):
        a, b = samples[i - 1], samples[i]
        if a < -threshold:
            armed = True
        if armed and a < 0 <= b:
            crossings.append(i - 1 + (-a) / (b - a))
            armed = False
    assert len(crossings) > 10
    return (len(crossings) - 1) * rate / (crossings[-1] - crossings[0])


def tone_share(samples: Sequence[int], freq: float, rate: int = RATE) -> float:
    """Share of the signal's power at ``freq`` (Goertzel): ~1 for a clean tone at ``freq``."""
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coeff * s1 * s2
    energy = sum(x * x for x in samples)
    return 2 * power / (len(samples) * energy)


def assert_tone(frames: Sequence[av.AudioFrame], freq: float, tolerance: float = 3.0) -> None:
    samples = left_channel(frames)
    assert abs(pitch(samples) - freq) <= tolerance, pitch(samples)
    assert tone_share(samples, freq) > 0.8


def assert_audio_format(frames: Sequence[av.AudioFrame], *, contiguous: bool = True) -> None:
    """20 ms of 48 kHz stereo s16 each, pts counting samples (a live source may skip some)."""
    for frame in frames:
        assert (frame.format.name, frame.layout.name) == ("s16", "stereo")
        assert (frame.sample_rate, frame.samples) == (RATE, 960)
        assert frame.time_base == fractions.Fraction(1, RATE)
    pts = [frame.pts for frame in frames]
    if contiguous:
        assert pts == list(range(pts[0], pts[0] + 960 * len(frames), 960))
    else:
        assert all(p % 960 == 0 for p in pts)
        assert pts == sorted(set(pts))


def longest_run(frames: Sequence[av.AudioFrame]) -> list[av.AudioFrame]:
    """The longest stretch of frames with no frame dropped in between."""
    best: list[av.AudioFrame] = []
    run: list[av.AudioFrame] = []
    for frame in frames:
        if run and frame.pts != run[-1].pts + run[-1].samples:
            run = []
        run.append(frame)
        if len(run) > len(best):
            best = list(run)
    return best


# --- consuming tracks on either backend ---------------------------------------------------------


async def take(track: MediaStreamTrack, count: int, timeout: float = 10.0) -> list[Any]:
    """The next ``count`` frames of ``track`` (fewer if it ends)."""
    frames: list[Any] = []
    with anyio.fail_after(timeout):
        async with contextlib.aclosing(iter_frames(track)) as stream:
            async for frame in stream:
                frames.append(frame)
                if len(frames) == count:
                    break
    return frames


async def recv_once(track: MediaStreamTrack) -> Any:
    """One ``recv()``, on the aiortc bridge under trio."""
    if current_backend() == "trio":
        from metered_realtime.adapters.bridge import run_on_aiortc

        return await run_on_aiortc(track.recv)
    return await track.recv()


@contextlib.asynccontextmanager
async def aiortc_loop() -> AsyncIterator[None]:
    """Under trio, hold a lease on the aiortc bridge (as a peer does) for a long read."""
    if current_backend() != "trio":
        yield
        return
    from metered_realtime.adapters import bridge

    lease = bridge.acquire()
    try:
        yield
    finally:
        await lease.release()


def decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


async def no_decoder_threads(timeout: float = 5.0) -> None:
    """Wait (bounded) until every decoder thread has exited."""
    with anyio.fail_after(timeout):
        while decoder_threads():
            await anyio.sleep(0.01)


@pytest.fixture(autouse=True)
def _no_leftover_sources() -> Iterator[None]:
    """Every test stops its sources: no decoder thread outlives it (bounded wait)."""
    assert not decoder_threads()
    yield
    deadline = time.monotonic() + 5.0
    while decoder_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not decoder_threads(), "a test left a media source running"


@pytest.fixture
def no_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any call to ``av.open`` fails the test: the argument checks must come first."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"FFmpeg was called: av.open{args!r}")

    monkeypatch.setattr(av, "open", refuse)


# --- files --------------------------------------------------------------------------------------


async def test_wav_plays_its_tone_and_has_no_video(tmp_path: Path) -> None:
    source = from_file(wav(tmp_path, seconds=1.0, rate=44_100))  # resampled to 48 kHz
    assert isinstance(source, MediaSource)
    assert source.video is None
    assert isinstance(source.audio, PlayerStreamTrack)  # aiortc's own: accepted on trio too
    assert source.live is False
    frames = await take(source.audio, 30)
    assert len(frames) == 30
    assert_audio_format(frames)
    assert frames[0].pts == 0
    assert_tone(frames[5:], 1000.0)
    # Mono is copied to both channels at its own level (lavfi's sine peaks at 1/8 of full scale).
    pcm = array.array("h", b"".join(bytes(f.planes[0])[: 960 * 4] for f in frames[5:]))
    if sys.byteorder == "big":
        pcm.byteswap()
    assert abs(max(pcm[0::2]) - 4096) < 100
    assert pcm[0::2] == pcm[1::2]
    source.stop()
    await no_decoder_threads()


@pytest.mark.parametrize(
    ("name", "audio", "video"),
    [
        ("av.mp4", "aac", "libx264"),
        ("mpeg4.mp4", "aac", "mpeg4"),
        ("av.webm", "libopus", "libvpx"),
        ("vp9.webm", "libopus", "libvpx-vp9"),
    ],
)
async def test_audio_and_video_files(tmp_path: Path, name: str, audio: str, video: str) -> None:
    path = write_media(tmp_path / name, audio=audio, video=video, seconds=1.0, size=(160, 120))
    async with aiortc_loop(), from_file(path) as source:
        assert source.audio is not None
        assert source.video is not None
        async with anyio.create_task_group() as tg:
            got: dict[str, list[Any]] = {}

            async def read(kind: str, track: MediaStreamTrack, count: int) -> None:
                got[kind] = await take(track, count)

            tg.start_soon(read, "audio", source.audio, 25)
            tg.start_soon(read, "video", source.video, 5)
        assert_audio_format(got["audio"])
        assert_tone(got["audio"][5:], 1000.0)
        pictures = got["video"]
        assert [(f.width, f.height) for f in pictures] == [(160, 120)] * 5
        assert pictures[0].pts == 0
        assert [f.time for f in pictures] == sorted(f.time for f in pictures)
        assert len(set(bytes(pictures[0].planes[0]))) > 4  # the test pattern, not a blank frame
    assert source.audio.readyState == "ended"
    await no_decoder_threads()


async def test_audio_only_and_video_only_files(tmp_path: Path) -> None:
    sound = write_media(tmp_path / "sound.m4a", audio="aac", seconds=0.5)
    picture = write_media(tmp_path / "picture.mp4", video="libx264", seconds=0.5)
    with from_file(sound) as only_audio, from_file(str(picture)) as only_video:
        assert only_audio.audio is not None
        assert only_audio.video is None
        assert only_video.audio is None
        assert only_video.video is not None
        (frame,) = await take(only_video.video, 1)
        assert isinstance(frame, av.VideoFrame)
    await no_decoder_threads()


async def test_a_file_plays_in_real_time_then_its_track_ends(tmp_path: Path) -> None:
    source = from_file(wav(tmp_path, seconds=1.0))
    assert source.audio is not None
    started = time.monotonic()
    frames = await take(source.audio, 1000)  # stops early: at the end of the file
    elapsed = time.monotonic() - started
    assert 49 <= len(frames) <= 52  # 1 s of 20 ms frames
    assert elapsed >= 0.8, f"1 s of audio took {elapsed:.2f} s: not paced"
    assert source.audio.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await recv_once(source.audio)
    assert source.error is None
    await no_decoder_threads()


async def test_stop_ends_the_tracks_and_the_thread(tmp_path: Path) -> None:
    path = write_media(tmp_path / "long.webm", audio="libopus", video="libvpx", seconds=3.0)
    source = from_file(path)
    assert source.audio is not None
    assert source.video is not None
    await take(source.audio, 3)
    assert len(decoder_threads()) == 1
    source.stop()
    source.stop()  # idempotent
    for track in (source.audio, source.video):
        assert track.readyState == "ended"
        with pytest.raises(MediaStreamError):
            await recv_once(track)
    await no_decoder_threads()


async def test_stopping_one_track_keeps_the_other_playing(tmp_path: Path) -> None:
    path = write_media(tmp_path / "av.mp4", audio="aac", video="libx264", seconds=3.0)
    async with aiortc_loop(), from_file(path) as source:
        assert source.audio is not None
        assert source.video is not None
        source.video.stop()
        frames = await take(source.audio, 10)
        assert len(frames) == 10
        with pytest.raises(MediaStreamError):
            await recv_once(source.video)
    await no_decoder_threads()


async def test_dropping_every_reference_stops_the_decoder(tmp_path: Path) -> None:
    source: MediaSource | None = from_file(wav(tmp_path, seconds=5.0))
    assert source is not None
    assert source.audio is not None
    await take(source.audio, 2)
    assert decoder_threads()
    source = None
    with anyio.fail_after(5):
        while decoder_threads():  # the tracks are garbage: their finalizers stop the decoding
            import gc

            gc.collect()
            await anyio.sleep(0.01)


async def test_async_with_waits_for_the_decoder_thread(tmp_path: Path) -> None:
    async with from_file(wav(tmp_path, seconds=3.0)) as source:
        assert source.audio is not None
        await take(source.audio, 2)
        assert decoder_threads()
    assert not decoder_threads()  # aclose() waited for it


async def test_path_objects_and_protocol_opt_in(tmp_path: Path) -> None:
    path = wav(tmp_path, seconds=0.3)
    with from_file(path) as by_path, from_file(f"file:{path}", allow_protocols={"file"}) as by_url:
        for source in (by_path, by_url):
            assert source.audio is not None
            assert len(await take(source.audio, 3)) == 3
    # A Path is never read as a protocol, even when its name looks like one.
    odd = tmp_path / "concat:x.wav"
    odd.write_bytes(path.read_bytes())
    with from_file(odd) as source:
        assert source.audio is not None
    await no_decoder_threads()


def test_missing_file_is_not_found_before_ffmpeg(tmp_path: Path, no_ffmpeg: None) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaSourceError) as caught:
        from_file(missing)
    assert caught.value.code == "not_found"
    assert isinstance(caught.value, FileNotFoundError)
    assert "nope.mp4" in str(caught.value)
    with pytest.raises(FileNotFoundError):
        from_file(str(missing))


@pytest.mark.parametrize(
    "target",
    [
        "concat:a.mp4|b.mp4",
        "subfile,,start,0,end,100,,:/etc/passwd",
        "pipe:0",
        "data:audio/wav;base64,AAAA",
        "file:/etc/passwd",
        "file:///etc/passwd",
        "async:/etc/passwd",
        "cache:/etc/passwd",
        "crypto:/etc/passwd",
        "tee:/tmp/x",
        "ffrtmphttp://127.0.0.1/x",
        "http://127.0.0.1/x.mp4",
        "HTTPS://127.0.0.1/x.mp4",
        "rtmp://127.0.0.1/live",
        "rtsp://127.0.0.1/stream",
        "unix:/tmp/socket",
        "gopher://127.0.0.1/",
    ],
)
def test_protocol_prefixes_are_refused(target: str, no_ffmpeg: None) -> None:
    with pytest.raises(MediaSourceError) as caught:
        from_file(target)
    assert caught.value.code == "refused_protocol"
    assert isinstance(caught.value, ValueError)
    assert "allow_protocols" in str(caught.value)


def test_allow_protocols_must_name_the_protocol(no_ffmpeg: None) -> None:
    with pytest.raises(MediaSourceError) as caught:
        from_file("concat:a|b", allow_protocols={"file"})  # concat itself is not allowed
    assert caught.value.code == "refused_protocol"
    for bad in ("concat", True, ["Con cat"], [""]):
        with pytest.raises(MediaSourceError) as caught:
            from_file("x.mp4", allow_protocols=bad)  # type: ignore[arg-type]
        assert caught.value.code == "invalid_argument"


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"protocol_whitelist": "file,http,tcp"}, "refused_protocol"),
        ({"format_whitelist": "hls"}, "refused_protocol"),
        ({"probesize": 32}, "invalid_argument"),
    ],
)
def test_options_cannot_widen_what_ffmpeg_opens(
    tmp_path: Path, options: dict[str, Any], code: str, no_ffmpeg: None
) -> None:
    path = tmp_path / "a.wav"
    path.write_bytes(b"")
    with pytest.raises(MediaSourceError) as caught:
        from_file(path, options=options)
    assert caught.value.code == code


def test_other_bad_paths(tmp_path: Path, no_ffmpeg: None) -> None:
    cases: list[tuple[Any, str]] = [
        (tmp_path, "invalid_argument"),  # a directory
        ("", "invalid_argument"),
        ("a\x00b", "invalid_argument"),
        (42, "invalid_argument"),
    ]
    for path, code in cases:
        with pytest.raises(MediaSourceError) as caught:
            from_file(path)
        assert caught.value.code == code, path
    real = tmp_path / "a.wav"
    real.write_bytes(b"RIFF")
    with pytest.raises(MediaSourceError) as caught:
        from_file(real, format="no-such-demuxer")
    assert caught.value.code == "unsupported_format"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("random.mp4", bytes(range(256)) * 64),
        ("empty.wav", b""),
        ("text.webm", b"hello, this is not a video\n" * 20),
        ("subtitles.srt", b"1\n00:00:00,000 --> 00:00:01,000\nhello\n\n"),
    ],
)
def test_unreadable_files_are_unsupported(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MediaSourceError) as caught:
        from_file(path)
    assert caught.value.code == "unsupported_format", str(caught.value)
    assert name in str(caught.value)


def test_a_file_whose_frames_do_not_decode(tmp_path: Path) -> None:
    # An MP4 whose media data is overwritten: the container parses, the H.264 does not decode.
    path = write_media(tmp_path / "v.mp4", video="libx264", seconds=0.5)
    blob = bytearray(path.read_bytes())
    mdat = blob.find(b"mdat")
    end = mdat - 4 + int.from_bytes(blob[mdat - 4 : mdat], "big")
    assert 0 < mdat < end <= len(blob)
    blob[mdat + 4 : end] = b"\xff" * (end - mdat - 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(blob)
    with pytest.raises(MediaSourceError) as caught:
        from_file(bad)
    assert caught.value.code == "decode_failed", str(caught.value)
    assert "bad.mp4" in str(caught.value)


# --- RTSP ---------------------------------------------------------------------------------------


class RtspServer:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url  # rtsp://127.0.0.1:PORT/test

    def with_login(self, user: str = RTSP_USER, password: str = RTSP_SECRET) -> str:
        return self.url.replace("rtsp://", f"rtsp://{user}:{password}@", 1)


@pytest.fixture(scope="module")
def rtsp_server() -> Iterator[RtspServer]:
    """A GStreamer RTSP server on 127.0.0.1 (a 1 kHz tone + a test pattern, login required).

    Fails (never skips) when the Debian packages are missing: scripts/setup.sh installs them.
    """
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.fail(f"{SYSTEM_PYTHON} is missing: apt-get install {RTSP_PACKAGES}")
    proc = subprocess.Popen(
        [
            SYSTEM_PYTHON,
            str(HERE / "rtsp_server.py"),
            "0",
            RTSP_LAUNCH,
            "--auth",
            f"{RTSP_USER}:{RTSP_SECRET}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = ""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if selector.select(timeout=20.0):
            line = proc.stdout.readline().strip()
    try:
        if line.startswith("MISSING "):
            pytest.fail(f"the RTSP test server cannot run: {line}")
        if not line.startswith("READY "):
            rest = proc.stdout.read() if proc.poll() is not None else ""
            pytest.fail(
                f"the RTSP test server did not start ({line or 'no output in 20 s'} {rest}); "
                f"it needs: apt-get install {RTSP_PACKAGES} (scripts/setup.sh does)"
            )
        yield RtspServer(proc, line.split()[1])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()


def assert_no_secret(caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    for record in caplog.records:
        assert RTSP_SECRET not in record.getMessage()
    for text in texts:
        assert RTSP_SECRET not in text


def error_texts(exc: BaseException) -> list[str]:
    """The text of ``exc`` and of every exception chained to it."""
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        out += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return out


@pytest.mark.parametrize("transport", ["tcp", "udp", "http"])
async def test_rtsp_audio_and_video(
    rtsp_server: RtspServer, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="metered_realtime")
    url = rtsp_server.with_login()
    # Opening blocks (a network round trip): open in a worker thread, as async code should.
    source = await anyio.to_thread.run_sync(
        lambda: from_rtsp(url, transport=transport, options={"analyzeduration": "500000"})
    )
    async with aiortc_loop(), source:
        assert source.live is True
        assert source.audio is not None
        assert source.video is not None
        assert RTSP_SECRET not in repr(source)
        audio = await take(source.audio, 30)
        video = await take(source.video, 3)
        assert_audio_format(audio, contiguous=False)  # live: a late reader loses frames
        run = longest_run(audio[5:])
        assert len(run) >= 10
        assert_tone(run, 1000.0)
        assert [(f.width, f.height) for f in video] == [(320, 240)] * 3
    assert source.audio.readyState == "ended"
    assert source.error is None
    assert any("media source opened" in r.getMessage() for r in caplog.records)
    assert any("<redacted>@127.0.0.1" in r.getMessage() for r in caplog.records)
    assert_no_secret(caplog, repr(source))
    await no_decoder_threads()


async def test_rtsp_stays_live_when_read_late(rtsp_server: RtspServer) -> None:
    # FFmpeg buffers ~2 s of the stream while probing it at open, and the stream keeps coming
    # before anyone reads it. A live source drops that backlog rather than playing it late: once
    # reading starts, the next second of audio takes about a second to arrive.
    source = from_rtsp(
        rtsp_server.with_login(), transport="tcp", options={"analyzeduration": "500000"}
    )
    async with aiortc_loop(), source:
        assert source.audio is not None
        await anyio.sleep(1.0)  # the scenario, not a synchronisation: a reader that starts late
        started = time.monotonic()
        frames = await take(source.audio, 50)
        elapsed = time.monotonic() - started
        assert len(frames) == 50
        assert elapsed >= 0.6, f"1 s of live audio arrived in {elapsed:.2f} s: a backlog played"


def test_rtsp_refuses_a_wrong_login_without_leaking_it(
    rtsp_server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MediaSourceError) as caught:
        from_rtsp(rtsp_server.with_login(password=RTSP_SECRET + "x"), timeout=5)
    err = caught.value
    assert err.code == "open_failed"
    assert "401" in str(err)
    assert "rtsp://<redacted>@127.0.0.1" in str(err)
    assert_no_secret(caplog, *error_texts(err))


def test_rtsp_connection_refused_is_open_failed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket_closed_port() as port:
        url = f"rtsp://{RTSP_USER}:{RTSP_SECRET}@127.0.0.1:{port}/cam?token=abc"
        with pytest.raises(MediaSourceError) as caught:
            from_rtsp(url, transport="tcp", timeout=3)
    assert caught.value.code == "open_failed"
    assert "token=<redacted>" in str(caught.value)
    assert_no_secret(caplog, *error_texts(caught.value))


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A 127.0.0.1 port with nothing listening (bound, not listening, for the test's length)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize("transport", sorted(sources_module.TRANSPORTS))
def test_rtsp_transports_reach_ffmpeg_as_given(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_open(target: str, **kwargs: Any) -> None:
        seen.update(kwargs, target=target)
        raise av.error.ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(av, "open", fake_open)
    with pytest.raises(MediaSourceError) as caught:
        from_rtsp("RTSP://127.0.0.1:8554/cam", transport=transport, options={"max_delay": "0"})
    assert caught.value.code == "open_failed"
    assert seen["target"] == "rtsp://127.0.0.1:8554/cam"
    assert seen["format"] == "rtsp"
    assert seen["container_options"]["rtsp_transport"] == transport
    assert "file" not in seen["container_options"]["protocol_whitelist"].split(",")
    assert seen["options"] == {"fflags": "+nobuffer", "max_delay": "0"}


@pytest.mark.parametrize("transport", ["TCP", "tcp+udp", "https", "udp ", "", "multicast", None])
def test_rtsp_transport_allowlist(transport: Any, no_ffmpeg: None) -> None:
    with pytest.raises(MediaSourceError) as caught:
        from_rtsp(f"rtsp://{RTSP_USER}:{RTSP_SECRET}@127.0.0.1/x", transport=transport)
    assert caught.value.code == "invalid_argument"
    assert isinstance(caught.value, ValueError)
    assert RTSP_SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"http://{RTSP_USER}:{RTSP_SECRET}@127.0.0.1/x",
        f"rtmp://{RTSP_USER}:{RTSP_SECRET}@127.0.0.1/x",
        "rtp://127.0.0.1:5004",
        "file:///etc/passwd",
        "concat:rtsp://127.0.0.1/a|rtsp://127.0.0.1/b",
        "/dev/video0",
        "127.0.0.1:554/stream",
    ],
)
def test_rtsp_takes_rtsp_urls_only(url: str, no_ffmpeg: None) -> None:
    with pytest.raises(MediaSourceError) as caught:
        from_rtsp(url)
    assert caught.value.code == "refused_protocol"
    assert RTSP_SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "rtsp:127.0.0.1/x",
        "rtsp://",
        "rtsp://127.0.0.1:99999/x",
        "rtsp://127.0.0.1/a b",
        "rtsp://h/\n",
    ],
)
def test_rtsp_malformed_urls(url: str, no_ffmpeg: None) -> None:
    with pytest.raises(MediaSourceError) as caught:
        from_rtsp(url)
    assert caught.value.code == "invalid_argument"


def test_rtsp_other_bad_arguments(no_ffmpeg: None) -> None:
    url = "rtsp://127.0.0.1/x"
    for kwargs in (
        {"timeout": 0},
        {"timeout": math.inf},
        {"timeout": True},
        {"options": {"rtsp_transport": "udp"}},
        {"options": {"stimeout": 5}},
    ):
        with pytest.raises(MediaSourceError) as caught:
            from_rtsp(url, **kwargs)
        assert caught.value.code == "invalid_argument", kwargs
    with pytest.raises(MediaSourceError) as caught:
        from_rtsp(url, options={"protocol_whitelist": "file,rtsp"})
    assert caught.value.code == "refused_protocol"


# --- devices ------------------------------------------------------------------------------------


async def test_camera_through_lavfi_gives_the_requested_size() -> None:
    graph = "testsrc=size=320x240:rate=15"
    async with aiortc_loop():
        with from_camera(graph, format="lavfi", width=320, height=240, fps=15) as camera:
            assert camera.audio is None
            assert camera.video is not None
            frames = await take(camera.video, 4)
            assert [(f.width, f.height) for f in frames] == [(320, 240)] * 4
            assert [f.pts for f in frames] == [0, 1, 2, 3]
        with from_camera(graph, format="lavfi", width=160, height=90) as scaled:
            assert scaled.video is not None
            frames = await take(scaled.video, 2)
            assert [(f.width, f.height) for f in frames] == [(160, 90)] * 2
    await no_decoder_threads()


async def test_microphone_through_lavfi() -> None:
    async with from_microphone("sine=frequency=440:sample_rate=48000", format="lavfi") as mic:
        assert mic.video is None
        assert mic.audio is not None
        frames = await take(mic.audio, 25)
        assert_audio_format(frames)
        assert_tone(frames, 440.0)


async def test_screen_share_through_lavfi_scales() -> None:
    graph = "testsrc2=size=320x240:rate=10"
    async with screen_share(graph, format="lavfi", width=64, height=48, fps=10) as screen:
        assert screen.audio is None
        assert screen.video is not None
        frames = await take(screen.video, 2)
        assert [(f.width, f.height) for f in frames] == [(64, 48)] * 2


def test_no_camera_is_device_unavailable(no_ffmpeg: None) -> None:
    if sys.platform.startswith("linux") and os.path.exists("/dev/video0"):
        pytest.skip("this machine has a camera at /dev/video0")
    if not sys.platform.startswith("linux"):
        pytest.skip("the default camera is /dev/video0 on Linux only")
    with pytest.raises(MediaSourceError) as caught:
        from_camera()
    assert caught.value.code == "device_unavailable"
    assert "/dev/video0" in str(caught.value)
    with pytest.raises(MediaSourceError) as caught:
        from_camera("/dev/video7", format="v4l2")
    assert caught.value.code == "device_unavailable"


def test_no_microphone_is_device_unavailable() -> None:
    if not sys.platform.startswith("linux") or os.path.exists("/dev/snd"):
        pytest.skip("this machine may have a sound card")
    with pytest.raises(MediaSourceError) as caught:
        from_microphone()
    assert caught.value.code == "device_unavailable"


def test_no_display_is_device_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("x11grab is the Linux default")
    monkeypatch.delenv("DISPLAY", raising=False)
    with monkeypatch.context() as patch:
        patch.setattr(av, "open", lambda *a, **k: pytest.fail("FFmpeg called without a display"))
        with pytest.raises(MediaSourceError) as caught:
            screen_share()
    assert caught.value.code == "device_unavailable"
    assert "DISPLAY" in str(caught.value)
    # A display that does not exist: x11grab itself fails to connect.
    monkeypatch.setenv("DISPLAY", ":87")
    with pytest.raises(MediaSourceError) as caught:
        screen_share()
    assert caught.value.code == "device_unavailable"


def test_device_formats(no_ffmpeg: None) -> None:
    for call in (
        lambda: from_camera("x", format="no-such-format"),
        lambda: from_camera("clip.mp4", format="mov"),  # a file format: use from_file
        lambda: from_microphone("x", format="wav"),
    ):
        with pytest.raises(MediaSourceError) as caught:
            call()
        assert caught.value.code == "unsupported_format"
    if not sources_module._format_available("v4l2"):  # this FFmpeg build has no v4l2
        with pytest.raises(MediaSourceError) as caught:
            from_camera("/dev/null", format="v4l2")
        assert caught.value.code == "unsupported_format"
        assert "v4l2" in str(caught.value)


@pytest.mark.parametrize(
    "graph",
    ["movie=/etc/passwd", "amovie=http\\://127.0.0.1/a.mp3", "sine,azmq", "testsrc,sendcmd=f=x"],
)
def test_lavfi_graphs_that_open_files_are_refused(graph: str, no_ffmpeg: None) -> None:
    with pytest.raises(MediaSourceError) as caught:
        from_camera(graph, format="lavfi")
    assert caught.value.code == "refused_protocol"


def test_device_argument_checks(no_ffmpeg: None) -> None:
    for call in (
        lambda: from_camera("testsrc", format="lavfi", width=0),
        lambda: from_camera("testsrc", format="lavfi", height=10_000),
        lambda: from_camera("testsrc", format="lavfi", width=True),
        lambda: from_camera("testsrc", format="lavfi", fps=0),
        lambda: from_camera("testsrc", format="lavfi", fps=math.nan),
        lambda: from_camera(42, format="lavfi"),  # type: ignore[arg-type]
        lambda: from_camera("", format="lavfi"),
        lambda: screen_share("testsrc", format="lavfi", width=100),
        lambda: from_microphone("sine", format="lavfi", options={"x": 1}),  # type: ignore[dict-item]
    ):
        with pytest.raises(MediaSourceError) as caught:
            call()
        assert caught.value.code == "invalid_argument"
    with pytest.raises(MediaSourceError) as caught:
        from_camera(format="lavfi")  # a lavfi graph has no default
    assert caught.value.code == "device_unavailable"


def test_lavfi_graph_errors_are_device_unavailable() -> None:
    with pytest.raises(MediaSourceError) as caught:
        from_camera("no_such_filter=1", format="lavfi")
    assert caught.value.code == "device_unavailable"
    with pytest.raises(MediaSourceError) as caught:
        from_camera("sine", format="lavfi")  # audio only: no video for a camera
    assert caught.value.code == "unsupported_format"


# --- plumbing -----------------------------------------------------------------------------------


def test_frame_queue_wakes_a_waiter_from_another_thread() -> None:
    async def main() -> None:
        queue = _FrameQueue(limit=2)
        waiting = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        thread = threading.Thread(target=queue.put, args=(frame,))
        thread.start()
        assert await asyncio.wait_for(waiting, 5) is frame
        thread.join()
        for _ in range(3):
            queue.put(frame)
        assert queue.dropped == 1  # the oldest went
        waiting = asyncio.ensure_future(queue.get())
        assert await asyncio.wait_for(waiting, 5) is frame
        queue.end(discard=True)
        assert await queue.get() is None
        assert await queue.get() is None  # the end marker stays

    asyncio.run(main())


def test_audio_format_changes_mid_stream_keep_48k_stereo() -> None:
    with from_microphone("sine=frequency=440:sample_rate=48000", format="lavfi") as mic:
        decoder = mic._decoder
        out: list[av.AudioFrame] = []
        for rate, layout in ((44_100, "mono"), (16_000, "stereo"), (48_000, "mono")):
            frame = av.AudioFrame(format="s16", layout=layout, samples=rate // 10)  # 100 ms
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate = rate
            out += decoder._resample(frame)
    assert len(out) >= 12  # ~300 ms in 20 ms frames, less the resampler's delay
    for frame in out:
        assert (frame.format.name, frame.layout.name, frame.sample_rate) == ("s16", "stereo", RATE)
        assert frame.samples == 960


def test_exports() -> None:
    for name in ("from_file", "from_rtsp", "from_camera", "from_microphone", "screen_share"):
        assert name in metered_realtime.__all__
        assert getattr(metered_realtime, name) is getattr(sources_module, name)
        assert getattr(metered_realtime.media, name) is getattr(sources_module, name)
    assert metered_realtime.media.MediaSourceError is sources_module.MediaSourceError
    assert issubclass(MediaSourceError, metered_realtime.MeteredRealtimeError)
