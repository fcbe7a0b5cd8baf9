"""MLflowRuntime: an MLmodel folder served through mlflow.pyfunc, requests checked against its signature."""

from __future__ import annotations

import asyncio
import json
import logging
from io import StringIO
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

from mlserver.errors import MLServerError
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from . import storage
from .errors import BadRequest, ModelLoadError, one_line
from .options import RuntimeOptions, parse_options
from .codecs.requests import request_parameters, wanted_outputs
from .batching import MODEL_FILE_LOCK
from .runtime import Runtime

logger = logging.getLogger("mlserver.modelserve.mlflow")

BODY_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
"""The request bodies of MLflow's scoring protocol (``POST /invocations``)."""


class MLflowOptions(RuntimeOptions):
    root_invocations: bool = True
    """Also answer MLflow's own ``POST /invocations``. One model owns that path: the first loaded that
    claims it (MLServer loads models concurrently, so on a multi-model server set this to false on all
    but one). ``/models/{name}/invocations`` is always served."""
    tracking_uri: Optional[str] = None
    """The MLflow tracking server that `runs:/`, `models:/` and `mlflow-artifacts:/` URIs are looked up on (its
    credentials from MLflow's usual variables); default $MLFLOW_TRACKING_URI, else ModelHub's
    $MODELHUB_BASE_URL + $CLIENT_ID."""
    signatureless_input: Literal["tensor", "dataframe"] = "tensor"
    """What a model without an input signature gets from a V2 request. ``tensor`` (MLServer's and MLflow's
    choice for ``inputs``): one input is an ndarray, several are DataFrame columns. ``dataframe`` (ModelHub's
    V2 path, for pyfuncs written for DataFrames): always a DataFrame; one numeric input of shape [rows, n]
    gives the columns 0..n-1, one BYTES input the column ``data``, several inputs a column each, by name."""


