"""Backends: what a runtime delegates serving to, behind one small interface.

A runtime (``runtime.Runtime``) owns options, storage and the choice of backend; in ``_load`` it builds one
backend and sets ``self.backend``; from then on V2 predict and streams, the OpenAI routes and close go to it.
Backends here: ``engine.EngineBackend`` (an engine server speaking OpenAI's API: vLLM, Infinity, Ollama),
``speech.SpeechBackend`` (in-process faster-whisper), ``transformers.TransformersBackend`` (a transformers model
in MLServer's process).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, FrozenSet, List, Optional, Sequence

from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor

from ..codecs import encode_array
from ..mlserver_compat import Rewrite


class Backend:
    """The interface a runtime delegates to. Errors are raised as ``errors`` types (or ``OpenAIError`` from
    ``openai_call``); the runtime's templates turn anything else into a one-line 500 and count every request
    and stream in flight, so a backend need not."""

    inputs: Sequence[MetadataTensor] = ()
    """V2 metadata the backend offers (the model's, unless model-settings.json declares its own)."""
    outputs: Sequence[MetadataTensor] = ()
    openai_kinds: FrozenSet[str] = frozenset()
    """The OpenAI routes it answers: "completions", "chat", "embeddings", "transcriptions"."""
    raw_body: Optional[Rewrite] = None
    """Set to take non-JSON bodies on the V2 infer route (turned into a V2 JSON request by this function)."""

    def __init__(self, name: str, version: Optional[str]):
        self.name, self.version = name, version

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        raise NotImplementedError

    async def stream(self, payload: InferenceRequest) -> AsyncIterator[InferenceResponse]:
        """Responses as they are produced (V2 generate_stream/infer_stream, gRPC ModelStreamInfer); by default
        the whole answer as one."""
        yield await self.predict(payload)

    def openai_ids(self) -> List[str]:
        """The ``model`` values the OpenAI routes reach this backend by (its name, its adapters)."""
        return [self.name] if self.openai_kinds else []

    def openai_supports(self, kind: str) -> bool:
        return kind in self.openai_kinds

    async def openai_call(self, kind: str, body: dict, model_id: str, raw: bytes) -> Any:
        """A JSON-able dict, JSON bytes, a str (text formats), or an async iterator of SSE bytes when
        ``body["stream"]`` is true. ``raw`` is the request body as received (the audio file for
        transcriptions), for backends that pass it on unchanged."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stops what the backend started (threads, engines); called once no request is inside."""

    def response(self, payload: InferenceRequest, outputs: dict, wanted: Sequence[str]) -> InferenceResponse:
        """The V2 response holding ``outputs[name]`` (numpy arrays) for each wanted name, in that order."""
        return InferenceResponse.model_construct(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[encode_array(n, outputs[n]) for n in wanted])
