"""The RFC 6455 frame codec (core/wsframe.py) against wsproto, cut anywhere, and its failures."""

from __future__ import annotations

import random
import struct
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from metered_realtime.core.wsframe import (
    FAIL,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    close_payload,
    encode_frame,
    is_valid_close_code,
    mask,
    masked_text,
    server_text,
)

CAP = 1 << 20

# --- helpers ----------------------------------------------------------------------------


def frame(opcode: int, payload: bytes, *, fin: bool = True, key: bytes | None = None) -> bytes:
    """A frame built by hand (masked when ``key`` is given), for the failure cases."""
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if key is not None else 0
    n = len(payload)
    if n < 126:
        head += bytes([bit | n])
    elif n < 65_536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if key is None:
        return head + payload
    return head + key + mask(payload, key)


KEY = b"\x37\xfa\x21\x3d"


def to_server(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client → server frame (masked)."""
    return frame(opcode, payload, fin=fin, key=KEY)


def decode_all(data: bytes, *, client: bool, cap: int = CAP) -> list[tuple[int, Any]]:
    return FrameDecoder(client=client, max_message=cap).feed(data)


def decode_bytewise(data: bytes, *, client: bool, cap: int = CAP) -> list[tuple[int, Any]]:
    dec = FrameDecoder(client=client, max_message=cap)
    out: list[tuple[int, Any]] = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    return out


def wsproto_events(data: bytes, *, client: bool) -> list[tuple[int, Any]]:
    """What wsproto's frame layer makes of ``data``, as whole messages in our event shape."""
    proto = FrameProtocol(client=client, extensions=[])
    proto.receive_bytes(data)
    out: list[tuple[int, Any]] = []
    parts: list[Any] = []
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
        else:
            out.append((int(f.opcode), bytes(f.payload)))  # type: ignore[arg-type]
    return out


def failure(events: list[tuple[int, Any]]) -> int:
    assert events, "no events"
    op, payload = events[-1]
    assert op == FAIL, events
    return int(payload[0])


# --- round trips against wsproto --------------------------------------------------------

MESSAGES: list[tuple[str, Any]] = [
    ("text", ""),
    ("text", '{"type":"ping"}'),
    ("text", "x" * 125),
    ("text", "y" * 126),
    ("text", "é" * 40_000),  # 80,000 bytes: 64-bit length
    ("text", "z" * 65_535),
    ("text", "z" * 65_536),
    ("text", "d\u00e9mo ✓ 😀"),
    ("binary", b""),
    ("binary", bytes(range(256)) * 3),
    ("ping", b""),
    ("ping", b"hb"),
    ("pong", b"x" * 125),
]


def _wsproto_stream(sender_is_client: bool) -> tuple[bytes, list[tuple[int, Any]]]:
    proto = FrameProtocol(client=sender_is_client, extensions=[])
    out = bytearray()
    expect: list[tuple[int, Any]] = []
    for i, (kind, value) in enumerate(MESSAGES):
        if kind in ("text", "binary"):
            if i % 2 and len(value) > 3:  # fragmented, a ping between the fragments
                third = len(value) // 3
                out += proto.send_data(value[:third], fin=False)
                out += proto.ping(b"mid")
                expect.append((OP_PING, b"mid"))
                out += proto.send_data(value[third : 2 * third], fin=False)
                out += proto.send_data(value[2 * third :], fin=True)
            else:
                out += proto.send_data(value)
            expect.append((OP_TEXT if kind == "text" else OP_BINARY, value))
        elif kind == "ping":
            out += proto.ping(value)
            expect.append((OP_PING, value))
        else:
            out += proto.pong(value)
            expect.append((OP_PONG, value))
    out += proto.close(1000, "bye")
    expect.append((OP_CLOSE, (1000, "bye")))
    return bytes(out), expect


@pytest.mark.parametrize("sender_is_client", [True, False], ids=["client-frames", "server-frames"])
def test_wsproto_frames_decode_identically(sender_is_client: bool) -> None:
    stream, expect = _wsproto_stream(sender_is_client)
    client = not sender_is_client
    assert wsproto_events(stream, client=client) == expect
    assert decode_all(stream, client=client) == expect
    assert decode_bytewise(stream, client=client) == expect


def _our_stream(client_role: bool) -> tuple[bytes, list[tuple[int, Any]]]:
    rng = random.Random(5) if client_role else None
    out = bytearray()
    expect: list[tuple[int, Any]] = []
    for kind, value in MESSAGES:
        if kind == "text":
            out += masked_text(value, rng) if rng is not None else server_text(value)
            expect.append((OP_TEXT, value))
        else:
            op = {"binary": OP_BINARY, "ping": OP_PING, "pong": OP_PONG}[kind]
            out += encode_frame(op, value, rng)
            expect.append((op, value))
    out += encode_frame(OP_TEXT, b"frag", rng, fin=False)
    out += encode_frame(OP_PING, b"p", rng)
    out += encode_frame(OP_CONTINUATION, b"mented", rng)
    expect += [(OP_PING, b"p"), (OP_TEXT, "fragmented")]
    out += encode_frame(OP_CLOSE, close_payload(4001, "r" * 200), rng)
    expect.append((OP_CLOSE, (4001, "r" * 123)))
    return bytes(out), expect


@pytest.mark.parametrize("client_role", [True, False], ids=["client-encoder", "server-encoder"])
def test_our_frames_decode_with_wsproto_and_ourselves(client_role: bool) -> None:
    stream, expect = _our_stream(client_role)
    receiver_is_client = not client_role
    assert wsproto_events(stream, client=receiver_is_client) == expect
    assert decode_all(stream, client=receiver_is_client) == expect
    assert decode_bytewise(stream, client=receiver_is_client) == expect


def test_client_frames_are_masked_with_fresh_keys_from_the_rng() -> None:
    rng = random.Random(11)
    a, b = masked_text("hello", rng), masked_text("hello", rng)
    assert a[1] & 0x80
    assert b[1] & 0x80
    assert a[2:6] != b[2:6]
    expected_key = random.Random(11).getrandbits(32).to_bytes(4, "big")
    assert a[2:6] == expected_key
    assert mask(a[6:], a[2:6]) == b"hello"


def test_server_frames_are_unmasked() -> None:
    data = server_text("hi")
    assert data == b"\x81\x02hi"
    assert encode_frame(OP_PONG, b"x") == b"\x8a\x01x"


def test_mask_is_an_involution() -> None:
    for n in (0, 1, 3, 4, 5, 127, 4096):
        payload = bytes(random.Random(n).getrandbits(8) for _ in range(n))
        assert mask(mask(payload, KEY), KEY) == payload
        if n:
            assert mask(payload, KEY)[0] == payload[0] ^ KEY[0]
            assert mask(payload, KEY)[-1] == payload[-1] ^ KEY[(n - 1) % 4]


def test_encoder_refuses_bad_control_frames() -> None:
    with pytest.raises(ValueError, match="control"):
        encode_frame(OP_PING, b"x" * 126)
    with pytest.raises(ValueError, match="control"):
        encode_frame(OP_CLOSE, b"", fin=False)


def test_close_payload() -> None:
    assert close_payload(None) == b""
    assert close_payload(1000) == b"\x03\xe8"
    cut = close_payload(1000, "é" * 100)  # 200 bytes: cut to 123 on a character boundary
    assert len(cut) == 2 + 122
    assert cut[2:].decode("utf-8") == "é" * 61


# --- any cut of the stream --------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.booleans())
def test_any_fragmentation_and_any_cut(data: st.DataObject, client_role: bool) -> None:
    """Random messages, fragmented at random with control frames between fragments, fed in
    random chunks, decode to the same messages (and wsproto agrees)."""
    rng = random.Random(data.draw(st.integers(0, 1000), label="seed"))
    messages = data.draw(
        st.lists(
            st.one_of(
                st.text(max_size=300).map(lambda s: ("t", s)),
                st.binary(max_size=300).map(lambda b: ("b", b)),
                st.binary(max_size=125).map(lambda b: ("p", b)),
            ),
            max_size=8,
        ),
        label="messages",
    )
    enc_rng = random.Random(rng.random()) if client_role else None
    stream = bytearray()
    expect: list[tuple[int, Any]] = []
    for kind, value in messages:
        if kind == "p":
            stream += encode_frame(OP_PING, value, enc_rng)
            expect.append((OP_PING, value))
            continue
        raw = value.encode("utf-8", "surrogatepass") if kind == "t" else value
        if kind == "t" and any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            continue  # not UTF-8: covered by the 1007 tests
        op = OP_TEXT if kind == "t" else OP_BINARY
        cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=4), label="cuts"))
        pieces = [raw[a:b] for a, b in pairwise([0, *cuts, len(raw)])]
        for i, piece in enumerate(pieces):
            stream += encode_frame(
                op if i == 0 else OP_CONTINUATION, piece, enc_rng, fin=i == len(pieces) - 1
            )
            if i == 0 and len(pieces) > 1 and data.draw(st.booleans(), label="ping between"):
                stream += encode_frame(OP_PONG, b"between", enc_rng)
                expect.append((OP_PONG, b"between"))
        expect.append((op, value))
    whole = bytes(stream)
    receiver_is_client = not client_role
    assert decode_all(whole, client=receiver_is_client) == expect
    assert wsproto_events(whole, client=receiver_is_client) == expect
    marks = sorted(data.draw(st.sets(st.integers(1, max(1, len(whole))), max_size=30)))
    dec = FrameDecoder(client=receiver_is_client, max_message=CAP)
    got: list[tuple[int, Any]] = []
    for a, b in pairwise([0, *marks, len(whole)]):
        got += dec.feed(whole[a:b])
    assert got == expect
    assert dec.buffered == 0


