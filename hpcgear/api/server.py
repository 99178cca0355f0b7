"""Run the ASGI app under uvicorn (one process; blocking handlers run in a thread pool)."""

from __future__ import annotations

from typing import Any


def run_server(app: Any, *, host: str, port: int, threads: int = 16) -> None:
    import anyio.to_thread
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", proxy_headers=True, server_header=False
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        await server.serve()

    anyio.run(main)
