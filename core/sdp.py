"""SDP text helpers for the peer protocol (PROTOCOL §7.3, §7.5.2, §7.5.4, §7.7.1).

Everything here works on SDP *text* and never raises on arbitrary input: lines are split on
``"\\n"`` with their endings kept, so whatever a function does not deliberately change comes back
byte for byte (CRLF included). Nothing parses a whole session description; each helper reads
just the attributes it needs:

* :func:`parse_candidate` — one ICE candidate line (``candidate:…`` or ``a=candidate:…``);
* :func:`is_loopback_address` / :func:`filter_candidates` — drop ``a=candidate`` lines by address;
* :func:`parse_msid` — mid → (stream id, track id) and track id → stream id (§7.7.1);
* :func:`ice_ufrag` — the first ``a=ice-ufrag`` (remote ICE restart / rebuild detection, §7.5.2);
* :class:`ExtmapRegistry` — stable RTP header-extension ids across re-offers (§7.5.4, W10).

:mod:`metered_realtime.core.negotiation` re-exports all of it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_EXTMAP_ID",
    "MAX_FREE_EXTMAP_ID",
    "MAX_SDP_ID_LENGTH",
    "MAX_MSID_ENTRIES",
    "ExtmapRegistry",
    "MsidInfo",
    "PayloadTypeRegistry",
    "arrange_sections",
    "ParsedCandidate",
    "filter_candidates",
    "ice_ufrag",
    "is_loopback_address",
    "media_layout",
    "parse_candidate",
    "parse_msid",
]

MAX_MSID_ENTRIES: Final = 256
"""Cap on each map of :class:`MsidInfo` (§7.7.1)."""
MAX_SDP_ID_LENGTH: Final = 256
"""Longest mid / stream id / track id / ICE ufrag taken from an SDP; longer ones are ignored."""
MAX_FREE_EXTMAP_ID: Final = 14
"""Highest id handed to a header extension never negotiated before (one-byte header form)."""
MAX_EXTMAP_ID: Final = 255
"""Highest id :meth:`ExtmapRegistry.learn` records (two-byte header form)."""


# --- lines ------------------------------------------------------------------------------


def _lines(sdp: str) -> list[str]:
    """``sdp`` cut after every ``"\\n"``, endings kept: ``"".join(_lines(s)) == s``."""
    parts = sdp.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _content(line: str) -> str:
    """A line without its ``"\\n"`` / ``"\\r\\n"`` ending."""
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


# --- candidates -------------------------------------------------------------------------

_UINT: Final = re.compile(r"[0-9]{1,10}", re.ASCII)
_PROTOCOLS: Final = frozenset({"udp", "tcp"})
_TYPES: Final = frozenset({"host", "srflx", "prflx", "relay"})


def _uint(token: str, high: int, low: int = 0) -> int | None:
    """``token`` as a plain decimal in ``low..high``, else ``None`` (no sign, no ``_``)."""
    if _UINT.fullmatch(token) is None:
        return None
    value = int(token)
    return value if low <= value <= high else None


@dataclass(frozen=True, slots=True)
class ParsedCandidate:
    """The fields of one ICE candidate line (RFC 8839 §5.1), as aiortc's ``RTCIceCandidate``
    takes them (``protocol`` and ``type`` lower-cased)."""

    foundation: str
    component: int
    protocol: str
    priority: int
    ip: str
    """Connection address: an IPv4/IPv6 literal or a host name (mDNS ``….local``)."""
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    tcptype: str | None = None


def parse_candidate(line: str) -> ParsedCandidate | None:
    """Parse ``candidate:<foundation> <component> <transport> <priority> <address> <port> typ
    <type> [raddr <a>] [rport <p>] [tcptype <t>] …`` (``a=candidate:`` accepted too).

    ``None`` for anything malformed: missing prefix, fewer than 8 fields, no ``typ`` keyword,
    a transport other than udp/tcp, an unknown type, or numbers out of range (component 1…256,
    priority 0…2³²−1, ports 0…65535). Unknown extension pairs (``generation``, ``ufrag``,
    ``network-cost`` …) are skipped.
    """
    if line.startswith("a="):
        line = line[2:]
    if not line.startswith("candidate:"):
        return None
    bits = line[len("candidate:") :].split()
    if len(bits) < 8 or bits[6] != "typ":
        return None
    foundation, component_s, protocol, priority_s, ip, port_s, _, type_ = bits[:8]
    component = _uint(component_s, 256, low=1)
    priority = _uint(priority_s, 2**32 - 1)
    port = _uint(port_s, 65535)
    protocol = protocol.lower()
    type_ = type_.lower()
    if (
        component is None
        or priority is None
        or port is None
        or protocol not in _PROTOCOLS
        or type_ not in _TYPES
    ):
        return None
    related_address: str | None = None
    related_port: int | None = None
    tcptype: str | None = None
    for i in range(8, len(bits) - 1, 2):
        key, value = bits[i], bits[i + 1]
        if key == "raddr":
            related_address = value
        elif key == "rport":
            related_port = _uint(value, 65535)
            if related_port is None:
                return None
        elif key == "tcptype":
            tcptype = value
    return ParsedCandidate(
        foundation=foundation,
        component=component,
        protocol=protocol,
        priority=priority,
        ip=ip,
        port=port,
        type=type_,
        related_address=related_address,
        related_port=related_port,
        tcptype=tcptype,
    )


def is_loopback_address(host: str) -> bool:
    """True only for an IP literal in 127.0.0.0/8 or ``::1`` (an IPv6 zone suffix is allowed).

    Host names — ``localhost`` and mDNS ``….local`` names included — are not resolved and give
    False, as do IPv4-mapped addresses (``::ffff:127.0.0.1``).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped is None and address.is_loopback
    return address.is_loopback