def test_partial_frame_is_held_until_complete() -> None:
    dec = FrameDecoder(client=True, max_message=CAP)
    data = server_text("x" * 1000)
    assert dec.feed(data[:3]) == []
    assert dec.feed(data[3:500]) == []
    assert dec.buffered == 500
    assert dec.feed(data[500:]) == [(OP_TEXT, "x" * 1000)]
    assert dec.buffered == 0


def test_utf8_split_across_fragments() -> None:
    raw = "h\u00e9llo 😀".encode()
    cut = raw.index("😀".encode()) + 2
    data = frame(OP_TEXT, raw[:cut], fin=False) + frame(OP_CONTINUATION, raw[cut:])
    assert decode_all(data, client=True) == [(OP_TEXT, "h\u00e9llo 😀")]
    assert decode_bytewise(data, client=True) == [(OP_TEXT, "h\u00e9llo 😀")]


def test_events_before_a_close_are_kept_and_after_it_ignored() -> None:
    data = (
        frame(OP_TEXT, b"a")
        + frame(OP_CLOSE, struct.pack("!H", 1001) + b"bye")
        + frame(OP_TEXT, b"late")
    )
    dec = FrameDecoder(client=True, max_message=CAP)
    assert dec.feed(data) == [(OP_TEXT, "a"), (OP_CLOSE, (1001, "bye"))]
    assert dec.done
    assert dec.feed(frame(OP_TEXT, b"more")) == []


