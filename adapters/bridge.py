"""aiortc under trio: one process-wide asyncio loop in a daemon thread, and trio-facing peers.

aiortc is asyncio-only and binds the running loop when its objects are built. Under trio this
module implements the measured recommendation of the design note ``trio-webrtc.md`` (shared
design notes); trio-asyncio is deliberately not used.

- **One loop, reference-counted.** :func:`acquire` starts the loop thread on first use; every
  ``MeteredPeer`` built under trio holds a lease until its ``close()``, and the thread stops when
  the last lease is released: the loop's remaining tasks are cancelled, its executor and anyio's
  worker threads end. (Threads aiortc starts from the loop thread — its decoder threads — are
  daemon threads by inheritance; an interpreter exit still closes peers never closed.)
- **Everything aiortc runs on that thread** — constructors, properties and negotiation. Under
  trio, ``MeteredPeer(...)`` returns a :class:`TrioMeteredPeer`: the whole machinery (its
  ``SignallingClient``, every ``RemotePeer`` and aiortc) lives on the loop thread, and the
  objects the trio user holds forward calls. Async methods run as tasks there and are awaited
  from trio (a trio cancel cancels the task and waits for it, shielded, at most a second;
  ``close()`` always runs to completion); sync methods and properties run there while the trio
  caller waits briefly; fire-and-forget work (a ``DataChannel`` send with buffer room for
  certain, ``AudioSource.end()``) is posted in call order with ``call_soon_threadsafe``.
- **Results and events come back with** ``TrioToken.run_sync_soon``; the loop thread never
  waits on trio, and a callback into a finished trio run is dropped.
- **No user code runs on the loop thread.** ``_emit`` on the loop hands each event to the
  peer's pump on trio (a system task owned by the peer, ended by ``close()``), which runs the
  handlers: sync ones inline and in order, async ones as tasks of the peer, each allowed its
  first step before the next event is dispatched (trio does not keep the order of tasks started
  together), so handler tasks start in event order. ``events()`` iterators are fed there too,
  and a call's result is delivered after the events emitted before it. A custom logger and an
  async token provider are called on the trio thread (a sync token provider runs in a worker
  thread, as on asyncio). Local tracks must be push-style (``AudioSource``) or aiortc's own: a
  custom ``recv()`` would run on the loop thread, so ``add_track`` refuses it.
- **What differs from asyncio**, where sync handlers run inline in the emitting code: on trio
  they run just after it. ``state`` read on trio is the state as of the last ``StateChange`` the
  handlers have seen, so the two agree; and a new remote peer's first offer waits (at most
  ``HOLD_BOUND``) until its ``PeerJoined`` handlers have run, so a channel or track they add is
  in that offer, as on asyncio.

Under asyncio nothing here is used: peers call aiortc directly on the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from metered_realtime.adapters.datachannel import DataChannel
from metered_realtime.adapters.events import EventEmitter
from metered_realtime.adapters.log import Logger, StdlibLogger, as_logger
from metered_realtime.adapters.peer import MeteredPeer, RemotePeer
from metered_realtime.adapters.peer_events import DCClose, DCOpen, PeerJoined
from metered_realtime.core.errors import DataChannelOverflowError, MeteredRealtimeError
from metered_realtime.core.events import StateChange
from metered_realtime.media.stream import MediaStream

__all__ = [
    "Bridge",
    "TrioMeteredPeer",
    "acquire",
    "call_soon_on_aiortc",
    "run_on_aiortc",
    "run_sync_on_aiortc",
    "running",
    "trio_logger",
]

T = TypeVar("T")
Deliver = Callable[[Callable[[], object]], None]

THREAD_NAME = "metered-realtime-aiortc"
CANCEL_WAIT = 1.0
"""How long a cancelled trio caller waits (shielded) for its task on the loop to finish."""
STOP_WAIT = 5.0
"""How long releasing the last lease waits for the loop thread to finish."""
CLOSE_BOUND = 15.0
"""``close()`` runs to completion even when cancelled, bounded by this."""
SYNC_CALL_TIMEOUT = 30.0
TASK_DRAIN = 2.0
HOLD_BOUND = 1.0
"""Longest a new remote peer's first offer waits for its ``PeerJoined`` handlers on trio."""
PUMP_BATCH = 64


def _closed_error() -> MeteredRealtimeError:
    return MeteredRealtimeError("the aiortc bridge has stopped", code="closed")


class _BridgeStopped(Exception):
    """The loop no longer accepts work (internal)."""


