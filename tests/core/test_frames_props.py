"""Property tests of the frame codec (PROTOCOL §2.3, §3) and of incremental byte feeding.

* every frame type round-trips through its own decoder, in both directions;
* ``encode()`` emits compact, ASCII-only JSON with exactly the expected members, ``type`` first;
* the decoders raise nothing but their documented errors, whatever they are fed;
* a ``ClientConnection`` produces the same events whether a server byte stream arrives whole,
  one byte at a time, or in arbitrary chunks (WebSocket fragmentation included).
"""

from __future__ import annotations

import json
import random
import re
import struct
from itertools import pairwise
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from metered_realtime.core.client import ClientConfig, ClientConnection, ClientEvent
from metered_realtime.core.errors import FrameRejected, MalformedFrameError
from metered_realtime.core.events import (
    Connected,
    Direct,
    Disconnected,
    FrameDropped,
    GoingAway,
    Message,
    OpenTransport,
    Presence,
    PresencePeer,
    ServerError,
)
from metered_realtime.core.frames import (
    MISSING,
    AckFrame,
    ClientFrame,
    DirectFrame,
    ErrorFrame,
    GoingAwayFrame,
    MessageFrame,
    PingFrame,
    PongFrame,
    PresenceFrame,
    PublishFrame,
    SendFrame,
    ServerFrame,
    SubscribeFrame,
    UnsubscribeFrame,
    WelcomeFrame,
    decode_client_frame,
    decode_server_frame,
)
from metered_realtime.core.validation import RESERVED_PREFIXES, is_reserved_channel
from tests.helpers import VECTORS, ScriptedServer

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CLIENT_CODES = frozenset(
    {"malformed_message", "unknown_type", "invalid_channel", "channel_reserved", "invalid_peer_id"}
)
SERVER_CODES = frozenset({"malformed_message", "unknown_type"})
CLIENT_TYPES = ("subscribe", "unsubscribe", "publish", "send", "ping")
SERVER_TYPES = ("welcome", "ack", "error", "message", "direct", "presence", "going_away", "pong")
MEMBER_NAMES = (
    "type",
    "channel",
    "to",
    "from",
    "data",
    "requestId",
    "includeSenderMetadata",
    "peerId",
    "expiresAt",
    "serverTime",
    "maxMessageSize",
    "metadata",
    "fromMetadata",
    "code",
    "message",
    "joined",
    "left",
    "retryAfterMs",
)


# --- strategies -------------------------------------------------------------------------


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _clip(limit: int) -> Any:
    """Drop trailing characters until ``text`` fits ``limit`` UTF-8 bytes."""

    def clip(text: str) -> str:
        while _utf8_len(text) > limit:
            text = text[:-1]
        return text

    return clip


# Anything but C0/C1 controls (category Cc is exactly U+0000-U+001F and U+007F-U+009F), with
# an occasional lone surrogate: the server counts those as 3 UTF-8 bytes (surrogatepass).
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_CC: tuple[Literal["Cc"]] = ("Cc",)
_name_char = st.one_of(
    st.characters(exclude_categories=_CC),
    st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]),
)


def _no_surrogate_pair(text: str) -> bool:
    """No high surrogate right before a low one: their escapes would decode as one character."""
    return _SURROGATE_PAIR.search(text) is None


def _names(limit: int) -> st.SearchStrategy[str]:
    """Valid channel names / peer ids: 1…limit UTF-8 bytes, no control characters."""
    return st.one_of(
        st.text(_name_char, min_size=1, max_size=limit)
        .map(_clip(limit))
        .filter(_no_surrogate_pair),
        # exactly at the byte limit, and at the limit with multi-byte characters
        st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=limit, max_size=limit
        ),
        st.text(st.sampled_from("é✓😀"), min_size=limit // 2, max_size=limit).map(_clip(limit)),
    )


channels = _names(256)
plain_channels = channels.filter(lambda c: not is_reserved_channel(c))
peer_ids = _names(128)
request_ids = st.text(min_size=1, max_size=128).map(_clip(128))
optional_request_ids = st.none() | request_ids


@st.composite
def reserved_channels(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(RESERVED_PREFIXES))
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in prefix)
    return cased + draw(st.text(_name_char, max_size=20).filter(_no_surrogate_pair))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
optional_objects = st.none() | json_objects

