"""A client for an engine's own OpenAI-compatible server: JSON calls and SSE streams passed through.

Engine errors keep the engine's message and status (a 400 from vLLM stays a 400 with vLLM's reason);
a broken connection becomes the supervisor's 503.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable, Optional

import aiohttp
import orjson

from .. import tracing
from ..errors import BadRequest, InternalError, Unavailable


def engine_message(status: int, body: bytes) -> str:
    """The reason an OpenAI-style server gives: ``{"error": {"message"}}``, ``{"message"}`` or ``{"detail"}``."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode(errors="replace").strip()
        return text.splitlines()[0][:500] if text else f"HTTP {status}"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                value = data[key]
                return value if isinstance(value, str) else json.dumps(value)
    return f"HTTP {status}"


_JSON = {"Content-Type": "application/json"}


class EngineError(BadRequest):
    """The engine refused the request; its status (4xx) and message reach the user unchanged."""

    def __init__(self, msg: str, status_code: int = 400):
        super().__init__(msg, status_code)

    def __reduce__(self):
        return (type(self), (str(self), self.status_code))


class OpenAIUpstream:
    """``base_url`` is read on every call: a restarted engine may listen on a new port."""

    def __init__(self, model: str, base_url: Callable[[], str], on_connection_error: Callable[[BaseException], Unavailable],
                 check: Callable[[], None] = lambda: None, headers: Optional[dict] = None):
        self.model = model
        self._base_url = base_url
        self._on_connection_error = on_connection_error
        self._check = check
        self._headers = headers or {}
        self._session: Optional[aiohttp.ClientSession] = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                headers=self._headers,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        body = await resp.read()
        msg = engine_message(resp.status, body)
        if 400 <= resp.status < 500:
            raise EngineError(msg, resp.status)
        if resp.status == 503:
            raise Unavailable(f"model '{self.model}': engine busy: {msg}", retry_after=1)
        raise InternalError(f"model '{self.model}': engine error {resp.status}: {msg}")

    @staticmethod
    def _payload(body: Optional[dict], raw: Optional[bytes]) -> dict:
        """The request's body and headers (the trace's ``traceparent`` too when MLServer traces)."""
        if raw is None and body is not None:
            raw = orjson.dumps(body)  # MLServer's own JSON library: several times faster than json
        if raw is None:
            traced = tracing.headers()
            return {"headers": traced} if traced else {}
        return {"data": raw, "headers": tracing.headers(_JSON)}

    async def _call(self, method: str, path: str, body: Optional[dict] = None, raw: Optional[bytes] = None) -> bytes:
        """The engine's 200 body as bytes; its errors and a broken connection raised as ours."""
        self._check()
        try:
            with tracing.span("modelserve.engine", **{"http.request.method": method, "url.path": path,
                                                      "modelserve.model": self.model}):
                async with self._client().request(method, self._base_url() + path,
                                                  **self._payload(body, raw)) as resp:
                    if resp.status != 200:
                        await self._raise_for(resp)
                    return await resp.read()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise self._on_connection_error(exc) from None

    async def get(self, path: str) -> Any:
        return orjson.loads(await self._call("GET", path))

    async def post(self, path: str, body: dict) -> Any:
        return orjson.loads(await self._call("POST", path, body))

    async def post_raw(self, path: str, raw: bytes) -> bytes:
        """A JSON body passed through as bytes both ways: the OpenAI routes' proxy path, no re-encoding."""
        return await self._call("POST", path, raw=raw)

    async def stream(self, path: str, body: dict, raw: Optional[bytes] = None) -> AsyncIterator[bytes]:
        """The engine's SSE response, chunk by chunk as it arrives (errors before the first chunk raise).
        ``raw``, when given, is sent as the body instead of ``body`` re-encoded."""
        self._check()
        try:
            with tracing.span("modelserve.engine", **{"http.request.method": "POST", "url.path": path,
                                                      "modelserve.model": self.model, "modelserve.stream": True}):
                resp = await self._client().post(self._base_url() + path, **self._payload(body, raw))
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise self._on_connection_error(exc) from None
        if resp.status != 200:
            try:
                await self._raise_for(resp)
            finally:
                resp.release()
        return self._chunks(resp)

    async def _chunks(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.content.iter_any():
                yield chunk
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            err = self._on_connection_error(exc)
            yield f"data: {json.dumps({'error': {'message': str(err), 'code': 503}})}\n\n".encode()
        finally:
            resp.release()


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict]:
    """Parses an SSE byte stream into its JSON ``data:`` events, stopping at ``[DONE]``."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                yield orjson.loads(data)
