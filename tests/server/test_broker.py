"""The broker and the HTTP front door, in memory: exact frames, close codes and ordering."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from metered_realtime.core import Connected, Direct, Message, Presence, PresencePeer
from metered_realtime.core.broker import Limits, PublishableKey, SigningKey
from metered_realtime.core.jwt import sign_hs256
from tests.helpers import VECTORS, vector
from tests.wire import DEV_KEY, KID, NOW, SECRET, Net, RawClient, default_config

TOKEN = VECTORS["jwt_token"]["token"]
CLAIMS = json.loads(VECTORS["jwt_token"]["claims"])


def token(**claims: Any) -> str:
    body = {
        "sub": "p1",
        "exp": NOW + 600,
        "channels": ["**"],
        "permissions": ["subscribe", "publish", "presence", "send"],
    }
    body.update(claims)
    return sign_hs256({k: v for k, v in body.items() if v is not None}, SECRET, KID)


def raw_token(net: Net, tok: str) -> RawClient:
    return RawClient(net, f"/v1?token={tok}")


def only(frames: list[dict[str, Any]], ftype: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == ftype]


# --- connecting -------------------------------------------------------------------------


def test_welcome_for_a_publishable_key_is_the_vector_shape() -> None:
    net = Net()
    c = RawClient(net)
    assert c.accepted
    (text,) = c.texts
    assert text == vector("TV-14")["text"].replace(
        "6a0f3c52-9b1e-4d7a-8c24-5e9f1b3d7a60", c.peer_id
    )
    assert len(c.peer_id) == 36
    assert c.peer_id[14] == "4"
    assert RawClient(net).peer_id != c.peer_id


def test_jwt_welcome_is_tv15_byte_for_byte_and_expires_with_4002() -> None:
    net = Net(now=1767225660)
    c = raw_token(net, TOKEN)
    assert c.texts == [vector("TV-15")["text"]]
    net.advance(1767229199.75 - net.now - 0.01)
    assert c.close_code is None
    net.advance(0.02)
    assert c.close_code == 4002


@pytest.mark.parametrize("v", VECTORS["jwt"], ids=lambda v: v["id"])
def test_jwt_vectors_on_the_server(v: dict[str, Any]) -> None:
    net = Net(now=v["now"])
    tok = TOKEN
    mutation = v["token_mutation"]
    if mutation and mutation["kind"] == "signature_last_char_replaced":
        tok = tok[:-1] + mutation["to"]
    elif mutation:
        tok = sign_hs256(CLAIMS, SECRET, mutation["kid"])
    c = raw_token(net, tok)
    expect = v["expect"]
    if not expect["accept"]:
        assert c.accepted  # auth failures are close codes after the upgrade (§2.2)
        assert c.texts == []
        assert c.close_code == expect["close"]
        return
    for sub in expect.get("subscribe", []):
        c.take()
        c.send_json({"type": "subscribe", "channel": sub["channel"], "requestId": "r"})
        reply = c.take()[0]
        if sub["reply"] == "ack":
            assert reply == {"type": "ack", "requestId": "r"}
        else:
            assert reply["type"] == "error"
            assert reply["code"] == sub["code"]
            assert reply["requestId"] == "r"


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "tok",
    [
        _b64({"alg": "none", "typ": "JWT", "kid": KID})
        + "."
        + _b64({"sub": "x", "exp": NOW + 60})
        + ".",
        _b64({"alg": "RS256", "kid": KID}) + "." + _b64({"sub": "x"}) + "." + _b64({"s": 1}),
        "not-a-jwt",
        token(sub="bad sub\x01"),
        token(exp=NOW + 86_400 * 2),
        token(channels=[]),
        token(permissions=["publish", "admin"]),
        token(peerMetadata={"x": "y" * 5000}),
        token(metadata=[1, 2]),
        token(nbf=NOW + 120),
    ],
    ids=[
        "alg-none",
        "rs256",
        "garbage",
        "sub",
        "exp-horizon",
        "channels",
        "perm",
        "peermeta",
        "meta",
        "nbf",
    ],
)
def test_bad_tokens_close_4001_without_welcome(tok: str) -> None:
    net = Net()
    c = raw_token(net, tok)
    assert c.accepted
    assert c.texts == []
    assert c.close_code == 4001
    assert tok not in json.dumps(net.logs)


@pytest.mark.parametrize(
    "target",
    ["/v1", f"/v1?key={DEV_KEY}&token={TOKEN}", "/v1?key=pk_unknown", "/v1?key="],
    ids=["none", "both", "unknown", "empty"],
)
def test_credential_problems_close_4001(target: str) -> None:
    c = RawClient(Net(), target)
    assert c.close_code == 4001
    assert c.texts == []


def test_disabled_key_and_origin_rules() -> None:
    config = default_config(
        keys=(
            PublishableKey("pk_off", enabled=False),
            PublishableKey("pk_web", allowed_origins=("https://app.example",)),
        )
    )
    net = Net(config)
    assert RawClient(net, "/v1?key=pk_off").close_code == 4001
    assert RawClient(net, "/v1?key=pk_web", [("Origin", "https://evil.example")]).close_code == 4001
    assert RawClient(net, "/v1?key=pk_web", [("Origin", "https://app.example")]).welcome
    assert RawClient(net, "/v1?key=pk_web").welcome  # no Origin: a non-browser client


def test_account_gates_4012_and_4010() -> None:
    assert RawClient(Net(default_config(suspended=True))).close_code == 4012
    net = Net(default_config(limits=Limits(max_concurrent_connections=2)))
    a, b, c = RawClient(net), RawClient(net), RawClient(net)
    assert a.welcome
    assert b.welcome
    assert c.close_code == 4010
    a.close()
    assert RawClient(net).welcome


def test_ice_servers_in_welcome() -> None:
    stun = ({"urls": "stun:127.0.0.1:3478"},)
    net = Net(default_config(ice_servers=stun))
    welcome = RawClient(net).welcome
    assert welcome is not None
    assert welcome["metadata"] == {"iceServers": [dict(stun[0])]}
    own = raw_token(net, token(metadata={"iceServers": [{"urls": "turn:127.0.0.1:3478"}]}))
    assert own.welcome is not None
    assert own.welcome["metadata"] == {"iceServers": [{"urls": "turn:127.0.0.1:3478"}]}
    plain = raw_token(net, token(metadata={"room": 1}))
    assert plain.welcome is not None
    assert plain.welcome["metadata"] == {"room": 1, "iceServers": [dict(stun[0])]}


# --- ops --------------------------------------------------------------------------------


def test_subscribe_ack_then_snapshot_then_delta_to_others() -> None:
    net = Net()
    a, b = RawClient(net), RawClient(net)
    a.send_json({"type": "subscribe", "channel": "demo/lobby", "requestId": "a1"})
    assert a.take()[1:] == [
        {"type": "ack", "requestId": "a1"},
        {"type": "presence", "channel": "demo/lobby", "joined": [], "left": []},
    ]
    b.send_json({"type": "subscribe", "channel": "demo/lobby", "requestId": "b1"})
    assert b.take()[1:] == [
        {"type": "ack", "requestId": "b1"},
        {
            "type": "presence",
            "channel": "demo/lobby",
            "joined": [{"peerId": a.peer_id}],
            "left": [],
        },
    ]
    assert a.take() == [
        {"type": "presence", "channel": "demo/lobby", "joined": [{"peerId": b.peer_id}], "left": []}
    ]
    # repeat subscribe: ack + snapshot again, no second delta
    b.send_json({"type": "subscribe", "channel": "demo/lobby", "requestId": "b2"})
    assert [f["type"] for f in b.take()] == ["ack", "presence"]
    assert a.take() == []
    # unsubscribe: ack; a sees left; b gets no presence; unsubscribing again is still ack
    b.send_json({"type": "unsubscribe", "channel": "demo/lobby", "requestId": "b3"})
    assert b.take() == [{"type": "ack", "requestId": "b3"}]
    assert a.take() == [
        {"type": "presence", "channel": "demo/lobby", "joined": [], "left": [{"peerId": b.peer_id}]}
    ]
    b.send_json({"type": "unsubscribe", "channel": "demo/lobby", "requestId": "b4"})
    assert b.take() == [{"type": "ack", "requestId": "b4"}]


def test_publish_fans_out_to_others_only_with_verbatim_data() -> None:
    net = Net()
    a, b, c = RawClient(net), RawClient(net), RawClient(net)
    for r in (a, b):
        r.send_json({"type": "subscribe", "channel": "demo/lobby", "requestId": "s"})
    for r in (a, b, c):
        r.take()
    for v in ("TV-04", "TV-05", "TV-06"):
        c.send_text(vector(v)["bytes"])  # the publisher need not be subscribed
        assert c.take() == [{"type": "ack", "requestId": vector(v)["inputs"]["requestId"]}]
        expected = {
            "type": "message",
            "channel": vector(v)["inputs"]["channel"],
            "from": c.peer_id,
            "data": vector(v)["inputs"]["data"],
        }
        if expected["channel"] == "demo/lobby":
            assert a.take() == [expected]
            assert b.take() == [expected]
    a.send_json({"type": "publish", "channel": "demo/lobby", "data": {"x": 1}, "requestId": "p"})
    assert a.take() == [{"type": "ack", "requestId": "p"}]  # never echoed to the publisher
    assert b.take()[0]["from"] == a.peer_id
    # JS-style raw UTF-8 is accepted and fans out as the same string
    a.send_text(
        '{"type":"publish","channel":"demo/lobby","data":{"text":"héllo ✓"},"requestId":"u"}'
    )
    assert b.take()[0]["data"] == {"text": "héllo ✓"}


def test_sender_metadata_rules() -> None:
    net = Net()
    bot = raw_token(net, token(sub="bot", peerMetadata={"role": "bot"}))
    opt_in = raw_token(net, token(sub="opt-in"))
    plain = RawClient(net)
    opt_in.send_json(
        {"type": "subscribe", "channel": "c", "requestId": "1", "includeSenderMetadata": True}
    )
    plain.send_json(
        {"type": "subscribe", "channel": "c", "requestId": "1", "includeSenderMetadata": "yes"}
    )
    bot.send_json({"type": "subscribe", "channel": "c", "requestId": "1"})
    assert only(opt_in.frames(), "presence")[-1]["joined"] == [
        {"peerId": "bot", "metadata": {"role": "bot"}}
    ]
    for r in (bot, opt_in, plain):
        r.take()
    bot.send_json({"type": "publish", "channel": "c", "data": "hi", "requestId": "2"})
    assert opt_in.take() == [
        {
            "type": "message",
            "channel": "c",
            "from": "bot",
            "data": "hi",
            "fromMetadata": {"role": "bot"},
        }
    ]
    assert plain.take() == [{"type": "message", "channel": "c", "from": "bot", "data": "hi"}]
    bot.send_json({"type": "send", "to": plain.peer_id, "data": None, "requestId": "3"})
    assert plain.take() == [
        {"type": "direct", "from": "bot", "data": None, "fromMetadata": {"role": "bot"}}
    ]


def test_send_routes_to_every_connection_of_the_target() -> None:
    net = Net()
    a = raw_token(net, token(sub="alice"))
    a2 = raw_token(net, token(sub="alice"))
    b = RawClient(net)
    for r in (a, a2, b):
        r.take()
    b.send_text(vector("TV-07")["bytes"].replace("peer-basalt", "alice"))
    assert b.take() == [{"type": "ack", "requestId": vector("TV-07")["inputs"]["requestId"]}]
    expected = [{"type": "direct", "from": b.peer_id, "data": {"op": "challenge", "n": 42}}]
    assert a.take() == expected
    assert a2.take() == expected
    b.send_json({"type": "send", "to": "nobody", "data": 1, "requestId": "x"})
    assert b.take()[0]["code"] == "peer_not_found"
    a.send_json({"type": "send", "to": "alice", "data": 1, "requestId": "y"})
    assert a.take() == [{"type": "ack", "requestId": "y"}]  # the other alice connection
    assert a2.take()[0]["type"] == "direct"
    lone = raw_token(net, token(sub="lone"))
    lone.take()
    lone.send_json({"type": "send", "to": "lone", "data": 1, "requestId": "z"})
    assert lone.take()[0]["code"] == "peer_not_found"  # only itself


def test_ping_pong() -> None:
    c = RawClient(Net())
    c.take()
    c.send_text('{"type":"ping"}')
    assert c.texts == ['{"type":"pong"}']
    c.send_text('{"type":"ping","requestId":"q"}')
    assert c.take()[-1] == {"type": "pong", "requestId": "q"}


ERROR_CASES = [
    ("not json", "malformed_message", None),
    ("[1,2]", "malformed_message", None),
    ('{"type":7,"requestId":"r"}', "malformed_message", None),
    ('{"channel":"x","requestId":"r"}', "malformed_message", None),
    ('{"type":"teleport","requestId":"r"}', "unknown_type", "r"),
    ('{"type":"teleport","requestId":5}', "unknown_type", None),
    ('{"type":"publish","channel":"c","data":1,"requestId":""}', "malformed_message", None),
    (
        '{"type":"publish","channel":"c","data":1,"requestId":"' + "x" * 129 + '"}',
        "malformed_message",
        None,
    ),
    ('{"type":"subscribe","requestId":"r"}', "invalid_channel", "r"),
    ('{"type":"subscribe","channel":"a\\u0007b","requestId":"r"}', "invalid_channel", "r"),
    ('{"type":"subscribe","channel":"' + "é" * 129 + '","requestId":"r"}', "invalid_channel", "r"),
    ('{"type":"unsubscribe","channel":"","requestId":"r"}', "invalid_channel", "r"),
    ('{"type":"subscribe","channel":"_System/alerts","requestId":"r"}', "channel_reserved", "r"),
    ('{"type":"publish","channel":"_metered/x","data":1,"requestId":"r"}', "channel_reserved", "r"),
    ('{"type":"publish","channel":"c","requestId":"r"}', "missing_data", "r"),
    ('{"type":"send","to":"","data":1,"requestId":"r"}', "invalid_peer_id", "r"),
    ('{"type":"send","to":"p","requestId":"r"}', "missing_data", "r"),
    ('{"type":"publish","channel":"c","data":1e400,"requestId":"r"}', "malformed_message", None),
]


@pytest.mark.parametrize(("text", "code", "rid"), ERROR_CASES)
def test_error_replies_keep_the_connection(text: str, code: str, rid: str | None) -> None:
    net = Net()
    c, other = RawClient(net), RawClient(net)
    c.take()
    c.send_text(text)
    (reply,) = c.take()
    assert reply["type"] == "error"
    assert reply["code"] == code
    assert reply.get("requestId") == rid
    assert c.close_code is None
    c.send_text('{"type":"ping"}')
    assert c.take() == [{"type": "pong"}]
    assert other.close_code is None


def test_unsubscribe_of_a_reserved_channel_is_syntax_only() -> None:
    c = RawClient(Net())
    c.take()
    c.send_json({"type": "unsubscribe", "channel": "_system/x", "requestId": "r"})
    assert c.take() == [{"type": "ack", "requestId": "r"}]


def test_binary_frame_is_malformed_and_the_connection_stays() -> None:
    c = RawClient(Net())
    c.take()
    c.send_bytes(b'{"type":"ping"}')
    assert c.take() == [
        {"type": "error", "code": "malformed_message", "message": "binary frames are not supported"}
    ]
    assert c.binary == []


def test_permissions_and_scope() -> None:
    config = default_config(
        keys=(PublishableKey(DEV_KEY), PublishableKey("pk_ro", actions=frozenset({"subscribe"})))
    )
    net = Net(config)
    ro = RawClient(net, "/v1?key=pk_ro")
    ro.take()
    for frame in (
        {"type": "publish", "channel": "c", "data": 1, "requestId": "r"},
        {"type": "send", "to": "x", "data": 1, "requestId": "r"},
    ):
        ro.send_json(frame)
        assert ro.take() == [
            {
                "type": "error",
                "requestId": "r",
                "code": "action_not_permitted",
                "message": ro.texts[0] if ro.texts else ANY,
            }
        ]
    # no presence permission: subscribe is acked but no presence frames arrive
    ro.send_json({"type": "subscribe", "channel": "c", "requestId": "s"})
    assert ro.take() == [{"type": "ack", "requestId": "s"}]
    scoped = raw_token(net, token(sub="s", channels=["demo/*"]))
    scoped.take()
    scoped.send_json({"type": "publish", "channel": "other/x", "data": 1, "requestId": "r"})
    assert scoped.take()[0]["code"] == "channel_not_authorized"


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY = _Any()


def test_signing_key_scope_intersects_the_token() -> None:
    config = default_config(
        signing_keys=(
            SigningKey(
                KID,
                SECRET,
                channel_patterns=("demo/**",),
                actions=frozenset({"subscribe", "presence"}),
            ),
        )
    )
    net = Net(config)
    c = raw_token(net, token(channels=["**"]))
    c.take()
    c.send_json({"type": "subscribe", "channel": "other", "requestId": "1"})
    c.send_json({"type": "subscribe", "channel": "demo/x", "requestId": "2"})
    c.send_json({"type": "publish", "channel": "demo/x", "data": 1, "requestId": "3"})
    frames = c.take()
    assert frames[0]["code"] == "channel_not_authorized"
    assert frames[1] == {"type": "ack", "requestId": "2"}
    assert frames[-1]["code"] == "action_not_permitted"


def test_close_on_unauthorized_channel_option() -> None:
    net = Net(default_config(close_on_unauthorized_channel=True))
    c = raw_token(net, token(channels=["demo/*"]))
    c.send_json({"type": "subscribe", "channel": "nope", "requestId": "1"})
    assert c.close_code == 4003


def test_channel_limit() -> None:
    c = RawClient(Net())
    for i in range(100):
        c.send_json({"type": "subscribe", "channel": f"c{i}", "requestId": f"{i}"})
    c.take()
    c.send_json({"type": "subscribe", "channel": "c100", "requestId": "x"})
    assert c.take()[0]["code"] == "channel_limit_exceeded"
    c.send_json({"type": "subscribe", "channel": "c5", "requestId": "y"})  # held already: fine
    assert c.take()[0] == {"type": "ack", "requestId": "y"}


# --- limits, liveness, lifecycle --------------------------------------------------------


def test_oversize_frame_closes_1009_and_others_carry_on() -> None:
    net = Net()
    big, other = RawClient(net), RawClient(net)
    other.send_json({"type": "subscribe", "channel": "c", "requestId": "1"})
    big.send_json({"type": "publish", "channel": "c", "data": "x" * 65_600, "requestId": "2"})
    assert big.close_code == 1009
    other.send_json({"type": "ping"})
    assert other.frames()[-1] == {"type": "pong"}
    assert not any(f["type"] == "message" for f in other.frames())


def test_frame_cap_is_configurable_and_counts_bytes() -> None:
    net = Net(default_config(limits=Limits(max_frame_bytes=1000, max_message_size=1000)))
    c = RawClient(net)
    assert c.welcome is not None
    assert c.welcome["maxMessageSize"] == 1000
    c.send_json(
        {"type": "publish", "channel": "c", "data": "é" * 480, "requestId": "1"}
    )  # ~1000 bytes
    assert c.close_code == 1009


def test_rate_limit_closes_4011_when_enabled() -> None:
    net = Net(default_config(limits=Limits(rate_per_second=10, rate_burst=5)))
    c = RawClient(net)
    for _ in range(5):
        c.send_text('{"type":"ping"}')
    assert c.close_code is None
    c.send_text('{"type":"ping"}')
    assert c.close_code == 4011
    d = RawClient(net)  # a new connection has a fresh bucket
    for _ in range(5):
        d.send_text('{"type":"ping"}')
        net.advance(0.1)
    assert d.close_code is None


def test_connect_limit_is_http_429_when_enabled() -> None:
    net = Net(default_config(limits=Limits(connect_attempts_per_ip_per_minute=2)))
    assert RawClient(net).accepted
    assert RawClient(net).accepted
    third = RawClient(net)
    assert not third.accepted
    assert third.status == 429
    net.advance(61)
    assert RawClient(net).accepted


def test_idle_peer_is_dropped_and_leaves_presence() -> None:
    net = Net()
    a, b = RawClient(net), RawClient(net)
    for r in (a, b):
        r.send_json({"type": "subscribe", "channel": "c", "requestId": "1"})
    a.take()
    net.raws.remove(b)  # b stops reading and answering: a silent, unresponsive peer
    for _ in range(3):
        net.advance(30)
        a.send_text('{"type":"ping"}')
    assert a.pings >= 2  # protocol-level pings every 30 s
    assert only(a.take(), "presence") == [
        {"type": "presence", "channel": "c", "joined": [], "left": [{"peerId": b.peer_id}]}
    ]


def test_abrupt_drop_leaves_presence_after_everything_it_sent() -> None:
    net = Net()
    a, b = RawClient(net), RawClient(net)
    for r in (a, b):
        r.send_json({"type": "subscribe", "channel": "c", "requestId": "1"})
    a.take()
    b.send_json({"type": "publish", "channel": "c", "data": "last words", "requestId": "2"})
    b.drop()
    frames = a.take()
    assert [f["type"] for f in frames] == ["message", "presence"]
    assert frames[1]["left"] == [{"peerId": b.peer_id}]


def test_kick_closes_4020_over_rest() -> None:
    net = Net()
    victim = raw_token(net, token(sub="victim"))
    watcher = RawClient(net)
    for r in (victim, watcher):
        r.send_json({"type": "subscribe", "channel": "c", "requestId": "1"})
    watcher.take()
    status, body = http(net, "DELETE", "/v1/peers/victim", auth=f"Bearer {KID}:{SECRET}")
    assert (status, body) == (200, {"peerId": "victim", "disconnected": 1})
    assert victim.close_code == 4020
    assert only(watcher.take(), "presence")[-1]["left"] == [{"peerId": "victim"}]
    assert http(net, "DELETE", "/v1/peers/victim", auth=f"Bearer {KID}:{SECRET}")[0] == 404
    assert http(net, "DELETE", "/v1/peers/x", auth=f"Bearer {KID}:wrong")[0] == 401


def test_graceful_shutdown_going_away_then_1001() -> None:
    net = Net()
    c = RawClient(net)
    c.take()
    net.broker.shutdown(net.now)
    net.pump()
    assert c.take() == [{"type": "going_away", "retryAfterMs": 1000}]
    assert c.close_code is None
    net.advance(0.25)
    assert c.close_code == 1001
    assert RawClient(net).close_code == 1001  # no new sessions while shutting down


def test_same_sub_connections_are_ref_counted_in_presence() -> None:
    net = Net()
    watcher = RawClient(net)
    watcher.send_json({"type": "subscribe", "channel": "c", "requestId": "1"})
    one, two = raw_token(net, token(sub="dup")), raw_token(net, token(sub="dup"))
    for r in (one, two):
        r.send_json({"type": "subscribe", "channel": "c", "requestId": "1"})
    one.drop()
    presence = only(watcher.take(), "presence")
    assert [p["joined"] for p in presence] == [[], [{"peerId": "dup"}]]
    two.close()
    assert only(watcher.take(), "presence")[-1]["left"] == [{"peerId": "dup"}]


# --- ordering ---------------------------------------------------------------------------


def test_newcomer_frames_never_overtake_its_joined_delta() -> None:
    """O3/O6: the existing member sees the joined delta before the newcomer's first direct."""
    net = Net()
    old = RawClient(net)
    old.send_json({"type": "subscribe", "channel": "room", "requestId": "1"})
    old.take()
    new = RawClient(net)
    assert new.server is not None
    # the newcomer pipelines its subscribe and an immediate send in one TCP segment
    burst = new.ws.send(_msg({"type": "subscribe", "channel": "room", "requestId": "s"}))
    burst += new.ws.send(
        _msg({"type": "send", "to": old.peer_id, "data": {"offer": 1}, "requestId": "d"})
    )
    new.send_raw(burst)
    got = old.take()
    assert [f["type"] for f in got] == ["presence", "direct"]
    assert got[0]["joined"] == [{"peerId": new.peer_id}]
    assert [f["type"] for f in new.take()[1:]] == ["ack", "presence", "ack"]


