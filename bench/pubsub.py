"""Pub/sub benchmark: ``SignallingClient`` against a bare wsproto client, same server process.

Run ``python bench/pubsub.py`` (from anywhere; ``--help`` for the flags). It starts
``python -m metered_realtime serve --port 0`` as a separate process (cwd = the temp directory, so
the repository's top-level ``metered_realtime/`` folder cannot shadow the installed package),
pins the server and this process to different CPUs when it can, and prints figures. It asserts
nothing: there are no thresholds, only numbers. Every wait is bounded (``--timeout``).

Every figure is measured twice, once per client implementation, against the same server:

* ``sdk`` — :class:`metered_realtime.SignallingClient` (the anyio adapter over the sans-IO core),
  messages taken from a sync ``on(Message, handler)``;
* ``raw`` — a bare client: anyio TCP stream, wsproto framing, hand-built JSON frames with 36-char
  request ids, one reader task resolving per-request ``anyio.Event`` s and one writer task, i.e.
  the same task structure as the SDK with none of its validation, typed frames or events.

The ``SDK/raw`` column is their ratio (for a rate below 1 is worse, for a latency or a CPU cost
above 1 is worse).

Scenario A, throughput: a publisher connection and a subscriber connection (one event loop) on
channel ``bench``; ``--inflight`` publisher tasks each await ``publish`` in a loop, so that many
publishes are unacknowledged at any time. The payload is
``{"seq": n, "t": perf_counter_ns(), "pad": "x" * k}`` with ``k`` chosen so the ``message`` frame
the subscriber receives is ``--size`` bytes of JSON, or ``k = 0`` when the fields alone are larger
(with the server's 36-character peer ids and 36-character request ids that floor is ~130 B; the
sizes used are printed). Reported, after ``--warmup`` messages: messages/s received by the
subscriber over ``--count`` messages, and the publish→receive latency (``publish()`` called →
subscriber handler runs) p50/p99.

Scenario B, latency, one request in flight: client A subscribes to ``bench/rt-back``, client B to
``bench/rt-out``. A publishes on ``bench/rt-out``; B's (sync) handler hands the data to an echo
task that publishes it on ``bench/rt-back``; A's handler receives it. A starts the next iteration
only once its publish is acknowledged and the echo has arrived. Per iteration, all from the
moment A calls ``publish()`` (``perf_counter_ns``, one process, one clock):

* one-way    = until B's handler runs (client → server → client);
* ack        = until A's ``publish()`` returns (A's request → server → A's ack);
* round trip = until A's handler gets the echo (client → server → client → server → client).

Also printed: CPU time per message / per iteration and CPU utilisation of this process and of the
server process over the measured window (Linux: ``/proc/PID/task/*/schedstat``), and a "floor":
a blocking-socket echo between the same two CPUs with no event loop and no framing, i.e. what the
machine charges for two loopback hops before any Python runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc
from _proc import pin_cpus, read_match  # bench/ is on sys.path when run as a script
from wsproto import WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage
from wsproto.events import Message as WsMessage

from metered_realtime import Message, SignallingClient

KEY = "pk_dev_local"
CHANNEL = "bench"
RT_OUT = "bench/rt-out"
RT_BACK = "bench/rt-back"
SERVER_START_TIMEOUT = 15.0
HANDSHAKE_TIMEOUT = 10.0
READ_SIZE = 65_536
PEER_ID_LEN = 36  # the local server's pk peer ids are UUIDs

perf_ns = time.perf_counter_ns
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads

Handler = Callable[[str, Any], None]
"""``handler(channel, data)`` for every channel broadcast the client receives."""


# --- the two client implementations -----------------------------------------------------


class BenchClient(Protocol):
    """What the scenarios need from a client."""

    def set_handler(self, handler: Handler) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, data: Any) -> None: ...


class SdkClient:
    """``SignallingClient`` behind the scenarios' interface (a sync ``Message`` handler)."""

    def __init__(self, client: SignallingClient) -> None:
        self.client = client
        self._handler: Handler | None = None
        client.on(Message, self._on_message)

    def _on_message(self, message: Message) -> None:
        if self._handler is not None:
            self._handler(message.channel, message.data)

    def set_handler(self, handler: Handler) -> None:
        self._handler = handler

    async def subscribe(self, channel: str) -> None:
        await self.client.subscribe(channel)

    async def publish(self, channel: str, data: Any) -> None:
        await self.client.publish(channel, data)


