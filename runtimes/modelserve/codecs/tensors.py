"""Decoding one V2 tensor into numpy with checks MLServer leaves to a crash (length, datatype), and encoding back."""

from __future__ import annotations

import math
from typing import Any, List, Optional

import numpy as np
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.codecs.numpy import to_datatype
from mlserver.types import Datatype, Parameters, RequestInput, ResponseOutput, TensorData

from ..errors import BadRequest
from .requests import datatype_of

_NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


def flat(data: Any) -> List[Any]:
    """Flattens the nested lists that MLServer accepts in ``data``."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: List[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def decode_array(inp: RequestInput) -> np.ndarray:
    """The tensor as an ndarray of its declared shape; BYTES become an object array of str."""
    shape = list(inp.shape)
    if any(d < 0 for d in shape):
        raise BadRequest(f"input '{inp.name}': shape {shape} has a negative dimension")
    expected = math.prod(shape)
    dtype = datatype_of(inp)
    raw = inp.data.root if hasattr(inp.data, "root") else inp.data
    if dtype == "BYTES":
        if isinstance(raw, (bytes, str)):
            raw = [raw]
        values = flat(raw)
        if len(values) != expected:
            raise BadRequest(f"input '{inp.name}': shape {shape} needs {expected} values, got {len(values)}")
        strs = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        if any(not isinstance(v, str) for v in strs):
            raise BadRequest(f"input '{inp.name}': datatype BYTES needs strings")
        arr = np.empty(len(strs), dtype=object)
        arr[:] = strs
        return _shaped(inp, arr, shape)
    np_dtype = _NUMERIC.get(dtype)
    if np_dtype is None:
        raise BadRequest(f"input '{inp.name}': unsupported datatype {dtype}")
    if isinstance(raw, (bytes, bytearray)):  # binary tensor extension / raw contents
        try:
            arr = np.frombuffer(raw, dtype=np_dtype)
        except ValueError as exc:
            raise BadRequest(f"input '{inp.name}': raw data does not fit {dtype}: {exc}") from None
    else:
        values = flat(raw)
        try:
            # numpy infers the kind first: strings, None or nested lists never pass as numbers
            probe = np.asarray(values)
        except (ValueError, TypeError):
            probe = np.asarray([None])
        if probe.dtype.kind not in "biuf":
            bad = next((v for v in values if isinstance(v, (str, bytes, list, dict)) or v is None), values)
            raise BadRequest(f"input '{inp.name}': datatype {dtype} but the data holds {bad!r}")
        try:
            arr = np.asarray(values, dtype=np_dtype) if probe.dtype != np_dtype else probe
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequest(f"input '{inp.name}': data does not fit datatype {dtype} ({exc})") from None
    if arr.size != expected:
        raise BadRequest(f"input '{inp.name}': shape {shape} needs {expected} values, got {arr.size}")
    return _shaped(inp, arr, shape)


def _shaped(inp: RequestInput, arr: np.ndarray, shape: List[int]) -> np.ndarray:
    try:
        return arr.reshape(shape)
    except ValueError as exc:  # an empty tensor whose other dimensions overflow numpy ("array is too big")
        raise BadRequest(f"input '{inp.name}': shape {shape} is not a valid tensor shape ({exc})") from None


def decode_column(inp: RequestInput) -> np.ndarray:
    """One DataFrame column: shape [n] or [n, 1]."""
    arr = decode_array(inp)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise BadRequest(f"input '{inp.name}': a column must have shape [rows] or [rows, 1], got {list(arr.shape)}")
    return arr


_DATATYPES: dict = {}


def _datatype_of(dtype: np.dtype) -> Datatype:
    dt = _DATATYPES.get(dtype)
    if dt is None:
        dt = _DATATYPES[dtype] = to_datatype(dtype)
    return dt


def encode_array(name: str, arr: Any, datatype: Optional[str] = None) -> ResponseOutput:
    """An ndarray (or list) as a V2 output, with the datatype the values really have.

    Keeps the array's own shape (MLServer's NumpyCodec turns [n] into [n, 1]); NaN becomes null, as
    MLServer does. Built without re-validation: every field is already of the right type, and this runs
    once per output of every request.
    """
    arr = np.asarray(arr)
    kind = arr.dtype.kind
    if kind in "OUS":
        values = [(v if isinstance(v, str) else str(v)).encode("utf-8") for v in arr.reshape(-1).tolist()]
        dt, content_type = Datatype.BYTES, StringCodec.ContentType
    else:
        dt = Datatype(datatype) if datatype else _datatype_of(arr.dtype)
        content_type = NumpyCodec.ContentType
        values = arr.reshape(-1).tolist()
        if kind in "fc" and not np.isfinite(arr).all():
            values = [None if v != v else v for v in values]
    return ResponseOutput.model_construct(
        name=name,
        shape=list(arr.shape),
        datatype=dt.value,  # the model stores enum values (use_enum_values)
        parameters=Parameters.model_construct(content_type=content_type),
        data=TensorData.model_construct(root=values),
    )


def text_rows(inp: RequestInput, what: str = "text", allow_empty: bool = False) -> List[str]:
    """A BYTES tensor of shape [n] (or [n, 1]) as n strings; an empty batch, or an empty string unless
    ``allow_empty``, is a 400 naming the row."""
    datatype = datatype_of(inp)
    if datatype != "BYTES":
        raise BadRequest(f"input '{inp.name}': this model takes {what} (datatype BYTES), got {datatype}")
    arr = decode_array(inp)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise BadRequest(f"input '{inp.name}': expected shape [n] (one {what} per row), got {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise BadRequest(f"input '{inp.name}': empty batch (shape {list(arr.shape)})")
    rows = arr.tolist()
    empty = [i for i, t in enumerate(rows) if not t.strip()]
    if empty and not allow_empty:
        raise BadRequest(f"input '{inp.name}': {what} {empty[0]} is empty")
    return rows
