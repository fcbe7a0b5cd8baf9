"""transformers calls for backends/transformers.py: task inference, pooling, padding, per-task post-processing and
generation. torch and transformers are imported where used (the backend imports them first, under the model lock)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..codecs.params import check_names, number, stop_strings
from ..errors import BadRequest
from ..options import Dtype, Task

_ARCH_TASKS = (  # architecture-name suffix -> the task it is built for
    ("ForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
    ("ForTokenClassification", Task.TOKEN_CLASSIFICATION),
    ("ForMaskedLM", Task.FILL_MASK),
    ("ForCausalLM", Task.TEXT_GENERATION),
    ("LMHeadModel", Task.TEXT_GENERATION),
    ("ForConditionalGeneration", Task.TEXT2TEXT_GENERATION),
    ("Model", Task.TEXT_EMBEDDING),  # a bare encoder: BertModel, RobertaModel, ...
)
TASK_HEADS = {  # task -> (transformers Auto class, architecture suffixes that have the head it needs)
    Task.TEXT_EMBEDDING: ("AutoModel", ()),
    Task.SEQUENCE_CLASSIFICATION: ("AutoModelForSequenceClassification", ("ForSequenceClassification",)),
    Task.TEXT_RERANKING: ("AutoModelForSequenceClassification", ("ForSequenceClassification",)),
    Task.TOKEN_CLASSIFICATION: ("AutoModelForTokenClassification", ("ForTokenClassification",)),
    Task.FILL_MASK: ("AutoModelForMaskedLM", ("ForMaskedLM",)),
    Task.TEXT_GENERATION: ("AutoModelForCausalLM", ("ForCausalLM", "LMHeadModel")),
    Task.TEXT2TEXT_GENERATION: ("AutoModelForSeq2SeqLM", ("ForConditionalGeneration",)),
}
GENERATION_TASKS = (Task.TEXT_GENERATION, Task.TEXT2TEXT_GENERATION)
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len")
_ST_OK = ("Transformer", "Pooling", "Normalize")  # sentence-transformers modules this runtime reproduces


def infer_task(architectures: Sequence[str], sentence_transformers: bool, num_labels: Optional[int] = None,
               cross_encoder: bool = False) -> Optional[Task]:
    """The task a folder's model is built for. A sequence classifier with one label, or one saved as a
    sentence-transformers CrossEncoder, is a cross-encoder: text_reranking (sentence-transformers 5+ writes
    modules.json for a CrossEncoder too)."""
    if cross_encoder and any(a.endswith("ForSequenceClassification") for a in architectures):
        return Task.TEXT_RERANKING
    if sentence_transformers:
        return Task.TEXT_EMBEDDING
    for arch in architectures:
        for suffix, task in _ARCH_TASKS:
            if arch.endswith(suffix):
                if task == Task.SEQUENCE_CLASSIFICATION and (num_labels == 1 or cross_encoder):
                    return Task.TEXT_RERANKING
                return task
    return None


def st_config(folder: Path) -> dict:
    """config_sentence_transformers.json, or {}."""
    conf = folder / "config_sentence_transformers.json"
    try:
        data = json.loads(conf.read_text()) if conf.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_cross_encoder(folder: Path) -> bool:
    """Saved by sentence-transformers' CrossEncoder (config_sentence_transformers.json says so)."""
    return st_config(folder).get("model_type") == "CrossEncoder"


def config_labels(config: dict) -> Optional[int]:
    """``num_labels`` of a config.json read as JSON (transformers derives it from id2label)."""
    if isinstance(config.get("num_labels"), int):
        return config["num_labels"]
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, dict) else None


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


def torch_dtype(want: Dtype, device, config, warn) -> Any:
    import torch

    if want in (Dtype.AUTO, Dtype.FLOAT32, Dtype.FLOAT):
        if want == Dtype.AUTO and device.type == "cuda":
            conf = getattr(config, "torch_dtype", None)
            return conf if conf in (torch.float16, torch.bfloat16) else torch.float32
        return torch.float32
    if device.type == "cpu":
        warn()
        return torch.float32
    return torch.bfloat16 if want == Dtype.BFLOAT16 else torch.float16