class RequestFailed(Exception):
    """The server answered a raw request with an ``error`` frame."""


class _RawWaiter:
    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: str | None = None


class RawClient:
    """A bare wsproto client (see the module docstring); use :func:`open_raw`."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.peer_id = ""
        self._out = bytearray()
        self._wake = anyio.Event()
        self._pending: dict[str, _RawWaiter] = {}
        self._next_id = 0
        self._handler: Handler | None = None
        self._partial: list[str] = []
        self.closed = anyio.Event()

    def set_handler(self, handler: Handler) -> None:
        self._handler = handler

    async def subscribe(self, channel: str) -> None:
        rid = self._rid()
        await self._request(
            rid, '{"type":"subscribe","channel":' + _dumps(channel) + ',"requestId":"' + rid + '"}'
        )

    async def publish(self, channel: str, data: Any) -> None:
        rid = self._rid()
        text = (
            '{"type":"publish","channel":'
            + _dumps(channel)
            + ',"data":'
            + _dumps(data)
            + ',"requestId":"'
            + rid
            + '"}'
        )
        await self._request(rid, text)

    def _rid(self) -> str:
        self._next_id += 1
        return f"{self._next_id:036x}"

    async def _request(self, rid: str, text: str) -> None:
        waiter = self._pending[rid] = _RawWaiter()
        self._write(self.ws.send(WsMessage(data=text)))
        await waiter.event.wait()
        if waiter.error is not None:
            raise RequestFailed(waiter.error)

    def _write(self, data: bytes) -> None:
        self._out += data
        self._wake.set()

    async def handshake(self, port: int) -> None:
        """Upgrade and read up to the welcome (before the reader task starts)."""
        self._write(self.ws.send(Request(host=f"127.0.0.1:{port}", target=f"/v1?key={KEY}")))
        await self.stream.send(bytes(self._out))
        self._out.clear()
        while not self.peer_id:
            self.ws.receive_data(await self.stream.receive(READ_SIZE))
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    frame = _loads(event.data)
                    if frame.get("type") == "welcome":
                        self.peer_id = frame["peerId"]
                elif not isinstance(event, AcceptConnection):
                    raise RuntimeError(f"handshake failed: {event!r}")

    async def reader(self) -> None:
        ws, stream = self.ws, self.stream
        try:
            while True:
                ws.receive_data(await stream.receive(READ_SIZE))
                for event in ws.events():
                    if type(event) is TextMessage:
                        if not event.message_finished:
                            self._partial.append(event.data)
                            continue
                        text = event.data
                        if self._partial:
                            text = "".join(self._partial) + text
                            self._partial.clear()
                        self._on_frame(_loads(text))
                    elif isinstance(event, Ping):
                        self._write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        if ws.state is ConnectionState.REMOTE_CLOSING:
                            self._write(ws.send(event.response()))
                        return
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self.closed.set()

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "message":
            if self._handler is not None:
                self._handler(frame["channel"], frame["data"])
        elif kind == "ack":
            waiter = self._pending.pop(frame["requestId"], None)
            if waiter is not None:
                waiter.event.set()
        elif kind == "error":
            waiter = self._pending.pop(frame.get("requestId") or "", None)
            if waiter is not None:
                waiter.error = str(frame.get("code"))
                waiter.event.set()

    async def writer(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if self._out:
                    data = bytes(self._out)
                    self._out.clear()
                    await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


@contextlib.asynccontextmanager
async def open_raw(port: int) -> AsyncIterator[RawClient]:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    client = RawClient(stream)
    try:
        with anyio.fail_after(HANDSHAKE_TIMEOUT):
            await client.handshake(port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.reader)
            tg.start_soon(client.writer)
            yield client
            if client.ws.state is ConnectionState.OPEN:
                client._write(client.ws.send(CloseConnection(code=1000)))
            with anyio.move_on_after(1.0):
                await client.closed.wait()
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


@contextlib.asynccontextmanager
async def open_sdk(port: int) -> AsyncIterator[SdkClient]:
    client = SignallingClient(api_key=KEY, url=f"ws://127.0.0.1:{port}", reconnect=False)
    with anyio.fail_after(HANDSHAKE_TIMEOUT):
        await client.connect()
    try:
        yield SdkClient(client)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
            await client.close()


def open_client(impl: str, port: int) -> contextlib.AbstractAsyncContextManager[BenchClient]:
    return open_sdk(port) if impl == "sdk" else open_raw(port)


# --- measurement helpers ----------------------------------------------------------------


def percentile(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in milliseconds."""
    if not sorted_ns:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


