"""Background work owned by an SDK object, on asyncio or trio, without the caller's task group.

``BackgroundTasks`` starts one root task (an asyncio task, or a trio system task) that hosts an
anyio task group for the object's read loops, timers and async event handlers. ``stop()``
cancels it and waits until everything has ended, so a bare ``await client.connect()`` …
``await client.close()`` leaves nothing running on either backend.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from metered_realtime.adapters.log import Logger

__all__ = ["BackgroundTasks", "current_backend", "in_trio_thread"]


def current_backend() -> str:
    """``"trio"`` inside a trio run, else ``"asyncio"`` (anyio's two backends)."""
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
            return "trio"
        except RuntimeError:
            pass
    return "asyncio"


def in_trio_thread() -> bool:
    """True while a trio run is active in this thread.

    Cheap on asyncio (a dict lookup when trio was never imported, no exception otherwise), so
    hot paths such as ``AudioSource.push`` can use it to route trio callers to the aiortc bridge.
    """
    trio = sys.modules.get("trio")
    return trio is not None and bool(trio.lowlevel.in_trio_run())


class BackgroundTasks:
    """A task group that lives in its own root task (see the module docstring)."""

    def __init__(self, name: str, log: Logger) -> None:
        self.name = name
        self._log = log
        self._tg: anyio.abc.TaskGroup | None = None
        self._done: anyio.Event | None = None
        self._keep: Any = None  # the asyncio task, kept referenced

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._tg is not None

    async def start(self) -> None:
        """Start the root task (no-op when running)."""
        if self._tg is not None:
            return
        started = anyio.Event()
        done = self._done = anyio.Event()

        async def root() -> None:
            try:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    started.set()
                    await anyio.sleep_forever()
            except BaseException as exc:  # a root task must never raise
                if not isinstance(exc, anyio.get_cancelled_exc_class()):
                    self._log.error(
                        "background task failed", {"owner": self.name, "error": repr(exc)}
                    )
            finally:
                self._tg = None
                done.set()

        if current_backend() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(root, name=f"metered_realtime:{self.name}")
        else:
            import asyncio

            self._keep = asyncio.get_running_loop().create_task(root(), name=self.name)
        await started.wait()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the group; an exception is logged, never propagated."""
        tg = self._tg
        if tg is None:
            raise RuntimeError(f"{self.name} is not running")

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception as exc:
                self._log.error("background task failed", {"owner": self.name, "error": repr(exc)})

        tg.start_soon(guarded)

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything and wait (at most ``timeout``) until it has ended."""
        tg, done = self._tg, self._done
        if tg is None or done is None:
            return
        tg.cancel_scope.cancel()
        with anyio.move_on_after(timeout, shield=True):
            await done.wait()
        self._keep = None
