"""HuggingFaceRuntime: a transformers model folder served for embedding, classification, fill-mask or generation."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Hashable, List, Optional

import numpy as np
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from pydantic import Field

from . import openai, storage
from .batching import Coalescer, ModelThread
from .codecs import decode_array, encode_array, text_rows
from .engines import transformers as engine
from .engines import vllm
from .engines.workdir import workdir
from .engines.transformers import GENERATION_TASKS, TASK_HEADS, infer_task, pool, read_sentence_transformers
from .errors import BadRequest, InternalError, ModelLoadError, one_line
from .huggingface_openai import TransformersOpenAI
from .options import Backend, Dtype, RuntimeOptions, Task
from .runtime import MODEL_FILE_LOCK, Runtime, request_parameters

logger = logging.getLogger("mlserver.modelserve.huggingface")

IMPLEMENTED = tuple(Task)
TENSOR_TASKS = (Task.TEXT_EMBEDDING, Task.SEQUENCE_CLASSIFICATION, Task.FILL_MASK)
_OUTPUTS = {  # task -> (outputs offered, outputs answered by default)
    Task.TEXT_EMBEDDING: (("embedding",), ("embedding",)),
    Task.SEQUENCE_CLASSIFICATION: (("label", "score", "probabilities"), ("label", "score")),
    Task.TOKEN_CLASSIFICATION: (("entities",), ("entities",)),
    Task.FILL_MASK: (("tokens", "scores"), ("tokens", "scores")),
    Task.TEXT_GENERATION: (("text",), ("text",)),
    Task.TEXT2TEXT_GENERATION: (("text",), ("text",)),
}


TOKENIZER_FILES = ["tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                   "*.model", "config.json"]  # *.model: sentencepiece; AutoTokenizer may read config.json


class HuggingFaceOptions(RuntimeOptions):
    task: Optional[Task] = None
    """Default: inferred from config.json's architectures (or a sentence-transformers folder)."""
    backend: Backend = Backend.AUTO
    """VLLM: a supervised vLLM server (text_generation, text_embedding). AUTO: vLLM for text_generation when
    a GPU is visible and a vLLM command is configured, else transformers. HUGGINGFACE: transformers."""
    dtype: Dtype = Dtype.AUTO
    """AUTO: float32 on CPU. On CPU, FLOAT16/HALF/BFLOAT16 fall back to float32 with a warning."""
    max_length: Optional[int] = Field(default=None, ge=1)
    """Truncate texts to this many tokens; unset: no truncation, a longer text than the model takes is a 400."""
    disable_lower_case: bool = False
    disable_special_tokens: bool = False
    trust_remote_code: bool = False
    tokenizer_revision: Optional[str] = None
    """The hub revision the tokenizer is read from (hf:// URIs only): a branch, tag or full commit sha."""
    return_token_type_ids: Optional[bool] = None
    """Default: what the tokenizer returns for this model."""
    return_probabilities: bool = False
    """Classification: output `probabilities` [n, num_labels] instead of `label` and `score`."""
    normalize: Optional[bool] = None
    """Embedding: L2-normalise; default true when the sentence-transformers folder has a Normalize module."""
    disable_log_requests: bool = False
    max_log_len: Optional[int] = Field(default=None, ge=0)
    """Characters of each text shown in the request log; default: all."""
    coalesce: bool = True
    """Merge requests that arrive while the model is busy into one forward pass (each gets its own rows)."""
    max_coalesced_rows: int = Field(default=256, ge=1)
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
    tensor_input_names: Optional[List[str]] = Field(default=None, min_length=1)
    """Encoder tasks: requests may send these INT64/INT32 [n, seq] tensors (e.g. input_ids, attention_mask)
    instead of text; they go to the model's forward() as they are, without the tokenizer."""


