"""KServe V1 bodies ({"instances": [...]} / {"predictions": [...]}) to and from V2 requests and responses."""

from __future__ import annotations

from typing import Any

import numpy as np
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput

from ..errors import BadRequest
from .requests import datatype_of


def _datatype(arr: np.ndarray) -> str:
    if arr.dtype.kind == "b":
        return "BOOL"
    if arr.dtype.kind in "iu":
        return "INT64"
    if arr.dtype.kind == "f":
        return "FP64"
    if arr.dtype.kind in "US":
        return "BYTES"
    raise BadRequest("'instances' must hold numbers, strings or booleans of one kind")


def _tensor(name: str, values: Any) -> RequestInput:
    try:
        arr = np.asarray(values)
    except ValueError:
        raise BadRequest(f"'{name}': ragged instances (rows of different lengths)") from None
    if arr.dtype == object:
        raise BadRequest(f"'{name}': ragged or mixed-type instances")
    datatype = _datatype(arr)
    data = arr.reshape(-1).tolist()
    return RequestInput(name=name, shape=list(arr.shape), datatype=datatype, data=data)


def v1_request_to_v2(body: Any, input_name: str) -> InferenceRequest:
    """``instances`` as one V2 tensor, or, for a list of objects, one V2 input per key (a column each)."""
    if not isinstance(body, dict) or "instances" not in body:
        raise BadRequest('a V1 request is a JSON object with "instances": a list of rows')
    unknown = set(body) - {"instances", "parameters"}
    if unknown:
        raise BadRequest(f"unknown V1 request field(s): {', '.join(sorted(unknown))}")
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list')
    params = body.get("parameters") or None
    if all(isinstance(i, dict) for i in instances):
        keys = list(instances[0])
        if any(list(i) != keys and set(i) != set(keys) for i in instances):
            raise BadRequest("every instance object must have the same keys")
        inputs = [_tensor(k, [i[k] for i in instances]) for k in keys]
    elif any(isinstance(i, dict) for i in instances):
        raise BadRequest('"instances" mixes objects and rows')
    else:
        inputs = [_tensor(input_name, instances)]
    return InferenceRequest(inputs=inputs, parameters=params)


def v2_response_to_v1(response: InferenceResponse) -> dict:
    """One output: its rows as ``predictions``; several: one object per row keyed by output name."""
    from mlserver.codecs import NumpyCodec

    arrays = {}
    for out in response.outputs:
        if datatype_of(out) == "BYTES":
            vals = [v.decode("utf-8") if isinstance(v, bytes) else v for v in out.data.root]
            arrays[out.name] = np.asarray(vals, dtype=object).reshape(out.shape)
        else:
            arrays[out.name] = NumpyCodec.decode_output(out)
    if len(arrays) == 1:
        return {"predictions": next(iter(arrays.values())).tolist()}
    rows = min(a.shape[0] if a.ndim else 1 for a in arrays.values())
    return {"predictions": [{k: _py(a[i]) for k, a in arrays.items()} for i in range(rows)]}


def _py(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value
