"""Reranking and scoring, the same on every backend that can (transformers in-process, vLLM, Infinity): a backend
gives ``score_pairs(firsts, seconds) -> (scores, tokens)`` and this module serves it as

- V2 (and V1 through it): inputs ``query`` (BYTES, one per row) and ``documents`` (BYTES, [n] for one query or
  [queries, n]) -> ``scores`` (FP32, the documents' shape, in their order) and, when asked for, ``indices``
  (INT64, each row's documents best first);
- ``POST /v1/rerank`` (and ``/v2/rerank``): the Cohere/Jina shape vLLM, Infinity and KubeAI accept;
- ``POST /v1/score``: vLLM's shape (``text_1``, ``text_2`` as strings or lists).

Scores are the cross-encoder's relevance: sigmoid of its one logit (or the activation its sentence-transformers
config names), or the probability of label 1 for a two-label model, as sentence-transformers' CrossEncoder gives.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
from mlserver.types import InferenceRequest, MetadataTensor, RequestInput

from ..codecs.requests import datatype_of, no_parameters, wanted_outputs
from ..codecs.tensors import decode_array
from ..errors import BadRequest
from ..openai.protocol import OpenAIError, new_id

RERANK_KINDS = frozenset({"rerank", "score"})
INPUTS = [MetadataTensor(name="query", datatype="BYTES", shape=[-1]),
          MetadataTensor(name="documents", datatype="BYTES", shape=[-1, -1])]
OUTPUTS = [MetadataTensor(name="scores", datatype="FP32", shape=[-1, -1]),
           MetadataTensor(name="indices", datatype="INT64", shape=[-1, -1])]
OFFERED, DEFAULT = ("scores", "indices"), ("scores",)
RERANK_FIELDS = {"model", "query", "documents", "top_n", "return_documents", "rank_fields", "user"}
SCORE_FIELDS = {"model", "text_1", "text_2", "user"}


class Scorer(Protocol):
    name: str

    async def score_pairs(self, firsts: List[str], seconds: List[str]) -> Tuple[np.ndarray, int]:
        """The relevance of each (firsts[i], seconds[i]) and the tokens read."""


def _texts(inp: RequestInput, what: str) -> np.ndarray:
    if datatype_of(inp) != "BYTES":
        raise BadRequest(f"input '{inp.name}': {what} are text (datatype BYTES), got {datatype_of(inp)}")
    arr = decode_array(inp)
    if arr.size == 0:
        raise BadRequest(f"input '{inp.name}': no {what}")
    return arr


def v2_pairs(payload: InferenceRequest) -> Tuple[List[str], List[List[str]], Tuple[int, ...]]:
    """(queries, each query's documents, the documents' shape) of a V2 rerank request."""
    by_name = {i.name: i for i in payload.inputs}
    unknown = [n for n in by_name if n not in ("query", "documents")]
    if unknown or len(by_name) != len(payload.inputs):
        raise BadRequest(f"unknown input '{unknown[0] if unknown else payload.inputs[0].name}': a reranking model "
                         "takes the inputs 'query' (BYTES, one per row) and 'documents' (BYTES)")
    missing = [n for n in ("query", "documents") if n not in by_name]
    if missing:
        raise BadRequest(f"missing input '{missing[0]}': a reranking model takes 'query' (BYTES, one per row) and "
                         "'documents' (BYTES, [n] for one query or [queries, n])")
    queries = _texts(by_name["query"], "queries").reshape(-1).tolist()
    docs = _texts(by_name["documents"], "documents")
    if docs.ndim == 1 and len(queries) == 1:
        docs = docs.reshape(1, -1)
        shape: Tuple[int, ...] = (docs.shape[1],)
    elif docs.ndim == 2 and docs.shape[0] == len(queries):
        shape = docs.shape
    else:
        raise BadRequest(f"input 'documents': shape {list(docs.shape)} does not fit {len(queries)} quer"
                         f"{'y' if len(queries) == 1 else 'ies'}: send [n] documents for one query, or "
                         "[queries, n]")
    empty = [i for i, q in enumerate(queries) if not str(q).strip()]
    if empty:
        raise BadRequest(f"input 'query': query {empty[0]} is empty")
    return [str(q) for q in queries], [[str(d) for d in row] for row in docs.tolist()], shape


async def predict(backend: Scorer, payload: InferenceRequest) -> Dict[str, np.ndarray]:
    """The V2 outputs of a rerank request (``Backend.response`` sends them)."""
    no_parameters(payload, "reranking")
    queries, docs, shape = v2_pairs(payload)
    firsts = [q for q, row in zip(queries, docs) for _ in row]
    seconds = [d for row in docs for d in row]
    scores, _ = await backend.score_pairs(firsts, seconds)
    table = np.asarray(scores, dtype=np.float32).reshape(len(queries), -1)
    order = np.argsort(-table, axis=1, kind="stable").astype(np.int64)
    return {"scores": table.reshape(shape), "indices": order.reshape(shape)}


def wanted(payload: InferenceRequest) -> Sequence[str]:
    return wanted_outputs(payload, OFFERED, DEFAULT)


# -- the OpenAI-style routes -------------------------------------------------------------------------------
def _refuse_unknown(body: dict, allowed: set, path: str) -> None:
    extra = [k for k, v in body.items() if k not in allowed and v is not None]
    if extra:
        raise OpenAIError(f"field '{extra[0]}' is not supported by {path} (fields: {', '.join(sorted(allowed))})",
                          param=extra[0])


def _document(i: int, doc: Any) -> str:
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return doc["text"]
    raise OpenAIError(f"documents[{i}] must be a string or an object with a 'text' string", param="documents")


def parse_rerank(body: dict) -> Tuple[str, List[str], int, bool]:
    """(query, documents, top_n, return_documents) of a Cohere/Jina rerank body."""
    _refuse_unknown(body, RERANK_FIELDS, "/v1/rerank")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise OpenAIError("'query' must be a non-empty string", param="query")
    raw = body.get("documents")
    if not isinstance(raw, list) or not raw:
        raise OpenAIError("'documents' must be a non-empty list of strings (or {\"text\": ...} objects)",
                          param="documents")
    docs = [_document(i, d) for i, d in enumerate(raw)]
    fields = body.get("rank_fields")
    if fields is not None and fields != ["text"]:
        raise OpenAIError("'rank_fields' other than [\"text\"] is not supported: documents are ranked by their text",
                          param="rank_fields")
    top_n = body.get("top_n")
    if top_n is None:
        top_n = len(docs)
    elif isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= len(docs):
        raise OpenAIError(f"'top_n' must be an integer from 1 to the number of documents ({len(docs)}), got "
                          f"{top_n!r}", param="top_n")
    back = body.get("return_documents", False)
    if back is None:
        back = False
    if not isinstance(back, bool):
        raise OpenAIError(f"'return_documents' must be true or false, got {back!r}", param="return_documents")
    return query, docs, top_n, back


def _side(name: str, value: Any) -> List[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise OpenAIError(f"'{name}' must be a string or a non-empty list of strings", param=name)
    return values


def parse_score(body: dict) -> Tuple[List[str], List[str]]:
    """vLLM's /v1/score pairs: one text_1 against each text_2, or text_1[i] against text_2[i]."""
    _refuse_unknown(body, SCORE_FIELDS, "/v1/score")
    firsts, seconds = _side("text_1", body.get("text_1")), _side("text_2", body.get("text_2"))
    if len(firsts) == 1:
        firsts = firsts * len(seconds)
    elif len(firsts) != len(seconds):
        raise OpenAIError(f"'text_1' has {len(firsts)} texts and 'text_2' {len(seconds)}: send one text_1, or as "
                          "many as text_2", param="text_2")
    if not all(t.strip() for t in firsts):
        raise OpenAIError("'text_1' holds an empty text", param="text_1")
    return firsts, seconds