def test_empty_close_is_code_none() -> None:
    assert decode_all(frame(OP_CLOSE, b""), client=True) == [(OP_CLOSE, (None, ""))]


# --- protocol errors and their close codes -----------------------------------------------

BAD_FRAMES_FROM_SERVER: list[tuple[str, bytes, int]] = [
    ("rsv1", bytes([0xC1, 0x01]) + b"x", 1002),
    ("rsv2", bytes([0xA1, 0x01]) + b"x", 1002),
    ("rsv3", bytes([0x91, 0x01]) + b"x", 1002),
    ("opcode-3", bytes([0x83, 0x00]), 1002),
    ("opcode-7", bytes([0x87, 0x00]), 1002),
    ("opcode-b", bytes([0x8B, 0x00]), 1002),
    ("opcode-f", bytes([0x8F, 0x00]), 1002),
    ("masked-from-server", frame(OP_TEXT, b"x", key=KEY), 1002),
    ("fragmented-ping", frame(OP_PING, b"x", fin=False), 1002),
    ("fragmented-close", frame(OP_CLOSE, b"", fin=False), 1002),
    ("long-ping", bytes([0x89, 126, 0, 126]) + b"x" * 126, 1002),
    ("long-close", bytes([0x88, 127]) + struct.pack("!Q", 1 << 16) + b"x" * 10, 1002),
    ("orphan-continuation", frame(OP_CONTINUATION, b"x"), 1002),
    ("text-inside-fragments", frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), 1002),
    ("binary-inside-fragments", frame(OP_TEXT, b"a", fin=False) + frame(OP_BINARY, b"b"), 1002),
    ("length-16-not-minimal", bytes([0x81, 126, 0, 5]) + b"x" * 5, 1002),
    ("length-64-not-minimal", bytes([0x81, 127]) + struct.pack("!Q", 200) + b"x" * 200, 1002),
    ("length-64-msb", bytes([0x82, 127]) + struct.pack("!Q", 1 << 63), 1002),
    ("close-1-byte", frame(OP_CLOSE, b"\x03"), 1002),
    ("close-code-999", frame(OP_CLOSE, struct.pack("!H", 999)), 1002),
    ("close-code-0", frame(OP_CLOSE, struct.pack("!H", 0)), 1002),
    ("close-code-1004", frame(OP_CLOSE, struct.pack("!H", 1004)), 1002),
    ("close-code-1005", frame(OP_CLOSE, struct.pack("!H", 1005)), 1002),
    ("close-code-1006", frame(OP_CLOSE, struct.pack("!H", 1006)), 1002),
    ("close-code-1015", frame(OP_CLOSE, struct.pack("!H", 1015)), 1002),
    ("close-code-1016", frame(OP_CLOSE, struct.pack("!H", 1016)), 1002),
    ("close-code-2999", frame(OP_CLOSE, struct.pack("!H", 2999)), 1002),
    ("close-code-5000", frame(OP_CLOSE, struct.pack("!H", 5000)), 1002),
    ("close-code-65535", frame(OP_CLOSE, struct.pack("!H", 65535)), 1002),
    ("text-bad-utf8", frame(OP_TEXT, b"\xff"), 1007),
    ("text-surrogate", frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    ("text-truncated-utf8", frame(OP_TEXT, "é".encode()[:1]), 1007),
    ("fragment-bad-utf8", frame(OP_TEXT, b"ok", fin=False) + frame(OP_CONTINUATION, b"\xc0"), 1007),
    (
        "fragment-ends-mid-char",
        frame(OP_TEXT, b"ok\xe2\x9c", fin=False) + frame(OP_CONTINUATION, b""),
        1007,
    ),
    ("close-reason-bad-utf8", frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
]


@pytest.mark.parametrize(
    ("data", "code"),
    [(d, c) for _, d, c in BAD_FRAMES_FROM_SERVER],
    ids=[n for n, _, _ in BAD_FRAMES_FROM_SERVER],
)
def test_protocol_errors_from_the_server(data: bytes, code: int) -> None:
    assert failure(decode_all(data, client=True)) == code
    assert failure(decode_bytewise(data, client=True)) == code


def test_unmasked_frame_from_a_client_is_1002() -> None:
    assert failure(decode_all(frame(OP_TEXT, b"x"), client=False)) == 1002
    assert failure(decode_all(frame(OP_PING, b""), client=False)) == 1002


@pytest.mark.parametrize(
    ("data", "code"), [(d, c) for _, d, c in BAD_FRAMES_FROM_SERVER if d[1] & 0x80 == 0]
)
def test_protocol_errors_from_a_client(data: bytes, code: int) -> None:
    """The same defects, masked, from a client."""
    dec = FrameDecoder(client=True, max_message=CAP)
    events = dec.feed(data)
    # re-encode every frame the server-side decoder would see, masked, up to the bad one
    remasked = _remask(data)
    assert failure(decode_all(remasked, client=False)) == code
    assert failure(decode_bytewise(remasked, client=False)) == code
    assert events[-1][0] == FAIL


def _remask(data: bytes) -> bytes:
    """Set the mask bit (key ``KEY``) on every frame of a hand-built unmasked stream."""
    out = bytearray()
    pos = 0
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        n, hdr = b1 & 0x7F, 2
        if n == 126:
            n, hdr = struct.unpack("!H", data[pos + 2 : pos + 4])[0], 4
        elif n == 127:
            n, hdr = struct.unpack("!Q", data[pos + 2 : pos + 10])[0], 10
        header = bytes([b0, b1 | 0x80]) + data[pos + 2 : pos + hdr]
        payload = data[pos + hdr : pos + hdr + n]
        out += header + KEY + mask(payload, KEY)
        pos += hdr + n
        if pos > len(data):
            break
    return bytes(out)


def test_valid_close_codes() -> None:
    for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014):
        assert is_valid_close_code(code)
        assert decode_all(frame(OP_CLOSE, struct.pack("!H", code)), client=True) == [
            (OP_CLOSE, (code, ""))
        ]
    for code in (3000, 3999, 4000, 4001, 4999):
        assert is_valid_close_code(code)
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000):
        assert not is_valid_close_code(code)


