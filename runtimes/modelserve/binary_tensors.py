"""The KServe V2 / Triton binary tensor data extension for REST, as ``tritonclient.http`` speaks it.

Wire format: a body is a JSON header of N bytes followed by the raw bytes of every binary tensor, in the order
the tensors appear in the header; N travels in the ``Inference-Header-Content-Length`` HTTP header (request and
response alike). A binary tensor has no ``data`` and ``"parameters": {"binary_data_size": K}``: K bytes of
little-endian, row-major elements without padding, each of its datatype's native size (BOOL one byte 0 or 1,
BF16 two bytes: the top half of a float32). A BYTES element is a 4-byte little-endian length, then the bytes.

Pure (numpy, and orjson or else json): it runs on the raw body, before MLServer's models see the request, and
on the response dict MLServer answers, so every rule is checked here and named in a one-line BinaryError.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

import numpy as np

try:
    import orjson
except ImportError:  # pragma: no cover - orjson comes with MLServer
    orjson = None

_DTYPES = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "BF16": "<u2",  # BF16: the float32's upper 16 bits
}
_LENGTH = struct.Struct("<I")


class BinaryError(ValueError):
    """A body that breaks the wire format; the message is one line naming the problem (a 400)."""


def encode_json(obj: Any) -> bytes:
    """Compact JSON bytes; numpy arrays and scalars pass as lists and numbers (with orjson)."""
    if orjson is not None:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _header_length(value: Union[str, int, None], size: int) -> int:
    """The header's length: None means the whole body is JSON; else a non-negative int, or its decimal text."""
    if value is None:
        return size
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        n = int(value)
    else:
        n = -1
    if n < 0:
        raise BinaryError(f"header length {value!r} is not a non-negative integer")
    if n > size:
        raise BinaryError(f"Inference-Header-Content-Length {n} is beyond the body's {size} bytes")
    return n