def _soon(token: trio.lowlevel.TrioToken, fn: Callable[..., object], *args: Any) -> bool:
    """``token.run_sync_soon`` that never raises: a finished run just drops the call."""
    try:
        token.run_sync_soon(fn, *args)
    except trio.RunFinishedError:
        return False
    return True


def _only_cancelled(exc: BaseException) -> bool:
    """``exc`` is a trio ``Cancelled``, or a group made only of them."""
    if isinstance(exc, trio.Cancelled):
        return True
    inner = getattr(exc, "exceptions", None)
    return inner is not None and all(_only_cancelled(e) for e in inner)


class _Job:
    """One call running on the loop, awaited from trio."""

    __slots__ = ("cancel_requested", "cancelled", "error", "ok", "task", "value")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.cancel_requested = False
        self.cancelled = False
        self.ok = False
        self.value: Any = None
        self.error: BaseException | None = None

    def unwrap(self) -> Any:
        if self.ok:
            return self.value
        if self.error is not None:
            raise self.error
        raise _closed_error()


# --- the loop thread -------------------------------------------------------------------------


class Bridge:
    """The asyncio loop thread aiortc runs on (see the module docstring). Get one with
    :func:`acquire`; give it back with :meth:`release`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._stopping = False
        self._refs = 0
        self._stopped = threading.Event()
        self._stopped_callbacks: list[Callable[[], None]] = []
        self._stop_future: asyncio.Future[None] | None = None
        self._peers: weakref.WeakSet[MeteredPeer] = weakref.WeakSet()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=THREAD_NAME, daemon=True
        )
        self._thread.start()
        ready.wait()
        self.thread_id = self._thread.ident

    # --- thread ---------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        with contextlib.suppress(ImportError):
            import sniffio

            sniffio.thread_local.name = "asyncio"  # anyio on this thread is asyncio, always
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(ready))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            # anyio's worker threads (a sync token provider ran there) were told to stop when
            # _main, the loop's root task, ended: wait for them, so nothing outlives the bridge.
            for thread in threading.enumerate():
                if (
                    getattr(thread, "loop", None) is loop
                    and thread is not threading.current_thread()
                ):
                    thread.join(timeout=TASK_DRAIN)
        except BaseException:  # the thread must end whatever happens
            ready.set()
        finally:
            with self._lock:
                self._stopping = True
                callbacks, self._stopped_callbacks = self._stopped_callbacks, []
                loop.close()
                self._stopped.set()
            for callback in callbacks:
                with contextlib.suppress(Exception):
                    callback()

    async def _main(self, ready: threading.Event) -> None:
        """The loop's root task: lives until :meth:`_stop`, then cancels what is left."""
        loop = asyncio.get_running_loop()
        stop = self._stop_future = loop.create_future()
        ready.set()
        await stop
        with self._lock:
            self._stopping = True  # from here on, posts are refused (callers run inline)
        await asyncio.sleep(0)  # run the callbacks posted before the flag flipped
        # Peers never closed (only at interpreter exit): close them, briefly, so the others in
        # the call see them leave; whatever is left is cancelled below.
        closing = [
            asyncio.ensure_future(MeteredPeer.close(peer))
            for peer in list(self._peers)
            if peer.state != "closed"
        ]
        if closing:
            await asyncio.wait(closing, timeout=TASK_DRAIN)
        me = asyncio.current_task()
        for _ in range(3):  # cancelling may start cleanup tasks: a few rounds
            tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=TASK_DRAIN)

    def _stop(self) -> None:
        def stop() -> None:
            future = self._stop_future
            if future is not None and not future.done():
                future.set_result(None)

        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(stop)

    # --- leases ---------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """The loop thread has finished."""
        return self._stopped.is_set()

    @property
    def thread(self) -> threading.Thread:
        """The loop thread."""
        return self._thread

    def release_nowait(self) -> bool:
        """Give back a lease; True when it was the last one (the loop is stopping)."""
        global _current
        with _registry_lock:
            self._refs -= 1
            if self._refs > 0:
                return False
            if _current is self:
                _current = None
        self._stop()
        return True

    async def release(self) -> None:
        """Give back a lease; after the last one, wait (shielded, bounded) for the thread."""
        if self.release_nowait():
            await self.wait_stopped()

    async def wait_stopped(self) -> None:
        """Wait from trio until the loop thread has finished (at most ``STOP_WAIT``)."""
        token = trio.lowlevel.current_trio_token()
        event = trio.Event()

        def wake() -> None:
            _soon(token, event.set)

        with self._lock:
            if not self._stopped.is_set():
                self._stopped_callbacks.append(wake)
            else:
                event.set()
        with trio.move_on_after(STOP_WAIT, shield=True):
            await event.wait()
        self._thread.join(timeout=1.0)  # it only has to return from _run by now

    def track(self, peer: MeteredPeer) -> None:
        """Remember ``peer`` so an interpreter exit can still close it."""
        self._peers.add(peer)

    # --- calls ----------------------------------------------------------------------------

    def on_loop_thread(self) -> bool:
        """True on the loop thread."""
        return threading.get_ident() == self.thread_id

    @property
    def accepting(self) -> bool:
        """The loop still takes work."""
        return not self._stopping

    def _post(self, fn: Callable[..., object], *args: Any) -> None:
        with self._lock:
            if self._stopping:
                raise _BridgeStopped
            self.loop.call_soon_threadsafe(fn, *args)

    def post(self, fn: Callable[..., object], *args: Any) -> bool:
        """Fire-and-forget ``fn(*args)`` on the loop, in call order; False if it has stopped."""
        try:
            self._post(fn, *args)
        except _BridgeStopped:
            return False
        return True

    def post_task(self, fn: Callable[..., object], *args: Any) -> bool:
        """Like :meth:`post`, but ``fn`` runs inside a task started in order with the tasks of
        earlier calls (so it runs after their first steps)."""

        async def run() -> None:
            fn(*args)

        def start() -> None:
            if self._stopping:
                fn(*args)
            else:
                self.loop.create_task(run())

        return self.post(start)

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run sync ``fn`` on the loop (inside a task) and wait for its result.

        On the loop thread, or once the loop has stopped (nothing else runs these objects
        any more), ``fn`` runs inline.
        """
        if self.on_loop_thread():
            return fn(*args, **kwargs)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        def start() -> None:
            if self._stopping:  # flushed during shutdown: no new tasks
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
            else:
                self.loop.create_task(run())

        try:
            self._post(start)
        except _BridgeStopped:
            return fn(*args, **kwargs)
        try:
            return future.result(timeout=SYNC_CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise MeteredRealtimeError(
                "the aiortc thread did not answer in time", code="bridge_timeout"
            ) from None

    async def call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, deliver: Deliver | None = None
    ) -> T:
        """Await ``fn(*args)`` from trio, running it as a task on the loop.

        The completion comes back through ``deliver`` (a peer's event pump, so every event
        emitted before it has been dispatched) or straight with ``run_sync_soon``. On a trio
        cancel the task is cancelled and awaited (shielded, at most ``CANCEL_WAIT``); if it had
        completed anyway, its result is returned and the cancel reaches the caller at its next
        checkpoint. Raises :class:`_BridgeStopped` if the loop no longer takes work.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        job = _Job()

        def notify() -> None:  # loop thread
            if deliver is not None:
                deliver(done.set)
            else:
                _soon(token, done.set)

        def finished(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                job.cancelled = True
            else:
                error = task.exception()
                if error is None:
                    job.ok, job.value = True, task.result()
                else:
                    job.error = error
            notify()

        async def drive() -> Any:
            return await fn(*args)

        def start() -> None:
            if job.cancel_requested or self._stopping:
                job.cancelled = True
                notify()
                return
            job.task = self.loop.create_task(drive())
            job.task.add_done_callback(finished)

        def cancel() -> None:
            if job.task is not None:
                job.task.cancel()
            else:
                job.cancel_requested = True

        self._post(start)
        try:
            await done.wait()
        except trio.Cancelled:
            with contextlib.suppress(_BridgeStopped):
                self._post(cancel)
            with trio.move_on_after(CANCEL_WAIT, shield=True):
                await done.wait()
            if job.ok:
                return job.value  # type: ignore[no-any-return]
            raise
        return job.unwrap()  # type: ignore[no-any-return]


_registry_lock = threading.Lock()
_current: Bridge | None = None
_atexit_registered = False


def acquire() -> Bridge:
    """A lease on the running bridge, starting its thread if none runs."""
    global _current
    with _registry_lock:
        bridge = _current
        if bridge is None or not bridge.accepting:
            bridge = _current = Bridge()
            _register_atexit()
        bridge._refs += 1
        return bridge


def running() -> Bridge | None:
    """The bridge currently running, if any (no lease taken)."""
    return _current


def _register_atexit() -> None:
    global _atexit_registered
    if _atexit_registered:
        return
    _atexit_registered = True
    # Runs early in interpreter shutdown, before non-daemon threads are joined: a peer never
    # closed still leaves its call (briefly), then the loop's tasks are cancelled.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        with contextlib.suppress(RuntimeError):
            register(_shutdown_at_exit)


def _shutdown_at_exit() -> None:
    bridge = _current
    if bridge is not None:
        bridge._stop()
        bridge._thread.join(timeout=STOP_WAIT + 2 * TASK_DRAIN)


async def run_on_aiortc(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await ``fn(*args)`` on the aiortc thread from trio (holding a lease meanwhile)."""
    bridge = acquire()
    try:
        return await bridge.call(fn, *args)
    finally:
        await bridge.release()


def run_sync_on_aiortc(fn: Callable[..., T], *args: Any) -> T:
    """Run sync ``fn(*args)`` on the aiortc thread and return its result (inline when no
    bridge runs: then nothing else touches aiortc objects)."""
    bridge = _current
    if bridge is None:
        return fn(*args)
    return bridge.run_sync(fn, *args)


def call_soon_on_aiortc(fn: Callable[..., object], *args: Any) -> None:
    """Post sync ``fn(*args)`` to the aiortc thread, in order after earlier calls; inline when no
    bridge runs."""
    bridge = _current
    if bridge is None or not bridge.post_task(fn, *args):
        fn(*args)


# --- the trio side of one peer ---------------------------------------------------------------


class _TrioSession:
    """The trio half of a :class:`TrioMeteredPeer`: an event pump and the peer's async
    handlers, in one system task (so bare use needs no caller task group)."""

    def __init__(self, name: str) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.thread_id = threading.get_ident()
        self.log: Logger = StdlibLogger()
        self._queue: deque[tuple[bool, Callable[[], object]]] = deque()
        self._wake: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._pump_done = False  # the pump has returned (handlers may still be finishing)
        self._dead = False
        self._idle = False  # the pump is parked on _wake
        self._yield_first = False  # the pump must checkpoint before the next item
        self._done = trio.Event()
        self._spawned = 0
        self._early: list[tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]] = []
        trio.lowlevel.spawn_system_task(self._main, name=f"metered_realtime:{name}")

    # --- any thread -----------------------------------------------------------------------

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on trio after everything posted before it (completions, stream ends)."""
        self._queue.append((False, fn))
        self._kick_soon()

    def post_event(self, emitter: EventEmitter, event: object) -> None:
        """Dispatch ``event`` to ``emitter``'s handlers on trio, in order."""
        self._queue.append((True, functools.partial(self._dispatch, emitter, event)))
        self._kick_soon()

    def _kick_soon(self) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self._kick, idempotent=True)

    # --- trio thread ----------------------------------------------------------------------

    def _kick(self) -> None:
        if self._dead or self._pump_done:
            self._drain_dead()
            return
        if self._idle and not self._yield_first and not self._closing:
            # The pump is parked: dispatch here and save it a wake-up, until an async handler
            # starts (the pump takes over then, letting that handler step first).
            queue = self._queue
            for _ in range(PUMP_BATCH):
                if not queue:
                    return
                if self._run_one():
                    self._yield_first = True
                    break
        if self._wake is not None:
            self._wake.set()

    def _run_one(self) -> bool:
        """Run the next queued item; True if it started an async handler."""
        _, fn = self._queue.popleft()
        before = self._spawned
        try:
            fn()
        except Exception as exc:
            self.log.error("event dispatch failed", {"error": repr(exc)})
        return self._spawned != before

    def _drain_dead(self) -> None:
        """After the pump: run completions, drop events (nobody listens any more)."""
        while self._queue:
            is_event, fn = self._queue.popleft()
            if not is_event:
                with contextlib.suppress(Exception):
                    fn()

    async def _main(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                early, self._early = self._early, []
                for fn, args in early:  # spawned before this task first ran
                    nursery.start_soon(fn, *args)
                await self._pump()
                self._pump_done = True
                self._drain_dead()  # completions still reach handlers that are finishing
                nursery.cancel_scope.cancel()
        except BaseException as exc:  # a system task must never raise
            if not _only_cancelled(exc):
                with contextlib.suppress(Exception):
                    self.log.error("event pump failed", {"error": repr(exc)})
        finally:
            self._nursery = None
            self._dead = True
            self._drain_dead()
            self._done.set()

    async def _pump(self) -> None:
        queue = self._queue
        while True:
            handled = 0
            while queue or self._yield_first:
                if self._yield_first:
                    # An async handler was started: let it take its first step before the
                    # next event, so handler tasks start in event order (trio's scheduler
                    # does not keep the order of tasks started in one batch).
                    self._yield_first = False
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    continue
                handled += 1
                if self._run_one() or handled % PUMP_BATCH == 0:
                    self._yield_first = True
            if self._closing:
                return
            self._wake = trio.Event()
            if queue:
                continue
            self._idle = True
            try:
                await self._wake.wait()
            finally:
                self._idle = False

    def _dispatch(self, emitter: EventEmitter, event: object) -> None:
        before = getattr(emitter, "_before_dispatch", None)
        if before is not None:
            before(event)
        EventEmitter._emit(emitter, event)  # the local dispatch, on this thread
        after = getattr(emitter, "_after_dispatch", None)
        if after is not None:
            after(event)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run an async handler as a task of the peer (trio thread)."""
        if not self.try_spawn(fn, *args):
            self.log.error("async handler dropped: the peer is closed", {})

    def try_spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        if self._dead or self._pump_done:
            return False
        self._spawned += 1
        nursery = self._nursery
        if nursery is None:
            self._early.append((fn, args))  # the system task has not started yet
        else:
            nursery.start_soon(fn, *args)
        return True

    def stop_nowait(self) -> None:
        """End the pump after what is queued; cancel running handlers."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()

    def _in_handler(self) -> bool:
        """The current task is one of this peer's handler tasks (or a descendant)."""
        nursery = self._nursery
        task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
        while nursery is not None and task is not None:
            parent = task.parent_nursery
            if parent is nursery:
                return True
            task = None if parent is None else parent.parent_task
        return False

    async def stop(self) -> None:
        """:meth:`stop_nowait` and wait for it (not from one of the peer's own handlers)."""
        self.stop_nowait()
        if self._in_handler():
            return  # a handler closing its own peer: it is cancelled once it returns
        with trio.move_on_after(STOP_WAIT, shield=True):
            await self._done.wait()

    # --- user code called from the loop ---------------------------------------------------

    async def run_in_trio(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await the user's async ``fn()`` on trio, from a task on the loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        scopes: list[trio.CancelScope] = []
        cancelled = [False]

        def resolve(ok: bool, value: Any) -> None:  # loop thread
            if not future.done():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

        def reply(ok: bool, value: Any) -> None:  # trio thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(resolve, ok, value)

        async def runner() -> None:
            ok = False
            value: Any = _closed_error()
            try:
                with trio.CancelScope() as scope:
                    scopes.append(scope)
                    if cancelled[0]:
                        scope.cancel()
                    try:
                        value, ok = await fn(), True
                    except Exception as exc:
                        value = exc
            finally:
                reply(ok, value)

        def start() -> None:  # trio thread
            if not self.try_spawn(runner):
                reply(False, _closed_error())

        def cancel() -> None:  # trio thread
            cancelled[0] = True
            for scope in scopes:
                scope.cancel()

        if not _soon(self.token, start):
            raise _closed_error()
        try:
            return await future
        except asyncio.CancelledError:
            _soon(self.token, cancel)
            raise


class _TrioLogger:
    """A user's logger, called on the trio thread whichever thread logs."""

    def __init__(self, inner: Logger) -> None:
        self._inner = inner
        self._token = trio.lowlevel.current_trio_token()
        self._thread_id = threading.get_ident()

    def _log(self, level: str, msg: str, ctx: dict[str, Any] | None) -> None:
        fn = getattr(self._inner, level)
        if threading.get_ident() == self._thread_id:
            fn(msg, ctx)
        else:
            _soon(self._token, fn, msg, ctx)

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._log("debug", msg, ctx)

    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._log("info", msg, ctx)

    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._log("warning", msg, ctx)

    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self._log("error", msg, ctx)


def trio_logger(log: Logger) -> Logger:
    """``log`` for an object built on trio whose code runs on the aiortc thread: a custom
    logger is user code, so it is called on the trio thread; the stdlib adapter is thread-safe
    and called directly."""
    return log if isinstance(log, (StdlibLogger, _TrioLogger)) else _TrioLogger(log)


def _wrap_token_provider(provider: Any, session: _TrioSession) -> Any:
    """An async provider runs on trio; a sync one still runs in a worker thread."""
    if provider is None or not callable(provider):
        return provider  # MeteredPeer's own validation reports it
    if inspect.iscoroutinefunction(provider):

        async def on_trio() -> Any:
            return await session.run_in_trio(provider)

        return on_trio

    def in_worker() -> Any:
        result = provider()
        if inspect.isawaitable(result):  # a sync callable returning an awaitable: await on trio
            awaitable = result

            async def wait() -> Any:
                return await awaitable

            outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

            async def runner() -> None:
                try:
                    outcome.set_result(await wait())
                except BaseException as exc:
                    outcome.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise

            def start() -> None:
                if not session.try_spawn(runner):
                    outcome.set_exception(_closed_error())

            if not _soon(session.token, start):
                raise _closed_error()
            return outcome.result(timeout=SYNC_CALL_TIMEOUT)
        return result

    return in_worker


def _check_local_track(track: Any) -> None:
    """Under trio a local track must not run user code in ``recv()`` on the aiortc thread."""
    if track is None:
        return
    from metered_realtime.media.audio import AudioSource

    cls = type(track)
    if isinstance(track, AudioSource) and cls.recv is AudioSource.recv:
        return
    if cls.__module__.startswith("aiortc."):
        return  # aiortc's own tracks (remote tracks, relays, players)
    raise TypeError(
        "under trio a local track must be push-style (AudioSource) or one of aiortc's own "
        f"tracks: {cls.__name__}.recv() would run on the aiortc thread"
    )


# --- trio-facing objects ---------------------------------------------------------------------


class _TrioDataChannel(DataChannel):
    """A ``DataChannel`` whose machinery lives on the loop; the trio user holds this."""

    def __init__(
        self, raw: Any, *, _trio: tuple[Bridge, _TrioSession] | None = None, **kwargs: Any
    ) -> None:
        if raw is self:
            return  # DataChannel(channel): already set up
        assert _trio is not None
        self._bridge, self._session = _trio
        # trio-side view for the send fast path (trio thread only, after construction)
        self._tx_open = False
        self._tx_closed = False
        self._tx_estimate = 0  # bytes possibly still buffered: last reading + posted since
        self._tx_slow = 0  # sends waiting on the loop (fast path off meanwhile: keeps order)
        self._outbox: deque[str | bytes] = deque()  # fast-path sends not yet handed to aiortc
        self._outbox_posted = False  # a drain of the outbox is scheduled on the loop
        super().__init__(raw, **kwargs)
        self._spawn = self._session.spawn
        self._tx_open = raw.readyState == "open"

    # --- marshalling ----------------------------------------------------------------------

    def _emit(self, event: object) -> None:
        self._session.post_event(self, event)

    def _end_streams(self) -> None:
        self._session.post(functools.partial(EventEmitter._end_streams, self))

    def _before_dispatch(self, event: object) -> None:
        if isinstance(event, DCOpen):
            self._tx_open = True
        elif isinstance(event, DCClose):
            self._tx_open = False
            self._tx_closed = True

    def _on_trio(self) -> bool:
        return not self._bridge.on_loop_thread() and self._bridge.accepting

    # --- public ---------------------------------------------------------------------------

    @property
    def label(self) -> str:
        return self._bridge.run_sync(lambda: super(_TrioDataChannel, self).label)

    @property
    def ready_state(self) -> str:
        return self._bridge.run_sync(lambda: super(_TrioDataChannel, self).ready_state)

    @property
    def buffered_amount(self) -> int:
        return self._bridge.run_sync(lambda: super(_TrioDataChannel, self).buffered_amount)

    async def send(self, data: str | bytes) -> None:
        if not self._on_trio():
            return await super().send(data)
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise TypeError("data must be str or bytes")
        payload: str | bytes = data if isinstance(data, str) else bytes(data)
        size = len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)
        if size > self.max_buffered_amount:
            raise MeteredRealtimeError(
                f"payload of {size} bytes exceeds max_buffered_amount", code="payload_too_large"
            )
        if self._tx_closed:
            raise MeteredRealtimeError("data channel is closed", code="channel_closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        if (
            self._tx_open
            and not self._tx_slow
            and self._tx_estimate + size <= self.max_buffered_amount
        ):
            # Room for certain: queue it (in order) and return without a round trip. One
            # posted drain hands a burst of sends to aiortc (one wake-up of the loop).
            self._outbox.append(payload)
            if not self._outbox_posted:
                self._outbox_posted = True
                if not self._bridge.post(self._drain_outbox):
                    self._outbox.clear()
                    self._outbox_posted = False
                    raise MeteredRealtimeError("data channel is closed", code="channel_closed")
            self._tx_estimate += size
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        if self._tx_slow >= self.max_queued_sends:
            raise DataChannelOverflowError(self._tx_slow, self.max_queued_sends)
        self._tx_slow += 1
        try:
            self._tx_estimate = await self._bridge.call(
                self._send_waiting, payload, deliver=self._session.post
            )
        except _BridgeStopped:
            raise MeteredRealtimeError("data channel is closed", code="channel_closed") from None
        finally:
            self._tx_slow -= 1

    def close(self) -> None:
        if not self._on_trio():
            super().close()
            return
        self._tx_closed = True  # refuse sends from now on; those queued still go first
        self._tx_open = False
        if not self._bridge.post_task(DataChannel.close, self):
            super().close()

    # --- on the loop ----------------------------------------------------------------------

    def _drain_outbox(self) -> None:
        self._outbox_posted = False  # first: a send queued from now on posts a new drain
        outbox = self._outbox
        raw = self._raw
        while outbox:
            payload = outbox.popleft()
            try:
                if raw.readyState == "open" and not self._closed_by_user:
                    raw.send(payload)
            except Exception as exc:  # the channel closed meanwhile: as a message lost at close
                self._log.warning("data channel send failed", {"error": repr(exc)})

    async def _send_waiting(self, payload: str | bytes) -> int:
        await DataChannel.send(self, payload)
        return int(self._raw.bufferedAmount)


class _TrioRemotePeer(RemotePeer):
    """A ``RemotePeer`` living on the loop; the trio user holds this.

    On asyncio, sync ``PeerJoined`` handlers run inline before the new connection makes its
    first offer, so a data channel or track they add is in that offer (adding one later to a
    negotiated connection is a different, renegotiating path). To keep that, the first offer of
    a new remote peer is held until its ``PeerJoined`` has been dispatched on trio (at most
    ``HOLD_BOUND``; the loop never waits for trio, it only defers the offer).
    """

    def __init__(self, owner: MeteredPeer, peer_id: str, metadata: dict[str, Any] | None) -> None:
        assert isinstance(owner, TrioMeteredPeer)
        self._bridge = owner._bridge
        self._session = owner._session
        self._data_channel_cls = functools.partial(
            _TrioDataChannel, _trio=(owner._bridge, owner._session)
        )
        self._held = True
        self._held_offer = False
        self._trio_state = "idle"  # ``state`` as of the events dispatched on trio
        super().__init__(owner, peer_id, metadata)
        self._spawn = self._session.spawn

    @property
    def state(self) -> str:
        """On trio: the state as of the last ``StateChange`` its handlers have seen."""
        return self._state if self._bridge.on_loop_thread() else self._trio_state

    def _before_dispatch(self, event: object) -> None:
        if isinstance(event, StateChange):
            self._trio_state = event.to

    def _negotiate(self) -> None:
        if self._held:
            self._held_offer = True
            return
        super()._negotiate()

    def _release_hold(self) -> None:
        """Loop thread: ``PeerJoined`` was dispatched on trio (or the bound ran out)."""
        if self._held:
            self._held = False
            if self._held_offer:
                super()._negotiate()

    def _emit(self, event: object) -> None:
        self._session.post_event(self, event)

    def _end_streams(self) -> None:
        self._session.post(functools.partial(EventEmitter._end_streams, self))

    def create_data_channel(self, label: str, **kwargs: Any) -> DataChannel:
        return self._bridge.run_sync(super().create_data_channel, label, **kwargs)


class TrioMeteredPeer(MeteredPeer):
    """``MeteredPeer`` under trio (what ``MeteredPeer(...)`` returns in a trio run)."""

    _remote_peer_cls = _TrioRemotePeer

    def __init__(self, *, token_provider: Any = None, logger: object = None, **kwargs: Any) -> None:
        log = as_logger(logger)  # a bad logger raises here, as on asyncio
        session = _TrioSession("MeteredPeer")
        session.log = log
        log = trio_logger(log)
        bridge = acquire()
        self._bridge = bridge
        self._session = session
        self._released = False
        self._trio_state = "idle"  # ``state`` as of the events dispatched on trio
        try:
            bridge.run_sync(
                super().__init__,
                token_provider=_wrap_token_provider(token_provider, session),
                logger=log,
                **kwargs,
            )
        except BaseException:
            self._released = True
            session.stop_nowait()
            if bridge.release_nowait():
                bridge.thread.join(timeout=STOP_WAIT)  # a bad argument leaves nothing running
            raise
        self._spawn = session.spawn
        bridge.track(self)

    # --- marshalling ----------------------------------------------------------------------

    def _emit(self, event: object) -> None:
        if isinstance(event, PeerJoined) and isinstance(event.peer, _TrioRemotePeer):
            self._bridge.loop.call_later(HOLD_BOUND, event.peer._release_hold)
        self._session.post_event(self, event)

    @property
    def state(self) -> str:
        """On trio: the state as of the last ``StateChange`` its handlers have seen."""
        return self._state if self._bridge.on_loop_thread() else self._trio_state

    def _before_dispatch(self, event: object) -> None:
        if isinstance(event, StateChange):
            self._trio_state = event.to

    def _after_dispatch(self, event: object) -> None:
        if isinstance(event, PeerJoined) and isinstance(event.peer, _TrioRemotePeer):
            self._bridge.post(event.peer._release_hold)  # its sync handlers have run

    def _end_streams(self) -> None:
        self._session.post(functools.partial(EventEmitter._end_streams, self))

    def _on_trio(self) -> bool:
        return not self._bridge.on_loop_thread() and self._bridge.accepting

    async def _forward(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` on the loop; inline once the bridge has stopped (the peer is
        closed then, and ``fn`` fails its state check before touching anything)."""
        if self._on_trio():
            try:
                return await self._bridge.call(fn, *args, deliver=self._session.post)
            except _BridgeStopped:
                pass
        return await fn(*args)

    # --- public ---------------------------------------------------------------------------

    @property
    def remote_peers(self) -> list[RemotePeer]:
        return self._bridge.run_sync(lambda: super(TrioMeteredPeer, self).remote_peers)

    async def join(self, channel: str, *, include_sender_metadata: bool = False) -> None:
        join = functools.partial(
            super().join, channel, include_sender_metadata=include_sender_metadata
        )
        await self._forward(join)

    async def close(self, reason: str | None = None) -> None:
        if self._bridge.on_loop_thread():
            await super().close(reason)
            return
        if self._released:
            await super().close(reason)  # already closed: returns at once
            return
        try:
            # A close runs to completion even if the caller is cancelled: stopping halfway
            # would leave connections and the socket open.
            with trio.move_on_after(CLOSE_BOUND, shield=True):
                await self._forward(super().close, reason)
        finally:
            if not self._released:
                self._released = True
                await self._session.stop()
                await self._bridge.release()

    async def send(self, data: Any) -> None:
        await self._forward(super().send, data)

    async def send_to(self, peer_id: str, data: Any) -> None:
        await self._forward(super().send_to, peer_id, data)

    async def replace_track(self, old_track: Any, new_track: Any | None) -> None:
        _check_local_track(new_track)
        await self._forward(super().replace_track, old_track, new_track)

    def add_track(
        self, track: Any, stream: MediaStream | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        _check_local_track(track)
        self._bridge.run_sync(super().add_track, track, stream, metadata)

    def remove_track(self, track: Any) -> None:
        self._bridge.run_sync(super().remove_track, track)

    def get_track_metadata(self, track: Any) -> dict[str, Any] | None:
        return self._bridge.run_sync(super().get_track_metadata, track)

    def get_stream_metadata(self, stream: MediaStream) -> dict[str, Any] | None:
        return self._bridge.run_sync(super().get_stream_metadata, stream)


# Public members that are safe on the trio thread without forwarding: plain reads of attributes
# the loop only ever replaces (never mutates in place), or methods built on forwarded ones. A test
# checks every other public member of the three classes is overridden here.
SAFE_ON_TRIO: dict[type, frozenset[str]] = {
    MeteredPeer: frozenset(
        {
            "RECONCILE_DEADLINE",  # a class constant, read on the loop thread
            "peer_id",
            "channel",
            "loopback_only",
            "joined",
            "add_stream",
            "remove_stream",
            "on",
            "once",
            "off",
            "events",
        }
    ),
    RemotePeer: frozenset(
        {"pc", "send", "id", "metadata", "polite", "on", "once", "off", "events"}
    ),
    DataChannel: frozenset(
        {"raw", "max_buffered_amount", "max_queued_sends", "on", "once", "off", "events"}
    ),
}
TRIO_CLASSES: dict[type, type] = {
    MeteredPeer: TrioMeteredPeer,
    RemotePeer: _TrioRemotePeer,
    DataChannel: _TrioDataChannel,
}
