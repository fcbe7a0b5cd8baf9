"""The front door of MLServer's REST app: what a client may put on the wire besides a plain JSON body.

``FrontDoor`` is an ASGI middleware placed outermost on MLServer 1.7.1's FastAPI app (``mlserver_early`` wraps
``mlserver.rest.app.create_app``), in the main process, so it serves every model in both MLServer modes:

- **compressed request bodies**: ``Content-Encoding: gzip`` / ``deflate`` (tritonclient's
  ``request_compression_algorithm``), decompressed with a cap (``MODELSERVE_MAX_BODY_BYTES``, 256 MiB), so a
  small bomb cannot fill memory; anything else is a 415, a corrupt stream a 400;
- **compressed answers**: ``Accept-Encoding: gzip`` / ``deflate`` (``response_compression_algorithm``) when
  MLServer's ``gzip_enabled`` is on, for answers of 500 bytes or more and never for event streams (MLServer's
  own GZipMiddleware, which this replaces, buffered V2 streams);
- **the binary tensor data extension** (KServe V2 / Triton; ``binary_tensors``) on
  ``/v2/models/{name}[/versions/{v}]/infer``: a binary request becomes the V2 JSON request MLServer takes; the
  answer's outputs go binary where the request asks for them (also for a JSON request asking binary outputs);
- **ModelHub's request shapes** on the same route: a JSON object that is not a V2 request (no ``inputs`` list)
  and a file uploaded as the body (a Content-Type that is not JSON, for a model that takes no raw body of its
  own) are carried to the model as one BYTES input (``MODELHUB`` in the scope; ``patch_infer_endpoint``): an MLflow
  model answers them as ModelHub does (codecs/modelhub.py), any other model with MLServer's own one-line 400.

Everything else passes through untouched; the model, MLServer's metrics, logging and errors see a plain JSON
request. Errors here answer MLServer's one-line ``{"error": ...}``.
"""

from __future__ import annotations

import os
import re
import zlib
from urllib.parse import parse_qsl
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import binary_tensors

INFER = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer$")
HEADER_LENGTH = b"inference-header-content-length"
MAX_BODY = int(os.environ.get("MODELSERVE_MAX_BODY_BYTES", str(256 << 20)))
"""The most bytes a request body may hold once decompressed."""
BODY = "modelserve.body"  # the scope key of the body as the app received it
RAW = "modelserve.binary_inputs"  # the scope key of the binary inputs' bytes: {input index: (datatype, raw)}
MIN_COMPRESS = 500  # as starlette's GZipMiddleware: smaller answers are sent as they are
MODELHUB = "modelserve.modelhub"  # the scope key of a ModelHub body: (body, content type, ?inference_type)
_V2_INPUTS = re.compile(rb'(?<!\\)"inputs"\s*:\s*\[')
"""A V2 request's ``"inputs": [``: such a body goes to MLServer untouched, unparsed here (ModelHub bodies have none;
one that nests an ``inputs`` list in its data is taken for V2)."""
PLACEHOLDER = b'{"inputs":[{"name":"modelhub","datatype":"BYTES","shape":[1],"data":[""]}]}'
"""What MLServer's route parses in place of a ModelHub body; the body itself is filled in by the endpoint."""

Scope = Dict[str, Any]
Headers = List[Tuple[bytes, bytes]]


class Refused(Exception):
    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status


def _header(headers: Headers, name: bytes) -> Optional[bytes]:
    for key, value in headers:
        if key == name:
            return value
    return None


def _without(headers: Headers, *names: bytes) -> Headers:
    return [(k, v) for k, v in headers if k not in names]


def decompress(body: bytes, encoding: str) -> bytes:
    """The body of ``Content-Encoding`` ``encoding`` (a list, applied in order), at most ``MAX_BODY`` bytes."""
    for coding in reversed([c.strip().lower() for c in encoding.split(",") if c.strip()]):
        if coding == "identity":
            continue
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise Refused(415, f"Content-Encoding '{coding}' is not supported (gzip, deflate, identity)")
        # gzip: a gzip header; deflate: zlib-wrapped, as RFC 9110 says, or raw deflate, as some clients send
        wbits = (16 + zlib.MAX_WBITS) if coding != "deflate" else (zlib.MAX_WBITS if body[:1] == b"\x78" else
                                                                   -zlib.MAX_WBITS)
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, MAX_BODY + 1)
        except zlib.error as exc:
            raise Refused(400, f"the body is not valid {coding} data ({exc})") from None
        if len(out) > MAX_BODY or inflater.unconsumed_tail:
            raise Refused(413, f"the body is over {MAX_BODY} bytes once decompressed (MODELSERVE_MAX_BODY_BYTES)")
        if not inflater.eof:
            raise Refused(400, f"the body is truncated {coding} data")
        body = out
    return body


