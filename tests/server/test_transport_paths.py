"""The socket paths of the adapters, on asyncio and trio: order under bursts, big frames, slow
consumers.

On asyncio both ends use ``asyncio.Protocol`` transports with coalesced writes (plus an early
write past 4 KiB); on trio the client writes through the raw socket from its buffer, directly or
from the writer task, and the server's reader writes its own replies when its writer is idle.
Whatever the path, bytes must leave in the order the core produced them.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import anyio
import pytest

from metered_realtime import Message, Presence, SignallingClient
from metered_realtime.adapters.server import LocalServer
from metered_realtime.core.broker import Limits
from tests.netclient import WsClient
from tests.wire import default_config

pytestmark = pytest.mark.anyio


async def test_concurrent_publishes_arrive_in_call_order_big_and_small() -> None:
    """Hundreds of publishes from concurrent tasks, some of them 40 KB (partial sends), reach
    the subscriber in the order ``publish()`` was called, and every one is acknowledged."""
    async with LocalServer(default_config(), port=0) as server:
        url = f"ws://127.0.0.1:{server.port}"
        async with (
            SignallingClient(api_key="pk_dev_local", url=url) as pub,
            SignallingClient(api_key="pk_dev_local", url=url) as sub,
        ):
            got: list[int] = []
            done = anyio.Event()
            total = 600

            def on_message(ev: Message) -> None:
                got.append(ev.data["n"])
                if len(got) == total:
                    done.set()

            sub.on(Message, on_message)
            await sub.subscribe("burst")
            counter = itertools.count()

            async def publish_one() -> None:
                n = next(counter)  # taken right before publish() writes: the wire order
                pad = "x" * (40_000 if n % 50 == 7 else 10)
                await pub.publish("burst", {"n": n, "pad": pad})

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for _ in range(total):
                        tg.start_soon(publish_one)
                await done.wait()
            assert got == list(range(total))


@pytest.mark.parametrize("fanout", [1, 3])
async def test_slow_consumer_is_dropped_and_the_others_carry_on(fanout: int) -> None:
    """A subscriber that stops reading fills its kernel buffers, then its session buffer; past
    ``max_outbound_buffer`` the broker drops it (others see it leave) and keeps serving."""
    config = replace(default_config(), limits=Limits(max_outbound_buffer=256 * 1024))
    async with LocalServer(config, port=0) as server:
        slow = await WsClient.open(server.port)
        slow_id = (await slow.recv())["peerId"]
        await slow.send({"type": "subscribe", "channel": "flood", "requestId": "s"})
        await slow.recv_type("ack")
        url = f"ws://127.0.0.1:{server.port}"
        async with SignallingClient(api_key="pk_dev_local", url=url) as pub:
            watchers = []
            for _ in range(fanout):
                watcher = SignallingClient(api_key="pk_dev_local", url=url)
                await watcher.connect()
                watchers.append(watcher)
            left: list[Any] = []
            seen = [0] * fanout
            for i, watcher in enumerate(watchers):
                watcher.on(Presence, lambda ev: left.extend(p.peer_id for p in ev.left))

                def count(ev: Message, i: int = i) -> None:
                    seen[i] += 1

                watcher.on(Message, count)
                await watcher.subscribe("flood")
            blob = "y" * 16_000
            with anyio.fail_after(30):
                sent = 0
                while slow_id not in left:
                    await pub.publish("flood", {"blob": blob})
                    sent += 1
                    assert sent < 5_000, "the slow consumer was never dropped"
                await pub.publish("flood", "after")
                while min(seen) < sent + 1:
                    await anyio.sleep(0.01)
            assert len(server.broker.channels["flood"].sessions) == fanout
            for watcher in watchers:
                await watcher.close()
        await slow.abort()


def test_a_static_handler_can_use_anyio_under_plain_asyncio_run() -> None:
    """The asyncio server calls the static handler from a read callback, outside any task;
    anyio must still recognise asyncio there (outside pytest's anyio runner)."""
    import asyncio

    from tests.netclient import http_get

    seen: list[float] = []

    def static(request: Any) -> tuple[int, bytes, str]:
        seen.append(anyio.current_time())
        return 200, b"ok", "text/plain"

    async def main() -> tuple[int, bytes]:
        async with LocalServer(default_config(), port=0, static=static) as server:
            return await http_get(server.port, "/page")

    assert asyncio.run(main()) == (200, b"ok")
    assert len(seen) == 1


async def test_closing_with_unsent_bytes_then_draining_logs_nothing(anyio_backend: str) -> None:
    """A dropped slow consumer is closed with bytes still buffered and an abort armed for
    later; when the peer then drains them the transport closes on its own, and the armed
    abort must not trip over it (asyncio's abort() fails on a fully closed transport)."""
    errors: list[Any] = []
    if anyio_backend == "asyncio":
        import asyncio

        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    config = replace(default_config(), limits=Limits(max_outbound_buffer=128 * 1024))
    async with LocalServer(config, port=0) as server:
        slow = await WsClient.open(server.port)
        slow_id = (await slow.recv())["peerId"]
        await slow.send({"type": "subscribe", "channel": "flood", "requestId": "s"})
        await slow.recv_type("ack")
        url = f"ws://127.0.0.1:{server.port}"
        async with SignallingClient(api_key="pk_dev_local", url=url) as pub:
            with anyio.fail_after(30):
                while slow_id in server.broker.peers:
                    await pub.publish("flood", "z" * 16_000)
        with anyio.fail_after(10):
            try:
                while True:
                    await slow._read()  # drain: the server's transport finishes closing
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        await anyio.sleep(1.3)  # past the armed abort
    assert errors == []
