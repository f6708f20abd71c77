"""Every vector of PROTOCOL §10 (tests/protocol-vectors.json) against the core."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from metered_realtime.core import (
    ClientConfig,
    Connected,
    Disconnected,
    FrameDropped,
    GoingAway,
    IceServerConfig,
    ReconnectOptions,
    ReconnectScheduled,
    RequestCompleted,
    RequestFailed,
    ServerError,
    ServerRequestError,
)
from metered_realtime.core import events as core_events
from metered_realtime.core.errors import FrameRejected
from metered_realtime.core.frames import (
    PingFrame,
    PublishFrame,
    SendFrame,
    SubscribeFrame,
    UnsubscribeFrame,
    decode_client_frame,
    decode_server_frame,
)
from metered_realtime.core.jwt import TokenRejected, sign_hs256, verify_hs256
from metered_realtime.core.reconnect import PEER_FATAL_CLOSE_CODES, Backoff, close_code_name
from metered_realtime.core.validation import build_url, match_pattern
from tests.helpers import VECTORS, Harness, ScriptedRandom, vector

# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS["urls"], ids=lambda v: v["id"])
def test_url_vectors(v: dict[str, Any]) -> None:
    inp = v["input"]
    if v["expect"]["accept"]:
        url = build_url(inp["base"], key=inp.get("key"), token=inp.get("token"))
        assert url == v["expect"]["url"]
    else:
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies by cause
            build_url(inp["base"], key=inp.get("key", "pk_x"))
        with pytest.raises(ValueError):  # noqa: PT011
            ClientConfig(url=inp["base"], api_key="pk_x")


def test_url_reaches_the_wire() -> None:
    """The client puts the encoded credential in the upgrade request target (U-2)."""
    h = Harness(ClientConfig(url="ws://127.0.0.1:8787", api_key="pk_test_9f+Z/q="))
    h.connect()
    assert h.servers[0].target == "/v1?key=pk_test_9f%2BZ%2Fq%3D"


# --- JWT --------------------------------------------------------------------------------

SECRETS = {VECTORS["jwt_token"]["kid"]: VECTORS["jwt_token"]["secret"]}


def _token_for(v: dict[str, Any]) -> str:
    base = VECTORS["jwt_token"]
    token: str = base["token"]
    mutation = v["token_mutation"]
    if mutation is None:
        return token
    if mutation["kind"] == "signature_last_char_replaced":
        assert token.endswith(mutation["from"])
        return token[:-1] + mutation["to"]
    assert mutation["kind"] == "header_kid"
    claims = json.loads(base["claims"])
    return sign_hs256(claims, base["secret"], mutation["kid"])


def test_jwt_token_is_reproduced_by_sign() -> None:
    base = VECTORS["jwt_token"]
    header, claims = json.loads(base["header"]), json.loads(base["claims"])
    assert sign_hs256(claims, base["secret"], header["kid"]) == base["token"]


@pytest.mark.parametrize("v", VECTORS["jwt"], ids=lambda v: v["id"])
def test_jwt_vectors(v: dict[str, Any]) -> None:
    token, expect = _token_for(v), v["expect"]
    if not expect["accept"]:
        with pytest.raises(TokenRejected) as info:
            verify_hs256(token, SECRETS, v["now"])
        assert info.value.close_code == expect["close"]
        assert token not in str(info.value)
        return
    claims = verify_hs256(token, SECRETS, v["now"])
    if "welcome" in expect:
        assert claims.sub == expect["welcome"]["peerId"]
        assert claims.exp == expect["welcome"]["expiresAt"]
        assert claims.metadata == expect["welcome"]["metadata"]
        assert claims.exp - 0.25 == expect["forced_close"]["at"]
    for sub in expect.get("subscribe", []):
        allowed = any(match_pattern(p, sub["channel"]) for p in claims.channels)
        assert allowed == (sub["reply"] == "ack"), sub


def test_jwt_non_canonical_signature_rejected() -> None:
    token = VECTORS["jwt_token"]["token"]
    for last in "NOP":
        with pytest.raises(TokenRejected):
            verify_hs256(token[:-1] + last, SECRETS, 1767225660)


# --- client frames ----------------------------------------------------------------------


def _frame_for(v: dict[str, Any]) -> Any:
    op, inp = v["op"], v["inputs"]
    rid = inp.get("requestId")
    if op == "subscribe":
        return SubscribeFrame(inp["channel"], rid, inp.get("includeSenderMetadata", False))
    if op == "unsubscribe":
        return UnsubscribeFrame(inp["channel"], rid)
    if op == "publish":
        return PublishFrame(inp["channel"], inp["data"], rid)
    if op == "send":
        return SendFrame(inp["to"], inp["data"], rid)
    assert op == "ping"
    return PingFrame()


@pytest.mark.parametrize("v", VECTORS["client_frames"], ids=lambda v: v["id"])
def test_client_frame_bytes(v: dict[str, Any]) -> None:
    frame = _frame_for(v)
    assert frame.encode() == v["bytes"]
    assert json.loads(v["bytes"]) == {"type": v["op"], **v["inputs"]}
    assert decode_client_frame(v["bytes"]) == frame


@pytest.mark.parametrize(
    "v", [v for v in VECTORS["client_frames"] if v["op"] != "ping"], ids=lambda v: v["id"]
)
def test_client_machine_emits_vector_bytes(v: dict[str, Any]) -> None:
    """The connection machine itself writes the vector's exact text (request id injected)."""
    h = Harness(rng=ScriptedRandom([v["inputs"]["requestId"]]))
    h.connect()
    inp, c = v["inputs"], h.client
    if v["op"] == "subscribe":
        c.subscribe(
            inp["channel"], h.now, include_sender_metadata=bool(inp.get("includeSenderMetadata"))
        )
    elif v["op"] == "unsubscribe":
        c.unsubscribe(inp["channel"], h.now)
    elif v["op"] == "publish":
        c.publish(inp["channel"], inp["data"], h.now)
    else:
        c.send(inp["to"], inp["data"], h.now)
    h.pump()
    assert h.servers[0].texts[-1] == v["bytes"]


