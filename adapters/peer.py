"""``MeteredPeer`` and ``RemotePeer``: WebRTC calls on aiortc, negotiated over the signalling
channel (PROTOCOL §7), with the decisions taken by the pure ``core.negotiation`` module.

Negotiation strategy (PROTOCOL §11.4): both sides offer as soon as they have something to
negotiate — local media or a data channel — so a polite peer with media never waits for an
offer that may not come. Glare is resolved as the official Python SDK does without rollback:
the impolite side ignores the colliding offer, the polite side rebuilds its connection and
answers. A rebuild re-attaches local media and re-binds every local data channel that had not
opened yet, so a channel opened in a ``PeerJoined`` handler opens on both sides whichever side
is polite. Outbound ICE is non-trickle (full SDP, then one end-of-candidates marker per
description); inbound candidates are accepted trickled.

This module runs aiortc on the caller's asyncio loop. Under trio, ``MeteredPeer(...)`` returns a
``bridge.TrioMeteredPeer``: the same machinery on a process-wide asyncio loop thread, reached
through the ``_remote_peer_cls`` / ``_data_channel_cls`` factories below (see ``bridge.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiortc  # noqa: F401 - the webrtc extra: fail at import, with the facade's hint
import anyio

from metered_realtime.adapters.datachannel import DataChannel
from metered_realtime.adapters.events import EventEmitter
from metered_realtime.adapters.peer_events import (
    ConnectionReset,
    Data,
    DataChannelOpened,
    FatalError,
    IceCandidateError,
    Joined,
    Left,
    NegotiationError,
    PeerJoined,
    PeerLeft,
    StreamAdded,
    StreamRemoved,
    Track,
)
from metered_realtime.adapters.relay import TrackRelay
from metered_realtime.adapters.runtime import BackgroundTasks, in_trio_thread
from metered_realtime.adapters.signalling import SignallingClient, TokenProvider
from metered_realtime.core.errors import (
    IceRestartExhaustedError,
    MeteredPeerOversizedError,
    MeteredPeerReplaceTrackError,
    MeteredPeerSendError,
    MeteredPeerStateError,
    MeteredRealtimeError,
    OversizedPayloadError,
    ReconcileTimeoutError,
    ReplaceTrackFailure,
    scrub,
)
from metered_realtime.core.events import (
    Connected,
    Direct,
    Disconnected,
    Message,
    Presence,
    PresencePeer,
    ServerError,
    StateChange,
    TokenProviderError,
)
from metered_realtime.core.frames import dumps
from metered_realtime.core.negotiation import (
    CandidateGate,
    CustomerData,
    EndOfCandidates,
    ExtmapRegistry,
    IceRecovery,
    RebuildNow,
    RecoveryExhausted,
    RtcCandidate,
    RtcDescription,
    TrackMeta,
    TrackMetaStore,
    classify_direct,
    description_payload,
    end_of_candidates_payload,
    filter_candidates,
    first_offer_hold,
    ice_ufrag,
    is_loopback_address,
    is_polite,
    offer_decision,
    parse_msid,
    track_meta_payload,
)
from metered_realtime.core.options import SubscribeOptions
from metered_realtime.core.presence import Roster
from metered_realtime.core.reconnect import (
    PEER_FATAL_CLOSE_CODES,
    ReconnectOptions,
    close_code_name,
)
from metered_realtime.core.sdp import PayloadTypeRegistry, arrange_sections, media_layout
from metered_realtime.core.validation import (
    IceServerConfig,
    channel_problem,
    extract_ice_servers,
    is_reserved_channel,
)
from metered_realtime.media.stream import MediaStream

__all__ = ["MeteredPeer", "RemotePeer"]

MAX_REMOTE_PEERS = 256
FATAL_SERVER_ERRORS = frozenset(
    {
        "account_suspended",
        "channel_not_authorized",
        "action_not_permitted",
        "invalid_token",
        "token_expired",
    }
)
PC_CLOSE_BOUND = 2.0
RECONCILE_GRACE = 10.0
RECONCILE_RESUBSCRIBES = 2


class _Local:
    """A tracked local track."""

    __slots__ = ("metadata", "stream", "track")

    def __init__(
        self, track: Any, stream: MediaStream | None, metadata: dict[str, Any] | None
    ) -> None:
        self.track = track
        self.stream = stream
        self.metadata = metadata


class RemotePeer(EventEmitter):
    """Another member of the channel and the connection to it.

    The object survives signalling reconnects; its ``pc`` does not (re-read it on
    ``StateChange`` to ``"connected"``).
    """

    _data_channel_cls: Callable[..., DataChannel] = DataChannel  # the trio bridge swaps it

    def __init__(self, owner: MeteredPeer, peer_id: str, metadata: dict[str, Any] | None) -> None:
        super().__init__(owner._log)
        self._owner = owner
        self.id = peer_id
        self.metadata = metadata
        self._state = "idle"
        self.polite = is_polite(owner.peer_id or "", peer_id)
        self._spawn = owner._bg.spawn
        self._pc: Any = None
        self._generation = 0
        self._ops: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._negotiate_queued = False
        self._making_offer = False
        self._ignoring_offer = False
        self._last_rebuild: float | None = None
        self._remote_ufrag: str | None = None
        self._have_remote = False
        self._gate = CandidateGate()
        self._meta = TrackMetaStore(max_bytes=owner._max_message_size())
        self._extmap = ExtmapRegistry()
        self._pts = PayloadTypeRegistry()
        self._layout: list[tuple[str, str | None]] = []  # m-lines of the last description
        self._plan: list[tuple[str, str | None]] | None = None  # a rebuilt pc's first offer
        self._recovery = IceRecovery()
        self._recovery_wake = asyncio.Event()
        self._channels: list[DataChannel] = []
        self._senders: dict[str, Any] = {}  # local track id → sender
        self._proxies: dict[str, Any] = {}  # local track id → relay proxy
        self._msid: Any = None
        self._media_streams: dict[str, tuple[MediaStream, set[Any]]] = {}
        self._closed = False
        self._reconnecting = False
        self._renegotiate_pending = False
        self._early: list[RtcCandidate] = []  # trickled before the description they belong to
        self._offer_queued = asyncio.Event()  # a remote offer waits in _ops

    # --- public -------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``idle``, ``connecting``, ``connected``, ``reconnecting`` or ``closed``."""
        return self._state

    @property
    def pc(self) -> Any:
        """The current aiortc ``RTCPeerConnection`` (replaced by rebuilds and reconnects)."""
        return self._pc

    async def send(self, data: Any) -> None:
        """Send ``data`` to this peer over the signalling server."""
        if self._closed:
            raise MeteredPeerSendError("not_joined", "the remote peer has left")
        await self._owner.send_to(self.id, data)

    def create_data_channel(self, label: str, **kwargs: Any) -> DataChannel:
        """Open a data channel to this peer (negotiated in-band); returns the wrapper."""
        if self._closed:
            raise MeteredPeerStateError("invalid_state", "create_data_channel", "closed")
        if not isinstance(label, str):
            raise TypeError("label must be a string")
        raw = self._pc.createDataChannel(label, **kwargs)
        channel = self._data_channel_cls(raw, _spawn=self._owner._bg.spawn, logger=self._owner._log)
        channel._options = (label, kwargs)  # type: ignore[attr-defined]
        self._channels.append(channel)
        self._negotiate()
        return channel

    def __repr__(self) -> str:
        return f"<RemotePeer {self.id!r} {self._state} polite={self.polite}>"

    # --- lifecycle ----------------------------------------------------------------------

    def _start(self) -> None:
        self._pc = self._new_pc()
        self._owner._bg.spawn(self._worker)
        self._owner._bg.spawn(self._recovery_loop)

    def _set_state(self, to: str) -> None:
        if to != self._state and self._state != "closed":
            before, self._state = self._state, to
            self._emit(StateChange(before, to))

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._set_state("closed")
        self._meta.clear()
        for proxy in self._proxies.values():
            proxy.stop()
        self._proxies.clear()
        pc, self._pc = self._pc, None
        self._generation += 1
        if pc is not None:
            with anyio.move_on_after(PC_CLOSE_BOUND):
                await pc.close()
        self._end_streams()

    # --- the connection -----------------------------------------------------------------

    def _new_pc(
        self,
        layout: list[tuple[str, str | None]] | None = None,
        old_mids: dict[str, str] | None = None,
    ) -> Any:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

        servers = [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self._owner._current_ice_servers()
        ]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))  # never None: no public STUN
        self._generation += 1
        generation = self._generation
        self.polite = is_polite(self._owner.peer_id or "", self.id)

        @pc.on("connectionstatechange")
        def _state_changed() -> None:
            if generation == self._generation:
                self._on_pc_state(pc.connectionState)

        @pc.on("track")
        def _track(track: Any) -> None:
            if generation == self._generation:
                self._on_track(pc, track)

        @pc.on("datachannel")
        def _channel(raw: Any) -> None:
            if generation == self._generation:
                channel = self._data_channel_cls(
                    raw, _spawn=self._owner._bg.spawn, logger=self._owner._log
                )
                self._emit(DataChannelOpened(channel))

        placed: set[str] = set()
        if layout:
            # The remote side keeps the m-lines already negotiated: recreate them in order
            # (our track where it was, receive-only where the remote alone sent) and let the
            # first offer follow that plan (_follow_plan).
            track_at = {mid: track_id for track_id, mid in (old_mids or {}).items()}
            for kind, mid in layout:
                if kind in ("audio", "video"):
                    local = self._owner._locals.get(track_at.get(mid or "", ""))
                    if local is not None and local.track.kind == kind:
                        self._attach(pc, local)
                        placed.add(local.track.id)
                    else:
                        pc.addTransceiver(kind, direction="recvonly")
                elif kind == "application" and pc.sctp is None:
                    # aiortc has no public way to get the data m-line without opening a channel
                    cast(Any, pc)._RTCPeerConnection__createSctpTransport()
            self._plan = list(layout)
        else:
            self._plan = None
        for local in self._owner._locals.values():
            if local.track.id not in placed:
                self._attach(pc, local)
        self._have_remote = False
        self._remote_ufrag = None
        self._msid = None
        self._gate.reset()
        return pc

    def _attach(self, pc: Any, local: _Local) -> None:
        proxy = self._owner._relay().subscribe(local.track)
        sender = pc.addTrack(proxy)
        sender._track_id = local.track.id  # msid carries the original track's id
        if local.stream is not None:
            sender._stream_id = local.stream.id
        self._senders[local.track.id] = sender
        self._proxies[local.track.id] = proxy

    def _detach(self, track_id: str) -> None:
        sender = self._senders.pop(track_id, None)
        proxy = self._proxies.pop(track_id, None)
        if sender is not None:
            sender.replaceTrack(None)
            for transceiver in self._pc.getTransceivers():
                if transceiver.sender is sender:
                    transceiver.direction = "recvonly"
        if proxy is not None:
            proxy.stop()

    def _rebuild(self, reason: str, *, keep_layout: bool = False) -> None:
        """Replace the connection inside this RemotePeer (rebuild, reconnect swap).

        ``keep_layout``: we will offer from the new connection to a remote that keeps its own
        (ICE recovery, signalling reconnect), so the new one recreates the negotiated m-lines.
        """
        self._owner._log.info("rebuilding peer connection", {"peer": self.id, "reason": reason})
        old = self._pc
        old_mids: dict[str, str] = {}
        if keep_layout and old is not None:
            for transceiver in old.getTransceivers():
                for track_id, sender in self._senders.items():
                    if transceiver.sender is sender and transceiver.mid is not None:
                        old_mids[track_id] = transceiver.mid
        for proxy in self._proxies.values():
            proxy.stop()
        self._proxies.clear()
        self._senders.clear()
        self._suppress_stream_removals()
        self._pc = self._new_pc(self._layout if keep_layout else None, old_mids)
        pending = [
            c for c in self._channels if c.ready_state == "connecting" and not c._closed_by_user
        ]
        for channel in pending:  # never opened: re-bind to the new connection (open ones die)
            label, kwargs = channel._options  # type: ignore[attr-defined]
            channel._bind(self._pc.createDataChannel(label, **kwargs))
        self._channels = pending
        if old is not None:
            self._owner._bg.spawn(_close_pc, old)
        self._emit(ConnectionReset())
        if self._state == "connected":  # the media stops until the new one connects
            self._set_state("reconnecting")

    def _on_pc_state(self, state: str) -> None:
        now = _now()
        if state in ("new", "connecting"):
            if self._state == "idle":
                self._set_state("connecting")
            if state == "connecting":
                self._recovery.on_checking(now)
                self._recovery_wake.set()
        elif state == "connected":
            self._reconnecting = False
            self._set_state("connected")
            self._recovery.on_connection_state("connected", now)
        elif state in ("disconnected", "failed", "closed"):
            # aiortc reports a transport lost under it (consent expiry) as "closed": for the
            # current connection, which we did not close, that is a failure too.
            if self._state in ("connected", "connecting"):
                self._set_state("reconnecting")
            if state in ("failed", "closed"):
                self._recovery.on_connection_state("failed", now)
                self._recovery_wake.set()

    async def _recovery_loop(self) -> None:
        while not self._closed:
            at = self._recovery.get_timer()
            wake = self._recovery_wake = asyncio.Event()
            delay = 3600.0 if at is None else max(0.0, at - _now())
            with anyio.move_on_after(delay):
                await wake.wait()
            for action in self._recovery.handle_timer(_now()):
                if isinstance(action, RebuildNow):
                    self._ops.put_nowait(("rebuild", f"ice recovery attempt {action.attempt}"))
                elif isinstance(action, RecoveryExhausted):
                    self._emit(
                        NegotiationError(
                            IceRestartExhaustedError(f"gave up after {action.attempts} attempts")
                        )
                    )

    # --- negotiation (one operation at a time) ------------------------------------------

    def _negotiate(self) -> None:
        """Ask for an offer (coalesced with one already queued)."""
        if not self._negotiate_queued and not self._closed:
            self._negotiate_queued = True
            self._ops.put_nowait(("negotiate", None))

    def _signal(self, payload: Any) -> None:
        if isinstance(payload, RtcDescription) and payload.type == "offer":
            self._offer_queued.set()
        self._ops.put_nowait(("signal", payload))

    async def _worker(self) -> None:
        while not self._closed:
            op, arg = await self._ops.get()
            try:
                if op == "negotiate":
                    self._negotiate_queued = False
                    await self._offer()
                elif op == "signal":
                    await self._on_signal(arg)
                elif op == "rebuild":
                    self._rebuild(arg, keep_layout=True)
                    await self._offer(force=True)
            except Exception as exc:  # one failed step never stops the peer
                if self._closed:
                    return
                self._owner._log.warning(
                    "negotiation step failed",
                    {"peer": self.id, "step": op, "error": scrub(repr(exc))},
                )
                self._emit(NegotiationError(_scrubbed(exc)))

    def _has_something(self) -> bool:
        return bool(self._senders) or bool(self._channels)

    def _unsatisfied(self) -> bool:
        """A local track not yet in the negotiated SDP, or a channel with no SCTP transport."""
        pc = self._pc
        for transceiver in pc.getTransceivers():
            if transceiver.sender in self._senders.values() and transceiver.mid is None:
                return True
        # createDataChannel makes the SCTP transport at once; it has a mid once negotiated
        return bool(self._channels) and (pc.sctp is None or pc.sctp.mid is None)

    async def _offer(self, *, force: bool = False) -> None:
        pc = self._pc
        if pc is None or not (self._has_something() or self._plan):
            return  # nothing to negotiate: a rebuilt connection waits for media or a channel
        if pc.signalingState != "stable":
            return  # the answer's follow-up check re-queues us
        if (
            not force
            and self._have_remote
            and not self._unsatisfied()
            and not self._renegotiate_pending
        ):
            return
        hold = first_offer_hold(polite=self.polite, have_remote=self._have_remote, forced=force)
        if hold and not self._offer_queued.is_set():
            with anyio.move_on_after(hold):
                await self._offer_queued.wait()
        if hold and self._offer_queued.is_set():
            return  # answer theirs instead; the answer's follow-up re-offers if still needed
        self._renegotiate_pending = False
        self._making_offer = True
        try:
            from aiortc import RTCSessionDescription

            offer = await pc.createOffer()
            sdp = self._pts.rewrite(self._extmap.rewrite(offer.sdp))
            if self._plan is not None:
                sdp = self._follow_plan(pc, sdp, self._plan)
                self._plan = None
            self._owner._restrict_gathering(pc)
            await pc.setLocalDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if pc is not self._pc or pc.signalingState != "have-local-offer":
                return  # replaced or overtaken meanwhile
            local = pc.localDescription
            self._learn(local.sdp)
            await self._send_description(RtcDescription("offer", local.sdp))
        finally:
            self._making_offer = False

    async def _send_description(self, desc: RtcDescription) -> None:
        ack = self._owner._signal_ordered(self.id, description_payload(desc))
        try:
            await ack
        except MeteredRealtimeError as exc:
            self._emit(NegotiationError(exc))
            return
        with contextlib.suppress(MeteredRealtimeError):
            await self._owner._signal_ordered(self.id, end_of_candidates_payload())

    async def _on_signal(self, signal: Any) -> None:
        if isinstance(signal, RtcDescription):
            await self._on_description(signal)
        elif isinstance(signal, RtcCandidate):
            await self._on_candidate(signal)
        elif isinstance(signal, EndOfCandidates) and self._have_remote and self._pc is not None:
            with contextlib.suppress(Exception):
                await self._pc.addIceCandidate(None)

    async def _on_description(self, desc: RtcDescription) -> None:
        from aiortc import RTCSessionDescription

        if desc.type == "offer":
            self._offer_queued.clear()
        sdp = desc.sdp
        if self._owner.loopback_only:
            sdp = filter_candidates(sdp, is_loopback_address)
        if desc.type == "answer":
            if self._pc.signalingState != "have-local-offer":
                return  # stale answer from a torn-down generation
            self._msid = parse_msid(desc.sdp)  # before applying: "track" fires while applying
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            self._applied_remote(desc.sdp)
            await self._flush_early()
            self._follow_up()
            return
        ufrag = ice_ufrag(desc.sdp)
        decision = offer_decision(
            polite=self.polite,
            making_offer=self._making_offer,
            signaling_state=self._pc.signalingState,
            ufrag_changed=self._have_remote and ufrag is not None and ufrag != self._remote_ufrag,
            now=_now(),
            last_rebuild_at=self._last_rebuild,
        )
        self._ignoring_offer = decision == "ignore"
        if decision in ("ignore", "drop"):
            return
        if decision == "rebuild":
            self._last_rebuild = _now()
            self._rebuild(
                "offer collision" if self._pc.signalingState != "stable" else "remote restarted"
            )
        pc = self._pc
        self._msid = parse_msid(desc.sdp)  # before applying: "track" fires while applying
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._applied_remote(desc.sdp)
        await self._flush_early()
        answer = await pc.createAnswer()
        self._owner._restrict_gathering(pc)
        await pc.setLocalDescription(answer)
        if pc is not self._pc:
            return
        self._learn(pc.localDescription.sdp)
        await self._send_description(RtcDescription("answer", pc.localDescription.sdp))
        self._follow_up()

    def _applied_remote(self, sdp: str) -> None:
        self._have_remote = True
        self._remote_ufrag = ice_ufrag(sdp)
        self._gate.reset()
        self._learn(sdp)
        self._msid = parse_msid(sdp)

    def _learn(self, sdp: str) -> None:
        """An applied description: its extension ids, payload types and m-line layout."""
        self._extmap.learn(sdp)
        self._pts.learn(sdp)
        layout = media_layout(sdp)
        if len(layout) >= len(self._layout):
            self._layout = layout

    def _follow_plan(self, pc: Any, sdp: str, plan: list[tuple[str, str | None]]) -> str:
        """Put a rebuilt connection's first offer in the m-line order and mids of ``plan``.

        aiortc writes every audio/video section first, in transceiver order, and the data
        section last; the remote side (Chromium) only accepts the m-lines it already has, in
        the same order and with the same mids. The transceivers were created in ``plan``'s
        order, so the k-th generated media section belongs to the k-th media line of the plan.
        aiortc's own m-line indexes are moved along, so applying the offer assigns the mids.
        """
        generated = media_layout(sdp)
        media_at = [i for i, (kind, _) in enumerate(generated) if kind != "application"]
        app_at = [i for i, (kind, _) in enumerate(generated) if kind == "application"]
        order: list[int] = []
        mids: list[str] = []
        for kind, mid in plan:
            source = app_at if kind == "application" else media_at
            if not source or mid is None:
                return sdp  # cannot follow it: offer as generated
            order.append(source.pop(0))
            mids.append(mid)
        taken = set(mids)
        for index in media_at + app_at:  # lines the plan does not have: after it, fresh mids
            order.append(index)
            n = 0
            while str(n) in taken:
                n += 1
            taken.add(str(n))
            mids.append(str(n))
        if order == list(range(len(generated))) and mids == [m for _, m in generated]:
            return sdp
        new_index = {old: new for new, old in enumerate(order)}
        for transceiver in pc.getTransceivers():
            if transceiver._get_mline_index() is not None:
                transceiver._set_mline_index(new_index[transceiver._get_mline_index()])
        sctp_index = pc._RTCPeerConnection__sctp_mline_index
        if sctp_index is not None:
            pc._RTCPeerConnection__sctp_mline_index = new_index[sctp_index]
        return arrange_sections(sdp, order, mids)

    def _follow_up(self) -> None:
        if self._pc is not None and self._has_something() and self._unsatisfied():
            self._negotiate()

    async def _flush_early(self) -> None:
        early, self._early = self._early, []
        for cand in early:
            await self._on_candidate(cand)

    async def _on_candidate(self, cand: RtcCandidate) -> None:
        if self._pc is None:
            return
        if not self._have_remote:
            # A trickling (JS) peer's candidates can overtake its description (P27): keep
            # them (bounded) until a remote description is applied.
            if len(self._early) < 200:
                self._early.append(cand)
            return
        if not self._gate.admit(cand):
            return
        from aiortc.sdp import candidate_from_sdp

        line = cand.candidate.split(":", 1)[1] if cand.candidate.startswith("candidate:") else ""
        try:
            candidate = candidate_from_sdp(line)
        except Exception:
            return  # malformed: dropped silently (counted by the gate)
        match = _UFRAG.search(cand.candidate)
        if match and self._remote_ufrag and match.group(1) != self._remote_ufrag:
            return  # for another ICE generation (e.g. of an offer we ignored in glare)
        if self._owner.loopback_only and not is_loopback_address(candidate.ip):
            return
        candidate.sdpMid = cand.sdp_mid
        candidate.sdpMLineIndex = cand.sdp_mline_index
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        try:
            await self._pc.addIceCandidate(candidate)
        except Exception as exc:
            if not self._ignoring_offer:
                self._emit(IceCandidateError(_scrubbed(exc)))

    # --- inbound media ------------------------------------------------------------------

    def _on_track(self, pc: Any, track: Any) -> None:
        mid = None
        for transceiver in pc.getTransceivers():
            if transceiver.receiver.track is track:
                mid = transceiver.mid
        stream_id: str | None = None
        msid_track: str | None = None
        if self._msid is not None and mid is not None and mid in self._msid.by_mid:
            stream_id, msid_track = self._msid.by_mid[mid]
        metadata = self._meta.resolve(
            msid_track_id=msid_track,
            track_id=track.id,
            stream_id=stream_id,
            kind=track.kind,
            described_track_ids=set() if self._msid is None else self._msid.track_ids,
        )
        streams: tuple[MediaStream, ...] = ()
        if stream_id is not None:
            entry = self._media_streams.get(stream_id)
            fresh = entry is None
            if entry is None:
                entry = self._media_streams[stream_id] = (MediaStream(id=stream_id), set())
            stream, live = entry
            stream.add_track(track)
            live.add(track)
            streams = (stream,)
            if fresh:
                self._emit(StreamAdded(stream, metadata))
            generation = self._generation

            def _ended() -> None:
                # Looked at on the next loop turn: a track that ends because its connection
                # failed (aiortc ends every receiver) is not a removed stream — recovery
                # rebuilds the connection and StreamAdded fires again from the new one.
                asyncio.get_running_loop().call_soon(_removed)

            def _removed() -> None:
                pc = self._pc
                if generation != self._generation or pc is None:
                    return
                if pc.connectionState in ("failed", "closed") or self._state == "reconnecting":
                    return
                live.discard(track)
                if not live and self._media_streams.get(stream_id or "") is entry:
                    del self._media_streams[stream_id or ""]
                    self._emit(StreamRemoved(stream))

            track.add_listener("ended", _ended)

        self._emit(Track(track, streams, metadata))

    def _suppress_stream_removals(self) -> None:
        self._media_streams.clear()  # new connection: StreamAdded fires again, no StreamRemoved

    def _end_streams(self) -> None:
        streams, self._media_streams = self._media_streams, {}
        for stream, _ in streams.values():
            self._emit(StreamRemoved(stream))


