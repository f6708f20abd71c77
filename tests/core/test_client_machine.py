"""Behaviour of the ``ClientConnection`` machine (PROTOCOL §2.4-2.7, §3.1, §4, §8.1, §11.4).

Every test drives the sans-IO core through :class:`tests.helpers.Harness` (scripted wsproto
servers, fake clock) and asserts on what a real driver would observe: state, events, actions,
bytes on the wire and armed timers.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from typing import Any

import pytest
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong
from wsproto.events import Message as WsMessage
from wsproto.frame_protocol import CloseReason

from metered_realtime.core import (
    AckTimeoutError,
    ClientConfig,
    CloseTransport,
    Connected,
    ConnectFailed,
    CredentialNeeded,
    Direct,
    Disconnected,
    DisconnectedError,
    FrameDropped,
    GoingAway,
    LocalProtocolError,
    Message,
    NotConnectedError,
    OpenTransport,
    OversizedPayloadError,
    Presence,
    ReconnectOptions,
    ReconnectScheduled,
    RequestCompleted,
    RequestFailed,
    ServerError,
    ServerRequestError,
    SignallingConnectError,
    StateChange,
    TokenProviderError,
)
from tests.helpers import Harness, ScriptedServer

URL = "ws://127.0.0.1:8787"
MIB = 1_048_576

# --- helpers ----------------------------------------------------------------------------


def make(
    *,
    auto_welcome: bool = True,
    tokens: Sequence[str | BaseException] | None = None,
    seed: int = 1,
    **overrides: Any,
) -> Harness:
    """A harness around a client with the given ``ClientConfig`` overrides."""
    if tokens is not None:
        config = ClientConfig(url=URL, use_token_provider=True, **overrides)
        return Harness(config, rng=random.Random(seed), auto_welcome=auto_welcome, tokens=tokens)
    overrides.setdefault("api_key", "pk_test")
    config = ClientConfig(url=URL, **overrides)
    return Harness(config, rng=random.Random(seed), auto_welcome=auto_welcome)


def connected(**overrides: Any) -> Harness:
    """A harness whose client is connected (first welcome received), event lists cleared."""
    h = make(**overrides)
    h.connect()
    assert h.client.state == "connected"
    clear(h)
    return h


def clear(h: Harness) -> None:
    h.events.clear()
    h.actions.clear()


def srv(h: Harness) -> ScriptedServer:
    assert h.server is not None
    return h.server


def transitions(h: Harness) -> list[tuple[str, str]]:
    return [(e.from_, e.to) for e in h.of(StateChange)]


def client_frames(server: ScriptedServer, type_: str | None = None) -> list[dict[str, Any]]:
    frames = server.frames()
    return frames if type_ is None else [f for f in frames if f["type"] == type_]


def welcome(peer_id: str = "peer-w", max_message_size: int = 65_536) -> str:
    return (
        f'{{"type":"welcome","peerId":"{peer_id}","expiresAt":null,'
        f'"serverTime":1767225660,"maxMessageSize":{max_message_size}}}'
    )


def ack(rid: str) -> str:
    return json.dumps({"type": "ack", "requestId": rid})


def error(rid: str | None, code: str, message: str | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code}
    if rid is not None:
        frame["requestId"] = rid
    if message is not None:
        frame["message"] = message
    return json.dumps(frame)


def message_frame(data: Any) -> str:
    return json.dumps({"type": "message", "channel": "c", "from": "peer-z", "data": data})


def wire_raw(h: Harness, event: Any) -> None:
    """Send a raw wsproto event (control frame, binary, fragment) from the server."""
    server = srv(h)
    server.out += server.ws.send(event)
    h.pump()


def assert_quiet_forever(h: Harness) -> None:
    """No timer is armed and nothing at all happens for a long time."""
    assert h.client.get_timer() is None
    before = (len(h.events), len(h.actions))
    h.advance(3600.0)
    assert (len(h.events), len(h.actions)) == before


def assert_connect_failed(h: Harness, code: int, reason: str) -> None:
    (failed,) = h.of(ConnectFailed)
    assert isinstance(failed.error, SignallingConnectError)
    assert (failed.error.close_code, failed.error.close_reason) == (code, reason)
    assert h.client.state == "closed"
    assert transitions(h)[-1] == ("connecting", "closed")
    assert not h.of(Disconnected)  # PY semantics (§11.4): no Disconnected before a welcome
    assert not h.of(ReconnectScheduled)
    opens = len(h.of(OpenTransport))
    assert_quiet_forever(h)
    assert len(h.of(OpenTransport)) == opens  # no background retry (§4.3 rule 1)


def assert_connect_again_works(h: Harness) -> None:
    clear(h)
    h.refuse_connect = False
    h.auto_accept = True
    h.auto_welcome = True
    h.connect()
    assert h.client.state == "connected"
    assert transitions(h) == [("closed", "connecting"), ("connecting", "connected")]
    (conn,) = h.of(Connected)
    assert conn.is_reconnect is False


# --- state transitions ------------------------------------------------------------------


def test_connect_then_welcome_transitions() -> None:
    h = make(auto_welcome=False)
    assert h.client.state == "idle"
    h.connect()
    assert h.client.state == "connecting"
    assert transitions(h) == [("idle", "connecting")]
    assert not h.of(Connected)
    h.server_send(welcome("peer-a", 4096))
    assert h.client.state == "connected"
    assert transitions(h) == [("idle", "connecting"), ("connecting", "connected")]
    (conn,) = h.of(Connected)
    assert conn.peer_id == "peer-a"
    assert conn.is_reconnect is False
    assert conn.max_message_size == 4096
    assert conn.expires_at is None
    assert conn.server_time == 1767225660
    assert h.client.peer_id == "peer-a"
    assert h.client.max_message_size == 4096


def test_frames_before_welcome_are_dropped() -> None:
    h = make(auto_welcome=False)
    h.connect()
    h.server_send(message_frame(1))
    assert not h.of(Message)
    (dropped,) = h.of(FrameDropped)
    assert dropped.code == "before_welcome"
    assert h.client.state == "connecting"


def test_server_close_after_welcome_goes_reconnecting_then_connected() -> None:
    h = connected()
    h.server_close(1001, "going away")
    assert h.client.state == "reconnecting"
    assert transitions(h) == [("connected", "reconnecting")]
    assert h.of(Disconnected) == [Disconnected(1001, "going away", True)]
    assert len(h.of(CloseTransport)) == 1
    (sched,) = h.of(ReconnectScheduled)
    assert sched.attempt == 1
    assert sched.close_code == 1001
    assert 0.4 <= sched.delay < 0.6
    assert h.client.get_timer() == pytest.approx(h.now + sched.delay)
    h.advance(sched.delay - 0.001)
    assert len(h.of(OpenTransport)) == 0
    h.advance(0.002)
    assert len(h.of(OpenTransport)) == 1
    assert h.client.state == "connected"
    assert transitions(h)[-1] == ("reconnecting", "connected")
    (conn,) = h.of(Connected)
    assert conn.is_reconnect is True
    assert conn.peer_id == "peer-2"


def test_tcp_drop_is_1006_and_reconnects() -> None:
    h = connected()
    h.drop()
    assert h.of(Disconnected) == [Disconnected(1006, "connection lost", True)]
    assert h.client.state == "reconnecting"
    h.advance(1.0)
    assert h.client.state == "connected"


def test_is_reconnect_false_then_true_then_false_after_new_connect() -> None:
    h = make()
    h.connect()
    h.server_close(1001)
    h.advance(1.0)
    h.server_close(1011)
    h.advance(2.0)
    assert [c.is_reconnect for c in h.of(Connected)] == [False, True, True]
    h.client.close(h.now)
    h.pump()
    h.connect()
    assert [c.is_reconnect for c in h.of(Connected)] == [False, True, True, False]


def test_backoff_counter_resets_on_welcome() -> None:
    h = connected()
    h.server_close(1001)
    h.advance(1.0)
    h.server_close(1001)
    scheds = h.of(ReconnectScheduled)
    assert [s.attempt for s in scheds] == [1, 1]


@pytest.mark.parametrize("state", ["connecting", "connected", "reconnecting"])
def test_connect_is_refused_while_live(state: str) -> None:
    h = make(auto_welcome=state != "connecting")
    h.connect()
    if state == "reconnecting":
        h.server_close(1001)
    assert h.client.state == state
    clear(h)
    with pytest.raises(LocalProtocolError):
        h.client.connect(h.now)
    assert h.client.state == state
    assert h.client.next_event() is None
    assert h.client.data_to_send() == b""


def test_failed_reconnect_attempt_that_never_opened_emits_no_disconnected() -> None:
    h = connected()
    h.server_close(1001)
    h.refuse_connect = True
    (first,) = h.of(ReconnectScheduled)
    h.advance(first.delay)
    # attempt 1 failed at the TCP level: no Disconnected for a socket that never opened
    assert len(h.of(Disconnected)) == 1
    assert [s.attempt for s in h.of(ReconnectScheduled)] == [1, 2]
    assert h.of(ReconnectScheduled)[-1].close_code == 1006
    assert h.client.state == "reconnecting"
    h.refuse_connect = False
    h.advance(5.0)
    assert h.client.state == "connected"


def test_reconnect_attempt_closed_before_welcome_emits_disconnected() -> None:
    h = connected()
    h.auto_welcome = False
    h.server_close(1001)
    h.advance(1.0)
    assert h.client.state == "reconnecting"
    h.server_close(4010, "over concurrent limit")
    assert h.of(Disconnected)[-1] == Disconnected(4010, "over concurrent limit", True)
    sched = h.of(ReconnectScheduled)[-1]
    assert sched.attempt == 2
    assert 30.0 <= sched.delay < 36.0  # true 30 s floor (§10.6 "ours")


def test_reconnect_welcome_timeout_counts_as_failed_attempt() -> None:
    h = connected()
    h.auto_welcome = False
    h.server_close(1001)
    h.advance(1.0)
    assert h.client.state == "reconnecting"
    opened_at = h.now
    server = srv(h)
    h.advance(10.0)
    assert server.close_code == 1000
    assert server.close_reason == "no welcome"
    assert h.of(Disconnected)[-1] == Disconnected(1000, "no welcome", True)
    assert h.client.state == "reconnecting"
    assert h.of(ReconnectScheduled)[-1].attempt == 2
    assert h.now - opened_at == pytest.approx(10.0)


# --- first connect failures -------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1011, 4001, 4002, 4010])
def test_first_connect_close_before_welcome(code: int) -> None:
    h = make(auto_welcome=False)
    h.connect()
    h.server_close(code, "nope")
    assert_connect_failed(h, code, "nope")
    assert srv_closed_echo(h) == code
    assert_connect_again_works(h)


def srv_closed_echo(h: Harness) -> int | None:
    return h.servers[0].close_code


def test_first_connect_transport_failed() -> None:
    h = make()
    h.refuse_connect = True
    h.connect()
    assert_connect_failed(h, 1006, "connect failed")
    assert h.servers == []
    assert_connect_again_works(h)


def test_first_connect_welcome_timeout() -> None:
    h = make(auto_welcome=False)
    h.connect()
    h.advance(9.999)
    assert h.client.state == "connecting"
    assert not h.of(ConnectFailed)
    h.advance(0.002)
    assert h.servers[0].close_code == 1000
    assert h.servers[0].close_reason == "no welcome"
    assert len(h.of(CloseTransport)) == 1
    assert_connect_failed(h, 1000, "no welcome")
    assert_connect_again_works(h)


def test_first_connect_malformed_welcome_is_dropped_then_times_out() -> None:
    h = make(auto_welcome=False)
    h.connect()
    h.server_send(
        '{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":1,"maxMessageSize":0}'
    )
    assert h.of(FrameDropped)
    assert h.client.state == "connecting"
    h.advance(10.0)
    assert_connect_failed(h, 1000, "no welcome")


def test_first_connect_handshake_timeout() -> None:
    h = make()
    h.auto_accept = False
    h.connect()
    assert h.servers[0].target == "/v1?key=pk_test"
    h.advance(9.999)
    assert not h.of(CloseTransport)
    h.advance(0.002)
    assert len(h.of(CloseTransport)) == 1
    assert_connect_failed(h, 1006, "opening handshake timed out")
    assert_connect_again_works(h)


@pytest.mark.parametrize("status", [429, 401, 503])
def test_first_connect_http_rejection(status: int) -> None:
    h = make()
    h.auto_accept = False
    h.connect()
    srv(h).reject(status)
    h.pump()
    assert len(h.of(CloseTransport)) == 1
    assert_connect_failed(h, status, "handshake rejected")
    assert_connect_again_works(h)


def test_first_connect_drop_before_welcome() -> None:
    h = make(auto_welcome=False)
    h.connect()
    h.drop()
    assert_connect_failed(h, 1006, "connection lost")
    assert_connect_again_works(h)


def test_http_rejection_during_reconnect_is_retried() -> None:
    """PY's pseudo close code = HTTP status is not terminal (§2.2)."""
    h = connected()
    h.auto_accept = False
    h.server_close(1001)
    h.advance(1.0)
    srv(h).reject(429)
    h.pump()
    assert h.client.state == "reconnecting"
    sched = h.of(ReconnectScheduled)[-1]
    assert (sched.attempt, sched.close_code) == (2, 429)
    assert len(h.of(Disconnected)) == 1  # the rejected socket never opened