subscribe_frames = st.builds(SubscribeFrame, plain_channels, optional_request_ids, st.booleans())
unsubscribe_frames = st.builds(
    UnsubscribeFrame, channels | reserved_channels(), optional_request_ids
)
publish_frames = st.builds(
    PublishFrame, plain_channels, json_values | st.just(MISSING), optional_request_ids
)
send_frames = st.builds(SendFrame, peer_ids, json_values | st.just(MISSING), optional_request_ids)
ping_frames = st.builds(PingFrame, optional_request_ids)
client_frames: st.SearchStrategy[ClientFrame] = st.one_of(
    subscribe_frames, unsubscribe_frames, publish_frames, send_frames, ping_frames
)

presence_peers = st.builds(PresencePeer, st.text(), optional_objects)
welcome_frames = st.builds(
    WelcomeFrame,
    peer_id=st.text(),
    expires_at=st.none() | st.integers(),
    server_time=st.integers(),
    max_message_size=st.integers(min_value=1),
    metadata=optional_objects,
)
server_frames: st.SearchStrategy[ServerFrame] = st.one_of(
    welcome_frames,
    st.builds(AckFrame, st.text()),
    st.builds(ErrorFrame, st.text(min_size=1), st.none() | st.text(), st.none() | st.text()),
    st.builds(MessageFrame, st.text(), st.text(), json_values, optional_objects),
    st.builds(DirectFrame, st.text(), json_values, optional_objects),
    st.builds(
        PresenceFrame,
        st.text(),
        st.lists(presence_peers, max_size=4).map(tuple),
        st.lists(presence_peers, max_size=4).map(tuple),
    ),
    st.builds(GoingAwayFrame, st.integers(min_value=1, max_value=300_000)),
    st.builds(PongFrame, st.none() | st.text()),
)


# --- expected wire members -------------------------------------------------------------


def _peer_entry(peer: PresencePeer) -> dict[str, Any]:
    out: dict[str, Any] = {"peerId": peer.peer_id}
    if peer.metadata is not None:
        out["metadata"] = peer.metadata
    return out


def expected_members(frame: ClientFrame | ServerFrame) -> list[tuple[str, Any]]:
    """The members ``frame.encode()`` must carry, in wire order (PROTOCOL §2.3, §3)."""
    out: list[tuple[str, Any]]
    if isinstance(frame, (SubscribeFrame, UnsubscribeFrame)):
        out = [("type", "subscribe" if isinstance(frame, SubscribeFrame) else "unsubscribe")]
        out.append(("channel", frame.channel))
        if frame.request_id is not None:
            out.append(("requestId", frame.request_id))
        if isinstance(frame, SubscribeFrame) and frame.include_sender_metadata:
            out.append(("includeSenderMetadata", True))
    elif isinstance(frame, (PublishFrame, SendFrame)):
        if isinstance(frame, PublishFrame):
            out = [("type", "publish"), ("channel", frame.channel)]
        else:
            out = [("type", "send"), ("to", frame.to)]
        if frame.data is not MISSING:
            out.append(("data", frame.data))
        if frame.request_id is not None:
            out.append(("requestId", frame.request_id))
    elif isinstance(frame, (PingFrame, PongFrame)):
        out = [("type", "ping" if isinstance(frame, PingFrame) else "pong")]
        if frame.request_id is not None:
            out.append(("requestId", frame.request_id))
    elif isinstance(frame, WelcomeFrame):
        out = [
            ("type", "welcome"),
            ("peerId", frame.peer_id),
            ("expiresAt", frame.expires_at),
            ("serverTime", frame.server_time),
            ("maxMessageSize", frame.max_message_size),
        ]
        if frame.metadata is not None:
            out.append(("metadata", frame.metadata))
    elif isinstance(frame, AckFrame):
        out = [("type", "ack"), ("requestId", frame.request_id)]
    elif isinstance(frame, ErrorFrame):
        out = [("type", "error")]
        if frame.request_id is not None:
            out.append(("requestId", frame.request_id))
        out.append(("code", frame.code))
        if frame.message is not None:
            out.append(("message", frame.message))
    elif isinstance(frame, (MessageFrame, DirectFrame)):
        if isinstance(frame, MessageFrame):
            out = [("type", "message"), ("channel", frame.channel)]
        else:
            out = [("type", "direct")]
        out += [("from", frame.sender), ("data", frame.data)]
        if frame.from_metadata is not None:
            out.append(("fromMetadata", frame.from_metadata))
    elif isinstance(frame, PresenceFrame):
        out = [
            ("type", "presence"),
            ("channel", frame.channel),
            ("joined", [_peer_entry(p) for p in frame.joined]),
            ("left", [_peer_entry(p) for p in frame.left]),
        ]
    else:
        assert isinstance(frame, GoingAwayFrame)
        out = [("type", "going_away"), ("retryAfterMs", frame.retry_after_ms)]
    return out