def decode_request(body: bytes, header_length: Union[str, int, None],
                   raw: Optional[Dict[int, Any]] = None) -> Dict[str, Any]:
    """The V2 JSON request with every binary input turned into a flat, row-major ``data`` list.

    With ``raw`` (a dict to fill), binary inputs keep their bytes instead: ``raw[i]`` is input i's bytes (a
    list of bytes for BYTES) and its ``data`` is ``[]``, for ``json_values`` or the model's codec to read.

    ``binary_data_size`` leaves the input's parameters (and ``parameters`` goes if that empties it). Each
    binary input's size must be shape x itemsize (BYTES: its elements must fill it exactly and match the
    shape), and the inputs' sizes must add up to the bytes after the header. BYTES elements become base64 text
    with the input's ``content_type`` set to ``base64`` (``_bytes_elements``).
    """
    n = _header_length(header_length, len(body))
    try:
        request = (orjson.loads if orjson is not None else json.loads)(bytes(body[:n]))
    except ValueError as exc:  # orjson.JSONDecodeError, json.JSONDecodeError and UnicodeDecodeError alike
        raise BinaryError(f"the JSON header is not valid JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(request, dict):
        raise BinaryError(f"the JSON header is a {type(request).__name__}, not an object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise BinaryError("the JSON header's 'inputs' is not a list")
    buf = memoryview(body)[n:]
    offset = 0
    for index, inp in enumerate(inputs):
        params = inp.get("parameters") if isinstance(inp, dict) else None
        if isinstance(params, dict) and "binary_data_size" in params:
            offset = _decode_input(inp, params, buf, offset, raw, index)
    if offset != len(buf):
        raise BinaryError(f"the body holds {len(buf) - offset} bytes after the binary inputs' {offset}")
    return request


def _decode_input(inp: Dict[str, Any], params: Dict[str, Any], buf: memoryview, offset: int,
                  raw: Optional[Dict[int, Any]] = None, index: int = 0) -> int:
    """Fills ``inp["data"]`` (or ``raw[index]``) from the bytes at ``offset``; returns the offset past them."""
    name, datatype, shape = inp.get("name"), inp.get("datatype"), inp.get("shape")
    label = f"input {name!r}"
    size = params.pop("binary_data_size")
    if not params:
        del inp["parameters"]
    if type(size) is not int or size < 0:
        raise BinaryError(f"{label}: binary_data_size {size!r} is not a non-negative integer")
    _check_shape(label, shape)
    if "data" in inp:
        raise BinaryError(f"{label} has both data and binary_data_size")
    dtype = _DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None and datatype != "BYTES":
        raise BinaryError(f"{label}: unknown datatype {datatype!r}")
    count = math.prod(shape)
    need = size if dtype is None else count * np.dtype(dtype).itemsize
    if size != need:
        raise BinaryError(f"{label}: binary_data_size {size} does not fit {datatype} shape {shape} ({need} bytes)")
    end = offset + size
    if end > len(buf):
        raise BinaryError(f"{label} of datatype {datatype} has binary_data_size {size} but the body ended "
                          f"{len(buf) - offset} bytes in")
    chunk = buf[offset:end]
    if datatype == "BOOL" and size and np.frombuffer(chunk, "<u1").max() > 1:
        raise BinaryError(f"{label}: a BOOL byte is neither 0 nor 1")
    if raw is not None and datatype != "BF16":
        raw[index] = _bytes_elements(label, chunk, count, shape, b64=False) if dtype is None else bytes(chunk)
        inp["data"] = []
    elif dtype is None:
        inp["data"] = _bytes_elements(label, chunk, count, shape)
        inp.setdefault("parameters", {})["content_type"] = "base64"
    elif datatype == "BF16":  # widen to the float32 whose upper half it is: exact
        inp["data"] = (np.frombuffer(chunk, "<u2").astype("<u4") << 16).view("<f4").tolist()
    else:
        inp["data"] = np.frombuffer(chunk, dtype).tolist()
    return end


def _check_shape(label: str, shape: Any) -> None:
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise BinaryError(f"{label}: shape {shape!r} is not a list of non-negative integers")


def _bytes_elements(label: str, chunk: memoryview, count: int, shape: List[int], b64: bool = True) -> List[Any]:
    """Length-prefixed elements, which must fill the chunk exactly, as base64 text (the input gets
    ``content_type: base64``): JSON cannot carry raw bytes, and the model's codec (``codecs.tensors.raw_data``)
    hands them over as bytes again, exactly as gRPC does. Text and audio files alike arrive unchanged."""
    out: List[str] = []
    offset, end = 0, len(chunk)
    while offset < end:
        if end - offset < 4:
            raise BinaryError(f"{label}: BYTES element {len(out)} has a truncated length ({end - offset} of 4 bytes)")
        (n,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if n > end - offset:
            raise BinaryError(f"{label}: BYTES element {len(out)} claims {n} bytes but {end - offset} remain")
        piece = bytes(chunk[offset:offset + n])
        out.append(base64.b64encode(piece).decode("ascii") if b64 else piece)
        offset += n
    if len(out) != count:
        raise BinaryError(f"{label}: BYTES data holds {len(out)} elements, shape {shape} needs {count}")
    return out


def json_values(datatype: str, raw: Any) -> List[Any]:
    """A ``raw`` entry of ``decode_request`` as the JSON ``data`` list (BYTES: base64 text, for an input whose
    ``content_type`` is then ``base64``)."""
    if datatype == "BYTES":
        return [base64.b64encode(v).decode("ascii") for v in raw]
    return np.frombuffer(raw, _DTYPES[datatype]).tolist()


def binary_outputs(request: Dict[str, Any], output_names: Iterable[str]) -> Set[str]:
    """The outputs to answer binary: an output's own ``binary_data`` in the request's ``outputs`` decides;
    without one, the request's ``parameters.binary_data_output`` does (tritonclient sets it when no outputs
    are requested); without either, JSON."""
    params = request.get("parameters")
    default = isinstance(params, dict) and params.get("binary_data_output") is True
    asked: Dict[Any, bool] = {}
    for out in request.get("outputs") or []:
        out_params = out.get("parameters") if isinstance(out, dict) else None
        if isinstance(out_params, dict) and "binary_data" in out_params:
            asked[out.get("name")] = out_params["binary_data"] is True
    return {name for name in output_names if asked.get(name, default)}


def encode_response(response: Dict[str, Any], binary: Set[str]) -> Tuple[bytes, Optional[int]]:
    """The body and its ``Inference-Header-Content-Length`` (None when no output went binary: plain JSON).

    Each output named in ``binary`` loses ``data`` (flat or nested) for ``binary_data_size`` and its bytes
    follow the header in output order; the caller's dict is left as it was.
    """
    chunks: List[bytes] = []
    outputs = []
    for out in response.get("outputs") or []:
        if isinstance(out, dict) and out.get("name") in binary and out.get("data") is not None:
            raw = _encode_output(out)
            chunks.append(raw)
            out = {k: v for k, v in out.items() if k != "data"}
            out["parameters"] = {**(out.get("parameters") or {}), "binary_data_size": len(raw)}
        outputs.append(out)
    if not chunks:
        return encode_json(response), None
    header = encode_json({**response, "outputs": outputs})
    return header + b"".join(chunks), len(header)


def _encode_output(out: Dict[str, Any]) -> bytes:
    name, datatype, shape, data = out.get("name"), out.get("datatype"), out.get("shape"), out["data"]
    label = f"output {name!r}"
    _check_shape(label, shape)
    if datatype == "BYTES":
        parts: List[bytes] = []
        values = _flatten(data)
        for v in values:
            if not isinstance(v, (str, bytes)):
                raise BinaryError(f"{label}: BYTES element {v!r} is not str or bytes")
            b = v.encode("utf-8") if isinstance(v, str) else v
            parts += (_LENGTH.pack(len(b)), b)
        raw, count = b"".join(parts), len(values)
    else:
        dtype = _DTYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise BinaryError(f"{label}: unknown datatype {datatype!r}")
        try:  # null (MLServer's NaN) becomes NaN in the float datatypes
            arr = np.asarray(data, dtype="<f4" if datatype == "BF16" else dtype).reshape(-1)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BinaryError(f"{label}: data does not fit {datatype} ({' '.join(str(exc).split())})") from None
        raw, count = (_bf16(arr) if datatype == "BF16" else arr.tobytes()), arr.size
    if count != math.prod(shape):
        raise BinaryError(f"{label}: data holds {count} elements, shape {shape} needs {math.prod(shape)}")
    return raw


def _bf16(arr: np.ndarray) -> bytes:
    """float32 to bfloat16 rounding to nearest even, NaN staying a (quiet) NaN: what ml_dtypes.bfloat16 does,
    which tritonclient decodes BF16 with."""
    u = arr.view("<u4")
    half = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype("<u2")
    nan = np.isnan(arr)
    half[nan] = ((u[nan] >> 16) | 0x40).astype("<u2")
    return half.tobytes()


def _flatten(data: Any) -> List[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(v, list) for v in data):
        return data
    return [v for item in data for v in _flatten(item)]