# --- requests ---------------------------------------------------------------------------


def _all_calls(h: Harness) -> list[Any]:
    c, now = h.client, h.now
    return [
        lambda: c.subscribe("chan", now),
        lambda: c.unsubscribe("chan", now),
        lambda: c.publish("chan", {"x": 1}, now),
        lambda: c.send("peer-x", {"x": 1}, now),
    ]


def _assert_not_connected_everywhere(h: Harness) -> None:
    for call in _all_calls(h):
        with pytest.raises(NotConnectedError):
            call()
    assert h.client.data_to_send() == b""
    assert h.client.pending_requests == 0
    assert h.client.subscriptions == {}


def test_requests_raise_not_connected_when_idle() -> None:
    h = make()
    _assert_not_connected_everywhere(h)


def test_requests_raise_not_connected_before_welcome() -> None:
    h = make(auto_welcome=False)
    h.connect()
    n = len(srv(h).texts)
    _assert_not_connected_everywhere(h)
    h.pump()
    assert len(srv(h).texts) == n


def test_requests_raise_not_connected_while_reconnecting_and_after_close() -> None:
    h = connected()
    h.server_close(1001)
    _assert_not_connected_everywhere(h)
    h.client.close(h.now)
    h.pump()
    _assert_not_connected_everywhere(h)


