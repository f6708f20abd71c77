"""Runtime adapters: anyio drivers that run the sans-IO core over real sockets (asyncio and trio)."""
