"""The base every modelserve runtime subclasses: typed options, error discipline and the KServe V1 routes."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
from typing import Any, Awaitable, ClassVar, Type, TypeVar

from fastapi import Depends, Request
from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.handlers.custom import CustomHandler, register_custom_handler
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse
from pydantic import ValidationError

from .codecs import v1_request_to_v2, v2_response_to_v1
from .errors import BadRequest, InternalError, ModelLoadError, RequestTimeout, one_line
from .options import RuntimeOptions, parse_options

logger = logging.getLogger("mlserver.modelserve")
T = TypeVar("T")

MODEL_FILE_LOCK = threading.Lock()
"""Held while a model file is deserialised. MLServer loads models concurrently, and unpickling in
parallel threads imports the same modules at once, which Python's import machinery can report as a
deadlock (``_DeadlockError``, seen with sklearn). Loading is rare; one file at a time costs nothing."""


async def _raw_body(request: Request) -> bytes:
    """The request body as bytes: parsed by us, so a missing Content-Type or bad JSON gets a clear 400."""
    return await request.body()


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def request_parameters(payload: InferenceRequest) -> dict:
    """The request's own ``parameters`` (pydantic extras), without MLServer's content_type and headers.

    Values are kept as sent, None included: a float sent over MLServer's gRPC arrives as None, and a
    runtime must say so rather than silently ignore it.
    """
    params = payload.parameters
    return dict(params.model_extra or {}) if params is not None else {}


def _freeze_heap() -> None:
    """Moves everything alive after a load out of the garbage collector's sight.

    A server holds ~200k long-lived objects (sklearn, scipy, pandas, MLServer); every full collection
    walks them all (~100 ms measured) and frees nothing, which showed as 100 ms p99 latency under load.
    Objects created later are collected as usual.
    """
    gc.collect()
    gc.freeze()


class Runtime(MLModel):
    """Subclasses set ``options_class`` and implement ``_load()`` and ``_predict()``.

    ``load()`` and ``predict()`` turn any exception into an MLServer error with a status code and a
    one-line message: MLServer would otherwise answer 500 with a full traceback (debug mode).
    """

    options_class: ClassVar[Type[RuntimeOptions]] = RuntimeOptions
    _in_flight = 0  # requests inside this copy of the model (see requests_done)

    def __init__(self, settings: ModelSettings):
        super().__init__(settings)
        self._add_route(f"/v1/models/{settings.name}:predict", "POST", "v1_predict", self._v1_predict)
        self._add_route(f"/v1/models/{settings.name}", "GET", "v1_model", self._v1_model)

    def _add_route(self, path: str, method: str, attr: str, target) -> None:
        """A REST route for this model only; MLServer adds it on load and removes it on unload.

        Set as an instance attribute under ``attr`` so that, with parallel workers, MLServer forwards
        the call to the same method on the worker's copy of the model.
        """
        if method == "GET":

            async def handler() -> Any:
                return await target()

        else:

            async def handler(body: bytes = Depends(_raw_body)) -> Any:  # type: ignore[misc]
                return await self.within_timeout(target(parse_json(body)))

        handler.__name__ = attr
        register_custom_handler(CustomHandler(rest_path=path, rest_method=method), handler)
        setattr(self, attr, handler)

    # -- loading -----------------------------------------------------------------------------------
    async def load(self) -> bool:
        try:
            self.options = parse_options(self.options_class, self.settings)
            await self._load()
        except MLServerError:
            raise
        except Exception as exc:
            logger.exception("model '%s' failed to load", self.name)
            raise ModelLoadError(self.name, one_line(exc)) from None
        _freeze_heap()
        return True

    async def _load(self) -> None:
        raise NotImplementedError

    # -- inference ---------------------------------------------------------------------------------
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        try:
            return await self.within_timeout(self._predict(payload))
        except MLServerError:
            raise
        except Exception as exc:
            logger.exception("model '%s' failed on a request", self.name)
            raise InternalError(f"model '{self.name}' failed: {one_line(exc)}") from None

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        raise NotImplementedError

    async def within_timeout(self, call: Awaitable[T]) -> T:
        """``call`` under the ``request_timeout`` option: past it, a 504, and ``call`` is cancelled.

        Cancelling reaches whatever the request awaits (an engine's HTTP request is closed); work
        already handed to a thread runs to its end and its result is dropped. A timeout raised inside
        ``call`` itself (an engine client's own) is not ours and passes unchanged.
        """
        limit = getattr(getattr(self, "options", None), "request_timeout", None)
        self._in_flight += 1
        try:
            if not limit:  # unset, or the never-loaded main-process copy under parallel workers (its worker times)
                return await call
            scope = asyncio.timeout(limit)
            try:
                async with scope:
                    return await call
            except TimeoutError:
                if not scope.expired():
                    raise
                raise RequestTimeout(f"model '{self.name}': the request ran past request_timeout "
                                     f"({limit:g} s) and was cancelled") from None
        finally:
            self._in_flight -= 1

    async def requests_done(self, timeout: float = 60.0) -> None:
        """Waits (up to ``timeout`` s) until no request is inside this copy of the model.

        MLServer reloads a model by loading the new copy, routing new requests to it and then unloading
        the old one while requests may still be inside it: an ``unload()`` that stops the model's thread
        or engine calls this first, so those requests are answered instead of left waiting for ever.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while self._in_flight > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._in_flight > 0:
            logger.warning("model '%s': unloading with %d request(s) still running after %g s",
                           self.name, self._in_flight, timeout)

    def v1_input_name(self) -> str:
        inputs = self.inputs or []
        return inputs[0].name if len(inputs) == 1 else "input-0"

    async def _v1_predict(self, body: Any) -> dict:
        try:
            request = v1_request_to_v2(body, self.v1_input_name())
        except ValidationError as exc:  # e.g. "parameters" that are not an object (found by fuzzing)
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "body"
            raise BadRequest(f"V1 request field '{where}': {err.get('msg')}") from None
        response = await self.predict(request)
        return v2_response_to_v1(response)

    async def _v1_model(self) -> dict:
        return {"name": self.name, "ready": bool(self.ready)}