def pad(tokenizer, rows: List[Dict[str, List[int]]]) -> Dict[str, Any]:
    """Pads the merged rows to the longest one (the attention mask hides the padding)."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    fill = {"input_ids": tokenizer.pad_token_id or 0}
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


def relevance(logits, activation: str):
    """A cross-encoder's scores from its logits [n, labels]: the activation of its one logit (sentence-transformers'
    CrossEncoder.predict), or for two labels the probability of label 1."""
    import torch

    if activation == "softmax":
        return torch.softmax(logits, dim=-1)[:, 1]
    one = logits[:, 0]
    if activation == "sigmoid":
        return torch.sigmoid(one)
    if activation == "tanh":
        return torch.tanh(one)
    return one


# -- token classification ----------------------------------------------------------------------------
IGNORED_ENTITY_LABELS = ("O",)


def token_entities(tokenizer, labels: List[str], row: Dict[str, List[int]], offsets, special,
                   probs: np.ndarray) -> List[dict]:
    """One text's entities, token by token, as transformers' token-classification pipeline gives them
    with aggregation_strategy="none": special tokens and the "O" label are left out."""
    out = []
    ids = row["input_ids"]
    for idx in range(len(ids)):
        if special[idx]:
            continue
        best = int(probs[idx].argmax())
        label = labels[best]
        if label in IGNORED_ENTITY_LABELS:
            continue
        start, end = offsets[idx]
        out.append({"entity": label, "score": float(probs[idx, best]), "index": idx,
                    "word": tokenizer.convert_ids_to_tokens(int(ids[idx])), "start": int(start), "end": int(end)})
    return out


# -- fill mask ---------------------------------------------------------------------------------------
def fill_mask_call(model, batch, mask_id: int, top_k: int) -> Dict[str, np.ndarray]:
    """Top-k token ids and softmax scores at every mask position: [n, max masks, k] (-1 past a row's masks)."""
    import torch

    logits = model(**batch).logits
    ids = batch["input_ids"]
    where = [(ids[i] == mask_id).nonzero().flatten().tolist() for i in range(ids.shape[0])]
    m = max(len(w) for w in where)
    out_ids = np.full((ids.shape[0], m, top_k), -1, dtype=np.int64)
    out_scores = np.zeros((ids.shape[0], m, top_k), dtype=np.float32)
    for i, positions in enumerate(where):
        if not positions:
            continue
        probs = torch.softmax(logits[i, positions].float(), dim=-1)
        values, indices = probs.topk(top_k, dim=-1)
        out_ids[i, :len(positions)] = indices.cpu().numpy()
        out_scores[i, :len(positions)] = values.cpu().numpy()
    return {"ids": out_ids, "scores": out_scores}


# -- generation ------------------------------------------------------------------------------------------
GENERATION_PARAMS = ("max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "seed", "stop")


def generation_kwargs(params: Dict[str, Any], default_max: int,
                      cap: int) -> Tuple[Dict[str, Any], Optional[int], List[str]]:
    """The request's generation parameters as model.generate kwargs, plus the seed and stop strings.

    do_sample defaults to true when temperature, top_p or top_k is given (else greedy); temperature 0 is greedy.
    """
    check_names(params, GENERATION_PARAMS)
    kw: Dict[str, Any] = {"max_new_tokens": default_max}
    if params.get("max_new_tokens") is not None:
        kw["max_new_tokens"] = number("max_new_tokens", params["max_new_tokens"], int, 1, cap)
    sampling: Dict[str, Any] = {}
    if params.get("temperature") is not None:
        sampling["temperature"] = number("temperature", params["temperature"], float, 0)
    if params.get("top_p") is not None:
        sampling["top_p"] = number("top_p", params["top_p"], float, 0, 1, low_open=True)
    if params.get("top_k") is not None:
        sampling["top_k"] = number("top_k", params["top_k"], int, 0)
    do_sample = params.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise BadRequest(f"parameter 'do_sample' must be true or false, got {do_sample!r}")
    if do_sample is None:
        do_sample = bool(sampling)
    if sampling.get("temperature") == 0:
        do_sample = False
    kw["do_sample"] = do_sample
    if do_sample:
        kw.update(sampling)
    seed = params.get("seed")
    if seed is not None:
        seed = number("seed", seed, int, 0)
    stop = stop_strings(params["stop"]) if params.get("stop") else []
    return kw, seed, stop


def cut_at_stop(text: str, stop: List[str]) -> Tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class TextDeltas:
    """Incremental decoding for streaming: each step decodes all new tokens (as the final answer is decoded)
    and yields only what was not sent yet, holding back what a stop string could still claim."""

    def __init__(self, tokenizer, stop: List[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: List[int] = []
        self.sent = 0
        self.stopped = False
        self.hold = max((len(s) for s in stop), default=1) - 1

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, new_ids: List[int], final: bool = False) -> str:
        self.ids.extend(new_ids)
        text, self.stopped = cut_at_stop(self.text(), self.stop)
        safe = len(text) if (final or self.stopped) else max(len(text) - self.hold, 0)
        if safe <= self.sent:
            return ""
        delta, self.sent = text[self.sent:safe], safe
        return delta


class TokenTracker:
    """A transformers streamer (put/end) that feeds the new tokens to TextDeltas: the stop-string check."""

    def __init__(self, deltas: TextDeltas):
        self.deltas = deltas
        self.skipped_prompt = False
        self.cancelled = False

    def put(self, value) -> None:
        if not self.skipped_prompt:  # generate() first passes the prompt (or the decoder start token)
            self.skipped_prompt = True
            return
        self._send(self.deltas.push(value.reshape(-1).tolist()))

    def end(self) -> None:
        pass

    def abort(self) -> None:
        """generate() failed: end() will not come."""

    def _send(self, delta: str) -> None:
        pass


class QueueStreamer(TokenTracker):
    """Hands each text delta to an asyncio queue (as TextIteratorStreamer, without blocking a thread on the
    reading side): generate() runs in the model thread, the request's coroutine awaits the queue."""

    def __init__(self, deltas: TextDeltas, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        super().__init__(deltas)
        self.loop, self.queue = loop, queue

    def _send(self, delta: str) -> None:
        if delta:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)

    def end(self) -> None:
        self._send(self.deltas.push([], final=True))
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    def abort(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)  # the reader then awaits the job's error


def stopping_criteria(should_stop):
    """Stops generate() once ``should_stop()`` is true (a stop string was seen, or the client left)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool,
                              device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


def generate_one(model, tokenizer, row: Dict[str, List[int]], kw: Dict[str, Any], seed: Optional[int],
                 stop: List[str], device, streamer: Optional[TokenTracker] = None) -> str:
    """One prompt through model.generate (in the model thread); the new text, cut at the first stop string."""
    return generate_counted(model, tokenizer, row, kw, seed, stop, device, streamer)[0]


def generate_counted(model, tokenizer, row: Dict[str, List[int]], kw: Dict[str, Any], seed: Optional[int],
                     stop: List[str], device, streamer: Optional[TokenTracker] = None) -> Tuple[str, int]:
    """generate_one's text and the number of new tokens generate() produced (OpenAI's completion_tokens).

    The answer is decoded from generate()'s output, the same way for streamed and whole requests.
    """
    import torch

    batch = {k: torch.tensor([v], device=device) for k, v in row.items()}
    prompt_len = 0 if model.config.is_encoder_decoder else len(row["input_ids"])
    if streamer is None and stop:
        streamer = TokenTracker(TextDeltas(tokenizer, stop))
    tracker = streamer
    criteria = stopping_criteria(lambda: tracker is not None and (tracker.cancelled or tracker.deltas.stopped))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if seed is not None:
        torch.manual_seed(seed)
    try:
        with torch.inference_mode():
            out = model.generate(**batch, **kw, pad_token_id=pad_id, streamer=streamer, stopping_criteria=criteria)
    except BaseException:
        if streamer is not None:
            streamer.abort()
        raise
    new = out[0, prompt_len:].tolist()
    if model.config.is_encoder_decoder and new and new[0] == getattr(model.config, "decoder_start_token_id", None):
        new_count = len(new) - 1
    else:
        new_count = len(new)
    text = tokenizer.decode(new, skip_special_tokens=True)
    return cut_at_stop(text, stop)[0], new_count
