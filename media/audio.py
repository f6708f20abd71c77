"""``AudioSource``: push PCM (or ``av.AudioFrame``\\s) in; an aiortc audio track comes out.

Everything pushed is converted to 48 kHz stereo s16 — the rate and layout Opus is sent at — and
handed to the WebRTC sender in 20 ms frames, paced against the loop's clock: frame ``i`` is due at
``start + i * 0.02`` (scheduled from the start, so sleep errors never accumulate). When the
producer falls behind, ``recv()`` returns silence for that slot instead of waiting.

Data path, all on one asyncio loop (the one aiortc runs on)::

    push(bytes) ──► _in (input PCM) ──► resampler ─────────────────────────┐ recv(): one frame
                    (lazily, by recv)   (holds converted audio not yet sent) ├──► per 20 ms
    push(AudioFrame) ──► resampled at once ──┐                              │
    push(bytes at 48 kHz stereo) ────────────┴─► _out (48 kHz stereo s16) ──┘

Order is push order: ``_out`` goes first, then what the resampler holds, then ``_in`` (a frame
push first converts the PCM queued before it and flushes the resampler's tail into ``_out``).

**Cost.** A real-time producer (a TTS stream, a network relay) pushes 20 ms and the track sends
20 ms: one resampler call per frame, so the resampler's fixed cost per call is what matters.
PyAV's ``AudioResampler`` runs a filter graph per call (~10 µs of fixed cost, an exception per
call included); here libswresample — the library behind that graph, already loaded by PyAV — is
called directly through ``ctypes`` (~0.5 µs per call), and ``recv()`` has it write straight into
the frame it returns. Same library, same options, so the same samples (a test checks it). Where
the library cannot be reached that way (e.g. Windows, where a module's dependencies are not
searchable), PyAV's resampler is used, on batches of up to 200 ms to amortise its cost.

**Under trio** the track lives on the aiortc bridge loop; ``push`` on the trio thread leaves PCM
that fits in an inbox (a deque) that ``recv()`` empties, rather than a thread round trip per
push (~48 µs of CPU each on a 2-core VM, ~5 µs this way).

**Pacing.** asyncio's timers wake through ``epoll_wait``, which counts in whole milliseconds
(rounded up): up to 1 ms late. On Linux, with the default clock, ``recv()`` waits on a timerfd
armed at the frame's absolute due time instead, so a frame leaves within tens of µs of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fractions
import importlib
import logging
import math
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.audio.format import AudioFormat
from av.audio.layout import AudioLayout

from metered_realtime.adapters.log import Logger, as_logger
from metered_realtime.adapters.runtime import in_trio_thread

__all__ = ["FRAME_SAMPLES", "OUTPUT_RATE", "AudioSource"]

OUTPUT_RATE: Final = 48_000
"""Sample rate of every frame ``recv()`` returns."""
FRAME_SAMPLES: Final = 960
"""Samples per channel in each 20 ms output frame."""

_FRAME_SECONDS: Final = 0.02
_OUT_SAMPLE_BYTES: Final = 4  # s16, two channels, interleaved
_OUT_BYTES_PER_SECOND: Final = OUTPUT_RATE * _OUT_SAMPLE_BYTES
_FRAME_BYTES: Final = FRAME_SAMPLES * _OUT_SAMPLE_BYTES
_SILENCE: Final = bytes(_FRAME_BYTES)
_TIME_BASE: Final = fractions.Fraction(1, OUTPUT_RATE)
_OUT_FORMAT: Final = AudioFormat("s16")
_OUT_LAYOUT: Final = AudioLayout("stereo")
_PASSTHROUGH: Final = ("s16", "stereo", OUTPUT_RATE)
# FFmpeg upmixes mono to stereo at -3 dB per side; scale the matrix back to unity, so mono is
# copied to both channels at the level it was pushed at (as a browser plays mono Opus).
_MONO_UPMIX: Final = {"rematrix_volume": repr(math.sqrt(2))}

_LAYOUT_CHANNELS: Final = {"mono": 1, "stereo": 2}
_MIN_RATE: Final = 8_000
_MAX_RATE: Final = 192_000
_MIN_BUFFER_SECONDS: Final = 0.1  # must hold a frame plus the resampler's delay, with margin
_CONVERT_SECONDS: Final = 0.2  # largest batch of input PCM resampled in one call
_HYSTERESIS_SECONDS: Final = 0.1  # a blocked push() resumes this far below the limit
_MAX_LAG_SECONDS: Final = 0.2  # further behind schedule than this: re-anchor, don't burst
# recv() feeds libswresample more input only while it holds less than this (48 kHz samples):
# one frame plus room for its filter delay, so a call always has a whole frame to give.
_SWR_LOW_WATER: Final = 2 * FRAME_SAMPLES

_Key = tuple[str, str, int]  # (sample format, layout, rate) a resampler was built for


# ---------------------------------------------------------------- libswresample, directly


class _SwrLib:
    """The libswresample / libavutil entry points used, from the copy PyAV loaded.

    All take and return plain ints and pointers; every SwrContext option is set by name
    (``av_opt_set``), so no FFmpeg struct layout is assumed.
    """

    def __init__(self, dll: ctypes.CDLL) -> None:
        vp, i, i64, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_char_p
        self.version: Callable[[], int] = self._fn(dll.swresample_version, ctypes.c_uint, [])
        self.alloc: Callable[[], int | None] = self._fn(dll.swr_alloc, vp, [])
        self.free: Callable[[Any], None] = self._fn(dll.swr_free, None, [ctypes.POINTER(vp)])
        self.opt_set: Callable[[int, bytes, bytes, int], int] = self._fn(
            dll.av_opt_set, i, [vp, cp, cp, i]
        )
        self.opt_set_int: Callable[[int, bytes, int, int], int] = self._fn(
            dll.av_opt_set_int, i, [vp, cp, i64, i]
        )
        self.init: Callable[[int], int] = self._fn(dll.swr_init, i, [vp])
        # swr_convert(ctx, uint8_t **out, int out_count, const uint8_t **in, int in_count)
        self.convert: Callable[[int, Any, int, Any, int], int] = self._fn(
            dll.swr_convert, i, [vp, vp, i, vp, i]
        )
        self.out_samples: Callable[[int, int], int] = self._fn(dll.swr_get_out_samples, i, [vp, i])

    @staticmethod
    def _fn(fn: Any, restype: Any, argtypes: list[Any]) -> Any:
        fn.restype = restype
        fn.argtypes = argtypes
        return fn

    def free_context(self, ctx: int) -> None:
        self.free(ctypes.byref(ctypes.c_void_p(ctx)))


class _SwrError(Exception):
    """libswresample refused a configuration (the PyAV resampler is used instead)."""


def _load_swr() -> _SwrLib | None:
    """libswresample through any of PyAV's extension modules (dlsym searches their
    dependencies), or ``None`` where that does not work."""
    if sys.platform == "win32":  # GetProcAddress does not search a module's dependencies
        return None
    for name in ("av._core", "av.audio.resampler", "av.audio.frame"):
        try:
            module = importlib.import_module(name)
            path = getattr(module, "__file__", None)
            if not path or path.endswith(".py"):
                continue
            lib = _SwrLib(ctypes.CDLL(path))
            if lib.version() >> 16 < 4:  # chlayout options: FFmpeg 5.1+
                return None
            _Swr(lib, ("s16", "mono", 16_000))  # builds and initialises: the calls work
        except (ImportError, OSError, AttributeError, _SwrError, MemoryError):
            continue
        return lib
    return None


def _swr_context(lib: _SwrLib, key: _Key, out_layout: str) -> int:
    """An initialised SwrContext for ``key`` → ``out_layout`` s16 at 48 kHz (caller frees)."""
    fmt, layout, rate = key
    ctx = lib.alloc()
    if not ctx:
        raise MemoryError("swr_alloc failed")
    options = [
        (b"in_chlayout", layout),
        (b"in_sample_fmt", fmt),
        (b"out_chlayout", out_layout),
        (b"out_sample_fmt", "s16"),
    ]
    if layout == "mono" and out_layout == "stereo":
        options.append((b"rematrix_volume", _MONO_UPMIX["rematrix_volume"]))
    try:
        for name, value in options:
            if lib.opt_set(ctx, name, value.encode(), 0) < 0:
                raise _SwrError(f"{name.decode()}={value}")
        for name, number in ((b"in_sample_rate", rate), (b"out_sample_rate", OUTPUT_RATE)):
            if lib.opt_set_int(ctx, name, number, 0) < 0:
                raise _SwrError(f"{name.decode()}={number}")
        if lib.init(ctx) < 0:
            raise _SwrError(f"swr_init for {key}")
    except BaseException:
        lib.free_context(ctx)
        raise
    return ctx


class _Swr:
    """One SwrContext: audio of ``key`` → 48 kHz stereo s16, as PyAV's resampler would make it
    (the same library, defaults and options).

    libswresample upmixes *before* resampling when the rate at most doubles (mono 24 kHz and
    up): two channels through the filter instead of one. Mono at those rates is therefore
    resampled as mono, then upmixed at 48 kHz by a second context: the same samples (with the
    unity upmix both channels are copies of one filtered channel either way), ~1.5 µs less.
    """

    __slots__ = (
        "__weakref__",
        "_cap",
        "_ctx",
        "_in",
        "_lib",
        "_mid",
        "_mid_in",
        "_out",
        "_outbuf",
        "_upmix",
        "key",
        "pending",
        "ratio",
        "sample_bytes",
    )

    def __init__(self, lib: _SwrLib, key: _Key) -> None:
        _, layout, rate = key
        split = layout == "mono" and rate != OUTPUT_RATE and 2 * rate >= OUTPUT_RATE
        self._ctx = _swr_context(lib, key, "mono" if split else "stereo")
        weakref.finalize(self, lib.free_context, self._ctx)
        self._upmix = 0
        if split:
            self._upmix = _swr_context(lib, ("s16", "mono", OUTPUT_RATE), "stereo")
            weakref.finalize(self, lib.free_context, self._upmix)
        self._lib = lib
        self.key = key
        self.ratio = OUTPUT_RATE / rate
        self.sample_bytes = 2 * _LAYOUT_CHANNELS.get(layout, 0)  # s16 interleaved (bytes)
        self.pending = 0.0  # 48 kHz samples held (input not yet converted, filter delay)
        self._in = (ctypes.c_char_p * 1)()  # packed input: one plane, a bytes object
        self._out = (ctypes.c_void_p * 1)()
        self._mid = ctypes.create_string_buffer(2 * FRAME_SAMPLES)  # split: the mono stage
        self._mid_in = (ctypes.c_void_p * 1)(ctypes.addressof(self._mid))
        self._cap = 0
        self._outbuf = ctypes.create_string_buffer(0)

    def _convert(self, address: int, samples: int, planes: Any, n_in: int) -> int:
        """Up to ``samples`` output samples at ``address``; ``planes=None`` flushes."""
        lib = self._lib
        if not self._upmix:
            self._out[0] = address
            got = lib.convert(self._ctx, self._out, samples, planes, n_in)
        else:
            if samples > len(self._mid) // 2:
                self._mid = ctypes.create_string_buffer(2 * samples)
                self._mid_in[0] = ctypes.addressof(self._mid)
            self._out[0] = self._mid_in[0]
            got = lib.convert(self._ctx, self._out, samples, planes, n_in)
            if got > 0:
                self._out[0] = address
                got = lib.convert(self._upmix, self._out, got, self._mid_in, got)
        if got < 0:
            raise RuntimeError(f"swr_convert failed ({got})")
        return int(got)

    def into(self, address: int, samples: int, pcm: bytes) -> int:
        """Convert ``pcm`` (s16 interleaved, may be empty) and write at most ``samples`` output
        samples at ``address``; the rest stays in the context. Returns the samples written."""
        self._in[0] = pcm
        n_in = len(pcm) // self.sample_bytes
        got = self._convert(address, samples, self._in, n_in)
        self.pending += n_in * self.ratio - got
        return got

    def _run(self, planes: Any, n_in: int) -> bytes:
        """Everything the context can give for ``n_in`` more samples (``planes=None``: flush)."""
        cap = self._lib.out_samples(self._ctx, n_in) + FRAME_SAMPLES
        if cap > self._cap:
            self._cap = cap
            self._outbuf = ctypes.create_string_buffer(cap * _OUT_SAMPLE_BYTES)
        got = self._convert(ctypes.addressof(self._outbuf), self._cap, planes, n_in)
        self.pending = 0.0 if planes is None else self.pending + n_in * self.ratio - got
        return ctypes.string_at(self._outbuf, got * _OUT_SAMPLE_BYTES)

    def pcm(self, pcm: bytes) -> bytes:
        self._in[0] = pcm
        return self._run(self._in, len(pcm) // self.sample_bytes)

    def frame(self, frame: av.AudioFrame) -> bytes:
        planes = frame.planes
        pointers = (ctypes.c_void_p * len(planes))(*(plane.buffer_ptr for plane in planes))
        return self._run(pointers, frame.samples)

    def flush(self) -> bytes:
        """The tail held back by the filter; the context is not used after this."""
        return self._run(None, 0)


_SWR: _SwrLib | None = _load_swr()
"""``None``: libswresample is not reachable; PyAV's ``AudioResampler`` is used (tests patch it)."""