def _now() -> float:
    """The asyncio loop's clock (also the signalling core's): usable from aiortc callbacks,
    where anyio cannot tell which event loop is running."""
    return asyncio.get_running_loop().time()


_UFRAG = re.compile(r" ufrag (\S+)")


def _scrubbed(exc: BaseException) -> BaseException:
    text = str(exc)
    clean = scrub(text)
    if clean == text:
        return exc
    return MeteredRealtimeError(clean, code="negotiation_failed")


async def _close_pc(pc: Any) -> None:
    with anyio.move_on_after(PC_CLOSE_BOUND):
        await pc.close()


async def _gather_loopback(self: Any) -> None:
    """aioice ``Connection.gather_candidates`` restricted to a 127.0.0.1 host candidate.

    Datagrams from any other address are dropped before aioice sees them: a local browser
    also sends checks from its other interfaces, and answering one (a peer-reflexive
    candidate) would send packets off the loopback interface.
    """
    if not self._local_candidates_start:
        self._local_candidates_start = True
        for component in self._components:
            self._local_candidates += await self.get_component_candidates(
                component=component, addresses=["127.0.0.1"]
            )
        for protocol in self._protocols:
            _loopback_datagrams_only(protocol)
        self._local_candidates_end = True


def _loopback_datagrams_only(protocol: Any) -> None:
    receive = protocol.datagram_received
    verdicts: dict[Any, bool] = {"127.0.0.1": True}  # per source host: parsed once

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        host = addr[0]
        ok = verdicts.get(host)
        if ok is None:
            if len(verdicts) > 64:  # bounded: a flood of sources only costs the parse again
                verdicts.clear()
            ok = verdicts[host] = is_loopback_address(str(host))
        if ok:
            receive(data, addr)

    protocol.datagram_received = datagram_received


