"""Typed frames of the signalling protocol (PROTOCOL §2.3, §3): encode and strict decode.

Every frame is one compact JSON object with a string ``type``. Encoding follows the official
Python SDK byte for byte (member order, ``separators=(",", ":")``, ASCII escaping, no NaN), so
``SubscribeFrame("demo/lobby", "r1").encode()`` is exactly what PROTOCOL §10.3 lists.

Decoding never raises anything but :class:`MalformedFrameError` (client side) or
:class:`FrameRejected` (server side), whose ``code`` is the wire error code.
"""

from __future__ import annotations

import json
import json.encoder
import json.scanner
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from metered_realtime.core.errors import FrameRejected, MalformedFrameError
from metered_realtime.core.events import PresencePeer
from metered_realtime.core.validation import (
    channel_problem,
    finite_number,
    is_reserved_channel,
    peer_id_problem,
    request_id_problem,
)

__all__ = [
    "MISSING",
    "AckFrame",
    "ClientFrame",
    "DirectFrame",
    "ErrorFrame",
    "GoingAwayFrame",
    "MessageFrame",
    "PingFrame",
    "PongFrame",
    "PresenceFrame",
    "PublishFrame",
    "SendFrame",
    "ServerFrame",
    "SubscribeFrame",
    "UnsubscribeFrame",
    "WelcomeFrame",
    "decode_client_frame",
    "decode_json",
    "decode_server_frame",
    "dumps",
    "split_publish",
]

RETRY_AFTER_DEFAULT_MS = 1000
RETRY_AFTER_MAX_MS = 300_000


class _Missing:
    """Marks an absent ``data`` member (the server answers ``missing_data``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
# What _encoder.encode() builds on every call, built once. Without its per-call markers dict
# a circular value ends in RecursionError rather than "Circular reference detected", so that
# case (and genuinely too-deep values) is redone by _encoder.encode() for its exact error.
_c_encode = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,
        _encoder.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
    if json.encoder.c_make_encoder is not None  # type: ignore[attr-defined]
    else None
)


def _encode(value: Any) -> str:
    if _c_encode is None:
        return _encoder.encode(value)
    try:
        return "".join(_c_encode(value, 0))
    except RecursionError:
        return _encoder.encode(value)


def dumps(value: Any) -> str:
    """Compact, ASCII-escaped JSON; ``ValueError`` for NaN/Infinity, ``TypeError`` otherwise."""
    return _encode(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: an infinity by overflow, which no frame can carry either
        raise ValueError(f"{text} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
_decode = _decoder.decode
decode_json: Final = _decode
"""``json.loads`` as the frame decoders parse: NaN, Infinity and overflowing numbers refused."""
_scan_once = json.scanner.make_scanner(_decoder)  # type: ignore[arg-type]  # (text, i) → (value, end)


def _load_object(text: str | bytes | bytearray) -> dict[str, Any]:
    """Parse a frame into a dict, or raise ``MalformedFrameError``."""
    try:
        if not isinstance(text, str):
            text = bytes(text).decode("utf-8")
        obj = _decode(text)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise MalformedFrameError("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise MalformedFrameError("frame is not a JSON object")
    if not isinstance(obj.get("type"), str):
        raise MalformedFrameError("frame has no string type")
    return obj


def _meta(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


# --- client → server --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeFrame:
    """``subscribe``: join a channel's fan-out (and its presence)."""

    channel: str
    request_id: str | None = None
    include_sender_metadata: bool = False

    def encode(self) -> str:
        out = '{"type":"subscribe","channel":' + _encode(self.channel)
        if self.request_id is not None:
            out += ',"requestId":' + _encode(self.request_id)
        if self.include_sender_metadata:
            out += ',"includeSenderMetadata":true'
        return out + "}"


@dataclass(frozen=True, slots=True)
class UnsubscribeFrame:
    """``unsubscribe``: leave a channel."""

    channel: str
    request_id: str | None = None

    def encode(self) -> str:
        out = '{"type":"unsubscribe","channel":' + _encode(self.channel)
        if self.request_id is not None:
            out += ',"requestId":' + _encode(self.request_id)
        return out + "}"


