"""Stateful property test of ``ClientConnection`` (PROTOCOL §3.1, §4.3, §8.1).

Hypothesis drives a client wired to scripted wsproto servers (``tests.helpers.Harness``) with
random API calls, server replies, unrelated server frames, clock jumps, server closes, TCP drops
and explicit closes, and checks after every step:

* the state is one of the five, and the ``StateChange`` events chain (``from_`` = previous ``to``);
* ``Disconnected.will_reconnect`` is False exactly when the state it leaves the client in is
  ``closed``;
* every request id an API call returned is resolved exactly once (``RequestCompleted`` or
  ``RequestFailed``), and none is left pending once the client is not connected;
* API calls succeed exactly when the client is ``connected`` and raise ``NotConnectedError``
  (writing nothing) otherwise — in particular after it gave up or was closed;
* no deadline survives ``close()`` (``get_timer()`` is ``None`` once the close flush is over) and
  a closed or idle client has no timer at all.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, Ping

from metered_realtime.core import (
    ClientConfig,
    Connected,
    Disconnected,
    LocalProtocolError,
    NotConnectedError,
    ReconnectOptions,
    RequestCompleted,
    RequestFailed,
    StateChange,
)
from tests.helpers import WELCOME, Harness, ScriptedServer

URL = "ws://127.0.0.1:8787"
STATES = frozenset({"idle", "connecting", "connected", "reconnecting", "closed"})
CHANNELS = ("a", "b", "room/1")
PEERS = ("peer-x", "peer-y")
CLOSE_CODES = (1000, 1001, 1006, 1009, 4001, 4002, 4010, 4011, 4012, 4020)
ERROR_CODES = ("backend_error", "channel_not_authorized", "peer_not_found", "invalid_channel")
UNRELATED = (
    '{"type":"pong"}',
    '{"type":"message","channel":"a","from":"peer-z","data":{"n":1}}',
    '{"type":"direct","from":"peer-z","data":null}',
    '{"type":"presence","channel":"a","joined":[{"peerId":"peer-z"}],"left":[]}',
    '{"type":"going_away","retryAfterMs":1000}',
    '{"type":"error","code":"backend_error"}',
    '{"type":"error","code":"unknown_type"}',
    '{"type":"ack","requestId":"00000000-0000-4000-8000-000000000000"}',
    '{"type":"nonsense"}',
    "not json at all",
    '{"type":"presence","channel":"a","joined":[]}',
    WELCOME % "peer-dup",
)


def _open(server: ScriptedServer | None) -> ScriptedServer | None:
    """The harness's current server if its WebSocket can still carry frames."""
    if server is None or server.ws.state is not ConnectionState.OPEN:
        return None
    return server


