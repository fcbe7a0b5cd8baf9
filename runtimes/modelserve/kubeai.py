"""KubeAIRuntime: a KubeAI-style model (engine, features, url, adapters, args, env, files) served by a
supervised engine process, on V2 (infer, generate, streams) and the OpenAI routes."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional

import numpy as np
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import openai, storage
from .codecs import encode_array, text_rows
from .codecs.params import number, sampling_body
from .engines.openai_http import sse_events
from .engines.workdir import workdir, write_files
from .errors import BadRequest, InternalError, ModelLoadError, one_line
from .options import Engine, Feature, RuntimeOptions
from .runtime import Runtime, request_parameters

logger = logging.getLogger("mlserver.modelserve.kubeai")

ENGINE_FEATURES = {
    Engine.VLLM: {Feature.TEXT_GENERATION, Feature.TEXT_EMBEDDING},
    Engine.OLLAMA: {Feature.TEXT_GENERATION, Feature.TEXT_EMBEDDING},
    Engine.FASTER_WHISPER: {Feature.SPEECH_TO_TEXT},
    Engine.INFINITY: {Feature.TEXT_EMBEDDING},
}
DEFAULT_FEATURE = {
    Engine.VLLM: Feature.TEXT_GENERATION,
    Engine.OLLAMA: Feature.TEXT_GENERATION,
    Engine.FASTER_WHISPER: Feature.SPEECH_TO_TEXT,
    Engine.INFINITY: Feature.TEXT_EMBEDDING,
}
AVAILABLE_ENGINES = (Engine.VLLM,)
URL_SCHEMES = ("", "file", "hf", "s3", "pvc", "store")
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdapterSpec(_Strict):
    name: str = Field(max_length=63, pattern=r"^[a-z0-9-]+$")
    """As KubeAI: lowercase letters, digits and dashes. Requests pick it by parameter `adapter` or OpenAI `model`."""
    url: str


class FileSpec(_Strict):
    path: str = Field(min_length=1, max_length=1024)
    """Relative to the model's working folder (the engine's current directory)."""
    content: str = Field(max_length=100_000)


class Scaling(_Strict):
    """KubeAI's scaling fields; the deployment renderer maps them onto KServe (validated here only)."""

    replicas: Optional[int] = Field(default=None, ge=0)
    min_replicas: Optional[int] = Field(default=None, ge=0)
    max_replicas: Optional[int] = Field(default=None, ge=1)
    autoscaling_disabled: bool = False
    target_request: Optional[int] = Field(default=None, ge=1)
    scale_down_delay_seconds: Optional[int] = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        lo, hi = self.min_replicas, self.max_replicas
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_replicas ({lo}) is above max_replicas ({hi})")
        if self.replicas is not None:
            if (lo is not None and self.replicas < lo) or (hi is not None and self.replicas > hi):
                raise ValueError(f"replicas ({self.replicas}) is outside [min_replicas, max_replicas]")
        return self


class KubeAIOptions(RuntimeOptions):
    engine: Engine
    features: Optional[List[Feature]] = Field(default=None, min_length=1)
    """Default: TextGeneration for VLLM and OLlama, SpeechToText for FasterWhisper, TextEmbedding for Infinity."""
    url: Optional[str] = None
    """The model: hf://org/name[@rev], s3://, pvc://, store://, file:// or a local path; default parameters.uri."""
    adapters: List[AdapterSpec] = Field(default_factory=list)
    args: List[str] = Field(default_factory=list)
    """Extra engine command-line arguments, after ours (so they win)."""
    env: Dict[str, str] = Field(default_factory=dict)
    files: List[FileSpec] = Field(default_factory=list)
    processors: Optional[str] = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]*:[1-9][0-9]*$")
    """KubeAI's resource profile, `<profile>:<count>` (e.g. nvidia-gpu-l4:1); used by the deployment renderer."""
    cache_profile: Optional[str] = Field(default=None, max_length=63, pattern=_DNS_LABEL)
    scaling: Optional[Scaling] = None
    store_root: Optional[str] = None
    """Where store:// URLs resolve; default $MODELSERVE_STORE_ROOT."""
    engine_command: Optional[str] = None
    """The engine executable (vLLM: the `vllm` CLI); default $MODELSERVE_VLLM_COMMAND, then PATH."""
    engine_url: Optional[str] = Field(default=None, pattern=r"^https?://")
    """Attach to an engine that already runs (started with --served-model-name = this model's name)."""
    start_timeout: float = Field(default=600, gt=0)
    max_restarts: int = Field(default=5, ge=0)
    max_tokens: int = Field(default=256, ge=1)
    """V2 generation: new tokens when the request does not say (parameter `max_tokens`)."""
    max_tokens_limit: int = Field(default=4096, ge=1)
    """The most new tokens any request (V2 or OpenAI) may ask for; more is a 400."""

    @model_validator(mode="after")
    def _features(self):
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapter name '{dupes[0]}' is used twice")
        return self


