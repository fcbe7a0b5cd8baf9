"""OpenAI-compatible routes on MLServer's HTTP port: /v1/models, /v1/completions, /v1/chat/completions,
/v1/embeddings, /v1/audio/transcriptions.

Every model that can answer them adds the same routes (MLServer custom handlers, one set per model, so
unloading one model leaves the others' in place); whichever route FastAPI picks looks the request's
``model`` up in this process's registry of served models and adapters. Models answering these routes
therefore share one process: run them with ``parallel_workers: 0`` (the kubeai example does).
Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, which the official
client turns into its typed exceptions; a 503 carries ``Retry-After``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from typing import Any, AsyncIterator, Dict, List, Optional, Protocol, Tuple

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from mlserver.errors import MLServerError
from mlserver.handlers.custom import CustomHandler, register_custom_handler

from .errors import Unavailable, one_line

logger = logging.getLogger("mlserver.modelserve.openai")

ROUTES = (
    ("/v1/models", "GET", "openai_models_route", "models"),
    ("/v1/completions", "POST", "openai_completions_route", "completions"),
    ("/v1/chat/completions", "POST", "openai_chat_route", "chat"),
    ("/v1/embeddings", "POST", "openai_embeddings_route", "embeddings"),
    ("/v1/audio/transcriptions", "POST", "openai_transcriptions_route", "transcriptions"),
)
PATHS = {kind: path for path, _, _, kind in ROUTES}
# the form fields of /v1/audio/transcriptions we implement (OpenAI's others are refused by name)
FORM_FIELDS = ("file", "model", "language", "prompt", "temperature", "response_format", "timestamp_granularities[]")


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


class OpenAIError(Exception):
    def __init__(self, message: str, status: int = 400, param: Optional[str] = None, type_: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.param, self.headers = status, param, headers
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.status}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _as_openai_error(exc: BaseException) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, Unavailable):
        return OpenAIError(str(exc), 503, type_="service_unavailable", headers=exc.headers)
    if isinstance(exc, MLServerError):
        return OpenAIError(str(exc), int(getattr(exc, "status_code", 500) or 500))
    logger.exception("OpenAI route failed")
    return OpenAIError(f"internal error: {one_line(exc)}", 500)


async def _raw_body(request: Request) -> bytes:
    return await request.body()


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
    try:
        check_key(authorization)
        if kind == "models":
            data = [{"id": i, "object": "model", "created": _CREATED, "owned_by": "modelserve",
                     **({"parent": s.name} if i != s.name else {})}
                    for s in list(REGISTRY.values()) for i in s.openai_ids()]
            return JSONResponse({"object": "list", "data": data})
        if kind == "transcriptions":  # multipart: the audio file is passed on as ``raw``
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
            raise OpenAIError(f"model '{model_id}' does not serve {PATHS[kind]}", 400, param="model")
        if kind == "transcriptions":
            if not raw:
                raise OpenAIError("'file' is required: the audio file, as a multipart part named file", param="file")
            result = await _timed(served, served.openai_call(kind, body, model_id, raw))
            if isinstance(result, str):
                media = {"srt": "application/x-subrip", "vtt": "text/vtt"}.get(body.get("response_format"), "text/plain")
                return Response(content=result, media_type=media)
            return JSONResponse(result)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise OpenAIError(f"'stream' must be true or false, got {stream!r}", param="stream")
        result = await _timed(served, served.openai_call(kind, body, model_id, raw))
        if stream and kind != "embeddings":
            return StreamingResponse(_guarded(result), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        if isinstance(result, (bytes, bytearray)):
            return Response(content=bytes(result), media_type="application/json")
        return JSONResponse(result)
    except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error body
        return _as_openai_error(exc).response()


async def _timed(served: OpenAIServed, call) -> Any:
    """The model's request_timeout (a 504) and in-flight count apply to the OpenAI routes as to V2; a stream's
    timeout covers opening it."""
    within = getattr(served, "within_timeout", None)
    return await (within(call) if within is not None else call)


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Once streaming has begun the status is sent: a failure becomes a final error event."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:  # noqa: BLE001
        err = _as_openai_error(exc)
        yield f"data: {json.dumps({'error': {'message': str(err), 'type': err.type, 'code': err.status}})}\n\n".encode()


def add_routes(model: Any) -> None:
    """Adds the routes to ``model`` as instance-attribute custom handlers (see Runtime._add_route)."""
    for path, method, attr, kind in ROUTES:
        handler = _bind(handle, kind, get=method == "GET")
        handler.__name__ = attr
        register_custom_handler(CustomHandler(rest_path=path, rest_method=method), handler)
        setattr(model, attr, handler)


def _bind(fn, kind: str, get: bool):
    # plain str/bytes arguments: with parallel workers MLServer pickles them over to the worker
    if get:
        async def handler(authorization: str = Depends(_authorization)) -> Any:
            return await fn(kind, b"", authorization)
    else:
        async def handler(body: bytes = Depends(_raw_body),  # type: ignore[misc]
                          authorization: str = Depends(_authorization),
                          content_type: str = Depends(_content_type)) -> Any:
            return await fn(kind, body, authorization, content_type)
    return handler


def parse_form(content_type: str, raw: bytes) -> Tuple[Dict[str, Any], Optional[bytes]]:
    """A multipart/form-data body as (fields, the ``file`` part's bytes); other bodies are a 400."""
    from email import policy
    from email.parser import BytesParser

    if not content_type.lower().startswith("multipart/form-data"):
        raise OpenAIError(f"send multipart/form-data with a 'file' part, got Content-Type {content_type or 'none'!r}")
    msg = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") +
                                                     b"\r\n\r\n" + raw)
    if not msg.is_multipart():
        raise OpenAIError("the multipart body could not be parsed (check its boundary)")
    fields: Dict[str, Any] = {}
    audio = None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            audio = payload
        elif name in ("timestamp_granularities[]", "timestamp_granularities"):
            fields.setdefault("timestamp_granularities[]", []).append(payload.decode("utf-8", "replace"))
        elif name:
            fields[name] = payload.decode("utf-8", "replace")
    unknown = [k for k in fields if k not in FORM_FIELDS]
    if unknown:
        raise OpenAIError(f"field '{unknown[0]}' is not supported (fields: {', '.join(FORM_FIELDS)})",
                          param=unknown[0])
    return fields, audio


