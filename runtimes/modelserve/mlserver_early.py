"""The half of the MLServer 1.7.1 compatibility layer that must be in place before MLServer starts.

``mlserver start`` builds its REST app and spawns its worker pool (``MLServer.__init__``) before it imports any
model's implementation, so nothing in a runtime can patch those in time. ``modelserve-mlserver.pth`` (installed
at the top of site-packages by setup.py) imports this module at every interpreter start, in the server and in
each worker process MLServer spawns; ``arm()`` then patches each MLServer module below as it is imported.

Import-light on purpose (it runs in every Python process of the environment): no MLServer, FastAPI or third-party
import here, and no patch runs unless MLServer itself is imported. The rest of the layer, which needs MLServer
loaded, is ``modelserve.mlserver_compat``.
"""

from __future__ import annotations

import sys


def patch_worker(module) -> None:
    """MLServer 1.7.1's ``Worker.run`` (``mlserver.parallel.worker``) installs uvloop's event-loop policy, then asks
    ``asyncio.get_event_loop()`` for a loop outside of any: uvloop 0.22+ (after the policy deprecations) answers
    "There is no current event loop", so every parallel worker died at start and no model loaded. This is MLServer's
    own fix from its main branch (SeldonIO/MLServer#2297, ``AsyncManager``), unreleased: the worker's loop comes
    from a loop factory (uvloop's when it is installed) that also sets the ignored signals' handlers."""
    worker = module.Worker
    if getattr(worker.run, "modelserve_patched", False):
        return

    def run(self) -> None:
        import asyncio
        from contextlib import nullcontext

        def loop_factory():
            try:
                import uvloop

                loop = uvloop.new_event_loop()
            except ImportError:  # pragma: no cover - uvloop is one of MLServer's requirements
                loop = asyncio.new_event_loop()
            for sign in module.IGNORED_SIGNALS:  # the main process stops the workers
                loop.add_signal_handler(sign, module._noop)
            return loop

        with self._env if self._env else nullcontext():
            module.configure_logger(self._settings)
            module.configure_metrics(self._settings)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(self.coro_run())

    run.modelserve_patched = True  # type: ignore[attr-defined]
    worker.run = run
    module.logger.addFilter(_one_line_errors)


def _one_line_errors(record) -> bool:
    """A logging filter for MLServer's worker logger (``mlserver.parallel``), which logs every exception a model
    raises with its traceback (``Worker._process_request``): a client's bad request or a model's load error
    (MLServer errors, which carry their status code and say what is wrong) is logged as one line instead."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and isinstance(getattr(exc, "status_code", None), int):
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        record.msg, record.args, record.exc_info, record.exc_text = f"{record.getMessage()} {first}", (), None, None
    return True


def patch_rest_app(module) -> None:
    """FastAPI 0.132+ answers a JSON body sent without a Content-Type with a 422 (``strict_content_type``, default
    on). tritonclient.http, MLServer's own ``mlserver infer`` and many curl scripts send none, and MLServer 1.7.1's
    routes were written for a FastAPI that parsed such bodies as JSON: MLServer's ``APIRoute``
    (``mlserver.rest.app``) is built with ``strict_content_type=False``, so they keep working."""
    import inspect

    route = module.APIRoute
    if getattr(route.__init__, "modelserve_patched", False):
        return
    from fastapi.routing import APIRoute

    if "strict_content_type" not in inspect.signature(APIRoute.__init__).parameters:
        return  # an older FastAPI: it has no such check
    original = route.__init__

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("strict_content_type", False)
        original(self, *args, **kwargs)

    __init__.modelserve_patched = True  # type: ignore[attr-defined]
    route.__init__ = __init__
    patch_create_app(module)


def patch_create_app(module) -> None:
    """MLServer 1.7.1's ``create_app`` (``mlserver.rest.app``) gets the front door (``modelserve.frontdoor``): the
    binary tensor extension, deflate as well as gzip both ways, and streams never buffered by compression
    (MLServer's GZipMiddleware, which it replaces, took gzip answers only and buffered V2 streams); and a handler
    for FastAPI's ``RequestValidationError`` that answers a one-line 400, where FastAPI's echoed the whole input
    in a 422 and crashed with a 500 on a body that is not UTF-8.

    It also gets the two routes ModelHub's server (autonomize-model-sdk, ``modelhub.serving.server``) has and
    MLServer lacks, appended after MLServer's own (no path of MLServer's matches either): ``GET /``
    (``{"message", "protocol": "v2", "models": [names]}``) and ``GET /v2/models`` (``{"models": [{"name",
    "ready"}]}``), read from the main process's model registry (where the models are in both parallel-worker
    modes), with the models whose last load failed (``lifecycle.FAILED``) as not ready."""
    original = module.create_app
    if getattr(original, "modelserve_patched", False):
        return

    def create_app(settings, *args, **kwargs):
        from fastapi.exceptions import RequestValidationError
        from starlette.middleware.gzip import GZipMiddleware

        from modelserve import frontdoor, lifecycle, request_errors

        app = original(settings, *args, **kwargs)
        app.add_exception_handler(RequestValidationError, request_errors.validation_error)
        app.user_middleware = [m for m in app.user_middleware if m.cls is not GZipMiddleware]
        app.add_middleware(frontdoor.FrontDoor, compress_answers=bool(settings.gzip_enabled))

        data_plane = args[0] if args else kwargs.get("data_plane")

        async def models() -> list:
            ready: dict = {}
            for model in await data_plane._model_registry.get_models():  # every version; ready if one is
                ready[model.name] = ready.get(model.name, False) or bool(model.ready)
            for name in list(lifecycle.FAILED):
                ready.setdefault(name, False)
            return [{"name": name, "ready": ready[name]} for name in sorted(ready)]

        async def root() -> dict:
            return {"message": "modelserve Inference Server", "protocol": "v2",
                    "models": [m["name"] for m in await models()]}

        async def list_models() -> dict:
            return {"models": await models()}

        if data_plane is not None:
            app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
            app.add_api_route("/v2/models", list_models, methods=["GET"], include_in_schema=False)
        return app

    create_app.modelserve_patched = True  # type: ignore[attr-defined]
    module.create_app = create_app


def patch_worker_error(module) -> None:
    """MLServer 1.7.1's ``WorkerError`` (``mlserver.parallel.errors``) prefixes a worker's error with its class's
    import path, so a client's 400 read "modelserve.errors.BadRequest: input 'x': ..." with parallel workers and
    "input 'x': ..." in-process. An MLServer error (which carries its status and says what is wrong) keeps its own
    message; any other exception keeps MLServer's prefix, its only clue."""
    error = module.WorkerError
    if getattr(error.__init__, "modelserve_patched", False):
        return
    original = error.__init__

    def __init__(self, exc: BaseException):
        original(self, exc)
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and isinstance(exc, module.MLServerError):
            module.MLServerError.__init__(self, str(exc), status)

    __init__.modelserve_patched = True  # type: ignore[attr-defined]
    error.__init__ = __init__


