"""``DataChannel``: a backpressure-aware wrapper over an aiortc ``RTCDataChannel``.

``send()`` waits while ``buffered_amount + size > max_buffered_amount`` (resuming on the
low-water event, re-checked every 0.1 s), refuses more than ``max_queued_sends`` waiting
sends (``DataChannelOverflowError``) and a single payload larger than the cap. A channel
created before a connection rebuild that had not opened yet is re-bound to its replacement,
so the same wrapper opens on the new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from metered_realtime.adapters.events import EventEmitter
from metered_realtime.adapters.peer_events import DCClose, DCError, DCMessage, DCOpen
from metered_realtime.core.errors import DataChannelOverflowError, MeteredRealtimeError

__all__ = ["DataChannel"]

POLL = 0.1


class DataChannel(EventEmitter):
    """``DataChannel(raw_channel, *, max_buffered_amount=1_048_576, max_queued_sends=256)``.

    Wrapping a ``DataChannel`` returns it unchanged. Events: ``DCOpen``, ``DCClose``,
    ``DCError``, ``DCMessage``.
    """

    def __new__(cls, raw: Any, **kwargs: Any) -> DataChannel:
        if isinstance(raw, DataChannel):
            return raw
        return super().__new__(cls)

    def __init__(
        self,
        raw: Any,
        *,
        max_buffered_amount: int = 1_048_576,
        max_queued_sends: int = 256,
        logger: object = None,
        _spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
    ) -> None:
        if raw is self:
            return  # DataChannel(DataChannel(...)): already set up
        if not hasattr(raw, "send") or not hasattr(raw, "readyState"):
            raise TypeError("DataChannel wraps an RTCDataChannel")
        if max_buffered_amount < 1 or max_queued_sends < 1:
            raise ValueError("max_buffered_amount and max_queued_sends must be positive")
        super().__init__(logger)
        self.max_buffered_amount = max_buffered_amount
        self.max_queued_sends = max_queued_sends
        self._queued = 0
        self._closed_by_user = False
        self._state_change = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn = _spawn or self._spawn_task
        self._raw: Any = None
        self._bind(raw)

    # --- public -----------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The channel's label."""
        return str(self._raw.label)

    @property
    def ready_state(self) -> str:
        """``connecting``, ``open``, ``closing`` or ``closed``."""
        return str(self._raw.readyState)

    @property
    def buffered_amount(self) -> int:
        """Bytes queued in the transport, not yet sent."""
        return int(self._raw.bufferedAmount)

    @property
    def raw(self) -> Any:
        """The aiortc ``RTCDataChannel`` currently behind this wrapper."""
        return self._raw

    async def send(self, data: str | bytes) -> None:
        """Send ``data``; waits for the channel to open and for buffer room (backpressure)."""
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError("data must be str or bytes")
        payload: str | bytes = data if isinstance(data, str) else bytes(data)
        size = len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)
        if size > self.max_buffered_amount:
            raise MeteredRealtimeError(
                f"payload of {size} bytes exceeds max_buffered_amount", code="payload_too_large"
            )
        if self._queued >= self.max_queued_sends:
            raise DataChannelOverflowError(self._queued, self.max_queued_sends)
        self._queued += 1
        try:
            while True:
                state = self._raw.readyState
                if self._closed_by_user or state in ("closing", "closed"):
                    raise MeteredRealtimeError("data channel is closed", code="channel_closed")
                if state == "open" and self._raw.bufferedAmount + size <= self.max_buffered_amount:
                    self._raw.send(payload)
                    return
                self._state_change.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._state_change.wait(), POLL)
        finally:
            self._queued -= 1

    def close(self) -> None:
        """Close the channel."""
        self._closed_by_user = True
        self._raw.close()
        self._state_change.set()

    # --- internals --------------------------------------------------------------------

    def _bind(self, raw: Any) -> None:
        """Attach to ``raw`` (a fresh channel after a connection rebuild)."""
        old = self._raw
        if old is not None:
            for name, fn in self._listeners():
                old.remove_listener(name, fn)
        self._raw = raw
        raw.bufferedAmountLowThreshold = self.max_buffered_amount // 2
        for name, fn in self._listeners():
            raw.on(name, fn)
        if raw.readyState == "open":
            self._on_open()

    def _listeners(self) -> list[tuple[str, Callable[..., Any]]]:
        return [
            ("open", self._on_open),
            ("close", self._on_close),
            ("message", self._on_message),
            ("bufferedamountlow", self._state_change.set),
            ("error", self._on_error),
        ]

    def _on_open(self) -> None:
        if self._raw is not None:
            self._state_change.set()
            self._emit(DCOpen())

    def _on_close(self) -> None:
        self._state_change.set()
        self._emit(DCClose())

    def _on_message(self, data: str | bytes) -> None:
        self._emit(DCMessage(data))

    def _on_error(self, err: BaseException) -> None:
        self._emit(DCError(err))

    def _spawn_task(self, fn: Callable[[], Awaitable[None]]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(fn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
