"""Speech-to-text on V2 and OpenAI's /v1/audio/transcriptions, over engines/whisper.py (KubeAIRuntime with
engine FasterWhisper).

V2 input ``audio``: BYTES, one audio file per row (raw bytes over gRPC, base64 strings in JSON), or FP32/FP64
PCM at 16 kHz, shape [samples] or [clips, samples]. A POST to /v2/models/{name}/infer whose body is the
audio file itself (any Content-Type but JSON, e.g. application/octet-stream) is wrapped as that input, with
the query string as parameters. Outputs: ``text``, ``segments`` (JSON per row) and ``language``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import json
import logging
import re
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qsl

import numpy as np
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

from .codecs import encode_array
from .codecs.params import number
from .codecs.tensors import decode_array
from .engines.whisper import WhisperEngine, transcribe_options
from .errors import BadRequest
from .openai import OpenAIError
from .runtime import request_parameters

logger = logging.getLogger("mlserver.modelserve.speech")

OUTPUTS = ("text", "segments", "language")
RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


class SpeechModel:
    """Needs ``self.whisper`` (a started WhisperEngine) plus MLModel's name, version, inputs and outputs."""

    whisper: Optional[WhisperEngine] = None

    def _speech_metadata(self) -> None:
        self.inputs = self.inputs or [MetadataTensor(name="audio", datatype="BYTES", shape=[-1])]
        self.outputs = self.outputs or [MetadataTensor(name=n, datatype="BYTES", shape=[-1]) for n in OUTPUTS]

    async def _speech_predict(self, payload: InferenceRequest) -> InferenceResponse:
        if not payload.inputs:
            raise BadRequest("the request has no inputs: send the audio as input 'audio' (BYTES files or FP32 PCM)")
        if len(payload.inputs) > 1 or payload.inputs[0].name != "audio":
            names = ", ".join(i.name for i in payload.inputs)
            raise BadRequest(f"send one input named 'audio', got: {names}")
        clips = audio_rows(payload.inputs[0])
        wanted = [o.name for o in payload.outputs or []] or ["text"]
        unknown = [n for n in wanted if n not in OUTPUTS]
        if unknown:
            raise BadRequest(f"unknown output '{unknown[0]}' (this model offers: {', '.join(OUTPUTS)})")
        opts = transcribe_options(request_parameters(payload), self.whisper.languages, number)
        results = await asyncio.gather(*[self.whisper.transcribe(c, opts, i) for i, c in enumerate(clips)])
        columns = {"text": [r["text"] for r in results],
                   "segments": [json.dumps(r["segments"]) for r in results],
                   "language": [r["language"] for r in results]}
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[encode_array(n, np.array(columns[n], dtype=object)) for n in wanted])

    async def _speech_openai(self, form: Dict[str, Any], audio: bytes) -> Any:
        """/v1/audio/transcriptions: the form's fields as OpenAI documents them."""
        fmt = form.get("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise OpenAIError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                              param="response_format")
        grains = form.get("timestamp_granularities[]") or []
        if any(g not in ("word", "segment") for g in grains):
            raise OpenAIError(f"timestamp_granularities must be word and/or segment, got {grains}",
                              param="timestamp_granularities[]")
        params = {"language": form.get("language"), "initial_prompt": form.get("prompt"),
                  "word_timestamps": "word" in grains}
        if form.get("temperature") not in (None, ""):
            params["temperature"] = form["temperature"]
        try:
            opts = transcribe_options(params, self.whisper.languages, number)
            result = await self.whisper.transcribe(audio, opts)
        except BadRequest as exc:
            raise OpenAIError(str(exc).replace("parameter 'initial_prompt'", "'prompt'").replace("audio 0", "file"),
                              param="file" if "audio" in str(exc) else None) from None
        if fmt == "text":
            return result["text"] + "\n"
        if fmt in ("srt", "vtt"):
            return subtitles(result["segments"], fmt)
        if fmt == "json":
            return {"text": result["text"]}
        body = {"task": "transcribe", "language": result["language"], "duration": round(result["duration"], 3),
                "text": result["text"],
                "segments": [{k: v for k, v in s.items() if k != "words"} | {"seek": 0} for s in result["segments"]]}
        if "word" in grains:
            body["words"] = [w for s in result["segments"] for w in s.get("words", [])]
        return body


def audio_rows(inp) -> List[Any]:
    """Input ``audio`` as clips: bytes (files, decoded later in the engine's threads) or float32 PCM."""
    datatype = str(getattr(inp.datatype, "value", inp.datatype))
    if datatype == "BYTES":
        raw = inp.data.root if hasattr(inp.data, "root") else inp.data
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


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def subtitles(segments: List[dict], fmt: str) -> str:
    """SubRip (srt) or WebVTT (vtt) cues, one per segment."""
    sep = "," if fmt == "srt" else "."
    cues = [f"{_clock(s['start'], sep)} --> {_clock(s['end'], sep)}\n{s['text'].strip()}\n" for s in segments]
    if fmt == "srt":
        return "\n".join(f"{i}\n{c}" for i, c in enumerate(cues, 1))
    return "WEBVTT\n\n" + "\n".join(cues)


# -- raw audio bodies on the V2 infer route ------------------------------------------------------------------
RAW_MODELS: Dict[str, bool] = {}
_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")


class RawAudioRoute:
    """Placed first in MLServer's FastAPI routes: a POST to a speech model's infer path whose body is not
    JSON is rewritten into the V2 JSON request (input ``audio``, base64) and handed to MLServer's own infer
    route, so metrics, logging and errors stay MLServer's."""

    def __init__(self, app):
        self.app = app
        self.path = "/v2/models/{name}/infer"  # for tools that list routes

    def matches(self, scope):
        from starlette.routing import Match

        if scope.get("type") != "http" or scope.get("method") != "POST":
            return Match.NONE, {}
        found = _INFER.match(scope.get("path", ""))
        if not found or found.group(1) not in RAW_MODELS:
            return Match.NONE, {}
        ctype = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1").lower()
        if not ctype or "json" in ctype:
            return Match.NONE, {}
        return Match.FULL, {}

    async def handle(self, scope, receive, send):
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        body = json.dumps({"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1],
                                       "data": [base64.b64encode(b"".join(chunks)).decode()]}],
                           **({"parameters": params} if params else {})}).encode()
        headers = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        new_scope = {**scope, "headers": headers}
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        from starlette.routing import Match

        for route in self.app.router.routes:
            if route is self:
                continue
            match, child = route.matches(new_scope)
            if match == Match.FULL:
                await route.handle({**new_scope, **child}, replay, send)
                return
        raise RuntimeError("MLServer's infer route was not found")  # pragma: no cover - MLServer always has one


_ROUTE: Optional[RawAudioRoute] = None


def enable_raw_uploads(model_name: str) -> bool:
    """Lets ``model_name`` take raw audio bodies; False when MLServer's app is not in this process (the
    model runs in a parallel worker: JSON and gRPC still work there)."""
    global _ROUTE
    RAW_MODELS[model_name] = True
    if _ROUTE is not None:
        return True
    from mlserver.rest.server import RESTServer

    servers = [o for o in gc.get_referrers(RESTServer) if isinstance(o, RESTServer)]
    if not servers:
        logger.warning("model '%s': raw audio uploads to /v2/models/%s/infer need the model in MLServer's main "
                       "process (parallel_workers 0); JSON and gRPC requests work as usual", model_name, model_name)
        return False
    app = servers[0]._app
    _ROUTE = RawAudioRoute(app)
    app.router.routes.insert(0, _ROUTE)
    return True


def disable_raw_uploads(model_name: str) -> None:
    RAW_MODELS.pop(model_name, None)
