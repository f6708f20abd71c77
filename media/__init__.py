"""Media helpers on PyAV and aiortc (installed with the ``webrtc`` extra)."""