def filter_candidates(sdp: str, keep: Callable[[str], bool]) -> str:
    """Remove every ``a=candidate`` line whose connection address fails ``keep(address)``.

    A candidate line too short to have an address (fewer than five fields) is removed as well.
    Every other line, line endings included, is returned unchanged.
    """
    out: list[str] = []
    for line in _lines(sdp):
        content = _content(line)
        if content.startswith("a=candidate:"):
            bits = content[len("a=candidate:") :].split()
            if len(bits) < 5 or not keep(bits[4]):
                continue
        out.append(line)
    return "".join(out)


# --- msid / ufrag -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MsidInfo:
    """Stream grouping announced by one SDP (§7.7.1)."""

    by_mid: dict[str, tuple[str | None, str]]
    """mid → (stream id, or ``None`` for ``-``, track id)."""
    stream_of_track: dict[str, str]
    """msid track id → stream id (tracks announced with ``-`` have no entry)."""

    @property
    def track_ids(self) -> frozenset[str]:
        """Every msid track id the SDP describes, ``-``-stream tracks included (the
        ``described_track_ids`` of :meth:`TrackMetaStore.resolve`)."""
        tracks = frozenset(track for _, track in self.by_mid.values())
        return tracks.union(self.stream_of_track)


def _msid_pair(value: str) -> tuple[str, str] | None:
    """``"<stream> <track>"`` → the pair, if both ids are there and short enough."""
    bits = value.split()
    if len(bits) < 2:
        return None
    stream, track = bits[0], bits[1]
    if len(stream) > MAX_SDP_ID_LENGTH or len(track) > MAX_SDP_ID_LENGTH:
        return None
    return stream, track