# --- the size cap -------------------------------------------------------------------------


def test_oversized_message_fails_1009_from_the_header_alone() -> None:
    dec = FrameDecoder(client=False, max_message=1000)
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1 << 40)
    assert failure(dec.feed(header)) == 1009  # nothing of the payload was needed, or held
    assert dec.buffered == 0
    dec = FrameDecoder(client=True, max_message=1000)
    assert failure(dec.feed(bytes([0x81, 126]) + struct.pack("!H", 1001))) == 1009


def test_cap_is_inclusive_and_counts_bytes() -> None:
    assert decode_all(frame(OP_TEXT, b"x" * 1000), client=True, cap=1000) == [(OP_TEXT, "x" * 1000)]
    assert failure(decode_all(frame(OP_TEXT, "é".encode() * 501), client=True, cap=1000)) == 1009
    assert failure(decode_all(frame(OP_BINARY, b"x" * 1001), client=True, cap=1000)) == 1009


def test_cap_counts_every_fragment() -> None:
    dec = FrameDecoder(client=True, max_message=1000)
    assert dec.feed(frame(OP_TEXT, b"x" * 600, fin=False)) == []
    assert dec.feed(frame(OP_PING, b"")) == [(OP_PING, b"")]  # control frames do not count
    assert failure(dec.feed(frame(OP_CONTINUATION, b"x" * 401, fin=False)[:4])) == 1009
    dec = FrameDecoder(client=True, max_message=1000)
    dec.feed(frame(OP_TEXT, b"x" * 600, fin=False))
    assert dec.feed(frame(OP_CONTINUATION, b"y" * 400)) == [(OP_TEXT, "x" * 600 + "y" * 400)]


