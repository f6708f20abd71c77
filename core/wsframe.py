"""RFC 6455 framing after the opening handshake: a decoder and encoders, no I/O.

wsproto (over h11) still does the opening handshake on both sides; once the upgrade is done
the connection switches to this codec, which does the same job several times faster because
it has no per-frame objects, generators or extension hooks (we never negotiate extensions;
``permessage-deflate`` is declined, so any RSV bit is a protocol error).

:class:`FrameDecoder` takes bytes cut anywhere and returns complete events as
``(opcode, payload)`` tuples:

==================  ==================================================================
``OP_TEXT``         ``str`` — a whole text message (fragments joined, UTF-8 validated)
``OP_BINARY``       ``bytes`` — a whole binary message
``OP_PING``         ``bytes`` — the ping payload (answer it with :func:`encode_frame`)
``OP_PONG``         ``bytes``
``OP_CLOSE``        ``(code | None, reason)`` — ``None`` when the frame had no body (1005)
``FAIL``            ``(code, reason)`` — the peer broke the protocol; fail the connection
==================  ==================================================================

After ``OP_CLOSE``, or a ``FAIL`` with 1002 (framing errors: RSV bits, unknown opcodes, a mask
on the wrong side, fragmented or oversized control frames, a bad continuation sequence,
non-minimal or 64-bit-MSB lengths, a close frame with a 1-byte body or an invalid code) or 1007
(invalid UTF-8 in a text message or a close reason), the decoder ignores everything else it is
fed.

A message over ``max_message`` bytes is a ``FAIL`` with 1009, detected from the frame header
before any of its payload is buffered. The decoder then *drains*: it keeps parsing frame
headers, discards every payload unbuffered, and reports only a close frame (or a framing
error), so the closing handshake the 1009 starts can still complete.

Masking keys come from the injected random source (``getrandbits(32)``; the client machine takes a
separate ``mask_rng`` for them, the adapters pass ``random.SystemRandom()``); the core draws no
randomness of its own.
"""

from __future__ import annotations

import codecs
import struct
from typing import Any, Final

from metered_realtime.core.validation import RandomSource

