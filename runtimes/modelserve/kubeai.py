"""KubeAIRuntime: a KubeAI-style model (engine, features, url, adapters, args, env, files) served by a
supervised engine process, on V2 (infer, generate, streams) and the OpenAI routes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Awaitable, Callable, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import storage
from .adapters import AdapterHost, AdapterSpec, resolve_folder
from .backends import Backend
from .backends.engine import EMBEDDING_KINDS, GENERATION_KINDS, TOKENIZE_KINDS, EngineBackend
from .engines.server import flag
from .engines.workdir import workdir, write_files
from .errors import ModelLoadError
from .options import Engine, Feature, RuntimeOptions, _CaseInsensitiveEnum
from .runtime import Runtime

logger = logging.getLogger("mlserver.modelserve.kubeai")

ENGINE_FEATURES = {
    Engine.VLLM: {Feature.TEXT_GENERATION, Feature.TEXT_EMBEDDING, Feature.RERANKING},
    Engine.OLLAMA: {Feature.TEXT_GENERATION, Feature.TEXT_EMBEDDING},
    Engine.FASTER_WHISPER: {Feature.SPEECH_TO_TEXT},
    Engine.INFINITY: {Feature.TEXT_EMBEDDING, Feature.RERANKING},
}
DEFAULT_FEATURE = {
    Engine.VLLM: Feature.TEXT_GENERATION,
    Engine.OLLAMA: Feature.TEXT_GENERATION,
    Engine.FASTER_WHISPER: Feature.SPEECH_TO_TEXT,
    Engine.INFINITY: Feature.TEXT_EMBEDDING,
}
URL_SCHEMES = ("", "file", "hf", "s3", "pvc", "store")
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSpec(_Strict):
    path: str = Field(min_length=1, max_length=1024)
    """Relative to the model's working folder (the engine's current directory)."""
    content: str = Field(max_length=100_000)
    """The file's text."""


class LoadBalancingStrategy(_CaseInsensitiveEnum):
    LEAST_LOAD = "LeastLoad"
    PREFIX_HASH = "PrefixHash"


class PrefixHash(_Strict):
    """KubeAI's prefix-hash settings (its defaults): consistent hashing with bounded loads over a prompt prefix."""

    mean_load_factor: int = Field(default=125, ge=100)
    """A replica takes at most this percentage of the mean load before the next one on the ring is chosen."""
    replication: int = Field(default=256, ge=1)
    """Virtual nodes per replica on the hash ring (KubeAI's proxy only)."""
    prefix_char_length: int = Field(default=100, ge=1)
    """Characters of the prompt's start that are hashed (KubeAI's proxy only)."""


class LoadBalancing(_Strict):
    """How requests are spread over the replicas: by KubeAI's proxy, or (KServe) an InferencePool's endpoint
    picker; this server itself does not route."""

    strategy: LoadBalancingStrategy = LoadBalancingStrategy.LEAST_LOAD
    """LeastLoad (fewest requests in flight) or PrefixHash (same prompt prefix, same replica, within a load bound)."""
    prefix_hash: PrefixHash = Field(default_factory=PrefixHash)
    """The PrefixHash strategy's settings; read only with strategy PrefixHash."""