def make_pad(size: int) -> str:
    """Padding that makes the ``message`` frame the subscriber receives ``size`` bytes."""
    sample = {"seq": 10_000, "t": perf_ns(), "pad": ""}
    frame = {"type": "message", "channel": CHANNEL, "from": "p" * PEER_ID_LEN, "data": sample}
    return "x" * max(0, size - len(_dumps(frame)))


def frame_sizes(pad: str) -> tuple[int, int]:
    """(publish frame, message frame) JSON bytes for a typical payload."""
    data = {"seq": 10_000, "t": perf_ns(), "pad": pad}
    publish = {"type": "publish", "channel": CHANNEL, "data": data, "requestId": "r" * 36}
    message = {"type": "message", "channel": CHANNEL, "from": "p" * PEER_ID_LEN, "data": data}
    return len(_dumps(publish)), len(_dumps(message))


class CpuMeter:
    """CPU time of this process and of the server process, in nanoseconds.

    The server's comes from ``/proc/PID/task/*/schedstat`` (Linux, ns resolution); NaN elsewhere.
    """

    def __init__(self, server_pid: int) -> None:
        self._tasks = f"/proc/{server_pid}/task"

    def _server_ns(self) -> float:
        total = 0
        try:
            for tid in os.listdir(self._tasks):
                with open(f"{self._tasks}/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return math.nan
        return float(total)

    def snapshot(self) -> tuple[int, int, float]:
        """(wall, client CPU, server CPU) nanoseconds."""
        return perf_ns(), time.process_time_ns(), self._server_ns()


def cpu_figures(
    prefix: str, unit: str, n: int, start: tuple[int, int, float], end: tuple[int, int, float]
) -> dict[str, float]:
    """Client/server CPU per operation (µs) and utilisation (%) between two snapshots."""
    wall = end[0] - start[0]
    client, server = end[1] - start[1], end[2] - start[2]
    return {
        f"{prefix} client CPU µs/{unit}": client / n / 1e3,
        f"{prefix} server CPU µs/{unit}": server / n / 1e3,
        f"{prefix} client CPU %": 100 * client / wall,
        f"{prefix} server CPU %": 100 * server / wall,
    }


@dataclass
class Figures:
    """One scenario's results for one implementation, by figure name."""

    values: dict[str, float]


# --- scenarios --------------------------------------------------------------------------


async def scenario_throughput(
    impl: str,
    port: int,
    meter: CpuMeter,
    *,
    count: int,
    warmup: int,
    inflight: int,
    pad: str,
    timeout: float,
) -> Figures:
    total = warmup + count
    latencies: list[int] = []
    received = 0
    start = end = (0, 0, 0.0)
    done = anyio.Event()

    def on_message(channel: str, data: Any) -> None:
        nonlocal received, start, end
        now = perf_ns()
        received += 1
        if received > warmup:
            latencies.append(now - data["t"])
        if received == warmup:
            start = meter.snapshot()
        if received == total:
            end = meter.snapshot()
            done.set()

    next_seq = 0

    async def publisher(client: BenchClient) -> None:
        nonlocal next_seq, start
        while next_seq < total:
            seq = next_seq
            next_seq += 1
            if seq == 0 and warmup == 0:
                start = meter.snapshot()
            await client.publish(CHANNEL, {"seq": seq, "t": perf_ns(), "pad": pad})

    with anyio.fail_after(timeout):
        async with open_client(impl, port) as sub, open_client(impl, port) as pub:
            sub.set_handler(on_message)
            await sub.subscribe(CHANNEL)
            async with anyio.create_task_group() as tg:
                for _ in range(inflight):
                    tg.start_soon(publisher, pub)
                await done.wait()
    latencies.sort()
    seconds = (end[0] - start[0]) / 1e9
    return Figures(
        {
            "A msgs/s": count / seconds if seconds > 0 else math.nan,
            "A pub→recv p50 ms": percentile(latencies, 50),
            "A pub→recv p99 ms": percentile(latencies, 99),
            **cpu_figures("A", "msg", count, start, end),
        }
    )


async def scenario_latency(
    impl: str, port: int, meter: CpuMeter, *, count: int, warmup: int, pad: str, timeout: float
) -> Figures:
    one_way: list[int] = []
    acks: list[int] = []
    rtts: list[int] = []
    t_b = t_a = 0
    got_echo = anyio.Event()
    echo_in, echo_out = anyio.create_memory_object_stream[Any](math.inf)

    def on_b(channel: str, data: Any) -> None:
        nonlocal t_b
        t_b = perf_ns()
        echo_in.send_nowait(data)

    def on_a(channel: str, data: Any) -> None:
        nonlocal t_a
        t_a = perf_ns()
        got_echo.set()

    async def echo(b: BenchClient) -> None:
        async with echo_out:
            async for data in echo_out:
                await b.publish(RT_BACK, data)

    with anyio.fail_after(timeout):
        async with open_client(impl, port) as a, open_client(impl, port) as b:
            a.set_handler(on_a)
            b.set_handler(on_b)
            await a.subscribe(RT_BACK)
            await b.subscribe(RT_OUT)
            async with anyio.create_task_group() as tg:
                tg.start_soon(echo, b)
                start = meter.snapshot()
                for seq in range(warmup + count):
                    if seq == warmup:
                        start = meter.snapshot()
                    got_echo = anyio.Event()
                    t0 = perf_ns()
                    await a.publish(RT_OUT, {"seq": seq, "t": t0, "pad": pad})
                    t_ack = perf_ns()
                    await got_echo.wait()
                    if seq >= warmup:
                        one_way.append(t_b - t0)
                        acks.append(t_ack - t0)
                        rtts.append(t_a - t0)
                end = meter.snapshot()
                tg.cancel_scope.cancel()
    for series in (one_way, acks, rtts):
        series.sort()
    return Figures(
        {
            "B one-way p50 ms": percentile(one_way, 50),
            "B one-way p99 ms": percentile(one_way, 99),
            "B ack p50 ms": percentile(acks, 50),
            "B ack p99 ms": percentile(acks, 99),
            "B round trip p50 ms": percentile(rtts, 50),
            "B round trip p99 ms": percentile(rtts, 99),
            **cpu_figures("B", "iter", count, start, end),
        }
    )


# --- the server process ------------------------------------------------------------------


class ServerProcess:
    """``python -m metered_realtime serve --port 0`` in a child process (cwd outside the repo)."""

    def __init__(self, backend: str, profile: str | None) -> None:
        cmd = [sys.executable]
        if profile:
            cmd += ["-m", "cProfile", "-o", os.path.abspath(profile)]
        cmd += ["-m", "metered_realtime", "serve", "--port", "0", "--log-level", "WARNING"]
        cmd += ["--backend", backend]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            cmd,
            cwd=tempfile.gettempdir(),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
        )
        self.port = self._read_port()

    def _read_port(self) -> int:
        found = read_match(
            self.proc, rb"listening on ws://127\.0\.0\.1:(\d+)", SERVER_START_TIMEOUT
        )
        if found is None:
            self.stop()
            raise RuntimeError(f"server did not start: {self.stderr_tail()}")
        return int(found.group(1))

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGINT (a clean exit, so a cProfile dump gets written), then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


