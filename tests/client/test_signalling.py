"""SignallingClient against the local server and scripted peers, on asyncio and on trio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from metered_realtime import (
    AckTimeoutError,
    Connected,
    Direct,
    Disconnected,
    DisconnectedError,
    Message,
    MeteredRealtimeError,
    NotConnectedError,
    Presence,
    PresencePeer,
    ReconnectOptions,
    ServerRequestError,
    SignallingClient,
    SignallingConnectError,
    StateChange,
    SubscribeOptions,
    TokenProviderError,
)
from metered_realtime.adapters.server import LocalServer
from metered_realtime.core.client import ClientConnection
from metered_realtime.core.errors import OversizedPayloadError
from metered_realtime.core.jwt import sign_hs256
from tests.netclient import self_signed_tls
from tests.proxy import Proxy, ScriptedServer, ScriptedSocket
from tests.wire import KID, SECRET, default_config

pytestmark = pytest.mark.anyio
FAST = ReconnectOptions(initial_delay=0.05, max_delay=0.2, jitter_ratio=0.0)


class Recorder:
    """A ``Logger`` that keeps every call."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any] | None]] = []

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.lines.append(("debug", msg, ctx))

    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.lines.append(("info", msg, ctx))

    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.lines.append(("warning", msg, ctx))

    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.lines.append(("error", msg, ctx))


def token(sub: str = "p1", ttl: float = 600, **claims: Any) -> str:
    body = {"sub": sub, "exp": time.time() + ttl, "channels": ["**"]}
    body["permissions"] = ["subscribe", "publish", "presence", "send"]
    body.update(claims)
    return sign_hs256(body, SECRET, KID)


def shorten(client: SignallingClient, **timeouts: Any) -> None:
    """Test-only: rebuild the client's core with shorter protocol timeouts (before connect)."""
    client._config = replace(client._config, **timeouts)
    client._core = ClientConnection(client._config, client._core._rng)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Wait for a condition that the client's own tasks make true (bounded)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.005)


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    async with LocalServer(default_config(), port=0) as srv:
        yield srv


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}"


# --- the happy path ---------------------------------------------------------------------


async def test_pubsub_direct_and_presence(server: LocalServer) -> None:
    async with SignallingClient(api_key="pk_dev_local", url=url(server.port)) as a:
        messages: list[Message] = []
        a.on(Message, messages.append)
        presence = a.events(Presence)
        directs = a.events(Direct)
        await a.subscribe("room")
        assert (await anext(presence)) == Presence("room", (), ())
        async with SignallingClient(api_key="pk_dev_local", url=url(server.port)) as b:
            await b.subscribe("room")
            assert (await anext(presence)).joined == (PresencePeer(b.peer_id or ""),)
            await b.publish("room", {"hello": "world", "n": [1, 2]})
            await b.send(a.peer_id or "", None)
            assert (await anext(directs)) == Direct(b.peer_id or "", None, None)
            await until(lambda: messages)
            assert messages == [
                Message("room", b.peer_id or "", {"hello": "world", "n": [1, 2]}, None)
            ]
            b_id = b.peer_id
        assert (await anext(presence)).left == (PresencePeer(b_id or ""),)
        await a.unsubscribe("room")
        assert a.state == "connected"


async def test_sender_metadata_with_tokens(server: LocalServer) -> None:
    bot = SignallingClient(
        token_provider=lambda: token("bot", peerMetadata={"role": "bot"}), url=url(server.port)
    )
    listener = SignallingClient(token_provider=lambda: token("listener"), url=url(server.port))
    async with bot, listener:
        assert bot.peer_id == "bot"
        got = listener.events(Message)
        await listener.subscribe("c", SubscribeOptions(include_sender_metadata=True))
        await bot.publish("c", "hi")
        assert await anext(got) == Message("c", "bot", "hi", {"role": "bot"})


# --- errors -----------------------------------------------------------------------------


