"""The official browser SDK (@metered-ca/realtime 1.2.0) against our server, unchanged."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from metered_realtime.adapters.server import LocalServer
from metered_realtime.core.jwt import sign_hs256
from tests.browser.conftest import SDK, static_routes
from tests.netclient import WsClient
from tests.wire import KID, SECRET, default_config

pytestmark = pytest.mark.anyio

PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>js sdk</title>
<script type="module">
import { SignallingClient } from "/sdk/index.mjs";
window.seen = [];
window.ready = true;
window.connect = async (opts) => {
  const url = location.origin.replace("http", "ws");
  const cfg = opts.token
    ? { tokenProvider: async () => opts.token, url }
    : { apiKey: opts.apiKey, url };
  const client = new SignallingClient(cfg);
  const names = ["connected", "message", "direct", "presence", "server-error", "disconnected"];
  for (const name of names) {
    client.on(name, (ev) => window.seen.push({ name, ev: JSON.parse(JSON.stringify(ev)) }));
  }
  await client.connect();
  window.client = client;
  return window.seen.find((e) => e.name === "connected").ev;
};
window.call = async (method, ...args) => {
  try { await window.client[method](...args); return "ok"; }
  catch (err) { return "error:" + (err.name || "") + ":" + (err.code || err.message); }
};
</script>
"""


def _routes() -> Any:
    return static_routes(
        {
            "/jsclient.html": (PAGE, "text/html; charset=utf-8"),
            "/sdk/index.mjs": (SDK.read_bytes(), "text/javascript"),
        }
    )


async def _wait_seen(page: Any, name: str, predicate: str = "true") -> Any:
    """The first event ``name`` whose ``ev`` satisfies the JS ``predicate``."""
    test = f"(({{ev}}) => {predicate})(e)"
    fn = f"() => window.seen.find((e) => e.name === {json.dumps(name)} && {test})"
    handle = await page.wait_for_function(fn, timeout=10_000)
    return await handle.json_value()


@pytest.mark.parametrize("credential", ["key", "token"])
async def test_js_sdk_pubsub_direct_and_presence_with_a_python_peer(
    browser_page: Any, credential: str
) -> None:
    page = browser_page
    async with LocalServer(default_config(), port=0, static=_routes()) as server:
        await page.goto(f"http://127.0.0.1:{server.port}/jsclient.html")
        await page.wait_for_function("() => window.ready === true", timeout=10_000)
        if credential == "key":
            opts: dict[str, Any] = {"apiKey": "pk_dev_local"}
        else:
            claims = {
                "sub": "browser-1",
                "exp": int(time.time()) + 600,
                "channels": ["demo/**"],
                "permissions": ["subscribe", "publish", "presence", "send"],
                "peerMetadata": {"name": "Browser"},
            }
            opts = {"token": sign_hs256(claims, SECRET, KID)}
        welcome = await page.evaluate("(opts) => window.connect(opts)", opts)
        browser_id = welcome["peerId"]
        assert (
            welcome["expiresAt"] is None
            if credential == "key"
            else isinstance(welcome["expiresAt"], int)
        )
        if credential == "token":
            assert browser_id == "browser-1"

        py = await WsClient.open(server.port)
        py_id = (await py.recv())["peerId"]
        await py.send(
            {
                "type": "subscribe",
                "channel": "demo/lobby",
                "requestId": "s",
                "includeSenderMetadata": True,
            }
        )
        await py.recv_type("presence")

        assert await page.evaluate("() => window.call('subscribe', 'demo/lobby')") == "ok"
        # presence both ways: the browser's snapshot lists Python; Python sees the browser join
        snap = await _wait_seen(page, "presence", "ev.joined.length > 0")
        assert [p["peerId"] for p in snap["ev"]["joined"]] == [py_id]
        joined = await py.recv_type("presence")
        assert joined["joined"][0]["peerId"] == browser_id
        if credential == "token":
            assert joined["joined"][0]["metadata"] == {"name": "Browser"}

        # browser → Python, broadcast and direct
        assert (
            await page.evaluate(
                "() => window.call('publish', 'demo/lobby', {hello: 'from js', n: 1})"
            )
            == "ok"
        )
        msg = await py.recv_type("message")
        assert (msg["from"], msg["data"]) == (browser_id, {"hello": "from js", "n": 1})
        if credential == "token":
            assert msg["fromMetadata"] == {"name": "Browser"}
        assert await page.evaluate("(to) => window.call('send', to, 'psst é')", py_id) == "ok"
        direct = await py.recv_type("direct")
        assert (direct["from"], direct["data"]) == (browser_id, "psst é")

        # Python → browser
        await py.send(
            {
                "type": "publish",
                "channel": "demo/lobby",
                "data": {"from": "python"},
                "requestId": "p",
            }
        )
        got = await _wait_seen(page, "message", "ev.data && ev.data.from === 'python'")
        assert got["ev"]["from"] == py_id
        await py.send({"type": "send", "to": browser_id, "data": [1, 2, 3], "requestId": "d"})
        got = await _wait_seen(page, "direct", "Array.isArray(ev.data)")
        assert got["ev"]["data"] == [1, 2, 3]

        # a correlated error surfaces as a rejected call; the connection stays up
        assert (await page.evaluate("() => window.call('send', 'nobody-here', 1)")).startswith(
            "error:"
        )
        # Python leaves: the browser sees it in presence
        await py.close()
        left = await _wait_seen(page, "presence", "ev.left.length > 0")
        assert left["ev"]["left"][0]["peerId"] == py_id
        assert await page.evaluate("() => window.client.state") == "connected"
        assert not [line for line in page.logs if line.startswith("pageerror")]


async def test_js_sdk_sees_auth_failures_as_close_codes(browser_page: Any) -> None:
    page = browser_page
    async with LocalServer(default_config(), port=0, static=_routes()) as server:
        await page.goto(f"http://127.0.0.1:{server.port}/jsclient.html")
        await page.wait_for_function("() => window.ready === true", timeout=10_000)
        result = await page.evaluate(
            "() => window.connect({apiKey: 'pk_wrong'})"
            ".then(() => 'connected', (e) => e.name + ':' + e.closeCode)"
        )
        assert result == "SignallingConnectError:4001"