def check_encoding(frame: ClientFrame | ServerFrame) -> str:
    text = frame.encode()
    assert isinstance(text, str)
    assert text.isascii()
    parsed = json.loads(text)
    assert isinstance(parsed, dict)
    assert list(parsed.items()) == expected_members(frame)  # exactly these members, in order
    assert next(iter(parsed)) == "type"
    # compact: re-serialising the parsed document with the SDK's settings gives the same text
    assert json.dumps(parsed, separators=(",", ":"), ensure_ascii=True) == text
    return text


# --- round trips ------------------------------------------------------------------------


@PROPS
@given(client_frames)
def test_client_frame_round_trip(frame: ClientFrame) -> None:
    text = check_encoding(frame)
    assert decode_client_frame(text) == frame
    assert decode_client_frame(text.encode("utf-8")) == frame


@PROPS
@given(server_frames)
def test_server_frame_round_trip(frame: ServerFrame) -> None:
    text = check_encoding(frame)
    assert decode_server_frame(text) == frame
    assert decode_server_frame(bytearray(text, "utf-8")) == frame


@PROPS
@given(st.sampled_from([SubscribeFrame, PublishFrame]), reserved_channels(), optional_request_ids)
def test_reserved_channels_rejected(kind: type, channel: str, rid: str | None) -> None:
    frame = (
        SubscribeFrame(channel, rid) if kind is SubscribeFrame else PublishFrame(channel, 1, rid)
    )
    with pytest.raises(FrameRejected) as info:
        decode_client_frame(frame.encode())
    assert info.value.code == "channel_reserved"
    assert info.value.request_id == rid
    # unsubscribe does not check the prefix
    assert decode_client_frame(UnsubscribeFrame(channel, rid).encode()) == UnsubscribeFrame(
        channel, rid
    )


_finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e18, max_value=1e18)


@PROPS
@given(
    st.text(),
    st.none() | _finite,
    _finite,
    st.floats(min_value=1e-9, max_value=1e18),
    optional_objects,
)
def test_welcome_numbers_truncate_to_int(
    peer: str, expires: float | None, now: float, cap: float, meta: dict[str, Any] | None
) -> None:
    text = WelcomeFrame(peer, expires, now, cap, meta).encode()  # type: ignore[arg-type]
    frame = decode_server_frame(text)
    assert isinstance(frame, WelcomeFrame)
    assert frame.expires_at == (None if expires is None else int(expires))
    assert frame.server_time == int(now)
    assert frame.max_message_size == max(1, int(cap))
    for value in (frame.expires_at, frame.server_time, frame.max_message_size):
        assert value is None or type(value) is int


@PROPS
@given(st.none() | st.booleans() | st.integers() | _finite | st.text())
def test_going_away_hint_is_clamped(raw: Any) -> None:
    frame = decode_server_frame(json.dumps({"type": "going_away", "retryAfterMs": raw}))
    assert isinstance(frame, GoingAwayFrame)
    assert 1 <= frame.retry_after_ms <= 300_000
    assert type(frame.retry_after_ms) is int


# --- arbitrary input ---------------------------------------------------------------------


def _check_server(data: str | bytes | bytearray) -> ServerFrame | None:
    """Decode as a client does: a frame that re-encodes to itself, or MalformedFrameError."""
    error: MalformedFrameError | None = None
    try:
        frame = decode_server_frame(data)
    except MalformedFrameError as exc:
        error = exc
    if error is not None:
        assert type(error) is MalformedFrameError
        assert error.code in SERVER_CODES
        return None
    assert decode_server_frame(frame.encode()) == frame
    return frame


def _check_client(data: str | bytes | bytearray) -> ClientFrame | None:
    """Decode as the server does: a frame that re-encodes to itself, or FrameRejected."""
    error: FrameRejected | None = None
    try:
        frame = decode_client_frame(data)
    except FrameRejected as exc:
        error = exc
    if error is not None:
        assert error.code in CLIENT_CODES
        assert error.request_id is None or isinstance(error.request_id, str)
        return None
    assert decode_client_frame(frame.encode()) == frame
    return frame


def _check_both(data: str | bytes | bytearray) -> None:
    _check_server(data)
    _check_client(data)


