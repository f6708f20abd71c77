"""Decisions of the peer protocol (PROTOCOL §7), free of I/O, clocks and randomness.

The WebRTC adapter (``MeteredPeer`` on aiortc) owns the peer connections and asks this module
what to do:

* :func:`classify_direct` — what an inbound ``direct`` payload is (§7.1, PY rules R5–R8);
* :func:`description_payload`, :func:`end_of_candidates_payload`, :func:`track_meta_payload` —
  the ``send`` payloads, byte-identical to PROTOCOL §10.3 once serialized with
  :func:`metered_realtime.core.frames.dumps`;
* :class:`TrackMetaStore` — received ``__meteredTrackMeta`` per remote peer (§7.7.2, R9, R10);
* :class:`CandidateGate` — inbound ICE flood caps per negotiation generation (§7.3);
* :func:`is_polite`, :func:`offer_decision`, :func:`answer_decision` — glare handling (§7.4,
  §7.5.2, §7.5.3);
* :class:`IceRecovery` — the rebuild ladder after ``connectionState == "failed"`` (§7.6);
* the SDP text helpers of :mod:`metered_realtime.core.sdp`, re-exported.

Time is always a ``now`` argument (seconds, any monotonic origin).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias

from metered_realtime.core.frames import dumps
from metered_realtime.core.sdp import (
    ExtmapRegistry,
    MsidInfo,
    ParsedCandidate,
    filter_candidates,
    ice_ufrag,
    is_loopback_address,
    parse_candidate,
    parse_msid,
)

__all__ = [
    "FIRST_OFFER_HOLD",
    "MAX_CANDIDATE_LENGTH",
    "MAX_CANDIDATES_PER_GENERATION",
    "MAX_TRACK_META_ENTRIES",
    "MAX_TRACK_META_FIELD_LENGTH",
    "OFFER_APPLY",
    "OFFER_DROP",
    "OFFER_IGNORE",
    "OFFER_REBUILD",
    "REBUILD_COOLDOWN",
    "TRACK_META_KEY",
    "CandidateGate",
    "CustomerData",
    "DirectPayload",
    "EndOfCandidates",
    "ExtmapRegistry",
    "IceRecovery",
    "MsidInfo",
    "ParsedCandidate",
    "RebuildNow",
    "RecoveryAction",
    "RecoveryExhausted",
    "RtcCandidate",
    "RtcDescription",
    "TrackMeta",
    "TrackMetaStore",
    "answer_decision",
    "classify_direct",
    "description_payload",
    "end_of_candidates_payload",
    "filter_candidates",
    "first_offer_hold",
    "ice_ufrag",
    "is_loopback_address",
    "is_polite",
    "offer_decision",
    "parse_candidate",
    "parse_msid",
    "track_meta_payload",
]

TRACK_META_KEY: Final = "__meteredTrackMeta"
MAX_TRACK_META_FIELD_LENGTH: Final = 256
"""``streamId`` / ``kind`` of a track-metadata message: 1…256 characters (R8)."""
MAX_TRACK_META_ENTRIES: Final = 512
MAX_CANDIDATES_PER_GENERATION: Final = 200
MAX_CANDIDATE_LENGTH: Final = 1000
REBUILD_COOLDOWN: Final = 2.0


def is_polite(local_id: str, remote_id: str) -> bool:
    """§7.4: the side with the smaller peer id (code-point order) is polite."""
    return local_id < remote_id


# --- classification (§7.1) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtcDescription:
    """An SDP offer or answer (§7.2)."""

    type: str
    """``"offer"`` or ``"answer"``."""
    sdp: str


@dataclass(frozen=True, slots=True)
class RtcCandidate:
    """A trickled remote ICE candidate (§7.3); not validated — see :class:`CandidateGate`."""

    candidate: str
    """The ``candidate`` member as received (``"candidate:…"``); ``""`` when it was absent or
    not a string, which :meth:`CandidateGate.admit` rejects as malformed."""
    sdp_mid: str | None
    """``sdpMid`` if it was a string."""
    sdp_mline_index: int | None
    """``sdpMLineIndex`` if it was an integer (booleans rejected)."""


@dataclass(frozen=True, slots=True)
class EndOfCandidates:
    """``{"type":"rtc-ice","candidate":null}``, a missing ``candidate`` (R5) or
    ``{"candidate": ""}``."""


@dataclass(frozen=True, slots=True)
class TrackMeta:
    """A ``__meteredTrackMeta`` control message (§7.7.2)."""

    track_id: str
    """The sender's track id (as in its msid)."""
    metadata: dict[str, Any] | None
    """The metadata to store, or ``None``: clear the entry (R7)."""
    kind: str | None = None
    stream_id: str | None = None


