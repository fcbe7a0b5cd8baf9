"""Startup, health and shutdown of ``mlserver start``: MLServer 1.7.1's behaviours that a production probe or a
rolling update trips over, patched here (armed by ``mlserver_early`` as each MLServer module is imported).

- **A model that fails to load at startup no longer stops the server** (``MLServer.start`` stopped everything on
  the first failure). It is listed in ``/v2/repository/index`` as UNAVAILABLE with its reason; its ready and
  infer routes answer 503 with the reason (not 404 "not found"); ``/v2/health/ready`` answers 503 while any
  model configured at startup is not ready, and 200 once it loads (through the repository API, say).
  ``/v2/health/live`` stays 200. Not-ready answers are 503 (MLServer answered 400, an empty body).
- **Shutdown that loses nothing** (``MLServer.stop`` closed the worker pool before the REST and gRPC servers:
  requests in flight in a worker were cancelled, and uvicorn then waited for them for ever). On SIGTERM:
  readiness answers 503, the REST and gRPC servers stop accepting and finish what is in flight (at most
  ``MODELSERVE_DRAIN_SECONDS``, 20 s, well inside a pod's default 30 s grace), then the workers stop and the
  process exits. A second signal skips the wait.
- **No metric series for models that do not exist**: MLServer's infer counters were labelled with the request's
  name and version before the model was looked up, so any client could grow the metrics without bound.

Import-light: only the standard library at import; MLServer's modules arrive as arguments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from contextlib import asynccontextmanager
from typing import Dict, Optional, Set

from . import metrics

logger = logging.getLogger("mlserver.modelserve")

DRAIN_SECONDS = float(os.environ.get("MODELSERVE_DRAIN_SECONDS", "20"))

FAILED: Dict[str, str] = {}
"""model name -> why its last load failed (cleared when it loads)."""
STARTUP: Set[str] = set()
"""the models configured at startup: readiness waits for each."""
DRAINING = False
"""set at the first shutdown signal: readiness answers 503 from then on."""


_QUALIFIED = re.compile(r"^(?:[a-z_]\w*\.)+[A-Z]\w*: ")  # "modelserve.errors.ModelLoadError: ", a worker's


def _reason(exc: BaseException) -> str:
    """One line: a parallel worker's errors arrive as "module.Class: message", the class is left out."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return _QUALIFIED.sub("", lines[0]) if lines else type(exc).__name__


# -- mlserver.registry -------------------------------------------------------------------------------------
def patch_registry(module) -> None:
    """Every load (startup or repository API) records its failure's reason, or clears it."""
    registry = module.MultiModelRegistry
    if getattr(registry.load, "modelserve_patched", False):
        return
    original = registry.load

    async def load(self, model_settings):
        try:
            model = await original(self, model_settings)
        except Exception as exc:
            FAILED[model_settings.name] = _reason(exc)
            raise
        FAILED.pop(model_settings.name, None)
        return model

    load.modelserve_patched = True  # type: ignore[attr-defined]
    registry.load = load