async def test_every_error_type(server: LocalServer) -> None:
    client = SignallingClient(api_key="pk_dev_local", url=url(server.port))
    with pytest.raises(NotConnectedError):
        await client.publish("c", 1)
    await client.connect()
    with pytest.raises(MeteredRealtimeError) as twice:
        await client.connect()
    assert twice.value.code == "invalid_state"
    with pytest.raises(ServerRequestError) as info:
        await client.send("nobody", 1)
    assert info.value.code == "peer_not_found"
    assert info.value.request_id
    with pytest.raises(ValueError, match="channel"):
        await client.subscribe("")
    with pytest.raises(ValueError, match=r"NaN|JSON"):
        await client.publish("c", float("nan"))
    with pytest.raises(TypeError):
        await client.publish("c", {1, 2})
    with pytest.raises(OversizedPayloadError) as big:
        await client.publish("c", "x" * 70_000)
    assert big.value.cap == 65_536
    assert client.state == "connected"  # none of that hurt the connection
    await client.close()
    with pytest.raises(NotConnectedError):
        await client.subscribe("c")
    with pytest.raises(SignallingConnectError) as bad:
        await SignallingClient(api_key="pk_wrong", url=url(server.port)).connect()
    assert bad.value.close_code == 4001


async def test_ack_timeout_and_disconnect_errors(server: LocalServer) -> None:
    proxy = Proxy(server.port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        client = SignallingClient(api_key="pk_dev_local", url=url(proxy.port), reconnect=False)
        shorten(client, ack_timeout=0.3)
        await client.connect()
        proxy.silent = True
        with anyio.fail_after(5), pytest.raises(AckTimeoutError) as late:
            await client.publish("c", 1)
        assert late.value.timeout == 0.3
        outcomes: list[BaseException] = []

        async def pending() -> None:
            try:
                await client.publish("c", 2)
            except BaseException as exc:
                outcomes.append(exc)

        tg.start_soon(pending)
        await until(lambda: client._core.pending_requests == 1)
        proxy.kill()
        await until(lambda: outcomes)
        assert len(outcomes) == 1
        assert isinstance(outcomes[0], DisconnectedError)
        await until(lambda: client.state == "closed")
        await client.close()
        tg.cancel_scope.cancel()


# --- lifecycle ----------------------------------------------------------------------------


async def test_bare_lifecycle_leaves_nothing_running(
    server: LocalServer, anyio_backend: str
) -> None:
    client = SignallingClient(api_key="pk_dev_local", url=url(server.port))
    states: list[StateChange] = []
    client.on(StateChange, states.append)
    await client.connect()
    assert client._bg.running
    await client.subscribe("c")
    await client.close()
    assert not client._bg.running
    assert [(s.from_, s.to) for s in states] == [
        ("idle", "connecting"),
        ("connecting", "connected"),
        ("connected", "closed"),
    ]
    if anyio_backend == "asyncio":
        others = [
            t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
        ]
        assert not [t for t in others if "SignallingClient" in t.get_name()]
    # connect() again on the same instance is allowed after close()
    await client.connect()
    assert client.state == "connected"
    await client.close()
    await client.close()  # idempotent


async def test_events_iterators_end_on_close(server: LocalServer) -> None:
    client = SignallingClient(api_key="pk_dev_local", url=url(server.port))
    await client.connect()
    received: list[Message] = []

    async def consume() -> None:
        async for ev in client.events(Message):
            received.append(ev)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.sleep(0)
        with anyio.fail_after(5):
            await client.close()  # ends the iterator, so the task group can finish
    assert received == []


async def test_server_restart_mid_stream(anyio_backend: str) -> None:
    config = default_config()
    async with LocalServer(config, port=0) as first:
        port = first.port
        client = SignallingClient(api_key="pk_dev_local", url=url(port), reconnect=FAST)
        connected: list[Connected] = []
        client.on(Connected, connected.append)
        disconnected: list[Disconnected] = []
        client.on(Disconnected, disconnected.append)
        await client.connect()
        await client.subscribe("room", SubscribeOptions(include_sender_metadata=True))
        await client.subscribe("other")
        watcher = SignallingClient(api_key="pk_dev_local", url=url(port), reconnect=FAST)
        await watcher.connect()
        await watcher.subscribe("room")
    # the first server is gone (going_away, 1001); a new one takes the same port
    assert disconnected[0].code == 1001
    assert disconnected[0].will_reconnect
    async with LocalServer(config, port=port) as second:
        await until(lambda: len(connected) >= 2 and client.state == "connected")
        await until(
            lambda: (
                "room" in second.broker.channels
                and len(second.broker.channels["room"].sessions) == 2
            )
        )
        assert connected[-1].is_reconnect
        await until(lambda: "other" in second.broker.channels)
        room = second.broker.channels["room"]
        assert sorted(s.peer_id or "" for s in room.sessions) == sorted(
            [client.peer_id or "", watcher.peer_id or ""]
        )
        assert list(room.sessions.values()).count(True) == 1  # include_sender_metadata replayed
        got = client.events(Message)
        await watcher.publish("room", "after restart")
        with anyio.fail_after(5):
            assert (await anext(got)).data == "after restart"
        await client.close()
        await watcher.close()


async def test_watchdog_recovers_from_a_silent_link(server: LocalServer) -> None:
    proxy = Proxy(server.port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        client = SignallingClient(
            api_key="pk_dev_local", url=url(proxy.port), inactivity_timeout=1.2, reconnect=FAST
        )
        reconnected = anyio.Event()
        drops: list[Disconnected] = []
        client.on(Disconnected, drops.append)
        client.on(Connected, lambda ev: reconnected.set() if ev.is_reconnect else None)

        def unsilence(ev: Disconnected) -> None:
            proxy.silent = False

        client.on(Disconnected, unsilence)
        await client.connect()
        await client.subscribe("room")
        proxy.silent = True  # the link goes dead without any close
        with anyio.fail_after(6):
            await reconnected.wait()
        assert drops[0].code == 4000
        assert drops[0].will_reconnect
        assert proxy.connections == 2
        await client.publish("room", "alive")
        await client.close()
        tg.cancel_scope.cancel()


async def test_token_expiry_4002_then_fresh_token(server: LocalServer) -> None:
    issued: list[str] = []

    async def provider() -> str:
        issued.append(token("expiring", ttl=1.2 if not issued else 600))
        return issued[-1]

    client = SignallingClient(token_provider=provider, url=url(server.port), reconnect=FAST)
    events: list[Any] = []
    client.on(Disconnected, events.append)
    client.on(Connected, events.append)
    await client.connect()
    await until(lambda: len(events) >= 3, timeout=6)
    assert isinstance(events[1], Disconnected)
    assert (events[1].code, events[1].will_reconnect) == (4002, True)
    assert isinstance(events[2], Connected)
    assert events[2].is_reconnect
    assert len(issued) == 2
    await client.close()


@pytest.mark.parametrize("code", [4001, 4003, 4012, 4020])
async def test_terminal_codes_end_the_session(code: int) -> None:
    async def script(sock: ScriptedSocket) -> None:
        await sock.welcome()
        await sock.close(code, "terminal")

    scripted = ScriptedServer(script)
    async with anyio.create_task_group() as tg:
        await tg.start(scripted.run)
        client = SignallingClient(api_key="pk_x", url=url(scripted.port), reconnect=FAST)
        gone: list[Disconnected] = []
        client.on(Disconnected, gone.append)
        await client.connect()
        await until(lambda: gone)
        assert gone == [Disconnected(code, "terminal", False)]
        assert client.state == "closed"
        assert client._core.get_timer() is None  # no reconnect is scheduled
        assert scripted.accepted == 1
        await client.close()
        tg.cancel_scope.cancel()


async def test_4010_backoff_floor_reaches_the_driver() -> None:
    async def script(sock: ScriptedSocket) -> None:
        await sock.welcome()
        await sock.close(4010, "over concurrent limit")

    scripted = ScriptedServer(script)
    async with anyio.create_task_group() as tg:
        await tg.start(scripted.run)
        client = SignallingClient(api_key="pk_x", url=url(scripted.port))
        gone: list[tuple[Disconnected, float]] = []
        client.on(Disconnected, lambda ev: gone.append((ev, anyio.current_time())))
        await client.connect()
        await until(lambda: gone)
        event, when = gone[0]
        assert event.will_reconnect
        at = client._core.get_timer()  # the reconnect deadline, armed when the close arrived
        assert at is not None
        assert 29.99 <= at - when < 36.0  # exactly >= 30 s in the core's own clock (test_vectors)
        await client.close()
        tg.cancel_scope.cancel()


# --- handlers ---------------------------------------------------------------------------


async def test_a_raising_handler_is_isolated(server: LocalServer) -> None:
    log = Recorder()
    async with SignallingClient(api_key="pk_dev_local", url=url(server.port), logger=log) as client:
        seen: list[Any] = []

        @client.on(Message)
        def boom(ev: Message) -> None:
            raise RuntimeError("handler bug")

        @client.on(Message)
        async def async_boom(ev: Message) -> None:
            raise RuntimeError("async handler bug")

        client.on(Message, seen.append)
        await client.subscribe("c")
        async with SignallingClient(api_key="pk_dev_local", url=url(server.port)) as other:
            for i in range(3):
                await other.publish("c", i)
            await until(lambda: len(seen) == 3)
        assert [m.data for m in seen] == [0, 1, 2]
        await until(
            lambda: sum(1 for line in log.lines if "async event handler raised" in line[1]) == 3
        )
        assert sum(1 for line in log.lines if line[1] == "event handler raised") == 3
        assert client.state == "connected"


async def test_a_slow_async_handler_never_delays_the_read_loop(server: LocalServer) -> None:
    async with SignallingClient(api_key="pk_dev_local", url=url(server.port)) as client:
        release = anyio.Event()
        started: list[int] = []
        cancelled: list[int] = []

        @client.on(Message)
        async def slow(ev: Message) -> None:
            started.append(ev.data)
            try:
                await release.wait()  # never set: the handler blocks for the whole test
            except anyio.get_cancelled_exc_class():
                cancelled.append(ev.data)
                raise

        fast: list[int] = []
        client.on(Message, lambda ev: fast.append(ev.data))
        stream = client.events(Message)
        await client.subscribe("c")
        async with SignallingClient(api_key="pk_dev_local", url=url(server.port)) as other:
            for i in range(200):
                await other.publish("c", i)
            got = [(await anext(stream)).data for _ in range(200)]
        assert got == list(range(200))
        await until(lambda: len(fast) == 200)
        assert fast == list(range(200))
        assert len(started) == 200
    assert len(cancelled) == 200  # close() cancelled every pending handler task


async def test_events_drop_the_oldest_when_full(server: LocalServer) -> None:
    async with SignallingClient(api_key="pk_dev_local", url=url(server.port)) as client:
        stream = client.events(Message, maxsize=3)
        seen: list[Message] = []
        client.on(Message, seen.append)
        await client.subscribe("c")
        async with SignallingClient(api_key="pk_dev_local", url=url(server.port)) as other:
            for i in range(10):
                await other.publish("c", i)
            await until(lambda: len(seen) == 10)
        assert [(await anext(stream)).data for _ in range(3)] == [7, 8, 9]
        assert stream.dropped == 7


async def test_once_off_and_decorators(server: LocalServer) -> None:
    async with SignallingClient(api_key="pk_dev_local", url=url(server.port)) as client:
        once: list[Any] = []
        always: list[Any] = []
        client.once(Message, once.append)

        @client.on(Message)
        def keep(ev: Message) -> None:
            always.append(ev)

        removed: list[Any] = []
        client.on(Message, removed.append)
        client.off(Message, removed.append)
        await client.subscribe("c")
        async with SignallingClient(api_key="pk_dev_local", url=url(server.port)) as other:
            await other.publish("c", 1)
            await other.publish("c", 2)
            await until(lambda: len(always) == 2)
        assert [m.data for m in once] == [1]
        assert removed == []
        with pytest.raises(TypeError):
            client.on("message", print)  # type: ignore[call-overload]


# --- auth and construction ----------------------------------------------------------------


async def test_token_providers_sync_async_and_failing(server: LocalServer) -> None:
    sync_client = SignallingClient(token_provider=lambda: token("sync-peer"), url=url(server.port))
    await sync_client.connect()
    assert sync_client.peer_id == "sync-peer"
    await sync_client.close()

    def broken() -> str:
        raise OSError("backend down")

    with pytest.raises(SignallingConnectError) as first:
        await SignallingClient(token_provider=broken, url=url(server.port)).connect()
    assert isinstance(first.value.__cause__, OSError)

    async def too_slow() -> str:
        await anyio.sleep(10)
        return "never"

    slow = SignallingClient(
        token_provider=too_slow, url=url(server.port), token_provider_timeout=0.2
    )
    with anyio.fail_after(5), pytest.raises(SignallingConnectError):
        await slow.connect()

    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            return token("flaky")
        raise RuntimeError("mint failed")

    client = SignallingClient(token_provider=flaky, url=url(server.port), reconnect=FAST)
    failures: list[TokenProviderError] = []
    client.on(TokenProviderError, failures.append)
    await client.connect()
    (session,) = [s for s in server.broker.sessions.values() if s.peer_id == "flaky"]
    session.close(4011, None, time.time())  # a retryable drop; every later mint fails
    server._flush()
    await until(lambda: len(failures) >= 4)
    assert [f.consecutive_failures for f in failures[:2]] == [3, 4]
    assert isinstance(failures[0].err, RuntimeError)
    await client.close()


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SignallingClient()
    with pytest.raises(ValueError, match="exactly one"):
        SignallingClient(api_key="pk", token_provider=lambda: "t")
    with pytest.raises(ValueError, match="ws"):
        SignallingClient(api_key="pk", url="ws://192.0.2.1:8787")
    with pytest.raises(ValueError, match="path"):
        SignallingClient(api_key="pk", url="wss://example.test/v1")
    with pytest.raises(TypeError):
        SignallingClient(api_key="pk", reconnect="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token_provider_timeout"):
        SignallingClient(token_provider=lambda: "t", token_provider_timeout=0)
    with pytest.raises(ValueError, match="initial_delay"):
        ReconnectOptions(initial_delay=0)
    assert SignallingClient(api_key="pk").state == "idle"


async def test_wss_with_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, ctx = self_signed_tls(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust our throwaway CA for this test
    async with (
        LocalServer(default_config(), port=0, ssl_context=ctx) as srv,
        SignallingClient(api_key="pk_dev_local", url=f"wss://127.0.0.1:{srv.port}") as client,
    ):
        await client.subscribe("secure")
        assert client.state == "connected"


async def test_logs_never_carry_credentials(server: LocalServer) -> None:
    log = Recorder()
    secret_token = token("quiet")
    client = SignallingClient(token_provider=lambda: secret_token, url=url(server.port), logger=log)
    await client.connect()
    await client.close()
    bad = SignallingClient(api_key="pk_secret_never_logged", url=url(server.port), logger=log)
    with pytest.raises(SignallingConnectError):
        await bad.connect()
    text = repr(log.lines)
    assert log.lines
    assert secret_token[:20] not in text
    assert "pk_secret_never_logged" not in text


def test_sync_handlers_can_use_anyio_under_plain_asyncio_run() -> None:
    """Handlers run from the transport's callbacks; anyio must still see an asyncio loop
    there (outside pytest's anyio runner, which sets the context itself)."""
    import asyncio as aio

    used: list[float] = []
    log = Recorder()

    async def main() -> None:
        async with LocalServer(default_config(), port=0) as srv:
            url_ = f"ws://127.0.0.1:{srv.port}"
            async with SignallingClient(api_key="pk_dev_local", url=url_, logger=log) as client:
                client.on(Presence, lambda ev: used.append(anyio.current_time()))
                got = anyio.Event()
                client.on(Presence, lambda ev: got.set())
                await client.subscribe("plain")
                with anyio.fail_after(5):
                    await got.wait()

    aio.run(main())
    assert len(used) == 1
    assert not [line for line in log.lines if line[0] == "error"]