VLLM_DTYPES = {Dtype.AUTO: "auto", Dtype.FLOAT32: "float32", Dtype.FLOAT: "float32", Dtype.FLOAT16: "float16",
               Dtype.HALF: "float16", Dtype.BFLOAT16: "bfloat16"}
NOT_FOR_VLLM = ("disable_lower_case", "disable_special_tokens", "return_token_type_ids", "return_probabilities",
                "normalize", "tensor_input_names", "coalesce", "max_coalesced_rows")
"""Options with no vLLM equivalent: set with backend VLLM they fail the load rather than do nothing."""


class HuggingFaceRuntime(TransformersOpenAI, Runtime):
    """Serves a transformers model folder: one BYTES input of texts.

    Encoder tasks (embedding, classification, token classification, fill-mask) run the batch as one
    forward pass, merged with concurrent requests; generation runs prompt by prompt through
    model.generate in the model thread, and streams token by token through predict_stream.
    """

    options_class = HuggingFaceOptions

    def __init__(self, settings):
        super().__init__(settings)
        openai.add_routes(self)

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
        if self._backend(path) == Backend.VLLM:
            await self._load_vllm(path, tokenizer_path)
            openai.register(self)
            return
        await asyncio.to_thread(self._load_model, path, tokenizer_path)
        self._coalescer = Coalescer(self._call, lambda parts: [r for p in parts for r in p],
                                    max_rows=opts.max_coalesced_rows, enabled=opts.coalesce)
        self._thread = ModelThread("modelserve-generate") if self.task in GENERATION_TASKS else None
        self._set_metadata()
        openai.register(self)

    # -- backend VLLM ------------------------------------------------------------------------------
    def _config_task(self, path: Path) -> Optional[Task]:
        try:
            config = json.loads((path / "config.json").read_text())
        except ValueError as exc:
            raise ModelLoadError(self.name, f"config.json is not valid JSON: {exc}") from None
        return self.options.task or infer_task(list(config.get("architectures") or []), (path / "modules.json").exists())

    def _backend(self, path: Path) -> Backend:
        opts: HuggingFaceOptions = self.options
        if opts.backend != Backend.AUTO:
            return opts.backend
        gpu = os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")
        configured = opts.engine_command or os.environ.get(vllm.COMMAND_ENV) or shutil.which("vllm")
        if gpu and configured and self._config_task(path) == Task.TEXT_GENERATION:
            logger.info("model '%s': backend AUTO chose VLLM (a GPU and a vLLM command are present)", self.name)
            return Backend.VLLM
        return Backend.HUGGINGFACE

    async def _load_vllm(self, path: Path, tokenizer_path: Path) -> None:
        """The shared vLLM adapter (engines/vllm.py), with this runtime's options as vLLM arguments."""
        opts: HuggingFaceOptions = self.options
        task = self._config_task(path)
        if task not in (Task.TEXT_GENERATION, Task.TEXT_EMBEDDING):
            shown = task.value if task else "unknown (set option 'task')"
            raise ModelLoadError(self.name, f"backend VLLM serves tasks text_generation and text_embedding; task "
                                            f"{shown} runs on backend HUGGINGFACE")
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
        self.task, self.embedding, self.adapters = task, task == Task.TEXT_EMBEDDING, []
        self.max_tokens, self.max_tokens_limit = min(opts.max_new_tokens, opts.max_new_tokens_limit), \
            opts.max_new_tokens_limit
        self.engine = vllm.VLLMEngine(
            self.name, path, adapters={}, args=[*args, *opts.engine_args], env={},
            cwd=workdir(self.name, opts.cache_dir), pooling=self.embedding, engine_command=opts.engine_command,
            start_timeout=opts.start_timeout, on_failed=self._engine_failed)
        await self.engine.start()
        self._engine_metadata()

    def _load_model(self, path: Path, tokenizer_path: Path) -> None:
        with MODEL_FILE_LOCK:  # models load in parallel threads: one first import of transformers at a time
            import torch
            import transformers

        opts: HuggingFaceOptions = self.options
        remote = opts.trust_remote_code
        with MODEL_FILE_LOCK:
            config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=remote, local_files_only=True)
        archs = list(getattr(config, "architectures", None) or [])
        arch = archs[0] if archs else type(config).__name__
        is_st = (path / "modules.json").exists()
        task = opts.task or infer_task(archs, is_st)
        if task is None:
            raise ModelLoadError(self.name, f"cannot tell the task of architecture {arch}: set option 'task' "
                                            f"({', '.join(t.value for t in IMPLEMENTED)})")
        auto_name, heads = TASK_HEADS[task]
        if heads and not any(a.endswith(h) for a in archs for h in heads):
            raise ModelLoadError(self.name, f"task '{task.value}' needs a {' or '.join('*' + h for h in heads)} "
                                            f"model; this folder holds {arch}")
        if task == Task.TEXT_EMBEDDING and getattr(config, "is_encoder_decoder", False):
            raise ModelLoadError(self.name, f"task 'text_embedding' needs an encoder model; {arch} is an "
                                            "encoder-decoder")
        self.task = task
        self.pooling, st_normalize, st_max, self.lower_text = "mean", False, None, False
        if is_st and task == Task.TEXT_EMBEDDING:
            st_pooling, st_normalize, st_max, self.lower_text = read_sentence_transformers(path)
            self.pooling = st_pooling or "mean"
        self.normalize = st_normalize if opts.normalize is None else opts.normalize
        if opts.disable_lower_case:
            self.lower_text = False

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = engine.torch_dtype(torch, opts.dtype, self.device, config, lambda: logger.warning(
            "model '%s': dtype %s is not used on CPU (slow or missing half-precision kernels); running float32",
            self.name, opts.dtype.value))
        tok_kw: Dict[str, Any] = {"do_lower_case": False} if opts.disable_lower_case else {}
        with MODEL_FILE_LOCK:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                tokenizer_path, trust_remote_code=remote, local_files_only=True, **tok_kw)
            model = getattr(transformers, auto_name).from_pretrained(
                path, config=config, trust_remote_code=remote, local_files_only=True)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if task == Task.TOKEN_CLASSIFICATION and not getattr(self.tokenizer, "is_fast", False):
            raise ModelLoadError(self.name, "task 'token_classification' needs a fast tokenizer (tokenizer.json) "
                                            "for character offsets")
        if task == Task.FILL_MASK and self.tokenizer.mask_token_id is None:
            raise ModelLoadError(self.name, "task 'fill_mask': the tokenizer has no mask token")

        limits = [n for n in (st_max, self.tokenizer.model_max_length) if n and n < 1_000_000]
        if not limits:
            limits = [getattr(config, "max_position_embeddings", 512)]
        self.model_limit = min(limits)
        if opts.max_length is not None and opts.max_length > self.model_limit:
            raise ModelLoadError(self.name, f"option 'max_length': {opts.max_length} is more than this model "
                                            f"takes ({self.model_limit} tokens)")
        self.labels: List[str] = []
        if task in (Task.SEQUENCE_CLASSIFICATION, Task.TOKEN_CLASSIFICATION):
            id2label = getattr(config, "id2label", None) or {}
            self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        self.arch = arch
        self._check_tensor_inputs(task)

    def _check_tensor_inputs(self, task: Task) -> None:
        import inspect

        names = self.options.tensor_input_names
        if not names:
            return
        if task not in TENSOR_TASKS + (Task.TOKEN_CLASSIFICATION,):
            raise ModelLoadError(self.name, f"option 'tensor_input_names' applies to the encoder tasks "
                                            f"({', '.join(t.value for t in TENSOR_TASKS)}); this model's task is "
                                            f"'{task.value}'")
        if len(set(names)) != len(names):
            raise ModelLoadError(self.name, f"option 'tensor_input_names' names a tensor twice: {names}")
        takes = set(inspect.signature(self.model.forward).parameters)
        unknown = [n for n in names if n not in takes]
        if unknown:
            raise ModelLoadError(self.name, f"option 'tensor_input_names': {self.arch}.forward() takes no "
                                            f"{', '.join(repr(n) for n in unknown)}")
        if "input_ids" not in names:
            raise ModelLoadError(self.name, "option 'tensor_input_names' must include 'input_ids'")

    def _set_metadata(self) -> None:
        if not self.inputs:
            name = "prompt" if self.task in GENERATION_TASKS else "text"
            self.inputs = [MetadataTensor(name=name, datatype="BYTES", shape=[-1])]
            self.inputs += [MetadataTensor(name=n, datatype="INT64", shape=[-1, -1])
                            for n in self.options.tensor_input_names or ()]
        if not self.outputs:
            if self.task == Task.TEXT_EMBEDDING:
                dim = int(getattr(self.model.config, "hidden_size", -1) or -1)
                self.outputs = [MetadataTensor(name="embedding", datatype="FP32", shape=[-1, dim])]
            elif self.task == Task.SEQUENCE_CLASSIFICATION:
                self.outputs = [MetadataTensor(name="label", datatype="BYTES", shape=[-1]),
                                MetadataTensor(name="score", datatype="FP32", shape=[-1]),
                                MetadataTensor(name="probabilities", datatype="FP32", shape=[-1, len(self.labels)])]
            elif self.task == Task.FILL_MASK:
                self.outputs = [MetadataTensor(name="tokens", datatype="BYTES", shape=[-1, -1]),
                                MetadataTensor(name="scores", datatype="FP32", shape=[-1, -1])]
            else:
                name = "entities" if self.task == Task.TOKEN_CLASSIFICATION else "text"
                self.outputs = [MetadataTensor(name=name, datatype="BYTES", shape=[-1])]

    # -- request -> token ids ----------------------------------------------------------------------
    def _texts(self, payload: InferenceRequest) -> List[str]:
        if not payload.inputs:
            raise BadRequest("the request has no inputs: send one BYTES tensor of texts")
        if len(payload.inputs) > 1:
            names = ", ".join(i.name for i in payload.inputs)
            raise BadRequest(f"this model takes one input tensor of texts, got {len(payload.inputs)} ({names})")
        return text_rows(payload.inputs[0])

    def _is_tensor_request(self, payload: InferenceRequest) -> bool:
        if not self.options.tensor_input_names or not payload.inputs:
            return False
        return any(str(getattr(i.datatype, "value", i.datatype)) != "BYTES" for i in payload.inputs)

    def _tensor_rows(self, payload: InferenceRequest) -> List[Dict[str, List[int]]]:
        """Rows of token ids sent as tensors (names from option tensor_input_names), for the model as they are."""
        expected = list(self.options.tensor_input_names)
        names = [i.name for i in payload.inputs]
        unexpected = [n for n in names if n not in expected]
        if unexpected:
            raise BadRequest(f"unexpected input(s) {', '.join(repr(n) for n in unexpected)}: this model takes one "
                             f"BYTES tensor of texts or the INT64/INT32 tensors {', '.join(expected)}")
        if len(set(names)) != len(names):
            raise BadRequest(f"input names repeat: {', '.join(names)}")
        if self.task == Task.TOKEN_CLASSIFICATION:
            raise BadRequest("token_classification needs text (it reports character offsets): send one BYTES "
                             "tensor of texts")
        if "input_ids" not in names:
            raise BadRequest(f"the request has no 'input_ids' (got {', '.join(names)})")
        arrays: Dict[str, np.ndarray] = {}
        for inp in payload.inputs:
            datatype = str(getattr(inp.datatype, "value", inp.datatype))
            if datatype not in ("INT64", "INT32"):
                raise BadRequest(f"input '{inp.name}': token tensors are INT64 or INT32, got {datatype}")
            arr = decode_array(inp)
            if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
                raise BadRequest(f"input '{inp.name}': expected shape [n, seq] with n, seq > 0, got "
                                 f"{list(arr.shape)}")
            arrays[inp.name] = arr.astype(np.int64)
        shape = arrays["input_ids"].shape
        other = [(n, a.shape) for n, a in arrays.items() if a.shape != shape]
        if other:
            raise BadRequest(f"input '{other[0][0]}' has shape {list(other[0][1])}; 'input_ids' has {list(shape)}: "
                             "the tensors must have the same shape")
        if shape[1] > self.model_limit:
            raise BadRequest(f"input_ids rows are {shape[1]} tokens long; this model takes at most "
                             f"{self.model_limit}")
        ids, vocab = arrays["input_ids"], int(getattr(self.model.config, "vocab_size", 0) or 0)
        if ids.min() < 0 or (vocab and ids.max() >= vocab):
            raise BadRequest(f"input 'input_ids': token ids must lie in [0, {vocab}), got {int(ids.min())}.."
                             f"{int(ids.max())}")
        if "attention_mask" not in arrays:  # requests are merged and padded: the mask hides the padding
            arrays["attention_mask"] = np.ones(shape, dtype=np.int64)
        return [{n: a[i].tolist() for n, a in arrays.items()} for i in range(shape[0])]

    def _encode(self, texts: List[str], **extra) -> List[Dict[str, List[int]]]:
        opts: HuggingFaceOptions = self.options
        if self.lower_text:
            texts = [t.lower() for t in texts]
        kw: Dict[str, Any] = {"add_special_tokens": not opts.disable_special_tokens, **extra}
        if opts.return_token_type_ids is not None:
            kw["return_token_type_ids"] = opts.return_token_type_ids
        if opts.max_length is not None:
            kw.update(truncation=True, max_length=opts.max_length)
        enc = self.tokenizer(texts, **kw)
        rows = [dict(zip(enc.keys(), values)) for values in zip(*enc.values())]
        if opts.max_length is None:
            for i, row in enumerate(rows):
                n = len(row["input_ids"])
                if n > self.model_limit:
                    raise BadRequest(f"text {i} is {n} tokens long; this model takes at most {self.model_limit} "
                                     "(set option max_length to truncate)")
        return rows

    def _log(self, payload: InferenceRequest, texts: List[str]) -> None:
        opts: HuggingFaceOptions = self.options
        if opts.disable_log_requests or not logger.isEnabledFor(logging.INFO):
            return
        cut = opts.max_log_len
        shown = [t if cut is None else t[:cut] for t in texts]
        logger.info("model '%s' request %s: %d text(s): %r", self.name, payload.id, len(texts), shown)

    # -- the model call (in the model thread) ------------------------------------------------------
    def _call(self, key: Hashable, rows: List[Dict[str, List[int]]]) -> Dict[str, np.ndarray]:
        import torch

        batch = {k: v.to(self.device) for k, v in engine.pad(torch, self.tokenizer, rows).items()}
        with torch.inference_mode():
            if self.task == Task.TEXT_EMBEDDING:
                hidden = self.model(**batch).last_hidden_state
                vec = pool(hidden, batch["attention_mask"], self.pooling).float()
                if self.normalize:
                    vec = torch.nn.functional.normalize(vec, p=2, dim=1)
                return {"embedding": vec.cpu().numpy()}
            if self.task == Task.FILL_MASK:
                return engine.fill_mask_call(torch, self.model, batch, self.tokenizer.mask_token_id, key[1])
            probs = torch.softmax(self.model(**batch).logits.float(), dim=-1).cpu().numpy()
        return {"probabilities": probs}

    def _wanted(self, payload: InferenceRequest):
        offered, default = _OUTPUTS[self.task]
        if self.task == Task.SEQUENCE_CLASSIFICATION and self.options.return_probabilities:
            default = ("probabilities",)
        wanted = tuple(o.name for o in payload.outputs) if payload.outputs else default
        unknown = [w for w in wanted if w not in offered]
        if unknown:
            raise BadRequest(f"unknown output '{unknown[0]}': this model offers {', '.join(offered)}")
        return wanted

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self.engine is not None:
            return await self._engine_predict(payload)
        wanted = self._wanted(payload)
        if self._is_tensor_request(payload):
            result = await self._predict_tensors(payload)
        else:
            result = await self._predict_texts(payload)
        if self.task == Task.SEQUENCE_CLASSIFICATION:
            probs = result["probabilities"]
            best = probs.argmax(axis=1)
            result = {"probabilities": probs, "score": probs[np.arange(len(best)), best],
                      "label": np.array([self.labels[i] for i in best], dtype=object)}
        return InferenceResponse.model_construct(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[encode_array(w, result[w]) for w in wanted])

    async def _predict_tensors(self, payload: InferenceRequest) -> Dict[str, np.ndarray]:
        """Token tensors (option tensor_input_names) straight to the model: no tokenizer."""
        rows = self._tensor_rows(payload)
        if self.task != Task.FILL_MASK:
            self._no_parameters(payload)
        if not self.options.disable_log_requests:
            logger.info("model '%s' request %s: %d row(s) of token tensors", self.name, payload.id, len(rows))
        if self.task == Task.FILL_MASK:
            return await self._fill_mask(payload, None, rows)
        return await self._coalescer(self.task, rows, len(rows))

    async def _predict_texts(self, payload: InferenceRequest) -> Dict[str, np.ndarray]:
        texts = self._texts(payload)
        self._log(payload, texts)
        if self.task in GENERATION_TASKS:
            result = {"text": np.array(await self._generate(payload, texts), dtype=object)}
        elif self.task == Task.TOKEN_CLASSIFICATION:
            self._no_parameters(payload)
            result = await self._token_classification(texts)
        elif self.task == Task.FILL_MASK:
            result = await self._fill_mask(payload, texts)
        else:
            self._no_parameters(payload)
            rows = self._encode(texts)
            result = await self._coalescer(self.task, rows, len(rows))
        return result

    def _no_parameters(self, payload: InferenceRequest) -> None:
        """Classification and embedding tasks take no request parameters: a sent one is a typo, not ignored."""
        unknown = list(request_parameters(payload))
        if unknown:
            raise BadRequest(f"unknown parameter '{unknown[0]}': task {self.task.value} takes no request parameters")

    async def _token_classification(self, texts: List[str]) -> Dict[str, np.ndarray]:
        full = self._encode(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
        side = [(r.pop("offset_mapping"), r.pop("special_tokens_mask")) for r in full]
        probs = (await self._coalescer(self.task, full, len(full)))["probabilities"]
        entities = [engine.token_entities(self.tokenizer, self.labels, row, offsets, special, probs[i])
                    for i, (row, (offsets, special)) in enumerate(zip(full, side))]
        return {"entities": np.array([json.dumps(e) for e in entities], dtype=object)}

    async def _fill_mask(self, payload: InferenceRequest, texts: Optional[List[str]],
                         rows: Optional[List[Dict[str, List[int]]]] = None) -> Dict[str, np.ndarray]:
        params = request_parameters(payload)
        unknown = [k for k in params if k not in ("top_k", "content_type", "headers")]
        if unknown:
            raise BadRequest(f"unknown parameter '{unknown[0]}': fill_mask takes top_k")
        top_k = engine.number("top_k", params.get("top_k", 5), int, 1, len(self.tokenizer))
        mask = self.tokenizer.mask_token
        if rows is not None:
            counts = [r["input_ids"].count(self.tokenizer.mask_token_id) for r in rows]
        else:
            counts = [t.count(mask) for t in texts]
        what = "text" if rows is None else "row"
        missing = [i for i, c in enumerate(counts) if c == 0]
        if missing:
            raise BadRequest(f"{what} {missing[0]} has no mask token: put {mask} where a word should be filled in")
        if len(set(counts)) > 1:
            raise BadRequest(f"every {what} must hold the same number of {mask} tokens, got {counts}")
        if rows is None:
            rows = self._encode(texts)
        cut = [i for i, r in enumerate(rows) if r["input_ids"].count(self.tokenizer.mask_token_id) != counts[i]]
        if cut:
            raise BadRequest(f"text {cut[0]}: a {mask} token was cut off by option max_length")
        out = await self._coalescer((self.task, top_k), rows, len(rows))
        m = counts[0]
        ids, scores = out["ids"][:, :m], out["scores"][:, :m]
        tokens = np.array([self.tokenizer.decode([int(i)]) for i in ids.reshape(-1)], dtype=object).reshape(ids.shape)
        if m == 1:
            tokens, scores = tokens[:, 0], scores[:, 0]
        return {"tokens": tokens, "scores": scores}

    # -- generation --------------------------------------------------------------------------------
    def _generation_args(self, payload: InferenceRequest):
        opts: HuggingFaceOptions = self.options
        return engine.generation_kwargs(request_parameters(payload), min(opts.max_new_tokens, opts.max_new_tokens_limit),
                                        opts.max_new_tokens_limit)

    async def _generate(self, payload: InferenceRequest, prompts: List[str]) -> List[str]:
        import torch

        kw, seed, stop = self._generation_args(payload)
        rows = self._encode(prompts)
        return [await self._thread.submit(engine.generate_one, torch, self.model, self.tokenizer, row, kw, seed,
                                          stop, self.device) for row in rows]

    async def predict_stream(self, payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[InferenceResponse]:
        """Generation, one response per piece of new text (REST: /v2/models/<name>/generate_stream or
        /infer_stream, as server-sent events; gRPC: ModelStreamInfer). Needs parallel_workers 0."""
        import torch

        payload = await payloads.__anext__()
        if self.engine is not None:
            async for response in self._engine_stream(payload):
                yield response
            return
        streamer = None
        try:
            if self.task not in GENERATION_TASKS:
                yield await self._predict(payload)
                return
            wanted = self._wanted(payload)
            prompts = self._texts(payload)
            if len(prompts) != 1:
                raise BadRequest(f"streaming takes one prompt per request, got {len(prompts)}")
            self._log(payload, prompts)
            kw, seed, stop = self._generation_args(payload)
            row = self._encode(prompts)[0]
            queue: asyncio.Queue = asyncio.Queue()
            streamer = engine.QueueStreamer(engine.TextDeltas(self.tokenizer, stop), asyncio.get_running_loop(),
                                            queue)
            job = self._thread.submit(engine.generate_one, torch, self.model, self.tokenizer, row, kw, seed, stop,
                                      self.device, streamer)
            while True:
                delta = await queue.get()
                if delta is None:
                    break
                yield InferenceResponse.model_construct(
                    model_name=self.name, model_version=self.version, id=payload.id,
                    outputs=[encode_array(wanted[0], np.array([delta], dtype=object))])
            await job
        except MLServerError:
            raise
        except Exception as exc:
            logger.exception("model '%s' failed on a streamed request", self.name)
            raise InternalError(f"model '{self.name}' failed: {one_line(exc)}") from None
        finally:
            if streamer is not None:
                streamer.cancelled = True  # the client left early: stop generating

    async def unload(self) -> bool:
        openai.unregister(self)
        await self.requests_done()  # a reload unloads the old copy while requests may still be inside it
        if self.engine is not None:
            await self.engine.stop()
        coalescer = getattr(self, "_coalescer", None)
        if coalescer is not None:
            coalescer.close()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.close()
        return True