# -- mlserver.server ---------------------------------------------------------------------------------------
def patch_server(module) -> None:
    server = module.MLServer
    if getattr(server.start, "modelserve_patched", False):
        return

    async def start(self, models_settings=()):
        if self._settings.tracing_server:  # the engines trace to the same collector (tracing.py)
            os.environ.setdefault("MODELSERVE_TRACING_SERVER", self._settings.tracing_server)
        servers = [self._rest_server.start(), self._grpc_server.start()]
        if self._metrics_server:
            servers.append(self._metrics_server.start())
        if self._kafka_server:
            servers.append(self._kafka_server.start())
        tasks = [asyncio.ensure_future(s) for s in servers]
        self._modelserve_rest_task = tasks[0]
        STARTUP.update(m.name for m in models_settings)

        async def load(model_settings):
            try:
                await self._model_registry.load(model_settings)
            except Exception as exc:  # the others keep loading and serving
                FAILED[model_settings.name] = _reason(exc)
                logger.error("model '%s' failed to load at startup; the other models keep serving: %s",
                             model_settings.name, FAILED[model_settings.name])

        await asyncio.gather(*(load(m) for m in models_settings))
        await asyncio.gather(*tasks)

    async def stop(self, sig: Optional[int] = None):
        global DRAINING
        rest = getattr(self._rest_server, "_server", None)
        if DRAINING:  # a second signal: stop waiting for what is in flight
            if rest is not None:
                rest.force_exit = True
            return
        DRAINING = True
        began = time.monotonic()
        logger.info("shutting down: no new requests; finishing those in flight (at most %.0f s)", DRAIN_SECONDS)
        if self._kafka_server:
            await self._kafka_server.stop()
        # gRPC: MLServer's GRPCServer.stop gives calls in flight 5 s; the same drain as REST here
        grpc_server = getattr(self._grpc_server, "_server", None)
        grpc = asyncio.ensure_future(grpc_server.stop(grace=DRAIN_SECONDS)) if grpc_server is not None else None
        if self._rest_server:
            await self._rest_server.stop(sig)  # uvicorn closes its sockets and waits for the requests in flight
        task = getattr(self, "_modelserve_rest_task", None)
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), DRAIN_SECONDS)
            except asyncio.TimeoutError:
                logger.warning("requests still in flight after %.0f s: closing them", DRAIN_SECONDS)
                if rest is not None:
                    rest.force_exit = True
            except Exception:  # the REST server's own failure is logged by it
                pass
        if grpc is not None:
            await grpc
        if self._inference_pool_registry:  # the workers last: nothing is in flight in them any more
            await self._inference_pool_registry.close()
        if self._metrics_server:
            await self._metrics_server.stop(sig)
        logger.info("shut down in %.1f s", time.monotonic() - began)

    start.modelserve_patched = True  # type: ignore[attr-defined]
    server.start, server.stop = start, stop


# -- mlserver.handlers.dataplane ---------------------------------------------------------------------------
def _unavailable(name: str, version: Optional[str]):
    """The 503 for a model that is configured but failed to load (None when it never was)."""
    from mlserver.errors import MLServerError

    reason = FAILED.get(name)
    if reason is None:
        return None
    return MLServerError(f"model '{name}' is not available: {reason}", 503)


def patch_dataplane(module) -> None:
    plane = module.DataPlane
    if getattr(plane.ready, "modelserve_patched", False):
        return
    from mlserver.errors import ModelNotFound

    async def ready(self) -> bool:
        if DRAINING:
            return False
        models = list(await self._model_registry.get_models())
        if not all(model.ready for model in models):
            return False
        loaded = {model.name for model in models}
        return not (STARTUP - loaded)

    async def model_ready(self, name: str, version: Optional[str] = None) -> bool:
        try:
            model = await self._model_registry.get_model(name, version)
        except ModelNotFound:
            raise _unavailable(name, version) or ModelNotFound(name, version) from None
        return model.ready

    @asynccontextmanager
    async def _infer_contextmanager(self, name: str, version: Optional[str] = None, endpoint: str = "infer"):
        try:  # looked up first: the labels below exist only for models that do
            model = await self._model_registry.get_model(name, version)
        except ModelNotFound:
            raise _unavailable(name, version) or ModelNotFound(name, version) from None
        # the version of the model that answers ("" for an unversioned one): MLServer labelled the request's,
        # "None" for the unversioned route and "v1" for the same model on the versioned one
        labels = {"model": name, "version": model.settings.version or ""}
        request = metrics.Request(name, metrics.PROTOCOL.get(), endpoint)
        try:
            with self._ModelInferRequestDuration.labels(**labels).time(), \
                    self._ModelInferRequestFailure.labels(**labels).count_exceptions():
                if not model.ready:
                    raise module.ModelNotReady(name, version)
                with module.model_context(model.settings):
                    yield model
                self._ModelInferRequestSuccess.labels(**labels).inc()
        except BaseException as exc:
            request.failed(exc)
            raise
        request.done("2xx")

    async def infer_stream(self, payloads, name: str, version: Optional[str] = None):
        """MLServer's own, its requests counted as ``stream`` (to their last response)."""
        async with self._infer_contextmanager(name, version, "stream") as model:
            async for payload in payloads:
                break
            decorated = self._prepare_payloads_generator(payload, payloads, model)
            async for prediction in model.predict_stream(decorated):
                prediction.id = payload.id
                self._inference_middleware.response_middleware(prediction, model.settings)
                yield prediction

    ready.modelserve_patched = True  # type: ignore[attr-defined]
    plane.ready, plane.model_ready, plane._infer_contextmanager = ready, model_ready, _infer_contextmanager
    plane.infer_stream = infer_stream