def parse_msid(sdp: str) -> MsidInfo:
    """Read ``a=msid:<stream> <track>`` of every m-section (or, failing that, the section's
    first legacy ``a=ssrc:<n> msid:<stream> <track>``) together with its ``a=mid``.

    Both maps hold at most :data:`MAX_MSID_ENTRIES` entries (first come, first kept); ids and
    mids longer than :data:`MAX_SDP_ID_LENGTH` characters are ignored. A section without a mid
    still contributes its track → stream entry.
    """
    by_mid: dict[str, tuple[str | None, str]] = {}
    stream_of_track: dict[str, str] = {}

    def close_section(mid: str | None, msid: tuple[str, str] | None) -> None:
        if msid is None:
            return
        stream, track = msid
        if (
            stream != "-"
            and track not in stream_of_track
            and len(stream_of_track) < MAX_MSID_ENTRIES
        ):
            stream_of_track[track] = stream
        if mid is not None and mid not in by_mid and len(by_mid) < MAX_MSID_ENTRIES:
            by_mid[mid] = (None if stream == "-" else stream, track)

    in_media = False
    mid: str | None = None
    msid: tuple[str, str] | None = None
    ssrc_msid: tuple[str, str] | None = None
    for line in _lines(sdp):
        content = _content(line)
        if content.startswith("m="):
            if in_media:
                close_section(mid, msid or ssrc_msid)
            in_media, mid, msid, ssrc_msid = True, None, None, None
        elif not in_media:
            continue
        elif content.startswith("a=mid:"):
            value = content[len("a=mid:") :].strip()
            if mid is None and value and len(value) <= MAX_SDP_ID_LENGTH:
                mid = value
        elif content.startswith("a=msid:"):
            if msid is None:
                msid = _msid_pair(content[len("a=msid:") :])
        elif content.startswith("a=ssrc:") and ssrc_msid is None:
            _, _, attribute = content[len("a=ssrc:") :].partition(" ")
            if attribute.startswith("msid:"):
                ssrc_msid = _msid_pair(attribute[len("msid:") :])
    if in_media:
        close_section(mid, msid or ssrc_msid)
    return MsidInfo(by_mid=by_mid, stream_of_track=stream_of_track)


def ice_ufrag(sdp: str) -> str | None:
    """The value of the first ``a=ice-ufrag`` line (session or media level).

    ``None`` when there is none, when it is empty, or when it is longer than
    :data:`MAX_SDP_ID_LENGTH` characters (§7.5.2: treated as absent).
    """
    for line in _lines(sdp):
        content = _content(line)
        if content.startswith("a=ice-ufrag:"):
            value = content[len("a=ice-ufrag:") :].strip()
            return value if value and len(value) <= MAX_SDP_ID_LENGTH else None
    return None


# --- header extensions ------------------------------------------------------------------

# a=extmap:<id>[/<direction>] <uri> [<extension attributes>]
_EXTMAP: Final = re.compile(r"a=extmap:([0-9]{1,9})(?:/[^ \t]*)?[ \t]+([^ \t]+).*", re.ASCII)


