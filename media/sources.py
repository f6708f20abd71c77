"""Media sources: a file, an RTSP camera, a capture device or the screen as aiortc tracks.

Five helpers open an input with FFmpeg (through PyAV) and return a :class:`MediaSource`, whose
``audio`` / ``video`` are aiortc ``MediaStreamTrack``\\s (``None`` when the input has no such
stream) ready for ``peer.add_track(...)``::

    from_file(path, *, format=None, options=None, allow_protocols=())
    from_rtsp(url, *, transport="tcp", timeout=10.0, options=None)
    from_camera(device=None, *, width=640, height=480, fps=30, format=None, options=None)
    from_microphone(device=None, *, format=None, options=None)
    screen_share(display=None, *, width=None, height=None, fps=15, format=None, options=None)

How it runs
    Opening happens in the helper call, on the calling thread, and may block: a local file opens
    in milliseconds, an RTSP camera takes a network round trip or three (at most ``timeout``), a
    device open is usually quick. From async code that must stay responsive, open in a worker
    thread (``await anyio.to_thread.run_sync(from_rtsp, url)``); the result may be used on any
    thread or loop afterwards.

    Decoding runs in one daemon thread per source (``metered-realtime-media``), started by the
    first ``recv()`` of either track for a file, at open for a live input. Audio comes out as
    20 ms frames of 48 kHz stereo s16 (what aiortc's Opus encoder takes; mono is copied to both
    channels at its own level); video as decoded ``av.VideoFrame``\\s with timestamps starting
    at 0. The tracks are aiortc's own ``PlayerStreamTrack`` fed by this module's decoder, so they
    work under asyncio and under trio (where aiortc, and so ``recv()``, runs on the SDK's aiortc
    bridge thread), and nothing in them is bound to an event loop when they are built.

    - A file (and an FFmpeg ``lavfi`` source) plays in real time from the first ``recv()``: the
      decoder reads at most 0.5 s ahead and each track returns a frame when it is due. A track
      not read yet keeps only its newest few frames; one whose reader stops or falls more than
      about 1 s behind loses its oldest (the file keeps playing: stop the source when done).
      At the end of the input the tracks end (``recv()`` raises ``MediaStreamError``).
    - A live input (RTSP, cameras, microphones, the screen) is read from the moment it opens and
      delivered as it arrives; each track keeps at most ~200 ms of audio / 3 video frames (less
      before its first ``recv()``), so a backlog (what FFmpeg buffered while opening, a consumer
      that starts late or falls behind) is dropped, oldest first, instead of adding latency.
    - Decoding skips a stream once its track is stopped (or garbage-collected): stop the track
      you do not use, e.g. ``src.video.stop()`` when only the audio of a film is sent.
    - ``stop()`` (or leaving ``with`` / ``async with``) ends both tracks and the decoding; the
      thread exits after the read in progress (for RTSP, at most ``timeout`` later) and closes
      the input. ``async with`` / :meth:`MediaSource.aclose` also wait for that.

Security
    Never pass untrusted strings to these helpers. FFmpeg reads many things besides files:
    ``concat:``, ``subfile,``, ``pipe:``, ``data:``, ``http:``... So ``from_file`` takes local
    paths only — a string with an ``xxx:`` protocol prefix is refused (``refused_protocol``)
    unless that protocol is named in ``allow_protocols``, which also becomes FFmpeg's
    ``protocol_whitelist`` (so a playlist inside a file cannot reach further). A local path goes
    to FFmpeg as an absolute path, which FFmpeg never reads as a protocol. ``from_rtsp`` takes
    ``rtsp://`` / ``rtsps://`` URLs only. The device helpers take capture formats only; a
    ``lavfi`` graph is code, and graphs using filters that open files, sockets or plug-ins
    (``movie``, ``amovie``, ``sendcmd``, ``zmq``, ``ladspa``…) are refused.

    ``user:password@`` in an RTSP URL is sent to the camera and redacted from every message
    and log line this module writes (``rtsp://<redacted>@host/...``); an error raised for an
    RTSP URL carries no chained FFmpeg exception (whose text would hold the URL). FFmpeg's own
    log, if an application turns on PyAV's log forwarding at debug level, is outside that.

Errors
    Every failure is a :class:`MediaSourceError` with a stable ``.code``:
    ``invalid_argument`` and ``refused_protocol`` (also ``ValueError``), ``not_found`` (also
    ``FileNotFoundError``), ``unsupported_format``, ``decode_failed``, ``device_unavailable``,
    ``open_failed``. The helpers check their arguments before FFmpeg is touched. A failure
    while playing (``read_failed``, ``decode_failed``) ends the tracks and is kept in
    :attr:`MediaSource.error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fractions
import logging
import math
import os
import re
import sys
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import av
from aiortc.contrib.media import REAL_TIME_FORMATS, PlayerStreamTrack
from aiortc.mediastreams import MediaStreamTrack

from metered_realtime.adapters.log import StdlibLogger
from metered_realtime.adapters.runtime import in_trio_thread
from metered_realtime.core.errors import MeteredRealtimeError, scrub
from metered_realtime.media.audio import _MONO_UPMIX, _UPMIX_IN_FFMPEG

if TYPE_CHECKING:
    from aiortc.contrib.media import MediaPlayer
    from av.container import InputContainer
    from av.stream import Stream

__all__ = [
    "THREAD_NAME",
    "TRANSPORTS",
    "MediaSource",
    "MediaSourceArgumentError",
    "MediaSourceError",
    "MediaSourceNotFoundError",
    "from_camera",
    "from_file",
    "from_microphone",
    "from_rtsp",
    "screen_share",
]

THREAD_NAME: Final = "metered-realtime-media"
"""Name of each source's decoder thread."""
TRANSPORTS: Final = frozenset({"tcp", "udp", "udp_multicast", "http"})
"""The ``transport=`` values ``from_rtsp`` accepts (FFmpeg's ``rtsp_transport``)."""

