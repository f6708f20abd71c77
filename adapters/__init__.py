"""Runtime adapters: anyio drivers running the sans-IO core over real sockets (asyncio, trio)."""
