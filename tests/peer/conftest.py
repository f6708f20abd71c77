"""Fixtures of the peer tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from metered_realtime.adapters.server import LocalServer
from tests.wire import default_config


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    """A local server on a free port for the test."""
    async with LocalServer(default_config(), port=0) as srv:
        yield srv