class ExtmapRegistry:
    """Keeps RTP header-extension ids stable across re-offers (§7.5.4, W10).

    Browsers reject an offer that changes the id of an extension on a live m-line, while aiortc
    numbers its extensions afresh in every offer. Feed :meth:`learn` every description that was
    applied, exactly as it went over the wire (the remote ones, and the local ones *after*
    :meth:`rewrite`), and pass every outgoing offer through :meth:`rewrite`.

    One uri ↔ id map covers all m-sections (BUNDLE requires one id space). Keep the registry
    across peer-connection rebuilds: the remote side still has the old m-lines.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def learn(self, sdp: str) -> None:
        """Record uri → id for every ``a=extmap`` line with an id in 1…255.

        Within one description the first mapping of a uri counts; a later description's
        mapping replaces the recorded one, and a uri that takes over an id evicts the uri that
        held it, so no two uris ever share an id.
        """
        seen: set[str] = set()
        for line in _lines(sdp):
            match = _EXTMAP.fullmatch(_content(line))
            if match is None:
                continue
            ext_id, uri = int(match.group(1)), match.group(2)
            if not 1 <= ext_id <= MAX_EXTMAP_ID or uri in seen:
                continue
            seen.add(uri)
            for other in [u for u, i in self._ids.items() if i == ext_id and u != uri]:
                del self._ids[other]
            self._ids[uri] = ext_id

    def rewrite(self, sdp: str) -> str:
        """Renumber the ``a=extmap`` lines of an outgoing offer.

        * a uri seen by :meth:`learn` gets its recorded id;
        * any other uri keeps its id if that is in 1…14 and not taken (by a recorded uri or an
          earlier new uri of this offer), else gets the lowest such free id, the same one in
          every m-section; when 1…14 is exhausted its lines are removed;
        * a line that would give an id already used by another uri in the same m-section is
          removed.

        Everything else — direction suffixes, extension attributes, all other lines and line
        endings — is unchanged. Rewriting is idempotent.
        """
        known = self._ids
        taken = set(known.values())
        fresh: dict[str, int] = {}
        section: dict[int, str] = {}
        out: list[str] = []
        for line in _lines(sdp):
            content = _content(line)
            if content.startswith("m="):
                section = {}
            match = _EXTMAP.fullmatch(content)
            if match is None:
                out.append(line)
                continue
            old, uri = int(match.group(1)), match.group(2)
            new = known.get(uri)
            if new is None:
                new = fresh.get(uri)
            if new is None:
                new = self._free_id(old, taken)
                if new is None:
                    continue
                fresh[uri] = new
                taken.add(new)
            if section.setdefault(new, uri) != uri:
                continue
            if new != old:
                line = f"a=extmap:{new}{line[match.end(1) :]}"
            out.append(line)
        return "".join(out)

    @staticmethod
    def _free_id(preferred: int, taken: set[int]) -> int | None:
        if 1 <= preferred <= MAX_FREE_EXTMAP_ID and preferred not in taken:
            return preferred
        return next((i for i in range(1, MAX_FREE_EXTMAP_ID + 1) if i not in taken), None)

    def id_of(self, uri: str) -> int | None:
        """The recorded id of ``uri``, if any."""
        return self._ids.get(uri)

    def clear(self) -> None:
        """Forget everything (a brand-new pairing)."""
        self._ids.clear()

    def __len__(self) -> int:
        return len(self._ids)


# --- payload types (§7.5.4) -------------------------------------------------------------

_MLINE: Final = re.compile(r"m=(audio|video|[^ ]+) ([^ ]+) ([^ ]+)((?: [^ ]+)*)", re.ASCII)
_RTPMAP: Final = re.compile(r"a=rtpmap:([0-9]{1,3}) ([^/ ]+)/([0-9]+)(?:/([0-9]+))?.*", re.ASCII)
_PT_ATTR: Final = re.compile(r"a=(fmtp|rtcp-fb):([0-9]{1,3})( .*)?", re.ASCII)
_APT: Final = re.compile(r"(?<![A-Za-z0-9-])apt=([0-9]{1,3})", re.ASCII)
FIRST_DYNAMIC_PT: Final = 96
LAST_DYNAMIC_PT: Final = 127

_CodecKey = tuple[str, ...]


class _Section:
    """The RTP payload types of one m-section: pt → (encoding, clock, channels), fmtp."""

    __slots__ = ("fmtp", "kind", "pts", "rtpmap")

    def __init__(self, kind: str, pts: list[int]) -> None:
        self.kind = kind
        self.pts = pts
        self.rtpmap: dict[int, tuple[str, str, str]] = {}
        self.fmtp: dict[int, str] = {}

    def key(self, pt: int, depth: int = 0) -> _CodecKey | None:
        """What identifies the codec of ``pt`` across descriptions (``None``: unknown)."""
        entry = self.rtpmap.get(pt)
        if entry is None or depth > 2:
            return None
        name, clock, channels = entry
        fmtp = self.fmtp.get(pt, "")
        if name == "rtx":
            match = _APT.search(fmtp)
            base = self.key(int(match.group(1)), depth + 1) if match else None
            return None if base is None else ("rtx", clock, *base)
        params = ""
        if name == "h264":
            wanted = ("packetization-mode", "profile-level-id")
            found = {}
            for part in fmtp.split(";"):
                name_value = part.strip().split("=", 1)
                if len(name_value) == 2 and name_value[0].lower() in wanted:
                    found[name_value[0].lower()] = name_value[1].lower()
            params = ";".join(f"{k}={found.get(k, '')}" for k in wanted)
        return (self.kind, name, clock, channels or "1", params)


def _sections(sdp: str) -> list[tuple[int, int, _Section | None]]:
    """(first line, end line, RTP section or None) for every m-section of ``sdp``'s lines."""
    lines = [_content(line) for line in _lines(sdp)]
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    out: list[tuple[int, int, _Section | None]] = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        match = _MLINE.fullmatch(lines[start])
        section: _Section | None = None
        if match and match.group(1) in ("audio", "video") and "RTP" in match.group(3):
            pts = [int(p) for p in match.group(4).split() if p.isdigit() and int(p) <= 127]
            section = _Section(match.group(1), pts)
            for line in lines[start + 1 : end]:
                rtpmap = _RTPMAP.fullmatch(line)
                if rtpmap:
                    pt = int(rtpmap.group(1))
                    section.rtpmap[pt] = (
                        rtpmap.group(2).lower(),
                        rtpmap.group(3),
                        rtpmap.group(4) or "",
                    )
                    continue
                attr = _PT_ATTR.fullmatch(line)
                if attr and attr.group(1) == "fmtp":
                    section.fmtp[int(attr.group(2))] = (attr.group(3) or "").strip()
        out.append((start, end, section))
    return out


