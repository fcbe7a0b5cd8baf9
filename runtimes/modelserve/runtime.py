"""The base every modelserve runtime subclasses: typed options, templates for every MLServer hook (load,
predict, predict_stream, unload, the OpenAI routes) with one error discipline, the KServe V1 routes."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any, AsyncIterator, Awaitable, ClassVar, List, Optional, Type, TypeVar

from fastapi import Depends
from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse
from pydantic import ValidationError

from . import metrics, mlserver_compat, tracing
from .backends import Backend
from .codecs import v1_request_to_v2, v2_response_to_v1
from .codecs.requests import parse_json
from .errors import BadRequest, InternalError, ModelLoadError, NotServed, RequestTimeout, one_line
from .openai import routes as openai_routes
from .options import RuntimeOptions, parse_options

logger = logging.getLogger("mlserver.modelserve")
T = TypeVar("T")

def _freeze_heap() -> None:
    """Moves everything alive after a load out of the garbage collector's sight.

    A server holds ~200k long-lived objects (sklearn, scipy, pandas, MLServer); every full collection
    walks them all (~100 ms measured) and frees nothing, which showed as 100 ms p99 latency under load.
    Objects created later are collected as usual.
    """
    gc.collect()
    gc.freeze()


class Runtime(MLModel):
    """Subclasses set ``options_class`` and implement ``_load()``, which either sets ``self.backend`` (then
    predict, streams, the OpenAI routes and unload go to it) or comes with ``_predict()`` (and ``_unload()``).

    The public hooks are templates: any exception becomes an MLServer error with a status code and a one-line
    message (MLServer would answer 500 with a full traceback in debug mode); every request, stream and OpenAI
    call is counted while it runs, so that ``unload()`` waits for them; ``request_timeout`` applies to each
    request (to a stream's opening).
    """

    options_class: ClassVar[Type[RuntimeOptions]] = RuntimeOptions
    openai_routes: ClassVar[bool] = False
    """True: the model adds the OpenAI routes (served when its backend answers any)."""
    backend: Optional[Backend] = None
    _in_flight = 0  # requests and streams inside this copy of the model (see requests_done)

    def __init__(self, settings: ModelSettings):
        mlserver_compat.apply()
        super().__init__(settings)
        self._add_route(f"/v1/models/{settings.name}:predict", "POST", "v1_predict", self._v1_predict)
        self._add_route(f"/v1/models/{settings.name}", "GET", "v1_model", self._v1_model)
        self._add_route(f"/v1/models/{settings.name}:explain", "POST", "v1_explain", self._v1_explain)
        if self.openai_routes:
            openai_routes.add_routes(self)

    def _add_route(self, path: str, method: str, attr: str, target) -> None:
        """A REST route for this model only (mlserver_compat.add_custom_handler): a POST's JSON body goes to
        ``target`` under the request template, a GET calls ``target()``."""
        if method == "GET":

            async def handler() -> Any:
                return await target()

        else:
            protocol, endpoint = (("invocations", "invocations") if path.endswith("invocations")
                                  else ("v1", path.rpartition(":")[2]))

            async def handler(body: bytes = Depends(mlserver_compat.raw_body)) -> Any:  # type: ignore[misc]
                request = metrics.Request(self.name, protocol, endpoint)
                try:
                    answer = await self._request(target(parse_json(body)))
                except BaseException as exc:
                    request.failed(exc)
                    raise
                request.done("2xx")
                return answer

        mlserver_compat.add_custom_handler(self, path, method, attr, handler)

    # -- loading -----------------------------------------------------------------------------------
    async def load(self) -> bool:
        try:
            self.options = parse_options(self.options_class, self.settings)
            await self._load()
            if self.backend is not None:
                self._attach(self.backend)
        except MLServerError:
            raise
        except Exception as exc:
            logger.exception("model '%s' failed to load", self.name)
            raise ModelLoadError(self.name, one_line(exc)) from None
        _freeze_heap()
        return True

    async def _load(self) -> None:
        raise NotImplementedError

    def _attach(self, backend: Backend) -> None:
        """The backend's metadata (unless model-settings.json declares its own) and routes."""
        self.inputs = self.inputs or list(backend.inputs)
        self.outputs = self.outputs or list(backend.outputs)
        if backend.raw_body is not None:
            mlserver_compat.enable_raw_bodies(self.name, backend.raw_body)
        if backend.openai_ids():
            openai_routes.register(self)

    def _backend_failed(self, reason: str) -> None:
        """The backend gave up (an engine that stopped restarting): the model-ready endpoint says so from now on."""
        self.ready = False
        logger.error("model '%s' is no longer ready: %s", self.name, reason)

    # -- inference ---------------------------------------------------------------------------------
    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with tracing.span("modelserve.predict", **{"modelserve.model": self.name}):  # decode, model, encode
            return await self._request(self._predict(payload))

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        return await self.backend.predict(payload)

    async def predict_stream(self, payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[InferenceResponse]:
        """V2 streams (REST generate_stream/infer_stream as SSE, gRPC ModelStreamInfer): counted in flight for
        their whole life, errors converted as predict's."""
        self._in_flight += 1
        try:
            async for response in self._predict_stream(payloads):
                yield response
        except MLServerError:
            raise
        except Exception as exc:
            logger.exception("model '%s' failed on a streamed request", self.name)
            raise InternalError(f"model '{self.name}' failed: {one_line(exc)}") from None
        finally:
            self._in_flight -= 1

    async def _predict_stream(self, payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[InferenceResponse]:
        first = await payloads.__anext__()
        if self.backend is None:  # MLServer's default: the whole answer as one response
            yield await self.within_timeout(self._predict(first))
            return
        async for response in self.backend.stream(first):
            yield response

    async def _request(self, call: Awaitable[T]) -> T:
        """One request under the templates: counted, within request_timeout, errors as one line."""
        try:
            return await self.within_timeout(call)
        except MLServerError:
            raise
        except Exception as exc:
            logger.exception("model '%s' failed on a request", self.name)
            raise InternalError(f"model '{self.name}' failed: {one_line(exc)}") from None

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

    # -- the OpenAI routes (openai/routes.py looks the model up and calls these) -------------------------
    def openai_ids(self) -> List[str]:
        return self.backend.openai_ids() if self.backend is not None else []

    def openai_supports(self, kind: str) -> bool:
        return self.backend is not None and self.backend.openai_supports(kind)

    async def openai_call(self, kind: str, body: dict, model_id: str, raw: bytes) -> Any:
        """The backend's answer, counted in flight until it is sent: a stream's count ends with the stream."""
        self._in_flight += 1
        try:
            result = await self.within_timeout(self.backend.openai_call(kind, body, model_id, raw))
        except BaseException:
            self._in_flight -= 1
            raise
        if hasattr(result, "__anext__"):
            return _CountedStream(self, result)
        self._in_flight -= 1
        return result

    # -- unloading ---------------------------------------------------------------------------------
    async def unload(self) -> bool:
        """Routes off, then waits for the requests and streams inside this copy (a reload unloads the old copy
        while they run), then ``_unload()``."""
        openai_routes.unregister(self)
        if self.backend is not None and self.backend.raw_body is not None:
            mlserver_compat.disable_raw_bodies(self.name, self.backend.raw_body)
        await self.requests_done()
        await self._unload()
        return True

    async def _unload(self) -> None:
        if self.backend is not None:
            await self.backend.close()

    async def requests_done(self, timeout: float = 60.0) -> None:
        """Waits (up to ``timeout`` s) until no request or stream is inside this copy of the model.

        MLServer reloads a model by loading the new copy, routing new requests to it and then unloading
        the old one while requests may still be inside it: ``unload()`` waits here first, so those requests
        are answered instead of left waiting for ever.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while self._in_flight > 0 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._in_flight > 0:
            logger.warning("model '%s': unloading with %d request(s) still running after %g s",
                           self.name, self._in_flight, timeout)

    # -- KServe V1 ---------------------------------------------------------------------------------
    def v1_input_name(self) -> str:
        inputs = self.inputs or []
        return inputs[0].name if len(inputs) == 1 else "input-0"

    async def _v1_predict(self, body: Any) -> dict:
        """Runs under the route's request template (counted and timed once)."""
        try:
            request = v1_request_to_v2(body, self.v1_input_name())
        except ValidationError as exc:  # e.g. "parameters" that are not an object (found by fuzzing)
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "body"
            raise BadRequest(f"V1 request field '{where}': {err.get('msg')}") from None
        response = await self._predict(request)
        return v2_response_to_v1(response)

    async def _v1_model(self) -> dict:
        return {"name": self.name, "ready": bool(self.ready)}

    async def _v1_explain(self, body: Any) -> dict:
        """KServe V1's ``:explain``: no runtime here serves explanations (an explainer is a KServe component of its
        own); a clear 501 rather than a bare 404."""
        raise NotServed(f"model '{self.name}' does not serve explanations (V1 :explain); "
                        f"use /v1/models/{self.name}:predict")


class _CountedStream:
    """An OpenAI stream that counts in its model's in-flight requests until it ends, is closed, or is dropped
    unread (a client that left before the first chunk)."""

    def __init__(self, model: Runtime, chunks: AsyncIterator[bytes]):
        self._model, self._chunks, self._open = model, chunks, True

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            self._done()
            raise

    async def aclose(self) -> None:
        self._done()
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()

    def _done(self) -> None:
        if self._open:
            self._open = False
            self._model._in_flight -= 1

    def __del__(self):
        self._done()