def test_requests_raise_not_connected_after_giving_up() -> None:
    h = connected(reconnect=ReconnectOptions(max_attempts=2))
    h.refuse_connect = True
    h.server_close(1001)
    h.advance(60.0)
    assert h.of(Disconnected)[-1].will_reconnect is False
    assert h.client.state == "closed"
    _assert_not_connected_everywhere(h)


def test_requests_raise_not_connected_after_terminal_close() -> None:
    h = connected()
    h.server_close(4001)
    assert h.client.state == "closed"
    _assert_not_connected_everywhere(h)


def test_ack_completes_request() -> None:
    h = connected()
    rid = h.client.publish("chan", {"a": 1}, h.now)
    h.pump()
    assert client_frames(srv(h), "publish")[-1] == {
        "type": "publish",
        "channel": "chan",
        "data": {"a": 1},
        "requestId": rid,
    }
    assert h.client.pending_requests == 1
    h.server_send(ack(rid))
    assert h.of(RequestCompleted) == [RequestCompleted(rid)]
    assert not h.of(RequestFailed)
    assert h.client.pending_requests == 0
    h.server_send(ack(rid))  # a duplicate ack is ignored
    assert h.of(RequestCompleted) == [RequestCompleted(rid)]


def test_request_ids_are_fresh() -> None:
    h = connected()
    ids = [h.client.publish("chan", i, h.now) for i in range(20)]
    assert len(set(ids)) == 20
    assert all(len(i) == 36 for i in ids)


def test_correlated_error_fails_request() -> None:
    h = connected()
    rid = h.client.send("peer-x", "hi", h.now)
    other = h.client.send("peer-y", "hi", h.now)
    h.pump()
    h.server_send(error(rid, "peer_not_found", "no such peer"))
    (failed,) = h.of(RequestFailed)
    assert failed.request_id == rid
    assert isinstance(failed.error, ServerRequestError)
    assert failed.error.code == "peer_not_found"
    assert failed.error.request_id == rid
    assert failed.error.message == "no such peer"
    assert not h.of(ServerError)
    assert h.client.pending_requests == 1  # the other one still waits
    h.server_send(ack(other))
    assert h.of(RequestCompleted) == [RequestCompleted(other)]


def test_uncorrelated_errors_are_server_errors_except_ping_compat() -> None:
    h = connected()
    h.server_send(error(None, "backend_error", "oops"))
    h.server_send(error("unknown-id", "internal_error"))
    h.server_send(error(None, "unknown_type"))  # swallowed: old-server ping compat (§2.5.1)
    assert h.of(ServerError) == [
        ServerError("backend_error", "oops", None),
        ServerError("internal_error", None, "unknown-id"),
    ]


def test_ack_timeout_then_late_ack_ignored_and_late_error_is_server_error() -> None:
    h = connected()
    rid = h.client.subscribe("chan", h.now)
    h.advance(10.0)
    rid2 = h.client.publish("chan", 2, h.now)
    h.server_send('{"type":"pong"}')  # keep the link alive
    h.advance(4.999)
    assert not h.of(RequestFailed)
    h.advance(0.002)
    (failed,) = h.of(RequestFailed)
    assert failed.request_id == rid
    assert isinstance(failed.error, AckTimeoutError)
    assert failed.error.request_id == rid
    assert failed.error.timeout == 15.0
    assert h.client.pending_requests == 1
    h.server_send(ack(rid))
    assert not h.of(RequestCompleted)
    h.server_send(error(rid, "invalid_channel", "late"))
    assert h.of(ServerError) == [ServerError("invalid_channel", "late", rid)]
    assert len(h.of(RequestFailed)) == 1
    h.advance(10.0)  # the second request times out 15 s after it was sent
    assert [f.request_id for f in h.of(RequestFailed)] == [rid, rid2]
    assert isinstance(h.of(RequestFailed)[1].error, AckTimeoutError)


@pytest.mark.parametrize("how", ["drop", "close_frame", "watchdog"])
def test_socket_loss_fails_every_pending_request_at_once(how: str) -> None:
    h = connected()
    rids = [
        h.client.subscribe("a", h.now),
        h.client.publish("a", 1, h.now),
        h.client.send("peer-x", 1, h.now),
        h.client.unsubscribe("b", h.now),
    ]
    h.pump()
    assert h.client.pending_requests == 4
    if how == "drop":
        h.drop()
    elif how == "close_frame":
        h.server_close(1011)
    else:
        h.advance(60.0)  # no inbound frame: watchdog (acks would time out at 15 s first)
    failed = h.of(RequestFailed)
    if how == "watchdog":
        assert all(isinstance(f.error, AckTimeoutError) for f in failed)
    else:
        assert [f.request_id for f in failed] == rids
        assert all(isinstance(f.error, DisconnectedError) for f in failed)
        assert h.now == 1000.0  # immediately, not after 15 s
    assert h.client.pending_requests == 0
    assert len(h.of(Disconnected)) == 1


def test_drop_fails_pending_before_ack_timeout() -> None:
    h = connected()
    rids = [h.client.publish("a", i, h.now) for i in range(3)]
    h.advance(5.0)
    h.drop()
    failed = h.of(RequestFailed)
    assert [f.request_id for f in failed] == rids
    assert all(isinstance(f.error, DisconnectedError) for f in failed)
    h.advance(60.0)  # nothing left to time out
    assert len(h.of(RequestFailed)) == 3


# --- explicit close ---------------------------------------------------------------------


def test_close_sends_1000_fails_pending_and_stops_everything() -> None:
    h = connected()
    server = srv(h)
    rids = [h.client.publish("a", 1, h.now), h.client.subscribe("b", h.now)]
    h.pump()
    h.client.close(h.now)
    h.pump()
    assert server.close_code == 1000
    assert server.close_reason == "client requested close"
    assert h.client.state == "closed"
    assert transitions(h) == [("connected", "closed")]
    assert not h.of(Disconnected)
    assert not h.of(ReconnectScheduled)
    failed = h.of(RequestFailed)
    assert [f.request_id for f in failed] == rids
    assert all(isinstance(f.error, DisconnectedError) for f in failed)
    assert len(h.of(CloseTransport)) == 1  # the server echoed: done
    assert h.client.get_timer() is None
    assert h.client.pending_requests == 0
    assert_quiet_forever(h)
    assert len(h.of(OpenTransport)) == 0


def test_close_with_custom_code_and_reason() -> None:
    h = connected()
    server = srv(h)
    h.client.close(h.now, 4321, "bye now")
    h.pump()
    assert (server.close_code, server.close_reason) == (4321, "bye now")


@pytest.mark.parametrize("code", [999, 1001, 1006, 2999, 5000])
def test_close_rejects_invalid_codes(code: int) -> None:
    h = connected()
    with pytest.raises(ValueError, match="close code"):
        h.client.close(h.now, code)
    assert h.client.state == "connected"


def test_close_without_echo_times_out_after_one_second() -> None:
    h = connected()
    rid = h.client.publish("a", 1, h.now)
    h.pump()
    server = srv(h)
    h.client.close(h.now)
    server.receive(h.client.data_to_send())
    server.out.clear()  # the server never answers
    h.pump()
    assert server.close_code == 1000
    assert h.of(RequestFailed)[0].request_id == rid
    assert not h.of(CloseTransport)
    assert h.client.get_timer() == pytest.approx(h.now + 1.0)
    h.advance(0.999)
    assert not h.of(CloseTransport)
    h.advance(0.002)
    assert len(h.of(CloseTransport)) == 1
    assert h.client.get_timer() is None
    assert not h.of(Disconnected)
    assert h.client.state == "closed"
    assert_quiet_forever(h)


