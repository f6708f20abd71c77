"""The local server over real loopback sockets, on asyncio and on trio."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from metered_realtime.adapters.server import LocalServer
from metered_realtime.core.broker import Limits, ServerConfig
from metered_realtime.core.jwt import sign_hs256
from tests.netclient import WsClient, http_get, self_signed_tls
from tests.wire import KID, SECRET, default_config

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    config = replace(default_config(), limits=Limits(idle_timeout=0.6, ping_interval=0.2))
    async with LocalServer(config, port=0) as srv:
        yield srv


async def test_welcome_pubsub_direct_and_presence(server: LocalServer) -> None:
    a = await WsClient.open(server.port)
    b = await WsClient.open(server.port)
    wa, wb = await a.recv(), await b.recv()
    assert wa["type"] == wb["type"] == "welcome"
    assert wa["expiresAt"] is None
    await a.send({"type": "subscribe", "channel": "room", "requestId": "1"})
    assert await a.recv() == {"type": "ack", "requestId": "1"}
    assert await a.recv() == {"type": "presence", "channel": "room", "joined": [], "left": []}
    await b.send({"type": "subscribe", "channel": "room", "requestId": "2"})
    assert (await b.recv())["type"] == "ack"
    assert (await b.recv())["joined"] == [{"peerId": wa["peerId"]}]
    assert (await a.recv())["joined"] == [{"peerId": wb["peerId"]}]
    await b.send({"type": "publish", "channel": "room", "data": {"n": 1}, "requestId": "3"})
    assert await b.recv() == {"type": "ack", "requestId": "3"}
    assert await a.recv() == {
        "type": "message",
        "channel": "room",
        "from": wb["peerId"],
        "data": {"n": 1},
    }
    await a.send({"type": "send", "to": wb["peerId"], "data": "psst", "requestId": "4"})
    assert await a.recv() == {"type": "ack", "requestId": "4"}
    assert await b.recv() == {"type": "direct", "from": wa["peerId"], "data": "psst"}
    await b.close()
    assert await a.recv() == {
        "type": "presence",
        "channel": "room",
        "joined": [],
        "left": [{"peerId": wb["peerId"]}],
    }
    await a.close()


async def test_errors_keep_serving_everyone(server: LocalServer) -> None:
    a = await WsClient.open(server.port)
    other = await WsClient.open(server.port)
    await a.recv()
    await other.recv()
    await a.send_text("{not json")
    assert (await a.recv())["code"] == "malformed_message"
    await a.send({"type": "nope", "requestId": "r"})
    assert await a.recv() == {
        "type": "error",
        "requestId": "r",
        "code": "unknown_type",
        "message": "unknown frame type",
    }
    await a.send({"type": "publish", "channel": "x" * 80, "data": "y" * 70_000, "requestId": "big"})
    assert await a.wait_closed() == 1009
    await other.send({"type": "ping"})
    assert await other.recv() == {"type": "pong"}
    await other.close()


async def test_bad_credentials_close_after_upgrade(server: LocalServer) -> None:
    bad = await WsClient.open(server.port, "/v1?key=pk_nope")
    assert await bad.wait_closed() == 4001
    assert bad.inbox == []
    expired = sign_hs256(
        {"sub": "x", "exp": 1000, "channels": ["**"], "permissions": []}, SECRET, KID
    )
    old = await WsClient.open(server.port, f"/v1?token={expired}")
    assert await old.wait_closed() == 4002


async def test_abrupt_drop_and_silent_peer_leave_presence(server: LocalServer) -> None:
    watcher = await WsClient.open(server.port)
    await watcher.recv()
    await watcher.send({"type": "subscribe", "channel": "c", "requestId": "1"})
    await watcher.recv_type("presence")
    for how in ("abort", "silent"):
        peer = await WsClient.open(server.port)
        pid = (await peer.recv())["peerId"]
        await peer.send({"type": "subscribe", "channel": "c", "requestId": "1"})
        assert (await watcher.recv_type("presence"))["joined"] == [{"peerId": pid}]
        if how == "abort":
            await peer.abort()
        # "silent": never read again, so protocol pings go unanswered; the idle bound (0.6 s
        # here) drops it. The watcher keeps talking, so it stays.
        with anyio.fail_after(5):
            while True:
                await watcher.send({"type": "ping"})
                frame = await watcher.recv()
                if frame["type"] == "presence":
                    assert frame["left"] == [{"peerId": pid}]
                    break
        if how == "silent":
            await peer.abort()
    await watcher.close()


async def test_graceful_shutdown_and_health() -> None:
    async with LocalServer(default_config(), port=0) as srv:
        status, body = await http_get(srv.port, "/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"
        assert (await http_get(srv.port, "/elsewhere"))[0] == 404
        c = await WsClient.open(srv.port)
        await c.recv()
        with anyio.fail_after(3):
            async with anyio.create_task_group() as tg:
                tg.start_soon(srv.shutdown)
                assert await c.recv() == {"type": "going_away", "retryAfterMs": 1000}
                assert await c.wait_closed() == 1001


async def test_connect_limit_answers_429() -> None:
    config = replace(default_config(), limits=Limits(connect_attempts_per_ip_per_minute=1))
    async with LocalServer(config, port=0) as srv:
        first = await WsClient.open(srv.port)
        assert (await first.recv())["type"] == "welcome"
        second = await WsClient.open(srv.port)
        assert second.status == 429
        await first.close()


async def test_tls(tmp_path: Path) -> None:
    cert, server_ctx = self_signed_tls(tmp_path)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.check_hostname = False
    async with LocalServer(default_config(), port=0, ssl_context=server_ctx) as srv:
        stream = await anyio.connect_tcp(
            "127.0.0.1", srv.port, ssl_context=client_ctx, tls_standard_compatible=False
        )
        client = WsClient(stream)
        from wsproto.events import Request

        await stream.send(client.ws.send(Request(host="localhost", target="/v1?key=pk_dev_local")))
        assert (await client.recv())["type"] == "welcome"
        await client.close()


async def test_many_clients_fan_out_over_sockets() -> None:
    async with LocalServer(ServerConfig(keys=default_config().keys), port=0) as srv:
        subs = [await WsClient.open(srv.port) for _ in range(50)]
        for s in subs:
            await s.recv()
            await s.send({"type": "subscribe", "channel": "fan", "requestId": "s"})
            await s.recv_type("ack")
        pub = await WsClient.open(srv.port)
        await pub.recv()
        await pub.send({"type": "publish", "channel": "fan", "data": {"i": 1}, "requestId": "p"})
        got: list[Any] = [await s.recv_type("message") for s in subs]
        assert all(m["data"] == {"i": 1} for m in got)
        for c in [*subs, pub]:
            await c.abort()