class PayloadTypeRegistry:
    """Keeps RTP payload types stable across re-offers (§7.5.4).

    aiortc numbers its codecs afresh in every offer (opus is 96), while a browser that offered
    first numbered them its own way (opus 111). A re-offer that changes a live codec's payload
    type is accepted by Chromium, but aiortc's receiver keeps the payload types of the first
    negotiation, so the browser's media would be dropped from then on. Feed :meth:`learn` every
    description that was applied, as it went over the wire, and pass every outgoing offer through
    :meth:`rewrite`. One codec ↔ payload-type map covers all m-sections (BUNDLE needs one), and
    it is kept across peer-connection rebuilds.
    """

    __slots__ = ("_pts",)

    def __init__(self) -> None:
        self._pts: dict[_CodecKey, int] = {}

    def learn(self, sdp: str) -> None:
        """Record codec → payload type for every dynamic payload type of ``sdp``'s RTP
        sections. A later mapping replaces an earlier one; a codec that takes over a payload
        type evicts the codec that held it."""
        for _start, _end, section in _sections(sdp):
            if section is None:
                continue
            for pt in section.pts:
                if not FIRST_DYNAMIC_PT <= pt <= LAST_DYNAMIC_PT:
                    continue
                key = section.key(pt)
                if key is None:
                    continue
                for other in [k for k, v in self._pts.items() if v == pt and k != key]:
                    del self._pts[other]
                self._pts[key] = pt

    def rewrite(self, sdp: str) -> str:
        """Renumber the dynamic payload types of an outgoing offer.

        A codec seen by :meth:`learn` gets its recorded payload type; any other keeps its own
        if no recorded codec holds it, else gets the lowest free one in 96…127. The ``m=``
        format list, ``a=rtpmap``, ``a=fmtp`` (``apt=`` included) and ``a=rtcp-fb`` lines
        follow; everything else is unchanged. Rewriting is idempotent.
        """
        if not self._pts:
            return sdp
        lines = _lines(sdp)
        taken = set(self._pts.values())
        for start, end, section in _sections(sdp):
            if section is None:
                continue
            mapping = self._mapping(section, taken)
            if all(old == new for old, new in mapping.items()):
                continue
            for i in range(start, end):
                lines[i] = _renumber(lines[i], mapping, first=i == start)
        return "".join(lines)

    def _mapping(self, section: _Section, taken: set[int]) -> dict[int, int]:
        mapping: dict[int, int] = {}
        used: set[int] = {pt for pt in section.pts if pt < FIRST_DYNAMIC_PT}
        dynamic = [pt for pt in section.pts if pt >= FIRST_DYNAMIC_PT]
        keys = {pt: section.key(pt) for pt in dynamic}
        ordered = [pt for pt in dynamic if keys[pt] and keys[pt][0] != "rtx"]  # type: ignore[index]
        ordered += [pt for pt in dynamic if pt not in ordered]
        for pt in ordered:
            key = keys[pt]
            new = self._pts.get(key) if key is not None else None
            if new is None or new in used:
                new = pt if pt not in taken and pt not in used else None
            if new is None:
                new = next(
                    (
                        p
                        for p in range(FIRST_DYNAMIC_PT, LAST_DYNAMIC_PT + 1)
                        if p not in taken and p not in used
                    ),
                    pt,
                )
            mapping[pt] = new
            used.add(new)
        return mapping

    def pt_of(self, kind: str, encoding: str, clock: int, channels: int = 1) -> int | None:
        """The recorded payload type of a (non-H.264) codec, if any."""
        return self._pts.get((kind, encoding.lower(), str(clock), str(channels), ""))

    def clear(self) -> None:
        """Forget everything (a brand-new pairing)."""
        self._pts.clear()

    def __len__(self) -> int:
        return len(self._pts)