DEEP = "[" * 100_000
# Out-of-range literals parse to infinity, which no frame may carry (NaN/Infinity are refused).
OVERFLOWS = [
    '{"type":"message","channel":"c","from":"p","data":1e400}',
    '{"type":"direct","from":"p","data":{"x":-1e400}}',
    '{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":1,"maxMessageSize":1,'
    '"metadata":{"n":1e309}}',
    '{"type":"publish","channel":"c","data":[-1e400]}',
    '{"type":"send","to":"p","data":{"x":1E999}}',
]
EXAMPLES = [
    DEEP,
    '{"a":' * 100_000,
    "1" * 5000,
    '{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":' + "9" * 5000 + "}",
    '{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":1,"maxMessageSize":'
    + "9" * 4000
    + "}",
    '{"type":"message","channel":"c","from":"p","data":' + DEEP + "}",
    *OVERFLOWS,
    '{"type":"going_away","retryAfterMs":1e400}',
    '{"type":"welcome","peerId":"p","expiresAt":NaN,"serverTime":1,"maxMessageSize":1}',
    '{"type":"ping","requestId":"\\ud800"}',
    '{"type":"subscribe","channel":"\\udfff"}',
    '{"type":"subscribe","channel":"_\\u017fystem/x"}',
    '{"type":"nope","requestId":"' + "x" * 129 + '"}',
    '{"type":"presence","channel":"c","joined":[1],"left":[]}',
    "\ufeff{}",
    "",
]


@FUZZ
@given(st.binary())
@example(DEEP.encode())
@example(b"1" * 5000)
@example(b'{"type":"message","channel":"\xff","from":"p","data":1}')
@example(b"\xed\xa0\x80")
def test_arbitrary_bytes(data: bytes) -> None:
    _check_both(data)
    _check_both(bytearray(data))


@FUZZ
@given(st.text())
def test_arbitrary_text(text: str) -> None:
    _check_both(text)


def test_explicit_examples() -> None:
    for text in EXAMPLES:
        _check_both(text)
        _check_both(text.encode("utf-8", "surrogatepass"))


def test_non_finite_numbers_are_malformed() -> None:
    """Regression: ``1e400`` parsed to ``inf``, so a frame could decode but never re-encode.

    A broker relaying such a ``publish`` raised ``ValueError`` while encoding the ``message``.
    """
    for text in OVERFLOWS:
        assert _check_server(text) is None
        assert _check_client(text) is None
        with pytest.raises(MalformedFrameError) as info:
            decode_server_frame(text)
        assert info.value.code in ("malformed_message", "unknown_type")
    with pytest.raises(FrameRejected) as rejected:
        decode_client_frame(OVERFLOWS[3])
    assert rejected.value.code == "malformed_message"


_type_values = st.one_of(
    st.sampled_from(SERVER_TYPES + CLIENT_TYPES),
    st.text(max_size=12),
    json_scalars,
)
_member_keys = st.sampled_from(MEMBER_NAMES) | st.text(max_size=12)


@st.composite
def frame_like_documents(draw: st.DrawFn) -> Any:
    """JSON documents near the frame shapes: a (usually real) type and random members."""
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(json_values)
    members = draw(st.dictionaries(_member_keys, json_values, max_size=6))
    if choice == 1:
        return members
    if choice == 2:
        return {"type": draw(_type_values), **members}
    # a real vector with members removed, replaced or added
    section = draw(st.sampled_from(["client_frames", "server_frames", "robustness"]))
    vector = draw(st.sampled_from(VECTORS[section]))
    doc: dict[str, Any] = json.loads(vector.get("text") or vector["bytes"])
    for key in list(doc):
        action = draw(st.integers(0, 3))
        if action == 0:
            del doc[key]
        elif action == 1:
            doc[key] = draw(json_values)
    doc.update(members)
    return doc


@FUZZ
@given(frame_like_documents(), st.booleans())
def test_arbitrary_json_documents(doc: Any, ascii_only: bool) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only, separators=(",", ":"))
    _check_both(text)
    _check_both(text.encode("utf-8"))


# --- incremental feeding -----------------------------------------------------------------

CONFIG = ClientConfig(url="ws://127.0.0.1:8787", api_key="pk_props")
NOW = 1000.0


