"""Speech-to-text on V2 and OpenAI's /v1/audio/transcriptions over engines/whisper.py (in-process faster-whisper):
the backend of KubeAIRuntime with engine FasterWhisper.

V2 input ``audio``: BYTES, one audio file per row (raw bytes over gRPC, base64 strings in JSON), or FP32/FP64
PCM at 16 kHz, shape [samples] or [clips, samples] (codecs/audio.py). A POST to /v2/models/{name}/infer whose
body is the audio file itself (any Content-Type but JSON, e.g. application/octet-stream) is wrapped as that
input, with the query string as parameters (mlserver_compat.RawBodyRoute). Outputs: ``text``, ``segments``
(JSON per row) and ``language``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Dict, List, Optional

import numpy as np
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

from .. import metrics
from ..codecs.audio import audio_rows
from ..codecs.requests import one_input, request_parameters, wanted_outputs
from ..engines.whisper import WhisperEngine, transcribe_options
from ..errors import BadRequest
from ..mlserver_compat import file_as_tensor
from ..openai.protocol import OpenAIError
from . import Backend

OUTPUTS = ("text", "segments", "language")
RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


class SpeechBackend(Backend):
    """``whisper`` is a started WhisperEngine, stopped by ``close()``."""

    inputs = (MetadataTensor(name="audio", datatype="BYTES", shape=[-1]),)
    outputs = tuple(MetadataTensor(name=n, datatype="BYTES", shape=[-1]) for n in OUTPUTS)
    openai_kinds = frozenset({"transcriptions", "translations"})

    def __init__(self, name: str, version: Optional[str], whisper: WhisperEngine):
        super().__init__(name, version)
        self.whisper = whisper
        self.raw_body = file_as_tensor("audio")  # this backend's own: a reload's new copy registers its own

    async def close(self) -> None:
        await self.whisper.stop()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inp = one_input(payload, "one input 'audio' (BYTES audio files or FP32 PCM)")
        if inp.name != "audio":
            raise BadRequest(f"unknown input '{inp.name}' (this model takes: audio)")
        clips = audio_rows(inp)
        wanted = wanted_outputs(payload, OUTPUTS, ("text",))
        opts = transcribe_options(request_parameters(payload), self.whisper.languages)
        results = await asyncio.gather(*[self._transcribe(c, opts, i) for i, c in enumerate(clips)])
        columns = {"text": [r["text"] for r in results],
                   "segments": [json.dumps(r["segments"]) for r in results],
                   "language": [r["language"] for r in results]}
        return self.response(payload, {n: np.array(v, dtype=object) for n, v in columns.items()}, wanted)

    async def _transcribe(self, audio, opts: Dict[str, Any], row: int = 0) -> dict:
        """One clip, its audio seconds and real-time factor counted (metrics.py)."""
        start = time.perf_counter()
        result = await self.whisper.transcribe(audio, opts, row)
        metrics.transcribed(self.name, float(result.get("duration") or 0.0), time.perf_counter() - start)
        return result

    async def openai_call(self, kind: str, form: Dict[str, Any], model_id: str, audio: bytes) -> Any:
        """/v1/audio/transcriptions and /v1/audio/translations (into English: Whisper's translate task): the
        form's fields as OpenAI documents them (a translation takes no language and no timestamp_granularities)."""
        translate = kind == "translations"
        if translate:
            given = [k for k in ("language", "timestamp_granularities[]") if form.get(k)]
            if given:
                raise OpenAIError(f"field '{given[0]}' is not supported by /v1/audio/translations (it translates "
                                  "into English; fields: file, model, prompt, response_format, temperature)",
                                  param=given[0])
        fmt = form.get("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise OpenAIError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}",
                              param="response_format")
        grains = form.get("timestamp_granularities[]") or []
        if any(g not in ("word", "segment") for g in grains):
            raise OpenAIError(f"timestamp_granularities must be word and/or segment, got {grains}",
                              param="timestamp_granularities[]")
        params = {"language": form.get("language"), "initial_prompt": form.get("prompt"),
                  "word_timestamps": "word" in grains, **({"task": "translate"} if translate else {})}
        if form.get("temperature") not in (None, ""):
            params["temperature"] = form["temperature"]
        try:
            opts = transcribe_options(params, self.whisper.languages)
            result = await self._transcribe(audio, opts)
        except BadRequest as exc:
            raise OpenAIError(str(exc).replace("parameter 'initial_prompt'", "'prompt'").replace("audio 0", "file"),
                              param="file" if "audio" in str(exc) else None) from None
        if fmt == "text":
            return result["text"] + "\n"
        if fmt in ("srt", "vtt"):
            return subtitles(result["segments"], fmt)
        if fmt == "json":
            return {"text": result["text"]}
        body = {"task": "translate" if translate else "transcribe", "language": result["language"], "duration": round(result["duration"], 3),
                "text": result["text"],
                "segments": [{k: v for k, v in s.items() if k != "words"} | {"seek": 0} for s in result["segments"]]}
        if "word" in grains:
            body["words"] = [w for s in result["segments"] for w in s.get("words", [])]
        return body


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