_AUDIO_RATE: Final = 48_000
_AUDIO_SAMPLES: Final = 960  # 20 ms
_AUDIO_TIME_BASE: Final = fractions.Fraction(1, _AUDIO_RATE)
_LEAD: Final = 0.5  # a paced input is decoded at most this far ahead of real time
_PACED_SECONDS: Final = 1.0  # a paced track queues this much before dropping its oldest frames
_LIVE_AUDIO_FRAMES: Final = 10  # 200 ms
_LIVE_VIDEO_FRAMES: Final = 3
_IDLE_FRAMES: Final = {"audio": 5, "video": 2}  # kept for a track nobody has read yet
_MAX_BAD_PACKETS: Final = 100  # consecutive undecodable packets: the input is broken
_PROBE_PACKETS: Final = 500  # packets read at open for a file's first frame
_EAGAIN_WAIT: Final = 0.005  # a device had no frame ready: retry after this
_DEFAULT_TIMEOUT: Final = 10.0
_MAX_SIZE: Final = 8192
_MAX_FPS: Final = 240

_log = StdlibLogger(logging.getLogger("metered_realtime.media"))

# An FFmpeg protocol prefix: the characters FFmpeg accepts in a protocol name, then ':'.
_PROTOCOL_PREFIX: Final = re.compile(r"([A-Za-z0-9+.\-]+):")
_PROTOCOL_NAME: Final = re.compile(r"[a-z][a-z0-9_]*")
# userinfo in any URL, up to the last '@' before whitespace or a quote.
_USERINFO: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s\"'<>]*@")
# Keys of options= that would widen what FFmpeg may open: use allow_protocols= instead.
_GUARDED_OPTIONS: Final = frozenset(
    {"protocol_whitelist", "protocol_blacklist", "format_whitelist"}
)
_RTSP_PROTOCOLS: Final = "rtsp,rtsps,rtp,srtp,udp,tcp,tls,http,https,httpproxy"
_CAPTURE_FORMATS: Final = frozenset(
    {
        "alsa",
        "android_camera",
        "avfoundation",
        "bktr",
        "decklink",
        "dshow",
        "fbdev",
        "gdigrab",
        "iec61883",
        "jack",
        "kmsgrab",
        "lavfi",
        "openal",
        "oss",
        "pulse",
        "sndio",
        "v4l2",
        "vfwcap",
        "video4linux2",
        "x11grab",
        "xcbgrab",
    }
)
_PATH_DEVICE_FORMATS: Final = frozenset({"v4l2", "video4linux2", "fbdev"})
# lavfi filters that open files, sockets or plug-ins: a graph using them is refused.
_UNSAFE_FILTERS: Final = frozenset(
    {
        "amovie",
        "ass",
        "asendcmd",
        "azmq",
        "frei0r",
        "frei0r_src",
        "ladspa",
        "lv2",
        "movie",
        "sendcmd",
        "subtitles",
        "zmq",
    }
)
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- errors ------------------------------------------------------------------------------------


class MediaSourceError(MeteredRealtimeError):
    """A media source could not be opened, or failed while playing. Branch on ``.code``:

    ``invalid_argument`` (a bad value: transport, size, options…), ``refused_protocol`` (an
    FFmpeg protocol prefix or URL scheme the helper does not take), ``not_found`` (no such
    file), ``unsupported_format`` (FFmpeg cannot read it, or it has no usable stream),
    ``decode_failed`` (its frames do not decode), ``device_unavailable`` (a capture device or
    display that cannot be opened), ``open_failed`` (anything else at open: a refused or
    timed-out RTSP connection…), ``read_failed`` (the input broke while playing; see
    :attr:`MediaSource.error`). Messages never carry RTSP credentials.
    """

    code = "media_source_error"


class MediaSourceNotFoundError(MediaSourceError, FileNotFoundError):
    """``from_file``: the file does not exist (``code == "not_found"``); ``.path`` names it."""

    code = "not_found"

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


class MediaSourceArgumentError(MediaSourceError, ValueError):
    """A refused argument: ``invalid_argument`` or ``refused_protocol`` (FFmpeg not called)."""

    code = "invalid_argument"


def _error(code: str, message: str) -> MediaSourceError:
    if code in ("invalid_argument", "refused_protocol"):
        return MediaSourceArgumentError(message, code=code)
    return MediaSourceError(message, code=code)


def _redact(text: str) -> str:
    """``text`` with URL userinfo (``user:password@``) and the SDK's usual secrets removed."""
    return scrub(_USERINFO.sub(r"\1<redacted>@", text))


# --- argument checks ---------------------------------------------------------------------------


def _check_options(
    options: Mapping[str, str] | None, *, reserved: Collection[str] = ()
) -> dict[str, str]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise _error("invalid_argument", "options must be a mapping of FFmpeg option names to str")
    out: dict[str, str] = {}
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _error("invalid_argument", f"options must map str to str, got {key!r}: {value!r}")
        if key in _GUARDED_OPTIONS:
            raise _error(
                "refused_protocol",
                f"options may not set {key!r}: name the protocols in allow_protocols= instead",
            )
        if key in reserved:
            raise _error("invalid_argument", f"options may not set {key!r}: use the keyword")
        out[key] = value
    return out


