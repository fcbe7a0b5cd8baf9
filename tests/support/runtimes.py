"""The runtime helpers the tests share: a runtime made as MLServer makes it from a model-settings.json, loaded
fresh or once per session, the one-line message of a refused load or request (asserted in one place: the
error's type and status, one line, no traceback), V2 requests and their outputs.

    rt = loaded(HuggingFaceRuntime, folder, normalize=False)       # options are keywords
    assert "max_length" in load_error(HuggingFaceRuntime, folder, max_length=1000)
    assert "empty batch" in bad_request(rt.predict(text_request([], shape=[0])))
    server.infer("iris", v2(IRIS_ROWS, outputs=["predict_proba"]))  # a JSON body for a real server
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import pytest
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse

from modelserve.errors import BadRequest, ModelLoadError
from modelserve.runtime import Runtime

from .models import IRIS_ROWS

SKLEARN = "modelserve.sklearn.SKLearnRuntime"


# -- making and loading ------------------------------------------------------------------------------------
def model_settings(uri=None, extra: Optional[dict] = None, *, implementation: Any = SKLEARN, name: str = "m",
                   source: Union[str, Path, None] = None, **fields) -> ModelSettings:
    """What MLServer's repository hands a runtime: ``parameters.uri`` (as a string), the options ``extra`` and,
    with ``source``, the model-settings.json it was read from (relative uris resolve against its folder).
    ``fields`` are further ModelSettings fields (inputs, max_batch_size, ...)."""
    params = ModelParameters(uri=None if uri is None else str(uri), extra=extra if extra is not None else {})
    settings = ModelSettings(name=name, implementation=implementation, parameters=params, **fields)
    if source is not None:  # as MLServer sets it: ModelSettings(_source=...) would be dropped without a word
        settings._source = str(source)
    return settings


def make_runtime(cls, uri=None, *, name: str = "m", source=None, **extra):
    """``cls`` made (not loaded) for ``uri`` with the options ``extra`` (keywords), named ``name``."""
    return cls(model_settings(uri, extra, implementation=cls, name=name, source=source))


def load(cls, uri=None, **kw):
    """A runtime made by make_runtime(cls, uri, **kw) and loaded; a new one at each call."""
    rt = make_runtime(cls, uri, **kw)
    asyncio.run(rt.load())
    return rt


_LOADED: Dict[tuple, Any] = {}


def loaded(cls, uri=None, **kw):
    """load(cls, uri, **kw) once per session for the same arguments (loading reads a model each time): the
    tests share the runtime, so one that changes it puts it back."""
    key = (cls, str(uri), repr(sorted(kw.items())))
    if key not in _LOADED:
        _LOADED[key] = load(cls, uri, **kw)
    return _LOADED[key]


def kubeai(folder: Union[str, Path], uri=None, *, name: str = "m", **extra):
    """A KubeAIRuntime (not loaded) as if its model-settings.json lay in ``folder``: its working folders and,
    unless the option is given, its cache_dir lie there too."""
    from modelserve.kubeai import KubeAIRuntime

    extra.setdefault("cache_dir", str(Path(folder) / "cache"))
    return make_runtime(KubeAIRuntime, uri, name=name, source=Path(folder) / "model-settings.json", **extra)


# -- refusals: the error's type and status, one line, no traceback -----------------------------------------
def refused(error: type, call: Union[Callable, Any], *args, status: Optional[int] = None, **kw) -> str:
    """The one-line message (no traceback in it) of the ``error`` that ``call`` raises, with ``status`` when
    given. ``call`` is a coroutine, run to its end, or a function called with ``args`` and ``kw`` (a coroutine
    it returns is run too)."""
    with pytest.raises(error) as info:
        result = call if inspect.iscoroutine(call) else call(*args, **kw)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    if status is not None:
        assert info.value.status_code == status, (info.value.status_code, str(info.value))
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def load_error(runtime, *args, **kw) -> str:
    """The one-line message of the ModelLoadError that loading fails with (an error while making the runtime
    counts too). ``runtime`` is a runtime class, made by make_runtime(runtime, *args, **kw), a function that
    makes one (kubeai), called with args and kw, or a runtime already made."""
    def attempt():
        if isinstance(runtime, type):
            rt = make_runtime(runtime, *args, **kw)
        else:
            rt = runtime(*args, **kw) if callable(runtime) else runtime
        asyncio.run(rt.load())

    return refused(ModelLoadError, attempt)


def bad_request(call, *args, **kw) -> str:
    """The one-line message of the 400 BadRequest that ``call`` raises: a coroutine such as
    ``rt.predict(request)``, or a function called with ``args`` and ``kw`` (see refused)."""
    return refused(BadRequest, call, *args, status=400, **kw)


def resolve_error(uri, **kw) -> str:
    """The one-line message of the 422 ModelLoadError, naming model 'm', that storage.resolve fails with for a
    model whose ``parameters.uri`` is ``uri`` (``kw``: resolve's own arguments)."""
    from modelserve import storage

    msg = refused(ModelLoadError, storage.resolve, model_settings(uri), status=422, **kw)
    assert msg.startswith("model 'm' failed to load: "), msg
    return msg


# -- requests and outputs -------------------------------------------------------------------------------------
def v2(data, *, name: str = "input-0", datatype: str = "FP64", shape=None, outputs=None, parameters=None) -> dict:
    """A V2 request body (JSON) of one input. ``shape`` defaults to the data's: [n, m] for rows, else [n];
    ``outputs`` are the names of the outputs asked for; ``parameters`` the request's parameters."""
    if shape is None:
        shape = [len(data), len(data[0])] if len(data) and isinstance(data[0], (list, tuple)) else [len(data)]
    body = {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    if parameters:
        body["parameters"] = parameters
    return body


def text_body(texts, *, name: str = "text", datatype: str = "BYTES", shape=None, outputs=None, **parameters) -> dict:
    """v2() of texts (one row each: the HuggingFace and KubeAI runtimes' input), parameters as keywords."""
    return v2(texts, name=name, datatype=datatype, shape=shape or [len(texts)], outputs=outputs,
              parameters=parameters)


def text_request(texts, **kw) -> InferenceRequest:
    """text_body(texts, **kw) as the InferenceRequest that MLServer gives a runtime's predict."""
    return InferenceRequest.model_validate(text_body(texts, **kw))


def infer(rt, request, parameters=None, outputs=None) -> InferenceResponse:
    """``rt.predict`` run to its end. ``request`` is an InferenceRequest, a V2 body (dict) or a list of V2
    inputs, which ``parameters`` and ``outputs`` (V2 output dicts) complete."""
    if isinstance(request, dict):
        request = InferenceRequest.model_validate(request)
    elif not isinstance(request, InferenceRequest):
        request = InferenceRequest(inputs=request, parameters=parameters, outputs=outputs)
    return asyncio.run(rt.predict(request))


def arrays(response: InferenceResponse) -> Dict[str, np.ndarray]:
    """A response's outputs by name, as arrays of their shape: BYTES decoded to str, numbers as float32."""
    out = {}
    for o in response.outputs:
        if o.datatype == "BYTES":
            out[o.name] = np.array([v.decode() for v in o.data.root], dtype=object).reshape(o.shape)
        else:
            out[o.name] = np.array(o.data.root, dtype=np.float32).reshape(o.shape)
    return out


def infer_texts(rt, texts, **kw) -> Dict[str, np.ndarray]:
    """arrays() of what ``rt`` answers for text_request(texts, **kw)."""
    return arrays(infer(rt, text_request(texts, **kw)))


def output(body: dict, name: str) -> dict:
    """The output called ``name`` of a V2 response body (JSON)."""
    return next(o for o in body["outputs"] if o["name"] == name)


def predict(server, model: str, rows=IRIS_ROWS, outputs=None) -> list:
    """The data of the first output asked for (default ``predict``) in the 200 that a real ``server`` gives
    for sklearn-style rows (v2: input-0, FP64)."""
    r = server.infer(model, v2(rows, outputs=outputs))
    assert r.status_code == 200, r.text
    return output(r.json(), (outputs or ["predict"])[0])["data"]


# -- a runtime of the tests' own ---------------------------------------------------------------------------------
class Sleepy(Runtime):
    """A stand-in Runtime for request_timeout: sleeps for the request's parameter ``sleep`` seconds (awaited, so
    cancellable), counting the requests that finished and those cancelled."""

    async def _load(self) -> None:
        self.finished = 0
        self.cancelled = 0

    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        try:
            await asyncio.sleep(float(payload.parameters.model_extra["sleep"]))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return InferenceResponse(model_name=self.name, outputs=[])

    async def _raises_timeout(self) -> None:
        raise TimeoutError("the engine's own client timed out")


def sleepy(timeout=None) -> Sleepy:
    """A loaded Sleepy named 'slow', with the option request_timeout when ``timeout`` is given."""
    extra = {"request_timeout": timeout} if timeout is not None else {}
    return load(Sleepy, name="slow", **extra)


def nap(seconds: float) -> InferenceRequest:
    """A request that keeps Sleepy busy for ``seconds``."""
    return InferenceRequest(inputs=[], parameters={"sleep": seconds})