def _renumber(line: str, mapping: dict[int, int], *, first: bool) -> str:
    content = _content(line)
    ending = line[len(content) :]
    if first:
        match = _MLINE.fullmatch(content)
        if match is None:
            return line
        formats = " ".join(
            str(mapping.get(int(p), int(p))) if p.isdigit() else p for p in match.group(4).split()
        )
        head = content[: match.start(4)]
        return f"{head} {formats}{ending}" if formats else line
    rtpmap = _RTPMAP.fullmatch(content)
    if rtpmap:
        pt = int(rtpmap.group(1))
        return f"a=rtpmap:{mapping.get(pt, pt)}{content[rtpmap.end(1) :]}{ending}"
    attr = _PT_ATTR.fullmatch(content)
    if attr:
        pt = int(attr.group(2))
        rest = attr.group(3) or ""
        if attr.group(1) == "fmtp":
            rest = _APT.sub(lambda m: f"apt={mapping.get(int(m.group(1)), int(m.group(1)))}", rest)
        return f"a={attr.group(1)}:{mapping.get(pt, pt)}{rest}{ending}"
    return line


# --- m-line layout (rebuilds) -------------------------------------------------------------

_MID: Final = re.compile(r"a=mid:([^ \t]+)", re.ASCII)
_BUNDLE: Final = re.compile(r"a=group:BUNDLE(?: .*)?", re.ASCII)


def media_layout(sdp: str) -> list[tuple[str, str | None]]:
    """``(kind, mid)`` of every m-section of ``sdp``, in order (``mid`` None when absent)."""
    lines = [_content(line) for line in _lines(sdp)]
    out: list[tuple[str, str | None]] = []
    for line in lines:
        if line.startswith("m="):
            out.append((line[2:].split(" ", 1)[0], None))
        elif out and out[-1][1] is None:
            match = _MID.fullmatch(line)
            if match and len(match.group(1)) <= MAX_SDP_ID_LENGTH:
                out[-1] = (out[-1][0], match.group(1))
    return out


def arrange_sections(sdp: str, order: list[int], mids: list[str]) -> str:
    """``sdp`` with its m-sections in ``order`` (indexes of the current sections) and the
    section now at position ``i`` carrying ``a=mid:{mids[i]}``; the BUNDLE group lists the new
    mids in the new order. The session part and every other line are unchanged.

    Used for the first offer of a rebuilt connection, whose m-lines must come in the order and
    with the mids the remote side already negotiated (Chromium rejects anything else).
    """
    lines = _lines(sdp)
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if sorted(order) != list(range(len(starts))) or len(mids) != len(starts):
        raise ValueError("order must permute the m-sections and mids name each one")
    head = lines[: starts[0]] if starts else lines
    sections = [
        lines[start : starts[n + 1] if n + 1 < len(starts) else len(lines)]
        for n, start in enumerate(starts)
    ]
    out: list[str] = []
    for line in head:
        content = _content(line)
        if _BUNDLE.fullmatch(content) and mids:
            line = f"a=group:BUNDLE {' '.join(mids)}{line[len(content) :]}"
        out.append(line)
    for position, index in enumerate(order):
        for line in sections[index]:
            content = _content(line)
            if _MID.fullmatch(content):
                line = f"a=mid:{mids[position]}{line[len(content) :]}"
            out.append(line)
    return "".join(out)
