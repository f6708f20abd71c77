"""HS256 JSON Web Tokens with the standard library: minting, and the server's verification
procedure of PROTOCOL §6.3 (steps 1–13; the app-level gates of step 14 are the broker's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from metered_realtime.core.errors import MeteredRealtimeError
from metered_realtime.core.frames import dumps
from metered_realtime.core.validation import compile_pattern, finite_number

__all__ = ["PERMISSIONS", "TokenClaims", "TokenRejected", "sign_hs256", "verify_hs256"]

PERMISSIONS = frozenset({"publish", "subscribe", "presence", "send"})
MAX_TTL = 86_400
NBF_SKEW = 30.0
_SUB = re.compile(r"[\x20-\x7e]{1,128}")


class TokenRejected(MeteredRealtimeError):
    """The token failed verification; the server closes with ``close_code`` (4001 or 4002)."""

    code = "invalid_token"

    def __init__(self, close_code: int, reason: str) -> None:
        self.close_code = close_code
        self.reason = reason
        super().__init__(reason, code="token_expired" if close_code == 4002 else "invalid_token")


@dataclass(frozen=True)
class TokenClaims:
    """The claims of a verified token that the server acts on."""

    kid: str
    sub: str
    exp: float
    channels: tuple[str, ...]
    permissions: frozenset[str]
    metadata: dict[str, Any] | None = None
    peer_metadata: dict[str, Any] | None = field(default=None)


def _size(value: object) -> int:
    """UTF-8 bytes of the compact, unescaped serialization."""
    return len(
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        )
    )


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(segment: str) -> bytes:
    """Strict base64url: alphabet only, no padding, canonical trailing bits."""
    if not segment or not re.fullmatch(r"[A-Za-z0-9_-]*", segment) or len(segment) % 4 == 1:
        raise ValueError("bad base64url")
    raw = base64.b64decode(
        segment.replace("-", "+").replace("_", "/") + "=" * (-len(segment) % 4), validate=True
    )
    if _b64encode(raw) != segment:
        raise ValueError("non-canonical base64url")
    return raw


def sign_hs256(claims: Mapping[str, Any], secret: str | bytes, kid: str) -> str:
    """Mint a compact HS256 JWT with header ``{"alg":"HS256","typ":"JWT","kid":kid}``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    header = dumps({"alg": "HS256", "typ": "JWT", "kid": kid})
    signing_input = _b64encode(header.encode()) + "." + _b64encode(dumps(dict(claims)).encode())
    sig = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64encode(sig)


def _object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except (ValueError, RecursionError, UnicodeDecodeError, binascii.Error):
        raise TokenRejected(4001, "invalid token") from None
    if not isinstance(value, dict):
        raise TokenRejected(4001, "invalid token")
    return value


def verify_hs256(token: str, secrets: Mapping[str, bytes | str], now: float) -> TokenClaims:
    """Verify ``token`` against the enabled signing secrets (``kid`` → secret) at ``now``.

    Raises :class:`TokenRejected` with close code 4002 for an expired token and 4001 for
    everything else. Messages never include the token.
    """

    def bad(reason: str = "invalid token") -> TokenRejected:
        return TokenRejected(4001, reason)

    if not isinstance(token, str) or len(token) > 16_384:
        raise bad()
    parts = token.split(".")
    if len(parts) != 3:
        raise bad()
    header, claims = _object(parts[0]), _object(parts[1])
    if header.get("alg") != "HS256":
        raise bad("invalid token: alg must be HS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in secrets:
        raise bad("invalid token: unknown kid")
    secret = secrets[kid]
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    try:
        sig = _b64decode(parts[2])
    except (ValueError, binascii.Error):
        raise bad("invalid token: bad signature") from None
    expected = hmac.new(key, (parts[0] + "." + parts[1]).encode("ascii"), hashlib.sha256)
    if not hmac.compare_digest(sig, expected.digest()):
        raise bad("invalid token: bad signature")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not _SUB.fullmatch(sub):
        raise bad("invalid token: sub")
    exp = claims.get("exp")
    if not finite_number(exp):
        raise bad("invalid token: exp")
    if exp <= now:
        raise TokenRejected(4002, "token expired")
    if exp - now > MAX_TTL:
        raise bad("invalid token: exp more than 24 h ahead")
    nbf = claims.get("nbf")
    if nbf is not None and (not finite_number(nbf) or nbf > now + NBF_SKEW):
        raise bad("invalid token: nbf")
    channels = claims.get("channels")
    if not isinstance(channels, list) or not 1 <= len(channels) <= 100:
        raise bad("invalid token: channels")
    for pattern in channels:
        if not isinstance(pattern, str) or not 1 <= len(pattern) <= 256:
            raise bad("invalid token: channels")
        compile_pattern(pattern)
    perms = claims.get("permissions")
    if (
        not isinstance(perms, list)
        or len(perms) > 16
        or not all(isinstance(p, str) and p in PERMISSIONS for p in perms)
    ):
        raise bad("invalid token: permissions")
    metadata = claims.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or _size(metadata) > 8192):
        raise bad("invalid token: metadata")
    peer_meta = claims.get("peerMetadata")
    if peer_meta is not None and (not isinstance(peer_meta, dict) or _size(peer_meta) > 4096):
        raise bad("invalid token: peerMetadata")
    return TokenClaims(
        kid=kid,
        sub=sub,
        exp=float(exp),
        channels=tuple(channels),
        permissions=frozenset(perms),
        metadata=metadata,
        peer_metadata=peer_meta,
    )
