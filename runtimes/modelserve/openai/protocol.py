"""OpenAI's API as data: the error shape, response bodies and SSE chunks for backends that generate themselves,
and the checks every backend applies to a request body before anything runs. No HTTP here (routes.py)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..codecs.params import number
from ..errors import BadRequest

# the form fields of /v1/audio/transcriptions we implement (OpenAI's others are refused by name)
FORM_FIELDS = ("file", "model", "language", "prompt", "temperature", "response_format", "timestamp_granularities[]")


class OpenAIError(Exception):
    """An OpenAI-shaped error: ``{"error": {"message", "type", "param", "code"}}``, which the official client turns
    into its typed exceptions."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None, type_: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.param, self.headers = status, param, headers
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.status}}


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


TOKENIZE_FIELDS = {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt", "user"}


def parse_tokenize(body: dict) -> Tuple[Optional[str], Optional[list], bool, bool]:
    """vLLM's /tokenize body: (prompt, messages, add_special_tokens, add_generation_prompt), exactly one of prompt
    and messages."""
    extra = [k for k, v in body.items() if k not in TOKENIZE_FIELDS and v is not None]
    if extra:
        raise OpenAIError(f"field '{extra[0]}' is not supported by /v1/tokenize", param=extra[0])
    prompt, messages = body.get("prompt"), body.get("messages")
    if (prompt is None) == (messages is None):
        raise OpenAIError("send one of 'prompt' (a string) and 'messages' (a chat)", param="prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise OpenAIError("'prompt' must be a string", param="prompt")
    if messages is not None and (not isinstance(messages, list) or not messages or
                                 not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)):
        raise OpenAIError("'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    flags = []
    for key, default in (("add_special_tokens", prompt is not None), ("add_generation_prompt", True)):
        value = body.get(key)
        if value is None:
            value = default
        if not isinstance(value, bool):
            raise OpenAIError(f"'{key}' must be true or false, got {value!r}", param=key)
        flags.append(value)
    return prompt, messages, flags[0], flags[1]


def parse_detokenize(body: dict, vocab: int) -> List[int]:
    """vLLM's /detokenize body: its ``tokens``, ids below ``vocab``."""
    extra = [k for k, v in body.items() if k not in ("model", "tokens", "user") and v is not None]
    if extra:
        raise OpenAIError(f"field '{extra[0]}' is not supported by /v1/detokenize", param=extra[0])
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise OpenAIError("'tokens' must be a list of token ids (integers)", param="tokens")
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise OpenAIError(f"token id {bad[0]} is not in this model's vocabulary (0 to {vocab - 1})", param="tokens")
    return tokens


def sse(data: Any) -> bytes:
    """One SSE event, compact JSON as vLLM writes it (metrics read the chunks' bytes: openai/routes._guarded)."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


# -- response bodies, for runtimes that generate themselves (HuggingFaceRuntime on transformers) ------------
def new_id(prefix: str) -> str:
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


def wants_usage(body: dict) -> bool:
    """``stream_options: {"include_usage": true}``: a stream ends with a chunk carrying ``usage`` (OpenAI's)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def usage_chunk(kind: str, rid: str, created: int, model: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    """The last event of a stream that asked for ``include_usage``: no choices, the request's usage."""
    return sse({"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                "created": created, "model": model, "choices": [],
                "usage": usage(prompt_tokens, completion_tokens)})


def embeddings_body(model: str, vectors, encoding_format: str, prompt_tokens: int) -> dict:
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
                    "seed", "stop", "n", "response_format", "prompt" if kind == "completions" else "messages"}
    extra = [k for k, v in body.items() if k not in allowed and v is not None]
    if extra:
        raise OpenAIError(f"field '{extra[0]}' is not supported by {backend}", param=extra[0])
    if body.get("n") not in (None, 1):
        raise OpenAIError("only n=1 is supported", param="n")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "structural_tag":
        raise OpenAIError(f"response_format structural_tag is not supported by {backend} (json_object and "
                          "json_schema are)", param="response_format")


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
    check_structured(body)


RESPONSE_FORMATS = ("text", "json_object", "json_schema", "structural_tag")


def check_structured(body: dict) -> Optional[dict]:
    """``response_format``, ``tools`` and ``tool_choice`` in OpenAI's shapes: a 400 naming what is wrong before the
    engine sees them (vLLM says only that a named tool "does not match any of the specified tools"). Returns
    the JSON schema the answer must follow (json_object: any object), or None."""
    fmt = body.get("response_format")
    schema = None
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in RESPONSE_FORMATS:
            raise OpenAIError(f"response_format.type must be one of {', '.join(RESPONSE_FORMATS)}, got {kind!r}",
                              param="response_format")
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise OpenAIError("response_format json_schema needs 'json_schema': {'name': ..., 'schema': {...}} "
                                  "with the schema as an object", param="response_format")
            schema = spec["schema"]
        elif kind == "json_object":
            schema = {"type": "object"}
    tools, choice = body.get("tools"), body.get("tool_choice")
    names: List[str] = []
    if tools is not None:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str) for t in tools):
            raise OpenAIError("'tools' must be a list of {'type': 'function', 'function': {'name': ..., "
                              "'parameters': {...}}}", param="tools")
        names = [t["function"]["name"] for t in tools]
    if choice is not None and choice not in ("none", "auto", "required"):
        wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if not isinstance(wanted, str):
            raise OpenAIError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                              "{'name': ...}}", param="tool_choice")
        if wanted not in names:
            raise OpenAIError(f"tool_choice names tool '{wanted}', which is not in 'tools' (given: "
                              f"{', '.join(names) or 'none'})", param="tool_choice")
    elif choice in ("auto", "required") and not names:
        raise OpenAIError(f"tool_choice '{choice}' needs 'tools'", param="tool_choice")
    return schema