def test_close_during_flush_ignores_server_frames() -> None:
    """After close() the session is over (§2.7): frames racing the echo produce nothing."""
    h = connected()
    server = srv(h)
    rid = h.client.publish("c", 1, h.now)
    h.pump()
    h.client.close(h.now)
    close_frame = h.client.data_to_send()
    h.pump()
    assert h.of(RequestFailed)[0].request_id == rid
    clear(h)
    # frames the server queued before it read the close frame
    server.send(message_frame("late"))
    server.send('{"type":"going_away","retryAfterMs":5}')
    server.send(error(None, "backend_error"))
    server.send(error(rid, "backend_error"))
    server.send(welcome("peer-late"))
    late = server.take()
    server.receive(close_frame)
    server.out.clear()  # its echo is lost
    h.client.receive_data(late, h.now)
    h.pump()
    assert h.events == []
    assert h.client.state == "closed"
    assert h.client.get_timer() is not None  # still waiting for the echo
    h.advance(1.0)
    assert h.of(CloseTransport) == [CloseTransport()]
    assert h.events == []


def test_close_before_welcome_then_late_welcome_stays_closed() -> None:
    """A welcome racing an explicit close() must not bring the client back to connected."""
    h = make(auto_welcome=False)
    h.connect()
    server = srv(h)
    h.client.close(h.now)
    server.send(welcome("peer-late"))  # queued by the server before it read the close frame
    h.pump()
    assert server.close_code == 1000
    assert h.client.state == "closed"
    assert not h.of(Connected)
    assert not h.of(ConnectFailed)
    assert transitions(h) == [("idle", "connecting"), ("connecting", "closed")]
    assert h.client.get_timer() is None
    for call in _all_calls(h):
        with pytest.raises(NotConnectedError):
            call()
    assert_quiet_forever(h)


def test_close_while_reconnecting_cancels_the_backoff() -> None:
    h = connected()
    h.server_close(1001)
    assert h.client.get_timer() is not None
    h.client.close(h.now)
    h.pump()
    assert h.client.state == "closed"
    assert transitions(h)[-1] == ("reconnecting", "closed")
    assert h.client.get_timer() is None
    assert_quiet_forever(h)
    assert not h.of(OpenTransport)


def test_close_while_waiting_for_token_ignores_the_late_token() -> None:
    h = make(tokens=[])
    h.tokens = []
    h.client.connect(h.now)
    needed = h.client.next_event()
    assert needed == StateChange("idle", "connecting")
    assert h.client.next_event() == CredentialNeeded(0)
    h.client.close(h.now)
    h.client.credential_resolved("tok_late", h.now)
    h.pump()
    assert h.client.state == "closed"
    assert not h.of(OpenTransport)
    assert h.client.get_timer() is None


def test_close_twice_and_close_when_idle_are_harmless() -> None:
    h = make()
    h.client.close(h.now)
    h.pump()
    assert h.client.state == "idle"
    assert h.events == []
    h.connect()
    h.client.close(h.now)
    h.client.close(h.now)
    h.pump()
    assert h.client.state == "closed"
    assert h.client.get_timer() is None


def test_drop_during_close_flush_ends_it_quietly() -> None:
    h = connected()
    server = srv(h)
    h.client.close(h.now)
    server.receive(h.client.data_to_send())
    server.out.clear()
    h.pump()
    h.drop()
    assert h.client.state == "closed"
    assert not h.of(Disconnected)
    assert h.client.get_timer() is None
    assert_quiet_forever(h)


def test_close_during_opening_handshake() -> None:
    h = make()
    h.auto_accept = False
    h.connect()
    h.client.close(h.now)
    h.pump()
    assert h.client.state == "closed"
    assert h.of(CloseTransport) == [CloseTransport()]
    assert not h.of(ConnectFailed)
    assert h.client.get_timer() is None


def test_connect_after_giving_up_starts_a_fresh_budget() -> None:
    h = connected(reconnect=ReconnectOptions(max_attempts=2))
    h.refuse_connect = True
    h.server_close(1001)
    h.advance(60.0)
    assert h.client.state == "closed"
    assert [s.attempt for s in h.of(ReconnectScheduled)] == [1, 2]
    h.refuse_connect = False
    clear(h)
    h.connect()
    assert h.of(Connected)[0].is_reconnect is False
    h.server_close(1001)
    assert [s.attempt for s in h.of(ReconnectScheduled)] == [1]


def test_connect_after_close_starts_fresh_session() -> None:
    h = connected()
    h.client.close(h.now)
    h.pump()
    h.connect()
    assert h.client.state == "connected"
    assert h.of(Connected)[-1].is_reconnect is False


# --- keepalive --------------------------------------------------------------------------


def _pings(server: ScriptedServer) -> list[str]:
    return [t for t in server.texts if json.loads(t)["type"] == "ping"]


def test_ping_every_20_s_of_silence_then_watchdog_4000() -> None:
    h = connected()
    server = srv(h)
    h.advance(19.999)
    assert _pings(server) == []
    h.advance(0.001)
    assert _pings(server) == ['{"type":"ping"}']
    h.advance(19.999)
    assert len(_pings(server)) == 1
    h.advance(0.001)
    assert len(_pings(server)) == 2
    assert h.client.state == "connected"
    h.advance(19.999)
    assert h.client.state == "connected"
    h.advance(0.001)  # 60 s without an inbound text frame
    assert len(_pings(server)) == 2  # the watchdog wins over a third ping
    assert (server.close_code, server.close_reason) == (4000, "inactivity")
    assert h.of(Disconnected) == [Disconnected(4000, "inactivity", True)]
    assert h.client.state == "reconnecting"


def test_inbound_text_frame_postpones_ping_and_watchdog() -> None:
    h = connected()
    server = srv(h)
    h.advance(15.0)
    h.server_send('{"type":"pong"}')
    h.advance(19.999)
    assert _pings(server) == []
    h.advance(0.001)
    assert len(_pings(server)) == 1  # 20 s after the pong, at t=35
    h.advance(30.0)  # t=65: watchdog re-armed by the pong at 15 → fires at 75
    assert h.client.state == "connected"
    h.server_send('{"type":"bogus"}')  # even a frame the parser drops re-arms (§2.5.1)
    assert h.of(FrameDropped)
    h.advance(59.999)
    assert h.client.state == "connected"
    h.advance(0.001)
    assert h.of(Disconnected) == [Disconnected(4000, "inactivity", True)]


@pytest.mark.parametrize("kind", ["ping_control", "pong_control", "binary"])
def test_non_text_frames_do_not_rearm_keepalive(kind: str) -> None:
    h = connected()
    server = srv(h)
    for _ in range(5):
        h.advance(10.0)
        if kind == "ping_control":
            wire_raw(h, Ping(payload=b"hb"))
        elif kind == "pong_control":
            wire_raw(h, Pong(payload=b"hb"))
        else:
            wire_raw(h, BytesMessage(data=b"\x00\x01"))
    assert h.client.state == "connected"  # t = 50
    assert len(_pings(server)) == 2  # at 20 and 40: never postponed
    if kind == "binary":
        assert [d.code for d in h.of(FrameDropped)] == ["binary_frame"] * 5
    h.advance(10.0)
    assert server.close_code == 4000
    assert h.of(Disconnected) == [Disconnected(4000, "inactivity", True)]


