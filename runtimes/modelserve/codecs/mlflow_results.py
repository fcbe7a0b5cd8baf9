"""An MLflow pyfunc's result (DataFrame, Series, dict, list, array, scalar) as V2 outputs."""

from __future__ import annotations

import json
import math
from typing import Any, List

import numpy as np
from mlserver.types import ResponseOutput

from .tensors import encode_array


def encode_result(result: Any, output_name: str) -> List[ResponseOutput]:
    """DataFrame: one output per column; dict: one per key; anything else: one output named ``output_name``."""
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        return [encode_array(str(c), _series_values(result[c])) for c in result.columns]
    if isinstance(result, pd.Series):
        name = result.name if isinstance(result.name, str) and result.name else output_name
        return [encode_array(name, _series_values(result))]
    if isinstance(result, dict):
        return [encode_array(str(k), _values(v)) for k, v in result.items()]
    if isinstance(result, list) and result and all(isinstance(r, dict) for r in result):
        return encode_result(pd.DataFrame.from_records(result), output_name)
    return [encode_array(output_name, _values(result))]


def _values(value: Any) -> np.ndarray:
    """A result (array, list, Series, scalar) as an ndarray that encode_array can send."""
    import pandas as pd

    if isinstance(value, (pd.Series, pd.Index)):
        return _series_values(pd.Series(value))
    if isinstance(value, pd.DataFrame):
        return _values(value.to_numpy())
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged lists
        arr = np.empty(len(value), dtype=object)
        arr[:] = list(value)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    return _plain(arr)


def _series_values(series) -> np.ndarray:
    """A column's values: nullable numbers as floats (NA -> NaN), dates as ISO text, nested rows as JSON."""
    import pandas as pd

    dtype = series.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return np.asarray([t.isoformat() if not pd.isna(t) else "" for t in series], dtype=object)
    if pd.api.types.is_timedelta64_dtype(dtype):
        return series.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_extension_array_dtype(dtype) and pd.api.types.is_numeric_dtype(dtype):
        if series.isna().any():
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        return series.to_numpy(dtype=dtype.numpy_dtype)
    if pd.api.types.is_bool_dtype(dtype) and pd.api.types.is_extension_array_dtype(dtype):
        return series.to_numpy(dtype=object)
    arr = series.to_numpy()
    if arr.dtype == object and len(arr) and all(isinstance(v, (list, np.ndarray)) for v in arr):
        try:  # rows of equal-length arrays: a [rows, n] tensor
            stacked = np.stack([np.asarray(v) for v in arr])
            if stacked.dtype.kind in "biuf":
                return stacked
        except ValueError:
            pass
    return _plain(arr)


def _plain(arr: np.ndarray) -> np.ndarray:
    """Object arrays to text the V2 BYTES encoding keeps: bytes decoded, nested values as JSON."""
    if arr.dtype.kind in "Mm":
        return arr.astype(str).astype(object)
    if arr.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(arr)
    if arr.dtype != object:
        return arr
    flat = arr.reshape(-1)
    if all(isinstance(v, str) for v in flat):
        return arr
    if all(isinstance(v, (int, float, np.number, bool, np.bool_)) and not isinstance(v, str) for v in flat):
        try:
            return np.asarray(flat.tolist()).reshape(arr.shape)
        except (ValueError, TypeError):
            pass
    out = np.empty(flat.shape, dtype=object)
    out[:] = [_text(v) for v in flat]
    return out.reshape(arr.shape)


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (dict, list, tuple, np.ndarray)):
        return json.dumps(v, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    return str(v)
