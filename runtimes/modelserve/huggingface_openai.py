"""HuggingFaceRuntime on the OpenAI routes: text_generation answers completions and chat (streamed or
not), text_embedding answers embeddings, on transformers or, with backend VLLM, through the shared vLLM
adapter (llm.EngineLLM); one client works against both flavours."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List

from . import openai
from .engines import transformers as engine
from .llm import EngineLLM, check_openai_body
from .openai import OpenAIError
from .options import Task

OPENAI_TASKS = (Task.TEXT_GENERATION, Task.TEXT_EMBEDDING)


class TransformersOpenAI(EngineLLM):
    """Needs HuggingFaceRuntime's tokenizer, model thread, coalescer and ``_encode``."""

    def openai_ids(self) -> List[str]:
        if self.engine is not None:
            return super().openai_ids()
        return [self.name] if getattr(self, "task", None) in OPENAI_TASKS else []

    def openai_supports(self, kind: str) -> bool:
        if self.engine is not None:
            return super().openai_supports(kind)
        if kind == "embeddings":
            return self.task == Task.TEXT_EMBEDDING
        return kind in ("completions", "chat") and self.task == Task.TEXT_GENERATION

    async def openai_call(self, kind: str, body: dict, model_id: str, raw: bytes) -> Any:
        if self.engine is not None:
            return await self._engine_openai_call(kind, body, model_id, raw)
        openai.check_fields(kind, body, "backend HUGGINGFACE")
        if kind == "embeddings":
            return await self._openai_embeddings(body)
        cap = self.options.max_new_tokens_limit
        check_openai_body(kind, body, cap)
        params: Dict[str, Any] = {k: body[k] for k in ("temperature", "top_p", "seed", "stop") if body.get(k) is not None}
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None:
            params["max_new_tokens"] = limit
        kw, seed, stop = engine.generation_kwargs(params, min(self.options.max_new_tokens, cap), cap)
        if kind == "chat":
            rows = [self._chat_row(body["messages"])]
        else:
            prompts = [body["prompt"]] if isinstance(body["prompt"], str) else list(body["prompt"])
            if not all(isinstance(p, str) for p in prompts):
                raise OpenAIError("token-id prompts are not supported by backend HUGGINGFACE: send text",
                                  param="prompt")
            rows = self._encode(prompts)
        if body.get("stream"):
            if len(rows) != 1:
                raise OpenAIError("streaming takes one prompt per request", param="prompt")
            return self._openai_stream(kind, rows[0], kw, seed, stop)
        import torch

        done = [await self._thread.submit(engine.generate_counted, torch, self.model, self.tokenizer, row, kw, seed,
                                          stop, self.device) for row in rows]
        texts, counts = [t for t, _ in done], [n for _, n in done]
        finishes = ["length" if n >= kw["max_new_tokens"] else "stop" for n in counts]
        prompt_tokens = sum(len(r["input_ids"]) for r in rows)
        if kind == "chat":
            return openai.chat_body(self.name, texts[0], finishes[0], prompt_tokens, counts[0])
        return openai.completion_body(self.name, texts, finishes, prompt_tokens, sum(counts))

    def _chat_row(self, messages: list) -> Dict[str, List[int]]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise OpenAIError(f"model '{self.name}' has no chat template (tokenizer_config.json chat_template): "
                              "use /v1/completions", param="messages")
        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as exc:  # noqa: BLE001 - a template error is the request's problem
            raise OpenAIError(f"the chat template failed on these messages: {exc}", param="messages") from None
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a list, or a BatchEncoding
        if len(ids) > self.model_limit:
            raise OpenAIError(f"the chat is {len(ids)} tokens long; this model takes at most {self.model_limit}",
                              param="messages")
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    async def _openai_stream(self, kind: str, row: Dict[str, List[int]], kw: dict, seed, stop):
        import torch

        queue: asyncio.Queue = asyncio.Queue()
        streamer = engine.QueueStreamer(engine.TextDeltas(self.tokenizer, stop), asyncio.get_running_loop(), queue)
        job = self._thread.submit(engine.generate_counted, torch, self.model, self.tokenizer, row, kw, seed, stop,
                                  self.device, streamer)
        rid, created = openai.new_id("chatcmpl" if kind == "chat" else "cmpl"), int(time.time())
        try:
            if kind == "chat":
                yield openai.chunk(kind, rid, created, self.name, "", role="assistant")
            while True:
                delta = await queue.get()
                if delta is None:
                    break
                yield openai.chunk(kind, rid, created, self.name, delta)
            _, count = await job
            finish = "length" if count >= kw["max_new_tokens"] else "stop"
            yield openai.chunk(kind, rid, created, self.name, None if kind == "chat" else "", finish)
            yield openai.SSE_DONE
        finally:
            streamer.cancelled = True  # the client left early: stop generating

    async def _openai_embeddings(self, body: dict) -> dict:
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise OpenAIError("'input' must be a string or a non-empty list of strings (token arrays are not "
                              "supported)", param="input")
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise OpenAIError(f"input {empty[0]} is empty", param="input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise OpenAIError(f"encoding_format must be float or base64, got {fmt!r}", param="encoding_format")
        rows = self._encode(texts)
        vectors = (await self._coalescer(self.task, rows, len(rows)))["embedding"]
        if body.get("dimensions") not in (None, vectors.shape[1]):
            raise OpenAIError(f"this model's embeddings have {vectors.shape[1]} dimensions", param="dimensions")
        return openai.embeddings_body(self.name, vectors, fmt, sum(len(r["input_ids"]) for r in rows))
