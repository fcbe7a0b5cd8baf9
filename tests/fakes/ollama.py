"""A stand-in Ollama server for tests: the Ollama binary is on no registry this machine reaches.

It speaks Ollama's documented REST API (docs/api.md): GET / and /api/version, /api/tags, POST /api/pull
(NDJSON progress, an error line for unknown models), /api/show, /api/generate and /api/chat (NDJSON streams,
``done_reason``, token counts, ``raw``, ``options.num_predict``/``seed``/``stop``, an empty prompt loads the
model), /api/embed, and ``{"error": ...}`` bodies with Ollama's statuses. Text comes from a deterministic toy
"model" (words picked by hashing the prompt and the options), embeddings from hashing the text: the
runtime's plumbing is what the tests check, against this server or a real Ollama (OLLAMA_HOST).

Run as ``tests/fakes/ollama.py serve`` (listening on $OLLAMA_HOST, as ``ollama serve`` does).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time

import numpy as np
from aiohttp import web

WORDS = ("the sea town boat fish wind bread market apple cheese honey bridge garden river lamp stone cloud "
         "morning evening quiet bright small warm green blue").split()
REGISTRY = {  # what the "library" offers; pulled models become local
    "tinyllama:latest": {"family": "llama", "capabilities": ["completion"], "size": 637_700_000},
    "qwen2:0.5b": {"family": "qwen2", "capabilities": ["completion"], "size": 352_000_000},
    "all-minilm:latest": {"family": "bert", "capabilities": ["embedding"], "size": 45_960_000},
}
LOCAL: dict = {}
LOADED: dict = {}
DIM = 64
CALLS = {"pull": 0, "generate": 0, "chat": 0, "embed": 0}


def tag(name: str) -> str:
    return name if ":" in name else name + ":latest"


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def not_found(name: str) -> web.Response:
    return error(404, f"model '{name}' not found")


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def words(prompt: str, options: dict):
    """The toy model: a deterministic word stream for (prompt, seed); stops after 4-11 words on its own."""
    seed = options.get("seed", 0)
    h = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    natural = 4 + h[0] % 8
    for i in range(10_000):
        if i >= natural:
            return
        yield (" " if i else "") + WORDS[hashlib.sha256(h + bytes([i % 256, i // 256])).digest()[0] % len(WORDS)]


def generate(prompt: str, options: dict):
    """(pieces, done_reason): num_predict limits the words, ``stop`` cuts the text."""
    limit = int(options.get("num_predict", -1))
    pieces, reason = [], "stop"
    for w in words(prompt, options):
        if 0 <= limit <= len(pieces):
            reason = "length"
            break
        pieces.append(w)
    text = "".join(pieces)
    for s in options.get("stop") or []:
        if s and s in text:
            text = text[:text.index(s)]
            reason = "stop"
    out, acc = [], ""
    for w in pieces:  # re-split the cut text into the pieces that make it up
        if len(acc) >= len(text):
            break
        piece = w[:len(text) - len(acc)]
        out.append(piece)
        acc += piece
    return out, reason


def counts(text: str) -> int:
    return max(1, len(text.split()))


async def ndjson(request, items, delay: float = 0) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    for item in items:
        await resp.write((json.dumps(item) + "\n").encode())
        await asyncio.sleep(delay)
    await resp.write_eof()
    return resp


async def body_of(request):
    try:
        data = await request.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def local(data: dict):
    name = data.get("model") or data.get("name") or ""
    return name, LOCAL.get(tag(name))


async def root(_):
    return web.Response(text="Ollama is running")


async def version(_):
    return web.json_response({"version": "0.12.3"})


async def tags(_):
    return web.json_response({"models": [
        {"name": t, "model": t, "modified_at": "2026-11-25T00:00:00Z", "size": m["size"], "digest": digest(t),
         "details": {"format": "gguf", "family": m["family"], "parameter_size": "1B", "quantization_level": "Q4_0"}}
        for t, m in LOCAL.items()]})


async def pull(request):
    data = await body_of(request)
    if data is None:
        return error(400, "invalid request body")
    CALLS["pull"] += 1
    name = tag(data.get("model") or data.get("name") or "")
    stream = data.get("stream", True)
    if name not in REGISTRY:
        if not stream:
            return error(500, "pull model manifest: file does not exist")
        return await ndjson(request, [{"status": "pulling manifest"},
                                      {"error": "pull model manifest: file does not exist"}])
    size = REGISTRY[name]["size"]
    LOCAL[name] = REGISTRY[name]
    if not stream:
        return web.json_response({"status": "success"})
    steps = [{"status": "pulling manifest"}]
    steps += [{"status": f"pulling {digest(name)[7:19]}", "digest": digest(name), "total": size,
               "completed": size * k // 4} for k in range(5)]
    steps += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
    return await ndjson(request, steps)


async def show(request):
    data = await body_of(request) or {}
    name, model = local(data)
    if model is None:
        return not_found(name)
    return web.json_response({
        "modelfile": f"FROM {name}", "parameters": "stop \"</s>\"", "template": "{{ .Prompt }}",
        "details": {"format": "gguf", "family": model["family"], "parameter_size": "1B", "quantization_level": "Q4_0"},
        "model_info": {"general.architecture": model["family"]}, "capabilities": model["capabilities"],
        "modified_at": "2026-11-25T00:00:00Z"})


async def _generation_request(request, what: str):
    """(data, name, None) for a valid generate/chat request on a local completion model, else (.., error)."""
    data = await body_of(request)
    if data is None:
        return None, "", error(400, "invalid request body")
    name, model = local(data)
    if model is None:
        return data, name, not_found(name)
    if "completion" not in model["capabilities"]:
        return data, name, error(400, f'"{name}" does not support {what}')
    if not isinstance(data.get("options") or {}, dict):
        return data, name, error(400, "options must be an object")
    CALLS[what] += 1
    return data, name, None


def _final(name: str, prompt: str, text: str, reason: str, started: float) -> dict:
    return {"model": name, "created_at": "2026-11-25T00:00:00Z", "done": True, "done_reason": reason,
            "total_duration": int((time.monotonic() - started) * 1e9), "load_duration": 0,
            "prompt_eval_count": counts(prompt), "prompt_eval_duration": 1000, "eval_count": counts(text) if text else 0,
            "eval_duration": 1000}


async def generate_route(request):
    started = time.monotonic()
    data, name, bad = await _generation_request(request, "generate")
    if bad is not None:
        return bad
    prompt = data.get("prompt") or ""
    if prompt.startswith("sleep:"):  # test hook: a slow generation, for request timeouts
        await asyncio.sleep(float(prompt[6:]))
    delay = 0.5 if prompt.startswith("slow:") else 0  # test hook: a slow stream, 0.5 s per piece
    LOADED[tag(name)] = data.get("keep_alive")
    if not prompt:  # Ollama: an empty prompt only loads the model
        return web.json_response({"model": name, "created_at": "2026-11-25T00:00:00Z", "response": "",
                                  "done": True, "done_reason": "load"})
    if not data.get("raw"):
        prompt = f"<|user|>{prompt}<|assistant|>"  # the model's template
    pieces, reason = generate(prompt, data.get("options") or {})
    text = "".join(pieces)
    final = {**_final(name, prompt, text, reason, started), "response": ""}
    if data.get("stream", True):
        chunks = [{"model": name, "created_at": "2026-11-25T00:00:00Z", "response": p, "done": False} for p in pieces]
        return await ndjson(request, [*chunks, final], delay)
    return web.json_response({**final, "response": text})


async def chat_route(request):
    started = time.monotonic()
    data, name, bad = await _generation_request(request, "chat")
    if bad is not None:
        return bad
    messages = data.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        return error(400, "messages must be a list of {role, content}")
    prompt = "".join(f"<|{m['role']}|>{m.get('content', '')}" for m in messages) + "<|assistant|>"
    pieces, reason = generate(prompt, data.get("options") or {})
    text = "".join(pieces)
    final = {**_final(name, prompt, text, reason, started), "message": {"role": "assistant", "content": ""}}
    if data.get("stream", True):
        chunks = [{"model": name, "created_at": "2026-11-25T00:00:00Z", "message": {"role": "assistant", "content": p},
                   "done": False} for p in pieces]
        return await ndjson(request, [*chunks, final])
    return web.json_response({**final, "message": {"role": "assistant", "content": text}})


def vector(text: str) -> list:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))
    v = rng.standard_normal(DIM)
    return (v / np.linalg.norm(v)).round(6).tolist()


async def embed_route(request):
    data = await body_of(request)
    if data is None:
        return error(400, "invalid request body")
    name, model = local(data)
    if model is None:
        return not_found(name)
    if "embedding" not in model["capabilities"]:
        return error(400, f'"{name}" does not support embeddings')
    texts = data.get("input", [])
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return error(400, "invalid input type")
    CALLS["embed"] += 1
    LOADED[tag(name)] = data.get("keep_alive")
    return web.json_response({"model": name, "embeddings": [vector(t) for t in texts], "total_duration": 1000,
                              "load_duration": 0, "prompt_eval_count": sum(counts(t) for t in texts)})


async def ps(_):
    return web.json_response({"models": [{"name": t, "model": t, "size": LOCAL[t]["size"], "digest": digest(t),
                                          "expires_at": "2318-01-01T00:00:00Z" if k in (-1, "-1") else
                                          "2026-11-25T00:05:00Z", "keep_alive": k}
                                         for t, k in LOADED.items() if t in LOCAL]})


async def calls(_):
    return web.json_response(CALLS)


def app() -> web.Application:
    a = web.Application()
    a.add_routes([web.get("/", root), web.get("/api/version", version), web.get("/api/tags", tags),
                  web.post("/api/pull", pull), web.post("/api/show", show), web.post("/api/generate", generate_route),
                  web.post("/api/chat", chat_route), web.post("/api/embed", embed_route), web.get("/api/ps", ps),
                  web.get("/fake/calls", calls)])
    return a


def main() -> None:
    if sys.argv[1:2] != ["serve"]:
        print("usage: ollama.py serve   (listens on $OLLAMA_HOST, default 127.0.0.1:11434)", file=sys.stderr)
        sys.exit(2)
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").replace("http://", "")
    address, _, port = host.rpartition(":")
    print(f"Listening on {address}:{port} (fake Ollama, version 0.12.3)", flush=True)
    web.run_app(app(), host=address or "127.0.0.1", port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
