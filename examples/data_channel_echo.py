"""Open a P2P data channel between two MeteredPeers and echo messages over it.

One process plays both sides: "echo" answers every message it receives; "caller" opens a
channel when it sees the echo peer join, sends messages and measures round trips.

Env: METERED_URL (default ws://127.0.0.1:8787), METERED_KEY (default pk_dev_local),
METERED_MESSAGES (default 200), METERED_LOOPBACK_ONLY (default 1: ICE on 127.0.0.1 only).
Start a server first: ``metered-realtime serve``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

from metered_realtime import (
    DataChannelOpened,
    DCMessage,
    DCOpen,
    MeteredPeer,
    PeerJoined,
)

URL = os.environ.get("METERED_URL", "ws://127.0.0.1:8787")
KEY = os.environ.get("METERED_KEY", "pk_dev_local")
COUNT = int(os.environ.get("METERED_MESSAGES", "200"))
LOOPBACK = os.environ.get("METERED_LOOPBACK_ONLY", "1") == "1"


def make_peer() -> MeteredPeer:
    return MeteredPeer(api_key=KEY, url=URL, loopback_only=LOOPBACK, ice_servers=[])


async def main() -> int:
    echo, caller = make_peer(), make_peer()
    replies: asyncio.Queue[str] = asyncio.Queue()
    opened = asyncio.Event()
    channels = []

    @echo.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        @ev.peer.on(DataChannelOpened)
        def _(dc: DataChannelOpened) -> None:
            @dc.channel.on(DCMessage)
            async def _(m: DCMessage) -> None:
                await dc.channel.send(m.data)  # echo it back

    @caller.on(PeerJoined)
    def _(ev: PeerJoined) -> None:
        channel = ev.peer.create_data_channel("echo")
        channels.append(channel)
        channel.on(DCOpen, lambda _: opened.set())
        channel.on(DCMessage, lambda m: replies.put_nowait(str(m.data)))

    async with echo, caller:
        await echo.join("examples/echo")
        await caller.join("examples/echo")
        await asyncio.wait_for(opened.wait(), 15)
        rtts = []
        for i in range(COUNT):
            started = time.perf_counter()
            await channels[0].send(f"ping {i}")
            reply = await asyncio.wait_for(replies.get(), 5)
            rtts.append((time.perf_counter() - started) * 1000)
            assert reply == f"ping {i}", reply
        rtts.sort()
        p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
        p50 = statistics.median(rtts)
        print(f"{COUNT} echoes over a P2P data channel: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print("data channel echo: ok")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