def test_control_ping_is_answered_with_pong() -> None:
    h = connected()
    server = srv(h)
    got: list[bytes] = []
    original = server.ws.events

    def spy() -> Any:
        for ev in original():
            if isinstance(ev, Pong):
                got.append(bytes(ev.payload))
            yield ev

    server.ws.events = spy  # type: ignore[method-assign]
    wire_raw(h, Ping(payload=b"xyz"))
    assert got == [b"xyz"]


@pytest.mark.parametrize("timeout", [0.0, -1.0, -math.inf])
def test_inactivity_timeout_non_positive_disables_keepalive(timeout: float) -> None:
    h = connected(inactivity_timeout=timeout)
    server = srv(h)
    assert h.client.get_timer() is None
    h.advance(3600.0)
    assert _pings(server) == []
    assert h.client.state == "connected"
    assert server.close_code is None


def test_heartbeat_interval_scales_with_inactivity_timeout() -> None:
    h = connected(inactivity_timeout=9.0)
    server = srv(h)
    h.advance(2.999)
    assert _pings(server) == []
    h.advance(0.001)
    assert len(_pings(server)) == 1
    h.advance(6.0)
    assert server.close_code == 4000
    h2 = connected(inactivity_timeout=1.5)  # interval floored to 1 s
    h2.advance(1.0)
    assert len(_pings(srv(h2))) == 1


def test_no_ping_before_welcome() -> None:
    h = make(auto_welcome=False, welcome_timeout=100.0)
    h.connect()
    server = srv(h)
    h.advance(59.999)
    assert _pings(server) == []
    h.advance(0.001)
    assert server.close_code == 4000  # the watchdog does run before the welcome
    assert_connect_failed(h, 4000, "inactivity")


# --- token provider ---------------------------------------------------------------------


def _targets(h: Harness) -> list[str | None]:
    return [s.target for s in h.servers]


def test_credential_needed_before_every_attempt() -> None:
    h = make(tokens=["tok-a", "tok-b", "tok-c"])
    h.connect()
    assert h.of(CredentialNeeded) == [CredentialNeeded(0)]
    h.server_close(1001)
    h.refuse_connect = True
    h.advance(0.7)
    h.refuse_connect = False
    h.advance(1.3)
    assert h.of(CredentialNeeded) == [CredentialNeeded(0), CredentialNeeded(1), CredentialNeeded(2)]
    assert _targets(h) == ["/v1?token=tok-a", "/v1?token=tok-c"]
    assert h.client.state == "connected"


def test_credential_needed_precedes_open_transport() -> None:
    h = make(tokens=["t"])
    h.client.connect(h.now)
    assert h.client.next_event() == StateChange("idle", "connecting")
    assert h.client.next_event() == CredentialNeeded(0)
    assert h.client.next_event() is None
    h.client.credential_resolved("t", h.now)
    assert isinstance(h.client.next_event(), OpenTransport)


def test_4002_reinvokes_token_provider_before_next_attempt() -> None:
    h = make(tokens=["tok-old", "tok-new"])
    h.connect()
    h.server_close(4002, "token expired")
    assert h.of(Disconnected) == [Disconnected(4002, "token expired", True)]
    assert len(h.of(CredentialNeeded)) == 1
    h.advance(1.0)
    assert h.of(CredentialNeeded) == [CredentialNeeded(0), CredentialNeeded(1)]
    assert _targets(h) == ["/v1?token=tok-old", "/v1?token=tok-new"]
    assert h.client.state == "connected"


@pytest.mark.parametrize(
    "failure", [RuntimeError("provider down"), TimeoutError("provider timed out")]
)
def test_credential_failure_fails_first_connect(failure: BaseException) -> None:
    h = make(tokens=[failure])
    h.connect()
    (failed,) = h.of(ConnectFailed)
    assert failed.error is failure
    assert h.client.state == "closed"
    assert not h.of(OpenTransport)
    assert not h.of(TokenProviderError)
    assert_quiet_forever(h)
    assert_connect_again_works(h)


@pytest.mark.parametrize("bad", ["", None, 42, b"tok", ["tok"]])
def test_bad_token_value_fails_first_connect(bad: object) -> None:
    h = make(tokens=[])
    h.client.connect(h.now)
    h.client.credential_resolved(bad, h.now)
    h.pump()
    (failed,) = h.of(ConnectFailed)
    assert isinstance(failed.error, TypeError)
    assert h.client.state == "closed"
    assert not h.of(OpenTransport)


def test_token_failures_during_reconnect_count_and_repeat() -> None:
    errs = [RuntimeError(f"e{i}") for i in range(4)]
    tokens: list[str | BaseException] = ["tok-1", errs[0], errs[1], errs[2], "", "tok-2"]
    h = make(tokens=tokens, reconnect=ReconnectOptions(max_attempts=20))
    h.connect()
    h.server_close(1001)
    h.advance(60.0)
    assert h.client.state == "connected"
    tpe = h.of(TokenProviderError)
    assert [e.consecutive_failures for e in tpe] == [3, 4]
    assert tpe[0].err is errs[2]
    assert isinstance(tpe[1].err, TypeError)  # empty string counts as a failure
    # every failure consumed one attempt and slept the normal backoff
    assert [s.attempt for s in h.of(ReconnectScheduled)] == [1, 2, 3, 4, 5]
    assert [c.attempt for c in h.of(CredentialNeeded)] == [0, 1, 2, 3, 4, 5]
    assert len(h.of(Disconnected)) == 1  # no socket opened for the failed attempts
    assert h.of(ReconnectScheduled)[-1].close_code == 1001  # the last close code carries over
    # success reset the counter: two more failures stay below the threshold
    h.tokens = [RuntimeError("x"), RuntimeError("y"), "tok-3"]
    h.server_close(1001)
    h.advance(60.0)
    assert h.client.state == "connected"
    assert len(h.of(TokenProviderError)) == 2
    # and a third failure after those two raises it again with a fresh count
    h.tokens = [RuntimeError("p"), RuntimeError("q"), RuntimeError("r"), "tok-4"]
    h.server_close(1001)
    h.advance(60.0)
    assert [e.consecutive_failures for e in h.of(TokenProviderError)] == [3, 4, 3]


def test_token_failure_give_up_reports_last_close_code() -> None:
    h = make(
        tokens=["tok-1", RuntimeError("a"), RuntimeError("b")],
        reconnect=ReconnectOptions(max_attempts=2),
    )
    h.connect()
    h.server_close(4011, "rate")
    h.advance(60.0)
    assert h.of(Disconnected) == [
        Disconnected(4011, "rate", True),
        Disconnected(4011, "token provider failed", False),
    ]
    assert h.client.state == "closed"
    assert h.client.get_timer() is None


def test_slow_backoff_floor_is_consumed_by_one_delay_even_with_token_failures() -> None:
    """§4.3 rule 3 / P9: the 4010 floor applies to one delay only."""
    h = make(tokens=["tok-1", RuntimeError("a"), RuntimeError("b"), "tok-2"])
    h.connect()
    h.server_close(4010)
    h.advance(45.0)
    delays = [s.delay for s in h.of(ReconnectScheduled)]
    assert len(delays) == 3
    assert 30.0 <= delays[0] < 36.0
    assert delays[1] < 30.0
    assert delays[2] < 30.0
    assert h.client.state == "connected"


# --- subscriptions and replay -----------------------------------------------------------