# ---------------------------------------------------------------- PyAV's resampler (fallback)


def _resampler_takes_options() -> bool:
    """Older PyAV releases have no ``AudioResampler(options=...)``."""
    try:
        av.AudioResampler(format="s16", layout="stereo", rate=OUTPUT_RATE, options=_MONO_UPMIX)
    except TypeError:
        return False
    return True


# Without resampler options, mono is resampled as mono and duplicated here (slower).
_UPMIX_IN_FFMPEG: Final = _resampler_takes_options()


def _mono_to_stereo(pcm: bytes) -> bytes:
    """s16 mono → s16 stereo, each sample copied to both channels (C-speed slicing)."""
    low, high = pcm[0::2], pcm[1::2]
    out = bytearray(2 * len(pcm))
    out[0::4] = low
    out[1::4] = high
    out[2::4] = low
    out[3::4] = high
    return bytes(out)


class _PyAVResampler:
    """The same conversion through PyAV's ``AudioResampler`` (a filter graph per call)."""

    __slots__ = ("_resampler", "_upmix_here", "key", "pending")

    def __init__(self, key: _Key) -> None:
        mono = key[1] == "mono"
        self._upmix_here = mono and not _UPMIX_IN_FFMPEG
        if mono and _UPMIX_IN_FFMPEG:
            self._resampler = av.AudioResampler(
                format="s16", layout="stereo", rate=OUTPUT_RATE, options=_MONO_UPMIX
            )
        else:
            self._resampler = av.AudioResampler(
                format="s16", layout="mono" if mono else "stereo", rate=OUTPUT_RATE
            )
        self.key = key
        self.pending = 0.0  # not tracked: the filter holds back a few ms at most

    def _run(self, frame: av.AudioFrame | None) -> bytes:
        # Planes may be padded past the last sample: cut each to its samples.
        outs = self._resampler.resample(frame)
        if self._upmix_here:
            return b"".join(
                _mono_to_stereo(memoryview(out.planes[0])[: out.samples * 2].tobytes())
                for out in outs
            )
        return b"".join(
            memoryview(out.planes[0])[: out.samples * _OUT_SAMPLE_BYTES].tobytes() for out in outs
        )

    def pcm(self, pcm: bytes) -> bytes:
        fmt, layout, rate = self.key
        frame = av.AudioFrame(
            format=fmt, layout=layout, samples=len(pcm) // (2 * _LAYOUT_CHANNELS[layout])
        )
        frame.planes[0].update(pcm)
        frame.sample_rate = rate
        return self._run(frame)

    def frame(self, frame: av.AudioFrame) -> bytes:
        return self._run(frame)

    def flush(self) -> bytes:
        return self._run(None)


