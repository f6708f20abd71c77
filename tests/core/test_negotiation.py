"""The pure peer-protocol decisions (PROTOCOL §7): core.negotiation and core.sdp."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metered_realtime.core.frames import DirectFrame, SendFrame, decode_server_frame, dumps
from metered_realtime.core.negotiation import (
    FIRST_OFFER_HOLD,
    OFFER_APPLY,
    OFFER_DROP,
    OFFER_IGNORE,
    OFFER_REBUILD,
    CandidateGate,
    CustomerData,
    EndOfCandidates,
    ExtmapRegistry,
    IceRecovery,
    MsidInfo,
    ParsedCandidate,
    RebuildNow,
    RecoveryAction,
    RecoveryExhausted,
    RtcCandidate,
    RtcDescription,
    TrackMeta,
    TrackMetaStore,
    answer_decision,
    classify_direct,
    description_payload,
    end_of_candidates_payload,
    filter_candidates,
    first_offer_hold,
    ice_ufrag,
    is_loopback_address,
    is_polite,
    offer_decision,
    parse_candidate,
    parse_msid,
    track_meta_payload,
)
from tests.helpers import vector

FAST = settings(max_examples=150, deadline=None)


def client_data(vid: str) -> Any:
    return vector(vid)["inputs"]["data"]


def server_data(vid: str) -> Any:
    return json.loads(vector(vid)["text"])["data"]


TV09_SDP: str = client_data("TV-09")["description"]["sdp"]
TV28_SDP: str = server_data("TV-28")["description"]["sdp"]
TV11_LINE: str = client_data("TV-11")["candidate"]["candidate"]
SRFLX_LINE = (  # §7.3
    "candidate:842163049 1 udp 1677729535 198.51.100.7 61002 typ srflx raddr 0.0.0.0 rport 0"
    " generation 0"
)


# --- politeness (§7.4) ------------------------------------------------------------------


def test_politeness_is_code_point_order() -> None:
    assert is_polite("peer-aurora", "peer-basalt")
    assert not is_polite("peer-basalt", "peer-aurora")  # §7.9.6: basalt is impolite
    assert is_polite("Z", "a")
    # code points, not UTF-16 units: U+FFFF < U+10000 (UTF-16 would say D800 < FFFF)
    assert is_polite("\uffff", "\U00010000")
    assert not is_polite("same", "same")


@given(st.text(max_size=8), st.text(max_size=8))
@FAST
def test_exactly_one_side_is_polite(a: str, b: str) -> None:
    if a != b:
        assert is_polite(a, b) != is_polite(b, a)


# --- classification (§7.1, R5–R8) -------------------------------------------------------


def test_classify_client_vectors() -> None:
    assert classify_direct(client_data("TV-09")) == RtcDescription("offer", TV09_SDP)
    assert classify_direct(client_data("TV-10")) == EndOfCandidates()
    assert classify_direct(client_data("TV-11")) == RtcCandidate(TV11_LINE, "0", 0)
    assert classify_direct(client_data("TV-12")) == TrackMeta(
        "trk-mic-1", {"role": "voice", "label": "agent"}, "audio", "stream-main"
    )
    assert classify_direct(client_data("TV-13")) == TrackMeta("trk-mic-1", None)
    assert classify_direct(client_data("TV-07")) == CustomerData({"op": "challenge", "n": 42})


def test_classify_server_vectors() -> None:
    for vid in ("TV-28", "TV-29", "TV-27"):  # through the real decoder
        frame = decode_server_frame(vector(vid)["text"])
        assert isinstance(frame, DirectFrame)
        assert frame.data == server_data(vid)
    assert classify_direct(server_data("TV-28")) == RtcDescription("answer", TV28_SDP)
    assert classify_direct(server_data("TV-29")) == TrackMeta(
        "a1f3c9e2-5b7d-4e08-9c6a-2d4f8b0e1c37", {"role": "screen"}
    )
    assert isinstance(classify_direct(server_data("TV-27")), CustomerData)


CAND = {"candidate": TV11_LINE, "sdpMid": "0", "sdpMLineIndex": 0}


def _desc(**desc: Any) -> dict[str, Any]:
    return {"type": "rtc-description", "description": desc}


def _ice(cand: Any) -> dict[str, Any]:
    return {"type": "rtc-ice", "candidate": cand}


def _meta(**body: Any) -> dict[str, Any]:
    return {"__meteredTrackMeta": body}


CLASSIFY_CASES: list[tuple[str, Any, Any]] = [
    # rtc-description
    ("offer", _desc(type="offer", sdp="v=0\r\n"), RtcDescription("offer", "v=0\r\n")),
    ("answer-empty-sdp", _desc(type="answer", sdp=""), RtcDescription("answer", "")),
    ("extra-members", {**_desc(type="offer", sdp="x"), "z": 1}, RtcDescription("offer", "x")),
    ("pranswer", _desc(type="pranswer", sdp=""), None),
    ("rollback", _desc(type="rollback", sdp=""), None),
    ("type-case", _desc(type="Offer", sdp=""), None),
    ("no-desc-type", _desc(sdp=""), None),
    ("sdp-missing", _desc(type="offer"), None),
    ("sdp-null", _desc(type="offer", sdp=None), None),
    ("sdp-number", _desc(type="offer", sdp=1), None),
    ("desc-string", {"type": "rtc-description", "description": "v=0"}, None),
    ("desc-array", {"type": "rtc-description", "description": ["offer", ""]}, None),
    ("desc-missing", {"type": "rtc-description"}, None),
    ("desc-null", {"type": "rtc-description", "description": None}, None),
    ("unknown-type", {"type": "rtc-offer", "description": {"type": "offer", "sdp": ""}}, None),
    ("no-type", {"description": {"type": "offer", "sdp": ""}}, None),
    # rtc-ice
    ("ice-null", _ice(None), EndOfCandidates()),
    ("ice-missing-R5", {"type": "rtc-ice"}, EndOfCandidates()),
    ("ice-empty-string", _ice({"candidate": ""}), EndOfCandidates()),
    ("ice-empty-with-mid", _ice({"candidate": "", "sdpMid": "0"}), EndOfCandidates()),
    ("ice-array-R6", _ice([CAND]), None),
    ("ice-empty-array-R6", _ice([]), None),
    ("ice-string", _ice(TV11_LINE), None),
    ("ice-number", _ice(0), None),
    ("ice-bool", _ice(False), None),
    ("ice-full", _ice({**CAND, "usernameFragment": "Rw7d"}), RtcCandidate(TV11_LINE, "0", 0)),
    ("ice-bare", _ice({"candidate": TV11_LINE}), RtcCandidate(TV11_LINE, None, None)),
    (
        "ice-nulls",
        _ice({**CAND, "sdpMid": None, "sdpMLineIndex": None}),
        RtcCandidate(TV11_LINE, None, None),
    ),
    ("ice-mid-number", _ice({**CAND, "sdpMid": 0}), RtcCandidate(TV11_LINE, None, 0)),
    ("ice-index-bool", _ice({**CAND, "sdpMLineIndex": True}), RtcCandidate(TV11_LINE, "0", None)),
    ("ice-index-float", _ice({**CAND, "sdpMLineIndex": 0.0}), RtcCandidate(TV11_LINE, "0", None)),
    ("ice-index-str", _ice({**CAND, "sdpMLineIndex": "0"}), RtcCandidate(TV11_LINE, "0", None)),
    ("ice-index-2", _ice({**CAND, "sdpMLineIndex": 2}), RtcCandidate(TV11_LINE, "0", 2)),
    (
        "ice-no-prefix",
        _ice({"candidate": "1 1 udp 1 1.2.3.4 5 typ host"}),
        RtcCandidate("1 1 udp 1 1.2.3.4 5 typ host", None, None),
    ),
    ("ice-candidate-number", _ice({"candidate": 5, "sdpMid": "0"}), RtcCandidate("", "0", None)),
    ("ice-candidate-null", _ice({"candidate": None}), RtcCandidate("", None, None)),
    ("ice-empty-object", _ice({}), RtcCandidate("", None, None)),
    # track metadata
    ("meta-set", _meta(trackId="t", metadata={"a": 1}), TrackMeta("t", {"a": 1})),
    ("meta-empty-metadata", _meta(trackId="t", metadata={}), TrackMeta("t", {})),
    ("meta-clear", _meta(trackId="t"), TrackMeta("t", None)),
    ("meta-null-R7", _meta(trackId="t", metadata=None), TrackMeta("t", None)),
    (
        "meta-kind-stream",
        _meta(trackId="t", metadata={}, kind="video", streamId="s"),
        TrackMeta("t", {}, "video", "s"),
    ),
    (
        "meta-null-fields",
        _meta(trackId="t", metadata={}, kind=None, streamId=None),
        TrackMeta("t", {}),
    ),
    (
        "meta-256",
        _meta(trackId="t", metadata={}, streamId="s" * 256),
        TrackMeta("t", {}, None, "s" * 256),
    ),
    ("meta-clear-with-kind", _meta(trackId="t", kind="audio"), TrackMeta("t", None, "audio")),
    ("meta-stream-257-R8", _meta(trackId="t", metadata={}, streamId="s" * 257), None),
    ("meta-kind-257-R8", _meta(trackId="t", metadata={}, kind="k" * 257), None),
    ("meta-stream-empty-R8", _meta(trackId="t", metadata={}, streamId=""), None),
    ("meta-kind-empty-R8", _meta(trackId="t", metadata={}, kind=""), None),
    ("meta-stream-number-R8", _meta(trackId="t", metadata={}, streamId=7), None),
    ("meta-kind-list-R8", _meta(trackId="t", metadata={}, kind=["audio"]), None),
    ("meta-metadata-list", _meta(trackId="t", metadata=[1]), None),
    ("meta-metadata-string", _meta(trackId="t", metadata="camera"), None),
    ("meta-metadata-false", _meta(trackId="t", metadata=False), None),
    ("meta-trackid-empty", _meta(trackId="", metadata={}), None),
    ("meta-trackid-number", _meta(trackId=1, metadata={}), None),
    ("meta-trackid-missing", _meta(metadata={}), None),
    ("meta-body-null", {"__meteredTrackMeta": None}, None),
    ("meta-body-array", {"__meteredTrackMeta": [{"trackId": "t"}]}, None),
    ("meta-body-string", {"__meteredTrackMeta": "t"}, None),
    # order: first match wins
    (
        "signal-beats-meta",
        {**_desc(type="offer", sdp="s"), **_meta(trackId="t")},
        RtcDescription("offer", "s"),
    ),
    ("failed-signal-then-meta", {**_ice([]), **_meta(trackId="t")}, TrackMeta("t", None)),
    # not objects
    ("null", None, None),
    ("array", [_ice(None)], None),
    ("string", "rtc-ice", None),
    ("number", 42, None),
    ("true", True, None),
    ("empty-object", {}, None),
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in CLASSIFY_CASES], ids=[c[0] for c in CLASSIFY_CASES]
)
def test_classify_rules(data: Any, expected: Any) -> None:
    got = classify_direct(data)
    if expected is None:
        assert got == CustomerData(data)
        assert got.data is data  # handed through untouched
    else:
        assert got == expected


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    ["type", "description", "sdp", "candidate", "sdpMid", "sdpMLineIndex", "__meteredTrackMeta",
     "trackId", "metadata", "kind", "streamId"]
)  # fmt: skip
VALUES = st.sampled_from(["rtc-description", "rtc-ice", "offer", "answer", "", "candidate:x"])
SHAPED = st.recursive(
    JSON | VALUES,
    lambda inner: st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=15,
)


@given(st.one_of(JSON, SHAPED))
@settings(max_examples=400, deadline=None)
def test_classify_never_raises(data: Any) -> None:
    got = classify_direct(data)
    assert isinstance(
        got, RtcDescription | RtcCandidate | EndOfCandidates | TrackMeta | CustomerData
    )
    if isinstance(got, CustomerData):
        assert got.data is data
    else:  # recognised payloads survive the wire
        assert classify_direct(json.loads(dumps(data))) == got


# --- payloads (§10.3) -------------------------------------------------------------------


def _send_bytes(vid: str, data: dict[str, Any]) -> str:
    v = vector(vid)
    return SendFrame(v["inputs"]["to"], data, v["inputs"]["requestId"]).encode()


def test_payloads_match_vectors_byte_for_byte() -> None:
    offer = description_payload(RtcDescription("offer", TV09_SDP))
    assert dumps(offer) == dumps(client_data("TV-09"))
    assert _send_bytes("TV-09", offer) == vector("TV-09")["bytes"]

    assert dumps(end_of_candidates_payload()) == '{"type":"rtc-ice","candidate":null}'
    assert _send_bytes("TV-10", end_of_candidates_payload()) == vector("TV-10")["bytes"]

    meta = track_meta_payload(
        "trk-mic-1", {"role": "voice", "label": "agent"}, "audio", "stream-main"
    )
    assert dumps(meta) == dumps(client_data("TV-12"))
    assert _send_bytes("TV-12", meta) == vector("TV-12")["bytes"]

    clear = track_meta_payload("trk-mic-1", None)
    assert dumps(clear) == '{"__meteredTrackMeta":{"trackId":"trk-mic-1"}}'
    assert _send_bytes("TV-13", clear) == vector("TV-13")["bytes"]


def test_track_meta_payload_shapes() -> None:
    assert dumps(track_meta_payload("t", {"role": "screen"})) == (
        '{"__meteredTrackMeta":{"trackId":"t","metadata":{"role":"screen"}}}'
    )
    assert dumps(track_meta_payload("t", {}, kind="video")) == (
        '{"__meteredTrackMeta":{"trackId":"t","metadata":{},"kind":"video"}}'
    )
    assert dumps(track_meta_payload("t", {}, stream_id="s")) == (
        '{"__meteredTrackMeta":{"trackId":"t","metadata":{},"streamId":"s"}}'
    )
    # a clear carries the track id only, whatever else is passed
    assert track_meta_payload("t", None, "audio", "s") == {"__meteredTrackMeta": {"trackId": "t"}}
    assert dumps(track_meta_payload("t", {"x": "é"})) == (
        '{"__meteredTrackMeta":{"trackId":"t","metadata":{"x":"\\u00e9"}}}'
    )


def test_payloads_round_trip_through_classification() -> None:
    desc = RtcDescription("answer", TV28_SDP)
    assert classify_direct(json.loads(dumps(description_payload(desc)))) == desc
    assert classify_direct(json.loads(dumps(end_of_candidates_payload()))) == EndOfCandidates()
    for meta in (TrackMeta("t", {"a": [1]}, "audio", "s"), TrackMeta("t", None)):
        payload = track_meta_payload(meta.track_id, meta.metadata, meta.kind, meta.stream_id)
        assert classify_direct(json.loads(dumps(payload))) == meta


# --- track metadata store (§7.7.2, R9, R10) ---------------------------------------------


def test_store_set_update_clear() -> None:
    store = TrackMetaStore()
    assert len(store) == 0
    assert store.get("t") is None
    store.apply(TrackMeta("t", {"role": "camera"}, "video", "s"))
    assert store.get("t") == TrackMeta("t", {"role": "camera"}, "video", "s")
    assert "t" in store
    store.apply(TrackMeta("t", {"role": "screen"}))
    assert store.get("t") == TrackMeta("t", {"role": "screen"})
    store.apply(TrackMeta("unknown", None))  # clear of an unknown id: nothing happens
    assert len(store) == 1
    store.apply(TrackMeta("t", None))
    assert store.get("t") is None
    assert len(store) == 0


def test_store_tv29_then_track_arrives() -> None:
    store = TrackMetaStore(max_bytes=65536)
    meta = classify_direct(server_data("TV-29"))
    assert isinstance(meta, TrackMeta)
    store.apply(meta)
    got = store.resolve(
        msid_track_id=None,
        track_id="a1f3c9e2-5b7d-4e08-9c6a-2d4f8b0e1c37",
        stream_id=None,
        kind="video",
        described_track_ids=(),
    )
    assert got == {"role": "screen"}


def test_store_capacity_evicts_oldest() -> None:
    store = TrackMetaStore()
    for i in range(512):
        store.apply(TrackMeta(f"t{i}", {"i": i}))
    assert len(store) == 512
    store.apply(TrackMeta("t512", {"i": 512}))
    assert len(store) == 512
    assert store.get("t0") is None
    assert store.get("t1") is not None
    assert store.get("t512") is not None


def test_store_in_place_update_keeps_position() -> None:
    store = TrackMetaStore(capacity=3)
    for name in ("a", "b", "c"):
        store.apply(TrackMeta(name, {}))
    store.apply(TrackMeta("a", {"v": 2}))  # update: "a" stays the oldest, nothing evicted
    assert len(store) == 3
    store.apply(TrackMeta("d", {}))
    assert store.get("a") is None
    assert [store.get(n) is not None for n in "bcd"] == [True, True, True]
    store.apply(TrackMeta("c", None))  # a clear frees a slot
    store.apply(TrackMeta("e", {}))
    assert [store.get(n) is not None for n in "bde"] == [True, True, True]
    store.clear()
    assert len(store) == 0


def test_store_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        TrackMetaStore(capacity=0)


def test_store_drops_oversized_metadata_r9() -> None:
    store = TrackMetaStore(max_bytes=20)
    fits = {"k": "x" * 12}  # {"k":"xxxxxxxxxxxx"} = 20 bytes
    assert len(dumps(fits)) == 20
    store.apply(TrackMeta("t", fits))
    assert store.get("t") == TrackMeta("t", fits)
    store.apply(TrackMeta("t", {"k": "x" * 13}))  # 21 bytes: ignored, the old entry stays
    assert store.get("t") == TrackMeta("t", fits)
    store.apply(TrackMeta("u", {"k": "é" * 3}))  # measured escaped: \u00e9 is 6 bytes
    assert store.get("u") is None
    store.apply(TrackMeta("v", {"k": float("nan")}))  # cannot be serialized: dropped
    assert store.get("v") is None
    unlimited = TrackMetaStore()
    unlimited.apply(TrackMeta("t", {"k": "x" * 100_000}))
    assert unlimited.get("t") is not None


def test_store_lookup_order() -> None:
    store = TrackMetaStore()
    store.apply(TrackMeta("msid-track", {"from": "msid"}))
    store.apply(TrackMeta("own-id", {"from": "own"}))

    def resolve(msid: str | None, own: str | None) -> dict[str, Any] | None:
        return store.resolve(
            msid_track_id=msid, track_id=own, stream_id=None, kind="audio", described_track_ids=()
        )

    assert resolve("msid-track", "own-id") == {"from": "msid"}
    assert resolve("elsewhere", "own-id") == {"from": "own"}
    assert resolve(None, "own-id") == {"from": "own"}
    assert resolve("msid-track", None) == {"from": "msid"}
    assert resolve("x", "y") is None
    assert resolve(None, None) is None


def test_store_firefox_fallback() -> None:
    """Firefox rewrites track ids: match by stream id + kind among undescribed entries."""
    store = TrackMetaStore()
    store.apply(TrackMeta("ff-cam", {"role": "camera"}, "video", "stream-1"))
    store.apply(TrackMeta("ff-mic", {"role": "voice"}, "audio", "stream-1"))
    store.apply(TrackMeta("other", {"role": "camera"}, "video", "stream-2"))

    def resolve(kind: str | None, stream: str | None, described: tuple[str, ...] = ()) -> Any:
        return store.resolve(
            msid_track_id="{rewritten}",
            track_id="random-receiver-id",
            stream_id=stream,
            kind=kind,
            described_track_ids=described,
        )

    assert resolve("video", "stream-1") == {"role": "camera"}
    assert resolve("audio", "stream-1") == {"role": "voice"}
    assert resolve("video", "stream-3") is None
    assert resolve("video", None) is None  # no stream: no fallback
    assert resolve("video", "stream-1", described=("ff-cam",)) is None  # ff-cam is another track

    # two undescribed candidates: used only when their metadata is equal
    store.apply(TrackMeta("ff-cam-2", {"role": "camera"}, "video", "stream-1"))
    assert resolve("video", "stream-1") == {"role": "camera"}
    store.apply(TrackMeta("ff-cam-3", {"role": "screen"}, "video", "stream-1"))
    assert resolve("video", "stream-1") is None
    assert resolve("video", "stream-1", described=("ff-cam-3",)) == {"role": "camera"}
    # the direct lookups still win over the fallback
    assert store.resolve(
        msid_track_id="ff-cam-3",
        track_id=None,
        stream_id="stream-1",
        kind="video",
        described_track_ids={"ff-cam-3"},
    ) == {"role": "screen"}


# --- candidates (§7.3) ------------------------------------------------------------------


def test_parse_candidate_lines() -> None:
    assert CandidateGate.parse(RtcCandidate(TV11_LINE, "0", 0)) == ParsedCandidate(
        foundation="3721038941",
        component=1,
        protocol="udp",
        priority=2122260223,
        ip="192.0.2.44",
        port=50412,
        type="host",
    )
    assert parse_candidate(SRFLX_LINE) == ParsedCandidate(
        "842163049", 1, "udp", 1677729535, "198.51.100.7", 61002, "srflx", "0.0.0.0", 0
    )
    relay = "candidate:1 2 UDP 41885695 203.0.113.9 3478 typ relay raddr 198.51.100.7 rport 61002"
    assert parse_candidate(relay) == ParsedCandidate(
        "1", 2, "udp", 41885695, "203.0.113.9", 3478, "relay", "198.51.100.7", 61002
    )
    tcp = "candidate:2 1 tcp 1518280447 192.0.2.44 9 typ host tcptype active generation 0"
    assert parse_candidate(tcp) == ParsedCandidate(
        "2", 1, "tcp", 1518280447, "192.0.2.44", 9, "host", tcptype="active"
    )
    v6 = "a=candidate:3 1 udp 2122262783 2001:db8::1 50000 typ host"
    assert parse_candidate(v6) == ParsedCandidate(
        "3", 1, "udp", 2122262783, "2001:db8::1", 50000, "host"
    )
    mdns = "candidate:4 1 udp 2122260223 1f4712db-ea17-4bcf-a596-105139dfd8bf.local 54400 typ host"
    parsed = parse_candidate(mdns)
    assert parsed is not None
    assert parsed.ip.endswith(".local")


@pytest.mark.parametrize(
    "line",
    [
        "",
        "candidate:",
        "3721038941 1 udp 2122260223 192.0.2.44 50412 typ host",  # no prefix
        "candidate:1 1 udp 2122260223 192.0.2.44 50412 host",  # 7 fields
        "candidate:1 1 udp 2122260223 192.0.2.44 50412 type host",  # no "typ"
        "candidate:1 1 sctp 2122260223 192.0.2.44 50412 typ host",
        "candidate:1 1 udp 2122260223 192.0.2.44 50412 typ bogus",
        "candidate:1 0 udp 2122260223 192.0.2.44 50412 typ host",  # component 0
        "candidate:1 x udp 2122260223 192.0.2.44 50412 typ host",
        "candidate:1 1 udp -5 192.0.2.44 50412 typ host",
        "candidate:1 1 udp 4294967296 192.0.2.44 50412 typ host",
        "candidate:1 1 udp 1 192.0.2.44 65536 typ host",
        "candidate:1 1 udp 1 192.0.2.44 +80 typ host",
        "candidate:1 1 udp 1 192.0.2.44 8_0 typ host",
        "candidate:1 1 udp 1 192.0.2.44 \u0668\u0660 typ host",  # Arabic-Indic digits
        "candidate:1 1 udp 1 192.0.2.44 80 typ srflx raddr 0.0.0.0 rport x",
    ],
)
def test_parse_candidate_rejects(line: str) -> None:
    assert parse_candidate(line) is None
    assert CandidateGate.parse(RtcCandidate(line, None, None)) is None


def test_gate_parse_needs_the_bare_prefix() -> None:
    assert CandidateGate.parse(RtcCandidate("a=" + TV11_LINE, None, None)) is None
    assert CandidateGate.parse(RtcCandidate("", None, None)) is None


@pytest.mark.parametrize(
    "line",
    [TV11_LINE, SRFLX_LINE, "candidate:2 1 TCP 1518280447 192.0.2.44 9 typ host tcptype passive"],
)
def test_parse_agrees_with_aiortc(line: str) -> None:
    sdp_mod = pytest.importorskip("aiortc.sdp")
    theirs = sdp_mod.candidate_from_sdp(line.split(":", 1)[1])
    ours = parse_candidate(line)
    assert ours is not None
    assert (ours.foundation, ours.component, ours.priority, ours.ip, ours.port, ours.type) == (
        theirs.foundation, theirs.component, theirs.priority, theirs.ip, theirs.port, theirs.type
    )  # fmt: skip
    assert ours.protocol == theirs.protocol.lower()
    assert (ours.related_address, ours.related_port, ours.tcptype) == (
        theirs.relatedAddress, theirs.relatedPort, theirs.tcpType
    )  # fmt: skip


def test_gate_caps_and_reset() -> None:
    gate = CandidateGate()
    good = RtcCandidate(TV11_LINE, "0", 0)
    assert all(gate.admit(good) for _ in range(200))
    assert not gate.admit(good)  # 201st in this generation
    assert not gate.admit(good)
    gate.reset()  # a remote description was applied
    assert gate.admit(good)


def test_gate_counts_malformed_and_long() -> None:
    gate = CandidateGate(max_candidates=5)
    long_ok = TV11_LINE + " generation 0" * 100
    long_ok = long_ok[:1000].rsplit(" ", 2)[0]
    assert len(long_ok) <= 1000
    assert gate.admit(RtcCandidate(long_ok, None, None))
    padded = TV11_LINE + " x" * ((1001 - len(TV11_LINE)) // 2 + 1)
    assert len(padded) > 1000
    assert CandidateGate.parse(RtcCandidate(padded, None, None)) is not None  # well-formed …
    assert not gate.admit(RtcCandidate(padded, None, None))  # … but too long
    assert not gate.admit(RtcCandidate("garbage", None, None))  # no prefix
    assert not gate.admit(RtcCandidate("", None, None))  # non-string candidate member
    assert not gate.admit(RtcCandidate("candidate:1 1 udp", None, None))  # unparsable
    assert gate.count == 5
    assert not gate.admit(RtcCandidate(TV11_LINE, None, None))  # cap reached by the bad ones
    exact = CandidateGate(max_length=len(TV11_LINE))
    assert exact.admit(RtcCandidate(TV11_LINE, None, None))
    assert not CandidateGate(max_length=len(TV11_LINE) - 1).admit(
        RtcCandidate(TV11_LINE, None, None)
    )


# --- loopback filter --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("0:0:0:0:0:0:0:1", True),
        ("128.0.0.1", False),
        ("126.255.255.255", False),
        ("0.0.0.0", False),
        ("192.0.2.44", False),
        ("10.0.0.1", False),
        ("::", False),
        ("::ffff:127.0.0.1", False),
        ("fe80::1", False),
        ("localhost", False),
        ("1f4712db-ea17-4bcf-a596-105139dfd8bf.local", False),
        ("127.0.0.1.local", False),
        ("", False),
        ("127.0.0.01", False),
    ],
)
def test_is_loopback_address(host: str, loopback: bool) -> None:
    assert is_loopback_address(host) is loopback


SDP_WITH_CANDIDATES = (
    "v=0\r\n"
    "o=- 1 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "m=audio 50412 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 192.0.2.44\r\n"
    "a=mid:0\r\n"
    "a=candidate:1 1 udp 2122260223 192.0.2.44 50412 typ host\r\n"
    "a=candidate:2 1 udp 2122260223 127.0.0.1 50413 typ host\r\n"
    "a=candidate:3 1 udp 1677729535 198.51.100.7 61002 typ srflx raddr 127.0.0.1 rport 50413\r\n"
    "a=candidate:4 1 udp 2122262783 ::1 50414 typ host\r\n"
    "a=candidate:5 1 udp 2122260223 abc.local 50415 typ host\r\n"
    "a=candidate:6 1 tcp\r\n"
    "a=candidates-are-not-this:1\r\n"
    "a=end-of-candidates\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=candidate:7 1 udp 2122260223 127.9.9.9 50416 typ host"  # last line, no ending
)


def test_filter_candidates_keeps_only_loopback_lines() -> None:
    out = filter_candidates(SDP_WITH_CANDIDATES, is_loopback_address)
    assert out == (
        "v=0\r\n"
        "o=- 1 2 IN IP4 127.0.0.1\r\n"
        "s=-\r\n"
        "t=0 0\r\n"
        "m=audio 50412 UDP/TLS/RTP/SAVPF 111\r\n"
        "c=IN IP4 192.0.2.44\r\n"
        "a=mid:0\r\n"
        "a=candidate:2 1 udp 2122260223 127.0.0.1 50413 typ host\r\n"
        "a=candidate:4 1 udp 2122262783 ::1 50414 typ host\r\n"
        "a=candidates-are-not-this:1\r\n"
        "a=end-of-candidates\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        "a=candidate:7 1 udp 2122260223 127.9.9.9 50416 typ host"
    )
    assert filter_candidates(out, is_loopback_address) == out


def test_filter_candidates_identity_and_line_endings() -> None:
    assert filter_candidates(TV09_SDP, is_loopback_address) == TV09_SDP
    keep_all = filter_candidates(SDP_WITH_CANDIDATES, lambda _: True)
    assert keep_all == SDP_WITH_CANDIDATES.replace("a=candidate:6 1 tcp\r\n", "")
    lf = "m=audio 9 x\na=candidate:1 1 udp 1 10.0.0.1 9 typ host\na=candidate:2 1 udp 1 127.0.0.1 9 typ host\n"  # noqa: E501
    assert filter_candidates(lf, is_loopback_address) == (
        "m=audio 9 x\na=candidate:2 1 udp 1 127.0.0.1 9 typ host\n"
    )
    seen: list[str] = []

    def record(address: str) -> bool:
        seen.append(address)
        return False

    filter_candidates(SDP_WITH_CANDIDATES, record)
    assert seen == ["192.0.2.44", "127.0.0.1", "198.51.100.7", "::1", "abc.local", "127.9.9.9"]
    assert filter_candidates("", is_loopback_address) == ""


# --- msid and ufrag (§7.7.1, §7.5.2) ----------------------------------------------------


def test_parse_msid_tv09() -> None:
    info = parse_msid(TV09_SDP)
    assert info == MsidInfo(
        by_mid={"0": ("stream-main", "trk-mic-1")}, stream_of_track={"trk-mic-1": "stream-main"}
    )
    assert info.track_ids == {"trk-mic-1"}
    assert parse_msid(TV28_SDP) == MsidInfo({}, {})
    assert parse_msid("") == MsidInfo({}, {})


LEGACY_SDP = (
    "v=0\r\n"
    "a=msid:session-level ignored\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=mid:audio\r\n"
    "a=ssrc:1001 cname:abc\r\n"
    "a=ssrc:1001 msid:legacy-stream legacy-audio\r\n"
    "a=ssrc:1001 mslabel:legacy-stream\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=ssrc-group:FID 2001 2002\r\n"
    "a=ssrc:2001 msid:legacy-stream legacy-video\r\n"
    "a=ssrc:2002 msid:legacy-stream legacy-video\r\n"
    "a=mid:video\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=ssrc:3001 msid:from-ssrc ssrc-track\r\n"
    "a=msid:modern-stream modern-track\r\n"  # a=msid wins, wherever it is
    "a=mid:2\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=mid:3\r\n"
    "a=msid:- lonely-track\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=mid:4\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=msid:no-mid-stream no-mid-track\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=mid:6\r\n"
    "a=msid:stream-only\r\n"
)


def test_parse_msid_legacy_and_mixed() -> None:
    info = parse_msid(LEGACY_SDP)
    assert info.by_mid == {
        "audio": ("legacy-stream", "legacy-audio"),
        "video": ("legacy-stream", "legacy-video"),
        "2": ("modern-stream", "modern-track"),
        "3": (None, "lonely-track"),
    }
    assert info.stream_of_track == {
        "legacy-audio": "legacy-stream",
        "legacy-video": "legacy-stream",
        "modern-track": "modern-stream",
        "no-mid-track": "no-mid-stream",
    }
    assert info.track_ids == {
        "legacy-audio", "legacy-video", "modern-track", "lonely-track", "no-mid-track"
    }  # fmt: skip
    assert parse_msid(LEGACY_SDP.replace("\r\n", "\n")) == info


def test_parse_msid_caps() -> None:
    sections = "".join(f"m=audio 9 RTP 0\r\na=mid:{i}\r\na=msid:s{i} t{i}\r\n" for i in range(300))
    info = parse_msid("v=0\r\n" + sections)
    assert len(info.by_mid) == 256
    assert len(info.stream_of_track) == 256
    assert info.by_mid["255"] == ("s255", "t255")
    assert "256" not in info.by_mid

    long256, long257 = "x" * 256, "y" * 257
    sdp = (
        f"m=audio 9 RTP 0\r\na=mid:a\r\na=msid:{long256} {long256}\r\n"
        f"m=audio 9 RTP 0\r\na=mid:b\r\na=msid:{long257} t\r\n"
        f"m=audio 9 RTP 0\r\na=mid:c\r\na=msid:s {long257}\r\n"
        f"m=audio 9 RTP 0\r\na=mid:{long257}\r\na=msid:s-long-mid t-long-mid\r\n"
        "m=audio 9 RTP 0\r\na=mid:d\r\na=mid:e\r\na=msid:s-d t-d\r\n"
        "m=audio 9 RTP 0\r\na=mid:d\r\na=msid:s-dup t-dup\r\n"
    )
    info = parse_msid(sdp)
    assert info.by_mid == {"a": (long256, long256), "d": ("s-d", "t-d")}
    assert info.stream_of_track == {
        long256: long256,
        "t-long-mid": "s-long-mid",
        "t-d": "s-d",
        "t-dup": "s-dup",
    }


def test_ice_ufrag() -> None:
    assert ice_ufrag(TV09_SDP) == "Yk3p"
    assert ice_ufrag(TV28_SDP) == "Pq8s"
    assert ice_ufrag("v=0\r\nm=audio 9 RTP 0\r\n") is None
    assert ice_ufrag("a=ice-ufrag:first\r\nm=audio 9\r\na=ice-ufrag:second\r\n") == "first"
    assert ice_ufrag("a=ice-ufrag:" + "u" * 256 + "\r\n") == "u" * 256
    assert ice_ufrag("a=ice-ufrag:" + "u" * 257 + "\r\na=ice-ufrag:ok\r\n") is None
    assert ice_ufrag("a=ice-ufrag:\r\n") is None
    assert ice_ufrag("a=ice-ufrag:lf-only\n") == "lf-only"
    assert ice_ufrag("a=ice-ufrag:no-ending") == "no-ending"


# --- header-extension ids (§7.5.4, W10) -------------------------------------------------

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"


def _sdp(*sections: tuple[str, list[tuple[int | str, str]]]) -> str:
    out = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=extmap-allow-mixed\r\n"
    for kind, exts in sections:
        out += f"m={kind} 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{kind[0]}\r\n"
        out += "".join(f"a=extmap:{i} {uri}\r\n" for i, uri in exts)
        out += "a=rtpmap:96 x/90000\r\n"
    return out


def test_extmap_answer_learned_and_shuffled_reoffer_rewritten() -> None:
    reg = ExtmapRegistry()
    # the browser's offer, then our answer (what aiortc accepted: same ids)
    browser_offer = _sdp(
        ("audio", [(1, LEVEL), (4, MID), (5, TWCC)]), ("video", [(4, MID), (2, ABS)])
    )
    reg.learn(browser_offer)
    reg.learn(_sdp(("audio", [(1, LEVEL), (4, MID)]), ("video", [(4, MID), (2, ABS)])))
    assert (reg.id_of(MID), reg.id_of(LEVEL), reg.id_of(ABS), reg.id_of(TWCC)) == (4, 1, 2, 5)
    assert len(reg) == 4
    # aiortc's re-offer numbers the extensions its own way
    aiortc_offer = _sdp(("audio", [(1, MID), (2, LEVEL)]), ("video", [(1, MID), (3, ABS)]))
    assert reg.rewrite(aiortc_offer) == _sdp(
        ("audio", [(4, MID), (1, LEVEL)]), ("video", [(4, MID), (2, ABS)])
    )
    rewritten = reg.rewrite(aiortc_offer)
    assert reg.rewrite(rewritten) == rewritten


def test_extmap_learn_from_answer_to_our_offer() -> None:
    reg = ExtmapRegistry()
    reg.learn(_sdp(("audio", [(3, MID), (7, LEVEL)])))  # remote answer
    assert reg.rewrite(_sdp(("audio", [(1, MID), (2, LEVEL)]))) == _sdp(
        ("audio", [(3, MID), (7, LEVEL)])
    )


def test_extmap_unknown_uris_get_free_ids() -> None:
    reg = ExtmapRegistry()
    reg.learn(_sdp(("audio", [(1, MID), (2, LEVEL)])))
    offer = _sdp(
        ("audio", [(2, MID), (1, LEVEL), (9, TWCC)]),  # TWCC's 9 is free: kept
        ("video", [(2, MID), (1, ABS), (9, TWCC), (30, RID)]),  # ABS's 1 is taken → lowest free
    )
    assert reg.rewrite(offer) == _sdp(
        ("audio", [(1, MID), (2, LEVEL), (9, TWCC)]),
        ("video", [(1, MID), (3, ABS), (9, TWCC), (4, RID)]),
    )
    # the same new uri gets the same id in every section, even where it came with another id
    offer = _sdp(("audio", [(5, ABS)]), ("video", [(6, ABS)]))
    assert reg.rewrite(offer) == _sdp(("audio", [(5, ABS)]), ("video", [(5, ABS)]))
    # new uris are not remembered until learned
    assert reg.id_of(ABS) is None


def test_extmap_removed_when_no_id_is_free() -> None:
    reg = ExtmapRegistry()
    reg.learn(_sdp(("audio", [(i, f"urn:x:{i}") for i in range(1, 15)])))
    offer = _sdp(("audio", [(1, "urn:x:1"), (2, "urn:new:a"), (14, "urn:x:14")]))
    assert reg.rewrite(offer) == _sdp(("audio", [(1, "urn:x:1"), (14, "urn:x:14")]))
    # a learned two-byte id is kept as is
    reg.learn(_sdp(("video", [(200, RID)])))
    assert reg.rewrite(_sdp(("video", [(3, RID)]))) == _sdp(("video", [(200, RID)]))


def test_extmap_ids_stay_unique() -> None:
    reg = ExtmapRegistry()
    reg.learn(_sdp(("audio", [(1, MID), (2, LEVEL)])))
    reg.learn(_sdp(("audio", [(1, ABS)])))  # a later description reuses id 1 for ABS
    assert reg.id_of(MID) is None
    assert (reg.id_of(ABS), reg.id_of(LEVEL)) == (1, 2)
    reg.learn(_sdp(("audio", [(3, ABS), (4, ABS)])))  # first mapping within one description
    assert reg.id_of(ABS) == 3
    reg.learn(_sdp(("audio", [(0, TWCC), (256, RID)])))  # out of range: ignored
    assert reg.id_of(TWCC) is None
    assert reg.id_of(RID) is None
    reg.clear()
    assert len(reg) == 0


def test_extmap_keeps_everything_else() -> None:
    reg = ExtmapRegistry()
    reg.learn(
        "m=audio 9 RTP 0\r\na=extmap:5/recvonly urn:ietf:params:rtp-hdrext:encrypt " + MID + "\r\n"
    )
    assert reg.id_of("urn:ietf:params:rtp-hdrext:encrypt") == 5
    offer = (
        "v=0\r\n"
        "a=extmap-allow-mixed\r\n"
        "m=audio 9 RTP 0\r\n"
        "a=extmap:1/sendonly urn:ietf:params:rtp-hdrext:encrypt " + MID + " \r\n"
        "a=extmap:x " + LEVEL + "\r\n"  # malformed: left alone
        "a=extmap:2 " + LEVEL + "\n"  # LF ending kept
        "a=extmap:7  " + TWCC  # double space, no ending
    )
    assert reg.rewrite(offer) == (
        "v=0\r\n"
        "a=extmap-allow-mixed\r\n"
        "m=audio 9 RTP 0\r\n"
        "a=extmap:5/sendonly urn:ietf:params:rtp-hdrext:encrypt " + MID + " \r\n"
        "a=extmap:x " + LEVEL + "\r\n"
        "a=extmap:2 " + LEVEL + "\n"
        "a=extmap:7  " + TWCC
    )
    assert ExtmapRegistry().rewrite(TV09_SDP) == TV09_SDP


# --- offers and answers (§7.5.2, §7.5.3) ------------------------------------------------

IGN, APP, REB = OFFER_IGNORE, OFFER_APPLY, OFFER_REBUILD
# (polite, making_offer, signaling_state, ufrag_changed) → decision, no recent rebuild
OFFER_TABLE: list[tuple[bool, bool, str, bool, str]] = [
    (False, False, "stable", False, APP),
    (False, False, "stable", True, REB),  # remote restarted / rebuilt
    (False, False, "have-local-offer", False, IGN),
    (False, False, "have-local-offer", True, IGN),
    (False, False, "have-remote-offer", False, IGN),
    (False, False, "have-remote-offer", True, IGN),
    (False, True, "stable", False, IGN),  # offer being made: glare
    (False, True, "stable", True, IGN),
    (False, True, "have-local-offer", False, IGN),
    (False, True, "have-local-offer", True, IGN),
    (False, True, "have-remote-offer", False, IGN),
    (False, True, "have-remote-offer", True, IGN),
    (True, False, "stable", False, APP),
    (True, False, "stable", True, REB),
    (True, False, "have-local-offer", False, REB),
    (True, False, "have-local-offer", True, REB),
    (True, False, "have-remote-offer", False, REB),
    (True, False, "have-remote-offer", True, REB),
    (True, True, "stable", False, REB),
    (True, True, "stable", True, REB),
    (True, True, "have-local-offer", False, REB),
    (True, True, "have-local-offer", True, REB),
    (True, True, "have-remote-offer", False, REB),
    (True, True, "have-remote-offer", True, REB),
]


def test_offer_table_is_complete() -> None:
    states = ("stable", "have-local-offer", "have-remote-offer")
    combos = set(itertools.product((False, True), (False, True), states, (False, True)))
    assert {row[:4] for row in OFFER_TABLE} == combos


@pytest.mark.parametrize(("polite", "making", "state", "ufrag", "expected"), OFFER_TABLE)
def test_offer_decision(polite: bool, making: bool, state: str, ufrag: bool, expected: str) -> None:
    def decide(last: float | None, now: float = 100.0) -> str:
        return offer_decision(
            polite=polite,
            making_offer=making,
            signaling_state=state,
            ufrag_changed=ufrag,
            now=now,
            last_rebuild_at=last,
        )

    assert decide(None) == expected
    assert decide(50.0) == expected  # long ago
    # a rebuild within 2 s of the last offer-triggered one is dropped; nothing else changes
    recent = OFFER_DROP if expected == OFFER_REBUILD else expected
    assert decide(99.0) == recent
    assert decide(98.0001) == recent
    assert decide(98.0) == expected  # exactly 2 s later: allowed
    assert decide(100.0) == recent


def test_offer_decision_cooldown_parameter_and_odd_states() -> None:
    def decide(polite: bool, state: str, last: float | None, cooldown: float = 2.0) -> str:
        return offer_decision(
            polite=polite,
            making_offer=False,
            signaling_state=state,
            ufrag_changed=True,
            now=10.0,
            last_rebuild_at=last,
            rebuild_cooldown=cooldown,
        )

    assert decide(True, "stable", 6.0, cooldown=5.0) == OFFER_DROP
    assert decide(True, "stable", 5.0, cooldown=5.0) == OFFER_REBUILD
    assert decide(True, "stable", 9.9, cooldown=0.0) == OFFER_REBUILD
    # any state other than "stable" counts as a collision
    assert decide(False, "closed", None) == OFFER_IGNORE
    assert decide(True, "have-local-pranswer", None) == OFFER_REBUILD


def test_answer_decision() -> None:
    assert answer_decision("have-local-offer")
    for state in ("stable", "have-remote-offer", "have-local-pranswer", "closed", ""):
        assert not answer_decision(state)


# --- ICE recovery ladder (§7.6) ---------------------------------------------------------


def _run(rec: IceRecovery, until: float) -> list[tuple[float, RecoveryAction]]:
    """Fire every timer up to ``until`` exactly when it is due; nothing reports connected."""
    out: list[tuple[float, RecoveryAction]] = []
    while (at := rec.get_timer()) is not None and at <= until:
        out.extend((at, action) for action in rec.handle_timer(at))
    return out


def test_ladder_exact_times_then_single_exhaustion() -> None:
    assert not IceRecovery().active
    rec = IceRecovery()
    assert rec.get_timer() is None
    rec.on_connection_state("failed", 1000.0)
    assert rec.active
    assert rec.get_timer() == 1000.0  # attempt 1 at once
    events = _run(rec, 10_000.0)
    rebuilds = [(t - 1000.0, a) for t, a in events if isinstance(a, RebuildNow)]
    assert [a.attempt for _, a in rebuilds] == list(range(1, 10))
    times = [t for t, _ in rebuilds]
    # each attempt is DELAYS[n-1] after the previous attempt's 15 s watchdog expired
    assert times == [0.0, 16.0, 33.0, 52.0, 75.0, 106.0, 151.0, 196.0, 241.0]
    gaps = [b - a - IceRecovery.WATCHDOG for a, b in itertools.pairwise(times)]
    assert [times[0], *gaps] == list(IceRecovery.DELAYS)
    assert sum(IceRecovery.DELAYS) == 121.0
    assert events[-1] == (1256.0, RecoveryExhausted(9))  # the last watchdog expired
    assert sum(isinstance(a, RecoveryExhausted) for _, a in events) == 1
    assert (rec.exhausted, rec.active, rec.attempts, rec.get_timer()) == (True, False, 9, None)
    # nothing more until "connected"
    rec.on_connection_state("failed", 2000.0)
    assert rec.get_timer() is None
    assert rec.handle_timer(5000.0) == []
    rec.on_connection_state("connected", 6000.0)
    assert (rec.exhausted, rec.attempts, rec.active) == (False, 0, False)
    rec.on_connection_state("failed", 7000.0)
    assert rec.handle_timer(7000.0) == [RebuildNow(1)]


def test_ladder_connected_resets_budget() -> None:
    rec = IceRecovery()
    rec.on_connection_state("failed", 0.0)
    assert rec.handle_timer(0.0) == [RebuildNow(1)]
    assert rec.handle_timer(14.9) == []  # early: nothing
    assert rec.handle_timer(15.0) == []  # watchdog expired: attempt 2 scheduled
    assert rec.get_timer() == 16.0
    assert rec.handle_timer(16.0) == [RebuildNow(2)]
    rec.on_connection_state("connecting", 17.0)  # ignored
    rec.on_connection_state("connected", 20.0)
    assert (rec.attempts, rec.active, rec.get_timer()) == (0, False, None)
    assert rec.handle_timer(100.0) == []
    rec.on_connection_state("failed", 200.0)
    assert rec.handle_timer(200.0) == [RebuildNow(1)]  # a full budget again
    assert len([a for _, a in _run(rec, 10_000.0) if isinstance(a, RebuildNow)]) == 8


def test_ladder_skips_attempt_when_link_recovers_first() -> None:
    rec = IceRecovery()
    rec.on_connection_state("failed", 0.0)
    rec.handle_timer(0.0)
    rec.handle_timer(15.0)  # attempt 2 due at 16
    rec.on_connection_state("connected", 15.5)
    assert rec.get_timer() is None
    assert rec.handle_timer(16.0) == []
    assert rec.attempts == 0


def test_ladder_failed_advances_and_duplicates_are_ignored() -> None:
    rec = IceRecovery()
    rec.on_connection_state("failed", 0.0)
    rec.on_connection_state("failed", 0.0)  # already scheduled: ignored
    assert rec.handle_timer(0.0) == [RebuildNow(1)]
    assert rec.get_timer() == 15.0  # watchdog
    rec.on_connection_state("failed", 5.0)  # the rebuilt connection failed: no need to wait
    assert rec.get_timer() == 6.0
    rec.on_connection_state("failed", 5.5)  # does not push the attempt back
    assert rec.get_timer() == 6.0
    assert rec.handle_timer(6.0) == [RebuildNow(2)]
    for state in ("new", "connecting", "disconnected", "closed", "checking"):
        rec.on_connection_state(state, 7.0)
    assert rec.get_timer() == 21.0


def test_ladder_failed_after_last_attempt_exhausts_once() -> None:
    rec = IceRecovery(delays=(0.0, 1.0), watchdog=5.0)
    assert rec.max_attempts == 2
    rec.on_connection_state("failed", 0.0)
    assert rec.handle_timer(0.0) == [RebuildNow(1)]
    assert rec.handle_timer(5.0) == []
    assert rec.handle_timer(6.0) == [RebuildNow(2)]
    rec.on_connection_state("failed", 7.0)
    assert rec.get_timer() == 7.0
    assert rec.next_action(7.0) == [RecoveryExhausted(2)]
    assert rec.handle_timer(100.0) == []
    rec.on_connection_state("failed", 101.0)
    assert rec.get_timer() is None


def test_ladder_late_timer_does_one_step() -> None:
    rec = IceRecovery()
    rec.on_connection_state("failed", 0.0)
    assert rec.handle_timer(3.0) == [RebuildNow(1)]  # late: the watchdog counts from now
    assert rec.get_timer() == 18.0
    assert rec.handle_timer(100.0) == []  # the watchdog expired: attempt 2 one second later
    assert rec.get_timer() == 101.0


def test_connect_watchdog_counts_a_stalled_connect_as_failed() -> None:
    rec = IceRecovery(connect_timeout=10.0)
    rec.on_checking(0.0)
    assert rec.get_timer() == 10.0
    assert rec.handle_timer(9.9) == []
    assert rec.handle_timer(10.0) == [RebuildNow(1)]  # then the ladder as after "failed"
    rec.on_checking(11.0)  # the rebuilt connection checks: the attempt's watchdog rules
    assert rec.get_timer() == 25.0
    rec.on_connection_state("connected", 12.0)
    assert (rec.attempts, rec.get_timer()) == (0, None)


def test_connect_watchdog_is_cancelled_by_connected() -> None:
    rec = IceRecovery()
    rec.on_checking(0.0)
    assert rec.get_timer() == IceRecovery.CONNECT_TIMEOUT
    rec.on_checking(5.0)  # a repeat does not push the deadline back
    assert rec.get_timer() == IceRecovery.CONNECT_TIMEOUT
    rec.on_connection_state("connected", 1.0)
    assert rec.get_timer() is None
    assert rec.handle_timer(100.0) == []


def test_connect_watchdog_is_ignored_after_exhaustion() -> None:
    rec = IceRecovery(delays=(0.0,), watchdog=1.0)
    rec.on_connection_state("failed", 0.0)
    assert rec.handle_timer(0.0) == [RebuildNow(1)]
    assert rec.handle_timer(1.0) == [RecoveryExhausted(1)]
    rec.on_checking(2.0)
    assert rec.get_timer() is None


@pytest.mark.parametrize(
    ("polite", "have_remote", "forced", "hold"),
    [
        (False, False, False, FIRST_OFFER_HOLD),  # impolite, fresh connection: hold
        (True, False, False, 0.0),  # the polite side never holds
        (False, True, False, 0.0),  # renegotiation
        (False, False, True, 0.0),  # rebuild / recovery offer
    ],
)
def test_first_offer_hold(polite: bool, have_remote: bool, forced: bool, hold: float) -> None:
    assert first_offer_hold(polite=polite, have_remote=have_remote, forced=forced) == hold
    assert 0.0 < FIRST_OFFER_HOLD <= 0.5  # short: it delays media when the polite side is silent


def test_ladder_rejects_empty_budget() -> None:
    with pytest.raises(ValueError, match="attempt"):
        IceRecovery(delays=())


OPS = st.lists(
    st.tuples(
        st.sampled_from(["failed", "connected", "connecting", "checking", "timer"]),
        st.floats(min_value=0.0, max_value=40.0),
    ),
    max_size=60,
)


@given(OPS)
@FAST
def test_ladder_invariants(ops: list[tuple[str, float]]) -> None:
    rec = IceRecovery()
    now = 0.0
    expected_attempt = 1
    exhausted_reports = 0
    for op, step in ops:
        now += step
        if op == "timer":
            timer = rec.get_timer()
            if timer is not None:
                now = max(now, timer)
            for action in rec.handle_timer(now):
                if isinstance(action, RebuildNow):
                    assert action.attempt == expected_attempt <= 9
                    expected_attempt += 1
                else:
                    assert action == RecoveryExhausted(9)
                    exhausted_reports += 1
                    assert exhausted_reports == 1
        elif op == "checking":
            rec.on_checking(now)
        else:
            rec.on_connection_state(op, now)
            if op == "connected":
                expected_attempt, exhausted_reports = 1, 0
                assert rec.get_timer() is None
        timer = rec.get_timer()
        assert timer is None or isinstance(timer, float)
        assert rec.attempts == expected_attempt - 1


# --- robustness on arbitrary text -------------------------------------------------------

SDP_LINES = st.sampled_from(
    [
        "m=audio 9 RTP 0", "m=video 9 RTP 0", "a=mid:0", "a=mid:1", "a=msid:s t", "a=msid:- t2",
        "a=msid:", "a=ssrc:1 msid:s t", "a=ssrc:", "a=ice-ufrag:abc", "a=ice-ufrag:",
        f"a=extmap:1 {MID}", f"a=extmap:2/sendrecv {LEVEL} attr", f"a=extmap:14 {ABS}",
        f"a=extmap:3 {ABS}", "a=extmap:99999 urn:x", "a=extmap:0 urn:y", "a=extmap:", "a=extmap:1",
        f"a={TV11_LINE}", f"a={SRFLX_LINE}", "a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
        "a=candidate:", "a=candidate:1 1 udp 1 ::1", "",
    ]
)  # fmt: skip
SDP_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(SDP_LINES, st.text(max_size=20)), max_size=40).flatmap(
        lambda lines: st.sampled_from(["\r\n", "\n"]).map(lambda end: end.join(lines))
    ),
)


EXTMAP_LINE = re.compile(r"a=extmap:([0-9]{1,9})(?:/[^ \t]*)?[ \t]+([^ \t]+).*", re.ASCII)


def _sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = [[]]
    for line in sdp.split("\n"):
        line = line.removesuffix("\r")
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


@given(SDP_TEXT, SDP_TEXT)
@settings(max_examples=300, deadline=None)
def test_sdp_helpers_never_raise(learned: str, sdp: str) -> None:
    kept = filter_candidates(sdp, lambda _: True)  # drops only address-less candidate lines
    dropped = [line for line in sdp.split("\n") if line not in kept.split("\n")]
    assert all(line.startswith("a=candidate:") for line in dropped)
    assert all(len(line.split()) < 5 for line in dropped)
    filtered = filter_candidates(sdp, is_loopback_address)
    assert filter_candidates(filtered, is_loopback_address) == filtered
    assert set(filtered.split("\n")) <= set(sdp.split("\n")) | {""}

    reg = ExtmapRegistry()
    reg.learn(learned)
    out = reg.rewrite(sdp)
    assert reg.rewrite(out) == out
    for section in _sections(out):  # no two uris share an id within a section
        owners: dict[int, str] = {}
        for line in section:
            if match := EXTMAP_LINE.fullmatch(line):
                ext_id, uri = int(match.group(1)), match.group(2)
                assert owners.setdefault(ext_id, uri) == uri

    info = parse_msid(sdp)
    assert len(info.by_mid) <= 256
    assert all(len(t) <= 256 for t in info.track_ids)
    ufrag = ice_ufrag(sdp)
    assert ufrag is None or 0 < len(ufrag) <= 256
    for line in sdp.split("\n"):
        parse_candidate(line)
        CandidateGate.parse(RtcCandidate(line, None, None))
        is_loopback_address(line)