def test_subscribe_tracks_before_sending_and_unsubscribe_forgets() -> None:
    h = connected()
    rid = h.client.subscribe("room", h.now, include_sender_metadata=True)
    assert h.client.subscriptions == {"room": True}
    h.pump()
    assert client_frames(srv(h), "subscribe") == [
        {"type": "subscribe", "channel": "room", "requestId": rid, "includeSenderMetadata": True}
    ]
    h.client.subscribe("other", h.now)
    assert h.client.subscriptions == {"room": True, "other": False}
    urid = h.client.unsubscribe("room", h.now)
    assert h.client.subscriptions == {"other": False}
    h.pump()
    assert client_frames(srv(h), "unsubscribe") == [
        {"type": "unsubscribe", "channel": "room", "requestId": urid}
    ]


def test_unsubscribe_forgets_even_when_not_connected() -> None:
    h = connected()
    h.client.subscribe("room", h.now)
    h.server_close(1001)
    with pytest.raises(NotConnectedError):
        h.client.unsubscribe("room", h.now)
    assert h.client.subscriptions == {}
    h.advance(1.0)
    assert client_frames(srv(h), "subscribe") == []  # nothing to replay


def test_subscribe_not_connected_forgets_only_untracked_channels() -> None:
    h = connected()
    h.client.subscribe("kept", h.now, include_sender_metadata=True)
    h.server_close(1001)
    with pytest.raises(NotConnectedError):
        h.client.subscribe("new", h.now)
    with pytest.raises(NotConnectedError):
        h.client.subscribe("kept", h.now, include_sender_metadata=True)
    assert h.client.subscriptions == {"kept": True}


def test_subscribe_rejected_by_server_or_lost_stays_tracked() -> None:
    h = connected()
    r1 = h.client.subscribe("rejected", h.now)
    h.client.subscribe("lost", h.now)
    h.pump()
    h.server_send(error(r1, "channel_not_authorized"))
    assert isinstance(h.of(RequestFailed)[0].error, ServerRequestError)
    h.drop()
    assert set(h.client.subscriptions) == {"rejected", "lost"}


def test_reconnect_replays_every_tracked_channel_with_fresh_ids() -> None:
    h = connected()
    ra = h.client.subscribe("a", h.now, include_sender_metadata=True)
    rb = h.client.subscribe("b", h.now)
    rc = h.client.subscribe("c", h.now)
    h.client.unsubscribe("c", h.now)
    h.pump()
    h.server_send(ack(ra))
    h.server_close(1001)
    clear(h)
    h.advance(1.0)
    assert h.client.state == "connected"
    replays = client_frames(srv(h), "subscribe")
    assert [(f["channel"], f.get("includeSenderMetadata")) for f in replays] == [
        ("a", True),
        ("b", None),
    ]
    ids = {f["requestId"] for f in replays}
    assert len(ids) == 2
    assert ids.isdisjoint({ra, rb, rc})
    # Connected comes first, then the replays; their acks surface nothing
    assert isinstance(h.events[-1], Connected)
    for f in replays:
        h.server_send(ack(f["requestId"]))
    assert not h.of(RequestCompleted)
    assert not h.of(RequestFailed)
    assert h.client.pending_requests == 0


def test_first_connect_does_not_replay() -> None:
    h = make()
    h.connect()
    h.client.subscribe("a", h.now)
    h.client.close(h.now)
    h.pump()
    h.connect()  # a new session (explicit connect): not a reconnect
    assert client_frames(srv(h), "subscribe") == []


def test_auto_resubscribe_false_sends_nothing() -> None:
    h = connected(auto_resubscribe=False)
    h.client.subscribe("a", h.now)
    h.server_close(1001)
    h.advance(1.0)
    assert h.client.state == "connected"
    assert srv(h).texts == []
    assert h.client.subscriptions == {"a": False}


@pytest.mark.parametrize("failure", ["reject", "timeout"])
def test_replay_failure_is_retried_3_times_2_s_apart(failure: str) -> None:
    h = connected()
    h.client.subscribe("a", h.now, include_sender_metadata=True)
    h.client.subscribe("b", h.now)
    h.server_close(1001)
    clear(h)
    h.advance(1.0)
    server = srv(h)
    (b_replay,) = [f for f in client_frames(server, "subscribe") if f["channel"] == "b"]
    h.server_send(ack(b_replay["requestId"]))
    sent_at: list[float] = []
    for seen in range(1, 5):
        subs = [f for f in client_frames(server, "subscribe") if f["channel"] == "a"]
        assert len(subs) == seen
        sent_at.append(h.now)
        rid = subs[-1]["requestId"]
        assert subs[-1]["includeSenderMetadata"] is True
        if failure == "reject":
            h.server_send(error(rid, "backend_error"))
            h.advance(1.999)
            assert (
                len([f for f in client_frames(server, "subscribe") if f["channel"] == "a"]) == seen
            )
            h.advance(0.001)
        else:
            h.server_send('{"type":"pong"}')
            h.advance(17.0)  # 15 s ack timeout + 2 s
            h.server_send('{"type":"pong"}')
    # 1 replay + 3 retries, then it stops
    h.server_send('{"type":"pong"}')
    h.advance(30.0)
    subs_a = [f for f in client_frames(server, "subscribe") if f["channel"] == "a"]
    assert len(subs_a) == 4
    assert len({f["requestId"] for f in subs_a}) == 4
    gap = 2.0 if failure == "reject" else 17.0
    assert [round(b - a, 6) for a, b in itertools.pairwise(sent_at)] == [gap] * 3
    assert len([f for f in client_frames(server, "subscribe") if f["channel"] == "b"]) == 1
    assert not h.of(RequestFailed)  # replays are not awaited by anyone
    assert h.client.subscriptions == {"a": True, "b": False}  # still tracked


def test_replay_budget_resets_on_next_welcome() -> None:
    h = connected()
    h.client.subscribe("a", h.now)
    h.server_close(1001)
    h.advance(1.0)
    for _ in range(4):
        subs = client_frames(srv(h), "subscribe")
        h.server_send(error(subs[-1]["requestId"], "backend_error"))
        h.advance(2.0)
    assert len(client_frames(srv(h), "subscribe")) == 4
    h.server_close(1001)
    h.advance(1.0)
    subs = client_frames(srv(h), "subscribe")
    assert len(subs) == 1
    h.server_send(error(subs[-1]["requestId"], "backend_error"))
    h.advance(2.0)
    assert len(client_frames(srv(h), "subscribe")) == 2


def test_replay_retries_stop_on_disconnect() -> None:
    h = connected()
    h.client.subscribe("a", h.now)
    h.server_close(1001)
    h.advance(1.0)
    first = srv(h)
    rid = client_frames(first, "subscribe")[0]["requestId"]
    h.server_send(error(rid, "backend_error"))
    h.advance(1.0)
    h.server_close(1001)  # the retry (due in 1 s) must not survive the socket
    assert h.client.get_timer() is not None
    h.refuse_connect = True
    h.advance(0.3)
    at = h.client.get_timer()
    assert at is not None
    # the only deadline left is the reconnect backoff
    assert at == pytest.approx(h.of(ReconnectScheduled)[-1].delay + h.now - 0.3, abs=0.31)
    h.refuse_connect = False
    h.advance(5.0)
    second = srv(h)
    assert second is not first
    subs = client_frames(second, "subscribe")
    assert len(subs) == 1  # one fresh replay from the new welcome, no stray retry
    h.server_send(ack(subs[0]["requestId"]))
    h.advance(10.0)
    assert len(client_frames(second, "subscribe")) == 1