@dataclass(frozen=True, slots=True)
class PublishFrame:
    """``publish``: broadcast ``data`` to every other subscriber of ``channel``."""

    channel: str
    data: Any
    request_id: str | None = None

    def encode(self) -> str:
        out = '{"type":"publish","channel":' + _encode(self.channel)
        if self.data is not MISSING:
            out += ',"data":' + _encode(self.data)
        if self.request_id is not None:
            out += ',"requestId":' + _encode(self.request_id)
        return out + "}"


@dataclass(frozen=True, slots=True)
class SendFrame:
    """``send``: deliver ``data`` to every connection of peer ``to``."""

    to: str
    data: Any
    request_id: str | None = None

    def encode(self) -> str:
        out = '{"type":"send","to":' + _encode(self.to)
        if self.data is not MISSING:
            out += ',"data":' + _encode(self.data)
        if self.request_id is not None:
            out += ',"requestId":' + _encode(self.request_id)
        return out + "}"


@dataclass(frozen=True, slots=True)
class PingFrame:
    """``ping``: app-level keepalive (the SDKs never attach a ``requestId``)."""

    request_id: str | None = None

    def encode(self) -> str:
        if self.request_id is None:
            return '{"type":"ping"}'
        return '{"type":"ping","requestId":' + _encode(self.request_id) + "}"


ClientFrame = SubscribeFrame | UnsubscribeFrame | PublishFrame | SendFrame | PingFrame


def decode_client_frame(text: str | bytes | bytearray) -> ClientFrame:
    """Parse a client frame as the server must (PROTOCOL §3.2.6 and the op tables).

    Raises :class:`FrameRejected` with the wire code, in this order: ``malformed_message`` (not
    JSON, not an object, no string ``type``), ``unknown_type`` (``requestId`` echoed when
    valid), ``malformed_message`` (bad ``requestId``), then the op's own syntactic checks
    (``invalid_channel``, ``channel_reserved``, ``invalid_peer_id``). A missing ``data`` is
    returned as :data:`MISSING`: ``missing_data`` comes after the permission checks.
    """
    try:
        obj = _load_object(text)
    except MalformedFrameError as exc:
        raise FrameRejected(str(exc)) from None
    ftype: str = obj["type"]
    rid_raw = obj.get("requestId")
    rid_ok = "requestId" in obj and request_id_problem(rid_raw, in_bytes=True) is None
    rid: str | None = rid_raw if rid_ok else None
    if ftype not in _CLIENT_TYPES:
        raise FrameRejected("unknown frame type", code="unknown_type", request_id=rid)
    if "requestId" in obj and not rid_ok:
        raise FrameRejected("invalid requestId")
    if ftype == "ping":
        return PingFrame(rid)
    if ftype == "send":
        to = obj.get("to")
        problem = peer_id_problem(to, in_bytes=True)
        if problem:
            raise FrameRejected(problem, code="invalid_peer_id", request_id=rid)
        assert isinstance(to, str)
        return SendFrame(to, obj.get("data", MISSING), rid)
    channel = obj.get("channel")
    problem = channel_problem(channel, in_bytes=True)
    if problem:
        raise FrameRejected(problem, code="invalid_channel", request_id=rid)
    assert isinstance(channel, str)
    if ftype == "unsubscribe":
        return UnsubscribeFrame(channel, rid)
    if is_reserved_channel(channel):
        raise FrameRejected(
            "channel uses a reserved prefix", code="channel_reserved", request_id=rid
        )
    if ftype == "subscribe":
        return SubscribeFrame(channel, rid, obj.get("includeSenderMetadata") is True)
    return PublishFrame(channel, obj.get("data", MISSING), rid)


_CLIENT_TYPES = frozenset({"subscribe", "unsubscribe", "publish", "send", "ping"})

PUBLISH_HEAD: Final = '{"type":"publish","channel":'
_DATA_SEP = ',"data":'
_RID_SEP = ',"requestId":'


