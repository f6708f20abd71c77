"""``SignallingClient``: the pub/sub client, a thin anyio driver of the sans-IO core.

Every protocol decision (framing, acks, keepalive, watchdog, backoff, resubscribe) is made by
:class:`~metered_realtime.core.client.ClientConnection`; this module only moves bytes, runs the
token provider, keeps time with the event loop's clock (what ``anyio.current_time()`` reads)
and turns core events into public events and awaited results. It runs on asyncio and trio.

The socket is driven the cheapest way each backend allows. On asyncio it is an
:class:`asyncio.Protocol`: bytes are handed to the core in the loop's read callback, and writes
go straight to the transport, coalesced into one ``write`` per loop iteration (so 64 publishes
woken by one batch of acks cost one ``send``); timers are ``loop.call_at`` handles and a request
is a bare future. On trio it is an anyio stream with a reader task and a writer task (woken
only when it is idle, so the writes of one batch also coalesce), a timer task, and requests park
the caller with ``trio.lowlevel``. Either way there is one writer per socket, so bytes leave in
the order the core produced them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from metered_realtime.adapters.events import EventEmitter
from metered_realtime.adapters.runtime import BackgroundTasks, current_backend
from metered_realtime.core.client import ClientConfig, ClientConnection
from metered_realtime.core.errors import MeteredRealtimeError, SignallingConnectError
from metered_realtime.core.events import (
    AppEvent,
    CloseTransport,
    Connected,
    ConnectFailed,
    CredentialNeeded,
    Disconnected,
    FrameDropped,
    Message,
    OpenTransport,
    ReconnectScheduled,
    RequestCompleted,
    RequestFailed,
)
from metered_realtime.core.options import SubscribeOptions
from metered_realtime.core.reconnect import ReconnectOptions
from metered_realtime.core.validation import DEFAULT_URL

__all__ = ["SignallingClient", "TokenProvider"]

TokenProvider = Callable[[], "Awaitable[str] | str"]
"""An async (or sync, run in a worker thread) callable returning a fresh JWT."""

CONNECT_TIMEOUT = 10.0
READ_SIZE = 65_536
READ_BUFFER = 1 << 20  # asyncio: at most one read per socket per loop iteration
CLOSE_FLUSH_TIMEOUT = 1.0
EARLY_WRITE = 4096


class _Waiter:
    """One awaited outcome that is not a request (a connect)."""

    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: BaseException | None = None

    def resolve(self, error: BaseException | None = None) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()

    async def wait(self) -> None:
        await self.event.wait()
        if self.error is not None:
            raise self.error


class _TrioWaiter:
    """A request's reply on trio: the waiting task parks, the reply reschedules it.

    Shaped like the parts of :class:`asyncio.Future` the client uses, so both backends'
    waiters are resolved by the same code.
    """

    __slots__ = ("_done", "_error", "_task")

    def __init__(self) -> None:
        self._done = False
        self._error: BaseException | None = None
        self._task: Any = None

    def done(self) -> bool:
        return self._done

    def set_result(self, result: None) -> None:
        self._finish(None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        self._done = True
        self._error = error
        task, self._task = self._task, None
        if task is not None:
            _trio_lowlevel().reschedule(task)

    async def wait(self) -> None:
        if not self._done:
            lowlevel = _trio_lowlevel()
            self._task = lowlevel.current_task()

            def abort(_: Any) -> Any:
                self._task = None
                self._done = True  # a late reply finds nobody to wake
                return lowlevel.Abort.SUCCEEDED

            await lowlevel.wait_task_rescheduled(abort)
        if self._error is not None:
            raise self._error


_lowlevel: Any = None


def _trio_lowlevel() -> Any:
    """``trio.lowlevel``, imported once (an import statement per request is not free)."""
    global _lowlevel
    if _lowlevel is None:
        import trio.lowlevel

        _lowlevel = trio.lowlevel
    return _lowlevel


class _Link:
    """One socket: an asyncio transport, or an anyio stream with its writer's buffer."""

    __slots__ = (
        "closed",
        "closing",
        "lost",
        "out",
        "raw",
        "stream",
        "transport",
        "wake",
        "write_scheduled",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.closing = False
        self.lost = False  # asyncio: connection_lost() was called, the transport is gone
        # asyncio
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] | None = None if loop is None else loop.create_future()
        self.write_scheduled = False
        # trio (anyio stream)
        self.stream: anyio.abc.ByteStream | None = None
        self.raw: socket.socket | None = None  # plain TCP: written directly, not via the stream
        self.out = bytearray()
        self.wake = anyio.Event() if loop is None else None


