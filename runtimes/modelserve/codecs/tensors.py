"""Decoding one V2 tensor into numpy with checks MLServer leaves to a crash (length, datatype), and encoding back."""

from __future__ import annotations

import base64
import binascii
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


def raw_data(inp: RequestInput) -> Any:
    """The tensor's ``data`` as sent; a BYTES input whose ``content_type`` parameter is ``base64`` (MLServer's
    Base64Codec, and how the binary tensor extension's raw elements reach the model: ``binary_tensors``) has its
    elements decoded to bytes, as gRPC hands them over."""
    raw = inp.data.root if hasattr(inp.data, "root") else inp.data
    params = inp.parameters
    if getattr(params, "content_type", None) != "base64" or datatype_of(inp) != "BYTES":
        return raw

    count = 0

    def unpack(value: Any) -> Any:
        nonlocal count
        if isinstance(value, list):
            return [unpack(v) for v in value]
        index, count = count, count + 1
        if not isinstance(value, (str, bytes)):
            return value
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"input '{inp.name}': content_type base64 but element {index} is not base64") from None

    return unpack(raw)


def decode_array(inp: RequestInput) -> np.ndarray:
    """The tensor as an ndarray of its declared shape; BYTES become an object array of str."""
    shape = list(inp.shape)
    if any(d < 0 for d in shape):
        raise BadRequest(f"input '{inp.name}': shape {shape} has a negative dimension")
    expected = math.prod(shape)
    dtype = datatype_of(inp)
    raw = raw_data(inp)
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
        _check_json_types(inp.name, dtype, values)
        try:
            # numpy infers the kind first: strings, None or nested lists never pass as numbers
            probe = np.asarray(values)
        except (ValueError, TypeError):
            probe = np.asarray([None])
        if probe.dtype.kind not in "biuf":
            bad = next((v for v in values if isinstance(v, (str, bytes, list, dict)) or v is None), values)
            raise BadRequest(f"input '{inp.name}': datatype {dtype} but the data holds {bad!r}")
        if probe.dtype.kind == "f" and dtype not in _FLOATS and not np.array_equal(probe, np.trunc(probe)):
            bad = next(v for v in values if isinstance(v, float) and not v.is_integer())
            raise BadRequest(f"input '{inp.name}': datatype {dtype} takes integers, the data holds {bad!r}")
        try:
            arr = np.asarray(values, dtype=np_dtype) if probe.dtype != np_dtype else probe
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequest(f"input '{inp.name}': data does not fit datatype {dtype} ({exc})") from None
    if arr.size != expected:
        raise BadRequest(f"input '{inp.name}': shape {shape} needs {expected} values, got {arr.size}")
    return _shaped(inp, arr, shape)


_FLOATS = {"FP16", "FP32", "FP64"}
_JSON_TYPES = {"BOOL": {bool}}  # every other numeric datatype takes JSON numbers: int, or float (integral for ints)


def _check_json_types(name: str, dtype: str, values: List[Any]) -> None:
    """A JSON value whose type does not fit the datatype is a 400: true/false only in BOOL, numbers only in the
    others (numpy would read ``true`` as 1.0 in FP32, and a bool among ints as an int). One pass over the
    values' types, at C speed."""
    allowed = _JSON_TYPES.get(dtype, {int, float})
    types = set(map(type, values))
    if types <= allowed:
        return
    bad = next(v for v in values if type(v) not in allowed)
    what = "null" if bad is None else f"a boolean ({bad!r})" if isinstance(bad, bool) else repr(bad)
    raise BadRequest(f"input '{name}': datatype {dtype} but the data holds {what}")


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
