"""Write seed corpora for the fuzzers from tests/protocol-vectors.json.

Usage: python fuzz/make_corpus.py FRAMES_DIR [CLIENT_DIR [WSFRAME_DIR]]

* FRAMES_DIR (for fuzz_frames.py): every server frame text, client frame text and robustness
  text of PROTOCOL §10, one per file, plus a few hostile shapes.
* CLIENT_DIR (for fuzz_client.py): the same server texts as raw WebSocket bytes as a server
  sends them (unmasked text frames), alone, after a welcome, fragmented, and as one long session.
* WSFRAME_DIR (for fuzz_wsframe.py): a role byte (even: server → client, odd: client → server)
  then WebSocket bytes: the client seeds' sessions, the client frame vectors masked, fragments
  with control frames between them, every close shape, and a few protocol errors.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

VECTORS_PATH = Path(__file__).resolve().parent.parent / "tests" / "protocol-vectors.json"

# JS-style raw UTF-8 (the server must accept it; our client emits \u escapes)
RAW_UTF8 = '{"type":"message","channel":"d\u00e9mo","from":"p","data":"\u2713"}'.encode()

TEXT, BINARY, CLOSE, PING, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0x0


def load_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return data


def ws_frame(payload: bytes, opcode: int = TEXT, fin: bool = True) -> bytes:
    """One unmasked server → client WebSocket frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def fragmented(payload: bytes, parts: int = 3) -> bytes:
    """``payload`` as a text message split over ``parts`` frames (continuations after the first)."""
    step = max(1, len(payload) // parts)
    chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
    out = b""
    for i, chunk in enumerate(chunks):
        out += ws_frame(chunk, TEXT if i == 0 else CONTINUATION, fin=i == len(chunks) - 1)
    return out


def server_texts(vectors: dict[str, Any]) -> dict[str, str]:
    out = {v["id"]: v["text"] for v in vectors["server_frames"]}
    out.update({v["id"]: v["text"] for v in vectors["robustness"]})
    return out


def frame_seeds(vectors: dict[str, Any]) -> dict[str, bytes]:
    seeds = {f"server-{k}": v.encode("utf-8") for k, v in server_texts(vectors).items()}
    seeds.update(
        {f"client-{v['id']}": v["bytes"].encode("utf-8") for v in vectors["client_frames"]}
    )
    seeds.update(
        {
            "deep": b"[" * 2000,
            "bigint": b"1" * 5000,
            "overflow": b'{"type":"message","channel":"c","from":"p","data":1e400}',
            "nan": b'{"type":"welcome","peerId":"p","expiresAt":NaN,"serverTime":1}',
            "surrogate": b'{"type":"subscribe","channel":"\\ud800","requestId":"\\udfff"}',
            "reserved": b'{"type":"publish","channel":"_SYSTEM/x","data":null,"requestId":"r"}',
            "raw-utf8": RAW_UTF8,
        }
    )
    return seeds


def client_seeds(vectors: dict[str, Any]) -> dict[str, bytes]:
    texts = {k: v.encode("utf-8") for k, v in server_texts(vectors).items()}
    welcome = ws_frame(texts["TV-14"])
    seeds: dict[str, bytes] = {}
    for vid, payload in texts.items():
        seeds[f"single-{vid}"] = ws_frame(payload)
        seeds[f"welcome-{vid}"] = welcome + ws_frame(payload)
        seeds[f"welcome-frag-{vid}"] = welcome + fragmented(payload)
    everything = b"".join(ws_frame(p) for p in texts.values())
    seeds["session"] = welcome + everything
    seeds["session-ping"] = welcome + ws_frame(b"hb", PING) + everything
    seeds["session-binary"] = welcome + ws_frame(b"\x00\x01", BINARY) + everything
    seeds["session-close"] = (
        welcome + everything + ws_frame(struct.pack("!H", 1001) + b"bye", CLOSE)
    )
    seeds["session-4001"] = welcome + ws_frame(struct.pack("!H", 4001) + b"token", CLOSE)
    seeds["big-frame"] = welcome + ws_frame(b'{"type":"pong","x":"' + b"a" * 70_000 + b'"}')
    small_cap = (
        b'{"type":"welcome","peerId":"p","expiresAt":null,"serverTime":1,"maxMessageSize":8}'
    )
    seeds["small-cap"] = ws_frame(small_cap) + everything
    return seeds


def masked(payload: bytes, opcode: int = TEXT, fin: bool = True) -> bytes:
    """One client → server frame, masked with a fixed key."""
    key = b"\x37\xfa\x21\x3d"
    head = bytearray(ws_frame(b"", opcode, fin)[:1])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(head) + key + body


def wsframe_seeds(vectors: dict[str, Any]) -> dict[str, bytes]:
    to_client, to_server = b"\x00", b"\x01"
    seeds = {f"s2c-{k}": to_client + v for k, v in client_seeds(vectors).items() if len(v) < 4096}
    texts = [v["bytes"].encode("utf-8") for v in vectors["client_frames"]]
    seeds["c2s-session"] = to_server + b"".join(masked(t) for t in texts)
    first = texts[0]
    seeds["c2s-fragments"] = to_server + (
        masked(first[:5], TEXT, fin=False)
        + masked(b"hb", PING)
        + masked(first[5:9], CONTINUATION, fin=False)
        + masked(first[9:], CONTINUATION)
    )
    seeds["c2s-raw-utf8"] = (
        to_server + masked(RAW_UTF8[:40], TEXT, False) + masked(RAW_UTF8[40:], CONTINUATION)
    )
    seeds["c2s-binary"] = to_server + masked(b"\x00\x01\x02", BINARY)
    seeds["c2s-pong"] = to_server + masked(b"p", 0xA)
    for code in (1000, 1001, 1005, 1014, 2999, 3000, 4001, 4999, 5000):
        seeds[f"c2s-close-{code}"] = to_server + masked(struct.pack("!H", code) + b"bye", CLOSE)
    seeds["c2s-close-empty"] = to_server + masked(b"", CLOSE)
    seeds["c2s-close-bad-utf8"] = to_server + masked(struct.pack("!H", 1000) + b"\xff", CLOSE)
    seeds["c2s-len16"] = to_server + masked(b"x" * 300)
    seeds["c2s-len64"] = to_server + masked(b"y" * 70_000)[:14] + b"y" * 64
    seeds["s2c-rsv1"] = to_client + bytes([0xC1, 0x01]) + b"x"
    seeds["s2c-masked"] = to_client + masked(b"x")
    seeds["s2c-bad-utf8"] = to_client + ws_frame(b"\xed\xa0\x80")
    seeds["s2c-long-ping"] = to_client + bytes([0x89, 126, 0, 126]) + b"x" * 126
    return seeds


def write(directory: Path, seeds: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        digest = hashlib.sha1(data).hexdigest()[:12]
        (directory / f"seed-{name}-{digest}").write_bytes(data)


def main(argv: list[str]) -> int:
    if not 2 <= len(argv) <= 4:
        print(__doc__, file=sys.stderr)
        return 2
    vectors = load_vectors()
    write(Path(argv[1]), frame_seeds(vectors))
    if len(argv) >= 3:
        write(Path(argv[2]), client_seeds(vectors))
    if len(argv) == 4:
        write(Path(argv[3]), wsframe_seeds(vectors))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
