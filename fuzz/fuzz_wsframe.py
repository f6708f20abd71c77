"""Fuzz the RFC 6455 frame codec (core/wsframe.py) against wsproto.

Usage: python fuzz/fuzz_wsframe.py [libFuzzer options] [CORPUS_DIR ...]

The first input byte picks the role (bit 0 even: decode what a server sends, unmasked; odd: what
a client sends, masked) and the size cap for the chunking check (bits 1-2: 1 MiB, 16, 200 or
4096 bytes); the rest is the byte stream. A crash is:

* any exception from ``FrameDecoder.feed`` (protocol errors must come back as a ``FAIL``
  event with code 1002, 1007 or 1009, never raise);
* events of the wrong shape, or events after a ``FAIL`` or ``OP_CLOSE`` (except, after a 1009,
  one close frame or one framing failure);
* decoding in chunks (sizes from a PRNG seeded with the input's CRC-32) giving different
  events from decoding the stream whole, or a draining decoder holding payload bytes;
* disagreement with wsproto's frame layer on the stream's whole frames: the same messages and
  control frames, and a failure (with the same close code) exactly when wsproto fails —
  except for close code 1014, which we accept (IANA-registered) and wsproto does not;
* re-encoding every decoded event with our encoders (in the sender's role) and decoding it
  again not giving the same events.
"""

from __future__ import annotations

import random
import sys
import zlib
from typing import Any

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

    from metered_realtime.core.wsframe import (
        FAIL,
        OP_BINARY,
        OP_CLOSE,
        OP_PING,
        OP_PONG,
        OP_TEXT,
        FrameDecoder,
        close_payload,
        encode_frame,
        masked_text,
        server_text,
    )

CAP = 1 << 20
CAPS = (CAP, 16, 200, 4096)
FAIL_CODES = frozenset({1002, 1007, 1009})
SHAPES = {OP_TEXT: str, OP_BINARY: bytes, OP_PING: bytes, OP_PONG: bytes}


def check_shapes(events: list[tuple[int, Any]]) -> None:
    for i, (op, payload) in enumerate(events):
        last = i == len(events) - 1
        if op == FAIL and payload[0] == 1009 and not last:
            rest = events[i + 1 :]
            if len(rest) != 1 or rest[0][0] not in (OP_CLOSE, FAIL) or rest[0][1][0] == 1009:
                raise AssertionError(f"after a 1009: {rest!r}")
        elif op in (FAIL, OP_CLOSE) and not last:
            raise AssertionError(f"events after {op}: {events[i + 1 :]!r}")
        if op == FAIL:
            code, reason = payload
            if code not in FAIL_CODES or not isinstance(reason, str):
                raise AssertionError(f"bad failure {payload!r}")
        elif op == OP_CLOSE:
            code, reason = payload
            if not (code is None or isinstance(code, int)) or not isinstance(reason, str):
                raise AssertionError(f"bad close {payload!r}")
        elif type(payload) is not SHAPES.get(op):
            raise AssertionError(f"bad event {op!r} {type(payload).__name__}")


def wsproto_events(
    data: bytes, client: bool
) -> tuple[list[tuple[int, Any]], tuple[int, str] | None]:
    """wsproto's reading of ``data``: whole messages in our event shape, and its failure."""
    proto = FrameProtocol(client=client, extensions=[])
    proto.receive_bytes(data)
    out: list[tuple[int, Any]] = []
    parts: list[Any] = []
    try:
        for f in proto.received_frames():
            if f.opcode in (Opcode.TEXT, Opcode.BINARY):
                parts.append(f.payload)
                if f.message_finished:
                    joined = "".join(parts) if f.opcode is Opcode.TEXT else b"".join(parts)
                    out.append((int(f.opcode), joined))
                    parts = []
            elif f.opcode is Opcode.CLOSE:
                code, reason = f.payload  # type: ignore[misc]
                out.append((OP_CLOSE, (None if code == 1005 else int(code), reason)))
                break
            else:
                out.append((int(f.opcode), bytes(f.payload)))  # type: ignore[arg-type]
    except ParseFailed as exc:
        return out, (int(exc.code), str(exc))
    return out, None


