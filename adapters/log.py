"""The ``Logger`` protocol the SDK logs through, and its adapter to ``logging``.

The SDK calls only ``debug``/``info``/``warning``/``error`` with ``(msg, ctx)``. Context values
pass through :func:`~metered_realtime.core.errors.scrub`, so tokens, keys and SDP credentials
never reach a log call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from metered_realtime.core.errors import scrub

__all__ = ["Logger", "StdlibLogger", "as_logger"]


@runtime_checkable
class Logger(Protocol):
    """Anything with these four methods can be passed as ``logger=``."""

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...

    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...

    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...

    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None: ...


def _render(msg: str, ctx: Mapping[str, Any] | None) -> str:
    if not ctx:
        return msg
    return msg + " " + " ".join(f"{k}={v}" for k, v in ctx.items())


class StdlibLogger:
    """Adapts a ``logging.Logger`` to :class:`Logger` (context rendered as ``key=value``)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("metered_realtime")

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("%s", scrub(_render(msg, ctx)))

    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info("%s", scrub(_render(msg, ctx)))

    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.logger.warning("%s", scrub(_render(msg, ctx)))

    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.logger.error("%s", scrub(_render(msg, ctx)))


class _Scrubbed:
    """Scrubs the message and string context values before a custom logger sees them."""

    def __init__(self, inner: Logger) -> None:
        self.inner = inner

    @staticmethod
    def _clean(msg: str, ctx: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
        if ctx is None:
            return scrub(msg), None
        return scrub(msg), {k: scrub(v) if isinstance(v, str) else v for k, v in ctx.items()}

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.inner.debug(*self._clean(msg, ctx))

    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.inner.info(*self._clean(msg, ctx))

    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.inner.warning(*self._clean(msg, ctx))

    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        self.inner.error(*self._clean(msg, ctx))


def as_logger(logger: object) -> Logger:
    """``None`` → the ``metered_realtime`` stdlib logger; a ``logging.Logger`` is wrapped."""
    if logger is None:
        return StdlibLogger()
    if isinstance(logger, logging.Logger):
        return StdlibLogger(logger)
    if isinstance(logger, (StdlibLogger, _Scrubbed)):
        return logger
    if isinstance(logger, Logger):
        return _Scrubbed(logger)
    raise TypeError("logger must be a logging.Logger or have debug/info/warning/error(msg, ctx)")
