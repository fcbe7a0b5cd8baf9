"""faster-whisper in MLServer's process: its dependencies (CTranslate2, PyAV, onnxruntime) resolve beside
MLServer's, so there is no server to supervise. Transcriptions run on a pool of ``num_workers`` threads
(CTranslate2 runs that many in parallel and releases the GIL), never on the event loop; audio is decoded
by faster-whisper's own ``decode_audio`` (PyAV), as a direct ``WhisperModel.transcribe`` would."""

from __future__ import annotations

import asyncio
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from ..codecs.params import number
from ..errors import BadRequest, ModelLoadError

logger = logging.getLogger("mlserver.modelserve.whisper")

SAMPLE_RATE = 16000
# engine `args` for an in-process engine: the WhisperModel constructor's own settings
ARGS = {"--device": str, "--compute-type": str, "--num-workers": int, "--cpu-threads": int, "--device-index": int}


def parse_args(model: str, args: Sequence[str]) -> Dict[str, Any]:
    """``["--compute-type", "int8"]`` (or ``--compute-type=int8``) as WhisperModel keyword arguments."""
    out: Dict[str, Any] = {}
    items = list(args)
    while items:
        flag = items.pop(0)
        name, eq, value = flag.partition("=")
        if name not in ARGS:
            raise ModelLoadError(model, f"engine FasterWhisper runs in-process and takes only these args: "
                                        f"{', '.join(ARGS)} (got {flag!r})")
        if not eq:
            if not items:
                raise ModelLoadError(model, f"args: {name} needs a value")
            value = items.pop(0)
        try:
            out[name[2:].replace("-", "_")] = ARGS[name](value)
        except ValueError:
            raise ModelLoadError(model, f"args: {name} needs {ARGS[name].__name__}, got {value!r}") from None
    return out


def _has_cuda() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # noqa: BLE001 - no CUDA runtime at all
        return False


class WhisperEngine:
    def __init__(self, name: str, path: Path, args: Sequence[str]):
        self.name, self.path = name, Path(path)
        kw = parse_args(name, args)
        kw.setdefault("device", "cuda" if _has_cuda() else "cpu")
        kw.setdefault("compute_type", "default")
        kw.setdefault("num_workers", 2)
        self.kw = kw
        self.model: Any = None
        self.languages: List[str] = []
        self._pool = ThreadPoolExecutor(max_workers=kw["num_workers"], thread_name_prefix=f"whisper-{name}")

    async def start(self) -> None:
        if not (self.path / "model.bin").is_file():
            raise ModelLoadError(self.name, f"{self.path} is not a CTranslate2 Whisper folder (no model.bin): convert "
                                            "a transformers Whisper with ct2-transformers-converter")
        if not (self.path / "tokenizer.json").is_file():
            # faster-whisper would download openai/whisper-tiny's tokenizer from the hub instead
            raise ModelLoadError(self.name, f"{self.path} has no tokenizer.json (convert with --copy_files "
                                            "tokenizer.json preprocessor_config.json)")
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelLoadError(self.name, f"engine FasterWhisper needs faster-whisper: pip install "
                                            f"'modelserve[whisper]' ({exc})") from None
        try:
            self.model = await asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: WhisperModel(str(self.path), **self.kw))
        except Exception as exc:  # noqa: BLE001 - CTranslate2 raises RuntimeError/ValueError for bad folders
            raise ModelLoadError(self.name, f"faster-whisper could not load {self.path}: {exc}") from None
        self.languages = list(self.model.supported_languages)
        logger.info("model '%s': faster-whisper on %s (%s), %d worker(s)", self.name, self.kw["device"],
                    self.model.model.compute_type, self.kw["num_workers"])

    async def transcribe(self, audio: Union[bytes, np.ndarray], options: Dict[str, Any], row: int = 0) -> dict:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._transcribe, audio, options, row)

    def _transcribe(self, audio: Union[bytes, np.ndarray], options: Dict[str, Any], row: int) -> dict:
        if isinstance(audio, (bytes, bytearray)):
            audio = decode(audio, row)
        if audio.size == 0:
            raise BadRequest(f"audio {row} has no samples")
        segments, info = self.model.transcribe(audio, **options)
        segs = []
        for s in segments:  # a generator: the work happens here, in this thread
            seg = {"id": s.id, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
                   "tokens": list(s.tokens), "temperature": s.temperature, "avg_logprob": s.avg_logprob,
                   "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob}
            if s.words is not None:
                seg["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                                 "probability": w.probability} for w in s.words]
            segs.append(seg)
        return {"text": "".join(s["text"] for s in segs).strip(), "segments": segs, "language": info.language,
                "language_probability": info.language_probability, "duration": info.duration}

    async def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.model = None


def decode(data: bytes, row: int = 0) -> np.ndarray:
    """An audio file (wav, flac, mp3, ogg, ... anything FFmpeg reads) as 16 kHz mono float32, the way
    faster-whisper decodes files itself; what is not audio is a 400."""
    if not data:
        raise BadRequest(f"audio {row} is empty (0 bytes)")
    from faster_whisper.audio import decode_audio

    try:
        pcm = decode_audio(io.BytesIO(bytes(data)), sampling_rate=SAMPLE_RATE)
    except Exception as exc:  # noqa: BLE001 - PyAV raises its own InvalidDataError & co
        reason = str(exc).split(";")[0][:200] or type(exc).__name__
        raise BadRequest(f"audio {row} is not an audio file that can be decoded (wav, flac, mp3, ogg, ...): "
                         f"{reason}") from None
    if pcm.size == 0:
        raise BadRequest(f"audio {row} decodes to no samples")
    return pcm


def transcribe_options(params: Dict[str, Any], languages: List[str]) -> Dict[str, Any]:
    """Checked request parameters as ``WhisperModel.transcribe`` keyword arguments (see speech.py)."""
    opts: Dict[str, Any] = {}
    for key, value in params.items():
        if key == "language":
            if value is None or value == "":
                continue
            if not isinstance(value, str) or value not in languages:
                raise BadRequest(f"parameter 'language' must be a language code this model knows, such as en, de "
                                 f"or fr (got {value!r})")
            opts["language"] = value
        elif key == "task":
            if value not in ("transcribe", "translate"):
                raise BadRequest(f"parameter 'task' must be transcribe or translate, got {value!r}")
            opts["task"] = value
        elif key == "beam_size":
            opts["beam_size"] = number(key, value, int, 1, 20)
        elif key == "temperature":
            opts["temperature"] = number(key, value, float, 0, 1)
        elif key in ("vad_filter", "word_timestamps"):
            if isinstance(value, str) and value.lower() in ("true", "false"):  # gRPC and query strings
                value = value.lower() == "true"
            if not isinstance(value, bool):
                raise BadRequest(f"parameter '{key}' must be true or false, got {value!r}")
            opts[key] = value
        elif key == "initial_prompt":
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise BadRequest(f"parameter 'initial_prompt' must be a string, got {value!r}")
            opts["initial_prompt"] = value
        else:
            raise BadRequest(f"unknown parameter '{key}' (speech-to-text takes: language, task, beam_size, "
                             "temperature, vad_filter, word_timestamps, initial_prompt)")
    return opts