class MLflowRuntime(Runtime):
    """Serves any MLflow model with a ``python_function`` flavour.

    V2 inputs are decoded by the model's signature: one input per column for a column-based
    signature, tensors of the signature's dtype and shape for a tensor-based one. Request
    ``parameters`` become the model's params (checked against its params schema). MLflow's own
    scoring protocol is served at ``/invocations`` and ``/models/{name}/invocations``.
    """

    options_class = MLflowOptions
    modelhub_shapes = True
    """Takes ModelHub's request shapes on its V2 infer route (``frontdoor.MODELHUB``, codecs/modelhub.py)."""

    def __init__(self, settings: ModelSettings):
        super().__init__(settings)
        # Routes are collected from the instance before load() runs, so the option is read here too;
        # an invalid option keeps the default and fails the load with its message.
        try:
            root = parse_options(MLflowOptions, settings).root_invocations
        except MLServerError:
            root = True
        self._add_route(f"/models/{settings.name}/invocations", "POST", "mlflow_model_invocations",
                        self._invocations)
        if root:
            self._add_route("/invocations", "POST", "mlflow_invocations", self._invocations)

    async def _load(self) -> None:
        opts: MLflowOptions = self.options
        path = await asyncio.to_thread(storage.resolve, self.settings, (), opts.cache_dir, opts.pvc_root, mlflow=True,
                                       mlflow_tracking_uri=opts.tracking_uri)
        if path.is_file() and path.name == "MLmodel":
            path = path.parent
        if not path.is_dir():
            raise ModelLoadError(self.name, f"{path} is a file: point parameters.uri at an MLflow model "
                                            "folder (the one holding the MLmodel file)")
        if not (path / "MLmodel").is_file():
            raise ModelLoadError(self.name, f"no MLmodel file in {path}: point parameters.uri at an "
                                            "MLflow model folder (the one holding the MLmodel file)")
        try:
            self.model = await asyncio.to_thread(_load_pyfunc, self.name, path)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(self.name, f"cannot load the MLflow model in {path}: {one_line(exc)}")

        from .codecs.mlflow_signature import SignatureCodec

        metadata = self.model.metadata
        self.codec = SignatureCodec.from_model_metadata(metadata, signatureless=opts.signatureless_input)
        self.input_schema = metadata.get_input_schema()
        self.hinted = bool(getattr(metadata, "_is_signature_from_type_hint", lambda: False)())
        if not self.inputs:
            self.inputs = self.codec.metadata_inputs()
        if not self.outputs:
            self.outputs = self.codec.metadata_outputs()
        kind = "no" if self.codec.inputs is None else "a tensor" if self.codec.is_tensor else "a column"
        logger.info("model '%s': MLflow model from %s with %s signature; params: %s", self.name, path, kind,
                    ", ".join(self.codec.params) or "none")

    # -- V2 ----------------------------------------------------------------------------------------
    async def _predict(self, payload: InferenceRequest) -> InferenceResponse:
        if _tunneled(payload):
            return await self._modelhub(payload)
        data = self.codec.decode(payload)
        params = self.codec.decode_params(request_parameters(payload))
        outputs = self.codec.encode(await self._call(data, params))
        if payload.outputs:
            by_name = {o.name: o for o in outputs}
            outputs = [by_name[n] for n in wanted_outputs(payload, list(by_name), by_name)]
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=outputs)

    async def _call(self, data: Any, params: Optional[Dict[str, Any]]) -> Any:
        """The pyfunc call, in a thread; MLflow's own input errors become 400s."""
        from mlflow.exceptions import MlflowException

        try:
            return await asyncio.to_thread(self._predict_sync, data, params)
        except MlflowException as exc:
            if exc.get_http_status_code() < 500:
                raise BadRequest(f"the model rejected the input: {_mlflow_reason(exc)}") from None
            raise
        except ValueError as exc:  # the model's own input validation, as in the sklearn runtime
            raise BadRequest(f"the model rejected the input: {one_line(exc)}") from None

    def _predict_sync(self, data: Any, params: Optional[Dict[str, Any]]) -> Any:
        if params:
            return self.model.predict(data, params=params)
        return self.model.predict(data)

    # -- ModelHub's request shapes ----------------------------------------------------------------
    async def _modelhub(self, payload: InferenceRequest) -> InferenceResponse:
        """A ModelHub body the front door carried here (``frontdoor.patch_infer_endpoint``): its DataFrame to the
        pyfunc, the answer in ModelHub's envelope as the one output's JSON text (codecs/modelhub.py)."""
        from .codecs import modelhub

        inp = payload.inputs[0]
        raw = inp.data.root[0] if inp.data.root else b""
        upload = inp.parameters.content_type == modelhub.UPLOAD_BODY
        extra = payload.parameters.model_extra if payload.parameters is not None else None
        query_type = (extra or {}).get("inference_type")
        frame, meta, params = await asyncio.to_thread(self._modelhub_frame, raw, upload, query_type)
        result = await self._call(frame, params)
        try:
            body = await asyncio.to_thread(lambda: json.dumps(modelhub.envelope(result, meta), allow_nan=False))
        except modelhub.Unwritable as exc:
            raise BadRequest(str(exc)) from None
        out = ResponseOutput(name=modelhub.TUNNEL_INPUT, datatype="BYTES", shape=[1], data=[body.encode()])
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id, outputs=[out])

    def _modelhub_frame(self, raw: Any, upload: bool, query_type: Optional[str]):
        from .codecs import modelhub

        if upload:
            body: Any = raw if isinstance(raw, bytes) else str(raw).encode("latin-1")
        else:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"the body is not valid JSON ({one_line(exc)})") from None
        inputs, kind = modelhub.parse(body, upload, query_type)
        frame, meta = modelhub.to_frame(inputs, kind)
        given = inputs.get("parameters")
        params = None
        if given is not None and not isinstance(given, dict):
            raise BadRequest(f"'parameters' must be a JSON object, got {type(given).__name__}")
        if given and self.codec.params:  # ModelHub drops them; a model with a params schema gets them
            params = self.codec.decode_params(given)
        return frame, meta, params

    # -- MLflow's scoring protocol -----------------------------------------------------------------
    async def _invocations(self, body: Any) -> dict:
        """``{"dataframe_split" | "dataframe_records" | "instances" | "inputs": ..., "params": {...}}``
        answered with ``{"predictions": ...}``, as ``mlflow models serve`` does."""
        data, params = await asyncio.to_thread(self._parse_invocation, body)
        result = await self._call(data, params)
        return await asyncio.to_thread(_predictions, result)

    def _parse_invocation(self, body: Any) -> Tuple[Any, Optional[Dict[str, Any]]]:
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import infer_and_parse_data

        formats = " or ".join(f'"{f}"' for f in BODY_FORMATS)
        if not isinstance(body, dict):
            raise BadRequest(f"the body must be a JSON object with one of {formats}, "
                             f"got {type(body).__name__ if body is not None else 'nothing'}")
        given = [k for k in BODY_FORMATS if k in body]
        if len(given) != 1:
            got = f"got {', '.join(given)}" if given else f"got keys: {', '.join(map(str, body)) or 'none'}"
            raise BadRequest(f"the body must hold exactly one of {formats} ({got})")
        raw_params = body.get("params")
        if raw_params is not None and not isinstance(raw_params, dict):
            raise BadRequest(f'"params" must be a JSON object, got {type(raw_params).__name__}')
        params = self.codec.decode_params(raw_params)
        key = given[0]
        if self.hinted:  # a signature from type hints: mlflow passes "inputs" through as is
            if key != "inputs":
                raise BadRequest('this model\'s signature comes from type hints: send its data as "inputs"')
            return body["inputs"], params
        try:
            data = infer_and_parse_data({key: body[key]}, self.input_schema)
        except MlflowException as exc:
            raise BadRequest(f'cannot read "{key}": {_mlflow_reason(exc)}') from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BadRequest(f'cannot read "{key}": {one_line(exc)}') from None
        return data, params