def test_concurrent_joins_each_see_a_consistent_roster() -> None:
    net = Net()
    clients = [RawClient(net) for _ in range(20)]
    for c in clients:
        c.send_json({"type": "subscribe", "channel": "room", "requestId": "s"})
    ids = {c.peer_id for c in clients}
    for i, c in enumerate(clients):
        frames = [f for f in c.frames() if f["type"] == "presence"]
        snapshot, deltas = frames[0], frames[1:]
        seen = {p["peerId"] for p in snapshot["joined"]} | {
            p["peerId"] for d in deltas for p in d["joined"]
        }
        assert len(snapshot["joined"]) == i
        assert seen == ids - {c.peer_id}


def test_thousand_subscribers_fan_out() -> None:
    # subscribers without the presence permission: the n² presence traffic of 1,000 joins
    # is not what this test measures
    listen = PublishableKey("pk_listen", actions=frozenset({"subscribe"}))
    net = Net(default_config(keys=(PublishableKey(DEV_KEY), listen)))
    subs = [RawClient(net, "/v1?key=pk_listen") for _ in range(1000)]
    for s in subs:
        s.send_json({"type": "subscribe", "channel": "wide", "requestId": "1"})
    for s in subs:
        s.texts.clear()
    pub = RawClient(net)
    pub.send_json({"type": "publish", "channel": "wide", "data": {"n": 1}, "requestId": "p"})
    assert all(
        s.take() == [{"type": "message", "channel": "wide", "from": pub.peer_id, "data": {"n": 1}}]
        for s in subs
    )


