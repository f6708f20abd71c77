"""Fuzz the peer-protocol core (PROTOCOL §7): payload classification and the SDP text helpers.

Usage: python fuzz/fuzz_negotiation.py [libFuzzer options] [CORPUS_DIR ...]

The input, as text (undecodable bytes turned into lone surrogates), goes

* if it parses as JSON, to ``classify_direct``: a recognised payload must survive the wire
  (``classify_direct(loads(dumps(data)))`` gives the same result) and its payload builder must
  rebuild it; a ``TrackMeta`` is then fed to a ``TrackMetaStore`` and looked up;
* always, as SDP, to ``filter_candidates``, ``parse_msid``, ``ice_ufrag``, ``ExtmapRegistry`` and
  ``PayloadTypeRegistry`` (learned from the first half, rewriting the whole), ``media_layout`` /
  ``arrange_sections`` and, line by line, to ``CandidateGate``.

A crash is any exception, or a broken invariant: ``filter_candidates`` with an accept-all
``keep`` removing anything but address-less candidate lines, or not being idempotent with
``is_loopback_address``; ``rewrite`` not idempotent; ``parse_msid`` beyond its caps; a ufrag
longer than 256 characters. Seeds: the SDPs and payloads of tests/protocol-vectors.json
(``python fuzz/make_corpus.py`` seeds suit too).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from metered_realtime.core.frames import dumps
    from metered_realtime.core.negotiation import (
        CandidateGate,
        CustomerData,
        EndOfCandidates,
        ExtmapRegistry,
        RtcCandidate,
        RtcDescription,
        TrackMeta,
        TrackMetaStore,
        classify_direct,
        description_payload,
        end_of_candidates_payload,
        filter_candidates,
        ice_ufrag,
        is_loopback_address,
        parse_msid,
        track_meta_payload,
    )
    from metered_realtime.core.sdp import PayloadTypeRegistry, arrange_sections, media_layout


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def check_payload(text: str) -> None:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return
    got = classify_direct(data)
    if isinstance(got, CustomerData):
        if got.data is not data:
            raise AssertionError("customer data was not handed through")
        return
    if classify_direct(json.loads(dumps(data))) != got:
        raise AssertionError(f"{got!r} does not survive the wire")
    if isinstance(got, RtcDescription):
        rebuilt = classify_direct(description_payload(got))
    elif isinstance(got, EndOfCandidates):
        rebuilt = classify_direct(end_of_candidates_payload())
    elif isinstance(got, TrackMeta):
        payload = track_meta_payload(got.track_id, got.metadata, got.kind, got.stream_id)
        rebuilt = classify_direct(payload)
        expected = got if got.metadata is not None else TrackMeta(got.track_id, None)
        if rebuilt != expected:
            raise AssertionError(f"{got!r} rebuilt as {rebuilt!r}")
        store = TrackMetaStore(capacity=2, max_bytes=256)
        store.apply(got)
        store.resolve(
            msid_track_id=got.track_id,
            track_id=None,
            stream_id=got.stream_id,
            kind=got.kind,
            described_track_ids=(),
        )
        return
    else:
        if not isinstance(got, RtcCandidate):
            raise AssertionError(f"unexpected class {type(got).__name__}")
        CandidateGate().admit(got)
        return
    if rebuilt != got:
        raise AssertionError(f"{got!r} rebuilt as {rebuilt!r}")


def check_sdp(sdp: str) -> None:
    kept = filter_candidates(sdp, lambda _: True)
    kept_lines = set(kept.split("\n"))
    for line in sdp.split("\n"):
        if line not in kept_lines and not (
            line.startswith("a=candidate:") and len(line.split()) < 5
        ):
            raise AssertionError(f"filter_candidates removed {line!r}")
    filtered = filter_candidates(sdp, is_loopback_address)
    if filter_candidates(filtered, is_loopback_address) != filtered:
        raise AssertionError("filter_candidates is not idempotent")

    info = parse_msid(sdp)
    if len(info.by_mid) > 256 or len(info.stream_of_track) > 256:
        raise AssertionError("parse_msid exceeded its caps")
    ufrag = ice_ufrag(sdp)
    if ufrag is not None and not 0 < len(ufrag) <= 256:
        raise AssertionError(f"bad ufrag length {len(ufrag)}")

    registry = ExtmapRegistry()
    registry.learn(sdp[: len(sdp) // 2])
    out = registry.rewrite(sdp)
    if registry.rewrite(out) != out:
        raise AssertionError("rewrite is not idempotent")

    pts = PayloadTypeRegistry()
    pts.learn(sdp[: len(sdp) // 2])
    renumbered = pts.rewrite(sdp)
    if pts.rewrite(renumbered) != renumbered:
        raise AssertionError("payload-type rewrite is not idempotent")
    if renumbered.count("\n") != sdp.count("\n"):
        raise AssertionError("payload-type rewrite changed the line count")
    layout = media_layout(sdp)
    if layout:
        order = list(range(len(layout)))[::-1]
        arranged = arrange_sections(sdp, order, [str(i) for i in order])
        if [k for k, _ in media_layout(arranged)] != [k for k, _ in layout][::-1]:
            raise AssertionError("arrange_sections lost an m-section")

    gate = CandidateGate(max_candidates=50)
    for line in sdp.split("\n"):
        cand = RtcCandidate(line.removeprefix("a=").removesuffix("\r"), None, None)
        if gate.admit(cand) and CandidateGate.parse(cand) is None:
            raise AssertionError(f"admitted an unparsable candidate {line!r}")


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    check_payload(text)
    check_sdp(text)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