async def openai_call(backend: Scorer, kind: str, body: dict) -> dict:
    """The answer of ``/v1/rerank`` (results best first, Cohere's and Jina's shape) or ``/v1/score`` (vLLM's)."""
    if kind == "rerank":
        query, docs, top_n, back = parse_rerank(body)
        scores, tokens = await backend.score_pairs([query] * len(docs), docs)
        order = np.argsort(-np.asarray(scores), kind="stable")[:top_n]
        results = [{"index": int(i), "relevance_score": float(scores[i]),
                    **({"document": {"text": docs[i]}} if back else {})} for i in order]
        return {"id": new_id("rerank"), "model": body.get("model") or backend.name, "results": results,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    firsts, seconds = parse_score(body)
    scores, tokens = await backend.score_pairs(firsts, seconds)
    return {"id": new_id("score"), "object": "list", "created": int(time.time()),
            "model": body.get("model") or backend.name,
            "data": [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}}


def activation_of(config: Any, st_config: dict) -> Optional[str]:
    """The activation a sentence-transformers CrossEncoder applies to one logit: ``sigmoid`` (its default),
    ``identity`` or ``tanh``, from config_sentence_transformers.json (sentence-transformers 5+) or config.json
    (``sentence_transformers.activation_fn``, 4; ``sbert_ce_default_activation_function``, older); None: another."""
    st = getattr(config, "sentence_transformers", None)
    path = st_config.get("activation_fn") or (st.get("activation_fn") if isinstance(st, dict) else None)
    path = path or getattr(config, "sbert_ce_default_activation_function", None)
    if not path:
        return "sigmoid"
    last = str(path).rsplit(".", 1)[-1].lower()
    return last if last in ("sigmoid", "identity", "tanh") else None