def test_ping_vector_is_the_keepalive() -> None:
    h = Harness()
    h.connect()
    h.advance(20.0)
    assert h.servers[0].texts[-1] == vector("TV-08")["bytes"]


def test_never_sends_include_sender_metadata_false() -> None:
    assert "includeSenderMetadata" not in SubscribeFrame("a", "r", False).encode()


# --- server frames ----------------------------------------------------------------------


def _fields_match(event: Any, fields: dict[str, Any]) -> None:
    for name, expected in fields.items():
        actual = getattr(event, name)
        if name == "ice_servers" and expected is not None:
            expected = tuple(IceServerConfig(**e) for e in expected)
        assert actual == expected, name


def _expect_events(h: Harness, expect: dict[str, Any]) -> None:
    for spec in expect.get("events", []):
        if spec["layer"] != "SignallingClient":
            continue  # MeteredPeer-layer expectations are covered with MeteredPeer
        kind = getattr(core_events, spec["event"])
        found = h.of(kind)
        assert found, spec
        _fields_match(found[-1], spec.get("fields", {}))
    for spec in expect.get("no_events", []):
        if spec["layer"] == "SignallingClient":
            assert not h.of(getattr(core_events, spec["event"]))


def _run_server_vector(v: dict[str, Any]) -> Harness:
    """Connect, create the request the vector answers (if any), deliver the frame."""
    expect = v["expect"]
    if v["type"] == "welcome":
        h = Harness(auto_welcome=False)
        h.connect()
        h.events.clear()
        h.server_send(v["text"])
        return h
    request = expect.get("request")
    ids = [vector(request["id"])["inputs"]["requestId"]] if request else []
    h = Harness(rng=ScriptedRandom(ids))
    h.connect()
    if request:
        src = vector(request["id"])
        inp = src["inputs"]
        if src["op"] == "subscribe":
            h.client.subscribe(inp["channel"], h.now)
        else:
            h.client.send(inp["to"], inp["data"], h.now)
        h.pump()
    h.events.clear()
    h.actions.clear()
    h.server_send(v["text"])
    if "then_close" in expect:
        h.server_close(expect["then_close"], "going away")
    return h


@pytest.mark.parametrize("v", VECTORS["server_frames"], ids=lambda v: v["id"])
def test_server_frame_vectors(v: dict[str, Any]) -> None:
    frame = decode_server_frame(v["text"])
    assert frame.encode() == v["text"]  # our server emits exactly these texts
    h = _run_server_vector(v)
    expect = v["expect"]
    assert not h.of(FrameDropped)
    _expect_events(h, expect)
    if expect.get("silent"):
        assert h.events == []
    request = expect.get("request")
    if request:
        rid = vector(request["id"])["inputs"]["requestId"]
        if request["outcome"] == "ack":
            assert h.of(RequestCompleted) == [RequestCompleted(rid)]
        else:
            (failed,) = h.of(RequestFailed)
            assert isinstance(failed.error, ServerRequestError)
            assert failed.error.code == request["code"]
            assert failed.error.request_id == rid


@pytest.mark.parametrize("v", VECTORS["robustness"], ids=lambda v: v["id"])
def test_robustness_vectors(v: dict[str, Any]) -> None:
    h = _run_server_vector(v)
    expect = v["expect"]
    assert h.client.state == "connected"  # the connection always stays up
    if not expect["accept"]:
        assert len(h.of(FrameDropped)) == 1
        assert h.events == []
        return
    assert not h.of(FrameDropped)
    _expect_events(h, expect)
    if "ours" in expect:
        assert h.of(GoingAway)[-1].retry_after_ms == expect["ours"]["retry_after_ms"]
    if expect.get("reconnect_delay_unaffected"):
        h.server_close(1001)
        (sched,) = h.of(ReconnectScheduled)
        assert 0.4 <= sched.delay < 0.6
    if "parsed_joined" in expect:
        frame = decode_server_frame(v["text"])
        assert [
            {"peerId": p.peer_id, **({"metadata": p.metadata} if p.metadata else {})}
            for p in frame.joined  # type: ignore[union-attr]
        ] == expect["parsed_joined"]
    request = expect.get("request")
    if request:
        (failed,) = h.of(RequestFailed)
        assert failed.error.code == request["code"]
        assert h.now == 1000.0  # immediately, no timer involved