def test_unsubscribe_cancels_a_pending_replay_retry() -> None:
    h = connected()
    h.client.subscribe("a", h.now)
    h.server_close(1001)
    h.advance(1.0)
    rid = client_frames(srv(h), "subscribe")[0]["requestId"]
    h.server_send(error(rid, "backend_error"))
    h.client.unsubscribe("a", h.now)
    h.advance(5.0)
    assert len(client_frames(srv(h), "subscribe")) == 1


# --- close codes ------------------------------------------------------------------------


@pytest.mark.parametrize("code", [4001, 4003, 4012, 4020])
def test_terminal_codes_close_for_good(code: int) -> None:
    h = connected()
    h.server_close(code, "terminal")
    assert h.of(Disconnected) == [Disconnected(code, "terminal", False)]
    assert h.client.state == "closed"
    assert transitions(h) == [("connected", "closed")]
    assert not h.of(ReconnectScheduled)
    assert_quiet_forever(h)
    assert not h.of(OpenTransport)


@pytest.mark.parametrize("code", [1000, 1001, 1008, 1009, 1011, 4002, 4010, 4011, 4999])
def test_non_terminal_codes_reconnect(code: int) -> None:
    h = connected()
    h.server_close(code, "x")
    assert h.of(Disconnected) == [Disconnected(code, "x", True)]
    assert h.client.state == "reconnecting"
    h.advance(40.0)
    assert h.client.state == "connected"


def test_reconnect_disabled() -> None:
    h = connected(reconnect=None)
    h.server_close(1001, "bye")
    assert h.of(Disconnected) == [Disconnected(1001, "bye", False)]
    assert h.client.state == "closed"
    assert_quiet_forever(h)


def test_drop_with_reconnect_disabled() -> None:
    h = connected(reconnect=None)
    h.drop()
    assert h.of(Disconnected) == [Disconnected(1006, "connection lost", False)]
    assert h.client.state == "closed"


def test_reconnect_budget_exhausted_with_zero_attempts() -> None:
    h = connected(reconnect=ReconnectOptions(max_attempts=0))
    h.server_close(1001)
    assert h.of(Disconnected) == [Disconnected(1001, "", False)]
    assert h.client.state == "closed"


@pytest.mark.parametrize("code", [1000, 1001, 4002, 4011, 4020, 4321])
def test_server_close_code_is_echoed(code: int) -> None:
    h = connected()
    server = srv(h)
    h.server_close(code, "why")
    assert server.close_code == code
    assert len(h.of(CloseTransport)) == 1


def test_server_close_without_code_is_1005_and_echoed_as_1000() -> None:
    h = connected()
    server = srv(h)
    wire_raw(h, CloseConnection(code=CloseReason.NO_STATUS_RCVD))  # a close frame without code
    assert h.of(Disconnected)[0].code == 1005
    assert server.close_code == 1000


def test_going_away_then_1001() -> None:
    h = connected()
    h.server_send('{"type":"going_away","retryAfterMs":250}')
    assert h.of(GoingAway) == [GoingAway(250)]
    assert h.client.state == "connected"  # the frame alone changes nothing (§2.6)
    assert not h.of(Disconnected)
    h.server_close(1001, "going away")
    assert h.of(Disconnected) == [Disconnected(1001, "going away", True)]
    sched = h.of(ReconnectScheduled)[0]
    assert 0.4 <= sched.delay < 0.6  # retryAfterMs does not drive the backoff
    kinds = [type(e) for e in h.events]
    assert kinds.index(GoingAway) < kinds.index(Disconnected)


def test_second_welcome_is_ignored() -> None:
    h = connected()
    h.server_send(welcome("peer-other", 10))
    (dropped,) = h.of(FrameDropped)
    assert dropped.code == "duplicate_welcome"
    assert not h.of(Connected)
    assert h.client.peer_id == "peer-1"
    assert h.client.max_message_size == 65_536


# --- local validation -------------------------------------------------------------------


def test_oversized_publish_and_send_raise_and_write_nothing() -> None:
    h = make(auto_welcome=False)
    h.connect()
    h.server_send(welcome("p", 200))
    envelope = len('{"type":"publish","channel":"c","data":"","requestId":""}') + 36
    fits = "x" * (200 - envelope)
    rid = h.client.publish("c", fits, h.now)
    h.pump()
    assert len(srv(h).texts[-1]) == 200
    n = len(srv(h).texts)
    with pytest.raises(OversizedPayloadError) as info:
        h.client.publish("c", fits + "y", h.now)
    assert (info.value.size, info.value.cap) == (201, 200)
    with pytest.raises(OversizedPayloadError):
        h.client.publish("c", "\u00e9" * 30, h.now)  # 6 bytes each once ASCII-escaped
    with pytest.raises(OversizedPayloadError):
        h.client.send("peer-x", "z" * 150, h.now)
    assert h.client.data_to_send() == b""
    h.pump()
    assert len(srv(h).texts) == n
    assert h.client.pending_requests == 1
    h.server_send(ack(rid))
    assert h.of(RequestCompleted) == [RequestCompleted(rid)]


def test_size_cap_follows_the_latest_welcome() -> None:
    h = make(auto_welcome=False)
    h.connect()
    h.server_send(welcome("p", 100))
    with pytest.raises(OversizedPayloadError):
        h.client.publish("c", "x" * 50, h.now)
    h.server_close(1001)
    h.advance(1.0)
    h.server_send(welcome("p", 65_536))
    h.client.publish("c", "x" * 50, h.now)


@pytest.mark.parametrize(
    "channel", ["", "a\x00b", "tab\there", "del\x7f", "c1\x85", "x" * 257, None, 5]
)
def test_invalid_channel_raises_value_error(channel: Any) -> None:
    h = connected()
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by cause
        h.client.subscribe(channel, h.now)
    with pytest.raises(ValueError):  # noqa: PT011
        h.client.unsubscribe(channel, h.now)
    with pytest.raises(ValueError):  # noqa: PT011
        h.client.publish(channel, 1, h.now)
    assert h.client.data_to_send() == b""
    assert h.client.subscriptions == {}
    assert h.client.pending_requests == 0


def test_channel_of_256_characters_is_fine() -> None:
    h = connected()
    h.client.subscribe("\u00e9" * 256, h.now)  # characters, not bytes (P16)
    assert h.client.data_to_send() != b""


@pytest.mark.parametrize("peer", ["", "p\x00", "p\n", "p" * 129, None])
def test_invalid_peer_id_raises_value_error(peer: Any) -> None:
    h = connected()
    with pytest.raises(ValueError):  # noqa: PT011
        h.client.send(peer, 1, h.now)
    assert h.client.data_to_send() == b""
    assert h.client.pending_requests == 0


@pytest.mark.parametrize(
    ("data", "exc"),
    [
        (math.nan, ValueError),
        (math.inf, ValueError),
        ({"x": [1, -math.inf]}, ValueError),
        ({1, 2}, TypeError),
        ({"x": object()}, TypeError),
        (b"bytes", TypeError),
    ],
)
def test_non_json_data_raises_and_writes_nothing(data: Any, exc: type[Exception]) -> None:
    h = connected()
    with pytest.raises(exc):
        h.client.publish("c", data, h.now)
    with pytest.raises(exc):
        h.client.send("peer-x", data, h.now)
    assert h.client.data_to_send() == b""
    assert h.client.pending_requests == 0


