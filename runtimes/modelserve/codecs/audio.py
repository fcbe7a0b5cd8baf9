"""V2 audio inputs: BYTES audio files (raw bytes over gRPC, base64 strings in JSON) or FP32/FP64 PCM."""

from __future__ import annotations

import base64
import binascii
from typing import Any, List

import numpy as np

from ..errors import BadRequest
from .requests import datatype_of
from .tensors import decode_array, raw_data


def audio_rows(inp) -> List[Any]:
    """Input ``audio`` as clips: bytes (files, decoded later in the engine's threads) or float32 PCM."""
    datatype = datatype_of(inp)
    if datatype == "BYTES":
        raw = raw_data(inp)
        values = raw if isinstance(raw, list) else [raw]
        values = [v for row in values for v in (row if isinstance(row, list) else [row])]
        shape = list(inp.shape)
        if int(np.prod(shape)) != len(values) or (len(shape) == 2 and shape[1] != 1) or len(shape) > 2:
            raise BadRequest(f"input 'audio': expected shape [n] (one audio file per row) holding {len(values)} "
                             f"values, got {shape}")
        if not values:
            raise BadRequest("input 'audio': empty batch (shape [0])")
        return [_file_bytes(v, i) for i, v in enumerate(values)]
    if datatype not in ("FP32", "FP64"):
        raise BadRequest(f"input 'audio': datatype must be BYTES (audio files) or FP32 (16 kHz PCM), got {datatype}")
    arr = decode_array(inp).astype(np.float32, copy=False)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise BadRequest(f"input 'audio': PCM must have shape [samples] or [clips, samples], got {list(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadRequest(f"input 'audio': no samples (shape {list(arr.shape)})")
    if not np.isfinite(arr).all():
        raise BadRequest("input 'audio': PCM holds NaN or infinite values")
    return list(arr)


def _file_bytes(value: Any, row: int) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise BadRequest(f"input 'audio': row {row} must be an audio file (bytes, or base64 text in JSON)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"input 'audio': row {row} is not base64: in JSON send each audio file base64-encoded "
                         "(or POST the file itself with Content-Type application/octet-stream)") from None
