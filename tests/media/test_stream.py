"""MediaStream: ids, track bookkeeping, duck-typed tracks; the media package's exports."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack

from metered_realtime.media import MediaStream, StreamMetadata
from metered_realtime.media.stream import MAX_STREAM_ID_LENGTH


@dataclass(eq=False)
class FakeTrack:
    """Anything with ``.kind`` and ``.id`` is a track to MediaStream."""

    kind: str
    id: str


def fake(kind: str, track_id: str) -> MediaStreamTrack:
    return cast(MediaStreamTrack, FakeTrack(kind, track_id))


def test_default_id_is_32_random_hex_chars() -> None:
    ids = {MediaStream().id for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_explicit_id_is_kept() -> None:
    assert MediaStream(id="agent-voice").id == "agent-voice"
    assert MediaStream(id="x" * MAX_STREAM_ID_LENGTH).id == "x" * 256
    assert MediaStream(id="ünïcode-ok").id == "ünïcode-ok"


@pytest.mark.parametrize(
    "bad",
    ["", " ", "a b", "a\tb", "line\r\nbreak", "nul\x00", "x" * 257, "trailing\n", "nbsp\u00a0"],
)
def test_invalid_ids_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="MediaStream id"):
        MediaStream(id=bad)


@pytest.mark.parametrize("bad", [123, b"bytes", ["list"]])
def test_non_string_id_raises_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match="must be a str"):
        MediaStream(id=bad)


def test_tracks_by_kind_in_insertion_order() -> None:
    a1, v1, a2 = fake("audio", "a1"), fake("video", "v1"), fake("audio", "a2")
    stream = MediaStream([a1, v1], id="s")
    stream.add_track(a2)
    assert stream.get_tracks() == [a1, v1, a2]
    assert stream.get_audio_tracks() == [a1, a2]
    assert stream.get_video_tracks() == [v1]


def test_real_aiortc_tracks() -> None:
    audio, video = AudioStreamTrack(), VideoStreamTrack()
    stream = MediaStream((audio, video))
    assert stream.get_audio_tracks() == [audio]
    assert stream.get_video_tracks() == [video]


def test_add_twice_is_a_no_op_and_get_tracks_returns_a_copy() -> None:
    track = fake("audio", "a")
    stream = MediaStream([track, track])
    stream.add_track(track)
    assert stream.get_tracks() == [track]
    stream.get_tracks().clear()
    assert stream.get_tracks() == [track]


def test_another_track_with_the_same_id_is_refused() -> None:
    stream = MediaStream([fake("audio", "same")])
    with pytest.raises(ValueError, match="same"):
        stream.add_track(fake("video", "same"))
    assert len(stream.get_tracks()) == 1


def test_remove_track() -> None:
    a, b = fake("audio", "a"), fake("video", "b")
    stream = MediaStream([a, b])
    stream.remove_track(a)
    assert stream.get_tracks() == [b]
    stream.remove_track(a)  # absent: no-op
    stream.remove_track(fake("video", "b"))  # equal id, different object: not this track
    assert stream.get_tracks() == [b]
    stream.remove_track(b)
    assert stream.get_tracks() == []
    stream.add_track(a)  # can come back
    assert stream.get_audio_tracks() == [a]


def test_a_trackless_object_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"\.kind and \.id"):
        MediaStream([cast(MediaStreamTrack, object())])
    with pytest.raises(TypeError):
        MediaStream().add_track(cast(MediaStreamTrack, FakeTrack("audio", cast(str, 5))))


def test_repr_names_id_and_tracks() -> None:
    stream = MediaStream([fake("audio", "a")], id="s")
    assert repr(stream) == "MediaStream(id='s', tracks=[audio:a])"


def test_stream_metadata_is_a_plain_dict() -> None:
    metadata: StreamMetadata = {"role": "voice", "label": "agent"}
    assert type(metadata) is dict
    assert StreamMetadata == dict[str, Any]


def test_media_package_exports() -> None:
    import metered_realtime.media as media
    from metered_realtime.media.audio import AudioSource
    from metered_realtime.media.frames import iter_frames

    assert set(media.__all__) == {
        "AudioSource",
        "MediaSourceError",
        "MediaStream",
        "StreamMetadata",
        "from_camera",
        "from_file",
        "from_microphone",
        "from_rtsp",
        "iter_frames",
        "screen_share",
    }
    assert media.AudioSource is AudioSource
    assert media.iter_frames is iter_frames
    assert "AudioSource" in dir(media)
    with pytest.raises(AttributeError):
        _ = media.NoSuchName
