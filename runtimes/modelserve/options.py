"""Typed runtime options read from ModelSettings.parameters.extra, and the mission's vocabularies as enums."""

from __future__ import annotations

import enum
from typing import Optional, Type, TypeVar

from mlserver.settings import ModelSettings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ModelLoadError


class _CaseInsensitiveEnum(str, enum.Enum):
    """Accepts any spelling case (`float16`, `FLOAT16`) and keeps the canonical one."""

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            for member in cls:
                if member.value.lower() == value.lower():
                    return member
        return None


class Task(_CaseInsensitiveEnum):
    SEQUENCE_CLASSIFICATION = "sequence_classification"
    TOKEN_CLASSIFICATION = "token_classification"
    FILL_MASK = "fill_mask"
    TEXT_GENERATION = "text_generation"
    TEXT2TEXT_GENERATION = "text2text_generation"
    TEXT_EMBEDDING = "text_embedding"
    TEXT_RERANKING = "text_reranking"


class Backend(_CaseInsensitiveEnum):
    AUTO = "AUTO"
    VLLM = "VLLM"
    HUGGINGFACE = "HUGGINGFACE"


class Dtype(_CaseInsensitiveEnum):
    AUTO = "AUTO"
    FLOAT32 = "FLOAT32"
    FLOAT16 = "FLOAT16"
    BFLOAT16 = "BFLOAT16"
    FLOAT = "FLOAT"
    HALF = "HALF"


class Engine(_CaseInsensitiveEnum):
    VLLM = "VLLM"
    OLLAMA = "OLlama"
    FASTER_WHISPER = "FasterWhisper"
    INFINITY = "Infinity"


class Feature(_CaseInsensitiveEnum):
    TEXT_GENERATION = "TextGeneration"
    TEXT_EMBEDDING = "TextEmbedding"
    SPEECH_TO_TEXT = "SpeechToText"
    RERANKING = "Reranking"


class RuntimeOptions(BaseModel):
    """Options every runtime accepts; each runtime subclasses this with its own.

    Unknown keys are refused (``extra="forbid"``) so that a typo fails the load instead of being ignored.
    """

    # field docstrings become the fields' descriptions: docs/ option tables are generated from them
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    cache_dir: Optional[str] = None
    """Where remote models (s3://) are downloaded; default $MODELSERVE_CACHE_DIR or ~/.cache/modelserve."""
    pvc_root: Optional[str] = None
    """Mount root for pvc://name/path; default $MODELSERVE_PVC_ROOT or /mnt/pvc (KServe's mount point)."""
    request_timeout: Optional[float] = Field(default=None, gt=0)
    """Seconds one request may run; past it the request is a 504 and its awaited work is cancelled
    (an engine's HTTP request is closed; a call already running in a thread cannot be interrupted)."""


O = TypeVar("O", bound=RuntimeOptions)


def _describe(err: dict, cls: Type[RuntimeOptions]) -> str:
    key = ".".join(str(p) for p in err.get("loc", ())) or "<options>"
    if err.get("type") == "extra_forbidden":
        known = ", ".join(sorted(cls.model_fields))
        return f"unknown option '{key}' (known options: {known})"
    got = err.get("input")
    return f"option '{key}': {err.get('msg')} (got {got!r})"


def parse_options(cls: Type[O], settings: ModelSettings) -> O:
    """Validate ``parameters.extra`` against ``cls``; any problem fails the load naming the key."""
    params = settings.parameters
    extra = dict(params.extra or {}) if params is not None else {}
    try:
        return cls.model_validate(extra)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, cls) for e in exc.errors())
        raise ModelLoadError(settings.name, problems) from None
