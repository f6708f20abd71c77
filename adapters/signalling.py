"""``SignallingClient``: the pub/sub client, a thin anyio driver of the sans-IO core.

Every protocol decision (framing, acks, keepalive, watchdog, backoff, resubscribe) is made by
:class:`~metered_realtime.core.client.ClientConnection`; this module only moves bytes, runs the
token provider, keeps time with ``anyio.current_time()`` and turns core events into public
events and awaited results. It runs unchanged on asyncio and trio.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from metered_realtime.adapters.events import EventEmitter
from metered_realtime.adapters.runtime import BackgroundTasks
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


class _Waiter:
    """One awaited outcome (a request's reply, a connect)."""

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


class _Transport:
    """One socket: its stream, outbound buffer and writer wake-up."""

    __slots__ = ("closing", "out", "scope", "stream", "wake")

    def __init__(self) -> None:
        self.stream: anyio.abc.ByteStream | None = None
        self.out = bytearray()
        self.wake = anyio.Event()
        self.closing = False
        self.scope = anyio.CancelScope()


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
        # one OS-seeded generator: request ids and masking keys without a syscall each
        self._core = ClientConnection(
            self._config, random.Random(random.SystemRandom().getrandbits(256))
        )
        self._bg = BackgroundTasks("SignallingClient", self._log)
        self._spawn = self._bg.spawn  # async handlers run as tasks of the client
        self._waiters: dict[str, _Waiter] = {}
        self._connect_waiter: _Waiter | None = None
        self._transport: _Transport | None = None
        self._timer_wake: anyio.Event | None = None
        self._timer_at = math.inf
        self._closing = False
        self._change: anyio.Event | None = None

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
        await self._bg.start()
        self._closing = False
        waiter = self._connect_waiter = _Waiter()
        self._core.connect(anyio.current_time())
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
        self._core.close(anyio.current_time(), code, reason)
        self._process()
        transport = self._transport
        if transport is not None:
            with anyio.move_on_after(self._config.close_timeout + 0.5, shield=True):
                while self._transport is transport:
                    await self._sleep_until_changed()
        await self._bg.stop()
        if self._connect_waiter is not None:
            self._connect_waiter.resolve(SignallingConnectError(code, "closed by the client"))
        self._end_streams()
        self._release_handlers()

    async def subscribe(self, channel: str, opts: SubscribeOptions | None = None) -> None:
        """Subscribe to ``channel``; resolves on the server's ack."""
        if opts is not None and not isinstance(opts, SubscribeOptions):
            raise TypeError("opts must be SubscribeOptions or None")
        include = bool(opts.include_sender_metadata) if opts else False
        rid = self._core.subscribe(channel, anyio.current_time(), include_sender_metadata=include)
        await self._await(rid)

    async def unsubscribe(self, channel: str) -> None:
        """Leave ``channel`` (it is no longer replayed after reconnects)."""
        await self._await(self._core.unsubscribe(channel, anyio.current_time()))

    async def publish(self, channel: str, data: Any) -> None:
        """Broadcast ``data`` (any JSON value) to the other subscribers of ``channel``."""
        await self._await(self._core.publish(channel, data, anyio.current_time()))

    async def send(self, to_peer_id: str, data: Any) -> None:
        """Send ``data`` to every connection of peer ``to_peer_id``."""
        await self._await(self._core.send(to_peer_id, data, anyio.current_time()))

    async def __aenter__(self) -> SignallingClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- driving the core -------------------------------------------------------------

    async def _await(self, rid: str) -> None:
        waiter = self._waiters[rid] = _Waiter()
        self._process()
        try:
            await waiter.wait()
        finally:
            self._waiters.pop(rid, None)

    def _process(self) -> None:
        """Drain the core: emit events, resolve waiters, act on actions, flush bytes."""
        core = self._core
        while (ev := core.next_event()) is not None:
            if isinstance(ev, AppEvent):
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
            elif isinstance(ev, RequestCompleted):
                waiter = self._waiters.pop(ev.request_id, None)
                if waiter is not None:
                    waiter.resolve()
            elif isinstance(ev, RequestFailed):
                waiter = self._waiters.pop(ev.request_id, None)
                if waiter is not None:
                    waiter.resolve(ev.error)
            elif isinstance(ev, OpenTransport):
                self._flush()
                self._transport = _Transport()
                self._bg.spawn(self._run_transport, self._transport, ev)
            elif isinstance(ev, CloseTransport):
                self._flush()
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
        data = self._core.data_to_send()
        transport = self._transport
        if data and transport is not None:
            transport.out += data
            transport.wake.set()

    def _close_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.closing = True
            transport.wake.set()
        self._changed()

    # --- timers -----------------------------------------------------------------------

    def _poke_timer(self) -> None:
        at = self._core.get_timer()
        if at is not None and at < self._timer_at and self._timer_wake is not None:
            self._timer_wake.set()
        elif at is not None and self._timer_wake is None and self._bg.running:
            self._timer_at = at
            self._bg.spawn(self._timer_loop)

    async def _timer_loop(self) -> None:
        try:
            while True:
                at = self._core.get_timer()
                if at is None:
                    return
                self._timer_at = at
                wake = self._timer_wake = anyio.Event()
                delay = at - anyio.current_time()
                if delay > 0:
                    with anyio.move_on_after(delay):
                        await wake.wait()
                now = anyio.current_time()
                at = self._core.get_timer()
                if at is not None and at <= now:
                    self._core.handle_timer(now)
                    self._process()
        finally:
            self._timer_wake = None
            self._timer_at = math.inf

    # --- transport ----------------------------------------------------------------------

    async def _run_transport(self, transport: _Transport, action: OpenTransport) -> None:
        with transport.scope:
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
                if self._transport is transport:
                    self._log.warning("connect failed", {"error": type(exc).__name__})
                    self._core.transport_failed(anyio.current_time(), "connect failed")
                    self._process()
                return
            transport.stream = stream
            if transport.closing:  # closed while connecting
                await _aclose(stream)
                return
            self._core.transport_opened(anyio.current_time())
            self._process()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, transport)
                await self._reader(transport)
                transport.closing = True
                transport.wake.set()

    async def _reader(self, transport: _Transport) -> None:
        stream = transport.stream
        assert stream is not None
        try:
            while not transport.closing:
                data = await stream.receive(READ_SIZE)
                if transport.closing:
                    return
                self._core.receive_data(data, anyio.current_time())
                self._process()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        if not transport.closing and self._transport is transport:
            self._transport = None
            self._core.connection_lost(anyio.current_time())
            self._process()
            self._changed()

    async def _writer(self, transport: _Transport) -> None:
        stream = transport.stream
        assert stream is not None
        try:
            while True:
                if transport.out:
                    data = bytes(transport.out)
                    transport.out.clear()
                    await stream.send(data)
                    continue
                if transport.closing:
                    break
                transport.wake = anyio.Event()
                if transport.out or transport.closing:
                    continue
                await transport.wake.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            transport.closing = True
            await _aclose(stream)

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
            self._core.credential_failed(exc, anyio.current_time())
        else:
            self._core.credential_resolved(token, anyio.current_time())
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


async def _aclose(stream: anyio.abc.ByteStream) -> None:
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(1),
        contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError),
    ):
        await stream.aclose()