ECHO_CODE = """
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(1)
print("port", s.getsockname()[1], flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while d := c.recv(65536):
    c.sendall(d)
"""


def measure_floor(server_cpu: int | None, count: int, size: int) -> tuple[float, float]:
    """Blocking-socket echo RTT to a child process on the server's CPU: (p50, p99) ms.

    Two loopback hops between the two CPUs with no event loop and no framing: the floor the
    machine itself puts under every hop pair of scenario B.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", ECHO_CODE],
        cwd=tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        if server_cpu is not None:
            os.sched_setaffinity(proc.pid, {server_cpu})
        found = read_match(proc, rb"port (\d+)", SERVER_START_TIMEOUT)
        if found is None:
            raise RuntimeError("echo process did not start")
        rtts: list[int] = []
        payload = b"x" * size
        with socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(count + count // 10):
                t0 = perf_ns()
                sock.sendall(payload)
                got = 0
                while got < size:
                    chunk = sock.recv(65_536)
                    if not chunk:
                        raise RuntimeError("echo process went away")
                    got += len(chunk)
                if i >= count // 10:
                    rtts.append(perf_ns() - t0)
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
    rtts.sort()
    return percentile(rtts, 50), percentile(rtts, 99)


# --- driver -----------------------------------------------------------------------------

FIGURE_HELP = {
    "A msgs/s": "subscriber receive rate, --inflight publishes unacked",
    "A pub→recv p50 ms": "publish() called → subscriber handler, under load",
    "A pub→recv p99 ms": "",
    "B one-way p50 ms": "A publish() called → B handler (1 in flight)",
    "B one-way p99 ms": "",
    "B ack p50 ms": "A publish() called → A publish() returns",
    "B ack p99 ms": "",
    "B round trip p50 ms": "A publish() → B handler → B publish() echo → A handler",
    "B round trip p99 ms": "",
    "A client CPU µs/msg": "client process CPU time per message (pub + sub)",
    "A server CPU µs/msg": "server process CPU time per message (publish in, ack + message out)",
    "A client CPU %": "of one core, over the measured window",
    "A server CPU %": "",
    "B client CPU µs/iter": "per round-trip iteration (2 publishes, 2 acks, 2 messages)",
    "B server CPU µs/iter": "",
    "B client CPU %": "",
    "B server CPU %": "",
}


async def run_backend(
    args: argparse.Namespace, port: int, server_pid: int, pad: str
) -> dict[str, dict[str, float]]:
    meter = CpuMeter(server_pid)
    results: dict[str, dict[str, float]] = {impl: {} for impl in args.impls}
    # raw first, then sdk, per scenario: both see the server equally warm
    if args.scenario in ("throughput", "both"):
        for impl in args.impls:
            figures = await scenario_throughput(
                impl,
                port,
                meter,
                count=args.count,
                warmup=args.warmup,
                inflight=args.inflight,
                pad=pad,
                timeout=args.timeout,
            )
            results[impl].update(figures.values)
    if args.scenario in ("latency", "both"):
        for impl in args.impls:
            figures = await scenario_latency(
                impl,
                port,
                meter,
                count=args.rt_count,
                warmup=args.rt_warmup,
                pad=pad,
                timeout=args.timeout,
            )
            results[impl].update(figures.values)
    return results


def print_table(backend: str, results: dict[str, dict[str, float]], seconds: float) -> None:
    impls = list(results)
    names = [name for name in FIGURE_HELP if any(name in results[i] for i in impls)]
    print(f"\n== client backend: {backend}  ({seconds:.1f} s)")
    header = f"{'figure':<22}" + "".join(f"{i:>11}" for i in impls)
    if impls == ["raw", "sdk"]:
        header += f"{'SDK/raw':>9}"
    print(header + "   meaning")
    for name in names:
        row = f"{name:<22}"
        for impl in impls:
            value = results[impl].get(name, math.nan)
            if name.endswith("/s"):
                row += f"{value:>11,.0f}"
            elif " CPU " in name:
                row += f"{value:>11.1f}"
            else:
                row += f"{value:>11.3f}"
        if impls == ["raw", "sdk"]:
            raw, sdk = results["raw"].get(name, math.nan), results["sdk"].get(name, math.nan)
            row += f"{sdk / raw:>9.2f}" if raw else f"{'-':>9}"
        print(row + "   " + FIGURE_HELP[name])


def print_targets(all_results: dict[str, dict[str, dict[str, float]]]) -> None:
    targets = (
        ("A msgs/s", ">=", 35_000.0),
        ("B round trip p50 ms", "<=", 0.5),
        ("B round trip p99 ms", "<=", 1.0),
    )
    print("\n== SDK against the targets (informational)")
    for backend, results in all_results.items():
        sdk = results.get("sdk", {})
        for name, op, goal in targets:
            if name in sdk:
                value = sdk[name]
                met = value >= goal if op == ">=" else value <= goal
                shown = f"{value:,.0f}" if name.endswith("/s") else f"{value:.3f}"
                print(
                    f"  {backend:<8} {name:<22} {shown:>9}  target {op} {goal:g}"
                    f"  {'met' if met else 'NOT met'}"
                )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--backend", choices=["asyncio", "trio", "both"], default="both", help="client event loop"
    )
    parser.add_argument("--count", type=int, default=50_000, help="scenario A messages measured")
    parser.add_argument("--warmup", type=int, default=2_000, help="scenario A warm-up messages")
    parser.add_argument("--inflight", type=int, default=64, help="scenario A concurrent publishes")
    parser.add_argument("--rt-count", type=int, default=5_000, help="scenario B iterations")
    parser.add_argument("--rt-warmup", type=int, default=500, help="scenario B warm-up")
    parser.add_argument("--size", type=int, default=100, help="message frame bytes (JSON)")
    parser.add_argument("--impl", choices=["sdk", "raw", "both"], default="both", help="clients")
    parser.add_argument(
        "--scenario", choices=["throughput", "latency", "both"], default="both", help="A, B"
    )
    parser.add_argument(
        "--server-backend", choices=["asyncio", "trio"], default="asyncio", help="server loop"
    )
    parser.add_argument("--server-profile", metavar="FILE", help="run the server under cProfile")
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument(
        "--floor-count", type=int, default=5_000, help="echo round trips for the floor (0: skip)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per scenario run, seconds")
    args = parser.parse_args(argv)
    if args.count < 1 or args.warmup < 0 or args.inflight < 1:
        parser.error("--count and --inflight must be >= 1, --warmup >= 0")
    if args.rt_count < 1 or args.rt_warmup < 0:
        parser.error("--rt-count must be >= 1, --rt-warmup >= 0")
    args.impls = ["raw", "sdk"] if args.impl == "both" else [args.impl]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    pad = make_pad(args.size)
    publish_size, message_size = frame_sizes(pad)
    server = ServerProcess(args.server_backend, args.server_profile)
    try:
        cpus = None if args.no_pin else pin_cpus(server.proc.pid)
        if cpus is not None:
            pinning = f"clients on CPU {cpus[0]}, server on CPU {cpus[1]}"
        else:
            pinning = "not pinned"
        print(
            f"metered-realtime pub/sub bench: python {sys.version.split()[0]}, "
            f"server pid {server.proc.pid} ({args.server_backend}) on 127.0.0.1:{server.port}; "
            f"{pinning}"
        )
        print(
            f"A: {args.count:,} msgs after {args.warmup:,} warm-up, {args.inflight} in flight; "
            f"B: {args.rt_count:,} iterations after {args.rt_warmup:,} warm-up; "
            f"frames: publish {publish_size} B, message {message_size} B (JSON, before WS header)"
        )
        if args.floor_count:
            p50, p99 = measure_floor(cpus[1] if cpus else None, args.floor_count, message_size)
            print(
                f"floor: blocking-socket echo between the same two CPUs (2 hops, no event loop, "
                f"{message_size} B): p50 {p50:.3f} ms, p99 {p99:.3f} ms"
            )
        all_results: dict[str, dict[str, dict[str, float]]] = {}
        for backend in backends:
            started = time.perf_counter()
            results = anyio.run(
                run_backend, args, server.port, server.proc.pid, pad, backend=backend
            )
            all_results[backend] = results
            print_table(backend, results, time.perf_counter() - started)
        if "sdk" in args.impls:
            print_targets(all_results)
    except BaseException:
        print(f"server stderr: {server.stderr_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
