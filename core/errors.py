"""Error types of the SDK.

Branch on ``isinstance`` and on the stable ``.code`` attribute, never on the message text.
Messages never carry credentials (tokens, keys, SDP secrets): see :func:`scrub`.
"""

from __future__ import annotations

import re

__all__ = [
    "AckTimeoutError",
    "DataChannelOverflowError",
    "IceRestartExhaustedError",
    "MeteredPeerOversizedError",
    "MeteredPeerReplaceTrackError",
    "MeteredPeerSendError",
    "MeteredPeerStateError",
    "ReconcileTimeoutError",
    "ReplaceTrackFailure",
    "DisconnectedError",
    "FrameRejected",
    "LocalProtocolError",
    "MalformedFrameError",
    "MeteredRealtimeError",
    "NotConnectedError",
    "OversizedPayloadError",
    "ServerRequestError",
    "SignallingConnectError",
    "SignallingError",
    "scrub",
]

_SECRET_PATTERNS = (
    # token=… / key=… query values
    (re.compile(r"((?:^|[?&\s])(?:token|key)=)[^&\s\"']*", re.IGNORECASE), r"\1<redacted>"),
    # SDP ice-pwd / ice-ufrag lines
    (re.compile(r"(a=ice-(?:pwd|ufrag):)[^\r\n\"\\]*"), r"\1<redacted>"),
    # "credential": "…" in ICE server configs
    (re.compile(r"(\"?credential\"?\s*[:=]\s*\"?)[^\"',}\s]*"), r"\1<redacted>"),
)


def scrub(text: str) -> str:
    """Remove ``token=``/``key=`` query values, SDP ICE credentials and ICE credentials."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


class MeteredRealtimeError(Exception):
    """Base of every error the SDK raises. ``code`` is a stable, machine-readable string."""

    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(scrub(message) if message else self.code)


class SignallingError(MeteredRealtimeError):
    """Base of the errors of the signalling (pub/sub) layer."""

    code = "signalling_error"


class SignallingConnectError(SignallingError):
    """The first ``connect()`` failed: the socket closed (or never opened) before a welcome."""

    code = "connect_failed"

    def __init__(self, close_code: int, close_reason: str) -> None:
        self.close_code = close_code
        self.close_reason = close_reason
        super().__init__(f"connect failed: close code {close_code} ({close_reason!r})")


class NotConnectedError(SignallingError):
    """A request was attempted while the client was not connected; nothing was sent."""

    code = "not_connected"

    def __init__(self, message: str = "not connected") -> None:
        super().__init__(message)


class ServerRequestError(SignallingError):
    """The server answered a request with an ``error`` frame; ``code`` is the server's code."""

    def __init__(self, code: str, request_id: str | None, message: str | None = None) -> None:
        self.request_id = request_id
        self.message = message
        text = f"server rejected request {request_id}: {code}"
        if message:
            text += f" ({message})"
        super().__init__(text, code=code)


class AckTimeoutError(SignallingError):
    """No ``ack`` or ``error`` arrived for a request within ``timeout`` seconds."""

    code = "ack_timeout"

    def __init__(self, request_id: str, timeout: float) -> None:
        self.request_id = request_id
        self.timeout = timeout
        super().__init__(f"no reply to request {request_id} within {timeout:g} s")


class DisconnectedError(SignallingError):
    """The socket closed while a request was waiting for its reply."""

    code = "disconnected"

    def __init__(self, message: str = "disconnected before the server replied") -> None:
        super().__init__(message)


class OversizedPayloadError(MeteredRealtimeError, ValueError):
    """A frame would exceed the server's advertised ``maxMessageSize``; nothing was sent."""

    code = "oversized_payload"

    def __init__(self, size: int, cap: int) -> None:
        self.size = size
        self.cap = cap
        super().__init__(f"frame of {size} bytes exceeds the {cap}-byte message cap")


class LocalProtocolError(MeteredRealtimeError):
    """The caller asked the core for something its current state does not allow."""

    code = "local_protocol_error"


class MalformedFrameError(MeteredRealtimeError, ValueError):
    """A received frame is not valid for the protocol. ``code`` is the wire error code.

    On the client such frames are logged and dropped; on the server they are answered with an
    ``error`` frame whose ``requestId`` is :attr:`request_id` (``None`` when it cannot be trusted).
    """

    code = "malformed_message"

    def __init__(
        self, message: str, *, code: str = "malformed_message", request_id: str | None = None
    ) -> None:
        self.request_id = request_id
        super().__init__(message, code=code)


class FrameRejected(MalformedFrameError):
    """A client frame failed a syntactic check (``invalid_channel``, ``unknown_type``…)."""


class ReconcileTimeoutError(MeteredRealtimeError):
    """No presence snapshot arrived after a signalling reconnect, even after resubscribing."""

    code = "reconcile_timeout"


class MeteredPeerSendError(MeteredRealtimeError):
    """A ``MeteredPeer`` call was refused locally.

    ``code``: ``reserved_channel``, ``not_joined``, ``invalid_args`` or ``self_send``.
    """

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message or code.replace("_", " "), code=code)


class MeteredPeerOversizedError(MeteredRealtimeError, ValueError):
    """A payload does not fit the server's ``maxMessageSize``; nothing was sent."""

    code = "oversized"

    def __init__(self, size: int, cap: int) -> None:
        self.size = size
        self.cap = cap
        super().__init__(f"payload of {size} bytes exceeds the {cap}-byte message cap")


class MeteredPeerStateError(MeteredRealtimeError):
    """A ``MeteredPeer`` method is not allowed in the current state.

    ``code``: ``invalid_state`` or ``track_already_attached``.
    """

    def __init__(self, code: str, method: str, current_state: str) -> None:
        self.method = method
        self.current_state = current_state
        super().__init__(f"{method}() not allowed in state {current_state} ({code})", code=code)


class ReplaceTrackFailure:
    """One remote peer for which ``replace_track`` failed."""

    __slots__ = ("err", "peer_id")

    def __init__(self, peer_id: str, err: BaseException) -> None:
        self.peer_id = peer_id
        self.err = err

    def __repr__(self) -> str:
        return f"ReplaceTrackFailure(peer_id={self.peer_id!r}, err={scrub(repr(self.err))})"


class MeteredPeerReplaceTrackError(MeteredRealtimeError):
    """``replace_track`` failed for some remote peers (``failed``) and not others."""

    code = "replace_track_failed"

    def __init__(self, succeeded: tuple[str, ...], failed: tuple[ReplaceTrackFailure, ...]) -> None:
        self.succeeded = succeeded
        self.failed = failed
        super().__init__(
            f"replace_track failed for {len(failed)} of {len(succeeded) + len(failed)} peers"
        )


class DataChannelOverflowError(MeteredRealtimeError):
    """More than ``cap`` sends are already waiting on a data channel's buffer."""

    code = "data_channel_overflow"

    def __init__(self, queued: int, cap: int) -> None:
        self.queued = queued
        self.cap = cap
        super().__init__(f"{queued} sends already queued (cap {cap})")


class IceRestartExhaustedError(MeteredRealtimeError):
    """The ICE recovery ladder gave up after its last attempt."""

    code = "ice_restart_exhausted"
