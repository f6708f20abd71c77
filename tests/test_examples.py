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


def run_example(name: str, server: Serve, timeout: float = 120, **env: str) -> str:
    """Run ``examples/<name>`` against ``server`` with extra ``METERED_*`` env; its stdout.

    A non-zero exit fails the test with the example's stderr.
    """
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "METERED_URL": f"ws://127.0.0.1:{server.port}", **env},
        cwd=ELSEWHERE,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_signalling_smoke(server: Serve, backend: str) -> None:
    out = run_example("signalling_smoke.py", server, timeout=60, METERED_BACKEND=backend)
    assert "signalling smoke: ok" in out
    assert "direct: 'just for you'" in out


def test_data_channel_echo(server: Serve) -> None:
    out = run_example("data_channel_echo.py", server, METERED_MESSAGES="50")
    assert "50 echoes over a P2P data channel" in out
    assert "data channel echo: ok" in out


def test_audio_agent(server: Serve) -> None:
    out = run_example("audio_agent.py", server, METERED_SECONDS="3")
    assert "audio agent: ok" in out
    levels = [
        float(line.split(":")[-1].split()[0]) for line in out.splitlines() if "level from" in line
    ]
    assert levels, out
    assert max(levels) > -30  # the human's tone, not silence
    heard = next(line for line in out.splitlines() if line.startswith("human: heard"))
    assert "440" in heard.split("(")[0]  # the agent's first note arrives at its pitch


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_iot_telemetry(server: Serve, backend: str) -> None:
    out = run_example(
        "iot_telemetry.py",
        server,
        METERED_BACKEND=backend,
        METERED_SENSORS="6",
        METERED_READINGS="30",
        METERED_RATE="50",
    )
    assert "180 readings from 6 sensors" in out
    assert "every sensor in order: True" in out
    assert "up to 6 devices online at once" in out
