"""The snippets of docs/ run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from metered_realtime.core import Connected, Message
from metered_realtime.walkthrough import ScriptedPeer

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _python_blocks(name: str) -> list[str]:
    text = (DOCS / name).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_core_driver_snippet_runs_against_a_scripted_peer() -> None:
    (snippet,) = [b for b in _python_blocks("core.md") if "def drive(" in b]
    assert len(snippet.strip().splitlines()) <= 35
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/core.md", "exec"), namespace)
    wire: list[str] = []
    peer = ScriptedPeer(on_frame=wire.append)
    peer.start()
    events = namespace["drive"](f"ws://127.0.0.1:{peer.port}", "pk_dev_local")
    peer.join(timeout=10)
    assert not peer.is_alive()
    assert any(isinstance(e, Connected) for e in events)
    (msg,) = [e for e in events if isinstance(e, Message)]
    assert msg.data == {"echo": {"hello": "core"}}
    assert [f[:22] for f in wire] == ['{"type":"subscribe","c', '{"type":"publish","cha']


def test_frames_snippet_output_is_true() -> None:
    (snippet,) = [b for b in _python_blocks("core.md") if "PublishFrame(" in b]
    from metered_realtime.core.frames import PublishFrame, decode_server_frame

    lines = snippet.splitlines()
    shown = next(line for line in lines if line.startswith("# '{"))[2:]
    assert repr(PublishFrame("demo/lobby", {"text": "héllo"}, "r-1").encode()) == shown
    assert (
        repr(decode_server_frame('{"type":"ack","requestId":"r-1"}'))
        == "AckFrame(request_id='r-1')"
    )


def test_walkthrough_command_succeeds(capsys: Any) -> None:
    from metered_realtime.cli import main

    assert main(["walkthrough"]) == 0
    out = capsys.readouterr().out
    assert "message received: True" in out
    assert "pk_dev_local" not in out  # the credential never reaches the output


def test_signalling_snippets_run_against_a_server(capsys: Any) -> None:
    from tests.serve import Serve

    blocks = [b for b in _python_blocks("signalling.md") if "anyio.run(main" in b]
    assert len(blocks) == 3
    server = Serve()
    try:
        for block in blocks:
            code = block.replace("ws://127.0.0.1:8787", f"ws://127.0.0.1:{server.port}")
            exec(compile(code, "docs/signalling.md", "exec"), {"__name__": "__main__"})
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert "alerts/critical {'sensor': 'T-12', 'value': 92}" in out
    assert "Direct(sender_peer_id=" in out
    assert "here: []" in out
    assert out.count("joined: ['") == 1
    assert out.count("left: ['") == 1