def patch_no_signal_server(module) -> None:
    """MLServer 1.7.1's ``_NoSignalServer`` (``mlserver.rest.server``, ``mlserver.metrics.server``) keeps uvicorn off
    the process's signals by overriding ``install_signal_handlers``, which uvicorn 0.29+ no longer calls: its
    ``capture_signals`` took SIGTERM from MLServer, and re-raised it when each uvicorn server ended, so one SIGTERM
    reached MLServer's own handler again mid-shutdown (``modelserve.lifecycle`` reads a second signal as "stop
    waiting"). MLServer's handlers are the only ones again."""
    import contextlib

    server = module._NoSignalServer
    if getattr(server.capture_signals, "modelserve_patched", False):
        return

    def capture_signals(self):
        return contextlib.nullcontext()

    capture_signals.modelserve_patched = True  # type: ignore[attr-defined]
    server.capture_signals = capture_signals


def _lazy(where: str, *names: str):
    """Patches from ``modelserve.<where>`` (``lifecycle``: startup, health, shutdown, metric labels;
    ``frontdoor``: the binary inputs' bytes), imported only when the MLServer module they patch is."""

    def patch(module) -> None:
        import importlib

        patches = importlib.import_module(f"modelserve.{where}")
        for name in names:
            getattr(patches, name)(module)

    return patch


def _lifecycle(name: str):
    return _lazy("lifecycle", name)


def _both(*patches):
    def patch(module) -> None:
        for one in patches:
            one(module)

    return patch


PATCHES = {"mlserver.parallel.worker": patch_worker, "mlserver.parallel.errors": patch_worker_error,
           "mlserver.rest.app": patch_rest_app, "mlserver.rest.server": patch_no_signal_server,
           "mlserver.metrics.server": patch_no_signal_server,
           "mlserver.registry": _lifecycle("patch_registry"), "mlserver.server": _lifecycle("patch_server"),
           "mlserver.handlers.dataplane": _lifecycle("patch_dataplane"),
           "mlserver.rest.endpoints": _both(_lifecycle("patch_endpoints"), _lazy("frontdoor", "patch_infer_endpoint")),
           "mlserver.handlers.model_repository": _lifecycle("patch_repository"),
           "mlserver.grpc.servicers": _lifecycle("patch_grpc_servicer"),
           "mlserver.metrics.prometheus": _lifecycle("patch_metrics_endpoint")}
"""MLServer module -> the patch applied right after it is imported."""


class _PatchingLoader:  # an importlib.abc.Loader (not imported: importlib.abc costs ~30 ms)
    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.patch(module)


class _PatchOnImport:  # an importlib.abc.MetaPathFinder
    """Finds the modules of ``PATCHES`` with the other finders and patches each once it has executed.

    Hand-rolled rather than wrapt's post-import hooks: importing wrapt costs ~170 ms, in every interpreter."""

    def find_spec(self, name, path, target=None):
        patch = PATCHES.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


def arm() -> None:
    """Patches the ``PATCHES`` modules already imported, and the others as they are imported (idempotent)."""
    import warnings

    # MLServer 1.7.1 reads starlette's old name for 422 at import (mlserver.grpc.servicers, .utils): starlette 1.x
    # warns on every start, about code no user can change
    warnings.filterwarnings("ignore", message="'HTTP_422_UNPROCESSABLE_ENTITY' is deprecated", module=r"mlserver\.")
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


try:
    arm()
except Exception:  # pragma: no cover - never break an interpreter's start over a patch
    pass
