"""HuggingFaceRuntime: a transformers model folder served for embedding, classification, fill-mask or generation,
on transformers in MLServer's process (backends/transformers.py) or on a supervised vLLM server
(backends/engine.py). This module holds the options, the model's location and the choice of backend."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import List, Optional

from pydantic import Field

from . import storage
from .adapters import AdapterHost, AdapterSpec, resolve_folder
from .backends import Backend
from .backends.engine import GENERATION_KINDS, TOKENIZE_KINDS, EngineBackend
from .engines import vllm
from .engines.transformers import config_labels, infer_task, is_cross_encoder
from .engines.workdir import workdir
from .errors import ModelLoadError
from .options import Backend as BackendChoice
from .options import Dtype, RuntimeOptions, Task
from .runtime import Runtime

logger = logging.getLogger("mlserver.modelserve.huggingface")


TOKENIZER_FILES = ["tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                   "*.model", "config.json"]  # *.model: sentencepiece; AutoTokenizer may read config.json


class HuggingFaceOptions(RuntimeOptions):
    """HuggingFaceRuntime's options (KServe huggingfaceserver's vocabulary where it has one)."""

    task: Optional[Task] = None
    """Default: inferred from config.json's architectures (or a sentence-transformers folder)."""
    backend: BackendChoice = BackendChoice.AUTO
    """VLLM: a supervised vLLM server (text_generation, text_embedding). AUTO: vLLM for text_generation when
    a GPU is visible and a vLLM command is configured, else transformers. HUGGINGFACE: transformers."""
    dtype: Dtype = Dtype.AUTO
    """AUTO: float32 on CPU. On CPU, FLOAT16/HALF/BFLOAT16 fall back to float32 with a warning."""
    max_length: Optional[int] = Field(default=None, ge=1)
    """Truncate texts to this many tokens; unset: no truncation, a longer text than the model takes is a 400."""
    disable_lower_case: bool = False
    """Keep case for an uncased tokenizer (passes do_lower_case=False)."""
    disable_special_tokens: bool = False
    """Tokenize without special tokens such as [CLS]/[SEP] (add_special_tokens=False)."""
    trust_remote_code: bool = False
    """Allow the folder's own Python classes (auto_map in config.json); without it such a folder fails the load."""
    tokenizer_revision: Optional[str] = None
    """The hub revision the tokenizer is read from (hf:// URIs only): a branch, tag or full commit sha."""
    return_token_type_ids: Optional[bool] = None
    """Default: what the tokenizer returns for this model."""
    return_probabilities: bool = False
    """Classification: output `probabilities` [n, num_labels] instead of `label` and `score`."""
    normalize: Optional[bool] = None
    """Embedding: L2-normalise; default true when the sentence-transformers folder has a Normalize module."""
    disable_log_requests: bool = False
    """Do not log request texts (by default logged at INFO: model, request id, count, texts)."""
    max_log_len: Optional[int] = Field(default=None, ge=0)
    """Characters of each text shown in the request log; default: all."""
    coalesce: bool = True
    """Merge requests that arrive while the model is busy into one forward pass (each gets its own rows)."""
    max_coalesced_rows: int = Field(default=256, ge=1)
    """The most texts one shared (coalesced) forward pass may hold."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Generation: new tokens when the request does not say (request parameter `max_new_tokens`)."""
    max_new_tokens_limit: int = Field(default=2048, ge=1)
    """Generation: the most new tokens a request may ask for (more is a 400)."""
    engine_command: Optional[str] = None
    """Backend VLLM: vLLM's CLI or Python; default $MODELSERVE_VLLM_COMMAND, then `vllm` on PATH."""
    engine_args: List[str] = Field(default_factory=list)
    """Backend VLLM: extra vLLM arguments, after ours (e.g. --gpu-memory-utilization 0.8)."""
    start_timeout: float = Field(default=600, gt=0)
    """Backend VLLM: seconds the engine may take to answer."""
    adapters: List[AdapterSpec] = Field(default_factory=list)
    """text_generation: LoRA adapters, each {name, url} (url as parameters.uri takes it); a request picks one by
    parameter `adapter` (V2) or OpenAI `model`, without one it gets the base model. Transformers: PEFT."""
    runtime_adapters: bool = False
    """text_generation: adapters may be loaded and unloaded while the model serves (/v2/models/{name}/adapters)."""
    tensor_input_names: Optional[List[str]] = Field(default=None, min_length=1)
    """Encoder tasks: requests may send these INT64/INT32 [n, seq] tensors (e.g. input_ids, attention_mask)
    instead of text; they go to the model's forward() as they are, without the tokenizer."""


VLLM_DTYPES = {Dtype.AUTO: "auto", Dtype.FLOAT32: "float32", Dtype.FLOAT: "float32", Dtype.FLOAT16: "float16",
               Dtype.HALF: "float16", Dtype.BFLOAT16: "bfloat16"}
NOT_FOR_VLLM = ("disable_lower_case", "disable_special_tokens", "return_token_type_ids", "return_probabilities",
                "normalize", "tensor_input_names", "coalesce", "max_coalesced_rows")
"""Options with no vLLM equivalent: set with backend VLLM they fail the load rather than do nothing."""