class MeteredPeer(EventEmitter):
    """A WebRTC peer in a channel: presence-driven connections to every other member.

    Keywords as ``SignallingClient``, plus ``ice_servers`` (an explicit list overrides the
    welcome's; ``[]`` means none) and ``loopback_only`` (gather only 127.0.0.1 candidates and
    ignore every other remote candidate: for tests and headless demos).

    Under trio this returns a ``TrioMeteredPeer`` (same API; aiortc runs on a bridge thread).
    """

    _remote_peer_cls: Callable[..., RemotePeer] = RemotePeer  # the trio bridge swaps it

    def __new__(cls, *args: Any, **kwargs: Any) -> MeteredPeer:
        if cls is MeteredPeer and in_trio_thread():
            from metered_realtime.adapters.bridge import TrioMeteredPeer

            return super().__new__(TrioMeteredPeer)
        return super().__new__(cls)

    RECONCILE_DEADLINE = 10.0
    """Seconds to wait for the roster snapshot after a signalling reconnect (PROTOCOL §5.4)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        token_provider: TokenProvider | None = None,
        url: str | None = None,
        token_provider_timeout: float = 10.0,
        logger: object = None,
        reconnect: ReconnectOptions | bool = True,
        inactivity_timeout: float = 60.0,
        auto_resubscribe: bool = True,
        ice_servers: list[IceServerConfig | dict[str, Any]] | None = None,
        loopback_only: bool = False,
    ) -> None:
        super().__init__(logger)
        self._client = SignallingClient(
            api_key=api_key,
            token_provider=token_provider,
            url=url,
            token_provider_timeout=token_provider_timeout,
            logger=self._log,
            reconnect=reconnect,
            inactivity_timeout=inactivity_timeout,
            auto_resubscribe=auto_resubscribe,
        )
        self._explicit_ice = None if ice_servers is None else _ice_list(ice_servers)
        self._welcome_ice: tuple[IceServerConfig, ...] = ()
        self.loopback_only = bool(loopback_only)
        self._bg = BackgroundTasks("MeteredPeer", self._log)
        self._spawn = self._bg.spawn
        self._state = "idle"
        self._channel: str | None = None
        self._include_meta = False
        self._peers: dict[str, RemotePeer] = {}
        self._locals: dict[str, _Local] = {}
        self._roster: Roster | None = None
        self._reconcile_pending = False
        self._reconcile_deadline: float | None = None
        self._reconcile_budget = RECONCILE_RESUBSCRIBES
        self._reconcile_wake = asyncio.Event()
        self._departing: dict[str, float] = {}
        self._departing_wake = asyncio.Event()
        self._relay_obj: TrackRelay | None = None
        client = self._client
        client.on(Connected, self._on_connected)
        client.on(Disconnected, self._on_disconnected)
        client.on(Presence, self._on_presence)
        client.on(Direct, self._on_direct)
        client.on(Message, self._on_message)
        client.on(ServerError, self._on_server_error)
        client.on(TokenProviderError, lambda ev: self._emit(FatalError(ev.err)))

    # --- properties ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``idle``, ``joining``, ``joined``, ``reconnecting``, ``leaving`` or ``closed``."""
        return self._state

    @property
    def peer_id(self) -> str | None:
        """This peer's id (changes on reconnect with publishable keys)."""
        return self._client.peer_id

    @property
    def channel(self) -> str | None:
        """The joined channel."""
        return self._channel

    @property
    def remote_peers(self) -> list[RemotePeer]:
        """A snapshot of the known remote peers."""
        return list(self._peers.values())

    # --- lifecycle ----------------------------------------------------------------------

    async def join(self, channel: str, *, include_sender_metadata: bool = False) -> None:
        """Connect if needed, subscribe to ``channel``; peers arrive as ``PeerJoined``."""
        if self._state != "idle":
            raise MeteredPeerStateError("invalid_state", "join", self._state)
        problem = channel_problem(channel)
        if problem:
            raise MeteredPeerSendError("invalid_args", problem)
        if is_reserved_channel(channel):
            raise MeteredPeerSendError("reserved_channel", "channel uses a reserved prefix")
        if in_trio_thread():  # only a peer built outside the trio run gets here under trio
            raise MeteredRealtimeError(
                "this MeteredPeer was created outside trio; create it inside the trio run "
                "(it then runs aiortc on a bridge thread)",
                code="unsupported_backend",
            )
        self._set_state("joining")
        try:
            await self._bg.start()
            self._bg.spawn(self._departures)
            self._bg.spawn(self._reconcile_watch)
            if self._client.state in ("idle", "closed"):
                await self._client.connect()
            self._channel = channel
            self._include_meta = bool(include_sender_metadata)
            self._roster = Roster(channel)
            await self._client.subscribe(channel, SubscribeOptions(self._include_meta))
        except BaseException:
            self._channel = None
            self._roster = None
            if self._state == "joining":
                self._set_state("idle")
            raise
        if self._state == "joining":
            self._set_state("joined")
            self._emit(Joined(self.peer_id or "", channel))

    def joined(
        self, channel: str, *, include_sender_metadata: bool = False
    ) -> contextlib.AbstractAsyncContextManager[MeteredPeer]:
        """``async with peer.joined("room") as peer:`` joins on enter and closes on exit."""

        @contextlib.asynccontextmanager
        async def manager() -> AsyncIterator[MeteredPeer]:
            try:
                await self.join(channel, include_sender_metadata=include_sender_metadata)
                yield self
            finally:
                await self.close()

        return manager()

    async def close(self, reason: str | None = None) -> None:
        """Leave: every remote peer is closed (``PeerLeft``), the socket closes, ``Left``."""
        if self._state in ("leaving", "closed"):
            return
        if self._state == "idle":
            self._set_state("closed")
            await self._client.close()
            await self._bg.stop()
            return
        self._set_state("leaving")
        await self._teardown_peers()
        self._locals.clear()
        if self._relay_obj is not None:
            self._relay_obj.close()  # stop reading the local sources: the caller owns them
            self._relay_obj = None
        await self._client.close()
        await self._bg.stop()
        peer_id, channel = self._client.peer_id, self._channel
        self._set_state("closed")
        self._emit(Left(peer_id, channel, reason))
        self._end_streams()

    async def __aenter__(self) -> MeteredPeer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- sending ------------------------------------------------------------------------

    async def send(self, data: Any) -> None:
        """Broadcast ``data`` to the channel (server-routed)."""
        if self._state != "joined" or self._channel is None:
            raise MeteredPeerSendError("not_joined", "send() needs a joined peer")
        try:
            await self._client.publish(self._channel, data)
        except OversizedPayloadError as exc:
            raise MeteredPeerOversizedError(exc.size, exc.cap) from None

    async def send_to(self, peer_id: str, data: Any) -> None:
        """Send ``data`` to one peer (server-routed)."""
        if self._state != "joined":
            raise MeteredPeerSendError("not_joined", "send_to() needs a joined peer")
        if not isinstance(peer_id, str) or not peer_id:
            raise MeteredPeerSendError("invalid_args", "peer_id must be a non-empty string")
        if peer_id == self.peer_id:
            raise MeteredPeerSendError("self_send", "cannot send to yourself")
        if isinstance(data, dict) and "__meteredTrackMeta" in data:
            self._log.warning("send_to payload uses the reserved key __meteredTrackMeta", {})
        try:
            await self._client.send(peer_id, data)
        except OversizedPayloadError as exc:
            raise MeteredPeerOversizedError(exc.size, exc.cap) from None

    # --- local media --------------------------------------------------------------------

    def add_track(
        self, track: Any, stream: MediaStream | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        """Send ``track`` to every peer (now and later ones), optionally in ``stream``."""
        self._check_not_closing("add_track")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError("metadata must be a dict or None")
        existing = self._locals.get(track.id)
        if existing is not None:
            if existing.stream is stream:
                return
            raise MeteredPeerStateError("track_already_attached", "add_track", self._state)
        if metadata is not None:
            payload = track_meta_payload(
                track.id, metadata, track.kind, stream.id if stream else None
            )
            size = len(dumps(payload))
            if size > self._max_message_size():
                raise MeteredPeerOversizedError(size, self._max_message_size())
        local = self._locals[track.id] = _Local(track, stream, metadata)
        if stream is not None and track not in stream.get_tracks():
            stream.add_track(track)
        if self._state == "joined":
            for remote in self._peers.values():
                self._announce(remote, local)
                remote._attach(remote._pc, local)
                remote._renegotiate_pending = True
                remote._negotiate()

    def add_stream(self, stream: MediaStream, metadata: dict[str, Any] | None = None) -> None:
        """``add_track`` for every track of ``stream``."""
        for track in stream.get_tracks():
            self.add_track(track, stream, metadata)

    def remove_track(self, track: Any) -> None:
        """Stop sending ``track`` to every peer."""
        self._check_not_closing("remove_track")
        local = self._locals.pop(track.id, None)
        if local is None:
            return
        for remote in self._peers.values():
            if local.metadata is not None:
                self._fire(remote.id, track_meta_payload(track.id, None))
            remote._detach(track.id)
            remote._renegotiate_pending = True
            remote._negotiate()

    def remove_stream(self, stream: MediaStream) -> None:
        """``remove_track`` for every track of ``stream``."""
        for track in stream.get_tracks():
            self.remove_track(track)

    async def replace_track(self, old_track: Any, new_track: Any | None) -> None:
        """Swap ``old_track`` for ``new_track`` on every peer without renegotiating;
        ``None`` mutes."""
        if self._state in ("reconnecting", "leaving", "closed"):
            raise MeteredPeerStateError("invalid_state", "replace_track", self._state)
        local = self._locals.get(old_track.id)
        if local is None:
            raise MeteredPeerSendError("invalid_args", "old_track is not attached")
        succeeded: list[str] = []
        failed: list[ReplaceTrackFailure] = []
        for remote in self._peers.values():
            try:
                sender = remote._senders[old_track.id]
                proxy = remote._proxies.pop(old_track.id, None)
                if proxy is not None:
                    proxy.stop()
                if new_track is None:
                    sender.replaceTrack(None)
                else:
                    new_proxy = self._relay().subscribe(new_track)
                    sender.replaceTrack(new_proxy)
                    sender._track_id = old_track.id
                    remote._proxies[new_track.id] = new_proxy
                    remote._senders[new_track.id] = sender
                del remote._senders[old_track.id]
                if new_track is not None and new_track.id != old_track.id:
                    remote._senders[new_track.id] = sender
                if local.metadata is not None:
                    self._fire(remote.id, track_meta_payload(old_track.id, None))
                    if new_track is not None:
                        stream_id = local.stream.id if local.stream else None
                        self._fire(
                            remote.id,
                            track_meta_payload(
                                new_track.id, local.metadata, new_track.kind, stream_id
                            ),
                        )
                succeeded.append(remote.id)
            except Exception as exc:
                failed.append(ReplaceTrackFailure(remote.id, _scrubbed(exc)))
        if new_track is not None and (len(succeeded) >= len(failed)):
            del self._locals[old_track.id]
            self._locals[new_track.id] = _Local(new_track, local.stream, local.metadata)
        if failed:
            raise MeteredPeerReplaceTrackError(tuple(succeeded), tuple(failed))

    def get_track_metadata(self, track: Any) -> dict[str, Any] | None:
        """The metadata ``track`` was added with."""
        local = self._locals.get(track.id)
        return None if local is None else local.metadata

    def get_stream_metadata(self, stream: MediaStream) -> dict[str, Any] | None:
        """The metadata of the first tracked track of ``stream``."""
        for local in self._locals.values():
            if local.stream is stream and local.metadata is not None:
                return local.metadata
        return None

    # --- signalling events --------------------------------------------------------------

    def _on_connected(self, ev: Connected) -> None:
        if ev.ice_servers is not None:
            self._welcome_ice = ev.ice_servers
        if ev.is_reconnect and self._state == "reconnecting" and not self._peers:
            self._reconcile_pending = False
            self._set_state("joined")
        elif ev.is_reconnect and self._reconcile_pending:
            # §5.4: wait (10 s) for the roster snapshot; resubscribe twice, then give up
            self._reconcile_budget = RECONCILE_RESUBSCRIBES
            self._reconcile_deadline = _now() + self.RECONCILE_DEADLINE
            self._reconcile_wake.set()

    async def _reconcile_watch(self) -> None:
        """Forced resubscribes and ``ReconcileTimeoutError`` when no snapshot arrives."""
        while True:
            wake = self._reconcile_wake = asyncio.Event()
            at = self._reconcile_deadline
            delay = 3600.0 if at is None else max(0.0, at - _now())
            with anyio.move_on_after(delay):
                await wake.wait()
            at = self._reconcile_deadline
            if at is None or _now() < at:
                continue
            self._reconcile_deadline = None
            pending = self._reconcile_pending and self._state == "reconnecting"
            if not pending or self._client.state != "connected" or self._channel is None:
                continue
            if self._reconcile_budget > 0:
                self._reconcile_budget -= 1
                self._reconcile_deadline = _now() + self.RECONCILE_DEADLINE
                self._log.warning(
                    "no roster after reconnect; resubscribing", {"channel": self._channel}
                )
                with contextlib.suppress(MeteredRealtimeError):
                    await self._client.subscribe(
                        self._channel, SubscribeOptions(self._include_meta)
                    )
            else:
                self._emit(
                    FatalError(ReconcileTimeoutError("no presence snapshot after the reconnect"))
                )

    def _on_disconnected(self, ev: Disconnected) -> None:
        self._reconcile_deadline = None  # another drop: the next welcome starts a new one
        if self._state in ("joined", "reconnecting") and ev.will_reconnect:
            self._reconcile_pending = True
            if self._roster is not None:
                self._roster.mark_stale()
            for remote in self._peers.values():
                if remote.state != "idle":
                    remote._reconnecting = True
                    remote._set_state("reconnecting")
            self._set_state("reconnecting")
        elif not ev.will_reconnect and self._state in ("joining", "joined", "reconnecting"):
            if ev.code in PEER_FATAL_CLOSE_CODES:
                self._emit(
                    FatalError(
                        MeteredRealtimeError(
                            f"signalling closed with {ev.code}", code=close_code_name(ev.code)
                        )
                    )
                )
            self._bg.spawn(self._terminate, ev.reason or f"disconnected (code {ev.code})")

    async def _terminate(self, reason: str) -> None:
        self._set_state("leaving")
        await self._teardown_peers()
        peer_id, channel = self._client.peer_id, self._channel
        await self._client.close()
        self._set_state("closed")
        self._emit(Left(peer_id, channel, reason))

    def _on_presence(self, ev: Presence) -> None:
        if ev.channel != self._channel or self._roster is None:
            return
        if self._state not in ("joined", "reconnecting", "joining"):
            return
        if self._state == "joining":
            # the subscribe's ack precedes its snapshot (O3): the join has succeeded
            self._set_state("joined")
            self._emit(Joined(self.peer_id or "", ev.channel))
        change = self._roster.apply(ev.joined, ev.left, self.peer_id)
        now = _now()
        for entry in change.departed:
            remote = self._peers.get(entry.peer_id)
            if remote is None:
                continue
            if change.snapshot:
                # Absent from the first roster after our reconnect: it may simply not have
                # reconnected yet (a restarted server). Keep it for a grace period.
                self._departing[entry.peer_id] = now + RECONCILE_GRACE
                self._departing_wake.set()
            else:
                self._departing.pop(entry.peer_id, None)
                del self._peers[entry.peer_id]
                self._bg.spawn(self._remove_peer, remote)
        for entry in change.survivors:
            remote = self._peers.get(entry.peer_id)
            if remote is not None:
                self._survive(remote, entry)
        for entry in change.arrived:
            remote = self._peers.get(entry.peer_id)
            if remote is not None and self._departing.pop(entry.peer_id, None) is not None:
                self._survive(remote, entry)  # came back within the grace period
            else:
                self._add_peer(entry)
        if change.snapshot and self._reconcile_pending:
            self._reconcile_pending = False
            self._reconcile_deadline = None
            if self._state == "reconnecting":
                self._set_state("joined")

    def _survive(self, remote: RemotePeer, entry: PresencePeer) -> None:
        """A peer known before our signalling drop is still here: keep its RemotePeer."""
        remote.metadata = entry.metadata
        for local in self._locals.values():
            self._announce(remote, local)
        if remote._pc is not None and remote._pc.connectionState == "connected":
            remote._reconnecting = False
            remote._set_state("connected")  # media never stopped: keep the connection
        elif remote.state != "idle":
            remote._ops.put_nowait(("rebuild", "signalling reconnect"))

    async def _departures(self) -> None:
        """Remove peers whose reconcile grace period ran out."""
        while True:
            wake = self._departing_wake = asyncio.Event()
            at = min(self._departing.values(), default=None)
            delay = 3600.0 if at is None else max(0.0, at - _now())
            with anyio.move_on_after(delay):
                await wake.wait()
            now = _now()
            for peer_id, deadline in list(self._departing.items()):
                if deadline <= now:
                    del self._departing[peer_id]
                    remote = self._peers.pop(peer_id, None)
                    if remote is not None:
                        await self._remove_peer(remote)

    def _add_peer(self, entry: PresencePeer) -> None:
        if entry.peer_id in self._peers or entry.peer_id == self.peer_id:
            return
        if len(self._peers) >= MAX_REMOTE_PEERS:
            self._log.warning("too many remote peers; ignoring one", {"peer": entry.peer_id})
            return
        remote = self._remote_peer_cls(self, entry.peer_id, entry.metadata)
        self._peers[entry.peer_id] = remote
        for local in self._locals.values():
            self._announce(remote, local)
        remote._start()
        self._emit(PeerJoined(remote))
        if remote._has_something():
            remote._negotiate()

    async def _remove_peer(self, remote: RemotePeer) -> None:
        await remote._close()
        self._emit(PeerLeft(remote))

    async def _teardown_peers(self) -> None:
        peers, self._peers = list(self._peers.values()), {}
        for remote in peers:
            await self._remove_peer(remote)

    def _on_direct(self, ev: Direct) -> None:
        remote = self._peers.get(ev.sender_peer_id)
        if remote is None:
            return  # not (yet) seen in presence: dropped (§7.1)
        kind = classify_direct(ev.data)
        if isinstance(kind, (RtcDescription, RtcCandidate, EndOfCandidates)):
            remote._signal(kind)
        elif isinstance(kind, TrackMeta):
            remote._meta.apply(kind)
        elif isinstance(kind, CustomerData) and self._state == "joined":
            self._emit(Data(ev.sender_peer_id, ev.data, "direct", ev.sender_metadata))

    def _on_message(self, ev: Message) -> None:
        if ev.channel != self._channel or ev.sender_peer_id == self.peer_id:
            return
        if ev.sender_peer_id not in self._peers:
            return  # only from peers seen in presence (API.md)
        self._emit(Data(ev.sender_peer_id, ev.data, "broadcast", ev.sender_metadata))

    def _on_server_error(self, ev: ServerError) -> None:
        if ev.code in FATAL_SERVER_ERRORS:
            self._emit(FatalError(MeteredRealtimeError(ev.message or ev.code, code=ev.code)))

    # --- internals ----------------------------------------------------------------------

    def _set_state(self, to: str) -> None:
        if to != self._state:
            before, self._state = self._state, to
            self._emit(StateChange(before, to))

    def _check_not_closing(self, method: str) -> None:
        if self._state in ("leaving", "closed"):
            raise MeteredPeerStateError("invalid_state", method, self._state)

    def _max_message_size(self) -> int:
        return self._client.max_message_size

    def _current_ice_servers(self) -> tuple[IceServerConfig, ...]:
        return self._explicit_ice if self._explicit_ice is not None else self._welcome_ice

    def _relay(self) -> TrackRelay:
        if self._relay_obj is None:
            self._relay_obj = TrackRelay()
        return self._relay_obj

    def _restrict_gathering(self, pc: Any) -> None:
        """In loopback-only mode, this connection gathers a 127.0.0.1 host candidate only."""
        if not self.loopback_only:
            return
        transports = getattr(pc, "_RTCPeerConnection__iceTransports", ())
        for transport in transports:
            conn = transport.iceGatherer._connection
            if not getattr(conn, "_metered_loopback", False):
                conn.gather_candidates = types.MethodType(_gather_loopback, conn)
                conn._metered_loopback = True

    def _announce(self, remote: RemotePeer, local: _Local) -> None:
        if local.metadata is not None:
            stream_id = local.stream.id if local.stream else None
            self._fire(
                remote.id,
                track_meta_payload(local.track.id, local.metadata, local.track.kind, stream_id),
            )

    def _signal_ordered(self, to: str, payload: Any) -> Awaitable[None]:
        """Queue a ``send`` now (so wire order follows call order); await it for the ack."""
        client = self._client
        rid = client._core.send(to, payload, _now())
        return client._await(rid)

    def _fire(self, to: str, payload: Any) -> None:
        """A fire-and-forget ``send`` (track metadata): failures are logged only."""
        try:
            ack = self._signal_ordered(to, payload)
        except MeteredRealtimeError as exc:
            self._log.warning("track metadata not sent", {"peer": to, "error": repr(exc)})
            return

        async def wait() -> None:
            try:
                await ack
            except MeteredRealtimeError as exc:
                self._log.warning("track metadata not delivered", {"peer": to, "error": repr(exc)})

        self._bg.spawn(wait)


def _ice_list(servers: list[IceServerConfig | dict[str, Any]]) -> tuple[IceServerConfig, ...]:
    if not isinstance(servers, list):
        raise TypeError("ice_servers must be a list")
    out: list[IceServerConfig] = []
    for server in servers:
        if isinstance(server, IceServerConfig):
            out.append(server)
        elif isinstance(server, dict):
            parsed = extract_ice_servers({"iceServers": [server]})
            if not parsed:
                raise ValueError(
                    "invalid ICE server entry (urls must be stun:/stuns:/turn:/turns:)"
                )
            out.extend(parsed)
        else:
            raise TypeError("ice_servers entries must be IceServerConfig or dicts")
    return tuple(out)