def _format_available(name: str) -> bool:
    return any(name in entry.split(",") for entry in av.formats_available)


def _check_format(fmt: str) -> str:
    if not isinstance(fmt, str) or not fmt:
        raise _error("invalid_argument", f"format must be an FFmpeg input format name, not {fmt!r}")
    if not _format_available(fmt):
        raise _error(
            "unsupported_format", f"this FFmpeg build (PyAV {av.__version__}) has no {fmt!r} input"
        )
    return fmt


def _check_size(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_SIZE:
        raise _error(
            "invalid_argument", f"{name} must be an int from 1 to {_MAX_SIZE}, got {value!r}"
        )
    return value


def _check_fps(fps: object) -> float:
    if (
        not isinstance(fps, (int, float))
        or isinstance(fps, bool)
        or not math.isfinite(fps)
        or not 0 < fps <= _MAX_FPS
    ):
        raise _error("invalid_argument", f"fps must be a number above 0, at most {_MAX_FPS}")
    return float(fps)


def _check_protocols(allow: Collection[str]) -> frozenset[str]:
    if isinstance(allow, (str, bytes)) or not isinstance(allow, Collection):
        raise _error(
            "invalid_argument",
            "allow_protocols must be a collection of FFmpeg protocol names, e.g. {'https'}",
        )
    names = frozenset(allow)
    for name in names:
        if not isinstance(name, str) or not _PROTOCOL_NAME.fullmatch(name):
            raise _error("invalid_argument", f"not an FFmpeg protocol name: {name!r}")
    return names


def _protocol_prefix(text: str) -> str | None:
    """The FFmpeg protocol ``text`` names (``concat:``, ``subfile,``…), or None for a path."""
    match = _PROTOCOL_PREFIX.match(text)
    if match is not None:
        name = match[1].lower()
        if sys.platform == "win32" and len(name) == 1:
            return None  # a drive letter
        return name
    if text[:8].lower() == "subfile,":
        return "subfile"
    return None


def _check_text(name: str, value: str) -> None:
    if not value or any(ord(c) < 32 or c == "\x7f" for c in value):
        raise _error("invalid_argument", f"{name} must be non-empty, without control characters")


def _check_graph(graph: str) -> None:
    unsafe = sorted({word for word in _IDENTIFIER.findall(graph) if word in _UNSAFE_FILTERS})
    if unsafe:
        raise _error(
            "refused_protocol",
            f"lavfi graph uses {', '.join(unsafe)}, which can open files, sockets or plug-ins: "
            "open files with from_file",
        )


# --- frame delivery ----------------------------------------------------------------------------


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits there
            waiter.get_loop().call_soon_threadsafe(_set_result, waiter)


def _set_result(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _FrameQueue:
    """Frames from the decoder thread to one track's ``recv()``.

    Stands in for the ``asyncio.Queue`` aiortc's ``PlayerStreamTrack`` reads: thread-safe,
    bounded (when full, the oldest frame is dropped), and bound to no event loop — each
    ``get()`` waits on the loop it runs on (under trio the aiortc bridge's loop may be a new one
    between two reads). ``None`` marks the end and stays for every later ``get()``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._items: deque[av.AudioFrame | av.VideoFrame | None] = deque()
        self._lock = threading.Lock()
        self._waiters: list[asyncio.Future[None]] = []
        self._ended = False

    def put(self, item: av.AudioFrame | av.VideoFrame) -> int:
        """Queue ``item``; returns how many old frames it pushed out (0 after the end)."""
        with self._lock:
            if self._ended:
                return 0
            dropped = 0
            while len(self._items) >= self.limit:
                self._items.popleft()
                dropped += 1
            self.dropped += dropped
            self._items.append(item)
            waiters, self._waiters = self._waiters, []
        _wake(waiters)
        return dropped

    def end(self, *, discard: bool) -> None:
        """No more frames; ``discard``: drop the queued ones too."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            if discard:
                self._items.clear()
            self._items.append(None)
            waiters, self._waiters = self._waiters, []
        _wake(waiters)

    async def get(self) -> av.AudioFrame | av.VideoFrame | None:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._items:
                    item = self._items[0]
                    if item is not None:
                        self._items.popleft()
                    return item
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with self._lock, contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)


class _Broken(Exception):
    """The input failed while being read (internal; carries the error to record)."""

    def __init__(self, error: MediaSourceError) -> None:
        super().__init__(str(error))
        self.error = error


_State = Literal["idle", "on", "off"]


class _Decoder:
    """Reads one input in its own thread and feeds a :class:`_FrameQueue` per track.

    It is also the "player" aiortc's ``PlayerStreamTrack`` calls back: ``_start(track)`` on
    every ``recv()``, ``_stop(track)`` from ``stop()``, and ``_throttle_playback`` (pace frames
    by their timestamps: files and lavfi, not live inputs). It holds no reference to the tracks,
    so dropping them (and the source) stops it.
    """

    def __init__(
        self,
        container: InputContainer,
        streams: dict[str, Stream],
        *,
        describe: str,
        size: tuple[int, int] | None,
    ) -> None:
        self._container = container
        self._describe = describe
        self._size = size
        formats = set(container.format.name.split(","))
        self.paced = not formats.intersection(REAL_TIME_FORMATS)
        self._throttle_playback = self.paced
        self._kinds = {stream.index: kind for kind, stream in streams.items()}
        self._selected = list(streams.values())
        self._state: dict[str, _State] = dict.fromkeys(streams, "idle")
        self._limits = {kind: self._limit(kind, stream) for kind, stream in streams.items()}
        self.queues = {kind: _FrameQueue(_IDLE_FRAMES[kind]) for kind in streams}
        self._lock = threading.Lock()
        self._quit = threading.Event()
        self.done = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.error: MediaSourceError | None = None
        self._resampler: av.AudioResampler | None = None
        self._samples = 0
        self._origin: int | None = None  # first video pts: video starts at 0
        self._bad_packets = 0
        self._dropping = False
        self._early: list[tuple[str, av.AudioFrame | av.VideoFrame]] = []
        self._packets = self._read_packets()

    def _limit(self, kind: str, stream: Stream) -> int:
        if not self.paced:
            return _LIVE_AUDIO_FRAMES if kind == "audio" else _LIVE_VIDEO_FRAMES
        if kind == "audio":
            return round(_PACED_SECONDS / 0.02)
        rate = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None)
        fps = float(rate) if rate else 30.0
        return max(8, min(240, math.ceil(_PACED_SECONDS * fps)))

    # --- the PlayerStreamTrack side (any thread) -----------------------------------------------

    def _start(self, track: MediaStreamTrack) -> None:
        kind = track.kind
        if self._thread is not None and self._state.get(kind) != "idle":
            return
        with self._lock:
            if self._state.get(kind) == "idle":
                self._state[kind] = "on"
                self.queues[kind].limit = self._limits[kind]
            self._begin()

    def begin(self) -> None:
        """Start decoding now (a live input: its backlog is dropped, not delayed)."""
        with self._lock:
            self._begin()

    def _begin(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()

    def _stop(self, track: MediaStreamTrack) -> None:
        self.stop_kind(track.kind)

    def stop_kind(self, kind: str) -> None:
        """Stop feeding ``kind``'s track; when no track is left, :meth:`close`."""
        with self._lock:
            if self._state.get(kind, "off") == "off":
                return
            self._state[kind] = "off"
            self.queues[kind].end(discard=True)
            last = all(state == "off" for state in self._state.values())
        if last:
            self.close()

    def close(self) -> None:
        """End every track and the decoding; the thread (if any) closes the input as it exits."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._quit.set()
            for kind, queue in self.queues.items():
                self._state[kind] = "off"
                queue.end(discard=True)
            running = self._thread is not None
        if not running:
            self._close_container()
            self.done.set()

    def _close_container(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()

    # --- reading (the constructor's thread for probe(), then the decoder thread) ---------------

    def _read_packets(self) -> Iterator[av.Packet[Any]]:
        while True:
            try:
                yield from self._container.demux(*self._selected)
                return
            except av.FFmpegError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
            if self._quit.wait(_EAGAIN_WAIT):  # a device with no frame ready yet
                return

    def _next_packet(self) -> av.Packet[Any] | None:
        try:
            return next(self._packets, None)
        except av.FFmpegError as exc:
            text = "timed out" if isinstance(exc, av.ExitError) else exc.strerror
            raise _Broken(
                _error("read_failed", f"reading {self._describe} failed: {text}")
            ) from None

    def _decode(self, packet: av.Packet[Any]) -> list[Any]:
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            self._bad_packets += 1
            if self._bad_packets == 1:
                _log.warning(
                    "media source: skipping undecodable data",
                    {"input": self._describe, "error": exc.strerror},
                )
            if self._bad_packets >= _MAX_BAD_PACKETS:
                raise _Broken(
                    _error("decode_failed", f"{self._describe} does not decode: {exc.strerror}")
                ) from None
            return []
        self._bad_packets = 0
        return frames

    def probe(self) -> None:
        """Decode up to the first frame now, so a file that does not decode fails at open."""
        try:
            for _ in range(_PROBE_PACKETS):
                packet = self._next_packet()
                if packet is None:
                    break
                kind = self._kinds.get(packet.stream.index)
                frames = self._decode(packet)
                if kind is not None and frames:
                    self._early = [(kind, frame) for frame in frames]
                    return
        except _Broken as broken:
            code = "decode_failed" if broken.error.code == "read_failed" else broken.error.code
            raise _error(code, str(broken.error)) from None
        raise _error("decode_failed", f"{self._describe} has no decodable audio or video frame")

    def _run(self) -> None:
        try:
            self._play()
        except _Broken as broken:
            self.error = broken.error
        except Exception as exc:  # a bug or an FFmpeg surprise: end the tracks, say why
            self.error = _error("read_failed", f"{self._describe}: {type(exc).__name__}")
        finally:
            self._close_container()
            for queue in self.queues.values():
                queue.end(discard=False)
            if self.error is not None:
                _log.warning(
                    "media source stopped", {"input": self._describe, "error": str(self.error)}
                )
            else:
                _log.debug("media source ended", {"input": self._describe})
            self.done.set()

    def _play(self) -> None:
        t0 = time.monotonic()
        early, self._early = self._early, []
        for first_kind, first_frame in early:
            self._emit(first_kind, first_frame, t0)
        while not self._quit.is_set():
            packet = self._next_packet()
            if packet is None:
                break
            kind = self._kinds.get(packet.stream.index)
            if kind is None or self._state[kind] == "off":
                continue
            for frame in self._decode(packet):
                self._emit(kind, frame, t0)
        if self._resampler is not None and not self._quit.is_set():
            for out in self._resampler.resample(None):
                self._deliver("audio", self._stamp(_padded(out)))

    def _emit(self, kind: str, frame: Any, t0: float) -> None:
        if kind == "audio":
            for out in self._resample(frame):
                self._deliver("audio", self._stamp(out))
            at: float | None = self._samples / _AUDIO_RATE
        else:
            if frame.pts is None:
                return
            if self._origin is None:
                self._origin = frame.pts
            frame.pts -= self._origin
            if self._size is not None and (frame.width, frame.height) != self._size:
                frame = frame.reformat(width=self._size[0], height=self._size[1])
            self._deliver("video", frame)
            at = frame.time
        if self.paced and at is not None:
            ahead = at - (time.monotonic() - t0) - _LEAD
            if ahead > 0:
                self._quit.wait(ahead)

    def _resample(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        """48 kHz stereo s16 frames of 20 ms; a new resampler when the input format changes."""
        out: list[av.AudioFrame] = []
        if self._resampler is not None:
            try:
                return self._resampler.resample(frame)
            except ValueError:  # the input's format, layout or rate changed mid-stream
                out = [_padded(f) for f in self._resampler.resample(None)]
        if len(frame.layout.channels) == 1 and _UPMIX_IN_FFMPEG:  # as AudioSource: mono at
            self._resampler = av.AudioResampler(  # unity on both sides, not -3 dB
                format="s16",
                layout="stereo",
                rate=_AUDIO_RATE,
                frame_size=_AUDIO_SAMPLES,
                options=_MONO_UPMIX,
            )
        else:
            self._resampler = av.AudioResampler(
                format="s16", layout="stereo", rate=_AUDIO_RATE, frame_size=_AUDIO_SAMPLES
            )
        return out + self._resampler.resample(frame)

    def _stamp(self, frame: av.AudioFrame) -> av.AudioFrame:
        frame.pts = self._samples
        frame.time_base = _AUDIO_TIME_BASE
        self._samples += frame.samples
        return frame

    def _deliver(self, kind: str, frame: av.AudioFrame | av.VideoFrame) -> None:
        if self.queues[kind].put(frame) and not self._dropping and self._state[kind] == "on":
            self._dropping = True  # logged once per source
            _log.debug("media source: the consumer is behind, dropping frames", {"track": kind})


def _padded(frame: av.AudioFrame) -> av.AudioFrame:
    """A short last frame, padded with silence to 20 ms."""
    if frame.samples >= _AUDIO_SAMPLES:
        return frame
    out = av.AudioFrame(format="s16", layout="stereo", samples=_AUDIO_SAMPLES)
    data = bytes(frame.planes[0])[: frame.samples * 4]
    out.planes[0].update(data + bytes(_AUDIO_SAMPLES * 4 - len(data)))
    out.sample_rate = _AUDIO_RATE
    return out


# --- the source --------------------------------------------------------------------------------


class MediaSource:
    """One opened input: its ``audio`` and ``video`` tracks, and :meth:`stop`.

    ``audio`` / ``video`` are aiortc ``MediaStreamTrack``\\s (``None`` when the input has no such
    stream, or the helper does not take it: ``from_camera`` has no audio). ``live`` is False for
    inputs paced by their timestamps (files, lavfi), True for live ones. ``error`` is why the
    input stopped early (``read_failed``, ``decode_failed``), or None.

    Use it as a context manager (``with`` stops; ``async with`` stops and waits for the decoder
    thread to finish) or call :meth:`stop` yourself.
    """

    def __init__(
        self,
        decoder: _Decoder,
        audio: MediaStreamTrack | None,
        video: MediaStreamTrack | None,
        describe: str,
    ) -> None:
        self._decoder = decoder
        self._audio = audio
        self._video = video
        self._describe = describe

    @property
    def audio(self) -> MediaStreamTrack | None:
        """The audio track: 20 ms, 48 kHz, stereo s16 ``av.AudioFrame``\\s; or None."""
        return self._audio

    @property
    def video(self) -> MediaStreamTrack | None:
        """The video track: ``av.VideoFrame``\\s, timestamps from 0; or None."""
        return self._video

    @property
    def live(self) -> bool:
        """True for a live input (RTSP, a device), False for one paced by timestamps."""
        return not self._decoder.paced

    @property
    def error(self) -> MediaSourceError | None:
        """Why the input stopped before its end, or None."""
        return self._decoder.error

    def stop(self) -> None:
        """End both tracks (``recv()`` raises ``MediaStreamError``) and the decoding.

        Returns at once; the decoder thread exits after the read in progress. Idempotent.
        Under trio, runs on the aiortc bridge thread (as a track's ``stop()`` does there).
        """
        if in_trio_thread():
            from metered_realtime.adapters.bridge import run_sync_on_aiortc

            run_sync_on_aiortc(self._stop)
        else:
            self._stop()

    def _stop(self) -> None:
        for track in (self._audio, self._video):
            if track is not None:
                track.stop()
        self._decoder.close()

    async def aclose(self, timeout: float = 5.0) -> None:
        """:meth:`stop`, then wait (at most ``timeout`` s) until the decoder thread has ended."""
        import anyio

        self.stop()
        with anyio.move_on_after(timeout):
            while not self._decoder.done.is_set():
                await anyio.sleep(0.01)

    def __enter__(self) -> MediaSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> MediaSource:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        kinds = [k for k, t in (("audio", self._audio), ("video", self._video)) if t is not None]
        return f"<MediaSource {self._describe} {'+'.join(kinds)}>"


# --- opening -----------------------------------------------------------------------------------

_Kind = Literal["file", "rtsp", "device"]
_FORMAT_ERRORS: Final = (
    av.InvalidDataError,
    av.error.DemuxerNotFoundError,
    av.error.DecoderNotFoundError,
    av.error.PatchWelcomeError,
)


def _open(
    target: str,
    *,
    kind: _Kind,
    describe: str,
    fmt: str | None,
    options: dict[str, str],
    container_options: dict[str, str],
    timeout: float,
) -> InputContainer:
    """``av.open`` with its failures turned into :class:`MediaSourceError`."""
    try:
        return av.open(
            target,
            mode="r",
            format=fmt,
            options=options or None,
            container_options=container_options or None,
            timeout=timeout,
        )
    except av.FFmpegError as exc:
        cause: BaseException = exc
        text = f"timed out after {timeout:g} s" if isinstance(exc, av.ExitError) else exc.strerror
        if kind == "device":
            code = "device_unavailable"
        elif kind == "file" and isinstance(exc, _FORMAT_ERRORS):
            code = "unsupported_format"
        else:
            code = "open_failed"
    except (OSError, ValueError) as exc:  # PyAV's own checks
        cause = exc
        text = type(exc).__name__
        code = "device_unavailable" if kind == "device" else "open_failed"
    failure = _error(code, f"cannot open {describe}: {text}")
    # Raised outside the handler: for RTSP, FFmpeg's text (it holds the URL) is not chained.
    if kind == "rtsp":
        raise failure
    raise failure from cause


def _decodable(stream: Stream) -> bool:
    try:
        context = stream.codec_context
    except Exception:
        return False
    return context is not None and context.codec.is_decoder


def _source(
    container: InputContainer,
    *,
    kinds: Collection[str],
    describe: str,
    size: tuple[int, int] | None = None,
    probe: bool = False,
) -> MediaSource:
    """Pick the first decodable stream of each kind and build the tracks (closes on failure)."""
    try:
        streams: dict[str, Stream] = {}
        for stream in container.streams:
            if stream.type in kinds and stream.type not in streams and _decodable(stream):
                streams[stream.type] = stream
        if not streams:
            wanted = " or ".join(sorted(kinds))
            raise _error(
                "unsupported_format", f"{describe} has no {wanted} stream FFmpeg can decode"
            )
        decoder = _Decoder(container, streams, describe=describe, size=size)
        if probe:
            decoder.probe()
    except BaseException:
        with contextlib.suppress(Exception):
            container.close()
        raise
    tracks: dict[str, MediaStreamTrack] = {}
    for kind, queue in decoder.queues.items():
        track = PlayerStreamTrack(cast("MediaPlayer", decoder), kind=kind)
        cast(Any, track)._queue = queue
        weakref.finalize(track, decoder.stop_kind, kind)  # a dropped track stops its decoding
        tracks[kind] = track
    if not decoder.paced:
        decoder.begin()  # live: read from now on, so no backlog builds up before the first recv()
    _log.debug(
        "media source opened",
        {
            "input": describe,
            "format": container.format.name,
            "streams": ",".join(f"{k}:{s.codec_context.name}" for k, s in streams.items()),
        },
    )
    return MediaSource(decoder, tracks.get("audio"), tracks.get("video"), describe)


# --- the helpers -------------------------------------------------------------------------------


def from_file(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    options: Mapping[str, str] | None = None,
    allow_protocols: Collection[str] = (),
) -> MediaSource:
    """Play a local media file (any container and codecs this FFmpeg decodes) in real time.

    ``path`` is a local file path (``str`` or ``os.PathLike``; a ``pathlib.Path`` is always a
    path, never a URL). A missing file raises ``MediaSourceError`` ``not_found`` (also a
    ``FileNotFoundError``) before FFmpeg is touched; a file FFmpeg cannot read raises
    ``unsupported_format``, one whose first frame does not decode ``decode_failed``.

    A ``str`` with an FFmpeg protocol prefix (``concat:``, ``subfile,``, ``pipe:``, ``data:``,
    ``file:``, ``http:``…) is refused (``refused_protocol``) unless that protocol is named in
    ``allow_protocols``, e.g. ``from_file("https://host/a.mp4", allow_protocols={"https",
    "tls", "tcp"})``. Those names also become FFmpeg's ``protocol_whitelist`` (with ``file``
    for a local path), so nothing the input refers to can use any other protocol. Never pass
    an untrusted string here.

    ``format`` forces an FFmpeg demuxer (e.g. ``"s16le"`` with ``options={"sample_rate":
    "16000"}``); ``options`` are FFmpeg demuxer/decoder options (``protocol_whitelist`` and
    the like are refused: use ``allow_protocols``). Opening reads the file's header and first
    frame on the calling thread.
    """
    allowed = _check_protocols(allow_protocols)
    fmt = None if format is None else _check_format(format)
    opts = _check_options(options)
    if isinstance(path, os.PathLike):
        text = os.fsdecode(os.fspath(path))
        prefix = None
    elif isinstance(path, str):
        text = path
        prefix = _protocol_prefix(text)
    else:
        raise _error(
            "invalid_argument", f"path must be a str or os.PathLike, not {type(path).__name__}"
        )
    _check_text("path", text)
    if prefix is not None:
        if prefix not in allowed:
            raise _error(
                "refused_protocol",
                f"from_file takes local paths; {_redact(text)!r} uses FFmpeg's {prefix!r} "
                f"protocol (name it in allow_protocols= to allow it, or pass a pathlib.Path "
                "for a file whose name has a colon)",
            )
        target, describe = text, _redact(text)
        whitelist = ",".join(sorted(allowed))
    else:
        target = os.path.abspath(text)
        describe = repr(text)
        if not os.path.exists(target):
            raise MediaSourceNotFoundError(f"no such file: {text!r}", path=text)
        if not os.path.isfile(target):
            raise _error("invalid_argument", f"{text!r} is not a regular file")
        whitelist = ",".join(sorted(allowed | {"file"}))
    container = _open(
        target,
        kind="file",
        describe=describe,
        fmt=fmt,
        options=opts,
        container_options={"protocol_whitelist": whitelist},
        timeout=_DEFAULT_TIMEOUT,
    )
    return _source(container, kinds=("audio", "video"), describe=describe, probe=True)


def from_rtsp(
    url: str,
    *,
    transport: str = "tcp",
    timeout: float = _DEFAULT_TIMEOUT,
    options: Mapping[str, str] | None = None,
) -> MediaSource:
    """Receive an RTSP stream (an IP camera, a media server) as live tracks.

    ``url`` must be ``rtsp://`` or ``rtsps://`` (anything else: ``refused_protocol``);
    ``user:password@`` in it is used to log in and redacted from every message and log line.
    ``transport`` is one of ``"tcp"`` (default: works through NAT and firewalls), ``"udp"``,
    ``"udp_multicast"``, ``"http"`` (RTSP tunnelled over HTTP); anything else raises
    ``invalid_argument``. ``timeout`` bounds the connection and, later, each read (seconds):
    a camera that stops sending ends the tracks ``timeout`` later with ``error`` set
    (``read_failed``). ``options`` are extra FFmpeg RTSP options (not ``rtsp_transport``).

    Blocks while connecting (at most about ``timeout``): from async code, open it in a worker
    thread (``await anyio.to_thread.run_sync(from_rtsp, url)``). A refused, failed or timed-out
    connection raises ``open_failed``. Never pass an untrusted URL here.
    """
    if not isinstance(url, str):
        raise _error("invalid_argument", f"url must be a str, not {type(url).__name__}")
    if not isinstance(transport, str) or transport not in TRANSPORTS:
        raise _error(
            "invalid_argument",
            f"transport must be one of {', '.join(sorted(TRANSPORTS))}, not {transport!r}",
        )
    if (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or not 0 < timeout <= 3600
    ):
        raise _error("invalid_argument", "timeout must be a number of seconds above 0")
    # Packets FFmpeg reads while probing the stream (up to seconds) are dropped, not played late.
    opts = {"fflags": "+nobuffer", **_check_options(options, reserved=("rtsp_transport",))}
    _check_text("url", url)
    scheme = _protocol_prefix(url)
    if scheme not in ("rtsp", "rtsps"):
        raise _error(
            "refused_protocol", f"from_rtsp takes rtsp:// or rtsps:// URLs, not {_redact(url)!r}"
        )
    url = scheme + url[len(scheme) :]  # FFmpeg matches the scheme case-sensitively
    describe = _redact(url)
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        host = None
    if not url[len(scheme) + 1 :].startswith("//") or not host or any(c.isspace() for c in url):
        raise _error("invalid_argument", f"not a valid RTSP URL: {describe!r}")
    container = _open(
        url,
        kind="rtsp",
        describe=describe,
        fmt="rtsp",
        options=opts,
        container_options={"rtsp_transport": transport, "protocol_whitelist": _RTSP_PROTOCOLS},
        timeout=float(timeout),
    )
    return _source(container, kinds=("audio", "video"), describe=describe)


def _platform_default(role: str, fmt: str | None) -> tuple[str, str | None]:
    """``(format, device)`` for a device helper when the caller gave none."""
    if fmt is None:
        if sys.platform.startswith("linux"):
            fmt = {
                "camera": "v4l2",
                "microphone": "pulse" if _format_available("pulse") else "alsa",
                "screen": "x11grab",
            }[role]
        elif sys.platform == "darwin":
            fmt = "avfoundation"
        elif sys.platform == "win32":
            fmt = "gdigrab" if role == "screen" else "dshow"
        else:
            raise _error(
                "unsupported_format", f"no default {role} input on {sys.platform}: pass format="
            )
    device: str | None
    if fmt in ("v4l2", "video4linux2"):
        device = "/dev/video0"
    elif fmt == "fbdev":
        device = "/dev/fb0"
    elif fmt in ("alsa", "pulse"):
        device = "default"
    elif fmt in ("x11grab", "xcbgrab"):
        device = os.environ.get("DISPLAY") or None
    elif fmt == "avfoundation":
        device = {
            "camera": "default:none",
            "microphone": ":default",
            "screen": "Capture screen 0:none",
        }[role]
    elif fmt == "gdigrab":
        device = "desktop"
    else:
        device = None  # dshow needs a name ("video=…"), lavfi a graph…
    return fmt, device


def _open_device(
    role: Literal["camera", "microphone", "screen"],
    device: str | os.PathLike[str] | None,
    *,
    fmt: str | None,
    options: Mapping[str, str] | None,
    defaults: dict[str, str],
    size: tuple[int, int] | None,
) -> MediaSource:
    opts = _check_options(options)
    if fmt is not None and (not isinstance(fmt, str) or fmt not in _CAPTURE_FORMATS):
        raise _error(
            "unsupported_format",
            f"{fmt!r} is not a capture format ({', '.join(sorted(_CAPTURE_FORMATS))}); "
            "open files with from_file",
        )
    fmt, default = _platform_default(role, fmt)
    if device is None:
        name = default
    elif isinstance(device, (str, os.PathLike)):
        name = os.fsdecode(os.fspath(device))
    else:
        raise _error("invalid_argument", f"device must be a str, not {type(device).__name__}")
    if name is None:
        if fmt in ("x11grab", "xcbgrab"):
            raise _error("device_unavailable", "no X display: $DISPLAY is not set (pass display=)")
        raise _error("device_unavailable", f"no default {role} for format {fmt!r}: pass device=")
    _check_text("device", name)
    describe = f"{fmt} {role} {name!r}"
    if fmt == "lavfi":
        _check_graph(name)
    elif fmt in _PATH_DEVICE_FORMATS and not os.path.exists(name):
        raise _error("device_unavailable", f"no {role} at {name} ({fmt})")
    _check_format(fmt)
    if fmt != "lavfi":
        opts = {**defaults, **opts}
    container = _open(
        name,
        kind="device",
        describe=describe,
        fmt=fmt,
        options=opts,
        container_options={},
        timeout=_DEFAULT_TIMEOUT,
    )
    kinds = ("audio",) if role == "microphone" else ("video",)
    return _source(container, kinds=kinds, describe=describe, size=size)


def from_camera(
    device: str | os.PathLike[str] | None = None,
    *,
    width: int = 640,
    height: int = 480,
    fps: float = 30,
    format: str | None = None,
    options: Mapping[str, str] | None = None,
) -> MediaSource:
    """Capture a camera as a live video track (``audio`` is None).

    Defaults by platform: Linux ``v4l2`` ``/dev/video0``; macOS ``avfoundation``
    ``"default:none"``; Windows ``dshow``, which has no default: pass ``device="video=<name>"``.
    ``width``/``height``/``fps`` are asked of the device (FFmpeg's ``video_size`` and
    ``framerate``); frames of another size are scaled, so every frame is ``width`` x
    ``height``. The device's own frame rate is kept.

    ``format`` picks another capture format (``video4linux2``, ``avfoundation``, ``dshow``,
    ``lavfi``…; files are refused: use ``from_file``) and ``options`` adds FFmpeg options (they
    override the size and rate). ``format="lavfi"`` takes a filter graph as ``device``, for
    tests and demos: ``from_camera("testsrc=size=320x240:rate=15", format="lavfi", width=320,
    height=240)``; graphs with filters that open files, sockets or plug-ins are refused.

    Errors: ``device_unavailable`` (no such device, busy, no permission…),
    ``unsupported_format`` (the format is not in this FFmpeg build), ``invalid_argument``.
    """
    w, h = _check_size("width", width), _check_size("height", height)
    rate = _check_fps(fps)
    defaults = {"video_size": f"{w}x{h}", "framerate": f"{rate:g}"}
    return _open_device(
        "camera", device, fmt=format, options=options, defaults=defaults, size=(w, h)
    )


def from_microphone(
    device: str | os.PathLike[str] | None = None,
    *,
    format: str | None = None,
    options: Mapping[str, str] | None = None,
) -> MediaSource:
    """Capture a microphone as a live audio track (``video`` is None).

    Defaults by platform: Linux ``pulse`` ``"default"`` when this FFmpeg build has PulseAudio,
    else ``alsa`` ``"default"``; macOS ``avfoundation`` ``":default"``; Windows ``dshow``, which
    has no default: pass ``device="audio=<name>"``. Frames are 20 ms of 48 kHz stereo s16 (a
    mono microphone is copied to both channels).

    ``format="lavfi"`` takes an audio filter graph, for tests and demos:
    ``from_microphone("sine=frequency=440:sample_rate=48000", format="lavfi")``. Errors as
    for :func:`from_camera`.
    """
    return _open_device("microphone", device, fmt=format, options=options, defaults={}, size=None)


def screen_share(
    display: str | None = None,
    *,
    width: int | None = None,
    height: int | None = None,
    fps: float = 15,
    format: str | None = None,
    options: Mapping[str, str] | None = None,
) -> MediaSource:
    """Capture the screen as a live video track (``audio`` is None).

    Defaults by platform: Linux ``x11grab`` on ``$DISPLAY`` (an X11 session; under Wayland it
    sees only X clients) — with no display it raises ``device_unavailable``; macOS
    ``avfoundation`` ``"Capture screen 0:none"``; Windows ``gdigrab`` ``"desktop"``.
    ``display`` names another screen (``":1.0"``, or ``":0.0+100,200"`` with
    ``options={"video_size": "800x600"}`` for a region). The whole screen is captured at
    ``fps``; give both ``width`` and ``height`` to scale every frame to that size.
    """
    if (width is None) != (height is None):
        raise _error("invalid_argument", "give both width and height, or neither")
    size = None
    if width is not None and height is not None:
        size = (_check_size("width", width), _check_size("height", height))
    rate = _check_fps(fps)
    if display is not None and not isinstance(display, str):
        raise _error("invalid_argument", f"display must be a str, not {type(display).__name__}")
    defaults = {"framerate": f"{rate:g}"}
    if (format or "") == "avfoundation" or (format is None and sys.platform == "darwin"):
        defaults["capture_cursor"] = "1"
    return _open_device(
        "screen", display, fmt=format, options=options, defaults=defaults, size=size
    )
