"""``AudioSource``: push PCM (or ``av.AudioFrame``\\s) in; an aiortc audio track comes out.

Everything pushed is converted to 48 kHz stereo s16 — the rate and layout Opus is sent at — and
handed to the WebRTC sender in 20 ms frames, paced against the loop's clock: frame ``i`` is due at
``start + i * 0.02`` (scheduled from the start, so sleep errors never accumulate). When the
producer falls behind, ``recv()`` returns silence for that slot instead of waiting.

Data path, all on one asyncio loop (the one aiortc runs on)::

    push(bytes) ──────► _in  (input PCM, whole samples) ──┐ resampled lazily by recv(),
                                                          │ up to 200 ms per call
    push(AudioFrame) ─► resampled at once ─┐              ▼
    push(bytes at 48 kHz stereo) ──────────┴─────────► _out (48 kHz stereo s16) ──► recv()

Resampling lazily, in batches, means a producer that pushes many small chunks ahead of real time
pays the resampler's per-call cost once per batch rather than once per chunk. A frame push first
converts the PCM queued before it, so audio always leaves in the order it was pushed.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

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


_LAYOUT_CHANNELS: Final = {"mono": 1, "stereo": 2}
_MIN_RATE: Final = 8_000
_MAX_RATE: Final = 192_000
_MIN_BUFFER_SECONDS: Final = 0.1  # must hold a frame plus the resampler's delay, with margin
_CONVERT_SECONDS: Final = 0.2  # largest batch of input PCM resampled in one call
_HYSTERESIS_SECONDS: Final = 0.1  # a blocked push() resumes this far below the limit
_MAX_LAG_SECONDS: Final = 0.2  # further behind schedule than this: re-anchor, don't burst

_Key = tuple[str, str, int]  # (sample format, layout, rate) a resampler was built for


class _ByteQueue:
    """A FIFO of bytes kept as the chunks that were appended: no compaction copies."""

    __slots__ = ("_chunks", "_head", "_size")

    def __init__(self) -> None:
        self._chunks: deque[memoryview] = deque()
        self._head = 0  # bytes of _chunks[0] already taken
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes | memoryview) -> None:
        if data:
            self._chunks.append(memoryview(data))
            self._size += len(data)

    def take(self, n: int) -> bytes:
        """Remove and return the first ``min(n, len(self))`` bytes."""
        n = min(n, self._size)
        if n <= 0:
            return b""
        self._size -= n
        chunks = self._chunks
        head = chunks[0]
        start = self._head
        end = start + n
        if end < len(head):
            self._head = end
            return head[start:end].tobytes()
        if end == len(head):
            chunks.popleft()
            self._head = 0
            return head[start:].tobytes()
        parts = [head[start:]]
        chunks.popleft()
        n -= len(head) - start
        while n and n >= len(chunks[0]):
            chunk = chunks.popleft()
            parts.append(chunk)
            n -= len(chunk)
        if n:
            parts.append(chunks[0][:n])
        self._head = n
        return b"".join(parts)

    def clear(self) -> None:
        self._chunks.clear()
        self._head = 0
        self._size = 0


class _Pending:
    """Pushed audio as whole samples, bound for one queue: ``pcm[pos:]`` is still to go."""

    __slots__ = ("pcm", "pos", "to_out")

    def __init__(self, pcm: memoryview, *, to_out: bool) -> None:
        self.pcm = pcm
        self.pos = 0
        self.to_out = to_out


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
    trio, ``push``, ``end`` and ``stop`` called from the trio thread are forwarded (in call order)
    to the aiortc bridge thread, where the track's state lives (see ``adapters/bridge.py``).
    ``_clock`` / ``_sleep`` replace the loop's ``time()`` and ``asyncio.sleep`` (tests only).
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
        self._max_buffered = float(max_buffered_seconds)
        self._low_water = self._max_buffered - min(_HYSTERESIS_SECONDS, self._max_buffered / 2)
        self._convert_bytes = int(_CONVERT_SECONDS * input_rate) * self._in_sample_bytes

        self._in = _ByteQueue()  # input PCM (whole samples), not yet resampled
        self._carry = b""  # a trailing partial input sample, completed by the next push
        self._out = _ByteQueue()  # 48 kHz stereo s16, ready to send
        self._resampler: av.AudioResampler | None = None
        self._resampler_key: _Key | None = None
        self._upmix_here = False  # the resampler outputs mono: duplicate it to stereo

        # One push() at a time keeps audio in order. (Not ``_lock``: pyee's emitter owns that.)
        self._push_lock = asyncio.Lock()
        self._room = asyncio.Event()  # set by recv() when a blocked push() may continue
        self._waiting_for_room = False
        self._pushers = 0  # push() calls in progress (all accepted before any end())
        self._ended = False  # end() or stop() was called
        self._stopped = False  # stop() was called: queued audio is discarded
        self._underrun = False

        self._clock = _clock
        self._sleep: Callable[[float], Awaitable[None]] = _sleep or asyncio.sleep
        self._start: float | None = None
        self._next_index = 0

    # ---------------------------------------------------------------- producer side

    @property
    def buffered_seconds(self) -> float:
        """Seconds of audio queued and not yet returned by ``recv()``."""
        return len(self._out) / _OUT_BYTES_PER_SECOND + len(self._in) / self._in_bytes_per_second

    async def push(self, data: bytes | bytearray | memoryview | av.AudioFrame) -> None:
        """Queue audio; suspends while the queue is full (``max_buffered_seconds``).

        Raises ``RuntimeError`` after :meth:`end` or once the track has stopped, ``TypeError`` for
        anything but bytes-like PCM or an ``av.AudioFrame``, and ``ValueError`` for an
        ``av.AudioFrame`` without a sample rate. Pushes are queued in call order. If a push is
        cancelled while suspended, a prefix of its audio may already be queued.
        """
        if in_trio_thread():
            from metered_realtime.adapters.bridge import run_on_aiortc

            return await run_on_aiortc(self.push, data)
        if self._stopped:
            raise RuntimeError("AudioSource has stopped: push() is no longer accepted")
        if self._ended:
            raise RuntimeError("AudioSource.push() after end(): the source accepts no more audio")
        if isinstance(data, av.AudioFrame):
            if not data.sample_rate or data.sample_rate <= 0:
                raise ValueError("the av.AudioFrame has no sample_rate")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            if not data:
                return
            # Copy what the caller could change while the audio sits in the queue.
            data = data if isinstance(data, bytes) else memoryview(data).tobytes()
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

            call_soon_on_aiortc(self.stop)
            return
        if not self._stopped:
            self._ended = True
            self._stopped = True
            self._in.clear()
            self._out.clear()
            self._carry = b""
            self._resampler = None
            self._resampler_key = None
            self._room.set()
        super().stop()

    def _prepare(self, data: bytes | av.AudioFrame) -> _Pending:
        """Whole samples of pushed audio, bound for ``_in`` (PCM) or ``_out`` (48 kHz stereo)."""
        if isinstance(data, bytes):
            if self._carry:
                data = self._carry + data
            whole = len(data) - len(data) % self._in_sample_bytes
            self._carry = data[whole:]
            if self._in_key != _PASSTHROUGH:
                return _Pending(memoryview(data)[:whole], to_out=False)
            self._flush_resampler()  # the tail of an earlier frame push goes first
            return _Pending(memoryview(data)[:whole], to_out=True)
        # A frame is resampled now, so the PCM queued before it goes first.
        self._convert(len(self._in))
        key: _Key = (data.format.name, data.layout.name, data.sample_rate)
        if key == _PASSTHROUGH:
            self._flush_resampler()
            pcm = memoryview(data.planes[0])[: data.samples * _OUT_SAMPLE_BYTES].tobytes()
        else:
            pcm = b"".join(self._resampled(data, key))
        return _Pending(memoryview(pcm), to_out=True)

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
        queue.append(pending.pcm[pos : pos + n])
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

    def _resampled(self, frame: av.AudioFrame | None, key: _Key | None = None) -> list[bytes]:
        """48 kHz stereo s16 PCM for ``frame`` (``None``: flush the resampler's delay line)."""
        if frame is not None and key != self._resampler_key:
            self._flush_resampler()
            mono = key is not None and key[1] == "mono"
            self._upmix_here = mono and not _UPMIX_IN_FFMPEG
            if mono and _UPMIX_IN_FFMPEG:
                self._resampler = av.AudioResampler(
                    format="s16", layout="stereo", rate=OUTPUT_RATE, options=_MONO_UPMIX
                )
            else:
                self._resampler = av.AudioResampler(
                    format="s16", layout="mono" if mono else "stereo", rate=OUTPUT_RATE
                )
            self._resampler_key = key
        resampler = self._resampler
        if resampler is None:
            return []
        if frame is None:
            self._resampler = None
            self._resampler_key = None
        # Planes may be padded past the last sample: cut each to its samples.
        if self._upmix_here:
            return [
                _mono_to_stereo(memoryview(out.planes[0])[: out.samples * 2].tobytes())
                for out in resampler.resample(frame)
            ]
        return [
            memoryview(out.planes[0])[: out.samples * _OUT_SAMPLE_BYTES].tobytes()
            for out in resampler.resample(frame)
        ]

    def _flush_resampler(self) -> None:
        for pcm in self._resampled(None):
            self._out.append(pcm)

    def _convert(self, nbytes: int) -> None:
        """Resample the first ``nbytes`` of ``_in`` (whole samples) into ``_out``."""
        if nbytes <= 0:
            return
        frame = av.AudioFrame(
            format="s16", layout=self._in_layout, samples=nbytes // self._in_sample_bytes
        )
        frame.planes[0].update(self._in.take(nbytes))
        frame.sample_rate = self._in_rate
        for pcm in self._resampled(frame, self._in_key):
            self._out.append(pcm)

    def _refill(self) -> None:
        """Resample queued input until a whole frame is ready; at the end, flush the resampler."""
        while len(self._out) < _FRAME_BYTES:
            if self._in:
                self._convert(min(len(self._in), self._convert_bytes))
            elif self._ended and self._pushers == 0 and self._resampler is not None:
                self._flush_resampler()
            else:
                return

    def _input_done(self) -> bool:
        """Ended, with no push in progress and nothing left to resample."""
        return self._ended and self._pushers == 0 and not self._in and self._resampler is None

    # ---------------------------------------------------------------- consumer side

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, when it is due; silence if nothing is queued.

        Raises ``MediaStreamError`` once the source has ended and drained, or was stopped.
        """
        if self.readyState != "live":
            raise MediaStreamError
        if self._ended:
            self._refill()
            if self._input_done() and not self._out:
                self._finish()
        clock = self._clock
        if clock is None:
            clock = self._clock = asyncio.get_running_loop().time
        index = self._next_index
        if self._start is None:
            self._start = clock()
        delay = self._start + index * _FRAME_SECONDS - clock()
        if delay > 0:
            await self._sleep(delay)
            if self.readyState != "live":
                raise MediaStreamError
        elif delay < -_MAX_LAG_SECONDS:
            # The consumer stalled (a blocked loop, a gap between connections): restart the
            # schedule here rather than bursting out every missed frame at once.
            self._log.debug("audio source re-anchored its clock", {"late_seconds": -delay})
            self._start = clock() - index * _FRAME_SECONDS
        self._next_index = index + 1

        out = self._out
        if len(out) < _FRAME_BYTES:
            self._refill()
        if len(out) >= _FRAME_BYTES:
            payload = out.take(_FRAME_BYTES)
            if self._underrun:
                self._underrun = False
                self._log.debug("audio source recovered from underrun", {"frame": index})
            if self._waiting_for_room and self.buffered_seconds <= self._low_water:
                self._room.set()
        elif self._input_done():
            if not out:
                self._finish()
            payload = out.take(_FRAME_BYTES)  # the last frame, padded with silence
            payload += bytes(_FRAME_BYTES - len(payload))
        else:
            payload = _SILENCE
            if not self._underrun:
                self._underrun = True
                self._log.debug("audio source underrun: sending silence", {"frame": index})

        frame = av.AudioFrame(format=_OUT_FORMAT, layout=_OUT_LAYOUT, samples=FRAME_SAMPLES)
        frame.planes[0].update(payload)
        frame.pts = index * FRAME_SAMPLES
        frame.sample_rate = OUTPUT_RATE
        frame.time_base = _TIME_BASE
        return frame

    def _finish(self) -> NoReturn:
        if self._carry:
            self._log.debug(
                "audio source dropped a trailing partial sample at end",
                {"bytes": len(self._carry)},
            )
        self.stop()
        raise MediaStreamError
