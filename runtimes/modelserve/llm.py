"""V2 and the OpenAI routes over an engine that speaks OpenAI's API (vLLM): the mixin KubeAIRuntime and
HuggingFaceRuntime (backend VLLM) share.

V2 generation takes a BYTES ``prompt`` (or ``text``) tensor, or ``messages`` (one JSON chat per row), and
answers ``text`` (and ``finish_reason`` when asked); embeddings take ``text`` and answer ``embedding``.
The request's parameters become OpenAI sampling fields (codecs/params.py), ``adapter`` picks a LoRA adapter.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any, AsyncIterator, Dict, List, Optional

import numpy as np
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

from .codecs import encode_array, text_rows
from .codecs.params import number, sampling_body
from .engines.openai_http import sse_events
from .errors import BadRequest, InternalError, one_line
from .openai import OpenAIError
from .runtime import request_parameters

logger = logging.getLogger("mlserver.modelserve.llm")


class EngineLLM:
    """Needs ``self.engine`` (with ``.upstream``), ``self.adapters``, ``self.embedding``, ``self.max_tokens``
    and ``self.max_tokens_limit``, plus MLModel's name, version and outputs."""

    engine: Any = None
    adapters: List[str] = []
    embedding: bool = False
    max_tokens: int = 256
    max_tokens_limit: int = 4096

    def _engine_failed(self, reason: str) -> None:
        """The engine gave up restarting: MLServer's model-ready endpoint says so from now on."""
        self.ready = False
        logger.error("model '%s' is no longer ready: %s", self.name, reason)

    def _engine_metadata(self) -> None:
        if self.embedding:
            self.inputs = self.inputs or [MetadataTensor(name="text", datatype="BYTES", shape=[-1])]
            self.outputs = self.outputs or [MetadataTensor(name="embedding", datatype="FP32", shape=[-1, -1])]
        else:
            self.inputs = self.inputs or [MetadataTensor(name="prompt", datatype="BYTES", shape=[-1]),
                                          MetadataTensor(name="messages", datatype="BYTES", shape=[-1])]
            self.outputs = self.outputs or [MetadataTensor(name="text", datatype="BYTES", shape=[-1]),
                                            MetadataTensor(name="finish_reason", datatype="BYTES", shape=[-1])]

    # -- V2 ----------------------------------------------------------------------------------------
    def _engine_rows(self, payload: InferenceRequest) -> tuple[str, list]:
        if not payload.inputs:
            raise BadRequest("the request has no inputs: send a BYTES tensor 'prompt' (or 'messages' with JSON chats)")
        if len(payload.inputs) > 1:
            names = ", ".join(i.name for i in payload.inputs)
            raise BadRequest(f"send one input tensor, got {len(payload.inputs)} ({names})")
        inp = payload.inputs[0]
        allowed = ("text", "input") if self.embedding else ("prompt", "text", "messages")
        if inp.name not in allowed:
            raise BadRequest(f"unknown input '{inp.name}' (this model takes: {', '.join(allowed)})")
        if inp.name == "messages":
            return "messages", [parse_messages(i, r) for i, r in enumerate(text_rows(inp, "chat", allow_empty=True))]
        return inp.name, text_rows(inp)

    def _engine_model_id(self, params: Dict[str, Any]) -> str:
        adapter = params.pop("adapter", None)
        if adapter is None:
            return self.name
        if adapter not in self.adapters:
            raise BadRequest(f"unknown adapter {adapter!r} (this model has: {', '.join(self.adapters) or 'none'})",
                             404 if isinstance(adapter, str) else 400)
        return adapter

    def _engine_wanted(self, payload: InferenceRequest) -> List[str]:
        names = [o.name for o in payload.outputs or []]
        offered = [o.name for o in self.outputs or []]
        unknown = [n for n in names if n not in offered]
        if unknown:
            raise BadRequest(f"unknown output '{unknown[0]}' (this model offers: {', '.join(offered)})")
        return names or offered[:1]

    async def _engine_predict(self, payload: InferenceRequest) -> InferenceResponse:
        kind, rows = self._engine_rows(payload)
        wanted = self._engine_wanted(payload)
        params = request_parameters(payload)
        model_id = self._engine_model_id(params)
        if self.embedding:
            leftover = [k for k in params if k not in ("content_type", "headers")]
            if leftover:
                raise BadRequest(f"unknown parameter '{leftover[0]}' for embeddings (allowed: adapter)")
            # base64 float32 from the engine: no JSON floats to print there and parse here (measured ~0.7 ms
            # of the 1.5 ms V2 added per 8-sentence request)
            result = await self.engine.upstream.post("/v1/embeddings", {"model": model_id, "input": rows,
                                                                        "encoding_format": "base64"})
            vectors = np.stack([_vector(d["embedding"]) for d in sorted(result["data"], key=lambda d: d["index"])])
            return self._engine_response(payload, {"embedding": vectors}, wanted)
        body = sampling_body(params, min(self.max_tokens, self.max_tokens_limit),
                             self.max_tokens_limit)
        if kind == "messages":
            results = await asyncio.gather(*[self.engine.upstream.post(
                "/v1/chat/completions", {**body, "model": model_id, "messages": m}) for m in rows])
            choices = [r["choices"][0] for r in results]
            texts = [c["message"].get("content") or "" for c in choices]
        else:
            result = await self.engine.upstream.post("/v1/completions", {**body, "model": model_id, "prompt": rows})
            choices = sorted(result["choices"], key=lambda c: c["index"])
            texts = [c["text"] for c in choices]
        outputs = {"text": np.array(texts, dtype=object),
                   "finish_reason": np.array([c.get("finish_reason") or "" for c in choices], dtype=object)}
        return self._engine_response(payload, outputs, wanted)

    def _engine_response(self, payload: InferenceRequest, outputs: Dict[str, np.ndarray], wanted: List[str]) -> InferenceResponse:
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[encode_array(n, outputs[n]) for n in wanted])

    async def _engine_stream(self, payload: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Tokens as the engine produces them (REST generate_stream/infer_stream as SSE, gRPC ModelStreamInfer)."""
        try:
            if self.embedding:
                yield await self._engine_predict(payload)
                return
            kind, rows = self._engine_rows(payload)
            wanted = self._engine_wanted(payload)
            if len(rows) != 1:
                raise BadRequest(f"streaming takes one prompt per request, got {len(rows)}")
            params = request_parameters(payload)
            model_id = self._engine_model_id(params)
            body = sampling_body(params, min(self.max_tokens, self.max_tokens_limit),
                                 self.max_tokens_limit)
            body.update(model=model_id, stream=True)
            if kind == "messages":
                chunks = await self.engine.upstream.stream("/v1/chat/completions", {**body, "messages": rows[0]})
            else:
                chunks = await self.engine.upstream.stream("/v1/completions", {**body, "prompt": rows[0]})
            async for event in sse_events(chunks):
                if "error" in event:
                    raise InternalError(f"model '{self.name}': engine stream failed: {event['error'].get('message')}")
                for choice in event.get("choices", []):
                    delta = choice.get("text") if kind != "messages" else (choice.get("delta") or {}).get("content")
                    finish = choice.get("finish_reason") or ""
                    if not delta and not finish:
                        continue
                    outputs = {"text": np.array([delta or ""], dtype=object),
                               "finish_reason": np.array([finish], dtype=object)}
                    yield InferenceResponse.model_construct(
                        model_name=self.name, model_version=self.version, id=payload.id,
                        outputs=[encode_array(n, outputs[n]) for n in wanted])
        except MLServerError:
            raise
        except Exception as exc:
            logger.exception("model '%s' failed on a streamed request", self.name)
            raise InternalError(f"model '{self.name}' failed: {one_line(exc)}") from None

    # -- OpenAI routes -----------------------------------------------------------------------------
    def openai_ids(self) -> List[str]:
        return [self.name, *self.adapters]

    def openai_supports(self, kind: str) -> bool:
        if kind == "embeddings":
            return self.embedding
        return kind in ("completions", "chat") and not self.embedding

    async def _engine_openai_call(self, kind: str, body: dict, model_id: str, raw: Optional[bytes] = None) -> Any:
        """Checked, then passed to the engine as it came (``raw``: the request's bytes) and its answer
        passed back as bytes (a JSON body) or as its SSE chunks."""
        path = {"completions": "/v1/completions", "chat": "/v1/chat/completions", "embeddings": "/v1/embeddings"}[kind]
        if kind != "embeddings":
            check_openai_body(kind, body, self.max_tokens_limit)
        if body.get("stream") and kind != "embeddings":
            return await self.engine.upstream.stream(path, body, raw)
        if raw is not None:
            return await self.engine.upstream.post_raw(path, raw)
        return await self.engine.upstream.post(path, body)


def _vector(value: Any) -> np.ndarray:
    """One embedding as the engine sent it: base64 little-endian float32, or a list of numbers."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32, copy=False)
    return np.asarray(value, dtype=np.float32)


def parse_messages(row: int, text: str) -> List[dict]:
    """One row of the V2 ``messages`` input: a JSON list of {"role", "content"} objects."""
    try:
        messages = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"input 'messages': row {row} is not valid JSON: {exc}") from None
    if not isinstance(messages, list) or not messages:
        raise BadRequest(f"input 'messages': row {row} must be a non-empty JSON list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise BadRequest(f"input 'messages': row {row}, message {i} needs a 'role' and a 'content'")
        if m["role"] not in ("system", "user", "assistant", "tool", "developer"):
            raise BadRequest(f"input 'messages': row {row}, message {i} has unknown role {m['role']!r}")
    return messages


def check_openai_body(kind: str, body: dict, cap: int) -> None:
    """What we refuse before the engine sees it: the same rules on every flavour."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError("'messages' must be a non-empty list", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise OpenAIError(f"messages[{i}] needs a 'role' and a 'content'", param="messages")
    else:
        prompt = body.get("prompt")
        texts = prompt if isinstance(prompt, list) else [prompt]
        if not texts or not all(isinstance(t, str) for t in texts) and not all(isinstance(t, int) for t in texts):
            raise OpenAIError("'prompt' must be a string or a list of strings", param="prompt")
        if any(isinstance(t, str) and not t for t in texts):
            raise OpenAIError("'prompt' is empty", param="prompt")
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            try:
                number(key, body[key], int, 1, cap)
            except BadRequest as exc:
                raise OpenAIError(str(exc), param=key) from None