def test_control_frames_are_not_capped_by_a_tiny_cap() -> None:
    dec = FrameDecoder(client=True, max_message=1)
    assert dec.feed(frame(OP_PING, b"x" * 125)) == [(OP_PING, b"x" * 125)]
    assert dec.feed(frame(OP_CLOSE, struct.pack("!H", 1000) + b"r" * 50)) == [
        (OP_CLOSE, (1000, "r" * 50))
    ]


def test_after_a_failure_everything_is_ignored() -> None:
    dec = FrameDecoder(client=True, max_message=CAP)
    events = dec.feed(frame(OP_TEXT, b"ok") + bytes([0xC1, 0x00]) + frame(OP_TEXT, b"never"))
    assert events[0] == (OP_TEXT, "ok")
    assert failure(events) == 1002
    assert dec.done
    assert dec.feed(frame(OP_TEXT, b"again")) == []


@pytest.mark.parametrize("client", [True, False])
def test_after_1009_the_decoder_drains_to_the_close_frame(client: bool) -> None:
    """The rest of an oversized message is skipped unbuffered; a close frame still counts."""
    key = None if client else KEY
    stream = (
        frame(OP_TEXT, b"x" * 5000, key=key)
        + frame(OP_PING, b"ignored", key=key)
        + frame(OP_TEXT, b"small, but after the 1009", key=key)
        + frame(OP_BINARY, b"y" * 70_000, fin=False, key=key)
        + frame(OP_CONTINUATION, b"z" * 10, key=key)
        + frame(OP_CLOSE, struct.pack("!H", 1009), key=key)
        + frame(OP_TEXT, b"after the close", key=key)
    )
    expect = [(FAIL, (1009, "message too big")), (OP_CLOSE, (1009, ""))]
    assert decode_all(stream, client=client, cap=1000) == expect
    assert decode_bytewise(stream, client=client, cap=1000) == expect
    dec = FrameDecoder(client=client, max_message=1000)
    assert dec.feed(stream[:20]) == [(FAIL, (1009, "message too big"))]
    assert dec.draining
    assert dec.buffered == 0  # the 5000-byte payload is never held
    assert dec.feed(stream[20:4000]) == []
    assert dec.buffered == 0
    assert dec.feed(stream[4000:]) == [(OP_CLOSE, (1009, ""))]
    assert dec.done


