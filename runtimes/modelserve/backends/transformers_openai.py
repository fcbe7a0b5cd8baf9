"""The OpenAI routes on a transformers model (TransformersBackend): text_generation answers completions and chat
(streamed or not), text_embedding answers embeddings; the same client works against backend VLLM."""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any, Dict, List, Optional

from ..openai import protocol as openai
from ..openai.protocol import OpenAIError, check_openai_body


class TransformersOpenAI:
    def __init__(self, backend):
        self.backend = backend

    async def call(self, kind: str, body: dict, adapter: Optional[str] = None) -> Any:
        b = self.backend
        if kind in ("tokenize", "detokenize"):
            return self._tokens(kind, body)
        openai.check_fields(kind, body, "backend HUGGINGFACE")
        if kind == "embeddings":
            return await self._embeddings(body)
        cap = b.options.max_new_tokens_limit
        check_openai_body(kind, body, cap)
        schema = openai.check_structured(body)
        params: Dict[str, Any] = {k: body[k] for k in ("temperature", "top_p", "seed", "stop") if body.get(k) is not None}
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None:
            params["max_new_tokens"] = limit
        kw, seed, stop = b.generation_args(params)
        if schema is not None:
            kw["response_schema"] = schema  # backends/transformers_grammar.py, in the model thread
        if kind == "chat":
            rows = [self._chat_row(body["messages"])]
        else:
            prompts = [body["prompt"]] if isinstance(body["prompt"], str) else list(body["prompt"])
            if not all(isinstance(p, str) for p in prompts):
                raise OpenAIError("token-id prompts are not supported by backend HUGGINGFACE: send text",
                                  param="prompt")
            rows = b.encode(prompts)
        if body.get("stream"):
            if len(rows) != 1:
                raise OpenAIError("streaming takes one prompt per request", param="prompt")
            return self._stream(kind, rows[0], kw, seed, stop, openai.wants_usage(body), adapter)
        done = [await b.generate(row, kw, seed, stop, adapter=adapter) for row in rows]
        texts, counts = [t for t, _ in done], [n for _, n in done]
        finishes = ["length" if n >= kw["max_new_tokens"] else "stop" for n in counts]
        prompt_tokens = sum(len(r["input_ids"]) for r in rows)
        if kind == "chat":
            return openai.chat_body(adapter or b.name, texts[0], finishes[0], prompt_tokens, counts[0])
        return openai.completion_body(adapter or b.name, texts, finishes, prompt_tokens, sum(counts))

    def _tokens(self, kind: str, body: dict) -> dict:
        """vLLM's /tokenize and /detokenize answers, from this model's tokenizer."""
        b = self.backend
        if kind == "detokenize":
            tokens = openai.parse_detokenize(body, len(b.tokenizer))
            return {"prompt": b.tokenizer.decode(tokens)}
        prompt, messages, special, generation = openai.parse_tokenize(body)
        if messages is not None:
            ids = self._chat_row(messages, generation, check_length=False)["input_ids"]
        else:
            ids = list(b.tokenizer(prompt, add_special_tokens=special)["input_ids"])
        return {"count": len(ids), "max_model_len": b.model_limit, "tokens": ids, "token_strs": None}

    def _chat_row(self, messages: list, generation_prompt: bool = True,
                  check_length: bool = True) -> Dict[str, List[int]]:
        b = self.backend
        if not getattr(b.tokenizer, "chat_template", None):
            raise OpenAIError(f"model '{b.name}' has no chat template (tokenizer_config.json chat_template): "
                              "use /v1/completions", param="messages")
        try:
            ids = b.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
        except Exception as exc:  # noqa: BLE001 - a template error is the request's problem
            raise OpenAIError(f"the chat template failed on these messages: {exc}", param="messages") from None
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a list, or a BatchEncoding
        if check_length and len(ids) > b.model_limit:
            raise OpenAIError(f"the chat is {len(ids)} tokens long; this model takes at most {b.model_limit}",
                              param="messages")
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    async def _stream(self, kind: str, row: Dict[str, List[int]], kw: dict, seed, stop, usage: bool = False,
                      adapter: Optional[str] = None):
        name = adapter or self.backend.name
        rid, created = openai.new_id("chatcmpl" if kind == "chat" else "cmpl"), int(time.time())
        if kind == "chat":
            yield openai.chunk(kind, rid, created, name, "", role="assistant")
        generated = 0
        async with aclosing(self.backend.deltas(row, kw, seed, stop, adapter)) as deltas:
            async for delta in deltas:
                if isinstance(delta, str):
                    yield openai.chunk(kind, rid, created, name, delta)
                    continue
                generated = delta
                finish = "length" if delta >= kw["max_new_tokens"] else "stop"
                yield openai.chunk(kind, rid, created, name, None if kind == "chat" else "", finish)
        if usage:
            yield openai.usage_chunk(kind, rid, created, name, len(row["input_ids"]), generated)
        yield openai.SSE_DONE

    async def _embeddings(self, body: dict) -> dict:
        b = self.backend
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
        rows = b.encode(texts)
        vectors = await b.embed(rows)
        if body.get("dimensions") not in (None, vectors.shape[1]):
            raise OpenAIError(f"this model's embeddings have {vectors.shape[1]} dimensions", param="dimensions")
        return openai.embeddings_body(b.name, vectors, fmt, sum(len(r["input_ids"]) for r in rows))
