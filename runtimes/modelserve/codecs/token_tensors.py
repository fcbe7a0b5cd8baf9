"""Token tensors instead of texts (HuggingFace option ``tensor_input_names``): INT64/INT32 [n, seq] tensors such as
``input_ids`` and ``attention_mask``, checked and handed to the model's forward() without the tokenizer."""

from __future__ import annotations

import inspect
from typing import Dict, List, Sequence

import numpy as np
from mlserver.types import InferenceRequest

from ..errors import BadRequest
from .requests import datatype_of
from .tensors import decode_array


def check_names(names: Sequence[str], forward) -> None:
    """Option ``tensor_input_names`` against the model's ``forward()``: raises ValueError naming the problem."""
    if len(set(names)) != len(names):
        raise ValueError(f"names a tensor twice: {list(names)}")
    takes = set(inspect.signature(forward).parameters)
    unknown = [n for n in names if n not in takes]
    if unknown:
        raise ValueError(f"forward() takes no {', '.join(repr(n) for n in unknown)}")
    if "input_ids" not in names:
        raise ValueError("must include 'input_ids'")


def is_tensor_request(payload: InferenceRequest) -> bool:
    return any(datatype_of(i) != "BYTES" for i in payload.inputs or ())


def token_rows(payload: InferenceRequest, expected: Sequence[str], limit: int,
               vocab: int) -> List[Dict[str, List[int]]]:
    """Rows of token ids, one dict per row, checked: names, datatypes, shapes, ``limit`` tokens, ids in vocab."""
    names = [i.name for i in payload.inputs]
    unexpected = [n for n in names if n not in expected]
    if unexpected:
        raise BadRequest(f"unexpected input(s) {', '.join(repr(n) for n in unexpected)}: this model takes one "
                         f"BYTES tensor of texts or the INT64/INT32 tensors {', '.join(expected)}")
    if len(set(names)) != len(names):
        raise BadRequest(f"input names repeat: {', '.join(names)}")
    if "input_ids" not in names:
        raise BadRequest(f"the request has no 'input_ids' (got {', '.join(names)})")
    arrays: Dict[str, np.ndarray] = {}
    for inp in payload.inputs:
        datatype = datatype_of(inp)
        if datatype not in ("INT64", "INT32"):
            raise BadRequest(f"input '{inp.name}': token tensors are INT64 or INT32, got {datatype}")
        arr = decode_array(inp)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise BadRequest(f"input '{inp.name}': expected shape [n, seq] with n, seq > 0, got {list(arr.shape)}")
        arrays[inp.name] = arr.astype(np.int64)
    shape = arrays["input_ids"].shape
    other = [(n, a.shape) for n, a in arrays.items() if a.shape != shape]
    if other:
        raise BadRequest(f"input '{other[0][0]}' has shape {list(other[0][1])}; 'input_ids' has {list(shape)}: "
                         "the tensors must have the same shape")
    if shape[1] > limit:
        raise BadRequest(f"input_ids rows are {shape[1]} tokens long; this model takes at most {limit}")
    ids = arrays["input_ids"]
    if ids.min() < 0 or (vocab and ids.max() >= vocab):
        raise BadRequest(f"input 'input_ids': token ids must lie in [0, {vocab}), got {int(ids.min())}.."
                         f"{int(ids.max())}")
    if "attention_mask" not in arrays:  # requests are merged and padded: the mask hides the padding
        arrays["attention_mask"] = np.ones(shape, dtype=np.int64)
    return [{n: a[i].tolist() for n, a in arrays.items()} for i in range(shape[0])]