def split_publish(text: str) -> tuple[str, str, str, str] | None:
    """A ``publish`` in the layout both SDKs send, cut into its parts without re-encoding.

    For ``{"type":"publish","channel":C,"data":D,"requestId":R}`` exactly (members in this
    order, no whitespace between them, valid JSON throughout, C and R strings), returns
    ``(channel, data_json, request_id, request_id_json)`` where the ``_json`` parts are the
    frame's own text of those values. Anything else, however valid, returns ``None``: decode
    it with :func:`decode_client_frame`. Nothing is validated beyond JSON syntax and types.

    The broker forwards ``data_json`` verbatim: the same JSON value the sender wrote, without
    a decode/encode round trip (PROTOCOL §0.3: ``data`` is opaque to the server).
    """
    if not text.startswith(PUBLISH_HEAD):
        return None
    try:
        channel, i = _scan_once(text, 28)
        if type(channel) is not str or not text.startswith(_DATA_SEP, i):
            return None
        j = i + 8
        k = _scan_once(text, j)[1]
        if not text.startswith(_RID_SEP, k):
            return None
        rid, m = _scan_once(text, k + 13)
    except (StopIteration, ValueError, RecursionError):
        return None
    if type(rid) is not str or m != len(text) - 1 or text[m] != "}":
        return None
    return channel, text[j:k], rid, text[k + 13 : m]


# --- server → client --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WelcomeFrame:
    """``welcome``: the first frame of an authenticated connection."""

    peer_id: str
    expires_at: int | float | None
    server_time: int | float
    max_message_size: int
    metadata: dict[str, Any] | None = None

    def encode(self) -> str:
        out = (
            '{"type":"welcome","peerId":'
            + _encode(self.peer_id)
            + ',"expiresAt":'
            + _encode(self.expires_at)
            + ',"serverTime":'
            + _encode(self.server_time)
            + ',"maxMessageSize":'
            + _encode(self.max_message_size)
        )
        if self.metadata is not None:
            out += ',"metadata":' + _encode(self.metadata)
        return out + "}"


@dataclass(frozen=True, slots=True)
class AckFrame:
    """``ack``: the request succeeded."""

    request_id: str

    def encode(self) -> str:
        return '{"type":"ack","requestId":' + _encode(self.request_id) + "}"


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """``error``: a request (or an uncorrelated frame) failed."""

    code: str
    request_id: str | None = None
    message: str | None = None

    def encode(self) -> str:
        out = '{"type":"error"'
        if self.request_id is not None:
            out += ',"requestId":' + _encode(self.request_id)
        out += ',"code":' + _encode(self.code)
        if self.message is not None:
            out += ',"message":' + _encode(self.message)
        return out + "}"


@dataclass(frozen=True, slots=True)
class MessageFrame:
    """``message``: a channel broadcast."""

    channel: str
    sender: str
    data: Any
    from_metadata: dict[str, Any] | None = None

    def encode(self) -> str:
        out = (
            '{"type":"message","channel":'
            + _encode(self.channel)
            + ',"from":'
            + _encode(self.sender)
            + ',"data":'
            + _encode(self.data)
        )
        if self.from_metadata is not None:
            out += ',"fromMetadata":' + _encode(self.from_metadata)
        return out + "}"


@dataclass(frozen=True, slots=True)
class DirectFrame:
    """``direct``: a directed message."""

    sender: str
    data: Any
    from_metadata: dict[str, Any] | None = None

    def encode(self) -> str:
        out = '{"type":"direct","from":' + _encode(self.sender) + ',"data":' + _encode(self.data)
        if self.from_metadata is not None:
            out += ',"fromMetadata":' + _encode(self.from_metadata)
        return out + "}"


def _entry(peer: PresencePeer) -> str:
    out = '{"peerId":' + _encode(peer.peer_id)
    if peer.metadata is not None:
        out += ',"metadata":' + _encode(peer.metadata)
    return out + "}"


@dataclass(frozen=True, slots=True)
class PresenceFrame:
    """``presence``: a snapshot (to a subscriber) or a delta (to the other members)."""

    channel: str
    joined: tuple[PresencePeer, ...] = ()
    left: tuple[PresencePeer, ...] = ()

    def encode(self) -> str:
        return (
            '{"type":"presence","channel":'
            + _encode(self.channel)
            + ',"joined":['
            + ",".join(map(_entry, self.joined))
            + '],"left":['
            + ",".join(map(_entry, self.left))
            + "]}"
        )


@dataclass(frozen=True, slots=True)
class GoingAwayFrame:
    """``going_away``: graceful shutdown notice; a 1001 close follows."""

    retry_after_ms: int = RETRY_AFTER_DEFAULT_MS

    def encode(self) -> str:
        return '{"type":"going_away","retryAfterMs":' + _encode(self.retry_after_ms) + "}"