def test_a_framing_error_while_draining_still_fails() -> None:
    dec = FrameDecoder(client=True, max_message=10)
    assert failure(dec.feed(frame(OP_TEXT, b"x" * 11))) == 1009
    assert failure(dec.feed(bytes([0xC1, 0x00]))) == 1002
    assert dec.done


# --- the codec in the broker and in the client machine -------------------------------------


def test_broker_answers_a_protocol_error_with_a_1002_close_and_drops_the_session() -> None:
    from tests.wire import Net, RawClient

    net = Net()
    c = RawClient(net)
    assert c.welcome is not None
    c.send_raw(bytes([0xC1, 0x80]) + KEY)  # RSV1 set: no extension was negotiated
    assert c.close_code == 1002
    assert c.transport_closed
    assert net.broker.sessions == {}


def test_broker_1009_closing_handshake_completes_on_the_echo() -> None:
    from tests.wire import Net, RawClient

    net = Net()
    c = RawClient(net)
    session = c.server.session if c.server is not None else None
    assert session is not None
    c.send_json({"type": "publish", "channel": "c", "data": "x" * 70_000, "requestId": "r"})
    assert c.close_code == 1009  # RawClient echoes the close at once…
    assert c.transport_closed  # …and the broker, still reading past the skipped payload, ends
    assert session.close_code == 1009
    assert net.broker.sessions == {}


def test_broker_answers_pings_and_echoes_an_empty_close() -> None:
    from tests.wire import Net, RawClient

    net = Net()
    c = RawClient(net)
    server = c.server
    assert server is not None
    server.receive_data(to_server(OP_PING, b"hi"), net.now)
    assert server.data_to_send() == encode_frame(OP_PONG, b"hi")
    server.receive_data(to_server(OP_CLOSE, b""), net.now)
    assert server.data_to_send() == encode_frame(OP_CLOSE, b"")
    assert server.close_transport


def test_client_machine_fails_1002_on_a_masked_server_frame() -> None:
    from metered_realtime.core import Disconnected
    from tests.helpers import Harness

    h = Harness()
    h.connect()
    assert h.client.state == "connected"
    assert h.server is not None
    server = h.server
    h.client.receive_data(frame(OP_TEXT, b"{}", key=KEY), h.now)
    h.pump()
    assert server.close_code == 1002
    (lost,) = h.of(Disconnected)
    assert lost.code == 1002
    assert lost.will_reconnect