# --- close codes and backoff ------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS["close_codes"], ids=lambda v: str(v["code"]))
def test_close_code_vectors(v: dict[str, Any]) -> None:
    token_mode = bool(v.get("token_provider_reinvoked"))
    config = (
        ClientConfig(url="ws://127.0.0.1:8787", use_token_provider=True)
        if token_mode
        else ClientConfig(url="ws://127.0.0.1:8787", api_key="pk_test")
    )
    h = Harness(config)
    h.connect()
    assert isinstance(h.events[-1], Connected)
    if v["by"] == "client":
        h.advance(60.0)  # the inactivity watchdog (no inbound frame for 60 s)
        assert h.servers[0].close_code == v["code"]
    else:
        if v.get("after"):
            h.server_send(vector(v["after"])["text"])
        h.server_close(v["code"], "bye")
    (disc,) = h.of(Disconnected)
    assert disc.code == v["code"]
    assert disc.will_reconnect is v["will_reconnect"]
    fatal = v["fatal_error"]
    if fatal is None:
        assert v["code"] not in PEER_FATAL_CLOSE_CODES or v["will_reconnect"]
    else:
        assert close_code_name(v["code"]) == fatal
    nd = v["next_delay"]
    if nd is None:
        assert not h.of(ReconnectScheduled)
        assert h.client.state == "closed"
        return
    (sched,) = h.of(ReconnectScheduled)
    lo, hi = (
        (nd["ours"]["min_s"], nd["ours"]["max_s"]) if "ours" in nd else (nd["min_s"], nd["max_s"])
    )
    assert lo <= sched.delay < hi + 1e-9
    needed_before = len(h.of(core_events.CredentialNeeded))
    h.advance(sched.delay)
    assert h.client.state == "connected"
    if token_mode:
        assert len(h.of(core_events.CredentialNeeded)) == needed_before + 1


class _Extreme:
    """An rng pinned to the low or high end of [0, 1)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value

    def getrandbits(self, k: int) -> int:
        return 0


@pytest.mark.parametrize("v", VECTORS["backoff"], ids=lambda v: str(v["attempt"]))
def test_backoff_vectors(v: dict[str, Any]) -> None:
    if v.get("give_up"):
        b = Backoff(ReconnectOptions(), _Extreme(0.5))
        for _ in range(v["attempt"] - 1):
            b.next_delay()
        assert b.exhausted()
        return
    last = v.get("through", v["attempt"])
    for attempt in {v["attempt"], last}:
        for u, bound in ((0.0, v["min_s"]), (math.nextafter(1.0, 0.0), v["max_s"])):
            b = Backoff(ReconnectOptions(), _Extreme(u))
            for _ in range(attempt):
                delay = b.next_delay()
            assert delay == pytest.approx(bound, rel=1e-9)
            assert v["min_s"] <= delay < v["max_s"] or delay == pytest.approx(v["max_s"])
        b = Backoff(ReconnectOptions(), _Extreme(0.5))
        for _ in range(attempt):
            delay = b.next_delay()
        assert delay == pytest.approx(v["base_s"])


def test_backoff_give_up_reaches_the_client() -> None:
    """Attempt 101 never happens: Disconnected(will_reconnect=False), state closed."""
    h = Harness(
        ClientConfig(
            url="ws://127.0.0.1:8787", api_key="pk", reconnect=ReconnectOptions(max_attempts=3)
        )
    )
    h.connect()
    h.refuse_connect = True
    h.server_close(1001)
    h.advance(1000)
    assert len(h.of(ReconnectScheduled)) == 3
    final = h.of(Disconnected)[-1]
    assert final.will_reconnect is False
    assert h.client.state == "closed"


def test_4010_floor_is_a_true_floor() -> None:
    for u in (0.0, 0.25, math.nextafter(1.0, 0.0)):
        b = Backoff(ReconnectOptions(), _Extreme(u))
        b.note_close(4010)
        assert 30.0 <= b.next_delay() < 36.0
        assert b.next_delay() < 30.0  # the floor is consumed by one delay


# --- channel patterns -------------------------------------------------------------------


@pytest.mark.parametrize(
    "v", VECTORS["channel_patterns"], ids=lambda v: f"{v['pattern']}|{v['channel']}"
)
def test_channel_pattern_vectors(v: dict[str, Any]) -> None:
    if v["pattern"] is None:
        with pytest.raises(FrameRejected) as info:
            decode_client_frame(SubscribeFrame(v["channel"], "r1").encode())
        assert info.value.code == v["error"]
        assert info.value.request_id == "r1"
        return
    assert match_pattern(v["pattern"], v["channel"]) is v["match"]


def test_uncorrelated_error_is_server_error() -> None:
    h = Harness()
    h.connect()
    h.server_send(vector("TV-18")["text"])
    assert h.of(ServerError) == [
        ServerError("over_message_quota", "message quota exhausted for this period", None)
    ]
