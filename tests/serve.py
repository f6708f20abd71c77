"""`metered-realtime serve` as a subprocess on a free port, for tests that need a real server."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time

CLI = [sys.executable, "-m", "metered_realtime"]
ELSEWHERE = tempfile.gettempdir()  # keep the checkout's metered_realtime/ off sys.path


class Serve:
    """A `metered-realtime serve` subprocess on a free port."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ELSEWHERE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.banner = self._read_until(re.compile(rb"listening on ws://127\.0\.0\.1:(\d+)"), 10.0)
        match = re.search(rb"127\.0\.0\.1:(\d+)", self.banner)
        assert match, self.banner
        self.port = int(match.group(1))

    def _read_until(self, pattern: re.Pattern[bytes], timeout: float) -> bytes:
        assert self.proc.stdout is not None
        out = b""
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while not pattern.search(out):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no {pattern.pattern!r} in time; got {out!r}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"serve exited: {out!r} {self.stderr()!r}")
            out += chunk
        return out

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=5)
        return rc, self.stderr()

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode()