@dataclass(frozen=True, slots=True)
class CustomerData:
    """Anything else: the application's own payload."""

    data: Any


DirectPayload: TypeAlias = (
    RtcDescription | RtcCandidate | EndOfCandidates | TrackMeta | CustomerData
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _classify_rtc(data: dict[Any, Any]) -> RtcDescription | RtcCandidate | EndOfCandidates | None:
    kind = data.get("type")
    if kind == "rtc-description":
        description = data.get("description")
        if isinstance(description, dict):
            desc_type = description.get("type")
            sdp = description.get("sdp")
            if desc_type in ("offer", "answer") and isinstance(sdp, str):
                return RtcDescription(type=desc_type, sdp=sdp)
        return None
    if kind == "rtc-ice":
        if "candidate" not in data:  # R5
            return EndOfCandidates()
        init = data["candidate"]
        if init is None:
            return EndOfCandidates()
        if not isinstance(init, dict):  # R6: arrays, strings, numbers … are customer data
            return None
        line = init.get("candidate")
        if line == "":
            return EndOfCandidates()
        mid = init.get("sdpMid")
        index = init.get("sdpMLineIndex")
        return RtcCandidate(
            candidate=line if isinstance(line, str) else "",
            sdp_mid=mid if isinstance(mid, str) else None,
            sdp_mline_index=index if _is_int(index) else None,
        )
    return None


def _optional_field(body: dict[Any, Any], key: str) -> tuple[bool, str | None]:
    """(valid, value) of ``streamId`` / ``kind``: absent/null, or a string of 1…256 chars."""
    value = body.get(key)
    if value is None:
        return True, None
    if isinstance(value, str) and 1 <= len(value) <= MAX_TRACK_META_FIELD_LENGTH:
        return True, value
    return False, None


def _classify_track_meta(data: dict[Any, Any]) -> TrackMeta | None:
    body = data.get(TRACK_META_KEY)
    if not isinstance(body, dict):
        return None
    track_id = body.get("trackId")
    if not isinstance(track_id, str) or not track_id:
        return None
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return None
    kind_ok, kind = _optional_field(body, "kind")
    stream_ok, stream_id = _optional_field(body, "streamId")
    if not (kind_ok and stream_ok):  # R8
        return None
    return TrackMeta(track_id=track_id, metadata=metadata, kind=kind, stream_id=stream_id)


def classify_direct(data: Any) -> DirectPayload:
    """Classify the ``data`` of an inbound ``direct`` frame (§7.1, PY rules R5–R8).

    In order, first match wins:

    1. RTC signal — an object with ``type == "rtc-description"`` whose ``description`` is an
       object with ``type`` ``"offer"``/``"answer"`` and a string ``sdp``
       (→ :class:`RtcDescription`); or with ``type == "rtc-ice"`` whose ``candidate`` is
       missing, ``null`` or ``{"candidate": ""}`` (→ :class:`EndOfCandidates`) or another
       object (→ :class:`RtcCandidate`, unvalidated);
    2. track metadata — an object whose ``__meteredTrackMeta`` is an object with a non-empty
       string ``trackId``, ``metadata`` absent/``null`` (clear) or an object, and ``kind`` /
       ``streamId`` absent, ``null`` or strings of 1…256 characters (→ :class:`TrackMeta`);
    3. anything else (→ :class:`CustomerData`).

    Never raises.
    """
    if isinstance(data, dict):
        signal = _classify_rtc(data)
        if signal is not None:
            return signal
        meta = _classify_track_meta(data)
        if meta is not None:
            return meta
    return CustomerData(data)


# --- payloads (§7.2, §7.3, §7.7.2) ------------------------------------------------------


def description_payload(desc: RtcDescription) -> dict[str, Any]:
    """``{"type":"rtc-description","description":{"type":…,"sdp":…}}`` (TV-09)."""
    return {"type": "rtc-description", "description": {"type": desc.type, "sdp": desc.sdp}}


def end_of_candidates_payload() -> dict[str, Any]:
    """``{"type":"rtc-ice","candidate":null}`` (TV-10), sent after every description."""
    return {"type": "rtc-ice", "candidate": None}


def track_meta_payload(
    track_id: str,
    metadata: dict[str, Any] | None,
    kind: str | None = None,
    stream_id: str | None = None,
) -> dict[str, Any]:
    """A ``__meteredTrackMeta`` message in PY member order (TV-12, TV-13).

    Set: ``trackId``, ``metadata``, then ``kind`` and ``streamId`` when not ``None``.
    Clear (``metadata is None``): ``trackId`` only.
    """
    body: dict[str, Any] = {"trackId": track_id}
    if metadata is not None:
        body["metadata"] = metadata
        if kind is not None:
            body["kind"] = kind
        if stream_id is not None:
            body["streamId"] = stream_id
    return {TRACK_META_KEY: body}


# --- track metadata store (§7.7.2) ------------------------------------------------------


class TrackMetaStore:
    """Track metadata received from one remote peer, keyed by the sender's track id.

    At most ``capacity`` entries, the oldest evicted first (updating an entry keeps its place).
    Keep one store per remote peer across connection swaps/rebuilds; :meth:`clear` it when the
    peer is gone.
    """

    __slots__ = ("_entries", "capacity", "max_bytes")

    def __init__(
        self, capacity: int = MAX_TRACK_META_ENTRIES, max_bytes: int | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.max_bytes = max_bytes
        """Metadata whose serialized JSON is longer is dropped (R9); the welcome's
        ``maxMessageSize``."""
        self._entries: dict[str, TrackMeta] = {}

    def _too_big(self, metadata: dict[str, Any]) -> bool:
        if self.max_bytes is None:
            return False
        try:
            return len(dumps(metadata)) > self.max_bytes  # ASCII-escaped: chars == bytes
        except (ValueError, TypeError, RecursionError):
            return True  # not serializable: cannot have come off the wire

    def apply(self, meta: TrackMeta) -> None:
        """Store a set message, or delete the entry for a clear (``metadata is None``).

        A set whose metadata exceeds ``max_bytes`` is ignored (the previous entry stays).
        """
        if meta.metadata is None:
            self._entries.pop(meta.track_id, None)
            return
        if self._too_big(meta.metadata):
            return
        if meta.track_id not in self._entries and len(self._entries) >= self.capacity:
            del self._entries[next(iter(self._entries))]
        self._entries[meta.track_id] = meta

    def get(self, track_id: str) -> TrackMeta | None:
        return self._entries.get(track_id)

    def resolve(
        self,
        *,
        msid_track_id: str | None,
        track_id: str | None,
        stream_id: str | None,
        kind: str | None,
        described_track_ids: Collection[str],
    ) -> dict[str, Any] | None:
        """The metadata for an arriving remote track (§7.7.2, R10), or ``None``.

        1. the entry of ``msid_track_id`` (the msid track id of the track's mid);
        2. the entry of ``track_id`` (the received track's own id);
        3. Firefox fallback: the entries with ``stream_id`` (not ``None``) and ``kind`` equal
           to the given ones whose track id is not in ``described_track_ids`` (the msid track
           ids of the current remote SDP) — only if there are some and all carry equal
           metadata.
        """
        for key in (msid_track_id, track_id):
            if key is not None:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry.metadata
        if stream_id is None:
            return None
        found: list[dict[str, Any]] = []
        for entry in self._entries.values():
            if (
                entry.stream_id == stream_id
                and entry.kind == kind
                and entry.track_id not in described_track_ids
                and entry.metadata is not None
            ):
                if found and entry.metadata != found[0]:
                    return None
                found.append(entry.metadata)
        return found[0] if found else None

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._entries


# --- inbound candidates (§7.3) ----------------------------------------------------------


class CandidateGate:
    """Flood caps on inbound trickled candidates, per negotiation generation (§7.3).

    Call :meth:`reset` whenever a remote description is applied. Candidates that arrive before
    any remote description are the caller's to drop (they are not counted).
    """

    __slots__ = ("count", "max_candidates", "max_length")

    def __init__(
        self,
        max_candidates: int = MAX_CANDIDATES_PER_GENERATION,
        max_length: int = MAX_CANDIDATE_LENGTH,
    ) -> None:
        self.max_candidates = max_candidates
        self.max_length = max_length
        self.count = 0
        """Candidates seen in this generation (admitted or not)."""

    def reset(self) -> None:
        """A remote description was applied: a new generation starts."""
        self.count = 0

    def admit(self, cand: RtcCandidate) -> bool:
        """Count ``cand``; False means drop it silently.

        Dropped: everything beyond ``max_candidates`` in this generation, strings over
        ``max_length`` characters, and malformed candidates (no ``candidate:`` prefix, or not
        parsable by :meth:`parse`). Every candidate counts, malformed ones included.
        """
        if self.count >= self.max_candidates:
            return False
        self.count += 1
        if len(cand.candidate) > self.max_length:
            return False
        return self.parse(cand) is not None

    @staticmethod
    def parse(cand: RtcCandidate) -> ParsedCandidate | None:
        """The candidate's fields, or ``None`` if it is not a ``candidate:…`` line that parses
        (see :func:`metered_realtime.core.sdp.parse_candidate`)."""
        if not cand.candidate.startswith("candidate:"):
            return None
        return parse_candidate(cand.candidate)


# --- offers and answers (§7.5.2, §7.5.3) ------------------------------------------------

OFFER_IGNORE: Final = "ignore"
"""Impolite side in glare: drop the offer (and suppress candidate errors while ignoring)."""
OFFER_APPLY: Final = "apply"
"""Apply the offer and answer."""
OFFER_REBUILD: Final = "rebuild"
"""Rebuild the peer connection, then apply the offer on the new one and answer."""
OFFER_DROP: Final = "drop"
"""A rebuild would be needed but one happened less than the cooldown ago: drop the offer."""


def offer_decision(
    *,
    polite: bool,
    making_offer: bool,
    signaling_state: str,
    ufrag_changed: bool,
    now: float,
    last_rebuild_at: float | None,
    rebuild_cooldown: float = REBUILD_COOLDOWN,
) -> str:
    """What to do with a received offer (§7.5.2, PY column).

    ``collision`` = ``making_offer`` or ``signaling_state != "stable"``. Impolite in a
    collision → :data:`OFFER_IGNORE`; polite in a collision → :data:`OFFER_REBUILD`; no
    collision but the offer's ICE ufrag differs from the last remote one → :data:`OFFER_REBUILD`;
    otherwise :data:`OFFER_APPLY`. A rebuild less than ``rebuild_cooldown`` seconds after the
    last offer-triggered rebuild (``last_rebuild_at``, which the caller records when it
    rebuilds) becomes :data:`OFFER_DROP`.
    """
    collision = making_offer or signaling_state != "stable"
    if collision and not polite:
        return OFFER_IGNORE
    if not (collision or ufrag_changed):
        return OFFER_APPLY
    if last_rebuild_at is not None and now - last_rebuild_at < rebuild_cooldown:
        return OFFER_DROP
    return OFFER_REBUILD


FIRST_OFFER_HOLD = 0.25
"""Seconds an impolite peer gives the polite one to offer first on a fresh connection."""


def first_offer_hold(*, polite: bool, have_remote: bool, forced: bool) -> float:
    """How long to wait for the remote's offer before sending our first one.

    Both sides offer as soon as they have media or a channel (no 2 s polite defer, §11.4),
    which makes glare the rule when both join with something to send. Glare makes the polite
    side roll back, and Chromium rolled back while it had just started gathering sometimes
    never gathers again on that connection (measured: ~1 call in 7 with the official JS SDK
    polite). So the impolite side holds its *first* offer on a fresh connection for up to
    :data:`FIRST_OFFER_HOLD`, and answers instead if the polite side's offer arrives
    meanwhile. The polite side never holds, so "a polite peer with media must not stall"; the
    cost is at most the hold, and only when the polite side has nothing to send. Renegotiations
    (``have_remote``) and forced offers (rebuilds, ICE recovery) never hold.
    """
    if polite or have_remote or forced:
        return 0.0
    return FIRST_OFFER_HOLD


def answer_decision(signaling_state: str) -> bool:
    """Apply a received answer only with a local offer outstanding (§7.5.3)."""
    return signaling_state == "have-local-offer"


# --- ICE recovery ladder (§7.6) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RebuildNow:
    """Tear the peer connection down and build a fresh one now (attempt ``attempt``, 1-based)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class RecoveryExhausted:
    """Every attempt failed: surface ``IceRestartExhaustedError`` once."""

    attempts: int


RecoveryAction: TypeAlias = RebuildNow | RecoveryExhausted


class IceRecovery:
    """The PY rebuild ladder after ``connectionState`` ``"failed"`` (§7.6), for one remote peer.

    Feed it the current connection's state changes and drive it with :meth:`get_timer` /
    :meth:`handle_timer`:

    * ``"failed"`` starts the ladder: attempt 1 is due at once (``DELAYS[0]``);
    * when attempt *n* is made (:class:`RebuildNow`), a ``WATCHDOG`` waits for ``"connected"``;
      its expiry, or another ``"failed"``, schedules attempt *n + 1* ``DELAYS[n]`` later;
    * ``"connected"`` cancels whatever is pending and resets the budget and the latch (a
      scheduled attempt is thereby skipped when the link recovered first);
    * when the watchdog of the last attempt expires (or that attempt's connection fails),
      :class:`RecoveryExhausted` comes out once; after that nothing happens until
      ``"connected"``.

    Other states (``new``, ``connecting``, ``disconnected``, ``closed``) are ignored.
    """

    DELAYS: ClassVar[tuple[float, ...]] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0)
    """Delay before attempt n (``DELAYS[n - 1]``); its length is the attempt budget."""
    WATCHDOG: ClassVar[float] = 15.0
    CONNECT_TIMEOUT: ClassVar[float] = 10.0
    """How long a connection may stay ``connecting`` before it counts as failed."""

    __slots__ = (
        "_attempts",
        "_connect_timeout",
        "_delays",
        "_due",
        "_exhausted",
        "_watchdog",
        "_watchdog_at",
    )

    def __init__(
        self,
        *,
        delays: tuple[float, ...] | None = None,
        watchdog: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        """``delays`` / ``watchdog`` / ``connect_timeout`` override the class constants (e.g.
        for fast tests)."""
        self._delays = self.DELAYS if delays is None else tuple(delays)
        if not self._delays:
            raise ValueError("at least one attempt is needed")
        self._watchdog = self.WATCHDOG if watchdog is None else watchdog
        self._connect_timeout = self.CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self._attempts = 0
        self._due: float | None = None
        """When the next step (an attempt, or the exhaustion report) is due."""
        self._watchdog_at: float | None = None
        self._exhausted = False

    @property
    def attempts(self) -> int:
        """Attempts made since the last ``"connected"``."""
        return self._attempts

    @property
    def active(self) -> bool:
        """An attempt or the exhaustion report is scheduled, or a watchdog is running."""
        return self._due is not None or self._watchdog_at is not None

    @property
    def exhausted(self) -> bool:
        """The give-up latch: set when :class:`RecoveryExhausted` was reported."""
        return self._exhausted

    @property
    def max_attempts(self) -> int:
        return len(self._delays)

    def _schedule_next(self, now: float) -> None:
        self._watchdog_at = None
        if self._attempts >= len(self._delays):
            self._due = now  # report the exhaustion from the next handle_timer
        else:
            self._due = now + self._delays[self._attempts]

    def on_connection_state(self, state: str, now: float) -> None:
        """The current peer connection's ``connectionState`` changed."""
        if state == "connected":
            self._attempts = 0
            self._due = None
            self._watchdog_at = None
            self._exhausted = False
        elif state == "failed" and not self._exhausted and self._due is None:
            self._schedule_next(now)

    def on_checking(self, now: float) -> None:
        """A connection outside the ladder started connecting (ICE checks began).

        Arms a ``CONNECT_TIMEOUT`` watchdog: if ``"connected"`` does not come first, the
        connection counts as failed and attempt 1 follows. ICE agents wait for remote
        candidates indefinitely until end-of-candidates, so a peer whose candidates never
        arrive (e.g. a browser whose gathering stalled after a rollback) would otherwise
        leave the call ``connecting`` forever. Ignored while the ladder is active.
        """
        if not self.active and not self._exhausted:
            self._watchdog_at = now + self._connect_timeout

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next has something to do, or ``None``."""
        if self._due is not None:
            return self._due
        return self._watchdog_at

    def handle_timer(self, now: float) -> list[RecoveryAction]:
        """Run whatever is due at ``now`` (nothing, if called early)."""
        actions: list[RecoveryAction] = []
        if self._watchdog_at is not None and now >= self._watchdog_at:
            self._schedule_next(now)
        if self._due is not None and now >= self._due:
            self._due = None
            if self._attempts >= len(self._delays):
                self._exhausted = True
                actions.append(RecoveryExhausted(self._attempts))
            else:
                self._attempts += 1
                self._watchdog_at = now + self._watchdog
                actions.append(RebuildNow(self._attempts))
        return actions

    def next_action(self, now: float) -> list[RecoveryAction]:
        """Same as :meth:`handle_timer`."""
        return self.handle_timer(now)