# --- HTTP -------------------------------------------------------------------------------


def _msg(obj: Any) -> Any:
    from wsproto.events import Message as WsMessage

    return WsMessage(data=json.dumps(obj))


def http(
    net: Net, method: str, path: str, body: Any = None, auth: str | None = None
) -> tuple[int, Any]:
    """One HTTP/1.1 request through a ServerConnection; the status and the JSON body."""
    import h11

    from metered_realtime.core.server import ServerConnection

    client = h11.Connection(h11.CLIENT)
    data = b"" if body is None else json.dumps(body).encode()
    headers = [("host", "127.0.0.1"), ("content-length", str(len(data)))]
    if auth:
        headers.append(("authorization", auth))
    conn = ServerConnection(net.broker, "127.0.0.1")
    conn.receive_data(
        client.send(h11.Request(method=method, target=path, headers=headers))
        + client.send(h11.Data(data=data))
        + client.send(h11.EndOfMessage()),
        net.now,
    )
    net.pump()
    client.receive_data(conn.data_to_send())
    response = client.next_event()
    payload = b""
    while True:
        ev = client.next_event()
        if isinstance(ev, h11.Data):
            payload += ev.data
        else:
            break
    assert conn.close_transport
    assert isinstance(response, h11.Response)
    return response.status_code, json.loads(payload) if payload else None