def _tunneled(payload: InferenceRequest) -> bool:
    """A ModelHub body carried by the front door: one input named ``modelhub`` of its content type."""
    inputs = payload.inputs
    if len(inputs) != 1 or inputs[0].name != "modelhub" or inputs[0].parameters is None:
        return False
    return inputs[0].parameters.content_type in ("modelhub/json", "modelhub/upload")


def _load_pyfunc(name: str, path: Path):
    """The pyfunc model; an MLmodel that is not YAML is named with the line at fault."""
    import mlflow.pyfunc
    import yaml

    try:
        mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise ModelLoadError(name, f"{path / 'MLmodel'} is not valid YAML: {problem}{where}") from None
    pickled = pickled_flavors(mlmodel)
    if pickled:
        logger.warning("model '%s': %s is loaded with pickle (%s): that runs any code the files hold, so serve "
                       "only models you trust; skops (mlflow.sklearn.save_model(..., serialization_format="
                       "\"skops\"), mlflow 3's default) loads without running code", name, path, ", ".join(pickled))
    with MODEL_FILE_LOCK:
        return mlflow.pyfunc.load_model(str(path))


def pickled_flavors(mlmodel: Any) -> List[str]:
    """The flavours of an MLmodel that load their files with (cloud)pickle."""
    flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    found: List[str] = []
    for flavor, conf in (flavors.items() if isinstance(flavors, dict) else ()):
        if not isinstance(conf, dict):
            continue
        fmt = str(conf.get("serialization_format") or "")
        if fmt in ("pickle", "cloudpickle"):
            found.append(f"{flavor}: {fmt}")
        elif flavor == "python_function" and str(conf.get("python_model") or "").endswith((".pkl", ".pickle")):
            found.append(f"{flavor}: cloudpickled python_model")
    return found


def _mlflow_reason(exc: Exception) -> str:
    """MLflow's message on one line, without the data dump its schema errors start with."""
    msg = str(getattr(exc, "message", exc))
    if "Error: " in msg and ("Failed to enforce schema" in msg or "Failed to predict" in msg):
        msg = msg.rsplit("Error: ", 1)[1]
    lines = msg.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _predictions(result: Any) -> dict:
    """``{"predictions": ...}`` exactly as MLflow's scoring server writes it (NaN becomes null)."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = StringIO()
    predictions_to_json(result, out)
    return json.loads(out.getvalue(), parse_constant=lambda _: None)
