"""V2 and the OpenAI routes over an engine server that speaks OpenAI's API (vLLM, Infinity, Ollama through its
adapter): the backend KubeAIRuntime and HuggingFaceRuntime (backend VLLM) share.

V2 generation takes a BYTES ``prompt`` (or ``text``) tensor, or ``messages`` (one JSON chat per row), and
answers ``text`` (and ``finish_reason`` when asked); embeddings take ``text`` and answer ``embedding``.
The request's parameters become OpenAI sampling fields (codecs/params.py), ``adapter`` picks a LoRA adapter.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, AsyncIterator, Dict, FrozenSet, List, Optional

import numpy as np
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

from ..adapters import entry, requested, unknown
from ..codecs import text_rows
from ..codecs.params import sampling_body
from ..codecs.requests import no_parameters, one_input, request_parameters, wanted_outputs
from ..engines.openai_http import sse_events
from ..errors import BadRequest, InternalError
from ..openai.protocol import check_openai_body, parse_detokenize, parse_tokenize
from .. import metrics
from . import Backend, rerank

GENERATION_KINDS = frozenset({"completions", "chat"})
EMBEDDING_KINDS = frozenset({"embeddings"})
TOKENIZE_KINDS = frozenset({"tokenize", "detokenize"})
"""vLLM's own /tokenize and /detokenize: on its generation models (Ollama's adapter has none)."""
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions", "embeddings": "/v1/embeddings",
         "tokenize": "/tokenize", "detokenize": "/detokenize"}


class EngineBackend(Backend):
    """``engine`` is started (``upstream`` answers OpenAI calls) and stopped by ``close()``. V2 serves generation,
    or embeddings when ``embedding``; the OpenAI routes serve ``openai_kinds`` (default: the V2 kind's)."""

    def __init__(self, name: str, version: Optional[str], engine: Any, *, embedding: bool,
                 adapters: Optional[Dict[str, str]] = None, max_tokens: int = 256, max_tokens_limit: int = 4096,
                 openai_kinds: Optional[FrozenSet[str]] = None, reranking: Optional[str] = None):
        super().__init__(name, version)
        self.engine, self.embedding = engine, embedding
        self._adapters: Dict[str, Dict[str, str]] = {n: entry(n, u, "settings") for n, u in (adapters or {}).items()}
        self.adapters = list(self._adapters)  # the names requests may pick
        self.max_tokens, self.max_tokens_limit = min(max_tokens, max_tokens_limit), max_tokens_limit
        self.reranking = reranking  # "vllm" (its /v1/score) or "infinity" (its /rerank): a cross-encoder
        self.openai_kinds = openai_kinds or (rerank.RERANK_KINDS if reranking else EMBEDDING_KINDS if embedding
                                             else GENERATION_KINDS)
        if reranking:
            self.inputs, self.outputs = list(rerank.INPUTS), list(rerank.OUTPUTS)
        elif embedding:
            self.inputs = [MetadataTensor(name="text", datatype="BYTES", shape=[-1])]
            self.outputs = [MetadataTensor(name="embedding", datatype="FP32", shape=[-1, -1])]
        else:
            self.inputs = [MetadataTensor(name="prompt", datatype="BYTES", shape=[-1]),
                           MetadataTensor(name="messages", datatype="BYTES", shape=[-1])]
            self.outputs = [MetadataTensor(name="text", datatype="BYTES", shape=[-1]),
                            MetadataTensor(name="finish_reason", datatype="BYTES", shape=[-1])]
        self._offered = [o.name for o in self.outputs]

    async def close(self) -> None:
        await self.engine.stop()

    # -- V2 ----------------------------------------------------------------------------------------
    def _rows(self, payload: InferenceRequest) -> tuple[str, list]:
        takes = ("one BYTES tensor 'text'" if self.embedding
                 else "one BYTES tensor 'prompt' (or 'messages' with JSON chats)")
        inp = one_input(payload, takes)
        allowed = ("text", "input") if self.embedding else ("prompt", "text", "messages")
        if inp.name not in allowed:
            raise BadRequest(f"unknown input '{inp.name}' (this model takes: {', '.join(allowed)})")
        if inp.name == "messages":
            return "messages", [parse_messages(i, r) for i, r in enumerate(text_rows(inp, "chat", allow_empty=True))]
        return inp.name, text_rows(inp)

    def _model_id(self, params: Dict[str, Any]) -> str:
        return requested(params, self.adapters) or self.name

    def _sampling(self, params: Dict[str, Any]) -> dict:
        return sampling_body(params, self.max_tokens, self.max_tokens_limit)

    async def score_pairs(self, firsts: List[str], seconds: List[str]):
        """Relevance of each (firsts[i], seconds[i]) from the engine: vLLM's /score takes the pairs as they
        are; Infinity's /rerank one query at a time (its documents in one call, which it batches)."""
        if self.reranking == "vllm":
            result = await self.engine.upstream.post("/score", {"model": self.name, "text_1": firsts,
                                                                   "text_2": seconds})
            data = sorted(result["data"], key=lambda d: d["index"])
            usage = result.get("usage") or {}
            return np.array([d["score"] for d in data], dtype=np.float32), int(usage.get("prompt_tokens") or 0)
        scores = np.zeros(len(firsts), dtype=np.float32)
        groups: Dict[str, List[int]] = {}
        for i, query in enumerate(firsts):
            groups.setdefault(query, []).append(i)
        results = await asyncio.gather(*[self.engine.upstream.post("/v1/rerank", {
            "model": self.name, "query": query, "documents": [seconds[i] for i in where], "return_documents": False})
            for query, where in groups.items()])
        tokens = 0
        for (query, where), result in zip(groups.items(), results):
            for item in result.get("results") or result.get("data") or []:
                scores[where[int(item["index"])]] = item["relevance_score"]
            tokens += int((result.get("usage") or {}).get("total_tokens") or 0)
        return scores, tokens

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self.reranking:
            return self.response(payload, await rerank.predict(self, payload), rerank.wanted(payload))
        kind, rows = self._rows(payload)
        wanted = wanted_outputs(payload, self._offered, self._offered[:1])
        if self.embedding:
            model_id = self._model_id(no_parameters(payload, "embeddings", ("adapter",)))
            # base64 float32 from the engine: no JSON floats to print there and parse here (measured ~0.7 ms
            # of the 1.5 ms V2 added per 8-sentence request)
            result = await self.engine.upstream.post("/v1/embeddings", {"model": model_id, "input": rows,
                                                                        "encoding_format": "base64"})
            vectors = np.stack([_vector(d["embedding"]) for d in sorted(result["data"], key=lambda d: d["index"])])
            metrics.embedded(self.name, model_id if model_id != self.name else "", len(rows),
                             int((result.get("usage") or {}).get("prompt_tokens") or 0))
            return self.response(payload, {"embedding": vectors}, wanted)
        params = request_parameters(payload)
        model_id = self._model_id(params)
        body = self._sampling(params)
        generation = metrics.Generation(self.name, model_id if model_id != self.name else "")
        try:
            if kind == "messages":
                results = await asyncio.gather(*[self.engine.upstream.post(
                    "/v1/chat/completions", {**body, "model": model_id, "messages": m}) for m in rows])
                choices = [r["choices"][0] for r in results]
                texts = [c["message"].get("content") or "" for c in choices]
            else:
                results = [await self.engine.upstream.post("/v1/completions",
                                                           {**body, "model": model_id, "prompt": rows})]
                choices = sorted(results[0]["choices"], key=lambda c: c["index"])
                texts = [c["text"] for c in choices]
        except BaseException:
            generation.failed()
            raise
        used = [r.get("usage") or {} for r in results]
        generation.done(sum(int(u.get("prompt_tokens") or 0) for u in used),
                        sum(int(u.get("completion_tokens") or 0) for u in used))
        outputs = {"text": np.array(texts, dtype=object),
                   "finish_reason": np.array([c.get("finish_reason") or "" for c in choices], dtype=object)}
        return self.response(payload, outputs, wanted)

    async def stream(self, payload: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Tokens as the engine produces them."""
        if self.embedding or self.reranking:
            yield await self.predict(payload)
            return
        kind, rows = self._rows(payload)
        wanted = wanted_outputs(payload, self._offered, self._offered[:1])
        if len(rows) != 1:
            raise BadRequest(f"streaming takes one prompt per request, got {len(rows)}")
        params = request_parameters(payload)
        model_id = self._model_id(params)
        body = {**self._sampling(params), "model": model_id, "stream": True,
                "stream_options": {"include_usage": True}}  # the counts, for metrics.py
        generation = metrics.Generation(self.name, model_id if model_id != self.name else "", streamed=True)
        usage: dict = {}
        ok = False
        try:
            if kind == "messages":
                chunks = await self.engine.upstream.stream("/v1/chat/completions", {**body, "messages": rows[0]})
            else:
                chunks = await self.engine.upstream.stream("/v1/completions", {**body, "prompt": rows[0]})
            async for event in sse_events(chunks):
                if "error" in event:
                    raise InternalError(f"model '{self.name}': engine stream failed: {event['error'].get('message')}")
                usage = event.get("usage") or usage
                for choice in event.get("choices", []):
                    delta = choice.get("text") if kind != "messages" else (choice.get("delta") or {}).get("content")
                    finish = choice.get("finish_reason") or ""
                    if not delta and not finish:
                        continue
                    if delta:
                        generation.token()
                    yield self.response(payload, {"text": np.array([delta or ""], dtype=object),
                                                  "finish_reason": np.array([finish], dtype=object)}, wanted)
            ok = True
        finally:
            if not ok:
                generation.failed()
            generation.done(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                            if usage else None)

    # -- adapters at run time (adapters.py) -------------------------------------------------------
    def adapter_entries(self) -> List[Dict[str, str]]:
        return [self._adapters[n] for n in self.adapters]

    async def load_adapter(self, adapter: str, path: Any, url: str) -> None:
        await self.engine.load_adapter(adapter, path)
        self._adapters[adapter] = entry(adapter, url, "runtime")
        self.adapters.append(adapter)

    async def unload_adapter(self, adapter: str) -> None:
        """New requests for it are a 404 at once; those already at the engine finish."""
        if adapter not in self.adapters:
            raise unknown(self.name, adapter, self.adapters)
        self.adapters.remove(adapter)
        self._adapters.pop(adapter)
        await self.engine.unload_adapter(adapter)

    # -- OpenAI routes -----------------------------------------------------------------------------
    def openai_ids(self) -> List[str]:
        return [self.name, *self.adapters]

    async def openai_call(self, kind: str, body: dict, model_id: str, raw: Optional[bytes] = None) -> Any:
        """Checked, then passed to the engine as it came (``raw``: the request's bytes) and its answer
        passed back as bytes (a JSON body) or as its SSE chunks; reranking is answered here, in one shape for
        every engine, from the engine's scores."""
        if kind in rerank.RERANK_KINDS:
            return await rerank.openai_call(self, kind, body)
        path = PATHS[kind]
        if kind == "tokenize":
            parse_tokenize(body)
        elif kind == "detokenize":
            parse_detokenize(body, 1 << 31)  # the engine knows the vocabulary: it answers an id outside it
        elif kind != "embeddings":
            check_openai_body(kind, body, self.max_tokens_limit)
        if body.get("stream") and kind in GENERATION_KINDS:
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