class Scaling(_Strict):
    """KubeAI's scaling fields; the deployment renderer maps them onto KServe (validated here only)."""

    replicas: Optional[int] = Field(default=None, ge=0)
    """A fixed replica count: sets both minReplicas and maxReplicas."""
    min_replicas: Optional[int] = Field(default=None, ge=0)
    """The InferenceService's minReplicas (0: scale to zero)."""
    max_replicas: Optional[int] = Field(default=None, ge=1)
    """The InferenceService's maxReplicas."""
    autoscaling_disabled: bool = False
    """A fixed replica count with no autoscaler (RawDeployment: no HPA); refuses target_request."""
    target_request: Optional[int] = Field(default=None, ge=1)
    """Concurrent requests per replica that Knative scales on (Serverless only)."""
    scale_down_delay_seconds: Optional[int] = Field(default=None, ge=0)
    """Knative's scale-down delay in seconds (Serverless only)."""
    load_balancing: Optional[LoadBalancing] = None
    """Spreading requests over replicas: KubeAI's proxy, or the InferencePool the renderer writes for KServe."""

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
    """A KubeAI Model's spec fields (engine, features, url, adapters, args, env, files, ...) and ours."""

    engine: Engine
    """VLLM, OLlama, FasterWhisper or Infinity; default $MODELSERVE_KUBEAI_ENGINE (set by each engine's image,
    so that a model with only a uri is served with MLSERVER_MODEL_IMPLEMENTATION alone)."""
    features: Optional[List[Feature]] = Field(default=None, min_length=1)
    """Default: TextGeneration for VLLM and OLlama, SpeechToText for FasterWhisper, TextEmbedding for Infinity."""
    url: Optional[str] = None
    """The model: hf://org/name[@rev], s3://, pvc://, store://, file:// or a local path; default parameters.uri."""
    adapters: List[AdapterSpec] = Field(default_factory=list)
    """LoRA adapters (VLLM only), each {name, url}; url is resolved like the model's url. Checked against the
    model's weights at load (an adapter for another base model is a load error naming the layer)."""
    runtime_adapters: bool = False
    """VLLM generation: adapters may be loaded and unloaded while the model serves (POST/DELETE
    /v2/models/{name}/adapters, vLLM's /v1/load_lora_adapter; adapters.py); the engine starts with LoRA on."""
    max_loras: Optional[int] = Field(default=None, ge=1)
    """VLLM: adapters in one batch (vLLM's --max-loras; more loaded ones take turns); default: the static
    adapters' count, at least 1."""
    max_lora_rank: Optional[int] = Field(default=None, ge=1)
    """VLLM: the largest adapter rank the engine takes (its --max-lora-rank, fixed at start); default: the
    static adapters' largest, at least 16 with runtime_adapters. A larger adapter loaded later is a 400."""
    tool_call_parser: Optional[str] = Field(default=None, pattern=r"^[a-z0-9_.-]+$")
    """VLLM generation: `tools`/`tool_choice` on /v1/chat/completions, parsed from the model's output by this
    vLLM tool parser (e.g. hermes, llama3_json, mistral, pythonic: the one the model was trained for); sets
    --enable-auto-tool-choice --tool-call-parser. Unset: a request with tools is refused by vLLM with a 400."""
    args: List[str] = Field(default_factory=list)
    """Extra engine command-line arguments, after ours (so they win)."""
    env: Dict[str, str] = Field(default_factory=dict)
    """Extra environment for an engine that runs as its own process (FasterWhisper and an attached Ollama refuse it)."""
    files: List[FileSpec] = Field(default_factory=list)
    """Files written into the model's working folder before the engine starts, so args can name them."""
    processors: Optional[str] = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]*:[1-9][0-9]*$")
    """KubeAI's resource profile, `<profile>:<count>` (e.g. nvidia-gpu-l4:1); used by the deployment renderer."""
    cache_profile: Optional[str] = Field(default=None, max_length=63, pattern=_DNS_LABEL)
    """KubeAI's cache profile, a DNS label; validated only, not used yet."""
    scaling: Optional[Scaling] = None
    """KubeAI's scaling fields; the deployment renderer maps them onto the InferenceService."""
    store_root: Optional[str] = None
    """Where store:// URLs resolve; default $MODELSERVE_STORE_ROOT."""
    engine_command: Optional[str] = None
    """The engine executable, or the Python of its environment: default $MODELSERVE_VLLM_COMMAND then `vllm` on
    PATH (VLLM), $MODELSERVE_INFINITY_COMMAND then `infinity_emb` (Infinity), $MODELSERVE_OLLAMA_COMMAND then
    `ollama` (OLlama, started only when neither engine_url nor $OLLAMA_HOST names a running server)."""
    engine_url: Optional[str] = Field(default=None, pattern=r"^https?://")
    """Attach to an engine that already runs (vLLM/Infinity: started with --served-model-name = this model's
    name; OLlama: any Ollama server, default $OLLAMA_HOST)."""
    start_timeout: float = Field(default=600, gt=0)
    """Seconds the engine may take to answer /health before the load fails."""
    max_restarts: int = Field(default=5, ge=0)
    """Crashes in a row after which the model is marked not ready and answers 503."""
    max_tokens: int = Field(default=256, ge=1)
    """V2 generation: new tokens when the request does not say (parameter `max_tokens`)."""
    max_tokens_limit: int = Field(default=4096, ge=1)
    """The most new tokens any request (V2 or OpenAI) may ask for; more is a 400."""

    @model_validator(mode="before")
    @classmethod
    def _engine_from_env(cls, data):
        env = os.environ.get("MODELSERVE_KUBEAI_ENGINE", "").strip()
        if isinstance(data, dict) and "engine" not in data and env:
            data = {**data, "engine": env}
        return data

    @model_validator(mode="after")
    def _unique_adapters(self):
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapter name '{dupes[0]}' is used twice")
        return self