def test_healthz_and_404() -> None:
    net = Net()
    RawClient(net)
    assert http(net, "GET", "/healthz") == (200, {"status": "ok", "connections": 1})
    from metered_realtime.core.server import ServerConnection

    conn = ServerConnection(net.broker, "127.0.0.1")
    conn.receive_data(b"GET /demo HTTP/1.1\r\nhost: x\r\n\r\n", net.now)
    request = conn.next_request()  # unrouted: queued for the driver
    assert request is not None
    assert (request.method, request.path) == ("GET", "/demo")
    conn.respond(200, b"<html></html>", "text/html")
    assert conn.data_to_send().startswith(b"HTTP/1.1 200 ")
    assert conn.close_transport
    c = RawClient(net, "/v2?key=pk_dev_local")
    assert c.status == 404


def test_rest_token_mint_is_usable() -> None:
    net = Net()
    status, body = http(
        net,
        "POST",
        "/v1/tokens",
        {
            "peerId": "minted",
            "channels": ["demo/*"],
            "permissions": ["subscribe"],
            "peerMetadata": {"n": 1},
        },
        auth=f"Bearer {KID}:{SECRET}",
    )
    assert status == 200
    assert body["expiresAt"] == int(NOW) + 3600
    c = raw_token(net, body["token"])
    assert c.peer_id == "minted"
    assert (
        http(
            net,
            "POST",
            "/v1/tokens",
            {"peerId": "x", "channels": []},
            auth=f"Bearer {KID}:{SECRET}",
        )[0]
        == 400
    )
    assert (
        http(
            net, "POST", "/v1/tokens", {"peerId": "x", "channels": ["a"]}, auth="Bearer nope:nope"
        )[0]
        == 401
    )
    assert http(net, "GET", "/v1/tokens")[0] == 405


