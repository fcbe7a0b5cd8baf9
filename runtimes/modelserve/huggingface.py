"""HuggingFaceRuntime: a transformers model folder served for text embedding or sequence classification."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from pydantic import Field

from . import storage
from .batching import Coalescer
from .codecs import decode_array, encode_array
from .errors import BadRequest, ModelLoadError
from .options import Backend, Dtype, RuntimeOptions, Task
from .runtime import MODEL_FILE_LOCK, Runtime

logger = logging.getLogger("mlserver.modelserve.huggingface")

IMPLEMENTED = (Task.TEXT_EMBEDDING, Task.SEQUENCE_CLASSIFICATION)
_ARCH_TASKS = (  # architecture-name suffix -> the task it is built for
    ("ForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
    ("ForTokenClassification", Task.TOKEN_CLASSIFICATION),
    ("ForMaskedLM", Task.FILL_MASK),
    ("ForCausalLM", Task.TEXT_GENERATION),
    ("LMHeadModel", Task.TEXT_GENERATION),
    ("ForConditionalGeneration", Task.TEXT2TEXT_GENERATION),
    ("Model", Task.TEXT_EMBEDDING),  # a bare encoder: BertModel, RobertaModel, ...
)
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len")
_ST_OK = ("Transformer", "Pooling", "Normalize")  # sentence-transformers modules this runtime reproduces


class HuggingFaceOptions(RuntimeOptions):
    task: Optional[Task] = None
    """Default: inferred from config.json's architectures (or a sentence-transformers folder)."""
    backend: Backend = Backend.AUTO
    """AUTO and HUGGINGFACE run transformers; VLLM is refused until the vLLM engine adapter exists."""
    dtype: Dtype = Dtype.AUTO
    """AUTO: float32 on CPU. On CPU, FLOAT16/HALF/BFLOAT16 fall back to float32 with a warning."""
    max_length: Optional[int] = Field(default=None, ge=1)
    """Truncate texts to this many tokens; unset: no truncation, a longer text than the model takes is a 400."""
    disable_lower_case: bool = False
    disable_special_tokens: bool = False
    trust_remote_code: bool = False
    tokenizer_revision: Optional[str] = None
    """A hub revision of the tokenizer; refused for local folders (they hold exactly one revision)."""
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


def infer_task(architectures: Sequence[str], sentence_transformers: bool) -> Optional[Task]:
    if sentence_transformers:
        return Task.TEXT_EMBEDDING
    for arch in architectures:
        for suffix, task in _ARCH_TASKS:
            if arch.endswith(suffix):
                return task
    return None


