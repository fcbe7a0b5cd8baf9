"""MLflow model signatures: V2 tensors to what a pyfunc model takes, params, and V2 metadata (results back to V2:
mlflow_results.py).

Imported only by the MLflow runtime, after mlflow itself: it needs ``mlflow.types``.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from mlflow.types.schema import DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from mlserver.codecs import PandasCodec
from mlserver.codecs.numpy import to_datatype
from mlserver.types import InferenceRequest, MetadataTensor, RequestInput, ResponseOutput

from ..errors import BadRequest, one_line
from .mlflow_results import encode_result
from .requests import datatype_of
from .tensors import decode_array, decode_column, flat, raw_data

try:  # nested column types, newer than the oldest mlflow we support; () matches nothing in isinstance
    from mlflow.types.schema import Array, Object
except ImportError:  # pragma: no cover
    Array = Object = ()  # type: ignore[assignment,misc]
try:
    from mlflow.types.schema import Map
except ImportError:  # pragma: no cover
    Map = ()  # type: ignore[assignment,misc]
try:
    from mlflow.types.schema import AnyType
except ImportError:  # pragma: no cover
    AnyType = ()  # type: ignore[assignment,misc]

DEFAULT_OUTPUT = "predict"
"""The output name of an unnamed result (one array, list or Series)."""

DEFAULT_INPUT = "input-0"
"""The metadata name of an unnamed tensor input (any request name is accepted for it)."""

# Request parameters that the Triton clients and KServe set for the server itself, never model params.
RESERVED_PARAMS = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                             "binary_data_output", "binary_data_size"})

V2_OF_MLFLOW = {
    "double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL",
    "string": "BYTES", "binary": "BYTES", "datetime": "BYTES",
}
_FLOATS = {"FP16", "FP32", "FP64"}
_INTS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


def _raw(inp: RequestInput) -> Any:
    return raw_data(inp)


def numpy_v2_datatype(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in "OUSMm":
        return "BYTES"
    return to_datatype(dtype).value


def _type_text(t: Any) -> str:
    """How a signature type reads in an error: ``double``, ``array<double>``, ``object``."""
    if isinstance(t, DataType):
        return t.name
    if isinstance(t, Array):
        return f"array<{_type_text(t.dtype)}>"
    if isinstance(t, Map):
        return "map"
    if isinstance(t, Object):
        return "object"
    if isinstance(t, AnyType):
        return "any"
    return str(t)


def _accepts(t: Any) -> str:
    """The V2 datatypes a column of type ``t`` accepts, for an error message."""
    if isinstance(t, DataType):
        if t.name in ("double", "float"):
            return f"{V2_OF_MLFLOW[t.name]} or another float or integer datatype"
        if t.name in ("long", "integer"):
            return f"{V2_OF_MLFLOW[t.name]} or another integer datatype"
        if t.name == "datetime":
            return "BYTES holding ISO 8601 dates"
        return V2_OF_MLFLOW[t.name]
    if isinstance(t, Array):
        return f"a [rows, n] tensor of {_accepts(t.dtype)}; or BYTES holding one JSON list per row"
    return "BYTES holding one JSON value per row"


def _cast_numeric(name: str, arr: np.ndarray, target: np.dtype, expected: str) -> np.ndarray:
    """Casts a decoded numeric tensor to ``target``; integers must keep their values."""
    if arr.dtype == target:
        return arr
    out = arr.astype(target)
    if target.kind in "iu" and not np.array_equal(out.astype(arr.dtype), arr):
        raise BadRequest(f"input '{name}': expected {expected}, but some values do not fit {target.name}")
    return out


_ACCEPTED = {"f": _FLOATS | _INTS, "i": _INTS, "b": {"BOOL"}, "s": {"BYTES"}}
"""What a V2 request may send for a float, integer, boolean or text/bytes target."""


def _accept(name: str, got: str, family: str, expected: str) -> None:
    """A 400 naming the input and the expected type unless V2 datatype ``got`` fits ``family`` (_ACCEPTED)."""
    if got not in _ACCEPTED[family]:
        raise BadRequest(f"input '{name}': expected {expected}, got {got}")


_FAMILY = {"double": "f", "float": "f", "long": "i", "integer": "i", "boolean": "b"}


def _primitive(name: str, inp: RequestInput, arr: np.ndarray, t: DataType) -> np.ndarray:
    """The values of ``arr`` as the signature type ``t``, or a 400 naming input and expected type."""
    kind = t.name
    _accept(name, datatype_of(inp), _FAMILY.get(kind, "s"), f"{kind} ({_accepts(t)})")
    if kind in ("double", "float"):
        return arr.astype(np.float64 if kind == "double" else np.float32)
    if kind in ("long", "integer"):
        return _cast_numeric(name, arr, np.dtype(np.int64 if kind == "long" else np.int32), kind)
    if kind == "binary":  # the raw bytes, not the text decode_array makes of them
        raw = flat(_raw(inp))
        if len(raw) != arr.size:  # one column of a wider tensor: its text is all there is
            raw = arr.reshape(-1).tolist()
        values = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in raw]
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(arr.shape)
    if kind == "datetime":
        import pandas as pd

        try:
            return pd.to_datetime(arr.reshape(-1), format="ISO8601").to_numpy().reshape(arr.shape)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"input '{name}': expected ISO 8601 dates ({one_line(exc)})") from None
    return arr  # string


class SignatureCodec:
    """Decodes V2 requests by an MLflow signature (tensor-based, column-based or none) and encodes results."""

    def __init__(self, inputs: Optional[Schema], outputs: Optional[Schema], params: Optional[ParamSchema],
                 signatureless: str = "tensor"):
        self.signatureless = signatureless  # MLflowOptions.signatureless_input
        self.inputs = inputs if inputs is not None and inputs.inputs else None
        self.outputs = outputs if outputs is not None and outputs.inputs else None
        self.params = {p.name: p for p in params.params} if params is not None else {}
        self.is_tensor = bool(self.inputs is not None and self.inputs.is_tensor_spec())
        self.named = bool(self.inputs is not None and self.inputs.has_input_names())

    @classmethod
    def from_model_metadata(cls, metadata, signatureless: str = "tensor") -> "SignatureCodec":
        return cls(metadata.get_input_schema(), metadata.get_output_schema(), metadata.get_params_schema(),
                   signatureless)

    # -- V2 metadata -------------------------------------------------------------------------------
    @staticmethod
    def _metadata(specs: Sequence[Any], default: str) -> List[MetadataTensor]:
        tensors = []
        for i, spec in enumerate(specs):
            name = spec.name or (default if len(specs) == 1 else f"{default.rsplit('-', 1)[0]}-{i}")
            if isinstance(spec, TensorSpec):
                tensors.append(MetadataTensor(name=name, datatype=numpy_v2_datatype(spec.type),
                                              shape=list(spec.shape)))
                continue
            t = spec.type
            if isinstance(t, Array) and isinstance(t.dtype, DataType):
                tensors.append(MetadataTensor(name=name, datatype=V2_OF_MLFLOW[t.dtype.name], shape=[-1, -1]))
            else:
                datatype = V2_OF_MLFLOW[t.name] if isinstance(t, DataType) else "BYTES"
                tensors.append(MetadataTensor(name=name, datatype=datatype, shape=[-1]))
        return tensors

    def metadata_inputs(self) -> List[MetadataTensor]:
        return self._metadata(self.inputs.inputs, DEFAULT_INPUT) if self.inputs is not None else []

    def metadata_outputs(self) -> List[MetadataTensor]:
        return self._metadata(self.outputs.inputs, DEFAULT_OUTPUT) if self.outputs is not None else []

    @property
    def output_name(self) -> str:
        """The name an unnamed result gets: the signature's single output name, else ``predict``."""
        if self.outputs is not None and len(self.outputs.inputs) == 1 and self.outputs.inputs[0].name:
            return self.outputs.inputs[0].name
        return DEFAULT_OUTPUT

    # -- V2 inputs -> model input ------------------------------------------------------------------
    def decode(self, payload: InferenceRequest) -> Any:
        inputs = payload.inputs
        if not inputs:
            raise BadRequest("the request has no inputs")
        names = [i.name for i in inputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise BadRequest(f"input '{dupes[0]}' is given more than once")
        if self.inputs is None:
            return self._decode_unsigned(payload)
        if self.is_tensor:
            return self._decode_tensors(inputs)
        return self._decode_columns(inputs)

    def _decode_unsigned(self, payload: InferenceRequest) -> Any:
        """No signature: as MLServer does, one input is an ndarray and several are DataFrame columns; with
        ``signatureless_input: dataframe`` one input is a DataFrame too, laid out as ModelHub's V2 path does
        (``AutoModelPredictor._predict_v2``: BYTES -> column ``data``, numbers -> ``pd.DataFrame(array)``)."""
        inputs = payload.inputs
        params = payload.parameters
        as_frame = bool(params and getattr(params, "content_type", None) == PandasCodec.ContentType)
        if len(inputs) == 1 and self.signatureless == "dataframe" and not as_frame:
            return _single_frame(inputs[0])
        if len(inputs) == 1 and not as_frame:
            return decode_array(inputs[0])
        return _frame({i.name: decode_column(i) for i in inputs})

    def _match(self, inputs: Sequence[RequestInput], specs: Sequence[Any], what: str) -> Dict[str, RequestInput]:
        """Request inputs by signature name: unknown names and missing required ones are 400s naming them."""
        known = [s.name for s in specs]
        unknown = [i.name for i in inputs if i.name not in known]
        if unknown:
            raise BadRequest(f"unknown input '{unknown[0]}': this model takes the {what} {', '.join(known)}")
        by_name = {i.name: i for i in inputs}
        missing = [s.name for s in specs if s.name not in by_name and getattr(s, "required", True)]
        if missing:
            raise BadRequest(f"missing input '{missing[0]}': this model takes the {what} {', '.join(known)}")
        return by_name

    def _decode_tensors(self, inputs: Sequence[RequestInput]) -> Any:
        specs = self.inputs.inputs
        if not self.named:
            if len(inputs) != 1:
                raise BadRequest(f"this model takes one input tensor, got {len(inputs)} "
                                 f"({', '.join(i.name for i in inputs)})")
            return _tensor(inputs[0], specs[0])
        by_name = self._match(inputs, specs, "tensors")
        return {s.name: _tensor(by_name[s.name], s) for s in specs if s.name in by_name}

    def _decode_columns(self, inputs: Sequence[RequestInput]) -> Any:
        specs = self.inputs.inputs
        if self.named:
            by_name = self._match(inputs, specs, "columns")
            return _frame({s.name: _column(by_name[s.name], s.type) for s in specs if s.name in by_name})
        # unnamed columns are positional: one input per column, or one [rows, n] tensor
        if len(inputs) == 1 and len(specs) > 1:
            arr = decode_array(inputs[0])
            if arr.ndim != 2 or arr.shape[1] != len(specs):
                raise BadRequest(f"input '{inputs[0].name}': expected shape [rows, {len(specs)}] "
                                 f"(one column per signature input), got {list(arr.shape)}")
            return _frame({i: _primitive(inputs[0].name, inputs[0], arr[:, i], s.type)
                           if isinstance(s.type, DataType) else arr[:, i] for i, s in enumerate(specs)})
        if len(inputs) != len(specs):
            raise BadRequest(f"this model takes {len(specs)} input column(s), got {len(inputs)}")
        return _frame({i: _column(inp, s.type) for i, (inp, s) in enumerate(zip(inputs, specs))})

    # -- request parameters -> params --------------------------------------------------------------
    def decode_params(self, raw: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        """Request params checked against the params schema: unknown names and wrong types are 400s."""
        raw = {k: v for k, v in (raw or {}).items() if k not in RESERVED_PARAMS}
        if not raw:
            return None
        unknown = [k for k in raw if k not in self.params]
        if unknown:
            known = f"its params are {', '.join(self.params)}" if self.params else "its signature has no params"
            raise BadRequest(f"unknown parameter '{unknown[0]}': {known}")
        out = {}
        for key, value in raw.items():
            spec: ParamSpec = self.params[key]
            if value is None:
                hint = ""
                if isinstance(spec.dtype, DataType) and spec.dtype.name in ("double", "float"):
                    hint = (" (MLServer's gRPC parameters carry no floats and arrive empty: "
                            "send the number as a string, e.g. \"0.5\")")
                raise BadRequest(f"parameter '{key}' has no value{hint}")
            value = _from_text(value, spec)
            try:
                out[key] = ParamSpec.validate_param_spec(value, spec)
            except Exception:
                want = _type_text(spec.dtype) + ("[] (a list)" if spec.shape == (-1,) else "")
                raise BadRequest(f"parameter '{key}': expected {want}, got {value!r}") from None
        return out

    # -- model output -> V2 outputs ----------------------------------------------------------------
    def encode(self, result: Any) -> List[ResponseOutput]:
        """The pyfunc's result as V2 outputs (codecs/mlflow_results.py)."""
        return encode_result(result, self.output_name)


def _from_text(value: Any, spec: ParamSpec) -> Any:
    """A scalar param sent as text (gRPC has no float parameters) as the number or flag it spells."""
    if not isinstance(value, str) or spec.shape is not None or not isinstance(spec.dtype, DataType):
        return value
    kind = spec.dtype.name
    try:
        if kind in ("double", "float"):
            return float(value)
        if kind in ("long", "integer"):
            return int(value)
    except ValueError:
        return value
    if kind == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _single_frame(inp: RequestInput):
    """One input as ModelHub hands it to a signature-less pyfunc: BYTES as the column ``data`` (one row per
    element), numbers as ``pd.DataFrame`` of the [rows, n] tensor (columns 0..n-1; a 1-D tensor is one column)."""
    if datatype_of(inp) == "BYTES":
        return _frame({"data": decode_column(inp)})
    arr = decode_array(inp)
    if arr.ndim > 2:
        raise BadRequest(f"input '{inp.name}': a model without a signature takes a [rows, columns] tensor as a "
                         f"DataFrame (signatureless_input: dataframe), got shape {list(arr.shape)}")
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim == 2 and arr.shape[1] == 0:
        raise BadRequest(f"input '{inp.name}': shape {list(arr.shape)} has no columns")
    return _frame({i: arr[:, i] for i in range(arr.shape[1])} if arr.ndim == 2 else {0: arr})


def _frame(columns: Dict[Any, np.ndarray]):
    import pandas as pd

    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in columns.items())
        raise BadRequest(f"columns have different lengths: {sizes}")
    if lengths == {0}:
        raise BadRequest("empty batch: the columns have no rows")
    return pd.DataFrame({k: (list(v) if v.ndim > 1 else v) for k, v in columns.items()})


def _column(inp: RequestInput, t: Any) -> np.ndarray:
    """One DataFrame column of signature type ``t``."""
    if isinstance(t, DataType):
        return _primitive(inp.name, inp, decode_column(inp), t)
    if isinstance(t, Array) and datatype_of(inp) != "BYTES":
        arr = decode_array(inp)
        if arr.ndim < 2:
            raise BadRequest(f"input '{inp.name}': expected {_type_text(t)} ({_accepts(t)}), "
                             f"got shape {list(arr.shape)}")
        if isinstance(t.dtype, DataType):
            arr = _primitive(inp.name, inp, arr, t.dtype)
        return arr
    if datatype_of(inp) != "BYTES":
        raise BadRequest(f"input '{inp.name}': expected {_type_text(t)} ({_accepts(t)}), got {datatype_of(inp)}")
    rows = decode_column(inp)
    values = np.empty(len(rows), dtype=object)
    for i, text in enumerate(rows):
        try:
            values[i] = json.loads(text)
        except ValueError:
            raise BadRequest(f"input '{inp.name}': row {i} is not JSON (expected {_type_text(t)})") from None
    return values


def _tensor(inp: RequestInput, spec: TensorSpec) -> np.ndarray:
    """One tensor as the spec's dtype, its shape checked against the spec's (-1 is any size)."""
    arr = decode_array(inp)
    target = np.dtype(spec.type)
    family = {"f": "f", "i": "i", "u": "i", "b": "b", "O": "s", "U": "s", "S": "s"}.get(target.kind)
    if family is None:
        raise BadRequest(f"input '{inp.name}': tensors of {target.name} are not supported over V2")
    _accept(inp.name, datatype_of(inp), family, f"{target.name} ({numpy_v2_datatype(target)})")
    if target.kind == "f":
        arr = arr.astype(target)
    elif target.kind in "iu":
        arr = _cast_numeric(inp.name, arr, target, target.name)
    elif target.kind == "S":
        arr = np.array([v.encode("utf-8") for v in arr.reshape(-1)], dtype=object).reshape(arr.shape)
    elif target.kind == "U":
        arr = arr.astype(str)
    want = list(spec.shape)
    if len(want) != arr.ndim or any(w != -1 and w != g for w, g in zip(want, arr.shape)):
        raise BadRequest(f"input '{inp.name}': expected shape {want} (-1 is any size), got {list(arr.shape)}")
    return arr
