"""engines/openai_http.py without an engine: a request that request_timeout cancels closes its connection."""

from __future__ import annotations

import asyncio

import pytest

from modelserve.errors import RequestTimeout

from .support.runtimes import sleepy


def test_a_timed_out_engine_request_is_closed_so_the_engine_can_abort_it():
    """Engine runtimes await an aiohttp request: cancelling it closes the connection (vLLM aborts a request
    whose client went away). Work already in a thread (sklearn, MLflow, transformers) cannot be interrupted:
    it runs to its end and its result is dropped."""
    from modelserve.engines.openai_http import OpenAIUpstream
    from modelserve.errors import Unavailable

    rt = sleepy(0.3)

    async def run():
        closed = asyncio.Event()

        async def engine(reader, writer):  # reads the request, never answers, notes the client leaving
            await reader.readuntil(b"\r\n\r\n")
            while await reader.read(1024):
                pass
            closed.set()
            writer.close()

        server = await asyncio.start_server(engine, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        upstream = OpenAIUpstream("m", lambda: f"http://127.0.0.1:{port}", lambda exc: Unavailable(str(exc)))
        try:
            with pytest.raises(RequestTimeout):
                await rt.within_timeout(upstream.post("/v1/completions", {"prompt": "hi"}))
            await asyncio.wait_for(closed.wait(), 5)
        finally:
            await upstream.close()
            server.close()

    asyncio.run(run())
