"""Every patch and workaround for MLServer 1.7.1, in one place: upgrading MLServer means auditing this file (and
``mlserver_early``, its half that must be armed before MLServer starts).

Each item names the MLServer behaviour it works around. ``apply()`` installs the patches that change MLServer's
own code (idempotent; ``Runtime.__init__`` calls it, in the main process and in every worker). The helpers
below it are how modelserve adds routes to MLServer's REST server.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import re
import struct
from typing import Any, Callable, Dict, Optional
from urllib.parse import parse_qsl

from fastapi import Request, status
from mlserver.handlers.custom import CustomHandler, register_custom_handler

from . import mlserver_early
from .errors import BadRequest

logger = logging.getLogger("mlserver.modelserve")

_applied = False


def apply() -> None:
    """Installs the patches to MLServer's own modules, once per process."""
    global _applied
    if _applied:
        return
    mlserver_early.arm()  # already armed at interpreter start where modelserve-mlserver.pth is installed
    map_grpc_statuses()
    check_raw_contents()
    _applied = True


# -- gRPC status codes -------------------------------------------------------------------------------------
GRPC_STATUSES = {status.HTTP_503_SERVICE_UNAVAILABLE: "UNAVAILABLE",
                 status.HTTP_504_GATEWAY_TIMEOUT: "DEADLINE_EXCEEDED"}
"""MLServer 1.7.1's gRPC side (``mlserver.grpc.utils.STATUS_CODE_MAPPING``) maps only 400/404/422/500 and answers
any other status UNKNOWN: 503 (engine restarting) and 504 (request_timeout) get the codes that gRPC clients
retry or report as such."""


def map_grpc_statuses() -> None:
    import grpc
    from mlserver.grpc.utils import STATUS_CODE_MAPPING

    for http, name in GRPC_STATUSES.items():
        STATUS_CODE_MAPPING.setdefault(http, getattr(grpc.StatusCode, name))


# -- gRPC raw_input_contents -------------------------------------------------------------------------------
def check_raw_contents() -> None:
    """MLServer 1.7.1 unpacks gRPC ``raw_input_contents`` (``mlserver.grpc.converters.inject_raw``) before any
    model code runs; a buffer whose length does not fit its input's datatype and shape, or fewer buffers than
    inputs, raised ``struct.error`` or ``IndexError`` there and was answered INTERNAL. Both are the client's
    mistake: a 400, INVALID_ARGUMENT over gRPC."""
    from mlserver.grpc import converters

    original = converters.inject_raw
    if getattr(original, "modelserve_checked", False):
        return

    def inject_raw(elems, raw_contents):
        try:
            return original(elems, raw_contents)
        except (struct.error, IndexError) as exc:
            raise BadRequest("raw_input_contents do not fit the inputs (one buffer per input without data, "
                             f"of its datatype's size times its shape): {exc}") from None

    inject_raw.modelserve_checked = True  # type: ignore[attr-defined]
    converters.inject_raw = inject_raw


# -- per-model REST routes -----------------------------------------------------------------------------------
def add_custom_handler(model: Any, path: str, method: str, attr: str, handler: Callable) -> None:
    """A REST route of ``model``: MLServer 1.7.1 collects custom handlers from the model object's members
    (``mlserver.handlers.custom.get_custom_handlers``), adds them on load and removes them on unload.

    Set as an *instance* attribute under ``attr``, so that each model gets literal paths with its own name and,
    with parallel workers, MLServer forwards the call to the method of that name on the worker's copy of the
    model (``mlserver.parallel.model``): arguments and results cross the process boundary, so handlers take
    and return plain bytes/str/dicts. FastAPI matches the first route added for a path, and removal on unload
    matches the endpoint object, so several models may add the same path (the OpenAI routes rely on it).
    """
    handler.__name__ = attr  # FastAPI names the route after it
    register_custom_handler(CustomHandler(rest_path=path, rest_method=method), handler)
    setattr(model, attr, handler)


async def raw_body(request: Request) -> bytes:
    """A handler's body as bytes (a FastAPI dependency): parsed by us, so that a missing Content-Type or bad
    JSON is our clear 400, and plain bytes cross to a parallel worker."""
    return await request.body()


# -- raw (non-JSON) bodies on MLServer's own V2 infer route --------------------------------------------------
Rewrite = Callable[[bytes, Dict[str, str]], bytes]
"""(the body as received, the query string's parameters) -> the V2 JSON request to hand to MLServer; raises
``RawBodyRefused`` for a body the model cannot take (a 400 with its message)."""


