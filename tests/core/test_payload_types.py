"""PayloadTypeRegistry: re-offers keep the payload types a browser negotiated (§7.5.4)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from metered_realtime.core.sdp import PayloadTypeRegistry

CHROME_OFFER = (
    "v=0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n"
    "a=mid:0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=rtcp-fb:111 transport-cc\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "a=rtpmap:63 red/48000/2\r\n"
    "a=fmtp:63 111/111\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:13 CN/8000\r\n"
    "a=rtpmap:110 telephone-event/48000\r\n"
    "a=rtpmap:126 telephone-event/8000\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\n"
    "a=mid:1\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
    "a=rtcp-fb:96 nack\r\n"
    "a=rtpmap:97 rtx/90000\r\n"
    "a=fmtp:97 apt=96\r\n"
    "a=rtpmap:102 H264/90000\r\n"
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n"
    "a=rtpmap:103 rtx/90000\r\n"
    "a=fmtp:103 apt=102\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=mid:2\r\n"
)

AIORTC_REOFFER = (
    "v=0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96 9 0 8\r\n"
    "a=mid:0\r\n"
    "a=rtpmap:96 opus/48000/2\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98 99 100 101 102\r\n"
    "a=mid:1\r\n"
    "a=rtcp-fb:97 nack\r\n"
    "a=rtpmap:97 VP8/90000\r\n"
    "a=rtpmap:98 rtx/90000\r\n"
    "a=fmtp:98 apt=97\r\n"
    "a=rtpmap:99 H264/90000\r\n"
    "a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n"
    "a=rtpmap:100 rtx/90000\r\n"
    "a=fmtp:100 apt=99\r\n"
    "a=rtpmap:101 H264/90000\r\n"
    "a=fmtp:101 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=rtpmap:102 rtx/90000\r\n"
    "a=fmtp:102 apt=101\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=mid:2\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 96 9 0 8\r\n"
    "a=mid:3\r\n"
    "a=rtpmap:96 opus/48000/2\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
)


def codecs(sdp: str) -> list[dict[int, str]]:
    """Per RTP m-section: pt → 'name/clock' (+ apt for rtx), checking the m= list matches."""
    out = []
    for section in sdp.split("m=")[1:]:
        lines = section.split("\r\n")
        if "RTP" not in lines[0]:
            continue
        listed = [int(p) for p in lines[0].split()[3:]]
        names = {}
        for line in lines:
            m = re.fullmatch(r"a=rtpmap:(\d+) ([^/]+)/(\d+).*", line)
            if m:
                names[int(m.group(1))] = f"{m.group(2)}/{m.group(3)}"
        for line in lines:
            m = re.fullmatch(r"a=fmtp:(\d+) apt=(\d+)", line)
            if m:
                names[int(m.group(1))] += f" apt={names[int(m.group(2))]}"
        assert sorted(listed) == sorted(names), (listed, names)
        out.append(names)
    return out


def test_a_reoffer_keeps_the_browsers_payload_types() -> None:
    reg = PayloadTypeRegistry()
    reg.learn(CHROME_OFFER)
    assert reg.pt_of("audio", "opus", 48000, 2) == 111
    assert reg.pt_of("video", "VP8", 90000) == 96
    out = reg.rewrite(AIORTC_REOFFER)
    audio, video, second_audio = codecs(out)
    assert audio == {111: "opus/48000", 9: "G722/8000", 0: "PCMU/8000", 8: "PCMA/8000"}
    assert second_audio == audio  # a new m-line uses the same numbers (one BUNDLE space)
    assert video[96] == "VP8/90000"
    assert video[97] == "rtx/90000 apt=VP8/90000"
    assert video[102] == "H264/90000"  # the negotiated H.264 variant keeps 102
    assert video[103] == "rtx/90000 apt=H264/90000"
    # the other H.264 variant and its rtx get numbers no negotiated codec holds
    others = {pt for pt in video if pt not in (96, 97, 102, 103)}
    assert len(others) == 2
    assert not others & {111, 63, 110, 126}
    assert "a=fmtp:111" not in out  # attributes move with their payload type only
    assert "a=rtcp-fb:96 nack\r\n" in out
    assert "a=mid:2\r\n" in out
    assert "m=application 9 UDP/DTLS/SCTP webrtc-datachannel" in out
    assert reg.rewrite(out) == out  # idempotent


def test_nothing_learned_means_nothing_changes() -> None:
    assert PayloadTypeRegistry().rewrite(AIORTC_REOFFER) == AIORTC_REOFFER


def test_learning_our_own_offer_keeps_it_stable() -> None:
    reg = PayloadTypeRegistry()
    reg.learn(AIORTC_REOFFER)
    assert reg.rewrite(AIORTC_REOFFER) == AIORTC_REOFFER
    assert len(reg) > 0


def test_a_later_description_wins_and_evicts() -> None:
    reg = PayloadTypeRegistry()
    reg.learn(AIORTC_REOFFER)  # opus 96
    reg.learn(CHROME_OFFER)  # opus 111, VP8 takes 96
    assert reg.pt_of("audio", "opus", 48000, 2) == 111
    assert reg.pt_of("video", "VP8", 90000) == 96
    reg.clear()
    assert len(reg) == 0


LINES = st.sampled_from(
    [
        "m=audio 9 UDP/TLS/RTP/SAVPF 96 111 0", "m=video 9 RTP/AVP 97 98", "m=application 9 x",
        "a=rtpmap:96 opus/48000/2", "a=rtpmap:111 opus/48000/2", "a=rtpmap:97 VP8/90000",
        "a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=97", "a=fmtp:98 apt=98", "a=rtcp-fb:97 nack",
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:999 x/1", "a=fmtp:96 ", "m=audio", "a=rtpmap:", "",
    ]
)  # fmt: skip


@given(st.lists(LINES, max_size=20), st.lists(LINES, max_size=20))
@settings(max_examples=300, deadline=None)
def test_arbitrary_sdp_never_raises_and_rewrite_is_idempotent(a: list[str], b: list[str]) -> None:
    reg = PayloadTypeRegistry()
    reg.learn("\r\n".join(a))
    once = reg.rewrite("\r\n".join(b))
    assert reg.rewrite(once) == once
    assert once.count("\n") == "\r\n".join(b).count("\n")


def test_media_layout_and_arrange_sections() -> None:
    from metered_realtime.core.sdp import arrange_sections, media_layout

    sdp = (
        "v=0\r\na=group:BUNDLE 0 1 2\r\n"
        "m=audio 9 RTP 96\r\na=mid:0\r\na=x\r\n"
        "m=audio 9 RTP 96\r\na=mid:1\r\n"
        "m=application 9 DTLS webrtc-datachannel\r\na=mid:2\r\n"
    )
    assert media_layout(sdp) == [("audio", "0"), ("audio", "1"), ("application", "2")]
    out = arrange_sections(sdp, [0, 2, 1], ["0", "1", "2"])
    assert media_layout(out) == [("audio", "0"), ("application", "1"), ("audio", "2")]
    assert "a=group:BUNDLE 0 1 2\r\n" in out
    assert out.index("a=x") < out.index("m=application")  # lines travel with their section
    assert arrange_sections(sdp, [0, 1, 2], ["0", "1", "2"]) == sdp
    assert media_layout("v=0\r\nm=audio 9 RTP 0\r\n") == [("audio", None)]
    import pytest

    with pytest.raises(ValueError, match="permute"):
        arrange_sections(sdp, [0, 0, 1], ["a", "b", "c"])
