"""The load generator of the aiohttp benchmarks (vllm_bench.py, whisper_bench.py, infinity_bench.py).

An asyncio + aiohttp client in the benchmark process: keep-alive, a new client session per run.
"""

from __future__ import annotations

import json

HEADERS = {"Content-Type": "application/json"}


def new_session(timeout: float = 120):
    """A session of its own per run: no pooled connection outlives the server's keep-alive (uvicorn: 5 s)."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def post_json(session, url: str, data: bytes, headers: dict = HEADERS) -> dict:
    """POST ``data``; the answer must be a 200 with a JSON body, which is returned."""
    async with session.post(url, data=data, headers=headers) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url} answered {r.status}: {body[:500]!r}")
    return json.loads(body)
