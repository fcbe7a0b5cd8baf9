"""Ollama through its official Python client (``ollama.AsyncClient``): the server at ``engine_url`` or
$OLLAMA_HOST when set, otherwise ``ollama serve`` started and supervised like any engine server.

On start the model (``ollama://name[:tag]``) is pulled (progress in the log), checked with /api/show and
loaded with ``keep_alive: -1`` so it stays in memory while we serve it. ``upstream`` answers the OpenAI
calls backends.engine.EngineBackend makes (completions, chat, embeddings, streamed as SSE) by translating them to the
client's generate/chat/embed, so V2 and the OpenAI routes work exactly as for vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence

from ..openai import protocol as openai
from ..errors import BadRequest, InternalError, ModelLoadError, Unavailable
from .openai_http import EngineError
from .process import EngineProcess
from .server import find_command

logger = logging.getLogger("mlserver.modelserve.ollama")

COMMAND_ENV = "MODELSERVE_OLLAMA_COMMAND"
KEEP_ALIVE = -1  # stay loaded until we unload
# OpenAI sampling fields -> Ollama options; the rest of sampling_body's fields have no Ollama equivalent
OPTIONS = {"max_tokens": "num_predict", "max_completion_tokens": "num_predict", "temperature": "temperature",
           "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed", "stop": "stop",
           "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
           "repetition_penalty": "repeat_penalty"}
IGNORED = ("model", "prompt", "messages", "input", "stream", "stream_options", "user", "n", "encoding_format",
           "dimensions")


def model_tag(url: str) -> str:
    """``ollama://llama3.2:1b`` -> ``llama3.2:1b``."""
    name = url.split("://", 1)[1].strip("/") if "://" in url else url
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"expected ollama://name[:tag], got {url!r}")
    return name


def options_of(body: Dict[str, Any]) -> Dict[str, Any]:
    extra = [k for k, v in body.items() if k not in OPTIONS and k not in IGNORED and v is not None]
    if extra:
        raise BadRequest(f"'{extra[0]}' is not supported by engine OLlama (it takes: "
                         f"{', '.join(k for k in OPTIONS if k != 'max_completion_tokens')})")
    if body.get("n") not in (None, 1):
        raise BadRequest("only n=1 is supported by engine OLlama")
    opts = {OPTIONS[k]: v for k, v in body.items() if k in OPTIONS and v is not None}
    if isinstance(opts.get("stop"), str):
        opts["stop"] = [opts["stop"]]
    return opts


def _transport(exc: BaseException) -> bool:
    """httpx's connection and protocol errors, which the client passes through when streaming."""
    return type(exc).__module__.split(".")[0] in ("httpx", "httpcore")


def _finish(reason: Optional[str]) -> str:
    return "length" if reason == "length" else "stop"