def reencode(events: list[tuple[int, Any]], client_role: bool) -> bytes:
    rng = random.Random(1) if client_role else None
    out = bytearray()
    for op, payload in events:
        if op == OP_TEXT:
            out += masked_text(payload, rng) if rng is not None else server_text(payload)
        elif op == OP_CLOSE:
            out += encode_frame(OP_CLOSE, close_payload(*payload), rng)
        elif op != FAIL:
            out += encode_frame(op, payload, rng)
    return bytes(out)


def complete_prefix(stream: bytes) -> bytes:
    """``stream`` up to the end of its last complete frame (a header walk, nothing checked)."""
    pos = 0
    while len(stream) - pos >= 2:
        n, head = stream[pos + 1] & 0x7F, 2
        if n == 126:
            if len(stream) - pos < 4:
                break
            n, head = int.from_bytes(stream[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            if len(stream) - pos < 10:
                break
            n, head = int.from_bytes(stream[pos + 2 : pos + 10], "big"), 10
        if stream[pos + 1] & 0x80:
            head += 4
        if pos + head + n > len(stream):
            break
        pos += head + n
    return stream[:pos]


def compare_with_wsproto(stream: bytes, client: bool) -> list[tuple[int, Any]]:
    """Decode whole frames with both; return our events (the failure, if any, removed)."""
    ours = FrameDecoder(client=client, max_message=CAP).feed(stream)
    theirs, failed = wsproto_events(stream, client)
    their_failure = None if failed is None else failed[0]
    our_failure = None
    if ours and ours[-1][0] == FAIL:
        our_failure, our_reason = ours[-1][1]
        ours = ours[:-1]
        if failed == (1002, "CLOSE with unknown reserved code") and our_reason == (
            "invalid UTF-8 in a close reason"
        ):
            # close code 1014 (registered with IANA, unknown to wsproto) with a bad reason:
            # wsproto fails on the code, we on the reason
            if ours != theirs:
                raise AssertionError(f"ours {ours!r} != wsproto {theirs!r}")
            return ours
    if ours and ours[-1][0] == OP_CLOSE and ours[-1][1][0] == 1014:
        # registered with IANA, unknown to wsproto: it fails where we report the close
        if ours[:-1] != theirs or their_failure != 1002 or our_failure is not None:
            raise AssertionError(f"ours {ours!r} != wsproto {theirs!r} ({their_failure})")
        return ours
    if ours != theirs:
        raise AssertionError(f"ours {ours!r} != wsproto {theirs!r}")
    if our_failure != their_failure:
        raise AssertionError(f"our failure {our_failure} != wsproto's {their_failure}")
    return ours


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    client = data[0] % 2 == 0  # the decoder's role: True = we are the client
    cap = CAPS[(data[0] >> 1) % 4]
    stream = data[1:]
    whole = FrameDecoder(client=client, max_message=cap).feed(stream)
    check_shapes(whole)

    rng = random.Random(zlib.crc32(data))
    dec = FrameDecoder(client=client, max_message=cap)
    chunked: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(stream):
        size = rng.choice((1, 2, 3, 5, 9, 14, 64, len(stream)))
        chunked += dec.feed(stream[pos : pos + size])
        pos += size
        if dec.draining and dec.buffered > 14 + 125:  # a header, or a whole control frame
            raise AssertionError(f"draining, yet holding {dec.buffered} bytes")
    if chunked != whole:
        raise AssertionError(f"chunked {chunked!r} != whole {whole!r}")

    # wsproto hands out partial frames and has no size cap, so compare on whole frames only
    # (a 1009 can only come from a frame longer than the input, i.e. not a whole one)
    ours = compare_with_wsproto(complete_prefix(stream), client)

    again = FrameDecoder(client=client, max_message=CAP).feed(reencode(ours, not client))
    if again != ours:
        raise AssertionError(f"re-encoded {again!r} != {ours!r}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
