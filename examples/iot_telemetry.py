"""IoT telemetry bus: many sensors publish readings, one collector subscribes to them all.

Each sensor is its own ``SignallingClient`` (as each device would be) publishing a JSON reading
on ``telemetry/<site>/<sensor>`` at a fixed rate. The collector subscribes to every sensor's
channel, sees devices come and go through presence, and checks per-sensor sequence numbers so
a lost or reordered reading would show. At the end it prints what it received.

Env: METERED_URL (default ws://127.0.0.1:8787), METERED_KEY (default pk_dev_local),
METERED_SENSORS (default 8), METERED_READINGS (per sensor, default 50), METERED_RATE (readings
per second per sensor, default 20), METERED_BACKEND (asyncio or trio; default asyncio).
Start a server first: ``metered-realtime serve``.
"""

from __future__ import annotations

import os
import random
import sys
import time

import anyio

from metered_realtime import Message, Presence, SignallingClient

URL = os.environ.get("METERED_URL", "ws://127.0.0.1:8787")
KEY = os.environ.get("METERED_KEY", "pk_dev_local")
SENSORS = int(os.environ.get("METERED_SENSORS", "8"))
READINGS = int(os.environ.get("METERED_READINGS", "50"))
RATE = float(os.environ.get("METERED_RATE", "20"))
SITE = "plant-1"
ROSTER = f"telemetry/{SITE}/online"  # every device subscribes here: presence = who is online


def channel(sensor: int) -> str:
    return f"telemetry/{SITE}/sensor-{sensor:03d}"


async def sensor(index: int, ready: anyio.Event) -> None:
    """One device: connect, publish READINGS readings at RATE per second, leave."""
    await ready.wait()
    temperature = 20.0 + index
    async with SignallingClient(api_key=KEY, url=URL) as device:
        await device.subscribe(ROSTER)  # shows up in the collector's presence
        for seq in range(READINGS):
            temperature += random.uniform(-0.2, 0.2)
            reading = {"sensor": index, "seq": seq, "celsius": round(temperature, 2),
                       "ts": time.time()}  # fmt: skip
            await device.publish(channel(index), reading)  # returns once the server acked
            await anyio.sleep(1 / RATE)


async def main() -> int:
    got: dict[int, list[int]] = {i: [] for i in range(SENSORS)}
    latency_ms: list[float] = []
    expected = SENSORS * READINGS
    done = anyio.Event()
    ready = anyio.Event()
    async with SignallingClient(api_key=KEY, url=URL) as collector:

        @collector.on(Message)
        def _(m: Message) -> None:
            reading = m.data
            got[reading["sensor"]].append(reading["seq"])
            latency_ms.append((time.time() - reading["ts"]) * 1000)
            if sum(len(v) for v in got.values()) == expected:
                done.set()

        online: set[str] = set()
        seen = [0]

        @collector.on(Presence)
        def _(p: Presence) -> None:
            online.update(x.peer_id for x in p.joined)
            online.difference_update(x.peer_id for x in p.left)
            seen[0] = max(seen[0], len(online))

        for i in range(SENSORS):
            await collector.subscribe(channel(i))
        await collector.subscribe(ROSTER)
        print(f"collector: listening to {SENSORS} sensors")
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(SENSORS):
                tg.start_soon(sensor, i, ready)
            ready.set()
            with anyio.fail_after(30 + READINGS / RATE):
                await done.wait()
        elapsed = time.perf_counter() - started
        print(f"collector: up to {seen[0]} devices online at once")
        with anyio.fail_after(10):
            while online:  # every device left: presence says so
                await anyio.sleep(0.01)
    in_order = all(seqs == list(range(READINGS)) for seqs in got.values()) and seen[0] == SENSORS
    latency_ms.sort()
    p50 = latency_ms[len(latency_ms) // 2]
    p99 = latency_ms[min(len(latency_ms) - 1, int(len(latency_ms) * 0.99))]
    print(
        f"collector: {expected} readings from {SENSORS} sensors in {elapsed:.1f} s,"
        f" every sensor in order: {in_order}; publish→receive p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print("iot telemetry:", "ok" if in_order else "FAILED")
    return 0 if in_order else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main, backend=os.environ.get("METERED_BACKEND", "asyncio")))