class KubeAIRuntime(AdapterHost, Runtime):
    """One engine per model: vLLM and Infinity as supervised servers, Ollama through its client, FasterWhisper
    in-process (``ENGINES``). Load it with ``parallel_workers: 0`` in model-settings.json so that the engine
    starts once (not once per MLServer worker) and streams reach the client."""

    options_class = KubeAIOptions
    openai_routes = True

    async def _load(self) -> None:
        opts: KubeAIOptions = self.options
        supported = ENGINE_FEATURES[opts.engine]
        self.features = list(dict.fromkeys(opts.features or [DEFAULT_FEATURE[opts.engine]]))
        bad = [f.value for f in self.features if f not in supported]
        if bad:
            raise ModelLoadError(self.name, f"engine {opts.engine.value} does not support feature {bad[0]} "
                                            f"(it supports: {', '.join(sorted(f.value for f in supported))})")
        lora = [k for k in ("runtime_adapters", "max_loras", "max_lora_rank", "tool_call_parser") if getattr(opts, k)]
        if lora and opts.engine != Engine.VLLM:
            raise ModelLoadError(self.name, f"option '{lora[0]}' is for engine VLLM, not {opts.engine.value}")
        if multiprocessing_worker():
            logger.warning("model '%s' is loaded in an MLServer worker process: every worker starts its own engine "
                           "and streams cannot reach clients; set \"parallel_workers\": 0 in its model-settings.json",
                           self.name)
        folder = workdir(self.name, opts.cache_dir)
        write_files(self.name, folder, [(f.path, f.content) for f in opts.files])
        self.backend = await ENGINES[opts.engine](self, folder)

    # -- one factory per engine ----------------------------------------------------------------------
    async def _model_and_adapters(self) -> tuple[Optional[Path], Dict[str, Path]]:
        opts: KubeAIOptions = self.options
        if opts.engine_url is not None:  # an attached engine loaded its model and adapters itself (checked on start)
            return None, {a.name: Path(a.url) for a in opts.adapters}
        model_path = await self._resolve(self._model_url(), "url")
        return model_path, {a.name: await self._resolve(a.url, f"adapter '{a.name}'") for a in opts.adapters}

    async def _adapter_path(self, spec: AdapterSpec) -> Path:
        """A run-time adapter's folder, resolved as the static ones are (an attached engine reads the url itself)."""
        if self.options.engine_url is not None:
            return Path(spec.url)
        return await self._resolve(spec.url, f"adapter '{spec.name}'")

    def _engine_options(self, folder: Path) -> dict:
        opts: KubeAIOptions = self.options
        return dict(args=opts.args, env=opts.env, cwd=folder, engine_command=opts.engine_command,
                    engine_url=opts.engine_url, start_timeout=opts.start_timeout, max_restarts=opts.max_restarts,
                    on_failed=self._backend_failed)

    def _engine_backend(self, engine, embedding: bool, adapters=None, openai_kinds=None,
                        reranking: Optional[str] = None) -> EngineBackend:
        opts: KubeAIOptions = self.options
        return EngineBackend(self.name, self.version, engine, embedding=embedding, adapters=adapters,
                             max_tokens=opts.max_tokens, max_tokens_limit=opts.max_tokens_limit,
                             openai_kinds=openai_kinds, reranking=reranking)

    async def _vllm(self, folder: Path) -> Backend:
        from .engines.vllm import VLLMEngine

        if len(self.features) > 1:
            raise ModelLoadError(self.name, "vLLM runs one model for generation, embeddings or reranking: list one "
                                            "of TextGeneration, TextEmbedding, Reranking (serve the model twice for "
                                            "two)")
        opts: KubeAIOptions = self.options
        model_path, adapters = await self._model_and_adapters()
        embedding, reranking = Feature.TEXT_EMBEDDING in self.features, Feature.RERANKING in self.features
        if reranking and adapters:
            raise ModelLoadError(self.name, "feature Reranking takes no adapters (LoRA adapters are for generation)")
        lora = dict(runtime_adapters=opts.runtime_adapters, max_loras=opts.max_loras, max_lora_rank=opts.max_lora_rank)
        if (embedding or reranking) and any(lora.values()):
            raise ModelLoadError(self.name, f"option '{next(k for k, v in lora.items() if v)}' is for TextGeneration "
                                            "(LoRA adapters are for generation)")
        options = self._engine_options(folder)
        if opts.tool_call_parser:
            if embedding or reranking:
                raise ModelLoadError(self.name, "option 'tool_call_parser' is for TextGeneration")
            if not flag(opts.args, "--tool-call-parser"):
                options["args"] = ["--enable-auto-tool-choice", "--tool-call-parser", opts.tool_call_parser,
                                   *opts.args]
        engine = VLLMEngine(self.name, model_path, adapters=adapters, pooling=embedding or reranking, **options,
                            **lora)
        await engine.start()
        kinds = GENERATION_KINDS | TOKENIZE_KINDS if not (embedding or reranking) else None
        return self._engine_backend(engine, embedding, {a.name: a.url for a in opts.adapters}, openai_kinds=kinds,
                                    reranking="vllm" if reranking else None)

    async def _infinity(self, folder: Path) -> Backend:
        from .engines.infinity import InfinityEngine

        model_path, adapters = await self._model_and_adapters()
        if adapters:
            raise ModelLoadError(self.name, "engine Infinity does not take adapters (LoRA adapters are for "
                                            "VLLM and OLlama)")
        if len(self.features) > 1:
            raise ModelLoadError(self.name, "Infinity serves one model for embeddings or reranking: list TextEmbedding "
                                            "or Reranking, not both (a cross-encoder does not embed)")
        engine = InfinityEngine(self.name, model_path, **self._engine_options(folder))
        await engine.start()
        reranking = Feature.RERANKING in self.features
        return self._engine_backend(engine, not reranking, reranking="infinity" if reranking else None)

    async def _ollama(self, folder: Path) -> Backend:
        """The model is an Ollama name (ollama://name[:tag]) that Ollama pulls itself. V2 serves the first
        feature listed; the OpenAI routes serve every listed one (an Ollama model may embed and generate)."""
        opts: KubeAIOptions = self.options
        from .engines.ollama import OllamaEngine, model_tag

        url = self._model_url()
        if storage.split_uri(url)[0] != "ollama":
            raise ModelLoadError(self.name, f"engine OLlama takes url ollama://name[:tag] (a model Ollama pulls), "
                                            f"got {url!r}")
        if opts.adapters:
            raise ModelLoadError(self.name, "engine OLlama takes no adapters here: build the adapter into an Ollama "
                                            "model (a Modelfile with an ADAPTER line) and serve that model")
        try:
            tag = model_tag(url)
        except ValueError as exc:
            raise ModelLoadError(self.name, f"url: {exc}") from None
        generation, embedding = Feature.TEXT_GENERATION in self.features, Feature.TEXT_EMBEDDING in self.features
        engine = OllamaEngine(self.name, tag, generation=generation, embedding=embedding,
                              **self._engine_options(folder))
        await engine.start()
        kinds = (GENERATION_KINDS if generation else frozenset()) | (EMBEDDING_KINDS if embedding else frozenset())
        return self._engine_backend(engine, self.features[0] == Feature.TEXT_EMBEDDING, openai_kinds=kinds)

    async def _whisper(self, folder: Path) -> Backend:
        """In-process (engines/whisper.py): no server, so the options for one are refused, not ignored."""
        opts: KubeAIOptions = self.options
        from .backends.speech import SpeechBackend
        from .engines.whisper import WhisperEngine

        model_path, adapters = await self._model_and_adapters()
        for key, given in (("adapters", adapters), ("env", opts.env), ("engine_url", opts.engine_url),
                           ("engine_command", opts.engine_command)):
            if given:
                raise ModelLoadError(self.name, f"option '{key}' is for engines that run as their own server; "
                                                "FasterWhisper runs in MLServer's process")
        whisper = WhisperEngine(self.name, model_path, opts.args)
        await whisper.start()
        return SpeechBackend(self.name, self.version, whisper)

    # -- the model's location ------------------------------------------------------------------------
    def _model_url(self) -> str:
        url = self.options.url or (self.settings.parameters.uri if self.settings.parameters else None)
        if not url or not url.strip():
            raise ModelLoadError(self.name, "no model: set the option 'url' (hf://, s3://, pvc://, store:// or a "
                                            "local path) or parameters.uri")
        return url.strip()

    async def _resolve(self, url: str, what: str) -> Path:
        opts: KubeAIOptions = self.options
        if storage.split_uri(url)[0] == "ollama":
            raise ModelLoadError(self.name, f"{what}: ollama:// URLs are for engine OLlama, not {opts.engine.value}")
        return await resolve_folder(self.name, self.settings, url, what, cache_dir=opts.cache_dir,
                                    pvc_root=opts.pvc_root, store_root=opts.store_root, schemes=URL_SCHEMES)


ENGINES: Dict[Engine, Callable[[KubeAIRuntime, Path], Awaitable[Backend]]] = {
    Engine.VLLM: KubeAIRuntime._vllm,
    Engine.INFINITY: KubeAIRuntime._infinity,
    Engine.OLLAMA: KubeAIRuntime._ollama,
    Engine.FASTER_WHISPER: KubeAIRuntime._whisper,
}
"""Engine -> the factory that starts it and returns its backend."""


def multiprocessing_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None
