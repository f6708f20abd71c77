"""The event system shared by every emitter: typed events keyed by class.

``on(Type, handler)`` / ``@on(Type)``, ``once``, ``off`` and ``events(Type, maxsize=4096)``.
Sync handlers run inline, in registration order; async handlers run as tasks the emitter's
owner tracks and cancels on close, so a slow one never stalls the read loop or other
subscribers. A handler that raises is logged and isolated.
"""

from __future__ import annotations

import inspect
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, overload

import anyio

from metered_realtime.adapters.log import Logger, as_logger

__all__ = ["EventEmitter", "EventStream", "Handler"]

E = TypeVar("E")
Handler = Callable[[E], "Awaitable[None] | None"]
Spawner = Callable[..., None]


class EventStream(AsyncIterator[E]):
    """An ``async for`` view of one event type; keeps the newest ``maxsize`` events."""

    def __init__(self, maxsize: int) -> None:
        self._buf: deque[E] = deque(maxlen=maxsize)
        self._wake: anyio.Event | None = None
        self._closed = False
        self.dropped = 0
        """Events discarded because the consumer fell more than ``maxsize`` behind."""

    def _put(self, event: E) -> None:
        if len(self._buf) == self._buf.maxlen:
            self.dropped += 1
        self._buf.append(event)
        if self._wake is not None:
            self._wake.set()

    def _close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        while not self._buf:
            if self._closed:
                raise StopAsyncIteration
            self._wake = anyio.Event()
            await self._wake.wait()
        return self._buf.popleft()

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._close()
        self._buf.clear()


class _Registration:
    __slots__ = ("handler", "once")

    def __init__(self, handler: Callable[[Any], Any], once: bool) -> None:
        self.handler = handler
        self.once = once


class EventEmitter:
    """Base of ``SignallingClient``, ``MeteredPeer``, ``RemotePeer`` and ``DataChannel``."""

    def __init__(self, logger: object = None) -> None:
        self._log: Logger = as_logger(logger)
        self._handlers: dict[type, list[_Registration]] = {}
        self._once_types: set[type] = set()  # types with a once() registration pending
        self._streams: dict[type, weakref.WeakSet[EventStream[Any]]] = {}
        self._spawn: Spawner | None = None

    # --- public -----------------------------------------------------------------------

    @overload
    def on(self, event_type: type[E]) -> Callable[[Handler[E]], Handler[E]]: ...

    @overload
    def on(self, event_type: type[E], handler: Handler[E]) -> Handler[E]: ...

    def on(self, event_type: type[E], handler: Handler[E] | None = None) -> Any:
        """Register ``handler`` for ``event_type``; without a handler, return a decorator."""
        return self._register(event_type, handler, once=False)

    @overload
    def once(self, event_type: type[E]) -> Callable[[Handler[E]], Handler[E]]: ...

    @overload
    def once(self, event_type: type[E], handler: Handler[E]) -> Handler[E]: ...

    def once(self, event_type: type[E], handler: Handler[E] | None = None) -> Any:
        """Like :meth:`on`, for the next event only."""
        return self._register(event_type, handler, once=True)

    def off(self, event_type: type[E], handler: Handler[E]) -> None:
        """Remove ``handler`` (every registration of it) for ``event_type``."""
        regs = self._handlers.get(event_type)
        if regs:
            self._handlers[event_type] = [r for r in regs if r.handler != handler]

    def events(self, event_type: type[E], *, maxsize: int = 4096) -> EventStream[E]:
        """An async iterator of ``event_type`` events from now on (drops the oldest when full)."""
        _check_type(event_type)
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError("maxsize must be a positive integer")
        stream: EventStream[E] = EventStream(maxsize)
        self._streams.setdefault(event_type, weakref.WeakSet()).add(stream)
        return stream

    # --- for owners -------------------------------------------------------------------

    def _register(self, event_type: type[E], handler: Handler[E] | None, *, once: bool) -> Any:
        _check_type(event_type)
        if handler is None:

            def decorator(fn: Handler[E]) -> Handler[E]:
                self._register(event_type, fn, once=once)
                return fn

            return decorator
        if not callable(handler):
            raise TypeError("handler must be callable")
        self._handlers.setdefault(event_type, []).append(_Registration(handler, once))
        if once:
            self._once_types.add(event_type)
        return handler

    def _emit(self, event: object) -> None:
        """Run the handlers and feed the ``events()`` iterators, on this thread.

        The marshalling hook: an emitter whose code runs on another thread than its user's
        (``bridge.py``, aiortc under trio) overrides ``_emit`` to hand the event over, and
        calls ``EventEmitter._emit`` on the user's thread."""
        kind = type(event)
        regs = self._handlers.get(kind)
        if regs:
            if kind in self._once_types:
                self._once_types.discard(kind)
                self._handlers[kind] = [r for r in regs if not r.once]
            for reg in regs:
                self._call(reg.handler, event)
        if self._streams:
            streams = self._streams.get(kind)
            if streams:
                for stream in list(streams):
                    stream._put(event)

    def _call(self, handler: Callable[[Any], Any], event: object) -> None:
        try:
            result = handler(event)
        except Exception as exc:
            self._log.error(
                "event handler raised", {"event": type(event).__name__, "error": repr(exc)}
            )
            return
        if result is not None and inspect.isawaitable(result):
            if self._spawn is None:
                self._log.error("async handler dropped: no running owner", {})
                if inspect.iscoroutine(result):
                    result.close()
                return
            awaitable = result

            async def run() -> None:
                try:
                    await awaitable
                except Exception as exc:
                    self._log.error(
                        "async event handler raised",
                        {"event": type(event).__name__, "error": repr(exc)},
                    )

            self._spawn(run)

    def _end_streams(self) -> None:
        """End every ``events()`` iterator (the emitter is closing)."""
        for streams in self._streams.values():
            for stream in list(streams):
                stream._close()
        self._streams.clear()

    def _release_handlers(self) -> None:
        self._handlers.clear()


def _check_type(event_type: object) -> None:
    if not isinstance(event_type, type):
        raise TypeError("events are keyed by their class, e.g. on(Message, handler)")