class _ClientProtocol(asyncio.BufferedProtocol):
    """Hands an asyncio transport's events to the client.

    Buffered: the transport reads into the client's one preallocated buffer (a plain
    ``Protocol`` gets a fresh 256 KiB ``recv()`` per read, which the allocator serves with
    mmap/munmap: ~12 µs a read on Linux), and as much as 1 MiB at a time, so a subscriber of
    big messages keeps up with the publishers sharing its loop.
    """

    __slots__ = ("client", "link")

    def __init__(self, client: SignallingClient, link: _Link) -> None:
        self.client = client
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.link.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.client._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.client._received(self.link, bytes(self.client._read_view[:nbytes]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self.link)


class SignallingClient(EventEmitter):
    """Pub/sub, presence and directed messages over one WebSocket (see ``docs/signalling.md``).

    Exactly one of ``api_key`` / ``token_provider``. ``url`` defaults to the production endpoint;
    ``ws:`` is only allowed to localhost names. ``reconnect=False`` disables reconnects.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        token_provider: TokenProvider | None = None,
        url: str | None = None,
        token_provider_timeout: float = 10.0,
        logger: object = None,
        reconnect: ReconnectOptions | bool = True,
        inactivity_timeout: float = 60.0,
        auto_resubscribe: bool = True,
    ) -> None:
        super().__init__(logger)
        if (api_key is None) == (token_provider is None):
            raise ValueError("pass exactly one of api_key and token_provider")
        if token_provider is not None and not callable(token_provider):
            raise TypeError("token_provider must be a callable returning a token")
        if isinstance(reconnect, bool):
            options: ReconnectOptions | None = ReconnectOptions() if reconnect else None
        elif isinstance(reconnect, ReconnectOptions):
            options = reconnect
        else:
            raise TypeError("reconnect must be a bool or ReconnectOptions")
        timeout = token_provider_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError("token_provider_timeout must be a positive number of seconds")
        self._config = ClientConfig(
            url=url if url is not None else DEFAULT_URL,
            api_key=api_key,
            use_token_provider=token_provider is not None,
            reconnect=options,
            inactivity_timeout=float(inactivity_timeout),
            auto_resubscribe=bool(auto_resubscribe),
        )
        self._token_provider = token_provider
        self._token_timeout = float(timeout)
        # request ids and jitter from one OS-seeded generator (no syscall each); masking keys
        # straight from the OS (RFC 6455: unpredictable to anything else on the host)
        self._core = ClientConnection(
            self._config,
            random.Random(random.SystemRandom().getrandbits(256)),
            mask_rng=random.SystemRandom(),
        )
        self._bg = BackgroundTasks("SignallingClient", self._log)
        self._spawn = self._bg.spawn  # async handlers run as tasks of the client
        self._waiters: dict[str, asyncio.Future[None] | _TrioWaiter] = {}
        self._connect_waiter: _Waiter | None = None
        self._transport: _Link | None = None
        self._timer_wake: anyio.Event | None = None  # trio: the timer task's wake-up
        self._timer_handle: asyncio.TimerHandle | None = None  # asyncio: the armed timer
        self._timer_at = math.inf
        self._closing = False
        self._change: anyio.Event | None = None
        self._aio: asyncio.AbstractEventLoop | None = None  # the loop, when on asyncio
        self._burst = False  # the last read completed several requests (see _flush)
        self._read_view = memoryview(bytearray(0))  # asyncio: what every socket reads into
        self._now: Callable[[], float] = anyio.current_time

    # --- public API -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``idle``, ``connecting``, ``connected``, ``reconnecting`` or ``closed``."""
        return self._core.state

    @property
    def peer_id(self) -> str | None:
        """This connection's peer id (from the latest welcome)."""
        return self._core.peer_id

    @property
    def max_message_size(self) -> int:
        """The server's advertised per-message cap (65,536 before the first welcome)."""
        return self._core.max_message_size

    async def connect(self) -> None:
        """Open the socket and wait for the welcome.

        Raises ``SignallingConnectError`` when the first attempt fails (no background retry).
        """
        if self._core.state not in ("idle", "closed"):
            raise MeteredRealtimeError(
                f"connect() is not allowed in state {self._core.state}", code="invalid_state"
            )
        self._bind_backend()
        await self._bg.start()
        self._closing = False
        waiter = self._connect_waiter = _Waiter()
        self._core.connect(self._now())
        self._process()
        try:
            await waiter.wait()
        except BaseException:
            if self._core.state == "closed" and not self._closing:
                await self._bg.stop()  # a failed first connect leaves nothing running
            raise

    async def close(self, code: int = 1000, reason: str = "client requested close") -> None:
        """Close for good: pending requests fail, the socket closes, every task ends."""
        if self._closing:
            return
        self._closing = True
        self._core.close(self._now(), code, reason)
        self._process()
        transport = self._transport
        if transport is not None:
            with anyio.move_on_after(self._config.close_timeout + 0.5, shield=True):
                while self._transport is transport:
                    await self._sleep_until_changed()
        await self._bg.stop()
        self._cancel_timer()
        if self._connect_waiter is not None:
            self._connect_waiter.resolve(SignallingConnectError(code, "closed by the client"))
        self._end_streams()
        self._release_handlers()

    async def subscribe(self, channel: str, opts: SubscribeOptions | None = None) -> None:
        """Subscribe to ``channel``; resolves on the server's ack."""
        if opts is not None and not isinstance(opts, SubscribeOptions):
            raise TypeError("opts must be SubscribeOptions or None")
        include = bool(opts.include_sender_metadata) if opts else False
        rid = self._core.subscribe(channel, self._now(), include_sender_metadata=include)
        await self._await(rid)

    async def unsubscribe(self, channel: str) -> None:
        """Leave ``channel`` (it is no longer replayed after reconnects)."""
        await self._await(self._core.unsubscribe(channel, self._now()))

    async def publish(self, channel: str, data: Any) -> None:
        """Broadcast ``data`` (any JSON value) to the other subscribers of ``channel``."""
        await self._await(self._core.publish(channel, data, self._now()))

    async def send(self, to_peer_id: str, data: Any) -> None:
        """Send ``data`` to every connection of peer ``to_peer_id``."""
        await self._await(self._core.send(to_peer_id, data, self._now()))

    async def __aenter__(self) -> SignallingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- driving the core -------------------------------------------------------------

    def _bind_backend(self) -> None:
        """Pick the clock, waiters and transport of the running event loop."""
        if current_backend() == "trio":
            import trio

            self._aio = None
            self._now = trio.current_time
        else:
            loop = asyncio.get_running_loop()
            self._aio = loop
            self._now = loop.time
            if not self._read_view:
                self._read_view = memoryview(bytearray(READ_BUFFER))

    def _await(self, rid: str) -> Awaitable[None]:
        """Register a waiter for request ``rid`` now; the returned awaitable is its reply."""
        loop = self._aio
        if loop is not None:
            future: asyncio.Future[None] = loop.create_future()
            self._waiters[rid] = future
            self._process()
            return future
        waiter = _TrioWaiter()
        self._waiters[rid] = waiter
        self._process()
        return waiter.wait()

    def _process(self) -> None:
        """Drain the core: emit events, resolve waiters, act on actions, flush bytes."""
        core = self._core
        resolved = 0
        while (ev := core.next_event()) is not None:
            kind = type(ev)
            if kind is RequestCompleted:
                resolved += 1
                waiter = self._waiters.pop(ev.request_id, None)  # type: ignore[union-attr]
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif kind is Message:
                self._emit(ev)
            elif isinstance(ev, AppEvent):
                if isinstance(ev, Connected):
                    self._log.info("connected", {"peer": ev.peer_id, "reconnect": ev.is_reconnect})
                    if self._connect_waiter is not None:
                        self._connect_waiter.resolve()
                        self._connect_waiter = None
                elif isinstance(ev, Disconnected):
                    self._log.info(
                        "disconnected",
                        {"code": ev.code, "reason": ev.reason, "will_reconnect": ev.will_reconnect},
                    )
                self._emit(ev)
            elif isinstance(ev, RequestFailed):
                resolved += 1
                waiter = self._waiters.pop(ev.request_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(ev.error)
            elif isinstance(ev, OpenTransport):
                self._flush_now()
                link = self._transport = _Link(self._aio)
                if self._aio is not None:
                    self._bg.spawn(self._run_protocol, link, ev)
                else:
                    self._bg.spawn(self._run_stream, link, ev)
            elif isinstance(ev, CloseTransport):
                self._flush_now()
                self._close_transport()
            elif isinstance(ev, CredentialNeeded):
                self._bg.spawn(self._resolve_token)
            elif isinstance(ev, ConnectFailed):
                self._fail_connect(ev.error)
            elif isinstance(ev, ReconnectScheduled):
                self._log.info(
                    "reconnecting",
                    {"attempt": ev.attempt, "delay": round(ev.delay, 3), "code": ev.close_code},
                )
            elif isinstance(ev, FrameDropped):
                self._log.warning(
                    "dropped a frame", {"code": ev.code, "reason": ev.reason, "type": ev.frame_type}
                )
        if resolved:
            # many replies at once wake many requesters, whose requests should leave together
            self._burst = resolved > 1
        self._flush()
        self._poke_timer()

    def _fail_connect(self, error: BaseException) -> None:
        waiter, self._connect_waiter = self._connect_waiter, None
        if waiter is None:
            return
        if isinstance(error, SignallingConnectError):
            waiter.resolve(error)
        else:
            failure = SignallingConnectError(1006, f"token provider failed: {type(error).__name__}")
            failure.__cause__ = error
            waiter.resolve(failure)

    def _flush(self) -> None:
        """Get the core's bytes written: at once, or coalesced with what follows.

        asyncio: the first write of a loop iteration goes at once, later ones wait for the
        end of the iteration (one ``call_soon``) and leave together — unless the last read
        completed several requests (a burst: their requesters are about to run, so even the
        first waits for them). Past ``EARLY_WRITE`` pending bytes everything goes at once, so
        that the server starts on a burst while we are still producing it rather than after.
        trio: see :meth:`_flush_now`.
        """
        link = self._transport
        if link is None or self._aio is None:
            self._flush_now()
            return
        pending = self._core.bytes_to_send
        if pending >= EARLY_WRITE:
            self._flush_now()
        elif pending and not link.write_scheduled:
            link.write_scheduled = True
            self._aio.call_soon(self._write_soon, link)
            if not self._burst:
                self._flush_now()

    def _write_soon(self, link: _Link) -> None:
        link.write_scheduled = False
        if link is self._transport:
            self._flush_now()

    def _flush_now(self) -> None:
        """Hand the core's bytes to the current socket (before it changes, or on trio)."""
        data = self._core.data_to_send()
        link = self._transport
        if not data or link is None or link.closing:
            return
        if link.transport is not None:
            link.transport.write(data)
        elif link.wake is not None:
            # trio: on plain TCP, send at once what is neither part of a burst (see _flush)
            # nor queued behind other bytes; else past EARLY_WRITE; else wake the writer
            out = link.out
            alone = not out and not self._burst
            out += data
            if link.raw is not None and (alone or len(out) >= EARLY_WRITE):
                with contextlib.suppress(OSError):  # a dead socket: the writer finds out too
                    _send_some(link.raw, out)
            if out:
                link.wake.set()

    def _close_transport(self) -> None:
        link, self._transport = self._transport, None
        if link is not None:
            link.closing = True
            transport = link.transport
            if transport is not None:
                if transport.get_write_buffer_size():
                    asyncio.get_running_loop().call_later(CLOSE_FLUSH_TIMEOUT, _abort, link)
                transport.close()
                if link.closed is not None and not link.closed.done():
                    link.closed.set_result(None)
            elif link.wake is not None:
                link.wake.set()
        self._changed()

    # --- timers -----------------------------------------------------------------------

    def _poke_timer(self) -> None:
        at = self._core.get_timer()
        if at is None or at >= self._timer_at or not self._bg.running:
            return  # an earlier wake-up is armed already (firing early is harmless)
        loop = self._aio
        if loop is not None:
            if self._timer_handle is not None:
                self._timer_handle.cancel()
            self._timer_at = at
            self._timer_handle = loop.call_at(at, self._on_timer)
        elif self._timer_wake is not None:
            self._timer_wake.set()
        else:
            self._timer_at = at
            self._bg.spawn(self._timer_loop)

    def _on_timer(self) -> None:
        """asyncio: the armed deadline passed."""
        self._timer_handle = None
        self._timer_at = math.inf
        now = self._now()
        at = self._core.get_timer()
        if at is not None and at <= now:
            self._core.handle_timer(now)
            self._process()
        else:
            self._poke_timer()

    def _cancel_timer(self) -> None:
        if self._timer_handle is not None:
            self._timer_handle.cancel()
            self._timer_handle = None
            self._timer_at = math.inf

    async def _timer_loop(self) -> None:
        """trio: sleep until the next deadline (or an earlier one is poked), run it."""
        try:
            while True:
                at = self._core.get_timer()
                if at is None:
                    return
                self._timer_at = at
                wake = self._timer_wake = anyio.Event()
                delay = at - self._now()
                if delay > 0:
                    with anyio.move_on_after(delay):
                        await wake.wait()
                now = self._now()
                at = self._core.get_timer()
                if at is not None and at <= now:
                    self._core.handle_timer(now)
                    self._process()
        finally:
            self._timer_wake = None
            self._timer_at = math.inf

    # --- transport: asyncio -------------------------------------------------------------

    async def _run_protocol(self, link: _Link, action: OpenTransport) -> None:
        loop = self._aio
        assert loop is not None
        ctx = ssl.create_default_context() if action.secure else None
        _mark_asyncio_context()
        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                await loop.create_connection(
                    lambda: _ClientProtocol(self, link),
                    action.host,
                    action.port,
                    ssl=ctx,
                    server_hostname=action.host if ctx is not None else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            if self._transport is link:
                self._log.warning("connect failed", {"error": type(exc).__name__})
                self._core.transport_failed(self._now(), "connect failed")
                self._process()
            return
        transport = link.transport
        assert transport is not None
        assert link.closed is not None
        try:
            if link.closing:  # closed while connecting
                return
            self._core.transport_opened(self._now())
            self._process()
            await link.closed
        finally:
            link.closing = True
            if not transport.is_closing():
                transport.close()

    def _received(self, link: _Link, data: bytes) -> None:
        if link.closing:
            return
        self._core.receive_data(data, self._now())
        self._process()

    def _lost(self, link: _Link) -> None:
        link.lost = True
        if link.closed is not None and not link.closed.done():
            link.closed.set_result(None)
        if link.closing:
            return
        link.closing = True
        if self._transport is link:
            self._transport = None
            self._core.connection_lost(self._now())
            self._process()
            self._changed()

    # --- transport: trio (anyio streams) ------------------------------------------------

    async def _run_stream(self, link: _Link, action: OpenTransport) -> None:
        try:
            with anyio.fail_after(CONNECT_TIMEOUT):
                stream: anyio.abc.ByteStream
                if action.secure:
                    stream = await anyio.connect_tcp(
                        action.host,
                        action.port,
                        ssl_context=ssl.create_default_context(),
                        tls_standard_compatible=False,
                    )
                else:
                    stream = await anyio.connect_tcp(action.host, action.port)
        except (OSError, TimeoutError, anyio.BrokenResourceError, ssl.SSLError) as exc:
            if self._transport is link:
                self._log.warning("connect failed", {"error": type(exc).__name__})
                self._core.transport_failed(self._now(), "connect failed")
                self._process()
            return
        link.stream = stream
        if isinstance(stream, anyio.abc.SocketStream):  # not TLS: the socket is the stream
            link.raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if link.closing:  # closed while connecting
            await _aclose(stream)
            return
        self._core.transport_opened(self._now())
        self._process()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer, link)
            await self._reader(link)
            link.closing = True
            assert link.wake is not None
            link.wake.set()

    async def _reader(self, link: _Link) -> None:
        stream, raw = link.stream, link.raw
        assert stream is not None
        try:
            if raw is not None:
                await self._read_raw(link, raw)
            else:
                while not link.closing:
                    data = await stream.receive(READ_SIZE)
                    if link.closing:
                        return
                    self._core.receive_data(data, self._now())
                    self._process()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        if not link.closing and self._transport is link:
            self._transport = None
            self._core.connection_lost(self._now())
            self._process()
            self._changed()

    async def _read_raw(self, link: _Link, raw: socket.socket) -> None:
        """Plain TCP on trio: read straight into the client's buffer (as the asyncio path
        does: up to 1 MiB at a time, no allocation per read), yielding once per read."""
        if not self._read_view:
            self._read_view = memoryview(bytearray(READ_BUFFER))
        view = self._read_view
        checkpoint = _trio_lowlevel().checkpoint
        while not link.closing:
            try:
                n = raw.recv_into(view)
            except (BlockingIOError, InterruptedError):
                await anyio.wait_readable(raw)
                continue
            if not n or link.closing:
                return
            self._core.receive_data(bytes(view[:n]), self._now())
            self._process()
            await checkpoint()

    async def _writer(self, link: _Link) -> None:
        """Writes ``link.out`` whenever woken; the only task that waits to write.

        On plain TCP it sends from the buffer itself and drops what the kernel took, so a
        direct send elsewhere (``_flush_now``) can never reorder bytes.
        """
        stream, raw, out = link.stream, link.raw, link.out
        assert stream is not None
        assert link.wake is not None
        try:
            while True:
                if out:
                    if raw is not None:
                        _send_some(raw, out)
                        if out:
                            await anyio.wait_writable(raw)
                        continue
                    data = bytes(out)
                    out.clear()
                    await stream.send(data)
                    continue
                if link.closing:
                    break
                link.wake = wake = anyio.Event()
                if link.out or link.closing:
                    continue
                await wake.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            link.closing = True
            await _aclose(stream)

    # --- token provider -----------------------------------------------------------------

    async def _resolve_token(self) -> None:
        provider = self._token_provider
        assert provider is not None
        try:
            with anyio.fail_after(self._token_timeout):
                if inspect.iscoroutinefunction(provider):
                    token = await provider()
                else:
                    token = await anyio.to_thread.run_sync(provider, abandon_on_cancel=True)
                    if inspect.isawaitable(token):
                        token = await token
        except Exception as exc:
            self._log.warning("token provider failed", {"error": type(exc).__name__})
            self._core.credential_failed(exc, self._now())
        else:
            self._core.credential_resolved(token, self._now())
        self._process()

    # --- waiting on state changes -------------------------------------------------------

    def _changed(self) -> None:
        if self._change is not None:
            self._change.set()
            self._change = None

    async def _sleep_until_changed(self) -> None:
        if self._change is None:
            self._change = anyio.Event()
        await self._change.wait()


def _abort(link: _Link) -> None:
    """The server did not take our last bytes in time: drop them (unless the transport is
    gone already: asyncio's abort() fails on one that finished closing on its own)."""
    if not link.lost and link.transport is not None:
        link.transport.abort()


def _send_some(sock: socket.socket, out: bytearray) -> None:
    """Send what the kernel takes now from the head of ``out``, and drop it from there."""
    try:
        sent = sock.send(out)
    except (BlockingIOError, InterruptedError):
        return
    del out[:sent]


async def _aclose(stream: anyio.abc.ByteStream) -> None:
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(1),
        contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError),
    ):
        await stream.aclose()


def _mark_asyncio_context() -> None:
    """Let protocol callbacks (where events reach handlers) be recognised as asyncio code.

    The transport's read callbacks run in a copy of the current context, outside any task;
    with sniffio installed, anyio (and sniffio users) identify the running library from a
    context variable or the current task, so set the variable here, in the context the
    callbacks copy. Handlers can then use anyio as they would in a task.
    """
    try:
        import sniffio
    except ModuleNotFoundError:  # anyio falls back to asyncio.get_running_loop()
        return
    sniffio.current_async_library_cvar.set("asyncio")