@dataclass(frozen=True, slots=True)
class PongFrame:
    """``pong``: the reply to ``ping`` (echoing its ``requestId`` when it had one)."""

    request_id: str | None = None

    def encode(self) -> str:
        if self.request_id is None:
            return '{"type":"pong"}'
        return '{"type":"pong","requestId":' + _encode(self.request_id) + "}"


ServerFrame = (
    WelcomeFrame
    | AckFrame
    | ErrorFrame
    | MessageFrame
    | DirectFrame
    | PresenceFrame
    | GoingAwayFrame
    | PongFrame
)


def _bad(what: str, ftype: str) -> MalformedFrameError:
    return MalformedFrameError(f"{ftype} frame: {what}")


def _entries(raw: object, ftype: str) -> tuple[PresencePeer, ...]:
    if not isinstance(raw, list):
        raise _bad("joined and left must be arrays", ftype)
    out = []
    for item in raw:
        if not isinstance(item, Mapping) or not isinstance(item.get("peerId"), str):
            raise _bad("entry without a string peerId", ftype)
        out.append(PresencePeer(item["peerId"], _meta(item.get("metadata"))))
    return tuple(out)


def decode_server_frame(text: str | bytes | bytearray) -> ServerFrame:
    """Parse a server frame with the acceptance rules both official SDKs enforce (§3.3).

    Lenient where PROTOCOL §11.4 says so: a missing ``expiresAt`` is ``None``; non-integer
    welcome numbers are truncated; ``retryAfterMs`` defaults to 1000 and is clamped to 300,000.
    Raises :class:`MalformedFrameError` (``code`` ``unknown_type`` for unknown types).
    """
    obj = _load_object(text)
    ftype: str = obj["type"]
    if ftype == "message":
        channel, sender = obj.get("channel"), obj.get("from")
        if not isinstance(channel, str) or not isinstance(sender, str) or "data" not in obj:
            raise _bad("needs string channel and from, and data", ftype)
        return MessageFrame(channel, sender, obj["data"], _meta(obj.get("fromMetadata")))
    if ftype == "ack":
        rid = obj.get("requestId")
        if not isinstance(rid, str):
            raise _bad("needs a string requestId", ftype)
        return AckFrame(rid)
    if ftype == "direct":
        sender = obj.get("from")
        if not isinstance(sender, str) or "data" not in obj:
            raise _bad("needs a string from, and data", ftype)
        return DirectFrame(sender, obj["data"], _meta(obj.get("fromMetadata")))
    if ftype == "presence":
        channel = obj.get("channel")
        if not isinstance(channel, str):
            raise _bad("needs a string channel", ftype)
        return PresenceFrame(
            channel, _entries(obj.get("joined"), ftype), _entries(obj.get("left"), ftype)
        )
    if ftype == "pong":
        rid = obj.get("requestId")
        return PongFrame(rid if isinstance(rid, str) else None)
    if ftype == "error":
        code = obj.get("code")
        if not isinstance(code, str) or not code:
            raise _bad("needs a non-empty string code", ftype)
        rid, msg = obj.get("requestId"), obj.get("message")
        return ErrorFrame(
            code, rid if isinstance(rid, str) else None, msg if isinstance(msg, str) else None
        )
    if ftype == "welcome":
        return _welcome(obj)
    if ftype == "going_away":
        raw = obj.get("retryAfterMs")
        hint = RETRY_AFTER_DEFAULT_MS
        if finite_number(raw) and raw > 0:
            hint = min(int(raw), RETRY_AFTER_MAX_MS) or RETRY_AFTER_DEFAULT_MS
        return GoingAwayFrame(hint)
    raise MalformedFrameError("unknown frame type", code="unknown_type")


def _welcome(obj: dict[str, Any]) -> WelcomeFrame:
    peer_id = obj.get("peerId")
    if not isinstance(peer_id, str):
        raise _bad("needs a string peerId", "welcome")
    expires = obj.get("expiresAt")
    if expires is not None and not finite_number(expires):
        raise _bad("expiresAt must be null or a number", "welcome")
    server_time, cap = obj.get("serverTime"), obj.get("maxMessageSize")
    if not finite_number(server_time):
        raise _bad("serverTime must be a number", "welcome")
    if not finite_number(cap) or cap <= 0:
        raise _bad("maxMessageSize must be a positive number", "welcome")
    return WelcomeFrame(
        peer_id,
        None if expires is None else int(expires),
        int(server_time),
        max(1, int(cap)),
        _meta(obj.get("metadata")),
    )