class KubeAIRuntime(Runtime):
    """One engine process per model. Load it with ``parallel_workers: 0`` in model-settings.json so that
    the engine starts once (not once per MLServer worker) and streams reach the client."""

    options_class = KubeAIOptions

    def __init__(self, settings):
        super().__init__(settings)
        openai.add_routes(self)
        self.engine = None

    # -- loading -----------------------------------------------------------------------------------
    async def _load(self) -> None:
        opts: KubeAIOptions = self.options
        supported = ENGINE_FEATURES[opts.engine]
        self.features = list(dict.fromkeys(opts.features or [DEFAULT_FEATURE[opts.engine]]))
        bad = [f.value for f in self.features if f not in supported]
        if bad:
            raise ModelLoadError(self.name, f"engine {opts.engine.value} does not support feature {bad[0]} "
                                            f"(it supports: {', '.join(sorted(f.value for f in supported))})")
        if opts.engine not in AVAILABLE_ENGINES:
            raise ModelLoadError(self.name, f"engine {opts.engine.value} is not available in this version of "
                                            f"modelserve (available: {', '.join(e.value for e in AVAILABLE_ENGINES)})")
        if Feature.TEXT_GENERATION in self.features and Feature.TEXT_EMBEDDING in self.features:
            raise ModelLoadError(self.name, "vLLM runs one model either for generation or for embeddings: list "
                                            "TextGeneration or TextEmbedding, not both (serve the model twice for both)")
        if multiprocessing_worker():
            logger.warning("model '%s' is loaded in an MLServer worker process: every worker starts its own engine "
                           "and streams cannot reach clients; set \"parallel_workers\": 0 in its model-settings.json",
                           self.name)

        folder = workdir(self.name, opts.cache_dir)
        write_files(self.name, folder, [(f.path, f.content) for f in opts.files])
        model_path = await self._resolve(self._model_url(), "url") if opts.engine_url is None else None
        adapters = {a.name: await self._resolve(a.url, f"adapter '{a.name}'") for a in opts.adapters}
        self.adapters = list(adapters)

        from .engines.vllm import VLLMEngine

        self.engine = VLLMEngine(
            self.name, model_path, adapters=adapters, args=opts.args, env=opts.env, cwd=folder,
            pooling=Feature.TEXT_EMBEDDING in self.features, engine_command=opts.engine_command,
            engine_url=opts.engine_url, start_timeout=opts.start_timeout, max_restarts=opts.max_restarts,
            on_failed=self._engine_failed)
        await self.engine.start()
        self._set_metadata()
        openai.register(self)

    def _model_url(self) -> str:
        url = self.options.url or (self.settings.parameters.uri if self.settings.parameters else None)
        if not url or not url.strip():
            raise ModelLoadError(self.name, "no model: set the option 'url' (hf://, s3://, pvc://, store:// or a "
                                            "local path) or parameters.uri")
        return url.strip()

    async def _resolve(self, url: str, what: str) -> Path:
        opts: KubeAIOptions = self.options
        scheme = storage.split_uri(url)[0]
        if scheme == "ollama":
            raise ModelLoadError(self.name, f"{what}: ollama:// URLs are for engine OLlama, not {opts.engine.value}")
        try:
            path = await asyncio.to_thread(storage.resolve_uri, self.settings, url, cache_dir=opts.cache_dir,
                                           pvc_root=opts.pvc_root, store_root=opts.store_root, schemes=URL_SCHEMES)
        except ModelLoadError as exc:
            raise ModelLoadError(self.name, f"{what}: {exc.reason}") from None
        if not path.is_dir():
            raise ModelLoadError(self.name, f"{what}: {path} is not a folder (expected a model folder)")
        return path

    def _engine_failed(self, reason: str) -> None:
        self.ready = False
        logger.error("model '%s' is no longer ready: %s", self.name, reason)

    def _set_metadata(self) -> None:
        if Feature.TEXT_EMBEDDING in self.features:
            self.inputs = self.inputs or [MetadataTensor(name="text", datatype="BYTES", shape=[-1])]
            self.outputs = self.outputs or [MetadataTensor(name="embedding", datatype="FP32", shape=[-1, -1])]
        else:
            self.inputs = self.inputs or [MetadataTensor(name="prompt", datatype="BYTES", shape=[-1]),
                                          MetadataTensor(name="messages", datatype="BYTES", shape=[-1])]
            self.outputs = self.outputs or [MetadataTensor(name="text", datatype="BYTES", shape=[-1]),
                                            MetadataTensor(name="finish_reason", datatype="BYTES", shape=[-1])]

    async def unload(self) -> bool:
        openai.unregister(self)
        if self.engine is not None:
            await self.engine.stop()
        return True

    # -- V2 ----------------------------------------------------------------------------------------
    def _rows(self, payload: InferenceRequest) -> tuple[str, list]:
        if not payload.inputs:
            raise BadRequest("the request has no inputs: send a BYTES tensor 'prompt' (or 'messages' with JSON chats)")
        if len(payload.inputs) > 1:
            names = ", ".join(i.name for i in payload.inputs)
            raise BadRequest(f"send one input tensor, got {len(payload.inputs)} ({names})")
        inp = payload.inputs[0]
        embedding = Feature.TEXT_EMBEDDING in self.features
        allowed = ("text", "input") if embedding else ("prompt", "text", "messages")
        if inp.name not in allowed:
            raise BadRequest(f"unknown input '{inp.name}' (this model takes: {', '.join(allowed)})")
        if inp.name == "messages":
            return "messages", [parse_messages(i, r) for i, r in enumerate(text_rows(inp, "chat", allow_empty=True))]
        return inp.name, text_rows(inp)

    def _model_id(self, params: Dict[str, Any]) -> str:
        adapter = params.pop("adapter", None)
        if adapter is None:
            return self.name
        if adapter not in self.adapters:
            raise BadRequest(f"unknown adapter {adapter!r} (this model has: {', '.join(self.adapters) or 'none'})",
                             404 if isinstance(adapter, str) else 400)
        return adapter

    def _wanted(self, payload: InferenceRequest) -> List[str]:
        names = [o.name for o in payload.outputs or []]
        offered = [o.name for o in self.outputs or []]
        unknown = [n for n in names if n not in offered]
        if unknown:
            raise BadRequest(f"unknown output '{unknown[0]}' (this model offers: {', '.join(offered)})")
        return names or offered[:1]

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        kind, rows = self._rows(payload)
        wanted = self._wanted(payload)
        params = request_parameters(payload)
        if Feature.TEXT_EMBEDDING in self.features:
            model_id = self._model_id(params)
            leftover = [k for k in params if k not in ("content_type", "headers")]
            if leftover:
                raise BadRequest(f"unknown parameter '{leftover[0]}' for embeddings (allowed: adapter)")
            result = await self.engine.upstream.post("/v1/embeddings", {"model": model_id, "input": rows})
            vectors = np.array([d["embedding"] for d in sorted(result["data"], key=lambda d: d["index"])],
                               dtype=np.float32)
            return self._response(payload, {"embedding": vectors}, wanted)
        model_id = self._model_id(params)
        body = sampling_body(params, min(self.options.max_tokens, self.options.max_tokens_limit),
                             self.options.max_tokens_limit)
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
        return self._response(payload, outputs, wanted)

    def _response(self, payload: InferenceRequest, outputs: Dict[str, np.ndarray], wanted: List[str]) -> InferenceResponse:
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[encode_array(n, outputs[n]) for n in wanted])

    async def predict_stream(self, payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[InferenceResponse]:
        """Tokens as the engine produces them (REST generate_stream/infer_stream as SSE, gRPC ModelStreamInfer)."""
        payload = await payloads.__anext__()
        try:
            if Feature.TEXT_EMBEDDING in self.features:
                yield await self._predict(payload)
                return
            kind, rows = self._rows(payload)
            wanted = self._wanted(payload)
            if len(rows) != 1:
                raise BadRequest(f"streaming takes one prompt per request, got {len(rows)}")
            params = request_parameters(payload)
            model_id = self._model_id(params)
            body = sampling_body(params, min(self.options.max_tokens, self.options.max_tokens_limit),
                                 self.options.max_tokens_limit)
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
        return [self.name, *getattr(self, "adapters", [])] if self.engine is not None else []

    def openai_supports(self, kind: str) -> bool:
        if kind == "embeddings":
            return Feature.TEXT_EMBEDDING in self.features
        return Feature.TEXT_GENERATION in self.features

    async def openai_call(self, kind: str, body: dict, model_id: str) -> Any:
        path = {"completions": "/v1/completions", "chat": "/v1/chat/completions", "embeddings": "/v1/embeddings"}[kind]
        if kind != "embeddings":
            check_openai_body(kind, body, self.options.max_tokens_limit)
        if body.get("stream") and kind != "embeddings":
            return await self.engine.upstream.stream(path, body)
        return await self.engine.upstream.post(path, body)


def multiprocessing_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


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
    from .openai import OpenAIError

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

