"""Headless Chromium (Debian's package) driven by Playwright, and the official JS SDK from npm."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "web" / "node_modules" / "@metered-ca" / "realtime" / "dist" / "index.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def _missing() -> str | None:
    if not SDK.is_file():
        return f"{SDK} is missing: run `npm ci --prefix web` (the set-up commands do)"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: `apt-get install chromium` (the set-up commands do)"
    return None


@pytest.fixture
def anyio_backend() -> str:
    """Playwright's async API runs on asyncio."""
    return "asyncio"


@pytest.fixture
async def browser_page(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh page in a fresh Chromium profile; console output is collected on ``page.logs``."""
    problem = _missing()
    if problem:
        pytest.fail(problem)  # a set-up problem, never a silent skip
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            logs: list[str] = []
            page.on("console", lambda msg: logs.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda err: logs.append(f"pageerror: {err}"))
            page.logs = logs
            yield page
        finally:
            await context.close()
            shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def static_routes(
    routes: dict[str, tuple[bytes, str]],
) -> Callable[[Any], tuple[int, bytes, str] | None]:
    """A ``LocalServer`` static handler for fixed paths (the SDK is served as JavaScript)."""

    def handler(request: Any) -> tuple[int, bytes, str] | None:
        if request.method != "GET" or request.path not in routes:
            return None
        body, content_type = routes[request.path]
        return 200, body, content_type

    return handler