_Resampler = _Swr | _PyAVResampler


def _resampler(key: _Key) -> _Resampler:
    lib = _SWR
    if lib is not None:
        try:
            return _Swr(lib, key)
        except _SwrError:  # a layout or format libswresample does not parse by name
            pass
    return _PyAVResampler(key)


# ---------------------------------------------------------------- precise wake-ups (Linux)


class _Itimerspec(ctypes.Structure):
    _fields_ = [
        ("interval_sec", ctypes.c_long),
        ("interval_nsec", ctypes.c_long),
        ("value_sec", ctypes.c_long),
        ("value_nsec", ctypes.c_long),
    ]


_CLOCK_MONOTONIC: Final = 1
_TFD_TIMER_ABSTIME: Final = 1


class _TimerfdApi:
    """``timerfd_create`` / ``timerfd_settime``: the os module's (3.13+) or libc's."""

    def __init__(self) -> None:
        self._os_create: Any = getattr(os, "timerfd_create", None)
        self._os_settime: Any = getattr(os, "timerfd_settime_ns", None)
        if self._os_create is None or self._os_settime is None:
            libc = ctypes.CDLL(None, use_errno=True)
            self._create = libc.timerfd_create
            self._create.restype = ctypes.c_int
            self._create.argtypes = [ctypes.c_int, ctypes.c_int]
            self._settime = libc.timerfd_settime
            self._settime.restype = ctypes.c_int
            self._settime.argtypes = [
                ctypes.c_int,
                ctypes.c_int,
                ctypes.POINTER(_Itimerspec),
                ctypes.POINTER(_Itimerspec),
            ]

    def create(self) -> int:
        flags = os.O_NONBLOCK | os.O_CLOEXEC  # == TFD_NONBLOCK | TFD_CLOEXEC
        if self._os_create is not None:
            return int(self._os_create(time.CLOCK_MONOTONIC, flags=flags))
        fd = int(self._create(_CLOCK_MONOTONIC, flags))
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        return fd

    def arm(self, fd: int, spec: _Itimerspec, due_ns: int) -> None:
        """Fire once at ``due_ns`` on CLOCK_MONOTONIC (at once if that has passed)."""
        if self._os_settime is not None:
            self._os_settime(fd, flags=_TFD_TIMER_ABSTIME, initial=due_ns)
            return
        spec.value_sec, spec.value_nsec = divmod(due_ns, 1_000_000_000)
        if self._settime(fd, _TFD_TIMER_ABSTIME, spec, None) < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))