# -- mlserver.metrics.prometheus ------------------------------------------------------------------------
def patch_metrics_endpoint(module) -> None:
    """The scrape also carries the supervised engines' own metrics, labelled with their model (metrics.py)."""
    endpoint = module.PrometheusEndpoint
    if getattr(endpoint.handle_metrics, "modelserve_patched", False):
        return

    def handle_metrics(self, req):  # sync, as MLServer's: Starlette runs it in its thread pool
        return module.Response(metrics.scrape(self), status_code=200,
                               headers={"Content-Type": module.CONTENT_TYPE_LATEST})

    handle_metrics.modelserve_patched = True  # type: ignore[attr-defined]
    endpoint.handle_metrics = handle_metrics


# -- mlserver.grpc.servicers -------------------------------------------------------------------------------
def patch_grpc_servicer(module) -> None:
    """Its requests are counted as ``v2-grpc`` (metrics.PROTOCOL, read where DataPlane counts them)."""
    servicer = module.InferenceServicer
    if getattr(servicer.ModelInfer, "modelserve_patched", False):
        return
    import functools

    unary, stream = servicer.ModelInfer, servicer.ModelStreamInfer

    @functools.wraps(unary)
    async def ModelInfer(self, request, context):
        metrics.PROTOCOL.set("v2-grpc")  # this RPC's own task
        return await unary(self, request, context)

    @functools.wraps(stream)
    async def ModelStreamInfer(self, requests_stream, context):
        metrics.PROTOCOL.set("v2-grpc")
        async for response in stream(self, requests_stream, context):
            yield response

    ModelInfer.modelserve_patched = True  # type: ignore[attr-defined]
    servicer.ModelInfer, servicer.ModelStreamInfer = ModelInfer, ModelStreamInfer


# -- mlserver.rest.endpoints -------------------------------------------------------------------------------
def patch_endpoints(module) -> None:
    """Not ready is a 503 (KServe's and Kubernetes' reading), with the reason when there is one. A 200 carries
    ModelHub's JSON body (MLServer's was empty): ``{"live": true}``, ``{"ready": true}``, and ``{"ready": true,
    "name": ...}`` for a model (``"version"`` too on the versioned route); KServe's and Triton's clients read the
    status code only."""
    endpoints = module.Endpoints
    if getattr(endpoints.ready, "modelserve_patched", False):
        return
    import json

    from fastapi.responses import Response

    def answer(body: dict, status: int = 200):
        return Response(json.dumps(body), status_code=status, media_type="application/json")

    def unavailable(msg: str):
        return answer({"error": msg}, 503)

    async def live(self):
        if await self._data_plane.live():
            return answer({"live": True})
        return unavailable("not live")

    async def ready(self):
        if await self._data_plane.ready():
            return answer({"ready": True})
        failed = sorted(STARTUP & set(FAILED))
        return unavailable("shutting down" if DRAINING else
                           "not ready" + "".join(f"; model '{m}': {FAILED[m]}" for m in failed))

    async def model_ready(self, model_name: str, model_version: Optional[str] = None):
        if await self._data_plane.model_ready(model_name, model_version):
            body = {"ready": True, "name": model_name}
            if model_version is not None:
                body["version"] = model_version
            return answer(body)
        return unavailable(f"model '{model_name}' is not ready")

    live.modelserve_patched = ready.modelserve_patched = True  # type: ignore[attr-defined]
    model_ready.modelserve_patched = True  # type: ignore[attr-defined]
    endpoints.live, endpoints.ready, endpoints.model_ready = live, ready, model_ready


# -- mlserver.handlers.model_repository --------------------------------------------------------------------
def patch_repository(module) -> None:
    """The index says why a model is UNAVAILABLE."""
    handlers = module.ModelRepositoryHandlers
    if getattr(handlers._to_item, "modelserve_patched", False):
        return
    original = handlers._to_item

    async def _to_item(self, model_settings):
        item = await original(self, model_settings)
        reason = FAILED.get(model_settings.name)
        if reason is not None and item.state != module.State.READY:
            item.state, item.reason = module.State.UNAVAILABLE, reason
        return item

    _to_item.modelserve_patched = True  # type: ignore[attr-defined]
    handlers._to_item = _to_item
