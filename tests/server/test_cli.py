"""`metered-realtime serve` and `metered-realtime token` as a user runs them."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from metered_realtime.core.jwt import verify_hs256
from tests.netclient import WsClient, http_get
from tests.serve import CLI, ELSEWHERE, Serve


@pytest.fixture
def serve_dev() -> Iterator[Serve]:
    s = Serve()
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ELSEWHERE, timeout=30)


def test_serve_starts_with_the_dev_key_and_stops_gracefully(serve_dev: Serve) -> None:
    # printed with ready-to-paste lines, right after the listening line
    banner = serve_dev.banner
    if b"Browser: " not in banner:  # the lines may or may not have come in the same read
        banner += serve_dev._read_until(re.compile(rb"Browser: "), 5.0)
    assert b"development key: pk_dev_local" in banner

    async def session() -> None:
        status, _ = await http_get(serve_dev.port, "/healthz")
        assert status == 200
        c = await WsClient.open(serve_dev.port)
        assert (await c.recv())["type"] == "welcome"
        started = time.monotonic()
        serve_dev.proc.send_signal(signal.SIGTERM)
        assert await c.recv() == {"type": "going_away", "retryAfterMs": 1000}
        assert await c.wait_closed() == 1001
        assert time.monotonic() - started < 5.0  # 2 s is the design bound; CI machines vary

    anyio.run(session)
    assert serve_dev.proc.wait(timeout=5) == 0


def test_dev_key_is_refused_on_a_non_loopback_host() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "refusing" in result.stderr
    assert "listening" not in result.stdout


def test_configured_keys_and_tokens_and_quiet_logs() -> None:
    secret = "s3cr3t_value_never_logged"
    s = Serve("--key", "pk_custom_key_value:subscribe,publish", "--secret", f"kid1={secret}")
    try:
        assert b"pk_dev_local" not in s.banner
        minted = run_cli(
            "token",
            "--secret",
            f"kid1={secret}",
            "--sub",
            "agent-1",
            "--channel",
            "demo/*",
            "--perm",
            "subscribe",
            "--perm",
            "send",
            "--peer-metadata",
            '{"role":"bot"}',
        )
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        claims = verify_hs256(token, {"kid1": secret}, time.time())
        assert claims.sub == "agent-1"
        assert claims.peer_metadata == {"role": "bot"}

        async def session() -> None:
            dev = await WsClient.open(s.port)
            assert await dev.wait_closed() == 4001  # the dev key is off once keys are configured
            keyed = await WsClient.open(s.port, "/v1?key=pk_custom_key_value")
            assert (await keyed.recv())["type"] == "welcome"
            await keyed.send({"type": "send", "to": "x", "data": 1, "requestId": "r"})
            assert (await keyed.recv())["code"] == "action_not_permitted"
            jwt = await WsClient.open(s.port, f"/v1?token={token}")
            assert (await jwt.recv())["peerId"] == "agent-1"
            for c in (keyed, jwt):
                await c.close()

        anyio.run(session)
        rc, stderr = s.stop()
        assert rc == 0
        assert "connect peer=agent-1" in stderr
        for leaked in ("pk_custom_key_value", secret, token[:30]):
            assert leaked not in stderr
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_config_file_in_the_protocol_model(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        """
app = "local"
iceServers = [{ urls = "stun:127.0.0.1:3478" }]

[[publishableKeys]]
key = "pk_test_lobby"
channelPatterns = ["demo/**"]
actions = ["subscribe", "publish", "presence", "send"]

[limits]
maxMessageSize = 4096
maxFrameBytes = 4096
"""
    )
    s = Serve("--config", str(config), "--idle-timeout", "30")
    try:

        async def session() -> None:
            c = await WsClient.open(s.port, "/v1?key=pk_test_lobby")
            welcome = await c.recv()
            assert welcome["maxMessageSize"] == 4096
            assert welcome["metadata"] == {"iceServers": [{"urls": "stun:127.0.0.1:3478"}]}
            await c.send({"type": "subscribe", "channel": "other", "requestId": "1"})
            assert (await c.recv())["code"] == "channel_not_authorized"
            await c.close()

        anyio.run(session)
    finally:
        s.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--rate-limit", "fast"], "--rate-limit"),
        (["serve", "--secret", "nokid"], "KID=SECRET"),
        (["serve", "--key", "pk:teleport"], "unknown permission"),
        (["serve", "--config", "/nonexistent.toml"], "cannot read config file"),
        (["serve", "--tls-cert", "x.pem"], "--tls-cert and --tls-key"),
        (
            ["token", "--secret", "k=s", "--sub", "a b\x01", "--channel", "c", "--perm", "send"],
            "--sub",
        ),
        (
            [
                "token",
                "--secret",
                "k=s",
                "--sub",
                "a",
                "--channel",
                "c",
                "--perm",
                "send",
                "--peer-metadata",
                "[1]",
            ],
            "object",
        ),
    ],
)
def test_bad_flags_are_clear_errors(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
