"""Fuzz the frame decoders (PROTOCOL §2.3, §3).

Usage: python fuzz/fuzz_frames.py [libFuzzer options] [CORPUS_DIR ...]

The input goes, as bytes and as text (undecodable bytes turned into lone surrogates), to
``decode_server_frame`` and ``decode_client_frame``. A crash is any exception other than
``MalformedFrameError`` (server frames; code ``malformed_message`` or ``unknown_type``) and
``FrameRejected`` (client frames; one of the five syntactic wire codes), or an accepted frame
that does not survive ``decode(frame.encode()) == frame`` (checked for the bytes, and for the
text unless it holds raw surrogates). For text, ``split_publish`` (the broker's fast path) must
agree with ``decode_client_frame``: when it cuts a frame, the general decoder reads the same
channel, request id and ``data`` value from it.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from metered_realtime.core.errors import FrameRejected, MalformedFrameError
    from metered_realtime.core.frames import (
        decode_client_frame,
        decode_json,
        decode_server_frame,
        split_publish,
    )

SERVER_CODES = frozenset({"malformed_message", "unknown_type"})
CLIENT_CODES = frozenset(
    {"malformed_message", "unknown_type", "invalid_channel", "channel_reserved", "invalid_peer_id"}
)


def check_server(data: str | bytes, round_trip: bool) -> None:
    try:
        frame = decode_server_frame(data)
    except FrameRejected:
        raise AssertionError("decode_server_frame raised FrameRejected") from None
    except MalformedFrameError as exc:
        if exc.code not in SERVER_CODES:
            raise AssertionError(f"unexpected server-side code {exc.code!r}") from None
        return
    text = frame.encode()
    if not text.isascii():
        raise AssertionError("encode() produced non-ASCII text")
    if round_trip and decode_server_frame(text) != frame:
        raise AssertionError(f"server frame does not round-trip: {frame!r}")


def check_client(data: str | bytes, round_trip: bool) -> None:
    try:
        frame = decode_client_frame(data)
    except FrameRejected as exc:
        if exc.code not in CLIENT_CODES:
            raise AssertionError(f"unexpected client-side code {exc.code!r}") from None
        if exc.request_id is not None and not isinstance(exc.request_id, str):
            raise AssertionError("request_id is not a string") from None
        return
    text = frame.encode()
    if not text.isascii():
        raise AssertionError("encode() produced non-ASCII text")
    if round_trip and decode_client_frame(text) != frame:
        raise AssertionError(f"client frame does not round-trip: {frame!r}")


def check_split(text: str) -> None:
    parts = split_publish(text)
    if parts is None:
        return
    channel, data_json, rid, rid_json = parts
    if decode_json(rid_json) != rid or not isinstance(channel, str):
        raise AssertionError(f"split_publish parts disagree: {parts!r}")
    try:
        frame = decode_client_frame(text)
    except FrameRejected:
        return  # a syntactic rejection (bad channel, bad request id): the broker falls back too
    if (frame.channel, frame.request_id) != (channel, rid):  # type: ignore[union-attr]
        raise AssertionError(f"split_publish read {parts!r}, the decoder {frame!r}")
    if decode_json(data_json) != frame.data:  # type: ignore[union-attr]
        raise AssertionError(f"split_publish data {data_json!r} != {frame!r}")


def TestOneInput(data: bytes) -> None:
    check_server(data, round_trip=True)
    check_client(data, round_trip=True)
    # Undecodable bytes become lone surrogates: the decoders must cope, but a raw high
    # surrogate followed by a low one (U+D800 U+DCF3) is re-read from its escapes as one
    # astral character, so such text cannot round-trip. Wire text (valid UTF-8) never has them.
    text = data.decode("utf-8", "surrogateescape")
    raw_surrogates = any("\ud800" <= c <= "\udfff" for c in text)
    check_server(text, round_trip=not raw_surrogates)
    check_client(text, round_trip=not raw_surrogates)
    check_split(text)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