class RawBodyRefused(ValueError):
    """A raw body that its model's rewrite cannot turn into a request: one line for a 400."""

RAW_BODY_MODELS: Dict[str, Rewrite] = {}
_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")


class RawBodyRoute:
    """MLServer 1.7.1's ``/v2/models/{name}/infer`` takes only a JSON body. This ASGI route, placed first in
    MLServer's FastAPI routes, matches a POST to a model registered in ``RAW_BODY_MODELS`` whose Content-Type is
    not JSON, rewrites the body into the V2 JSON request and hands it to MLServer's own infer route, so that
    metrics, logging and errors stay MLServer's. Everything else falls through to MLServer unchanged."""

    def __init__(self, app):
        self.app = app
        self.path = "/v2/models/{name}/infer"  # for tools that list routes

    def matches(self, scope):
        from starlette.routing import Match

        if scope.get("type") != "http" or scope.get("method") != "POST":
            return Match.NONE, {}
        found = _INFER.match(scope.get("path", ""))
        if not found or found.group(1) not in RAW_BODY_MODELS:
            return Match.NONE, {}
        ctype = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1").lower()
        if not ctype or "json" in ctype:
            return Match.NONE, {}
        return Match.FULL, {}

    async def handle(self, scope, receive, send):
        from starlette.routing import Match

        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        name = _INFER.match(scope["path"]).group(1)
        rewrite = RAW_BODY_MODELS.get(name, _unloaded)
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            body = rewrite(b"".join(chunks), params)
        except RawBodyRefused as exc:
            answer = json.dumps({"error": str(exc)}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(answer)).encode())]})
            await send({"type": "http.response.body", "body": answer, "more_body": False})
            return
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

        for route in self.app.router.routes:
            if route is self:
                continue
            match, child = route.matches(new_scope)
            if match == Match.FULL:
                await route.handle({**new_scope, **child}, replay, send)
                return
        raise RuntimeError("MLServer's infer route was not found")  # pragma: no cover - MLServer always has one


def _unloaded(body: bytes, params: Dict[str, str]) -> bytes:
    """The model was unloaded while its body arrived: MLServer answers that the model is not there."""
    return b'{"inputs": []}'


_ROUTE: Optional[RawBodyRoute] = None


def enable_raw_bodies(model_name: str, rewrite: Rewrite) -> bool:
    """Lets ``model_name`` take non-JSON bodies on its V2 infer route, turned into V2 JSON by ``rewrite``.

    MLServer 1.7.1 gives a model no handle on its REST app; the app is found once through the garbage
    collector (the one ``RESTServer`` of this process). In a parallel worker there is none: False (JSON and
    gRPC requests still work there)."""
    global _ROUTE
    RAW_BODY_MODELS[model_name] = rewrite
    if _ROUTE is not None:
        return True
    from mlserver.rest.server import RESTServer

    servers = [o for o in gc.get_referrers(RESTServer) if isinstance(o, RESTServer)]
    if not servers:
        logger.warning("model '%s': raw bodies on /v2/models/%s/infer need the model in MLServer's main process "
                       "(parallel_workers 0); JSON and gRPC requests work as usual", model_name, model_name)
        return False
    app = servers[0]._app
    _ROUTE = RawBodyRoute(app)
    app.router.routes.insert(0, _ROUTE)
    return True


def disable_raw_bodies(model_name: str, rewrite: Rewrite) -> None:
    """Undoes ``enable_raw_bodies`` unless another copy of the model (a reload's new one) registered since."""
    if RAW_BODY_MODELS.get(model_name) is rewrite:
        del RAW_BODY_MODELS[model_name]


def file_as_tensor(name: str) -> Rewrite:
    """A rewrite that sends the body as one BYTES element of input ``name`` (base64 in JSON), the query
    string's fields as the request's parameters."""

    def rewrite(body: bytes, params: Dict[str, str]) -> bytes:
        return json.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": [1],
                                       "data": [base64.b64encode(body).decode()]}],
                           **({"parameters": params} if params else {})}).encode()

    return rewrite


def text_as_tensor(name: str) -> Rewrite:
    """A rewrite that sends the body, UTF-8 text, as the one element of BYTES input ``name`` (ModelHub's uploads to
    a text model: the file is the text), the query string's fields as the request's parameters."""

    def rewrite(body: bytes, params: Dict[str, str]) -> bytes:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RawBodyRefused(f"the body is not UTF-8 text (byte {exc.start}): a text model takes its text as the "
                                 "body, or a V2 JSON request") from None
        return json.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": [text]}],
                           **({"parameters": params} if params else {})}).encode()

    return rewrite
