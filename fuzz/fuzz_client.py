"""Fuzz the client connection machine with raw server bytes.

Usage: python fuzz/fuzz_client.py [libFuzzer options] [CORPUS_DIR ...]

Each input is what a server writes after accepting the WebSocket upgrade. A fresh
``ClientConnection`` is driven through ``connect`` → ``transport_opened`` → a real opening
handshake (a wsproto server answers the client's request), then gets the input in chunks,
interleaved with ``handle_timer`` at increasing times and occasional API calls. The schedule
(chunk sizes, clock steps, calls) comes from a PRNG seeded with the input's CRC, so a given
input always replays the same way. When the machine asks for a new socket (a reconnect), the
harness opens it and answers the handshake the same way; later bytes go to that socket.

A crash is: any exception from the machine, except ``NotConnectedError``, ``ValueError``,
``TypeError`` and ``OversizedPayloadError`` from an API call; ``get_timer()`` returning
anything but ``None`` or a float; an event that is neither an ``AppEvent`` nor an ``Action``;
``data_to_send()`` returning anything but bytes.
"""

from __future__ import annotations

import random
import sys
import zlib
from typing import Any

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    from metered_realtime.core.client import ClientConfig, ClientConnection
    from metered_realtime.core.errors import NotConnectedError, OversizedPayloadError
    from metered_realtime.core.events import Action, AppEvent, CloseTransport, OpenTransport

CONFIG = ClientConfig(url="ws://127.0.0.1:8787", api_key="pk_fuzz")
API_ERRORS = (NotConnectedError, ValueError, TypeError, OversizedPayloadError)
CHANNELS = ("demo/lobby", "sensors/t-12", "_system/x", "", "c" * 300, "bad\x00name")
PAYLOADS: tuple[Any, ...] = (
    None,
    {"chat": "hello room", "seq": 1},
    "x" * 70_000,
    float("nan"),
    {1, 2},
    [1.5, "h\u00e9llo", {"k": True}],
)


class Driver:
    """The client plus the bits of a driver the fuzzer needs: the clock and new sockets."""

    def __init__(self) -> None:
        self.client = ClientConnection(CONFIG, random.Random(0))
        self.now = 1000.0
        self.client.connect(self.now)
        self.drain()

    def open_socket(self) -> None:
        """Open a transport and complete the opening handshake against a wsproto server."""
        client = self.client
        client.transport_opened(self.now)
        request = self.take()
        if not request:  # the attempt was abandoned meanwhile
            return
        server = WSConnection(ConnectionType.SERVER)
        server.receive_data(request)
        if any(isinstance(e, Request) for e in server.events()):
            client.receive_data(server.send(AcceptConnection()), self.now)

    def take(self) -> bytes:
        out = self.client.data_to_send()
        if type(out) is not bytes:
            raise AssertionError(f"data_to_send() returned {type(out).__name__}")
        return out

    def drain(self) -> None:
        while (ev := self.client.next_event()) is not None:
            if not isinstance(ev, (AppEvent, Action)):
                raise AssertionError(f"next_event() returned {ev!r}")
            if isinstance(ev, OpenTransport):
                self.open_socket()
            elif isinstance(ev, CloseTransport):
                self.take()
        self.take()
        self.check_timer()

    def check_timer(self) -> None:
        at = self.client.get_timer()
        if at is not None and type(at) is not float:
            raise AssertionError(f"get_timer() returned {at!r}")

    def api_call(self, rng: random.Random) -> None:
        client, now = self.client, self.now
        channel = rng.choice(CHANNELS)
        op = rng.randrange(5)
        try:
            if op == 0:
                client.publish(channel, rng.choice(PAYLOADS), now)
            elif op == 1:
                client.subscribe(channel, now, include_sender_metadata=rng.random() < 0.5)
            elif op == 2:
                client.unsubscribe(channel, now)
            elif op == 3:
                client.send(rng.choice(("peer-basalt", "", "p" * 200)), rng.choice(PAYLOADS), now)
            elif client.state in ("idle", "closed"):
                client.connect(now)
            elif rng.random() < 0.2:
                client.close(now)
        except API_ERRORS:
            pass

    def tick(self, rng: random.Random) -> None:
        roll = rng.random()
        if roll < 0.1:  # jump to the next deadline
            at = self.client.get_timer()
            if at is not None:
                self.now = max(self.now, at)
        elif roll < 0.8:
            self.now += rng.random() * 0.5
        else:
            self.now += rng.random() * 20
        self.client.handle_timer(self.now)


def TestOneInput(data: bytes) -> None:
    rng = random.Random(zlib.crc32(data))
    driver = Driver()
    pos = 0
    while pos < len(data):
        size = rng.choice((1, 2, 3, 7, 16, 64, 512, len(data)))
        driver.client.receive_data(data[pos : pos + size], driver.now)
        pos += size
        driver.drain()
        if rng.random() < 0.3:
            driver.tick(rng)
            driver.drain()
        if rng.random() < 0.1:
            driver.api_call(rng)
            driver.drain()
    for _ in range(3):  # let the remaining deadlines fire
        at = driver.client.get_timer()
        if at is None:
            break
        driver.now = max(driver.now, at)
        driver.client.handle_timer(driver.now)
        driver.drain()


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