__all__ = [
    "FAIL",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameDecoder",
    "WsEvent",
    "close_payload",
    "encode_frame",
    "is_valid_close_code",
    "mask",
    "masked_text",
    "server_text",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
FAIL: Final = -1

WsEvent = tuple[int, Any]
"""``(opcode, payload)``; see the module docstring for the payload of each kind."""

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack
_new_utf8_decoder = codecs.getincrementaldecoder("utf-8")
_from_bytes = int.from_bytes

# RFC 6455 §7.4 and the IANA registry: codes a peer may put in a close frame.
_PROTOCOL_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (not 1005/1006/1015…)."""
    return code in _PROTOCOL_CODES or 3000 <= code <= 4999


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    n = len(payload)
    if n == 0:
        return b""
    keys = key * ((n >> 2) + 1)
    return (_from_bytes(payload, "little") ^ _from_bytes(keys[:n], "little")).to_bytes(n, "little")


def _header(first: int, n: int, masked: int) -> bytes:
    if n < 126:
        return bytes((first, masked | n))
    if n < 65_536:
        return _pack_short(first, masked | 126, n)
    return _pack_long(first, masked | 127, n)


def encode_frame(
    opcode: int, payload: bytes, rng: RandomSource | None = None, *, fin: bool = True
) -> bytes:
    """One frame; masked (client role) when ``rng`` is given, unmasked (server role) if not."""
    if opcode >= 0x8 and (len(payload) > 125 or not fin):
        raise ValueError("control frames carry at most 125 bytes and cannot be fragmented")
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if rng is None:
        return _header(first, n, 0) + payload
    key = rng.getrandbits(32).to_bytes(4, "big")
    return _header(first, n, 0x80) + key + mask(payload, key)


def server_text(text: str) -> bytes:
    """An unmasked, unfragmented text frame (the server's every frame)."""
    payload = text.encode("utf-8", "surrogatepass")
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65_536:
        return _pack_short(0x81, 126, n) + payload
    return _pack_long(0x81, 127, n) + payload


def masked_text(text: str, rng: RandomSource) -> bytes:
    """A masked, unfragmented text frame (the client's every frame)."""
    payload = text.encode("utf-8")
    n = len(payload)
    key = rng.getrandbits(32).to_bytes(4, "big")
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65_536:
        head = _pack_short(0x81, 0xFE, n)
    else:
        head = _pack_long(0x81, 0xFF, n)
    if n == 0:
        return head + key
    keys = key * ((n >> 2) + 1)
    return (
        head
        + key
        + (_from_bytes(payload, "little") ^ _from_bytes(keys[:n], "little")).to_bytes(n, "little")
    )


def close_payload(code: int | None, reason: str = "") -> bytes:
    """The body of a close frame; the reason is cut to fit 125 bytes on a character boundary."""
    if code is None:
        return b""
    raw = reason.encode("utf-8")
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + raw


class _Failed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameDecoder:
    """Incremental decoder of one direction of a WebSocket (see the module docstring).

    ``client=True`` decodes what a server sends (frames must be unmasked); ``client=False``
    decodes what a client sends (frames must be masked).
    """

    __slots__ = (
        "_buf",
        "_client",
        "_draining",
        "_frag",
        "_frag_len",
        "_frag_op",
        "_max",
        "_skip",
        "_utf8",
        "done",
    )

    def __init__(self, *, client: bool, max_message: int) -> None:
        self._client = client
        self._max = max_message
        self._buf = bytearray()
        self._frag_op = 0  # opcode of the fragmented message in progress, 0 if none
        self._frag: list[Any] = []
        self._frag_len = 0
        self._utf8: codecs.IncrementalDecoder | None = None
        self._draining = False  # after a 1009: payloads are skipped, only a close counts
        self._skip = 0  # payload bytes still to discard before the next frame header
        self.done = False
        """True once a close frame was decoded or the peer broke the protocol."""

    @property
    def draining(self) -> bool:
        """True after a 1009: the rest of the stream is skipped up to a close frame."""
        return self._draining

    @property
    def buffered(self) -> int:
        """Bytes held: an incomplete frame, plus the fragments of an unfinished message."""
        return len(self._buf) + self._frag_len

    def feed(self, data: bytes | bytearray) -> list[WsEvent]:
        """Decode ``data`` (any cut of the stream); return the events it completes."""
        if self.done or not data:
            return []
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        events: list[WsEvent] = []
        try:
            pos = self._parse(buf, events)
        except _Failed as exc:
            self.done = True
            self._buf = bytearray()
            self._frag = []
            self._frag_len = 0
            self._utf8 = None
            events.append((FAIL, (exc.code, exc.reason)))
            return events
        if buf is self._buf:
            if pos:
                del self._buf[:pos]
        elif pos < len(buf):
            self._buf = bytearray(buf[pos:])
        return events

    def _parse(self, buf: bytes | bytearray, events: list[WsEvent]) -> int:
        """Decode whole frames from ``buf``; return the offset of the first unused byte."""
        n = len(buf)
        pos = 0
        client = self._client
        mask_len = 0 if client else 4
        limit = self._max
        # the fast path: whole, unfragmented text frames while no message is in progress
        quiet = not self._frag_op and not self._draining
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 == 0x81 and quiet:
                short = b1 if client else b1 - 0x80  # the 7-bit length, when masked right
                if 0 <= short < 126:
                    length = short
                    start = pos + 2
                elif short == 126 and n - pos >= 4:
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    start = pos + 4
                    if length < 126:
                        raise _Failed(1002, "payload length not minimally encoded")
                else:
                    length = -1  # 64-bit length, wrong mask bit, or a cut header: slow path
                if 0 <= length <= limit:
                    if client:
                        end = start + length
                        if end > n:
                            break
                        payload = buf[start:end]
                    else:
                        end = start + 4 + length
                        if end > n:
                            break
                        if length:
                            keys = buf[start : start + 4] * ((length >> 2) + 1)
                            payload = (
                                _from_bytes(buf[start + 4 : end], "little")
                                ^ _from_bytes(keys[:length], "little")
                            ).to_bytes(length, "little")
                        else:
                            payload = b""
                    try:
                        events.append((OP_TEXT, payload.decode("utf-8")))
                    except UnicodeDecodeError:
                        raise _Failed(1007, "invalid UTF-8 in a text message") from None
                    pos = end
                    continue
            if b0 & 0x70:
                raise _Failed(1002, "reserved bits set (no extension was negotiated)")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if b1 & 0x80:
                if client:
                    raise _Failed(1002, "masked frame from the server")
            elif not client:
                raise _Failed(1002, "unmasked frame from the client")
            length = b1 & 0x7F
            start = pos + 2
            if opcode >= 0x8:
                if opcode > 0xA:
                    raise _Failed(1002, f"unknown opcode {opcode:#x}")
                if not fin:
                    raise _Failed(1002, "fragmented control frame")
                if length > 125:
                    raise _Failed(1002, "control frame longer than 125 bytes")
            else:
                if opcode > 0x2:
                    raise _Failed(1002, f"unknown opcode {opcode:#x}")
                if length == 126:
                    if n - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    if length < 126:
                        raise _Failed(1002, "payload length not minimally encoded")
                    start = pos + 4
                elif length == 127:
                    if n - pos < 10:
                        break
                    length = _from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length >> 63:
                        raise _Failed(1002, "64-bit payload length with the top bit set")
                    if length < 65_536:
                        raise _Failed(1002, "payload length not minimally encoded")
                    start = pos + 10
                if self._draining:
                    too_big = True
                elif opcode == OP_CONTINUATION:
                    if not self._frag_op:
                        raise _Failed(1002, "continuation frame without a message to continue")
                    too_big = self._frag_len + length > self._max
                else:
                    if self._frag_op:
                        raise _Failed(1002, "new message inside a fragmented message")
                    too_big = length > self._max
                if too_big:
                    if not self._draining:
                        self._draining = True
                        self._frag_op = 0
                        self._frag = []
                        self._frag_len = 0
                        self._utf8 = None
                        events.append((FAIL, (1009, "message too big")))
                    end = start + mask_len + length
                    if end > n:
                        self._skip = end - n
                        return n
                    pos = end
                    quiet = False
                    continue
            if client:
                end = start + length
                if end > n:
                    break
                payload = bytes(buf[start:end])
            else:
                end = start + 4 + length
                if end > n:
                    break
                payload = mask(bytes(buf[start + 4 : end]), bytes(buf[start : start + 4]))
            pos = end
            if self._draining and opcode != OP_CLOSE:
                continue
            if opcode == OP_TEXT:
                if fin:
                    try:
                        events.append((OP_TEXT, payload.decode("utf-8")))
                    except UnicodeDecodeError:
                        raise _Failed(1007, "invalid UTF-8 in a text message") from None
                else:
                    self._start_fragments(opcode, payload)
            elif opcode == OP_CONTINUATION:
                self._continue(payload, fin, events)
            elif opcode == OP_BINARY:
                if fin:
                    events.append((OP_BINARY, payload))
                else:
                    self._start_fragments(opcode, payload)
            elif opcode == OP_PING:
                events.append((OP_PING, payload))
            elif opcode == OP_PONG:
                events.append((OP_PONG, payload))
            else:
                events.append((OP_CLOSE, _parse_close(payload)))
                self.done = True  # nothing after a close frame counts (RFC 6455 §5.5.1)
                self._buf = bytearray()
                return n
            quiet = not self._frag_op and not self._draining
        return pos

    def _start_fragments(self, opcode: int, payload: bytes) -> None:
        self._frag_op = opcode
        self._frag_len = len(payload)
        if opcode == OP_TEXT:
            self._utf8 = decoder = _new_utf8_decoder()
            try:
                self._frag = [decoder.decode(payload, False)]
            except UnicodeDecodeError:
                raise _Failed(1007, "invalid UTF-8 in a text message") from None
        else:
            self._frag = [payload]

    def _continue(self, payload: bytes, fin: int, events: list[WsEvent]) -> None:
        self._frag_len += len(payload)
        decoder = self._utf8
        if decoder is not None:
            try:
                self._frag.append(decoder.decode(payload, bool(fin)))
            except UnicodeDecodeError:
                raise _Failed(1007, "invalid UTF-8 in a text message") from None
        else:
            self._frag.append(payload)
        if fin:
            if decoder is not None:
                events.append((OP_TEXT, "".join(self._frag)))
            else:
                events.append((OP_BINARY, b"".join(self._frag)))
            self._frag_op = 0
            self._frag = []
            self._frag_len = 0
            self._utf8 = None


def _parse_close(payload: bytes) -> tuple[int | None, str]:
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise _Failed(1002, "close frame with a 1-byte body")
    code = (payload[0] << 8) | payload[1]
    if not is_valid_close_code(code):
        raise _Failed(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise _Failed(1007, "invalid UTF-8 in a close reason") from None
    return code, reason
