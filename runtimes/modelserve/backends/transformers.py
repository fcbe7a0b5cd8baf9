"""A transformers model in MLServer's process: the backend of HuggingFaceRuntime (backend HUGGINGFACE).

Encoder tasks (embedding, classification, token classification, fill-mask) run a batch as one forward pass,
merged with concurrent requests (batching.Coalescer); generation runs prompt by prompt through model.generate
in the model thread, and streams piece by piece. The model calls are in engines/transformers.py; the OpenAI
routes in transformers_openai.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Hashable, List, Optional

import numpy as np
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

from .. import metrics
from ..batching import MODEL_FILE_LOCK, Coalescer, ModelThread
from ..codecs import text_rows, token_tensors
from ..mlserver_compat import text_as_tensor
from ..codecs.requests import no_parameters, one_input, request_parameters, wanted_outputs
from ..engines import transformers as engine
from ..engines.transformers import (GENERATION_TASKS, TASK_HEADS, infer_task, is_cross_encoder, pool,
                                    read_sentence_transformers)
from ..adapters import requested, unknown
from ..errors import BadRequest, ModelLoadError
from ..options import Task
from . import Backend, rerank

logger = logging.getLogger("mlserver.modelserve.huggingface")

TENSOR_TASKS = (Task.TEXT_EMBEDDING, Task.SEQUENCE_CLASSIFICATION, Task.FILL_MASK)
OUTPUTS = {  # task -> (outputs offered, outputs answered by default)
    Task.TEXT_EMBEDDING: (("embedding",), ("embedding",)),
    Task.SEQUENCE_CLASSIFICATION: (("label", "score", "probabilities"), ("label", "score")),
    Task.TOKEN_CLASSIFICATION: (("entities",), ("entities",)),
    Task.FILL_MASK: (("tokens", "scores"), ("tokens", "scores")),
    Task.TEXT_GENERATION: (("text",), ("text",)),
    Task.TEXT2TEXT_GENERATION: (("text",), ("text",)),
    Task.TEXT_RERANKING: (rerank.OFFERED, rerank.DEFAULT),
}
TEXTS = "one input tensor of texts"


class TransformersBackend(Backend):
    """Built in a thread by ``load()``; ``options`` are HuggingFaceRuntime's (huggingface.HuggingFaceOptions)."""

    _grammar = None  # transformers_grammar.Grammars, made at the first structured request
    lora = None
    """transformers_lora.PeftAdapters when the model takes LoRA adapters (options adapters, runtime_adapters)."""

    def __init__(self, name: str, version: Optional[str], options: Any):
        super().__init__(name, version)
        self.options = options

    # -- loading (in a thread) -----------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, version: Optional[str], options: Any, path: Path, tokenizer_path: Path,
             adapters: Optional[Dict[str, Path]] = None):
        self = cls(name, version, options)
        self._load_model(path, tokenizer_path)
        self.lora = None
        if adapters or options.runtime_adapters:
            if self.task != Task.TEXT_GENERATION:
                used = "adapters" if adapters else "runtime_adapters"
                raise ModelLoadError(name, f"option '{used}' is for task text_generation (LoRA adapters); this "
                                           f"model's task is {self.task.value}")
            from .transformers_lora import PeftAdapters

            self.lora = PeftAdapters(name, self.model, path)
            urls = {a.name: a.url for a in options.adapters}
            for adapter, folder in (adapters or {}).items():
                try:
                    self.lora.load(adapter, folder, urls.get(adapter, str(folder)), "settings")
                except BadRequest as exc:
                    raise ModelLoadError(name, str(exc)) from None
        self._coalescer = Coalescer(self._call, lambda parts: [r for p in parts for r in p],
                                    max_rows=options.max_coalesced_rows, enabled=options.coalesce)
        self._thread = ModelThread("modelserve-generate") if self.task in GENERATION_TASKS else None
        self._set_metadata()
        if self.task != Task.TEXT_RERANKING:
            # a text uploaded as the body (Content-Type text/plain, application/octet-stream, ...): the one text
            self.raw_body = text_as_tensor(self.inputs[0].name)
        self.openai_kinds = frozenset({"embeddings"} if self.task == Task.TEXT_EMBEDDING else
                                      {"completions", "chat", "tokenize", "detokenize"}
                                      if self.task == Task.TEXT_GENERATION else
                                      rerank.RERANK_KINDS if self.task == Task.TEXT_RERANKING else ())
        from .transformers_openai import TransformersOpenAI

        self._openai = TransformersOpenAI(self)
        return self

    def _load_model(self, path: Path, tokenizer_path: Path) -> None:
        with MODEL_FILE_LOCK:  # models load in parallel threads: one first import of transformers at a time
            import torch
            import transformers

        opts = self.options
        remote = opts.trust_remote_code
        with MODEL_FILE_LOCK:
            config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=remote, local_files_only=True)
        archs = list(getattr(config, "architectures", None) or [])
        arch = archs[0] if archs else type(config).__name__
        is_st = (path / "modules.json").exists()
        task = opts.task or infer_task(archs, is_st, getattr(config, "num_labels", None), is_cross_encoder(path))
        if task is None:
            raise ModelLoadError(self.name, f"cannot tell the task of architecture {arch}: set option 'task' "
                                            f"({', '.join(t.value for t in Task)})")
        auto_name, heads = TASK_HEADS[task]
        if heads and not any(a.endswith(h) for a in archs for h in heads):
            raise ModelLoadError(self.name, f"task '{task.value}' needs a {' or '.join('*' + h for h in heads)} "
                                            f"model; this folder holds {arch}")
        if task == Task.TEXT_EMBEDDING and getattr(config, "is_encoder_decoder", False):
            raise ModelLoadError(self.name, f"task 'text_embedding' needs an encoder model; {arch} is an "
                                            "encoder-decoder")
        if opts.tensor_input_names and task not in TENSOR_TASKS:
            why = " (it reports character offsets, so it needs text)" if task == Task.TOKEN_CLASSIFICATION else ""
            raise ModelLoadError(self.name, f"option 'tensor_input_names' applies to the encoder tasks "
                                            f"({', '.join(t.value for t in TENSOR_TASKS)}); this model's task is "
                                            f"'{task.value}'{why}")
        self.task = task
        self.pooling, st_normalize, st_max, self.lower_text = "mean", False, None, False
        if is_st and task == Task.TEXT_EMBEDDING:
            st_pooling, st_normalize, st_max, self.lower_text = read_sentence_transformers(path)
            self.pooling = st_pooling or "mean"
        self.normalize = st_normalize if opts.normalize is None else opts.normalize
        if opts.disable_lower_case:
            self.lower_text = False

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = engine.torch_dtype(opts.dtype, self.device, config, lambda: logger.warning(
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
        self.activation = None
        if task == Task.TEXT_RERANKING:
            if config.num_labels not in (1, 2):
                raise ModelLoadError(self.name, f"task 'text_reranking' needs a cross-encoder (one logit, or two labels "
                                                f"with label 1 the relevant one); this model has {config.num_labels}")
            self.activation = (rerank.activation_of(config, engine.st_config(path)) if config.num_labels == 1
                               else "softmax")
            if self.activation is None:
                raise ModelLoadError(self.name, "task 'text_reranking': the sentence-transformers activation_fn in "
                                                "config.json is not one of Sigmoid, Identity, Tanh")
        if task in (Task.SEQUENCE_CLASSIFICATION, Task.TOKEN_CLASSIFICATION):
            id2label = getattr(config, "id2label", None) or {}
            self.labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        if opts.tensor_input_names:
            try:
                token_tensors.check_names(opts.tensor_input_names, self.model.forward)
            except ValueError as exc:
                raise ModelLoadError(self.name, f"option 'tensor_input_names' ({arch}): {exc}") from None

    def _set_metadata(self) -> None:
        if self.task == Task.TEXT_RERANKING:
            self.inputs, self.outputs = list(rerank.INPUTS), list(rerank.OUTPUTS)
            return
        name = "prompt" if self.task in GENERATION_TASKS else "text"
        self.inputs = [MetadataTensor(name=name, datatype="BYTES", shape=[-1])]
        self.inputs += [MetadataTensor(name=n, datatype="INT64", shape=[-1, -1])
                        for n in self.options.tensor_input_names or ()]
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

    async def close(self) -> None:
        self._coalescer.close()
        if self._thread is not None:
            self._thread.close()

    # -- request -> token ids ----------------------------------------------------------------------
    def encode(self, texts: List[str], pairs: Optional[List[str]] = None, **extra) -> List[Dict[str, List[int]]]:
        """Token ids of each text (of each (text, pairs[i]) for a cross-encoder); too long is a 400 unless option
        max_length truncates (a pair: the longer side first, as sentence-transformers' CrossEncoder does)."""
        opts = self.options
        if self.lower_text:
            texts = [t.lower() for t in texts]
            pairs = [t.lower() for t in pairs] if pairs is not None else None
        kw: Dict[str, Any] = {"add_special_tokens": not opts.disable_special_tokens, **extra}
        if opts.return_token_type_ids is not None:
            kw["return_token_type_ids"] = opts.return_token_type_ids
        if opts.max_length is not None:
            kw.update(truncation=True, max_length=opts.max_length)
        enc = self.tokenizer(texts, pairs, **kw) if pairs is not None else self.tokenizer(texts, **kw)
        rows = [dict(zip(enc.keys(), values)) for values in zip(*enc.values())]
        if opts.max_length is None:
            for i, row in enumerate(rows):
                n = len(row["input_ids"])
                if n > self.model_limit:
                    what = f"text {i}" if pairs is None else f"pair {i} (the query and document {i})"
                    raise BadRequest(f"{what} is {n} tokens long; this model takes at most {self.model_limit} "
                                     "(set option max_length to truncate)")
        return rows

    def _log(self, payload: InferenceRequest, texts: List[str]) -> None:
        opts = self.options
        if opts.disable_log_requests or not logger.isEnabledFor(logging.INFO):
            return
        cut = opts.max_log_len
        shown = [t if cut is None else t[:cut] for t in texts]
        logger.info("model '%s' request %s: %d text(s): %r", self.name, payload.id, len(texts), shown)

    # -- the model call (in the model thread) ------------------------------------------------------
    def _call(self, key: Hashable, rows: List[Dict[str, List[int]]]) -> Dict[str, np.ndarray]:
        import torch

        if self.task == Task.TEXT_RERANKING:
            return {"scores": self._relevance(rows)}
        batch = {k: v.to(self.device) for k, v in engine.pad(self.tokenizer, rows).items()}
        with torch.inference_mode():
            if self.task == Task.TEXT_EMBEDDING:
                hidden = self.model(**batch).last_hidden_state
                vec = pool(hidden, batch["attention_mask"], self.pooling).float()
                if self.normalize:
                    vec = torch.nn.functional.normalize(vec, p=2, dim=1)
                return {"embedding": vec.cpu().numpy()}
            if self.task == Task.FILL_MASK:
                return engine.fill_mask_call(self.model, batch, self.tokenizer.mask_token_id, key[1])
            probs = torch.softmax(self.model(**batch).logits.float(), dim=-1).cpu().numpy()
        return {"probabilities": probs}

    RERANK_CHUNK = 32
    """Pairs per forward pass: merged requests' pairs run sorted by length in chunks of this many, so a chunk is
    padded to its own longest pair, not the whole merge's (sentence-transformers' CrossEncoder does the same)."""

    def _relevance(self, rows: List[Dict[str, List[int]]]) -> np.ndarray:
        import torch

        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        scores = np.empty(len(rows), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.RERANK_CHUNK):
                part = order[start:start + self.RERANK_CHUNK]
                batch = {k: v.to(self.device) for k, v in engine.pad(self.tokenizer, [rows[i] for i in part]).items()}
                logits = self.model(**batch).logits.float()
                scores[part] = engine.relevance(logits, self.activation).cpu().numpy()
        return scores

    async def embed(self, rows: List[Dict[str, List[int]]]) -> np.ndarray:
        return (await self._coalescer(self.task, rows, len(rows)))["embedding"]

    def _wanted(self, payload: InferenceRequest):
        offered, default = OUTPUTS[self.task]
        if self.task == Task.SEQUENCE_CLASSIFICATION and self.options.return_probabilities:
            default = ("probabilities",)
        return wanted_outputs(payload, offered, default)

    async def score_pairs(self, firsts: List[str], seconds: List[str]):
        """Cross-encoder relevance of each (firsts[i], seconds[i]), merged with concurrent requests' pairs."""
        rows = self.encode(firsts, seconds)
        scores = (await self._coalescer(self.task, rows, len(rows)))["scores"]
        return scores, sum(len(r["input_ids"]) for r in rows)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        wanted = self._wanted(payload)
        if self.task == Task.TEXT_RERANKING:
            return self.response(payload, await rerank.predict(self, payload), wanted)
        if self.options.tensor_input_names and token_tensors.is_tensor_request(payload):
            result = await self._predict_tensors(payload)
        else:
            result = await self._predict_texts(payload)
        if self.task == Task.SEQUENCE_CLASSIFICATION:
            probs = result["probabilities"]
            best = probs.argmax(axis=1)
            result = {"probabilities": probs, "score": probs[np.arange(len(best)), best],
                      "label": np.array([self.labels[i] for i in best], dtype=object)}
        return self.response(payload, result, wanted)

    async def _predict_tensors(self, payload: InferenceRequest) -> Dict[str, np.ndarray]:
        """Token tensors (option tensor_input_names) straight to the model: no tokenizer."""
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 0)
        rows = token_tensors.token_rows(payload, self.options.tensor_input_names, self.model_limit, vocab)
        if not self.options.disable_log_requests:
            logger.info("model '%s' request %s: %d row(s) of token tensors", self.name, payload.id, len(rows))
        if self.task == Task.FILL_MASK:
            return await self._fill_mask(payload, None, rows)
        no_parameters(payload, f"task {self.task.value}")
        return await self._counted(rows)

    async def _predict_texts(self, payload: InferenceRequest) -> Dict[str, np.ndarray]:
        texts = text_rows(one_input(payload, TEXTS))
        self._log(payload, texts)
        if self.task in GENERATION_TASKS:
            return {"text": np.array(await self._generate(payload, texts), dtype=object)}
        if self.task == Task.FILL_MASK:
            return await self._fill_mask(payload, texts)
        no_parameters(payload, f"task {self.task.value}")
        if self.task == Task.TOKEN_CLASSIFICATION:
            return await self._token_classification(texts)
        rows = self.encode(texts)
        return await self._counted(rows)

    async def _counted(self, rows: List[Dict[str, List[int]]]) -> Dict[str, np.ndarray]:
        """The model on rows of a V2 request; embeddings counted (the OpenAI route counts its own)."""
        result = await self._coalescer(self.task, rows, len(rows))
        if self.task == Task.TEXT_EMBEDDING:
            metrics.embedded(self.name, "", len(rows), sum(len(r["input_ids"]) for r in rows))
        return result

    async def _token_classification(self, texts: List[str]) -> Dict[str, np.ndarray]:
        full = self.encode(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
        side = [(r.pop("offset_mapping"), r.pop("special_tokens_mask")) for r in full]
        probs = (await self._coalescer(self.task, full, len(full)))["probabilities"]
        entities = [engine.token_entities(self.tokenizer, self.labels, row, offsets, special, probs[i])
                    for i, (row, (offsets, special)) in enumerate(zip(full, side))]
        return {"entities": np.array([json.dumps(e) for e in entities], dtype=object)}

    async def _fill_mask(self, payload: InferenceRequest, texts: Optional[List[str]],
                         rows: Optional[List[Dict[str, List[int]]]] = None) -> Dict[str, np.ndarray]:
        params = no_parameters(payload, "fill_mask", ("top_k",))
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
            rows = self.encode(texts)
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
    def generation_args(self, params: Dict[str, Any]):
        """kwargs for model.generate, the seed and the stop strings, from V2 request parameters."""
        cap = self.options.max_new_tokens_limit
        return engine.generation_kwargs(params, min(self.options.max_new_tokens, cap), cap)

    def generate(self, row: Dict[str, List[int]], kw: dict, seed, stop, streamer=None, adapter: Optional[str] = None):
        """One prompt in the model thread (with LoRA ``adapter``, or the base model): (new text, new token count)."""
        return self._thread.submit(self._generate_with, adapter, row, kw, seed, stop, streamer)

    def _generate_with(self, adapter, row, kw, seed, stop, streamer):
        model = self.model
        if self.lora is not None:
            model, extra = self.lora.model_for(adapter)
            kw = {**kw, **extra}
        if "response_schema" in kw:  # OpenAI response_format: the schema as a logits processor
            kw = dict(kw)
            kw["logits_processor"] = [self._grammars().processor(kw.pop("response_schema"))]
        return engine.generate_counted(model, self.tokenizer, row, kw, seed, stop, self.device, streamer)

    def _grammars(self):
        if self._grammar is None:
            from .transformers_grammar import Grammars

            vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
            self._grammar = Grammars(self.tokenizer, vocab)
        return self._grammar

    # -- LoRA adapters (transformers_lora.py; the routes in adapters.py) ---------------------------------
    @property
    def adapters(self) -> List[str]:
        return self.lora.names if self.lora is not None else []

    def adapter_entries(self) -> List[Dict[str, str]]:
        return list(self.lora.entries.values()) if self.lora is not None else []

    async def load_adapter(self, adapter: str, path: Path, url: str) -> None:
        await self._thread.submit(self.lora.load, adapter, path, url, "runtime")

    async def unload_adapter(self, adapter: str) -> None:
        if adapter not in self.adapters:
            raise unknown(self.name, adapter, self.adapters)
        await self._thread.submit(self.lora.delete, adapter)

    def adapter_of(self, params: Dict[str, Any]) -> Optional[str]:
        """The V2 parameter ``adapter`` (removed from ``params``): one of this model's, or None."""
        return requested(params, self.adapters)

    async def _generate(self, payload: InferenceRequest, prompts: List[str]) -> List[str]:
        params = request_parameters(payload)
        adapter = self.adapter_of(params)
        kw, seed, stop = self.generation_args(params)
        texts = []
        for row in self.encode(prompts):
            generation = metrics.Generation(self.name, adapter or "")
            try:
                text, count = await self.generate(row, kw, seed, stop, adapter=adapter)
            except BaseException:
                generation.failed()
                raise
            generation.done(len(row["input_ids"]), count)
            texts.append(text)
        return texts

    async def deltas(self, row: Dict[str, List[int]], kw: dict, seed, stop,
                     adapter: Optional[str] = None) -> AsyncIterator[str]:
        """The new text of one generation, piece by piece; its last item is the new token count (an int)."""
        queue: asyncio.Queue = asyncio.Queue()
        streamer = engine.QueueStreamer(engine.TextDeltas(self.tokenizer, stop), asyncio.get_running_loop(), queue)
        job = self.generate(row, kw, seed, stop, streamer, adapter)
        try:
            while True:
                delta = await queue.get()
                if delta is None:
                    break
                yield delta
            yield (await job)[1]
        finally:
            streamer.cancelled = True  # the client left early: stop generating

    async def stream(self, payload: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Generation, one response per piece of new text; other tasks answer whole. Needs parallel_workers 0."""
        if self.task not in GENERATION_TASKS:
            yield await self.predict(payload)
            return
        wanted = self._wanted(payload)
        prompts = text_rows(one_input(payload, TEXTS))
        if len(prompts) != 1:
            raise BadRequest(f"streaming takes one prompt per request, got {len(prompts)}")
        self._log(payload, prompts)
        params = request_parameters(payload)
        adapter = self.adapter_of(params)
        kw, seed, stop = self.generation_args(params)
        row = self.encode(prompts)[0]
        generation, count = metrics.Generation(self.name, adapter or "", streamed=True), None
        try:
            async with aclosing(self.deltas(row, kw, seed, stop, adapter)) as deltas:
                async for delta in deltas:
                    if isinstance(delta, str):
                        generation.token()
                        yield self.response(payload, {wanted[0]: np.array([delta], dtype=object)}, wanted)
                    else:
                        count = delta
        finally:
            if count is None:
                generation.failed()
            generation.done(len(row["input_ids"]), count)

    # -- OpenAI routes -----------------------------------------------------------------------------
    def openai_ids(self) -> List[str]:
        return [self.name, *self.adapters] if self.openai_kinds else []

    async def openai_call(self, kind: str, body: dict, model_id: str, raw: bytes) -> Any:
        if kind in rerank.RERANK_KINDS:
            return await rerank.openai_call(self, kind, body)
        return await self._openai.call(kind, body, model_id if model_id != self.name else None)