class ClientMachine(RuleBasedStateMachine):
    """One client session under random stimuli."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()  # replaced by ``setup``
        self.issued: set[str] = set()
        self.resolved: Counter[str] = Counter()
        self.replied: set[str] = set()
        self.trace = "idle"
        self.seen_events = 0
        self.seen_actions = 0
        self.token_mode = False

    # --- setup ------------------------------------------------------------------------

    @initialize(
        seed=st.integers(0, 2**32 - 1),
        token_mode=st.booleans(),
        reconnect=st.sampled_from([100, 3, 0, None]),
        inactivity=st.sampled_from([60.0, 0.0, 9.0]),
        auto_resubscribe=st.booleans(),
        connect_now=st.sampled_from([True, True, True, False]),
    )
    def setup(
        self,
        seed: int,
        token_mode: bool,
        reconnect: int | None,
        inactivity: float,
        auto_resubscribe: bool,
        connect_now: bool,
    ) -> None:
        options = None if reconnect is None else ReconnectOptions(max_attempts=reconnect)
        if token_mode:
            config = ClientConfig(
                url=URL,
                use_token_provider=True,
                reconnect=options,
                inactivity_timeout=inactivity,
                auto_resubscribe=auto_resubscribe,
            )
        else:
            config = ClientConfig(
                url=URL,
                api_key="pk_test",
                reconnect=options,
                inactivity_timeout=inactivity,
                auto_resubscribe=auto_resubscribe,
            )
        self.token_mode = token_mode
        self.h = Harness(config, rng=random.Random(seed))
        if connect_now:  # most of the interesting behaviour needs a session
            self.h.connect()

    # --- API calls --------------------------------------------------------------------

    @rule()
    def connect(self) -> None:
        c = self.h.client
        if c.state in ("idle", "closed"):
            self.h.connect()
        else:
            with pytest.raises(LocalProtocolError):
                c.connect(self.h.now)
            assert c.next_event() is None

    def _call(self, op: str, target: str, flag: bool) -> None:
        c, now = self.h.client, self.h.now
        before = c.state
        tracked_before = dict(c.subscriptions)
        try:
            if op == "subscribe":
                rid = c.subscribe(target, now, include_sender_metadata=flag)
            elif op == "unsubscribe":
                rid = c.unsubscribe(target, now)
            elif op == "publish":
                rid = c.publish(target, {"flag": flag}, now)
            else:
                rid = c.send(target, [flag], now)
        except NotConnectedError:
            assert before != "connected"
            assert c.data_to_send() == b""  # nothing written
            expected = dict(tracked_before)
            if op == "unsubscribe":
                expected.pop(target, None)
            elif op == "subscribe" and target in expected:
                expected[target] = flag
            assert c.subscriptions == expected  # §4.6: an untracked channel is not kept
        else:
            assert before == "connected"
            assert rid not in self.issued
            self.issued.add(rid)
            if op == "subscribe":
                assert c.subscriptions[target] is flag
            elif op == "unsubscribe":
                assert target not in c.subscriptions
        self.h.pump()

    @rule(channel=st.sampled_from(CHANNELS), flag=st.booleans())
    def subscribe(self, channel: str, flag: bool) -> None:
        self._call("subscribe", channel, flag)

    @rule(channel=st.sampled_from(CHANNELS))
    def unsubscribe(self, channel: str) -> None:
        self._call("unsubscribe", channel, False)

    @rule(channel=st.sampled_from(CHANNELS), flag=st.booleans())
    def publish(self, channel: str, flag: bool) -> None:
        self._call("publish", channel, flag)

    @rule(peer=st.sampled_from(PEERS), flag=st.booleans())
    def send(self, peer: str, flag: bool) -> None:
        self._call("send", peer, flag)

    @rule(
        mode=st.sampled_from(["echo", "no_echo", "race"]),
        text=st.sampled_from((WELCOME % "peer-race", *UNRELATED)),
        echo=st.booleans(),
    )
    def close(self, mode: str, text: str, echo: bool) -> None:
        """``close()``; the server echoes at once, never, or after a frame it had queued."""
        h, c = self.h, self.h.client
        self.consistent()
        before = c.state
        c.close(h.now)
        server = _open(h.server)
        if mode != "echo" and server is not None:
            data = c.data_to_send()
            late = b""
            if mode == "race":  # queued by the server before it read the close frame
                server.send(text)
                late = server.take()
            server.receive(data)
            if mode == "no_echo" or not echo:
                server.out.clear()
            c.receive_data(late, h.now)
        h.pump()
        assert c.state == ("idle" if before == "idle" else "closed")
        assert c.pending_requests == 0
        if mode == "echo" or h.server is None:
            assert c.get_timer() is None  # the scripted server echoed at once
        h.advance(1.0)  # at most the 1 s close flush
        assert c.get_timer() is None
        assert h.server is None
        # after close() the session is over: at most the StateChange to closed, nothing else
        after = h.events[self.seen_events :]
        assert all(isinstance(e, StateChange) and e.to == "closed" for e in after), after
        assert len(after) <= 1

    # --- server side ------------------------------------------------------------------

    def _reply(self, rid: str, ok: bool, code: str) -> None:
        self.replied.add(rid)
        frame: dict[str, Any] = {"type": "ack", "requestId": rid}
        if not ok:
            frame = {"type": "error", "requestId": rid, "code": code}
        self.h.server_send(json.dumps(frame))

    @rule(pick=st.integers(0, 10**6), ok=st.booleans(), code=st.sampled_from(ERROR_CODES))
    def server_replies_to_pending(self, pick: int, ok: bool, code: str) -> None:
        server = _open(self.h.server)
        if server is None:
            return
        waiting = [
            f["requestId"]
            for f in server.frames()
            if isinstance(f.get("requestId"), str) and f["requestId"] not in self.replied
        ]
        if waiting:
            self._reply(waiting[pick % len(waiting)], ok, code)

    @rule(ok=st.booleans(), code=st.sampled_from(ERROR_CODES))
    def server_replies_to_everything(self, ok: bool, code: str) -> None:
        server = _open(self.h.server)
        if server is None:
            return
        for f in server.frames():
            rid = f.get("requestId")
            if isinstance(rid, str) and rid not in self.replied:
                self._reply(rid, ok, code)

    @precondition(lambda self: bool(self.issued))
    @rule(pick=st.integers(0, 10**6), ok=st.booleans(), code=st.sampled_from(ERROR_CODES))
    def server_replies_to_any_issued(self, pick: int, ok: bool, code: str) -> None:
        """Late, duplicate or stale replies included."""
        if _open(self.h.server) is None:
            return
        ids = sorted(self.issued)
        self._reply(ids[pick % len(ids)], ok, code)

    @rule(text=st.sampled_from(UNRELATED))
    def server_sends_unrelated(self, text: str) -> None:
        if _open(self.h.server) is not None:
            self.h.server_send(text)

    @rule(binary=st.booleans())
    def server_sends_non_text(self, binary: bool) -> None:
        server = _open(self.h.server)
        if server is None:
            return
        event = BytesMessage(data=b"\x00") if binary else Ping(payload=b"hb")
        server.out += server.ws.send(event)
        self.h.pump()

    @rule()
    def server_sends_welcome(self) -> None:
        if _open(self.h.server) is not None:
            self.h.server_send(WELCOME % "peer-late")

    @rule(code=st.sampled_from(CLOSE_CODES))
    def server_closes(self, code: int) -> None:
        if _open(self.h.server) is None:
            return
        if code == 1006:
            self.h.drop()
        else:
            self.h.server_close(code, "scripted")

    @rule()
    def tcp_drop(self) -> None:
        self.h.drop()

    @rule(seconds=st.floats(0.0, 40.0, allow_nan=False))
    def advance(self, seconds: float) -> None:
        self.h.advance(seconds)

    @rule(welcome=st.booleans(), refuse=st.booleans())
    def server_mood(self, welcome: bool, refuse: bool) -> None:
        """Whether later attempts get a welcome at once, and whether TCP connects at all."""
        self.h.auto_welcome = welcome
        self.h.refuse_connect = refuse

    @precondition(lambda self: self.token_mode)
    @rule(bad=st.sampled_from(["raise", "empty"]))
    def next_token_fails(self, bad: str) -> None:
        self.h.tokens.append(RuntimeError("provider down") if bad == "raise" else "")

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        h, c = self.h, self.h.client
        assert c.state in STATES
        for ev in h.events[self.seen_events :]:
            if isinstance(ev, StateChange):
                assert ev.from_ == self.trace, (ev, self.trace)
                assert ev.to != ev.from_
                assert ev.to in STATES
                self.trace = ev.to
            elif isinstance(ev, Disconnected):
                assert self.trace in ("reconnecting", "closed")
                assert (not ev.will_reconnect) == (self.trace == "closed"), (ev, self.trace)
            elif isinstance(ev, Connected):
                assert self.trace == "connected"
        self.seen_events = len(h.events)
        assert self.trace == c.state
        for act in h.actions[self.seen_actions :]:
            if isinstance(act, (RequestCompleted, RequestFailed)):
                assert act.request_id in self.issued
                self.resolved[act.request_id] += 1
                assert self.resolved[act.request_id] == 1, act
        self.seen_actions = len(h.actions)
        unresolved = self.issued - set(self.resolved)
        assert len(unresolved) <= c.pending_requests
        if c.state != "connected":
            assert c.pending_requests == 0
            assert not unresolved
        if c.state in ("idle", "closed"):
            assert c.get_timer() is None

    def teardown(self) -> None:
        h, c = self.h, self.h.client
        c.close(h.now)
        h.pump()
        h.advance(1.0)
        self.consistent()
        assert c.get_timer() is None
        assert c.state in ("idle", "closed")
        assert set(self.resolved) == self.issued
        assert all(n == 1 for n in self.resolved.values())
        h.advance(3600.0)
        assert c.state in ("idle", "closed")


def test_client_connection_state_machine() -> None:
    run_state_machine_as_test(
        ClientMachine,
        settings=settings(
            max_examples=300,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