class OllamaEngine:
    def __init__(self, name: str, tag: str, *, engine_url: Optional[str], engine_command: Optional[str],
                 env: Dict[str, str], args: Sequence[str], cwd: Path, start_timeout: float, max_restarts: int,
                 on_failed: Optional[Callable[[str], None]], generation: bool, embedding: bool):
        self.name, self.tag = name, tag
        self.generation, self.embedding = generation, embedding
        self.process: Optional[EngineProcess] = None
        self._host = engine_url or os.environ.get("OLLAMA_HOST") or None
        self._clients: Dict[str, Any] = {}
        if self._host is None:
            exe = find_command(name, engine_command, COMMAND_ENV, "ollama", "Ollama",
                               "the `ollama` binary, or set $OLLAMA_HOST to a running Ollama server")
            env_cmd = shutil.which("env") or "/usr/bin/env"

            def argv(port: int) -> List[str]:  # `ollama serve` takes its address from OLLAMA_HOST
                return [env_cmd, f"OLLAMA_HOST=127.0.0.1:{port}", *exe, "serve", *args]

            self.process = EngineProcess(name, argv, env=env, cwd=str(cwd), health_path="/",
                                         start_timeout=start_timeout, max_restarts=max_restarts, on_failed=on_failed,
                                         on_restarted=self._prepare)
        elif args or env:
            raise ModelLoadError(name, "options 'args' and 'env' are for an Ollama server we start; this one is "
                                       f"already running at {self._host}")
        self.upstream = OllamaOpenAI(self)

    @property
    def host(self) -> str:
        return self.process.base_url if self.process is not None else self._host

    def client(self):
        """One client per address: a restarted `ollama serve` listens on a new port."""
        host = self.host
        found = self._clients.get(host)
        if found is None:
            from ollama import AsyncClient

            found = self._clients[host] = AsyncClient(host=host)
        return found

    def check(self) -> None:
        if self.process is not None:
            self.process.check()

    def unavailable(self, exc: BaseException) -> Unavailable:
        if self.process is not None:
            return self.process.unavailable(exc)
        return Unavailable(f"model '{self.name}': Ollama at {self._host} is unreachable: {exc}", retry_after=5)

    async def start(self) -> None:
        try:
            if self.process is not None:
                await self.process.start()
            await self._prepare()
        except BaseException:
            await self.stop()
            raise

    async def _prepare(self) -> None:
        """Pull, check and load the model: on start, and again in an `ollama serve` that was restarted."""
        await self._pull()
        await self._check_capabilities()
        await self._warm()

    async def _pull(self) -> None:
        from ollama import ResponseError

        logger.info("model '%s': pulling %s from Ollama at %s", self.name, self.tag, self.host)
        last_status, last_note, started = "", 0.0, time.monotonic()
        try:
            async for p in await self.client().pull(self.tag, stream=True):
                now = time.monotonic()
                status = p.status or ""
                if p.total and p.completed is not None:
                    if status != last_status or now - last_note > 5:
                        logger.info("model '%s': %s %d%% of %.1f MB", self.name, status,
                                    100 * p.completed // max(p.total, 1), p.total / 1e6)
                        last_note = now
                elif status != last_status:
                    logger.info("model '%s': %s", self.name, status)
                last_status = status
        except ResponseError as exc:
            raise ModelLoadError(self.name, f"Ollama could not pull '{self.tag}': {exc.error}") from None
        except Exception as exc:  # noqa: BLE001 - ConnectionError, or httpx's when streaming
            if isinstance(exc, (ConnectionError, OSError)) or _transport(exc):
                raise ModelLoadError(self.name, f"Ollama at {self.host} is unreachable: {exc}") from None
            raise ModelLoadError(self.name, f"pulling '{self.tag}' from Ollama at {self.host} failed: {exc}") from None
        logger.info("model '%s': %s pulled in %.1f s", self.name, self.tag, time.monotonic() - started)

    async def _check_capabilities(self) -> None:
        from ollama import ResponseError

        try:
            shown = await self.client().show(self.tag)
        except ResponseError as exc:
            raise ModelLoadError(self.name, f"Ollama cannot show '{self.tag}': {exc.error}") from None
        caps = list(getattr(shown, "capabilities", None) or [])
        if not caps:  # older servers do not list capabilities
            return
        for wanted, cap, feature in ((self.generation, "completion", "TextGeneration"),
                                     (self.embedding, "embedding", "TextEmbedding")):
            if wanted and cap not in caps:
                raise ModelLoadError(self.name, f"Ollama model '{self.tag}' cannot serve feature {feature} (its "
                                                f"capabilities: {', '.join(caps)})")

    async def _warm(self) -> None:
        """Loads the model into memory now (not on the first request) and keeps it there."""
        from ollama import ResponseError

        try:
            if self.generation:
                await self.client().generate(self.tag, prompt="", keep_alive=KEEP_ALIVE)
            else:
                await self.client().embed(self.tag, input=[], keep_alive=KEEP_ALIVE)
        except ResponseError as exc:
            raise ModelLoadError(self.name, f"Ollama could not load '{self.tag}': {exc.error}") from None

    async def stop(self) -> None:
        if self.process is None and self._clients:  # a shared server: free its memory for others
            try:
                if self.generation:
                    await self.client().generate(self.tag, prompt="", keep_alive=0)
                else:
                    await self.client().embed(self.tag, input=[], keep_alive=0)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        for c in self._clients.values():
            try:
                await c._client.aclose()
            except Exception:  # noqa: BLE001
                pass
        self._clients.clear()
        if self.process is not None:
            await self.process.stop()


class OllamaOpenAI:
    """The OpenAI calls EngineLLM makes, answered through the Ollama client (bodies are OpenAI's)."""

    def __init__(self, engine: OllamaEngine):
        self.engine = engine

    async def _call(self, fn, *args, **kw):
        from ollama import ResponseError

        self.engine.check()
        try:
            return await fn(*args, **kw)
        except ResponseError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) and exc.status_code > 0 else 500
            if status < 500:
                raise EngineError(f"Ollama: {exc.error}", status) from None
            raise InternalError(f"model '{self.engine.name}': Ollama failed: {exc.error}") from None
        except (ConnectionError, OSError) as exc:
            raise self.engine.unavailable(exc) from None
        except Exception as exc:  # noqa: BLE001 - httpx transport errors (the server died mid-request)
            if _transport(exc):
                raise self.engine.unavailable(exc) from None
            raise

    async def post(self, path: str, body: dict) -> dict:
        c = self.engine.client()
        tag = self.engine.tag
        if path == "/v1/embeddings":
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise BadRequest("'input' must be a string or a non-empty list of strings")
            fmt = body.get("encoding_format") or "float"
            if fmt not in ("float", "base64"):
                raise BadRequest(f"encoding_format must be float or base64, got {fmt!r}")
            options_of({k: v for k, v in body.items() if k != "encoding_format"})
            res = await self._call(c.embed, tag, input=texts, keep_alive=KEEP_ALIVE,
                                   dimensions=body.get("dimensions"))
            return openai.embeddings_body(body.get("model", self.engine.name), res.embeddings, fmt,
                                          res.prompt_eval_count or 0)
        opts = options_of(body)
        model = body.get("model", self.engine.name)
        if path == "/v1/chat/completions":
            res = await self._call(c.chat, tag, messages=body["messages"], options=opts, keep_alive=KEEP_ALIVE)
            return openai.chat_body(model, res.message.content or "", _finish(res.done_reason),
                                    res.prompt_eval_count or 0, res.eval_count or 0)
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        if not all(isinstance(p, str) for p in prompts):
            raise BadRequest("token-id prompts are not supported by engine OLlama: send text")
        # completions take the prompt as it is (no chat template): Ollama's raw mode
        results = await asyncio.gather(*[self._call(c.generate, tag, prompt=p, raw=True, options=opts,
                                                    keep_alive=KEEP_ALIVE) for p in prompts])
        return openai.completion_body(model, [r.response for r in results], [_finish(r.done_reason) for r in results],
                                      sum(r.prompt_eval_count or 0 for r in results),
                                      sum(r.eval_count or 0 for r in results))

    async def post_raw(self, path: str, raw: bytes) -> dict:
        """The OpenAI routes' pass-through call: Ollama needs the body translated, so it is parsed here."""
        import orjson

        return await self.post(path, orjson.loads(raw))

    async def stream(self, path: str, body: dict, raw: Optional[bytes] = None) -> AsyncIterator[bytes]:
        """Checks and opens the stream before the first byte, so errors still get their status."""
        c = self.engine.client()
        opts = options_of(body)
        kind = "chat" if path == "/v1/chat/completions" else "completions"
        if kind == "chat":
            parts = await self._call(c.chat, self.engine.tag, messages=body["messages"], options=opts,
                                     keep_alive=KEEP_ALIVE, stream=True)
        else:
            if not isinstance(body.get("prompt"), str):
                raise BadRequest("streaming takes one text prompt per request")
            parts = await self._call(c.generate, self.engine.tag, prompt=body["prompt"], raw=True, options=opts,
                                     keep_alive=KEEP_ALIVE, stream=True)
        return self._chunks(kind, body.get("model", self.engine.name), parts, openai.wants_usage(body))

    async def _chunks(self, kind: str, model: str, parts, usage: bool = False) -> AsyncIterator[bytes]:
        rid, created = openai.new_id("chatcmpl" if kind == "chat" else "cmpl"), int(time.time())
        if kind == "chat":
            yield openai.chunk(kind, rid, created, model, "", role="assistant")
        iterator = parts.__aiter__()
        while True:
            part = await self._next(iterator)
            if part is None:
                break
            text = part.message.content if kind == "chat" else part.response
            if text:
                yield openai.chunk(kind, rid, created, model, text)
            if part.done:
                yield openai.chunk(kind, rid, created, model, None if kind == "chat" else "", _finish(part.done_reason))
                if usage:  # Ollama's last part carries the counts
                    yield openai.usage_chunk(kind, rid, created, model, part.prompt_eval_count or 0,
                                             part.eval_count or 0)
        yield openai.SSE_DONE

    async def _next(self, iterator):
        try:
            return await self._call(iterator.__anext__)
        except StopAsyncIteration:
            return None
