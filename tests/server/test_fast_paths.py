"""The hot paths give exactly what the general paths give.

* ``split_publish`` + ``Broker._fast_publish``: a ``publish`` in the SDKs' member layout, to a
  channel the session already published to, skips the frame objects and forwards ``data`` as
  the sender wrote it. Subscribers must see the same JSON values, acks and ordering as through
  ``decode_client_frame`` + ``MessageFrame``.
* ``ClientConnection._on_text``: ``ack`` and ``message`` frames skip ``decode_server_frame``;
  the events must be the ones the general path produces, and anything unusual must still go
  the general way.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import Message as WsMessage

from metered_realtime.core import Message, RequestCompleted
from metered_realtime.core.broker import Limits
from metered_realtime.core.client import _message_event
from metered_realtime.core.errors import MalformedFrameError
from metered_realtime.core.frames import (
    MessageFrame,
    PublishFrame,
    decode_client_frame,
    decode_server_frame,
    split_publish,
)
from metered_realtime.core.jwt import sign_hs256
from tests.helpers import Harness
from tests.wire import KID, NOW, SECRET, Net, RawClient, default_config

# --- split_publish ----------------------------------------------------------------------


def test_split_publish_cuts_the_sdk_layout() -> None:
    text = '{"type":"publish","channel":"a\\u00e9","data":{"x": [1, 2.5e3]},"requestId":"r\\"1"}'
    assert split_publish(text) == ("a\u00e9", '{"x": [1, 2.5e3]}', 'r"1', '"r\\"1"')


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "publish","channel":"c","data":1,"requestId":"r"}',  # whitespace
        '{"type":"publish","data":1,"channel":"c","requestId":"r"}',  # member order
        '{"type":"publish","channel":"c","data":1}',  # no request id
        '{"type":"publish","channel":"c","data":1,"requestId":"r","x":1}',  # extra member
        '{"type":"publish","channel":"c","data":1,"requestId":"r"} ',  # trailing text
        '{"type":"publish","channel":1,"data":1,"requestId":"r"}',  # channel not a string
        '{"type":"publish","channel":"c","data":1,"requestId":2}',  # request id not a string
        '{"type":"publish","channel":"c","data":NaN,"requestId":"r"}',  # not JSON
        '{"type":"publish","channel":"c","data":1e400,"requestId":"r"}',  # overflows
        '{"type":"publish","channel":"c","data":[,"requestId":"r"}',  # broken
        '{"type":"publish","channel":"c","data":"\x01","requestId":"r"}',  # control char
        '{"type":"publish","channel":"c","data":' + "[" * 5000 + "]" * 5000 + ',"requestId":"r"}',
        '{"type":"subscribe","channel":"c","requestId":"r"}',
    ],
)
def test_split_publish_refuses_everything_else(text: str) -> None:
    assert split_publish(text) is None


# --- the broker --------------------------------------------------------------------------


def _pubsub(net: Net) -> tuple[RawClient, RawClient, RawClient]:
    """A publisher and two subscribers of channel ``c`` (one wants sender metadata)."""
    meta = sign_hs256(
        {
            "sub": "pub",
            "exp": NOW + 600,
            "channels": ["**"],
            "permissions": ["subscribe", "publish", "presence", "send"],
            "peerMetadata": {"role": "bot", "n": 1},
        },
        SECRET,
        KID,
    )
    pub = RawClient(net, f"/v1?token={meta}")
    plain, stamped = RawClient(net), RawClient(net)
    plain.send_json({"type": "subscribe", "channel": "c", "requestId": "s"})
    stamped.send_json(
        {"type": "subscribe", "channel": "c", "requestId": "s", "includeSenderMetadata": True}
    )
    for r in (pub, plain, stamped):
        r.texts.clear()
    return pub, plain, stamped


def _publish_text(channel: str, data: Any, rid: str, *, ascii_only: bool = True) -> str:
    return (
        '{"type":"publish","channel":'
        + json.dumps(channel, ensure_ascii=ascii_only)
        + ',"data":'
        + json.dumps(data, ensure_ascii=ascii_only, separators=(",", ":"))
        + ',"requestId":'
        + json.dumps(rid, ensure_ascii=ascii_only)
        + "}"
    )


def _expected(channel: str, sender: str, data: Any, meta: Any = None) -> dict[str, Any]:
    return json.loads(MessageFrame(channel, sender, data, meta).encode())


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=json_values, ascii_only=st.booleans(), rid=st.text(min_size=1, max_size=40))
def test_fast_publish_delivers_what_the_general_path_delivers(
    data: Any, ascii_only: bool, rid: str
) -> None:
    net = Net()
    pub, plain, stamped = _pubsub(net)
    session = pub.server.session if pub.server is not None else None
    assert session is not None
    meta = {"role": "bot", "n": 1}
    for attempt in range(2):  # the first goes the general way and opens the fast one
        text = _publish_text("c", data, rid, ascii_only=ascii_only)
        if attempt == 1 and rid.isascii() and len(rid) <= 128:
            assert split_publish(text) is not None
            assert "c" in session._routes
        pub.send_text(text)
        general = decode_client_frame(text)
        assert pub.take() == [{"type": "ack", "requestId": general.request_id}]
        assert plain.take() == [_expected("c", "pub", data)]
        assert stamped.take() == [_expected("c", "pub", data, meta)]


def test_fast_publish_keeps_order_and_skips_the_publisher() -> None:
    net = Net()
    pub, plain, _ = _pubsub(net)
    pub.send_json({"type": "subscribe", "channel": "c", "requestId": "self"})
    pub.take()
    burst = b"".join(pub.ws.send(WsMessage(data=_publish_text("c", i, f"r{i}"))) for i in range(50))
    pub.send_raw(burst)
    assert pub.take() == [{"type": "ack", "requestId": f"r{i}"} for i in range(50)]
    assert [f["data"] for f in plain.take() if f["type"] == "message"] == list(range(50))


def test_fast_publish_still_refuses_what_the_general_path_refuses() -> None:
    net = Net()
    pub, plain, _ = _pubsub(net)
    pub.send_text(_publish_text("c", 1, "first"))
    pub.take()
    plain.take()
    for text, code in [
        (_publish_text("c", 1, ""), "malformed_message"),
        (_publish_text("c", 1, "x" * 129), "malformed_message"),
        (_publish_text("_system/x", 1, "r"), "channel_reserved"),
        (_publish_text("", 1, "r"), "invalid_channel"),
    ]:
        pub.send_text(text)
        (reply,) = pub.take()
        assert reply["type"] == "error"
        assert reply["code"] == code
    assert plain.take() == []


def test_a_message_quota_keeps_publishes_on_the_counting_path() -> None:
    net = Net(default_config(limits=Limits(message_quota=3)))
    pub, plain, _ = _pubsub(net)
    for i in range(5):
        pub.send_text(_publish_text("c", i, f"r{i}"))
    replies = pub.take()
    assert [r["type"] for r in replies] == ["ack", "ack", "ack", "error", "error"]
    assert [f["data"] for f in plain.take()] == [0, 1, 2]


def test_unauthorized_channels_never_open_a_fast_path() -> None:
    scoped = sign_hs256(
        {
            "sub": "scoped",
            "exp": NOW + 600,
            "channels": ["demo/*"],
            "permissions": ["publish"],
        },
        SECRET,
        KID,
    )
    net = Net()
    c = RawClient(net, f"/v1?token={scoped}")
    c.take()  # the welcome
    for _ in range(3):
        c.send_text(_publish_text("other", 1, "r"))
        assert c.take()[0]["code"] == "channel_not_authorized"
    assert c.server is not None
    assert c.server.session is not None
    assert c.server.session._routes == {}


# --- the client ----------------------------------------------------------------------------


def _general_events(h: Harness, text: str) -> list[Any]:
    """What the general path makes of a frame (the client's pending requests permitting)."""
    try:
        frame = decode_server_frame(text)
    except MalformedFrameError:
        return ["dropped"]
    if type(frame).__name__ == "MessageFrame":
        return [Message(frame.channel, frame.sender, frame.data, frame.from_metadata)]
    if type(frame).__name__ == "AckFrame":
        return [RequestCompleted(frame.request_id)]
    return ["other"]


MESSAGE_TEXTS = [
    '{"type":"message","channel":"c","from":"p","data":{"a":[1,2]}}',
    '{"type":"message","channel":"c","from":"p","data":null,"fromMetadata":{"r":1}}',
    '{"type":"message","channel":"c","from":"p","data":1,"fromMetadata":[1]}',
    '{"type":"message","channel":"c","from":"p"}',
    '{"type":"message","channel":1,"from":"p","data":1}',
    '{"type":"message","channel":"c","from":"p","data":1,"type":"ack"}',
    '{"type":"message","channel":"c","from":"p","data":NaN}',
    '{"type":"message","channel":"d\\u00e9mo","from":"p","data":"\\ud83d\\ude00","x":1}',
]


@pytest.mark.parametrize("text", MESSAGE_TEXTS)
def test_client_message_fast_path_matches_the_general_path(text: str) -> None:
    h = Harness()
    h.connect()
    h.events.clear()
    fast = _message_event(text)
    general = _general_events(h, text)
    if fast is not None:
        assert [fast] == general
    h.server_send(text)
    got = [e for e in h.events if isinstance(e, Message)]
    if general and isinstance(general[0], Message):
        assert got == general
    else:
        assert got == []


@pytest.mark.parametrize(
    "rid",
    ["plain-id", 'quo"te', "back\\slash", "tab\there", "\u00e9", "\u2028", "x" * 200],
)
def test_client_ack_fast_path_matches_the_general_path(rid: str) -> None:
    h = Harness()
    h.connect()
    sent = h.client.publish("c", 1, h.now)
    pending = h.client._pending.pop(sent)
    h.client._pending[rid] = pending  # as if the request had had this id
    h.events.clear()
    h.actions.clear()
    h.server_send('{"type":"ack","requestId":' + json.dumps(rid, ensure_ascii=False) + "}")
    assert h.client.pending_requests == 0
    assert h.of(RequestCompleted) == [RequestCompleted(rid)]


def test_client_ack_with_a_raw_control_character_is_dropped_as_before() -> None:
    h = Harness()
    h.connect()
    sent = h.client.publish("c", 1, h.now)
    h.events.clear()
    h.actions.clear()
    h.server_send('{"type":"ack","requestId":"' + sent[:5] + "\x01" + '"}')
    assert h.client.pending_requests == 1  # not JSON: the general path drops it
    assert not h.of(RequestCompleted)


def test_client_publish_writes_exactly_the_publish_frame() -> None:
    h = Harness()
    h.connect()
    for channel, data in [("c", {"a": 1}), ("d\u00e9mo/\u2713", ["x", None, 1.5]), ("c", "s")]:
        rid = h.client.publish(channel, data, h.now)
        h.pump()
        assert h.sent()[-1] == {
            "type": "publish",
            "channel": channel,
            "data": data,
            "requestId": rid,
        }
        assert h.servers[0].texts[-1] == PublishFrame(channel, data, rid).encode()
