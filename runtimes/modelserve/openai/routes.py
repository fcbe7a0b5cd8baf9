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

import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any, AsyncIterator, Dict, List, Protocol, Tuple

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from mlserver.errors import MLServerError

from .. import metrics, tracing
from ..errors import Unavailable, one_line
from ..mlserver_compat import add_custom_handler, raw_body
from .protocol import OpenAIError, parse_form, wants_usage

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


GENERATION_KINDS = ("completions", "chat")


async def handle(kind: str, raw: bytes, authorization: str = "", content_type: str = "") -> Any:
    """One OpenAI request: the key, the body, the model looked up in the registry, its ``openai_call``
    (``Runtime.openai_call``: counted in flight, within request_timeout), and the answer as JSON, text or an SSE
    stream. Counted in metrics.py once the model is known (an unknown model makes no series)."""
    meter: List[Any] = []  # [metrics.Request, metrics.Generation or None] once the model is known
    try:
        response = await _handle(kind, raw, authorization, content_type, meter)
    except BaseException as exc:  # cancelled: the client left
        if meter:
            _finish(meter, metrics.outcome(exc))
        raise
    if meter and not isinstance(response, StreamingResponse):
        _finish(meter, metrics.status_class(response.status_code))
    return response


def _finish(meter: List[Any], code: str, usage: Any = None) -> None:
    request, generation = meter
    request.done(code)
    if generation is not None:
        _generated(generation, code, usage)


def _generated(generation: Any, code: str, usage: Any) -> None:
    """A generation's end: failed unless ``code`` is 2xx, else its counts from ``usage`` when given."""
    if code != "2xx":
        generation.failed()
    elif isinstance(usage, dict):
        generation.done(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    else:
        generation.done()


async def _handle(kind: str, raw: bytes, authorization: str, content_type: str, meter: List[Any]) -> Any:
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
        adapter = model_id if model_id != served.name else ""
        stream = body.get("stream", False)
        generation = None
        if kind in GENERATION_KINDS:
            generation = metrics.Generation(served.name, adapter, streamed=stream is True)
        meter[:] = [metrics.Request(served.name, "openai", kind, adapter), generation]
        if not served.openai_supports(kind):
            serves = [PATHS[k] for k in PATHS if k != "models" and served.openai_supports(k)]
            raise OpenAIError(f"model '{model_id}' does not serve {PATHS[kind]} (it serves: {', '.join(serves)})",
                              400, param="model")
        if kind in AUDIO_KINDS:
            if not raw:
                raise OpenAIError("'file' is required: the audio file, as a multipart part named file", param="file")
            with tracing.span("modelserve.openai", **{"modelserve.model": served.name, "modelserve.route": kind}):
                result = await served.openai_call(kind, body, model_id, raw)
            if isinstance(result, str):
                media = {"srt": "application/x-subrip", "vtt": "text/vtt"}.get(body.get("response_format"), "text/plain")
                return Response(content=result, media_type=media)
            return JSONResponse(result)
        if not isinstance(stream, bool):
            raise OpenAIError(f"'stream' must be true or false, got {stream!r}", param="stream")
        hidden_usage = False
        if stream and generation is not None and not wants_usage(body):
            # the counts come in the stream's last chunk: asked for here, and that chunk not passed on
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            raw, hidden_usage = None, True
        with tracing.span("modelserve.openai", **{"modelserve.model": served.name, "modelserve.route": kind}):
            result = await served.openai_call(kind, body, model_id, raw)
        if stream and kind != "embeddings":
            return StreamingResponse(_guarded(result, meter, hidden_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if isinstance(result, (bytes, bytearray)):
            if meter:
                _counted(kind, body, meter, _usage_of(result))
            return Response(content=bytes(result), media_type="application/json")
        if meter:
            _counted(kind, body, meter, result.get("usage") if isinstance(result, dict) else None)
        return JSONResponse(result)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error body
        err = _as_openai_error(exc)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _counted(kind: str, body: dict, meter: List[Any], usage: Any) -> None:
    """The LLM side of an answered (non-streamed) call; the request itself is counted by handle()."""
    request, generation = meter
    if generation is not None:
        meter[1] = None  # ended here: handle() then counts the request alone
        _generated(generation, "2xx", usage)
    elif kind in EMBEDDING_INPUTS:
        given = body.get(EMBEDDING_INPUTS[kind])
        count = 1 if isinstance(given, str) else len(given) if isinstance(given, list) else 0
        tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0) if isinstance(usage, dict) else 0
        metrics.embedded(request.labels[0], request.labels[1], count, tokens)


EMBEDDING_INPUTS = {"embeddings": "input", "rerank": "documents", "score": "text_2"}
"""the kinds counted as embedding inputs, and the field that holds them"""


def _usage_of(answer: bytes) -> Any:
    """The ``usage`` object of an engine's JSON answer, read without parsing the rest (it is near the end)."""
    at = answer.rfind(b'"usage":')
    if at < 0:
        return None
    try:
        return json.JSONDecoder().raw_decode(answer[at + 8:].decode("utf-8", "replace").lstrip())[0]
    except ValueError:
        return None


async def _guarded(chunks: AsyncIterator[bytes], meter: List[Any], hidden_usage: bool = False) -> AsyncIterator[bytes]:
    """Once streaming has begun the status is sent: a failure becomes a final error event. Each chunk with
    text counts as a token for the timings; the usage chunk gives the counts (not passed on when the client
    did not ask for it)."""
    generation = meter[1] if meter else None
    found = {}
    code = "5xx"
    try:
        if generation is None:
            async for chunk in chunks:
                yield chunk
        else:  # an engine's bytes come as they arrive, not an event at a time: read whole events
            pending = b""
            async for chunk in chunks:
                pending += chunk
                end = pending.rfind(b"\n\n") + 2
                if end < 2:
                    continue
                ready, pending = pending[:end], pending[end:]
                kept = _metered(ready, generation, found, hidden_usage)
                if kept:
                    yield kept
            if pending:
                yield _metered(pending, generation, found, hidden_usage) or b""
        code = "2xx"
    except (GeneratorExit, asyncio.CancelledError):
        # a client that read [DONE] and closed before the engine's stream ended got the whole answer
        code = "2xx" if found.get("done") else "cancelled"
        raise
    except Exception as exc:  # noqa: BLE001
        err = _as_openai_error(exc)
        code = metrics.status_class(err.status)
        yield f"data: {json.dumps({'error': {'message': str(err), 'type': err.type, 'code': err.status}})}\n\n".encode()
    finally:
        if meter:
            _finish(meter, code, found.get("usage"))


def _metered(events: bytes, generation: Any, found: dict, hidden_usage: bool) -> bytes:
    """Whole SSE events of a generation stream: each with text is a token for the timings; the usage event
    gives the counts (``found["usage"]``) and is dropped when the client did not ask for it."""
    kept = []
    for event in events.split(b"\n\n"):
        if not event:
            continue
        if event.startswith(b"data: [DONE]"):
            found["done"] = True
        elif event.startswith(b"data: {"):
            if b'"usage":{' in event and b'"choices":[]' in event:
                found["usage"] = _usage_of(event)
                if hidden_usage:
                    continue
            elif b'"text":""' not in event and (b'"content":' in event or b'"text":' in event) \
                    and b'"content":""' not in event and b'"content":null' not in event:
                generation.token()
        kept.append(event + b"\n\n")
    return b"".join(kept)


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