def _load_timerfd() -> _TimerfdApi | None:
    if not sys.platform.startswith("linux"):
        return None
    if time.get_clock_info("monotonic").implementation != "clock_gettime(CLOCK_MONOTONIC)":
        return None
    try:
        api = _TimerfdApi()
        os.close(api.create())
    except (OSError, AttributeError):
        return None
    return api


_TIMERFD: _TimerfdApi | None = _load_timerfd()
"""``None``: no timerfd here; ``recv()`` waits with ``asyncio.sleep`` (tests patch it)."""


def _timer_ready(ref: weakref.ref[_PreciseTimer]) -> None:
    timer = ref()
    if timer is not None:
        timer.ready()


def _release_timerfd(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Unregister and close ``fd`` on its loop's thread (any thread may collect a timer)."""

    def close() -> None:
        try:
            loop.remove_reader(fd)
        finally:
            os.close(fd)

    try:
        loop.call_soon_threadsafe(close)
    except RuntimeError:  # the loop is closed: nothing watches the fd any more
        os.close(fd)


class _PreciseTimer:
    """Sleeps until an absolute time of the loop's clock, woken by a timerfd on the loop.

    Only for loops whose ``time()`` is ``time.monotonic()`` (asyncio's own), so the due time can
    be handed to CLOCK_MONOTONIC as it is.
    """

    __slots__ = ("__weakref__", "_api", "_due", "_fd", "_finalizer", "_spec", "_waiter", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, api: _TimerfdApi, fd: int) -> None:
        self.loop = loop
        self._api = api
        self._fd = fd
        self._spec = _Itimerspec()
        self._due = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._finalizer = weakref.finalize(self, _release_timerfd, loop, fd)
        self._finalizer.atexit = False

    @classmethod
    def open(cls, loop: asyncio.AbstractEventLoop) -> _PreciseTimer | None:
        api = _TIMERFD
        if api is None or type(loop).time is not asyncio.BaseEventLoop.time:
            return None
        try:
            fd = api.create()
        except OSError:
            return None
        timer = cls(loop, api, fd)
        try:
            loop.add_reader(fd, _timer_ready, weakref.ref(timer))
        except (NotImplementedError, RuntimeError, ValueError, OSError):
            timer._finalizer.detach()
            os.close(fd)
            return None
        return timer

    async def sleep_until(self, due: float) -> None:
        if self._waiter is not None:  # two recv() at once (two consumers): the loop's timer
            await asyncio.sleep(max(0.0, due - self.loop.time()))
            return
        waiter = self._waiter = self.loop.create_future()
        self._due = due
        self._api.arm(self._fd, self._spec, math.ceil(due * 1e9) + 1)
        try:
            await waiter
        finally:
            self._waiter = None

    def ready(self) -> None:
        with contextlib.suppress(OSError):  # nothing to read: a stale wake-up
            os.read(self._fd, 8)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self.loop.time() < self._due:  # float rounding: not quite due yet
            self._api.arm(self._fd, self._spec, math.ceil(self._due * 1e9) + 1)
            return
        waiter.set_result(None)

    def close(self) -> None:
        """Unregister and close the fd (on the loop's thread); idempotent."""
        if self._finalizer.detach() is not None:
            try:
                self.loop.remove_reader(self._fd)
            finally:
                os.close(self._fd)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


# ---------------------------------------------------------------- queues


class _ByteQueue:
    """A FIFO of bytes kept as the chunks that were appended: no compaction copies."""

    __slots__ = ("_chunks", "_head", "size")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._head = 0  # bytes of _chunks[0] already taken
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self.size += len(data)

    def take(self, n: int) -> bytes:
        """Remove and return the first ``min(n, len(self))`` bytes."""
        n = min(n, self.size)
        if n <= 0:
            return b""
        self.size -= n
        chunks = self._chunks
        head = chunks[0]
        start = self._head
        end = start + n
        if end < len(head):
            self._head = end
            return head[start:end]
        if end == len(head):
            chunks.popleft()
            self._head = 0
            return head[start:] if start else head
        parts = [memoryview(head)[start:]]
        chunks.popleft()
        n -= len(head) - start
        while n and n >= len(chunks[0]):
            chunk = chunks.popleft()
            parts.append(memoryview(chunk))
            n -= len(chunk)
        if n:
            parts.append(memoryview(chunks[0])[:n])
        self._head = n
        return b"".join(parts)

    def clear(self) -> None:
        self._chunks.clear()
        self._head = 0
        self.size = 0


class _Pending:
    """Pushed audio as whole samples, bound for one queue: ``pcm[pos:]`` is still to go."""

    __slots__ = ("pcm", "pos", "to_out")

    def __init__(self, pcm: bytes, *, to_out: bool) -> None:
        self.pcm = pcm
        self.pos = 0
        self.to_out = to_out


# ---------------------------------------------------------------- the track


class AudioSource(MediaStreamTrack):
    """An aiortc audio track fed by :meth:`push`: synthesized or streamed audio into a call.

    ``AudioSource(*, input_rate=16_000, input_layout="mono", max_buffered_seconds=5.0,
    logger=None)``.

    - ``push(data)``: ``bytes`` are s16 little-endian interleaved PCM at ``input_rate`` /
      ``input_layout``; a trailing partial sample is kept for the next push. An ``av.AudioFrame``
      of any format, layout and rate is resampled as it is. ``push`` suspends while the queue is
      full (``max_buffered_seconds``) and resumes once the track has drained some of it.
    - ``end()`` (synchronous): no more pushes; the track plays out what is queued, pads the last
      frame with silence, then ends (``recv()`` raises ``MediaStreamError``,
      ``readyState == "ended"``).
    - ``recv()``: one 20 ms, 48 kHz, stereo, s16 ``av.AudioFrame`` per 20 ms of the loop's clock
      (``pts = i * 960``, ``time_base = 1/48000``); silence when nothing is queued.

    All methods must be called on the asyncio loop that consumes the track (aiortc's loop). Under
    trio, ``push``, ``end`` and ``stop`` may be called from the trio thread: PCM that fits under
    the limit waits in an inbox the loop empties at its next ``recv()``; frames, pushes that must
    wait for room, ``end`` and ``stop`` are forwarded (in call order) to the aiortc bridge thread,
    where the track's state lives (see ``adapters/bridge.py``).
    ``_clock`` / ``_sleep`` replace the loop's ``time()`` and its sleep (tests only).
    """

    kind = "audio"

    def __init__(
        self,
        *,
        input_rate: int = 16_000,
        input_layout: str = "mono",
        max_buffered_seconds: float = 5.0,
        logger: Logger | logging.Logger | None = None,
        _clock: Callable[[], float] | None = None,
        _sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if (
            not isinstance(input_rate, int)
            or isinstance(input_rate, bool)
            or not _MIN_RATE <= input_rate <= _MAX_RATE
        ):
            raise ValueError(
                f"input_rate must be an int from {_MIN_RATE} to {_MAX_RATE} Hz, got {input_rate!r}"
            )
        if input_layout not in _LAYOUT_CHANNELS:
            raise ValueError(f'input_layout must be "mono" or "stereo", got {input_layout!r}')
        if (
            not isinstance(max_buffered_seconds, (int, float))
            or isinstance(max_buffered_seconds, bool)
            or not math.isfinite(max_buffered_seconds)
            or max_buffered_seconds < _MIN_BUFFER_SECONDS
        ):
            raise ValueError(
                "max_buffered_seconds must be a finite number of seconds "
                f">= {_MIN_BUFFER_SECONDS}, got {max_buffered_seconds!r}"
            )
        super().__init__()
        self._log = as_logger(logger)
        if in_trio_thread():  # recv() runs on the aiortc thread; a custom logger stays on trio
            from metered_realtime.adapters.bridge import trio_logger

            self._log = trio_logger(self._log)
        self._in_rate = input_rate
        self._in_layout = input_layout
        self._in_sample_bytes = 2 * _LAYOUT_CHANNELS[input_layout]
        self._in_bytes_per_second = input_rate * self._in_sample_bytes
        self._in_key: _Key = ("s16", input_layout, input_rate)
        self._passthrough = self._in_key == _PASSTHROUGH
        # recv() may take frames straight from libswresample (bytes input that needs it).
        self._direct_ok = not self._passthrough and _SWR is not None
        self._max_buffered = float(max_buffered_seconds)
        # (+1 µs: the buffered figure is a sum of three float terms)
        self._low_water = (
            self._max_buffered - min(_HYSTERESIS_SECONDS, self._max_buffered / 2) + 1e-6
        )
        self._convert_bytes = int(_CONVERT_SECONDS * input_rate) * self._in_sample_bytes

        self._in = _ByteQueue()  # input PCM (whole samples), not yet resampled
        self._carry = b""  # a trailing partial input sample, completed by the next push
        self._out = _ByteQueue()  # 48 kHz stereo s16, ready to send
        self._resampler: _Resampler | None = None  # holds audio between _out and _in

        # One push() at a time keeps audio in order. (Not ``_lock``: pyee's emitter owns that.)
        self._push_lock = asyncio.Lock()
        self._room = asyncio.Event()  # set by recv() when a blocked push() may continue
        self._waiting_for_room = False
        self._pushers = 0  # push() calls in progress (all accepted before any end())
        self._ended = False  # end() or stop() was called
        self._stopped = False  # stop() was called: queued audio is discarded
        self._underrun = False

        # Bytes pushed from a trio thread (see _push_from_trio): appended there, taken by the
        # loop (recv() or a forwarded push). deque appends and pops are atomic; each counter
        # has a single writer.
        self._inbox: deque[bytes] = deque()
        self._inbox_in = 0  # bytes appended (trio thread)
        self._inbox_out = 0  # bytes taken (loop thread)
        self._trio_closed = ""  # "end" or "stop": called on the trio thread
        self._trio_forwarded = 0  # pushes forwarded to the loop and not finished (trio thread)

        self._clock = _clock
        self._sleep = _sleep  # None: the loop's (a timerfd where there is one)
        self._timer: _PreciseTimer | None = None
        self._start: float | None = None
        self._next_index = 0

    # ---------------------------------------------------------------- producer side

    @property
    def buffered_seconds(self) -> float:
        """Seconds of audio queued and not yet returned by ``recv()``."""
        resampler = self._resampler
        return (
            self._out.size / _OUT_BYTES_PER_SECOND
            + (self._in.size + self._inbox_in - self._inbox_out) / self._in_bytes_per_second
            + (resampler.pending / OUTPUT_RATE if resampler is not None else 0.0)
        )

    async def push(self, data: bytes | bytearray | memoryview | av.AudioFrame) -> None:
        """Queue audio; suspends while the queue is full (``max_buffered_seconds``).

        Raises ``RuntimeError`` after :meth:`end` or once the track has stopped, ``TypeError`` for
        anything but bytes-like PCM or an ``av.AudioFrame``, and ``ValueError`` for an
        ``av.AudioFrame`` without a sample rate. Pushes are queued in call order. If a push is
        cancelled while suspended, a prefix of its audio may already be queued.
        """
        if in_trio_thread():
            return await self._push_from_trio(data)
        if self._inbox:
            self._drain_inbox()  # pushed from trio before this call (forwarded here)
        if self._ended:
            if self._stopped:
                raise RuntimeError("AudioSource has stopped: push() is no longer accepted")
            raise RuntimeError("AudioSource.push() after end(): the source accepts no more audio")
        if type(data) is bytes:
            size = len(data)
            # The common case: whole samples, nobody queued ahead, room for all of it.
            if (
                not self._pushers
                and not self._carry
                and not self._passthrough
                and not size % self._in_sample_bytes
                and self.buffered_seconds + size / self._in_bytes_per_second <= self._max_buffered
            ):
                self._in.append(data)
                return
            if not size:
                return
        elif isinstance(data, av.AudioFrame):
            if not data.sample_rate or data.sample_rate <= 0:
                raise ValueError("the av.AudioFrame has no sample_rate")
            if (
                not self._carry
                and data.sample_rate == self._in_rate
                and data.format.name == "s16"
                and data.layout.name == self._in_layout
            ):
                # The input format exactly: queued as PCM, so recv() converts it lazily too.
                size = data.samples * self._in_sample_bytes
                data = memoryview(data.planes[0])[:size].tobytes()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            if not data:
                return
            # Copy what the caller could change while the audio sits in the queue.
            data = memoryview(data).tobytes()
        else:
            raise TypeError(
                f"push() takes s16 PCM bytes or an av.AudioFrame, not {type(data).__name__}"
            )
        pending: _Pending | None = None
        if self._pushers == 0:
            # Nobody is ahead of this push: queue what fits now, without the lock.
            pending = self._prepare(data)
            pending.pos = self._fill(pending)
            if pending.pos == len(pending.pcm):
                return
        self._pushers += 1
        try:
            async with self._push_lock:
                if pending is None:
                    pending = self._prepare(data)
                while pending.pos < len(pending.pcm):
                    await self._wait_for_room()
                    pending.pos += self._fill(pending)
        finally:
            self._pushers -= 1

    def end(self) -> None:
        """End of stream: refuse further pushes; the track drains what is queued, then stops.

        Pushes already in progress (suspended on backpressure) still complete. Synchronous.
        """
        if in_trio_thread():
            from metered_realtime.adapters.bridge import call_soon_on_aiortc

            self._trio_closed = self._trio_closed or "end"
            call_soon_on_aiortc(self.end)
            return
        if not self._ended:
            self._ended = True
            self._log.debug(
                "audio source ended",
                {
                    "buffered_seconds": round(self.buffered_seconds, 3),
                    "pending_pushes": self._pushers,
                },
            )

    def stop(self) -> None:
        """Stop now, discarding queued audio; blocked and later pushes raise ``RuntimeError``."""
        if in_trio_thread():
            from metered_realtime.adapters.bridge import call_soon_on_aiortc

            self._trio_closed = "stop"
            call_soon_on_aiortc(self.stop)
            return
        if not self._stopped:
            self._ended = True
            self._stopped = True
            while self._inbox:
                self._inbox_out += len(self._inbox.popleft())
            self._in.clear()
            self._out.clear()
            self._carry = b""
            self._resampler = None
            self._room.set()
            if self._timer is not None:
                self._timer.close()
                self._timer = None
        super().stop()

    async def _push_from_trio(self, data: bytes | bytearray | memoryview | av.AudioFrame) -> None:
        """``push`` on a trio thread. Bytes that fit are left in ``_inbox`` for the loop, which
        takes them at its next ``recv()`` or push: no thread hop, no wake-up of the loop (it
        wakes every 20 ms anyway). Frames, and bytes that must wait for room, are forwarded:
        awaited on the loop, after the inbox. The limit is checked against the loop's figures
        read from here, so it may be overshot by what the loop is moving at that instant."""
        import trio

        if self._stopped or self._trio_closed == "stop":
            raise RuntimeError("AudioSource has stopped: push() is no longer accepted")
        if self._trio_closed:
            raise RuntimeError("AudioSource.push() after end(): the source accepts no more audio")
        if isinstance(data, (bytes, bytearray, memoryview)) and not self._trio_forwarded:
            pcm = data if type(data) is bytes else memoryview(data).tobytes()
            size = len(pcm)
            if self.buffered_seconds + size / self._in_bytes_per_second <= self._max_buffered:
                if size:
                    self._inbox.append(pcm)
                    self._inbox_in += size
                await trio.lowlevel.checkpoint()
                return
            data = pcm
        from metered_realtime.adapters.bridge import run_on_aiortc

        self._trio_forwarded += 1
        try:
            await run_on_aiortc(self.push, data)
        finally:
            self._trio_forwarded -= 1

    def _drain_inbox(self) -> None:
        """Queue what trio pushed (loop thread; it was checked against the limit there)."""
        inbox = self._inbox
        while inbox:
            pcm = inbox.popleft()
            if not self._stopped:
                pending = self._prepare(pcm)
                (self._out if pending.to_out else self._in).append(pending.pcm)
            self._inbox_out += len(pcm)  # after queueing: buffered_seconds never under-counts

    def _prepare(self, data: bytes | av.AudioFrame) -> _Pending:
        """Whole samples of pushed audio, bound for ``_in`` (PCM) or ``_out`` (48 kHz stereo)."""
        if isinstance(data, bytes):
            if self._carry:
                data = self._carry + data
            whole = len(data) - len(data) % self._in_sample_bytes
            self._carry = data[whole:]
            pcm = data[:whole] if whole < len(data) else data
            if not self._passthrough:
                return _Pending(pcm, to_out=False)
            self._flush_resampler()  # the tail of an earlier frame push goes first
            return _Pending(pcm, to_out=True)
        # A frame is resampled now, so the PCM queued before it goes first.
        self._convert(self._in.size)
        key: _Key = (data.format.name, data.layout.name, data.sample_rate)
        if key == _PASSTHROUGH:
            self._flush_resampler()
            pcm = memoryview(data.planes[0])[: data.samples * _OUT_SAMPLE_BYTES].tobytes()
        else:
            pcm = self._resampler_for(key).frame(data)
        return _Pending(pcm, to_out=True)

    def _fill(self, pending: _Pending) -> int:
        """Queue as much of ``pending`` as fits under the limit; returns the bytes queued."""
        room = self._max_buffered - self.buffered_seconds
        pos = pending.pos
        if pending.to_out:
            n = min(len(pending.pcm) - pos, int(room * OUTPUT_RATE) * _OUT_SAMPLE_BYTES)
            queue = self._out
        else:
            n = min(len(pending.pcm) - pos, int(room * self._in_rate) * self._in_sample_bytes)
            queue = self._in
        if n <= 0:
            return 0
        queue.append(pending.pcm if n == len(pending.pcm) else pending.pcm[pos : pos + n])
        return n

    async def _wait_for_room(self) -> None:
        """Suspend until the queue has drained to the low-water mark (or the track stopped)."""
        try:
            while not self._stopped and self.buffered_seconds > self._low_water:
                self._room.clear()
                self._waiting_for_room = True
                await self._room.wait()
        finally:
            self._waiting_for_room = False
        if self._stopped:
            raise RuntimeError("AudioSource stopped while push() waited: the audio was not sent")

    # ---------------------------------------------------------------- conversion

    def _resampler_for(self, key: _Key) -> _Resampler:
        """The resampler for ``key``; a different one is flushed into ``_out`` first."""
        resampler = self._resampler
        if resampler is None or resampler.key != key:
            self._flush_resampler()
            resampler = self._resampler = _resampler(key)
        return resampler

    def _flush_resampler(self) -> None:
        resampler = self._resampler
        if resampler is not None:
            self._resampler = None
            self._out.append(resampler.flush())

    def _convert(self, nbytes: int) -> None:
        """Resample the first ``nbytes`` of ``_in`` (whole samples) into ``_out``."""
        if nbytes > 0:
            self._out.append(self._resampler_for(self._in_key).pcm(self._in.take(nbytes)))

    def _refill(self) -> None:
        """Resample queued input until a whole frame is ready; at the end, flush the resampler."""
        while self._out.size < _FRAME_BYTES:
            if self._in.size:
                self._convert(min(self._in.size, self._convert_bytes))
            elif self._ended and self._pushers == 0 and self._resampler is not None:
                self._flush_resampler()
            else:
                return

    def _input_done(self) -> bool:
        """Ended, with no push in progress and nothing left to resample."""
        return self._ended and self._pushers == 0 and not self._in.size and self._resampler is None

    def _direct(self, frame: av.AudioFrame) -> bool:
        """Fill ``frame`` with the next 20 ms: what ``_out`` holds (less than a frame), then
        straight from libswresample. False if there is not a whole frame (the samples found
        are back in ``_out``).
        """
        out = self._out
        resampler = self._resampler_for(self._in_key)  # flushes another key's tail into _out
        if not isinstance(resampler, _Swr):  # _SWR was switched off after construction
            self._refill()
        if out.size >= _FRAME_BYTES:
            frame.planes[0].update(out.take(_FRAME_BYTES))
            return True
        if not isinstance(resampler, _Swr):
            return False
        address = frame.planes[0].buffer_ptr
        head = out.size
        if head:
            ctypes.memmove(address, out.take(head), head)
        pcm = b""
        if resampler.pending < _SWR_LOW_WATER and self._in.size:
            pcm = self._in.take(self._convert_bytes)
        want = (_FRAME_BYTES - head) // _OUT_SAMPLE_BYTES
        got = resampler.into(address + head, want, pcm)
        if got == want:
            return True
        out.append(ctypes.string_at(address, head + got * _OUT_SAMPLE_BYTES))
        return False

    # ---------------------------------------------------------------- consumer side

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, when it is due; silence if nothing is queued.

        Raises ``MediaStreamError`` once the source has ended and drained, or was stopped.
        """
        if self._inbox:
            self._drain_inbox()
        if self._ended:
            if self._stopped:
                raise MediaStreamError
            self._refill()
            if self._input_done() and not self._out.size:
                self._finish()
        clock = self._clock
        if clock is None:
            loop = asyncio.get_running_loop()
            clock = self._clock = loop.time
            if self._sleep is None:
                self._timer = _PreciseTimer.open(loop)
        elif self._timer is not None and self._timer.loop is not asyncio.get_running_loop():
            self._timer.close()  # consumed from another loop now (a source re-used)
            self._timer = _PreciseTimer.open(asyncio.get_running_loop())
        index = self._next_index
        self._next_index = index + 1  # taken now: a concurrent recv() gets the next slot
        start = self._start
        if start is None:
            start = self._start = clock()
        due = start + index * _FRAME_SECONDS
        now = clock()
        if due > now:
            try:
                sleep = self._sleep
                if sleep is not None:
                    await sleep(due - now)
                else:
                    timer = self._timer
                    if timer is not None:
                        await timer.sleep_until(due)
                    else:
                        await asyncio.sleep(due - now)
            except BaseException:
                if self._next_index == index + 1:  # cancelled: the next call sends this slot
                    self._next_index = index
                raise
            if self._stopped:
                raise MediaStreamError
        elif now - due > _MAX_LAG_SECONDS:
            # The consumer stalled (a blocked loop, a gap between connections): restart the
            # schedule here rather than bursting out every missed frame at once.
            self._log.debug("audio source re-anchored its clock", {"late_seconds": now - due})
            self._start = clock() - index * _FRAME_SECONDS

        frame = av.AudioFrame(format=_OUT_FORMAT, layout=_OUT_LAYOUT, samples=FRAME_SAMPLES)
        frame.pts = index * FRAME_SAMPLES
        frame.sample_rate = OUTPUT_RATE
        frame.time_base = _TIME_BASE
        out = self._out
        if out.size >= _FRAME_BYTES:
            frame.planes[0].update(out.take(_FRAME_BYTES))
        elif self._direct_ok and (
            self._in.size or (self._resampler is not None and self._resampler.pending > 0)
        ):
            if not self._direct(frame):
                return self._short(frame, index)
        else:
            self._refill()
            if out.size < _FRAME_BYTES:
                return self._short(frame, index)
            frame.planes[0].update(out.take(_FRAME_BYTES))
        if self._underrun:
            self._underrun = False
            self._log.debug("audio source recovered from underrun", {"frame": index})
        if self._waiting_for_room and self.buffered_seconds <= self._low_water:
            self._room.set()
        return frame

    def _short(self, frame: av.AudioFrame, index: int) -> av.AudioFrame:
        """Less than a frame is queued: the last one, padded, at the end; else silence."""
        out = self._out
        if self._input_done():
            if not out.size:
                self._finish()
            payload = out.take(_FRAME_BYTES)  # the last frame, padded with silence
            frame.planes[0].update(payload + bytes(_FRAME_BYTES - len(payload)))
            return frame
        frame.planes[0].update(_SILENCE)
        if not self._underrun:
            self._underrun = True
            self._log.debug("audio source underrun: sending silence", {"frame": index})
        return frame

    def _finish(self) -> NoReturn:
        if self._carry:
            self._log.debug(
                "audio source dropped a trailing partial sample at end",
                {"bytes": len(self._carry)},
            )
        self.stop()
        raise MediaStreamError