def test_validation_errors_win_over_not_connected() -> None:
    h = make()
    with pytest.raises(ValueError):  # noqa: PT011
        h.client.publish("", 1, h.now)
    with pytest.raises(TypeError):
        h.client.publish("c", {1}, h.now)
    with pytest.raises(NotConnectedError):
        h.client.publish("c", None, h.now)


def test_null_data_is_allowed() -> None:
    h = connected()
    h.client.publish("c", None, h.now)
    h.pump()
    assert client_frames(srv(h), "publish")[0]["data"] is None


# --- inbound size cap -------------------------------------------------------------------


def _big_message(total_bytes: int, char: str = "x") -> str:
    head = '{"type":"message","channel":"c","from":"p","data":"'
    tail = '"}'
    width = len(char.encode())
    n = (total_bytes - len(head) - len(tail)) // width
    text = head + char * n + tail
    assert len(text.encode()) == total_bytes or width > 1
    return text


def test_inbound_message_at_the_cap_is_delivered() -> None:
    h = connected()
    h.server_send(_big_message(MIB))
    assert len(h.of(Message)) == 1
    assert h.client.state == "connected"


def test_inbound_message_over_the_cap_closes_1009_and_reconnects() -> None:
    h = connected()
    server = srv(h)
    h.server_send(_big_message(MIB + 1))
    assert not h.of(Message)
    assert server.close_code == 1009
    assert h.of(Disconnected) == [Disconnected(1009, "frame exceeded client cap", True)]
    assert h.client.state == "reconnecting"
    h.advance(1.0)
    assert h.client.state == "connected"


def test_inbound_cap_counts_utf8_bytes() -> None:
    h = connected()
    server = srv(h)
    text = _big_message(MIB + 2, "\u00e9")  # fewer characters than the cap, more bytes
    assert len(text) < MIB < len(text.encode())
    server.send(text)
    h.pump()
    assert server.close_code == 1009
    assert h.of(Disconnected)[0].code == 1009


@pytest.mark.parametrize("over", [True, False])
def test_fragmented_inbound_message_cap(over: bool) -> None:
    h = connected()
    server = srv(h)
    text = _big_message(MIB + 1 if over else MIB)
    step = 64 * 1024
    parts = [text[i : i + step] for i in range(0, len(text), step)]
    for i, part in enumerate(parts):
        wire_raw(h, WsMessage(data=part, message_finished=i == len(parts) - 1))
        if server.close_code is not None:
            break
    if over:
        assert server.close_code == 1009
        assert h.of(Disconnected) == [Disconnected(1009, "frame exceeded client cap", True)]
        assert not h.of(Message)
    else:
        assert server.close_code is None
        (msg,) = h.of(Message)
        assert len(msg.data) == len(text) - len(
            '{"type":"message","channel":"c","from":"p","data":""}'
        )


def test_fragments_are_reassembled() -> None:
    h = connected()
    text = json.dumps({"type": "direct", "from": "p", "data": {"k": "v" * 10}})
    wire_raw(h, WsMessage(data=text[:7], message_finished=False))
    assert not h.of(Direct)
    wire_raw(h, WsMessage(data=text[7:20], message_finished=False))
    wire_raw(h, WsMessage(data=text[20:], message_finished=True))
    assert h.of(Direct) == [Direct("p", {"k": "v" * 10}, None)]


def test_inbound_event_kinds() -> None:
    h = connected()
    h.server_send(
        '{"type":"presence","channel":"c","joined":[{"peerId":"a","metadata":{"n":1}}],"left":[]}'
    )
    h.server_send('{"type":"message","channel":"c","from":"a","data":null,"fromMetadata":{"n":1}}')
    (pres,) = h.of(Presence)
    assert pres.channel == "c"
    assert [p.peer_id for p in pres.joined] == ["a"]
    assert h.of(Message) == [Message("c", "a", None, {"n": 1})]


# --- credentials never leak -------------------------------------------------------------

SECRET_KEY = "pk_secret_XYZ"
SECRET_TOKEN = "tok_secret_XYZ"


def _exercise(h: Harness) -> None:
    """A busy session: requests, replies, errors, drops, reconnects, close."""
    h.connect()
    rid = h.client.subscribe("c", h.now)
    h.client.publish("c", {"k": 1}, h.now)
    h.client.send("peer-x", 1, h.now)
    h.pump()
    h.server_send(ack(rid))
    h.server_send(error(None, "backend_error", "boom"))
    h.server_send('{"type":"bogus"}')
    h.server_send("not json")
    h.server_send(welcome())
    h.server_send('{"type":"going_away"}')
    h.server_close(4002, "token expired")
    h.advance(1.0)
    h.drop()
    h.advance(1.0)
    h.advance(70.0)  # ack timeouts, pings, watchdog
    h.advance(2.0)
    h.client.close(h.now)
    h.pump()


def _assert_no_secret(h: Harness, secret: str) -> None:
    everything = h.events + h.actions
    assert len(everything) > 20
    for item in everything:
        assert secret not in repr(item), item
        assert secret not in str(item), item
        err = getattr(item, "error", None) or getattr(item, "err", None)
        if err is not None:
            assert secret not in str(err)
            assert secret not in repr(err)
    assert secret not in repr(h.client.config)


def test_api_key_never_in_events_or_actions() -> None:
    h = make(api_key=SECRET_KEY)
    _exercise(h)
    assert h.servers[0].target == f"/v1?key={SECRET_KEY}"  # it does reach the wire
    _assert_no_secret(h, SECRET_KEY)
    # a failed first connect too
    h2 = make(api_key=SECRET_KEY, auto_welcome=False)
    h2.connect()
    h2.server_close(4001, "invalid token")
    _assert_no_secret_min(h2, SECRET_KEY)


def _assert_no_secret_min(h: Harness, secret: str) -> None:
    for item in h.events + h.actions:
        assert secret not in repr(item)
        assert secret not in str(getattr(item, "error", ""))


def test_token_never_in_events_or_actions() -> None:
    h = make(tokens=[SECRET_TOKEN] * 3 + [RuntimeError("provider down")] * 3 + [SECRET_TOKEN] * 5)
    _exercise(h)
    h.connect()
    h.server_close(1001)
    h.advance(120.0)
    assert h.of(TokenProviderError)
    assert any(s.target == f"/v1?token={SECRET_TOKEN}" for s in h.servers)
    _assert_no_secret(h, SECRET_TOKEN)


def test_bad_token_error_does_not_echo_the_value() -> None:
    h = make(tokens=[])
    h.client.connect(h.now)
    h.client.credential_resolved([SECRET_TOKEN], h.now)
    h.pump()
    _assert_no_secret_min(h, SECRET_TOKEN)
    assert h.of(ConnectFailed)


def test_close_forgets_subscriptions_so_a_new_session_starts_clean() -> None:
    h = Harness()
    h.connect()
    h.client.subscribe("demo/lobby", h.now)
    h.pump()
    h.client.close(h.now)
    h.pump()
    assert h.client.subscriptions == {}
    h.connect()
    h.server_close(1001)
    h.advance(1.0)
    assert h.client.state == "connected"
    assert not [f for f in h.sent() if f["type"] == "subscribe"]


def test_disconnected_code_is_a_plain_int() -> None:
    h = Harness()
    h.connect()
    h.server_close(4011)
    (disc,) = h.of(Disconnected)
    assert type(disc.code) is int