class HuggingFaceRuntime(AdapterHost, Runtime):
    """Serves a transformers model folder: one BYTES input of texts (or token tensors), V2 and OpenAI routes."""

    options_class = HuggingFaceOptions
    openai_routes = True
    task: Optional[Task] = None

    async def _load(self) -> None:
        opts: HuggingFaceOptions = self.options
        path = await asyncio.to_thread(storage.resolve, self.settings, (), opts.cache_dir, opts.pvc_root)
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelLoadError(self.name, f"no config.json in {path}: parameters.uri must name a transformers "
                                            "model folder (save_pretrained output)")
        tokenizer_path = path
        if opts.tokenizer_revision is not None:
            uri = (self.settings.parameters.uri or "").strip()
            if storage.split_uri(uri)[0] != "hf":
                raise ModelLoadError(self.name, f"option 'tokenizer_revision' applies to hf:// URIs; {path} is a "
                                                "local folder, which holds one revision only")
            repo_id, _ = storage.parse_hf(self.name, uri)
            tokenizer_path = await asyncio.to_thread(storage.hf_snapshot, self.name, repo_id,
                                                     opts.tokenizer_revision, TOKENIZER_FILES)
        names = [a.name for a in opts.adapters]
        if len(set(names)) < len(names):
            raise ModelLoadError(self.name, f"adapter name '{next(n for n in names if names.count(n) > 1)}' is "
                                            "used twice")
        adapters = {a.name: await self._adapter_path(a) for a in opts.adapters}
        if self._choose(path) == BackendChoice.VLLM:
            self.task = self._config_task(path)
            self._adapters_fit(self.task)
            self.backend = await self._vllm(path, tokenizer_path, self.task, adapters)
        else:
            from .backends.transformers import TransformersBackend

            self.backend = await asyncio.to_thread(TransformersBackend.load, self.name, self.version, opts, path,
                                                   tokenizer_path, adapters)
            self.task = self.backend.task

    def _adapters_fit(self, task: Optional[Task]) -> None:
        opts: HuggingFaceOptions = self.options
        used = "adapters" if opts.adapters else "runtime_adapters" if opts.runtime_adapters else None
        if used and task != Task.TEXT_GENERATION:
            raise ModelLoadError(self.name, f"option '{used}' is for task text_generation (LoRA adapters); this "
                                            f"model's task is {task.value if task else 'unknown'}")

    async def _adapter_path(self, spec: AdapterSpec) -> Path:
        opts: HuggingFaceOptions = self.options
        return await resolve_folder(self.name, self.settings, spec.url, f"adapter '{spec.name}'",
                                    cache_dir=opts.cache_dir, pvc_root=opts.pvc_root)

    def _config_task(self, path: Path) -> Optional[Task]:
        try:
            config = json.loads((path / "config.json").read_text())
        except ValueError as exc:
            raise ModelLoadError(self.name, f"config.json is not valid JSON: {exc}") from None
        return self.options.task or infer_task(list(config.get("architectures") or []), (path / "modules.json").exists(),
                                               config_labels(config), is_cross_encoder(path))

    def _choose(self, path: Path) -> BackendChoice:
        opts: HuggingFaceOptions = self.options
        if opts.backend != BackendChoice.AUTO:
            return opts.backend
        gpu = os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")
        configured = opts.engine_command or os.environ.get(vllm.COMMAND_ENV) or shutil.which("vllm")
        if gpu and configured and self._config_task(path) == Task.TEXT_GENERATION:
            logger.info("model '%s': backend AUTO chose VLLM (a GPU and a vLLM command are present)", self.name)
            return BackendChoice.VLLM
        return BackendChoice.HUGGINGFACE

    async def _vllm(self, path: Path, tokenizer_path: Path, task: Optional[Task], adapters: dict) -> Backend:
        """The shared engine backend over vLLM (engines/vllm.py), with this runtime's options as vLLM arguments."""
        opts: HuggingFaceOptions = self.options
        if task not in (Task.TEXT_GENERATION, Task.TEXT_EMBEDDING, Task.TEXT_RERANKING):
            shown = task.value if task else "unknown (set option 'task')"
            raise ModelLoadError(self.name, f"backend VLLM serves tasks text_generation, text_embedding and "
                                            f"text_reranking; task {shown} runs on backend HUGGINGFACE")
        unused = [k for k in NOT_FOR_VLLM if k in opts.model_fields_set]
        if unused:
            raise ModelLoadError(self.name, f"option '{unused[0]}' does not apply to backend VLLM")
        args = ["--dtype", VLLM_DTYPES[opts.dtype]]
        if opts.max_length is not None:
            args += ["--max-model-len", str(opts.max_length)]
        if opts.trust_remote_code:
            args += ["--trust-remote-code"]
        if tokenizer_path != path:
            args += ["--tokenizer", str(tokenizer_path)]
        if not opts.disable_log_requests:
            args += ["--enable-log-requests"]
            if opts.max_log_len is not None:
                args += ["--max-log-len", str(opts.max_log_len)]
        embedding, reranking = task == Task.TEXT_EMBEDDING, task == Task.TEXT_RERANKING
        engine = vllm.VLLMEngine(
            self.name, path, adapters=adapters, args=[*args, *opts.engine_args], env={},
            cwd=workdir(self.name, opts.cache_dir), pooling=embedding or reranking,
            engine_command=opts.engine_command, start_timeout=opts.start_timeout, on_failed=self._backend_failed,
            runtime_adapters=opts.runtime_adapters)
        await engine.start()
        return EngineBackend(self.name, self.version, engine, embedding=embedding,
                             adapters={a.name: a.url for a in opts.adapters},
                             max_tokens=opts.max_new_tokens, max_tokens_limit=opts.max_new_tokens_limit,
                             reranking="vllm" if reranking else None,
                             openai_kinds=GENERATION_KINDS | TOKENIZE_KINDS if task == Task.TEXT_GENERATION else None)