def _ws_frame(payload: bytes, opcode: int, fin: bool = True) -> bytes:
    """One unmasked server → client WebSocket frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def _texts(section: str) -> list[str]:
    return [v["text"] for v in VECTORS[section]]


def _frames_stream() -> bytes:
    """Server frames after the handshake: whole, fragmented, interleaved with control frames."""
    srv = FrameProtocol(client=False, extensions=[])
    welcome, *rest = _texts("server_frames")
    out = bytearray(_ws_frame(welcome.encode(), 0x1))
    for i, text in enumerate(rest + _texts("robustness")):
        if i % 3 == 0:  # split into up to four continuation frames
            cuts = sorted({len(text) // 4, len(text) // 2, len(text) - 1, 1})
            parts = [text[a:b] for a, b in pairwise([0, *cuts, len(text)])]
            for j, part in enumerate(parts):
                out += srv.send_data(part, fin=j == len(parts) - 1)
                if j == 1:  # a control frame between fragments is legal
                    out += _ws_frame(b"hb", 0x9)
        else:
            out += _ws_frame(text.encode(), 0x1)
    # raw UTF-8 (JS style) split inside a multi-byte character across continuation frames
    raw = '{"type":"message","channel":"démo/✓","from":"p","data":"h\u00e9llo 😀"}'.encode()
    cut = raw.index("😀".encode()) + 2
    out += _ws_frame(raw[:cut], 0x1, fin=False) + _ws_frame(raw[cut:], 0x0)
    out += _ws_frame(b"\x00\x01binary", 0x2)  # dropped: binary frames are not used
    out += _ws_frame(b"not json", 0x1)
    out += _ws_frame(struct.pack("!H", 1001) + b"bye", 0x8)  # going away: the stream ends here
    return bytes(out)


FRAMES = _frames_stream()


def _handshaken_client() -> tuple[ClientConnection, bytes, list[ClientEvent]]:
    """A fresh client that has sent its upgrade request, and the server's accept bytes."""
    client = ClientConnection(CONFIG, random.Random(3))
    client.connect(NOW)
    events = _drain(client)
    assert isinstance(events[-1], OpenTransport)
    client.transport_opened(NOW)
    server = ScriptedServer()
    server.receive(client.data_to_send())
    assert server.target == "/v1?key=pk_props"
    server.accept()
    return client, server.take(), events


def _drain(client: ClientConnection) -> list[ClientEvent]:
    out = []
    while (ev := client.next_event()) is not None:
        out.append(ev)
    return out


def _feed(chunks_of: Any) -> list[ClientEvent]:
    """Feed a fresh client its stream as ``chunks_of(stream)``; return every event and action."""
    client, accept, events = _handshaken_client()
    for chunk in chunks_of(accept + FRAMES):
        client.receive_data(chunk, NOW)
        events += _drain(client)
        client.data_to_send()
    return events


def _whole(data: bytes) -> list[bytes]:
    return [data]


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


WHOLE = _feed(_whole)


def test_stream_is_meaningful() -> None:
    """The reference run sees every kind of frame the stream carries."""
    kinds = [type(e) for e in WHOLE]
    assert kinds.count(Connected) == 1
    assert kinds.count(Message) == 3  # TV-25, TV-26 and the raw UTF-8 one
    assert kinds.count(Direct) == 3
    assert kinds.count(Presence) == 5  # TV-21…24 and TV-38
    assert kinds.count(GoingAway) == 2
    assert kinds.count(ServerError) == 4  # TV-17, TV-18, TV-19, TV-37 (TV-20 is swallowed)
    drops = [e.code for e in WHOLE if isinstance(e, FrameDropped)]
    assert "duplicate_welcome" in drops
    assert "binary_frame" in drops
    raw = [e for e in WHOLE if isinstance(e, Message) and e.channel == "démo/✓"]
    assert raw[0].data == "h\u00e9llo 😀"
    last = [e for e in WHOLE if isinstance(e, Disconnected)]
    assert len(last) == 1
    assert last[0].code == 1001
    assert last[0].will_reconnect


def test_byte_at_a_time() -> None:
    assert _feed(_bytewise) == WHOLE


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_chunks(data: st.DataObject) -> None:
    total = len(FRAMES) + 200  # about the accept response's length; cuts past the end are clipped
    cuts = data.draw(
        st.one_of(
            st.sets(st.integers(1, total), max_size=40),
            st.sets(st.integers(1, total), min_size=200, max_size=600),
        ),
        label="cuts",
    )

    def split(stream: bytes) -> list[bytes]:
        marks = sorted(c for c in cuts if c < len(stream))
        return [stream[a:b] for a, b in pairwise([0, *marks, len(stream)])]

    assert _feed(split) == WHOLE