# --- core clients against the broker ----------------------------------------------------


def test_core_clients_pubsub_and_presence_end_to_end() -> None:
    net = Net()
    a, b = net.client(), net.client()
    a.conn.subscribe("room", net.now)
    net.pump()
    b.conn.subscribe("room", net.now, include_sender_metadata=True)
    net.pump()
    a.conn.publish("room", {"hi": 1}, net.now)
    b.conn.send(a.peer_id, [1, 2], net.now)
    net.pump()
    assert b.of(Message) == [Message("room", a.peer_id, {"hi": 1}, None)]
    assert a.of(Direct) == [Direct(b.peer_id, [1, 2], None)]
    assert a.of(Presence)[-1] == Presence("room", (PresencePeer(b.peer_id),), ())
    assert len(a.of(Connected)) == 1


def test_reconnect_resubscribes_without_duplicates() -> None:
    net = Net()
    watcher = net.client()
    watcher.conn.subscribe("room", net.now)
    jwt = net.client(api_key=None, tokens=[token(sub="stable"), token(sub="stable")])
    jwt.conn.subscribe("room", net.now)
    net.pump()
    assert jwt.server is not None
    jwt.server.connection_lost(net.now)  # the server side sees the socket die
    jwt.server = None
    jwt.conn.connection_lost(net.now)
    net.pump()
    net.advance(1.0)
    assert jwt.conn.state == "connected"
    net.pump()
    room = net.broker.channels["room"]
    assert sorted(s.peer_id or "" for s in room.sessions) == sorted([watcher.peer_id, "stable"])
    joined = [p.peer_id for ev in watcher.of(Presence) for p in ev.joined]
    assert joined.count("stable") == 2  # left on the drop, joined again on the replay


def test_no_credential_reaches_the_logs() -> None:
    config = replace(default_config(), keys=(PublishableKey("pk_secret_key_value"),))
    net = Net(config)
    RawClient(net, "/v1?key=pk_secret_key_value").close()
    RawClient(net, "/v1?key=pk_wrong_secret_value")
    raw_token(net, TOKEN)
    raw_token(net, token(sub="ok")).close()
    http(
        net, "POST", "/v1/tokens", {"peerId": "x", "channels": ["a"]}, auth=f"Bearer {KID}:{SECRET}"
    )
    text = json.dumps(net.logs)
    assert net.logs
    for secret in ("pk_secret_key_value", "pk_wrong_secret_value", SECRET, TOKEN[:40], "eyJ"):
        assert secret not in text