def sse(data: Any) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


# -- response bodies, for runtimes that generate themselves (HuggingFaceRuntime on transformers) ------------
def new_id(prefix: str) -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(model: str, texts: List[str], finishes: List[str], prompt_tokens: int,
                    completion_tokens: int) -> dict:
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": t, "finish_reason": f, "logprobs": None}
                        for i, (t, f) in enumerate(zip(texts, finishes))],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_body(model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(kind: str, rid: str, created: int, model: str, text: Optional[str], finish: Optional[str] = None,
          role: Optional[str] = None) -> bytes:
    """One SSE event of a completion (``kind`` "completions") or chat stream."""
    if kind == "chat":
        delta: Dict[str, Any] = {"role": role} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [choice]})
    return sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]})


def embeddings_body(model: str, vectors, encoding_format: str, prompt_tokens: int) -> dict:
    import base64

    import numpy as np

    data = []
    for i, vec in enumerate(vectors):
        vec = np.asarray(vec, dtype="<f4")
        value = base64.b64encode(vec.tobytes()).decode() if encoding_format == "base64" else vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model, "usage": usage(prompt_tokens)}


def check_fields(kind: str, body: dict, backend: str) -> None:
    """Fields we do not implement are refused by name (never silently ignored)."""
    allowed = {"model", "user"}
    if kind == "embeddings":
        allowed |= {"input", "encoding_format", "dimensions"}
    else:
        allowed |= {"stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                    "seed", "stop", "n", "prompt" if kind == "completions" else "messages"}
    extra = [k for k, v in body.items() if k not in allowed and v is not None]
    if extra:
        raise OpenAIError(f"field '{extra[0]}' is not supported by {backend}", param=extra[0])
    if body.get("n") not in (None, 1):
        raise OpenAIError("only n=1 is supported", param="n")
