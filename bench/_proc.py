"""Helpers shared by the benchmarks: reading a subprocess's output, pinning CPUs."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time


def read_match(
    proc: subprocess.Popen[bytes], pattern: bytes, timeout: float
) -> re.Match[bytes] | None:
    """Read ``proc``'s stdout until ``pattern`` matches, EOF or ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
            found = re.search(pattern, buf)
            if found:
                return found
        elif proc.poll() is not None:
            return None
    return None


def pin_cpus(server_pid: int) -> tuple[int, int] | None:
    """Put the server on one CPU and this process on another; ``(client, server)`` or None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(server_pid, {cpus[1]})
    os.sched_setaffinity(0, {cpus[0]})
    return cpus[0], cpus[1]