def read_sentence_transformers(folder: Path) -> Tuple[Optional[str], bool, Optional[int], bool]:
    """(pooling mode, has Normalize, max_seq_length, do_lower_case) of a sentence-transformers folder."""
    modules = json.loads((folder / "modules.json").read_text())
    pooling, normalize = None, False
    for mod in modules:
        kind = str(mod.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _ST_OK:
            raise ValueError(f"sentence-transformers module {kind} is not supported yet (supported: {', '.join(_ST_OK)})")
        if kind == "Normalize":
            normalize = True
        if kind == "Pooling":
            cfg = json.loads((folder / mod.get("path", "") / "config.json").read_text())
            pooling = _pooling_mode(cfg)
    bert_cfg = folder / "sentence_bert_config.json"
    st = json.loads(bert_cfg.read_text()) if bert_cfg.exists() else {}
    return pooling, normalize, st.get("max_seq_length"), bool(st.get("do_lower_case"))


def _pooling_mode(cfg: dict) -> str:
    """The one pooling mode of a sentence-transformers Pooling config (`pooling_mode_<m>_tokens` flags)."""
    if isinstance(cfg.get("pooling_mode"), str):
        modes = [cfg["pooling_mode"]]
    else:
        modes = [k[len("pooling_mode_"):].replace("_tokens", "").replace("_token", "")
                 for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ValueError(f"pooling {'+'.join(modes) or 'none'} is not supported yet "
                         f"(one of: {', '.join(POOLING_MODES)})")
    return modes[0]


def pool(hidden, mask, mode: str):
    """Sentence vectors from token vectors, ignoring padding (so padded batches give the same rows)."""
    import torch

    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    summed, count = (hidden * m).sum(dim=1), m.sum(dim=1).clamp(min=1e-9)
    return summed / (count.sqrt() if mode == "mean_sqrt_len" else count)


class HuggingFaceRuntime(Runtime):
    """Serves a transformers model folder: one BYTES input of texts, batched into one forward pass.

    text_embedding answers `embedding` FP32 [n, dim] with the model's own pooling (sentence-transformers'
    Pooling config when present, else mean); sequence_classification answers `label` and `score`, or
    `probabilities` with return_probabilities.
    """

    options_class = HuggingFaceOptions

    async def _load(self) -> None:
        opts: HuggingFaceOptions = self.options
        if opts.backend == Backend.VLLM:
            raise ModelLoadError(self.name, "backend VLLM: the vLLM engine adapter is not available yet; "
                                            "use backend HUGGINGFACE (or AUTO) to run transformers")
        if opts.task is not None and opts.task not in IMPLEMENTED:
            raise ModelLoadError(self.name, self._not_implemented(opts.task))
        path = await asyncio.to_thread(storage.resolve, self.settings, (), opts.cache_dir, opts.pvc_root)
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelLoadError(self.name, f"no config.json in {path}: parameters.uri must name a transformers "
                                            "model folder (save_pretrained output)")
        if opts.tokenizer_revision is not None:
            raise ModelLoadError(self.name, f"option 'tokenizer_revision': {path} is a local folder, which holds one "
                                            "revision only; revisions apply to hub models (not supported yet)")
        await asyncio.to_thread(self._load_model, path)
        self._coalescer = Coalescer(self._call, lambda parts: [r for p in parts for r in p],
                                    max_rows=opts.max_coalesced_rows, enabled=opts.coalesce)
        self._set_metadata()

    def _not_implemented(self, task: Task) -> str:
        return (f"task '{task.value}' is not implemented yet in this runtime "
                f"(implemented: {', '.join(t.value for t in IMPLEMENTED)})")

    def _load_model(self, path: Path) -> None:
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
        if task not in IMPLEMENTED:
            raise ModelLoadError(self.name, f"{self._not_implemented(task)}; inferred from architecture {arch}")
        if task == Task.SEQUENCE_CLASSIFICATION and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ModelLoadError(self.name, f"task 'sequence_classification' needs a *ForSequenceClassification "
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
        self.dtype = self._torch_dtype(torch, config)
        tok_kw: Dict[str, Any] = {"do_lower_case": False} if opts.disable_lower_case else {}
        auto = (transformers.AutoModelForSequenceClassification if task == Task.SEQUENCE_CLASSIFICATION
                else transformers.AutoModel)
        with MODEL_FILE_LOCK:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                path, trust_remote_code=remote, local_files_only=True, **tok_kw)
            model = auto.from_pretrained(path, config=config, trust_remote_code=remote, local_files_only=True)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

        limits = [n for n in (st_max, self.tokenizer.model_max_length) if n and n < 1_000_000]
        if not limits:
            limits = [getattr(config, "max_position_embeddings", 512)]
        self.model_limit = min(limits)
        if opts.max_length is not None and opts.max_length > self.model_limit:
            raise ModelLoadError(self.name, f"option 'max_length': {opts.max_length} is more than this model "
                                            f"takes ({self.model_limit} tokens)")
        self.labels: List[str] = []
        if task == Task.SEQUENCE_CLASSIFICATION:
            id2label = getattr(config, "id2label", None) or {}
            self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        self.arch = arch

    def _torch_dtype(self, torch, config):
        want = self.options.dtype
        if want in (Dtype.AUTO, Dtype.FLOAT32, Dtype.FLOAT):
            if want == Dtype.AUTO and self.device.type == "cuda":
                conf = getattr(config, "torch_dtype", None)
                return conf if conf in (torch.float16, torch.bfloat16) else torch.float32
            return torch.float32
        if self.device.type == "cpu":
            logger.warning("model '%s': dtype %s is not used on CPU (slow or missing half-precision kernels); "
                           "running float32", self.name, want.value)
            return torch.float32
        return torch.bfloat16 if want == Dtype.BFLOAT16 else torch.float16

    def _set_metadata(self) -> None:
        if not self.inputs:
            self.inputs = [MetadataTensor(name="text", datatype="BYTES", shape=[-1])]
        if not self.outputs:
            if self.task == Task.TEXT_EMBEDDING:
                dim = int(getattr(self.model.config, "hidden_size", -1) or -1)
                self.outputs = [MetadataTensor(name="embedding", datatype="FP32", shape=[-1, dim])]
            else:
                self.outputs = [MetadataTensor(name="label", datatype="BYTES", shape=[-1]),
                                MetadataTensor(name="score", datatype="FP32", shape=[-1]),
                                MetadataTensor(name="probabilities", datatype="FP32", shape=[-1, len(self.labels)])]

    # -- request -> token ids ----------------------------------------------------------------------
    def _texts(self, payload: InferenceRequest) -> List[str]:
        if not payload.inputs:
            raise BadRequest("the request has no inputs: send one BYTES tensor of texts")
        if len(payload.inputs) > 1:
            names = ", ".join(i.name for i in payload.inputs)
            raise BadRequest(f"this model takes one input tensor of texts, got {len(payload.inputs)} ({names})")
        inp = payload.inputs[0]
        datatype = str(getattr(inp.datatype, "value", inp.datatype))
        if datatype != "BYTES":
            raise BadRequest(f"input '{inp.name}': this model takes text (datatype BYTES), got {datatype}")
        arr = decode_array(inp)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise BadRequest(f"input '{inp.name}': expected shape [n] (one text per row), got {list(arr.shape)}")
        if arr.shape[0] == 0:
            raise BadRequest(f"input '{inp.name}': empty batch (shape {list(arr.shape)})")
        texts = arr.tolist()
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise BadRequest(f"input '{inp.name}': text {empty[0]} is empty")
        return texts

    def _encode(self, texts: List[str]) -> List[Dict[str, List[int]]]:
        opts: HuggingFaceOptions = self.options
        if self.lower_text:
            texts = [t.lower() for t in texts]
        kw: Dict[str, Any] = {"add_special_tokens": not opts.disable_special_tokens}
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
    def _pad(self, torch, rows: List[Dict[str, List[int]]]) -> Dict[str, Any]:
        """Pads the merged rows to the longest one (the attention mask hides the padding)."""
        width = max(len(r["input_ids"]) for r in rows)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        fill = {"input_ids": self.tokenizer.pad_token_id or 0}
        out = {}
        for key in rows[0]:
            arr = np.full((len(rows), width), fill.get(key, 0), dtype=np.int64)
            for i, r in enumerate(rows):
                v = r[key]
                if left:
                    arr[i, width - len(v):] = v
                else:
                    arr[i, :len(v)] = v
            out[key] = torch.from_numpy(arr)
        return out

    def _call(self, key: Hashable, rows: List[Dict[str, List[int]]]) -> Dict[str, np.ndarray]:
        import torch

        batch = {k: v.to(self.device) for k, v in self._pad(torch, rows).items()}
        with torch.inference_mode():
            if self.task == Task.TEXT_EMBEDDING:
                hidden = self.model(**batch).last_hidden_state
                vec = pool(hidden, batch["attention_mask"], self.pooling).float()
                if self.normalize:
                    vec = torch.nn.functional.normalize(vec, p=2, dim=1)
                return {"embedding": vec.cpu().numpy()}
            probs = torch.softmax(self.model(**batch).logits.float(), dim=-1).cpu().numpy()
        return {"probabilities": probs}

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self.task == Task.TEXT_EMBEDDING:
            offered, default = ("embedding",), ("embedding",)
        else:
            offered = ("label", "score", "probabilities")
            default = ("probabilities",) if self.options.return_probabilities else ("label", "score")
        wanted = tuple(o.name for o in payload.outputs) if payload.outputs else default
        unknown = [w for w in wanted if w not in offered]
        if unknown:
            raise BadRequest(f"unknown output '{unknown[0]}': this model offers {', '.join(offered)}")
        texts = self._texts(payload)
        self._log(payload, texts)
        rows = self._encode(texts)
        result = await self._coalescer(self.task, rows, len(rows))
        if self.task == Task.SEQUENCE_CLASSIFICATION:
            probs = result["probabilities"]
            best = probs.argmax(axis=1)
            result = {"probabilities": probs, "score": probs[np.arange(len(best)), best],
                      "label": np.array([self.labels[i] for i in best], dtype=object)}
        return InferenceResponse.model_construct(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[encode_array(w, result[w]) for w in wanted])

    async def unload(self) -> bool:
        coalescer = getattr(self, "_coalescer", None)
        if coalescer is not None:
            coalescer.close()
        return True
