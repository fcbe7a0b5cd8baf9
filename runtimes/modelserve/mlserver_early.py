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


PATCHES = {"mlserver.parallel.worker": patch_worker, "mlserver.rest.app": patch_rest_app}
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
