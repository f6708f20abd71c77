"""The demo page (official JS SDK in Chromium) and the demo's Python agent in one call.

Chat both ways, broadcast and direct, with the right senders; the agent's audio reaches the
browser (inbound-rtp packets, a non-silent level); the browser's fake microphone reaches the
agent (≥ 50 non-silent frames); data-channel echoes; the agent's status channel — in both
politeness orders (peer ids pinned with JWT subs).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from metered_realtime.adapters.server import LocalServer
from metered_realtime.demo import Agent, Speech, page_routes
from tests.browser.conftest import SDK
from tests.wire import default_config, mint_token

pytestmark = pytest.mark.anyio


async def wait_js(page: Any, expr: str, timeout: float = 20) -> None:
    await page.wait_for_function(expr, timeout=timeout * 1000)


@pytest.mark.parametrize(
    ("browser_sub", "agent_sub"),
    [("a-browser", "b-agent"), ("b-browser", "a-agent")],
    ids=["browser-polite", "agent-polite"],
)
async def test_demo_page_and_agent(browser_page: Any, browser_sub: str, agent_sub: str) -> None:
    page = browser_page
    channel = f"demo/{browser_sub}"
    async with LocalServer(
        default_config(), port=0, static=page_routes(SDK, channel=channel)
    ) as server:
        said: list[str] = []
        agent = Agent(
            url=f"ws://127.0.0.1:{server.port}",
            channel=channel,
            token_provider=lambda: mint_token(agent_sub),
            loopback_only=True,
            speech=Speech(use_espeak=False),
            say=said.append,
        )
        stop = asyncio.Event()
        running = asyncio.ensure_future(agent.run(stop))
        try:
            query = f"?token={mint_token(browser_sub)}&autojoin=1"
            await page.goto(f"http://127.0.0.1:{server.port}/demo{query}")
            await wait_js(page, "() => window.demo && window.demo.ready")
            await wait_js(page, f"() => window.demo.log.includes('joined {browser_sub}')")
            await wait_js(page, "() => window.demo.log.some((l) => l.startsWith('dc-open'))")
            # chat: the agent greets directly; the page broadcasts and sends directly
            await wait_js(
                page,
                f"() => window.demo.chat.some((c) => c.from === '{agent_sub[:8]}'"
                " && c.kind === 'direct' && c.text.startsWith('Hi '))",
            )
            await page.evaluate("() => window.demo.sendChat('hello room')")
            await page.evaluate(f"() => window.demo.sendChat('just you', '{agent_sub}')")
            await wait_js(
                page,
                "() => window.demo.chat.some((c) => c.kind === 'broadcast'"
                " && c.text === 'You said: hello room')",
            )
            await wait_js(
                page,
                "() => window.demo.chat.some((c) => c.kind === 'direct'"
                " && c.text === '(direct) You said: just you')",
            )
            assert any(f"chat (broadcast) from {browser_sub[:8]}: hello room" in s for s in said)
            assert any(f"chat (direct) from {browser_sub[:8]}: just you" in s for s in said)
            # the data channel: echoes come back from the agent
            sent = await page.evaluate("() => window.demo.sendDataChannel('p2p hello')")
            assert sent == 1
            await wait_js(page, "() => window.demo.echoes.includes('echo: p2p hello')")
            # audio: the agent's voice in the browser, the browser's microphone at the agent
            await wait_js(page, "() => window.demo.log.includes('track audio agent-voice')")
            await wait_js(
                page,
                "async () => { const a = await window.demo.inboundAudio();"
                " return a.packets > 50 && a.level > 0.01; }",
            )
            await asyncio.wait_for(_until(lambda: agent.stats.loud_frames >= 50), 20)
            # the agent reports what it hears over its own data channel
            await wait_js(page, "() => window.demo.heard && window.demo.heard.frames > 0")
            heard = json.loads(await page.evaluate("() => JSON.stringify(window.demo.heard)"))
            assert heard["level"] is not None
            assert heard["level"] > -60
            assert browser_sub in agent.stats.peers
            assert not [line for line in page.logs if line.startswith("pageerror")]
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.05)
