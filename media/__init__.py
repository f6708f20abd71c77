"""Media helpers on PyAV and aiortc (installed with the ``webrtc`` extra).

Names load on first use, so ``import metered_realtime.media`` works without the extra; using
``AudioSource``, ``iter_frames`` or a source helper (``from_file``, ``from_rtsp``,
``from_camera``, ``from_microphone``, ``screen_share``: see ``sources``) without it raises an
``ImportError`` that names the fix.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metered_realtime.media.stream import MediaStream, StreamMetadata

if TYPE_CHECKING:
    from metered_realtime.media.audio import AudioSource
    from metered_realtime.media.frames import iter_frames
    from metered_realtime.media.sources import (
        MediaSourceError,
        from_camera,
        from_file,
        from_microphone,
        from_rtsp,
        screen_share,
    )

__all__ = [
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
]

_SOURCES = [
    "MediaSourceError",
    "from_camera",
    "from_file",
    "from_microphone",
    "from_rtsp",
    "screen_share",
]
_LAZY = {
    "AudioSource": "metered_realtime.media.audio",
    "iter_frames": "metered_realtime.media.frames",
    **dict.fromkeys(_SOURCES, "metered_realtime.media.sources"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metered_realtime.media' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ImportError(
            f'{name} needs aiortc and PyAV: pip install ".[webrtc]" (from the source tree) ({exc})'
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