def compress(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    else:
        packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
    return packer.compress(body) + packer.flush()


def accepted_coding(accept: Optional[bytes]) -> Optional[str]:
    """gzip or deflate if ``Accept-Encoding`` takes it (q > 0), gzip first."""
    if not accept:
        return None
    taken = {}
    for part in accept.decode("latin-1").lower().split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        taken[name.strip()] = q
    for coding in ("gzip", "deflate"):
        if taken.get(coding, taken.get("*", 0.0)) > 0:
            return coding
    return None


async def _read(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(400, "the client went away before its body arrived")
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _error(status: int, msg: str) -> Tuple[int, Headers, bytes]:
    body = binary_tensors.encode_json({"error": msg})
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


class FrontDoor:
    def __init__(self, app: Callable, compress_answers: bool = True):
        self.app = app
        self.compress_answers = compress_answers

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers: Headers = scope.get("headers") or []
        encoding = _header(headers, b"content-encoding")
        header_length = _header(headers, HEADER_LENGTH)
        coding = accepted_coding(_header(headers, b"accept-encoding")) if self.compress_answers else None
        infer = scope.get("method") == "POST" and INFER.match(scope.get("path", "")) is not None
        if not (encoding or infer or coding):
            return await self.app(scope, receive, send)

        binary_out: Optional[Callable[[List[str]], set]] = None
        extra: Dict[str, Any] = {}  # for the scope the app gets
        if encoding or infer:
            received = b""
            try:
                body = await _read(receive)
                if encoding:
                    body = decompress(body, encoding.decode("latin-1"))
                    headers = _without(headers, b"content-encoding")
                if infer and header_length is not None:
                    raws: Dict[int, Any] = {}  # the tensors' bytes, which patch_infer_endpoint hands over
                    request = binary_tensors.decode_request(body, header_length.decode("latin-1"), raws)
                    extra[RAW] = {i: (request["inputs"][i].get("datatype"), v) for i, v in raws.items()}
                    binary_out = _take_binary_rule(request)
                    body = binary_tensors.encode_json(request)
                    headers = _without(headers, HEADER_LENGTH, b"content-type")
                    headers.append((b"content-type", b"application/json"))
                elif infer and (hub := _modelhub_body(body, headers, scope)) is not None:
                    extra[MODELHUB] = hub
                    received, body = body, PLACEHOLDER
                    headers = _without(headers, b"content-type") + [(b"content-type", b"application/json")]
                elif infer and b"binary_data" in body:  # a JSON request that may ask for binary outputs
                    request = _json_or_none(body)
                    binary_out = _take_binary_rule(request)
                    if binary_out is not None:
                        body = binary_tensors.encode_json(request)
            except Refused as exc:
                return await _send(send, *_error(exc.status, str(exc)))
            except binary_tensors.BinaryError as exc:
                return await _send(send, *_error(400, f"binary tensor request: {exc}"))
            headers = _without(headers, b"content-length") + [(b"content-length", str(len(body)).encode())]
            receive = _replay(body, receive)
            scope = {**scope, BODY: received if MODELHUB in extra else body, **extra}  # BODY: for error messages
        if coding:  # the answer is compressed here, not by the app
            headers = _without(headers, b"accept-encoding")
        if not (coding or binary_out):
            return await self.app({**scope, "headers": headers}, receive, send)
        await self.app({**scope, "headers": headers}, receive, _Answer(send, coding, binary_out).send)


try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson comes with MLServer
    from json import loads as _loads


def _json_or_none(body: bytes) -> Any:
    try:
        return _loads(body)
    except ValueError:
        return None  # MLServer answers the bad JSON


def _modelhub_body(body: bytes, headers: Headers, scope: Scope) -> Optional[Tuple[bytes, str, str, Optional[str]]]:
    """``(body, kind, content type, ?inference_type)`` when ``body`` is a ModelHub request rather than V2: a JSON
    object without an ``inputs`` list, or an upload (a Content-Type that is not JSON, for a model with no raw-body
    rewrite of its own: ``mlserver_compat.RAW_BODY_MODELS``). None: MLServer takes it as it is."""
    from .codecs.modelhub import JSON_BODY, UPLOAD_BODY

    ctype = (_header(headers, b"content-type") or b"").decode("latin-1")
    if not ctype or "json" in ctype.lower():
        if _V2_INPUTS.search(body):
            return None
        value = _json_or_none(body)
        if not isinstance(value, dict) or ("inputs" in value and not isinstance(value["inputs"], dict)):
            return None  # not an object (MLServer says so), or a V2 request with bad inputs
        kind = JSON_BODY
    else:
        from .mlserver_compat import RAW_BODY_MODELS, _INFER

        if _INFER.match(scope.get("path", "")).group(1) in RAW_BODY_MODELS:
            return None
        kind = UPLOAD_BODY
    query = dict(parse_qsl((scope.get("query_string") or b"").decode("latin-1"))).get("inference_type")
    return body, kind, ctype or "none", query


def _take_binary_rule(request: Any) -> Optional[Callable[[List[str]], set]]:
    """Which outputs the answer sends binary (``binary_tensors.binary_outputs``), and the request without the
    extension's own parameters (``binary_data_output``, each output's ``binary_data``): they are the front
    door's, and a model that refuses parameters it does not know must not see them. None: nothing to do."""
    if not isinstance(request, dict):
        return None
    params, outputs = request.get("parameters"), request.get("outputs")
    outputs = outputs if isinstance(outputs, list) else []
    own = [o["parameters"] for o in outputs if isinstance(o, dict) and isinstance(o.get("parameters"), dict)]
    snapshot = {"parameters": dict(params) if isinstance(params, dict) else params,
                "outputs": [{**o, "parameters": dict(o["parameters"])} if isinstance(o, dict) and
                            isinstance(o.get("parameters"), dict) else o for o in outputs]}
    if isinstance(params, dict):
        params.pop("binary_data_output", None)
    for p in own:
        p.pop("binary_data", None)
    if isinstance(params, dict) and not params:
        del request["parameters"]
    for out in outputs:
        if isinstance(out, dict) and out.get("parameters") == {}:
            del out["parameters"]
    return lambda names: binary_tensors.binary_outputs(snapshot, names)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()  # the app listening for the client's disconnect
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send(send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Answer:
    """Buffers one answer to re-encode it (binary outputs, then compression); streams pass through."""

    def __init__(self, send, coding: Optional[str], binary_out):
        self._send, self.coding, self.binary_out = send, coding, binary_out
        self.start: Optional[dict] = None
        self.chunks: List[bytes] = []
        self.passing = False

    async def send(self, message: dict) -> None:
        if self.passing:
            return await self._send(message)
        if message["type"] == "http.response.start":
            headers = message.get("headers") or []
            ctype = (_header(headers, b"content-type") or b"").lower()
            if b"text/event-stream" in ctype or _header(headers, b"content-encoding"):
                self.passing = True
                return await self._send(message)
            self.start = message
            return
        if message["type"] != "http.response.body":
            return await self._send(message)
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        await self._finish(b"".join(self.chunks))

    async def _finish(self, body: bytes) -> None:
        assert self.start is not None
        status, headers = self.start["status"], list(self.start.get("headers") or [])
        ctype = (_header(headers, b"content-type") or b"").lower()
        if self.binary_out is not None and status == 200 and b"json" in ctype:
            response = _json_or_none(body)
            if isinstance(response, dict) and isinstance(response.get("outputs"), list):
                names = [o.get("name") for o in response["outputs"] if isinstance(o, dict)]
                wanted = self.binary_out(names)
                if wanted:
                    body, length = binary_tensors.encode_response(response, wanted)
                    if length is not None:
                        headers = _without(headers, b"content-type")
                        headers += [(b"content-type", b"application/octet-stream"),
                                    (HEADER_LENGTH, str(length).encode())]
        if self.coding and len(body) >= MIN_COMPRESS:
            body = compress(body, self.coding)
            headers = _without(headers, b"content-encoding") + [(b"content-encoding", self.coding.encode())]
            vary = _header(headers, b"vary")
            if not vary or b"accept-encoding" not in vary.lower():
                headers = _without(headers, b"vary") + [(b"vary", (vary + b", " if vary else b"") + b"Accept-Encoding")]
        headers = _without(headers, b"content-length") + [(b"content-length", str(len(body)).encode())]
        await _send(self._send, status, headers, body)


# -- the binary inputs' bytes, handed to the model ----------------------------------------------------------
def patch_infer_endpoint(module) -> None:
    """MLServer 1.7.1's ``Endpoints.infer`` (``mlserver.rest.endpoints``) gets the binary inputs that the front door
    left out of the JSON it parsed (``RAW`` in the scope): a modelserve runtime takes their bytes as they came
    (``codecs.tensors.decode_array`` reads bytes with ``np.frombuffer``, BYTES as a list of bytes, as over gRPC),
    with no list of Python numbers built, parsed and validated; any other model (and one under MLServer's
    adaptive batching, which merges lists) gets the JSON values, BYTES as base64 with ``content_type: base64``."""
    import functools

    endpoints = module.Endpoints
    original = endpoints.infer
    if getattr(original, "modelserve_patched", False):
        return

    @functools.wraps(original)  # FastAPI reads the signature (through __wrapped__) to parse the request
    async def infer(self, raw_request, raw_response, payload, model_name, model_version=None):
        hub = raw_request.scope.get(MODELHUB)
        if hub is not None:
            return await _modelhub_infer(functools.partial(original, self, raw_request, raw_response), self._data_plane,
                                         payload, model_name, model_version, hub)
        raws = raw_request.scope.get(RAW)
        if raws:
            await _fill_binary_inputs(self._data_plane, payload, raws, model_name, model_version)
        return await original(self, raw_request, raw_response, payload, model_name, model_version)

    infer.modelserve_patched = True  # type: ignore[attr-defined]
    endpoints.infer = infer


_TAKES_BYTES: Dict[str, bool] = {}  # implementation path -> a modelserve runtime (reads raw bytes)


async def _takes_bytes(data_plane, name: str, version: Optional[str]) -> bool:
    try:
        model = await data_plane._model_registry.get_model(name, version)
    except Exception:  # not found: MLServer answers it
        return False
    settings = model.settings
    if (settings.max_batch_size or 0) > 1:
        return False
    path = settings.implementation_
    if path not in _TAKES_BYTES:
        from .runtime import Runtime

        try:
            _TAKES_BYTES[path] = issubclass(settings.implementation, Runtime)
        except Exception:
            _TAKES_BYTES[path] = False
    return _TAKES_BYTES[path]


async def _fill_binary_inputs(data_plane, payload, raws: Dict[int, Tuple[str, Any]], name: str,
                              version: Optional[str]) -> None:
    from mlserver.types import Parameters, TensorData

    as_bytes = await _takes_bytes(data_plane, name, version)
    for index, (datatype, raw) in raws.items():
        inp = payload.inputs[index]
        if as_bytes:
            inp.data = TensorData.model_construct(root=raw)
            continue
        inp.data = TensorData.model_construct(root=binary_tensors.json_values(datatype, raw))
        if datatype == "BYTES":
            if inp.parameters is None:
                inp.parameters = Parameters(content_type="base64")
            else:
                inp.parameters.content_type = "base64"


# -- ModelHub bodies, carried to the model -------------------------------------------------------------------
async def _modelhub_infer(call, data_plane, payload, name: str, version: Optional[str],
                          hub: Tuple[bytes, str, str, Optional[str]]):
    """A ModelHub body (``MODELHUB``): to a model that takes them (``modelhub_shapes``: the MLflow runtime) as the
    one BYTES input of ``payload`` (MLServer's own path: metrics, workers, errors), answered with the model's
    envelope and failures in ModelHub's error shape; any other model answers what MLServer says of a body that
    is not V2."""
    from mlserver.errors import MLServerError
    from mlserver.types import Parameters, TensorData
    from starlette.responses import Response

    from .codecs.modelhub import error_body
    from .request_errors import not_v2_message

    body, kind, ctype, query = hub

    def failed(status: int, msg: str) -> Response:
        return Response(binary_tensors.encode_json(error_body(status, msg)), status_code=status,
                        media_type="application/json")

    try:
        model = await data_plane._model_registry.get_model(name, version)
    except MLServerError:
        model = None  # not there, or not loaded: MLServer's own path says which (lifecycle.py: 503 for a failure)
    if model is not None:
        if not getattr(model.settings.implementation, "modelhub_shapes", False):
            value = _json_or_none(body) if kind.endswith("json") else None
            return Response(binary_tensors.encode_json({"error": not_v2_message(body, ctype, value)}), status_code=400,
                            media_type="application/json")
        if (model.settings.max_batch_size or 0) > 1:
            return failed(400, f"model '{name}' batches requests (max_batch_size {model.settings.max_batch_size}): "
                               "ModelHub's request shapes are not batched, send a V2 request (an 'inputs' list)")
        if ctype.lower().startswith(("multipart/", "application/x-www-form-urlencoded")):
            return failed(415, f"a form (Content-Type {ctype}) is not a ModelHub upload: send the file itself as the "
                               "body (Content-Type application/octet-stream)")
    inp = payload.inputs[0]
    inp.data = TensorData.model_construct(root=[body])
    inp.parameters = Parameters(content_type=kind)
    if query is not None:
        payload.parameters = Parameters(inference_type=query)
    try:
        response = await call(payload, name, version)
    except MLServerError as exc:
        return failed(exc.status_code, str(exc))
    answer = response.outputs[0].data.root[0] if response.outputs else b"{}"
    return Response(answer if isinstance(answer, bytes) else str(answer).encode(), status_code=200,
                    media_type="application/json")
