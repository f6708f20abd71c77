"""`metered-realtime demo`: the headless run end to end, the page routes, and its refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from metered_realtime.adapters.server import LocalServer
from metered_realtime.demo import find_sdk, page_routes
from tests.serve import ELSEWHERE
from tests.wire import default_config

ROOT = Path(__file__).resolve().parents[1]
SDK = ROOT / "web" / "node_modules" / "@metered-ca" / "realtime" / "dist" / "index.mjs"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metered_realtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ELSEWHERE,
        env={**os.environ, **(env or {})},
    )


def test_headless_demo_exits_0_with_a_summary() -> None:
    assert SDK.is_file(), "run `npm ci --prefix web` (scripts/setup.sh does)"
    result = run_cli("demo", "--headless", "--seconds", "5", "--sdk", str(SDK), "--no-speech")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "demo: ok" in out
    summary = next(line for line in out.splitlines() if line.startswith("demo summary:"))
    assert "data channel 20 echoes" in summary
    assert "pk_dev_local" not in result.stderr  # the key is only printed where meant


def test_interactive_demo_prints_the_url_and_stops_after_seconds() -> None:
    result = run_cli("demo", "--seconds", "2", "--sdk", str(SDK), "--no-speech")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/demo in a browser" in result.stdout
    assert "open http://127.0.0.1:" in result.stdout
    assert result.stdout.rstrip().endswith("demo: stopped")


def test_missing_sdk_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import metered_realtime.demo
    from metered_realtime.cli import main

    monkeypatch.setattr(metered_realtime.demo, "find_sdk", lambda _explicit: None)
    assert main(["demo", "--headless"]) == 2
    assert "npm ci --prefix web" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "loopback hosts only"),
        (["--port", "70000"], "--port"),
        (["--seconds", "0"], "--seconds"),
    ],
)
def test_refusals(args: list[str], message: str) -> None:
    result = run_cli("demo", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_find_sdk_prefers_an_explicit_path(tmp_path: Path) -> None:
    sdk = tmp_path / "index.mjs"
    sdk.write_text("export {};")
    assert find_sdk(sdk) == sdk
    assert find_sdk(None) in (None, SDK)


@pytest.mark.anyio
async def test_page_routes_serve_the_page_config_and_sdk(tmp_path: Path) -> None:
    from tests.netclient import http_get, http_response

    sdk = tmp_path / "index.mjs"
    sdk.write_bytes(b"export const MeteredPeer = 1;")
    async with LocalServer(
        default_config(), port=0, static=page_routes(sdk, channel="demo/x")
    ) as server:
        raw: list[Any] = []
        for path in ("/demo", "/demo/app.js", "/demo/config.json", "/sdk/index.mjs", "/nope"):
            raw.append(await http_get(server.port, path))
        _status, head, _body = await http_response(server.port, "/sdk/index.mjs")
    statuses = [status for status, _ in raw]
    assert statuses == [200, 200, 200, 200, 404]
    assert b"<title>metered-realtime demo" in raw[0][1]
    assert b'from "/sdk/index.mjs"' in raw[1][1]
    assert raw[2][1] == b'{"channel": "demo/x", "key": "pk_dev_local"}'
    assert raw[3][1] == b"export const MeteredPeer = 1;"
    assert b"content-type: text/javascript" in head.lower()


def test_speech_uses_espeak_ng_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in espeak-ng on PATH (writes a 22,050 Hz mono WAV): the agent speaks with it."""
    from metered_realtime.demo import Speech

    fake = tmp_path / "espeak-ng"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import io, sys, wave\n"
        "buf = io.BytesIO()\n"
        "with wave.open(buf, 'wb') as w:\n"
        "    w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)\n"
        "    w.writeframes(b'\\x01\\x02' * 2205)\n"
        "sys.stdout.buffer.write(buf.getvalue())\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    speech = Speech()
    assert speech.engine == "espeak-ng"
    assert speech.rate == 22_050
    assert speech.say("hello") == b"\x01\x02" * 2205
    assert Speech(use_espeak=False).engine.startswith("tones")
    chime = Speech(use_espeak=False).say("hello")
    assert len(chime) > 16_000  # ~0.6 s of 16 kHz s16
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(3)\n")  # a broken install
    assert len(Speech().say("hello")) > 16_000  # falls back to the chime, no crash
