"""Names, identifiers, URLs, channel patterns and ICE-server lists.

See PROTOCOL §2.1, §2.4, §6.5 and §6.7.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard
from urllib.parse import quote, urlsplit

__all__ = [
    "DEFAULT_URL",
    "RESERVED_PREFIXES",
    "IceServerConfig",
    "RandomSource",
    "build_url",
    "channel_problem",
    "compile_pattern",
    "extract_ice_servers",
    "finite_number",
    "is_reserved_channel",
    "match_pattern",
    "peer_id_problem",
    "request_id_problem",
    "split_base_url",
    "uuid4",
]

DEFAULT_URL = "wss://rms.metered.ca"
RESERVED_PREFIXES = ("_metered/", "_internal/", "_system/")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

MAX_CHANNEL = 256
MAX_PEER_ID = 128
MAX_REQUEST_ID = 128

# U+0000–U+001F, U+007F, U+0080–U+009F
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class RandomSource(Protocol):
    """What the core needs of a random generator (``random.Random`` fits)."""

    def getrandbits(self, k: int, /) -> int: ...

    def random(self) -> float: ...


_UUID_KEEP = ((1 << 128) - 1) & ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, variant 10xx


def uuid4(rng: RandomSource) -> str:
    """An RFC 4122 version-4 UUID string drawn from ``rng``."""
    h = "%032x" % ((rng.getrandbits(128) & _UUID_KEEP) | _UUID_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _name_problem(value: object, what: str, limit: int, *, in_bytes: bool) -> str | None:
    if not isinstance(value, str):
        return f"{what} must be a string"
    size = len(value.encode("utf-8", "surrogatepass")) if in_bytes else len(value)
    if size == 0:
        return f"{what} must not be empty"
    if size > limit:
        unit = "bytes" if in_bytes else "characters"
        return f"{what} is longer than {limit} {unit}"
    if _CONTROL.search(value):
        return f"{what} contains control characters"
    return None


def channel_problem(channel: object, *, in_bytes: bool = False) -> str | None:
    """Why ``channel`` is not a valid channel name, or ``None``.

    Clients count characters (``in_bytes=False``); the server counts UTF-8 bytes (P16).
    """
    return _name_problem(channel, "channel", MAX_CHANNEL, in_bytes=in_bytes)


def peer_id_problem(peer_id: object, *, in_bytes: bool = False) -> str | None:
    """Why ``peer_id`` cannot be a ``send`` target, or ``None``."""
    return _name_problem(peer_id, "peer id", MAX_PEER_ID, in_bytes=in_bytes)


def request_id_problem(request_id: object, *, in_bytes: bool = False) -> str | None:
    """Why ``request_id`` is not a valid request id (1…128), or ``None``."""
    if not isinstance(request_id, str):
        return "requestId must be a string"
    size = len(request_id.encode("utf-8", "surrogatepass")) if in_bytes else len(request_id)
    if not 1 <= size <= MAX_REQUEST_ID:
        return "requestId must be 1 to 128 long"
    return None


def is_reserved_channel(channel: str) -> bool:
    """True when ``channel`` starts with a reserved prefix (case-insensitive)."""
    folded = channel.casefold()
    return folded.startswith(RESERVED_PREFIXES)


# --- channel patterns (§6.5) -------------------------------------------------------------


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Translate a channel pattern to an anchored regular expression.

    ``*`` matches a run without ``/``; ``**`` (or more stars) matches anything; ``\\*`` and
    ``\\\\`` are a literal star and backslash; any other ``\\`` is literal.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n and pattern[i + 1] in "*\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif ch == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            out.append(".*" if j - i >= 2 else "[^/]*")
            i = j
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def match_pattern(pattern: str, channel: str) -> bool:
    """Whether ``channel`` matches ``pattern`` as a whole, case-sensitively."""
    return compile_pattern(pattern).fullmatch(channel) is not None


# --- URLs (§2.1) ------------------------------------------------------------------------


def split_base_url(base: str) -> tuple[str, str, int, bool]:
    """Validate a user-supplied base URL; return ``(scheme, host, port, secure)``.

    Raises ``ValueError`` for a scheme other than ws/wss, ``ws`` to a non-loopback host, or a
    base carrying a path, query, fragment or credentials.
    """
    if not isinstance(base, str) or not base:
        raise ValueError("url must be a non-empty string")
    parts = urlsplit(base)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError("url scheme must be ws or wss")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("url must not carry a path, query or fragment (the SDK adds /v1)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not carry user info")
    host = parts.hostname
    if not host:
        raise ValueError("url has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("url has an invalid port") from None
    if scheme == "ws" and host.lower() not in LOOPBACK_HOSTS:
        raise ValueError("plain ws: is only allowed to localhost, 127.0.0.1 or ::1; use wss:")
    secure = scheme == "wss"
    return scheme, host, port if port is not None else (443 if secure else 80), secure


def build_url(base: str, *, key: str | None = None, token: str | None = None) -> str:
    """The connect URL ``<base>/v1?key=…`` or ``…?token=…`` (exactly one credential)."""
    split_base_url(base)
    if (key is None) == (token is None):
        raise ValueError("exactly one of key and token is required")
    name, value = ("key", key) if key is not None else ("token", token)
    assert value is not None
    return f"{base.rstrip('/')}/v1?{name}={quote(value, safe='-_.~')}"


# --- ICE servers (§2.4) -----------------------------------------------------------------


@dataclass(frozen=True)
class IceServerConfig:
    """One ICE server from ``welcome.metadata.iceServers``."""

    urls: str | list[str]
    """A URL or a list of URLs (``stun:``, ``stuns:``, ``turn:``, ``turns:``)."""
    username: str | None = None
    """TURN user name, if any."""
    credential: str | None = field(default=None, repr=False)
    """TURN credential, if any (never shown in ``repr``)."""


_ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def _ice_url_ok(url: object) -> bool:
    return (
        isinstance(url, str) and 1 <= len(url) <= 512 and url[:6].lower().startswith(_ICE_SCHEMES)
    )


def extract_ice_servers(metadata: object) -> tuple[IceServerConfig, ...] | None:
    """All-or-nothing extraction of ``metadata.iceServers``; ``None`` when absent or invalid."""
    if not isinstance(metadata, Mapping):
        return None
    raw = metadata.get("iceServers")
    if not isinstance(raw, list) or len(raw) > 16:
        return None
    out: list[IceServerConfig] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            return None
        urls = entry.get("urls")
        if isinstance(urls, str):
            if not _ice_url_ok(urls):
                return None
            norm: str | list[str] = urls
        elif isinstance(urls, list) and urls and all(_ice_url_ok(u) for u in urls):
            norm = list(urls)
        else:
            return None
        username = entry.get("username")
        credential = entry.get("credential")
        if isinstance(username, str) and len(username) > 1024:
            return None
        if isinstance(credential, str) and len(credential) > 1024:
            return None
        out.append(
            IceServerConfig(
                urls=norm,
                username=username if isinstance(username, str) else None,
                credential=credential if isinstance(credential, str) else None,
            )
        )
    return tuple(out)


def finite_number(value: object) -> TypeGuard[int | float]:
    """True for an int or float that is finite (booleans excluded)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))
    )
