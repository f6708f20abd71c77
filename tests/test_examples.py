"""Each example runs against `metered-realtime serve`, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve import ELSEWHERE, Serve

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def server() -> Serve:
    s = Serve()
    yield s  # type: ignore[misc]
    s.stop()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_signalling_smoke(server: Serve, backend: str) -> None:
    env = {**os.environ, "METERED_URL": f"ws://127.0.0.1:{server.port}", "METERED_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "signalling_smoke.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ELSEWHERE,
    )
    assert result.returncode == 0, result.stderr
    assert "signalling smoke: ok" in result.stdout
    assert "direct: 'just for you'" in result.stdout


def test_data_channel_echo(server: Serve) -> None:
    env = {**os.environ, "METERED_URL": f"ws://127.0.0.1:{server.port}", "METERED_MESSAGES": "50"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "data_channel_echo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ELSEWHERE,
    )
    assert result.returncode == 0, result.stderr
    assert "50 echoes over a P2P data channel" in result.stdout
    assert "data channel echo: ok" in result.stdout


def test_audio_agent(server: Serve) -> None:
    env = {**os.environ, "METERED_URL": f"ws://127.0.0.1:{server.port}", "METERED_SECONDS": "3"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "audio_agent.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ELSEWHERE,
    )
    assert result.returncode == 0, result.stderr
    assert "audio agent: ok" in result.stdout
    levels = [
        float(line.split(":")[-1].split()[0])
        for line in result.stdout.splitlines()
        if "level from" in line
    ]
    assert levels, result.stdout
    assert max(levels) > -30  # the human's tone, not silence
    heard = next(line for line in result.stdout.splitlines() if line.startswith("human: heard"))
    assert "440" in heard.split("(")[0]  # the agent's first note arrives at its pitch


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_iot_telemetry(server: Serve, backend: str) -> None:
    env = {
        **os.environ,
        "METERED_URL": f"ws://127.0.0.1:{server.port}",
        "METERED_BACKEND": backend,
        "METERED_SENSORS": "6",
        "METERED_READINGS": "30",
        "METERED_RATE": "50",
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "iot_telemetry.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ELSEWHERE,
    )
    assert result.returncode == 0, result.stderr
    assert "180 readings from 6 sensors" in result.stdout
    assert "every sensor in order: True" in result.stdout
    assert "up to 6 devices online at once" in result.stdout
