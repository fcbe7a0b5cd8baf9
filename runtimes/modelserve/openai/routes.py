"""OpenAI-compatible routes on MLServer's HTTP port: /v1/models, /v1/completions, /v1/chat/completions,
/v1/embeddings, /v1/audio/transcriptions and /translations, /v1/tokenize and /v1/detokenize (vLLM's; also at
/tokenize and /detokenize), and the reranking routes the same clients' ecosystems use: /v1/rerank
(Cohere v1, Jina, vLLM, Infinity), /v2/rerank (Cohere v2) and /v1/score (vLLM's).

Every model that can answer them adds the same routes (MLServer custom handlers, one set per model, so
unloading one model leaves the others' in place); whichever route FastAPI picks looks the request's
``model`` up in this process's registry of served models and adapters. Models answering these routes
therefore share one process: run them with ``parallel_workers: 0`` (the kubeai example does).
Errors use OpenAI's shape (protocol.OpenAIError); a 503 carries ``Retry-After``. Bodies and checks are in
protocol.py; this module is the HTTP side: the registry, the API key, the handler.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from typing import Any, AsyncIterator, Dict, List, Protocol, Tuple

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from mlserver.errors import MLServerError

from ..errors import Unavailable, one_line
from ..mlserver_compat import add_custom_handler, raw_body
from .protocol import OpenAIError, parse_form

logger = logging.getLogger("mlserver.modelserve.openai")

ROUTES = (
    ("/v1/models", "GET", "openai_models_route", "models"),
    ("/v1/completions", "POST", "openai_completions_route", "completions"),
    ("/v1/chat/completions", "POST", "openai_chat_route", "chat"),
    ("/v1/embeddings", "POST", "openai_embeddings_route", "embeddings"),
    ("/v1/audio/transcriptions", "POST", "openai_transcriptions_route", "transcriptions"),
    ("/v1/audio/translations", "POST", "openai_translations_route", "translations"),
    ("/v1/rerank", "POST", "openai_rerank_route", "rerank"),
    ("/v2/rerank", "POST", "openai_rerank_v2_route", "rerank"),
    ("/v1/score", "POST", "openai_score_route", "score"),
    ("/v1/tokenize", "POST", "openai_tokenize_route", "tokenize"),
    ("/v1/detokenize", "POST", "openai_detokenize_route", "detokenize"),
    ("/tokenize", "POST", "openai_tokenize_alias_route", "tokenize"),  # vLLM's own paths
    ("/detokenize", "POST", "openai_detokenize_alias_route", "detokenize"),
)
# DHCore's run status (digitalhub) names KubeAI's proxy paths, /openai/v1/...: the same routes there too
ROUTES += tuple((f"/openai{path}", method, f"{attr}_openai", kind) for path, method, attr, kind in ROUTES
                if path.startswith("/v1/"))
AUDIO_KINDS = ("transcriptions", "translations")
PATHS: Dict[str, str] = {}
for _path, _, _, _kind in ROUTES:
    PATHS.setdefault(_kind, _path)


class OpenAIServed(Protocol):
    """What a runtime implements to answer the routes; ``model_id`` is its name or one of its adapters."""

    name: str

    def openai_ids(self) -> List[str]: ...

    def openai_supports(self, kind: str) -> bool: ...

    async def openai_call(self, kind: str, body: dict, model_id: str, raw: bytes) -> Any:
        """A JSON-able dict or JSON bytes, or an async iterator of SSE bytes when ``body["stream"]`` is true.
        ``raw`` is the request body as received, for runtimes that pass it on unchanged."""


REGISTRY: Dict[str, OpenAIServed] = {}
_CREATED = int(time.time())


def register(model: OpenAIServed) -> None:
    REGISTRY[model.name] = model


def unregister(model: OpenAIServed) -> None:
    if REGISTRY.get(model.name) is model:
        del REGISTRY[model.name]


def lookup(model_id: Any) -> Tuple[OpenAIServed, str]:
    if not isinstance(model_id, str) or not model_id:
        raise OpenAIError("'model' is required: the name of a served model or adapter", 400, param="model")
    for served in list(REGISTRY.values()):
        if model_id in served.openai_ids():
            return served, model_id
    known = sorted(i for s in list(REGISTRY.values()) for i in s.openai_ids())
    raise OpenAIError(f"model '{model_id}' not found; this server's OpenAI routes serve: {', '.join(known) or 'none'} "
                      "(they reach the models of one MLServer process: load the others with parallel_workers 0)",
                      404, param="model", type_="NotFoundError")


def _as_openai_error(exc: BaseException) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, Unavailable):
        return OpenAIError(str(exc), 503, type_="service_unavailable", headers=exc.headers)
    if isinstance(exc, MLServerError):
        return OpenAIError(str(exc), int(getattr(exc, "status_code", 500) or 500))
    logger.exception("OpenAI route failed")
    return OpenAIError(f"internal error: {one_line(exc)}", 500)


async def _authorization(request: Request) -> str:
    return request.headers.get("authorization", "")


async def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "")


API_KEY_ENV = "MODELSERVE_OPENAI_API_KEY"


def check_key(authorization: str) -> None:
    """With $MODELSERVE_OPENAI_API_KEY set (one key, or several separated by commas), every OpenAI route
    needs ``Authorization: Bearer <key>``, as OpenAI's own API does; unset, the routes are open."""
    keys = [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    if not keys:
        return
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(given.strip().encode(), k.encode()) for k in keys):
        raise OpenAIError("a valid API key is required: send 'Authorization: Bearer <key>'", 401,
                          type_="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def handle(kind: str, raw: bytes, authorization: str = "", content_type: str = "") -> Any:
    """One OpenAI request: the key, the body, the model looked up in the registry, its ``openai_call``
    (``Runtime.openai_call``: counted and timed like V2), and the answer as JSON, text or an SSE stream."""
    try:
        check_key(authorization)
        if kind == "models":
            data = [{"id": i, "object": "model", "created": _CREATED, "owned_by": "modelserve",
                     **({"parent": s.name} if i != s.name else {})}
                    for s in list(REGISTRY.values()) for i in s.openai_ids()]
            return JSONResponse({"object": "list", "data": data})
        if kind in AUDIO_KINDS:  # multipart: the audio file is passed on as ``raw``
            body, raw = parse_form(content_type, raw)
        else:
            try:
                body = json.loads(raw or b"null")
            except ValueError as exc:
                raise OpenAIError(f"the body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise OpenAIError("the body must be a JSON object")
        served, model_id = lookup(body.get("model"))
        if not served.openai_supports(kind):
            serves = [PATHS[k] for k in PATHS if k != "models" and served.openai_supports(k)]
            raise OpenAIError(f"model '{model_id}' does not serve {PATHS[kind]} (it serves: {', '.join(serves)})",
                              400, param="model")
        if kind in AUDIO_KINDS:
            if not raw:
                raise OpenAIError("'file' is required: the audio file, as a multipart part named file", param="file")
            result = await served.openai_call(kind, body, model_id, raw)
            if isinstance(result, str):
                media = {"srt": "application/x-subrip", "vtt": "text/vtt"}.get(body.get("response_format"), "text/plain")
                return Response(content=result, media_type=media)
            return JSONResponse(result)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise OpenAIError(f"'stream' must be true or false, got {stream!r}", param="stream")
        result = await served.openai_call(kind, body, model_id, raw)
        if stream and kind != "embeddings":
            return StreamingResponse(_guarded(result), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if isinstance(result, (bytes, bytearray)):
            return Response(content=bytes(result), media_type="application/json")
        return JSONResponse(result)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error body
        err = _as_openai_error(exc)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Once streaming has begun the status is sent: a failure becomes a final error event."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:  # noqa: BLE001
        err = _as_openai_error(exc)
        yield f"data: {json.dumps({'error': {'message': str(err), 'type': err.type, 'code': err.status}})}\n\n".encode()


def add_routes(model: Any) -> None:
    """Adds the routes to ``model`` (mlserver_compat.add_custom_handler)."""
    for path, method, attr, kind in ROUTES:
        add_custom_handler(model, path, method, attr, _bind(handle, kind, get=method == "GET"))


def _bind(fn, kind: str, get: bool):
    # plain str/bytes arguments: with parallel workers MLServer pickles them over to the worker
    if get:
        async def handler(authorization: str = Depends(_authorization)) -> Any:
            return await fn(kind, b"", authorization)
    else:
        async def handler(body: bytes = Depends(raw_body),  # type: ignore[misc]
                          authorization: str = Depends(_authorization),
                          content_type: str = Depends(_content_type)) -> Any:
            return await fn(kind, body, authorization, content_type)
    return handler
