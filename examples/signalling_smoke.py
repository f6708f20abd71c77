"""Pub/sub round trip with SignallingClient: subscribe, publish, receive, send a direct message.

Env: METERED_URL (default ws://127.0.0.1:8787), METERED_KEY (default pk_dev_local),
METERED_BACKEND (asyncio or trio; default asyncio). Start a server first:
``metered-realtime serve``.
"""

from __future__ import annotations

import os
import sys
import time

import anyio

from metered_realtime import Direct, Message, Presence, SignallingClient

URL = os.environ.get("METERED_URL", "ws://127.0.0.1:8787")
KEY = os.environ.get("METERED_KEY", "pk_dev_local")


async def main() -> int:
    async with (
        SignallingClient(api_key=KEY, url=URL) as alice,
        SignallingClient(api_key=KEY, url=URL) as bob,
    ):
        messages = bob.events(Message)
        directs = bob.events(Direct)
        presence = alice.events(Presence)
        await alice.subscribe("smoke/room")
        await anext(presence)  # alice's snapshot of the room
        await bob.subscribe("smoke/room")
        joined = await anext(presence)
        print(f"presence: {[p.peer_id for p in joined.joined]} joined smoke/room")

        with anyio.fail_after(5):
            started = time.perf_counter()
            await alice.publish("smoke/room", {"hello": "smoke", "n": 1})
            msg = await anext(messages)
            elapsed_ms = (time.perf_counter() - started) * 1000
        print(f"message: {msg.data} from {msg.sender_peer_id} in {elapsed_ms:.2f} ms")

        assert bob.peer_id is not None
        with anyio.fail_after(5):
            await alice.send(bob.peer_id, "just for you")
            direct = await anext(directs)
        print(f"direct: {direct.data!r} from {direct.sender_peer_id}")
        ok = msg.data == {"hello": "smoke", "n": 1} and direct.data == "just for you"
    print("signalling smoke:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main, backend=os.environ.get("METERED_BACKEND", "asyncio")))
