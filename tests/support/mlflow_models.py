"""Tiny real MLflow models (built offline from iris) and the model folders that serve them."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Dict

import numpy as np

from .harness import write_model
from .models import iris_xy

MLFLOW = "modelserve.mlflow.MLflowRuntime"

# A models-from-code PythonModel: mlflow stores this file, so the server needs no import of the tests.
PARAMS_MODEL_CODE = '''
import mlflow
import pandas as pd


class Scaled(mlflow.pyfunc.PythonModel):
    """total = (a + b) * scale, or a * b * scale with mode="product"; label echoes the mode."""

    def predict(self, context, model_input, params=None):
        params = params or {}
        scale = float(params.get("scale", 1.0))
        mode = params.get("mode", "sum")
        a = model_input["a"].astype(float)
        b = model_input["b"].astype(float)
        total = (a * b if mode == "product" else a + b) * scale
        return pd.DataFrame({"total": total.to_numpy(), "label": [mode] * len(model_input)})


mlflow.models.set_model(Scaled())
'''

# Named tensors in, a dict of arrays out (a tensor signature built from dicts).
DICT_MODEL_CODE = '''
import mlflow
import numpy as np


class Weighted(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input["x"], dtype=np.float32)
        w = np.asarray(model_input["w"], dtype=np.float32)
        return {"weighted": (x * w).sum(axis=1), "count": np.full(len(x), x.shape[1], dtype=np.int64)}


mlflow.models.set_model(Weighted())
'''

# Returns its input as is: for checking how each signature type is decoded (and encoded back).
ECHO_MODEL_CODE = '''
import mlflow


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Echo())
'''

# ModelHub pyfuncs, written as for ModelHub (no signature, a DataFrame in): "describe" answers what it was given
# (one row: the columns, the row count, each column's first value's type and the params); "embedder" answers
# ModelHub's embedding column (one vector per text, [len(text), words]).
MODELHUB_MODEL_CODE = '''
import json

import mlflow
import pandas as pd


class Describe(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        df = model_input
        first = {str(c): df[c].iloc[0] for c in df.columns}
        return pd.DataFrame({
            "columns": [json.dumps([str(c) for c in df.columns])],
            "rows": [len(df)],
            "types": [json.dumps({c: type(v).__name__ for c, v in first.items()})],
            "lengths": [json.dumps({c: len(v) for c, v in first.items() if isinstance(v, (str, bytes, list))})],
            "params": [json.dumps(params)],
        })


mlflow.models.set_model(Describe())
'''

EMBEDDER_MODEL_CODE = '''
import json

import mlflow
import pandas as pd


class Embedder(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        texts = model_input["texts"].iloc[0]
        return pd.DataFrame({"embeddings": [json.dumps([[float(len(t)), float(len(t.split()))] for t in texts])]})


mlflow.models.set_model(Embedder())
'''

_lock = threading.Lock()
_built: Dict[str, Path] = {}


def params_frame():
    import pandas as pd

    return pd.DataFrame({"a": [1.0, 2.0, 3.5], "b": [4.0, 0.5, -1.0]})


def dict_inputs():
    return {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "w": np.ones((2, 3), dtype=np.float32)}


def echo_frame():
    """One column of each signature type the V2 decoding handles."""
    import pandas as pd

    return pd.DataFrame({
        "text": ["a", "b"],
        "count": np.array([1, 2], dtype=np.int32),
        "flag": [True, False],
        "vector": [[1.0, 2.0], [3.0, 4.0]],
        "when": pd.to_datetime(["2024-01-01", "2024-02-01"]),
        "extra": [{"k": 1}, {"k": 2}],
    })


def _save(target: Path, save) -> Path:
    """Saves into a temporary folder renamed into place, so a half-built model is never reused."""
    if (target / "MLmodel").is_file():
        return target
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def build(artdir: Path) -> Dict[str, Path]:
    """Every MLflow model folder the tests use, built once per process (the first artdir wins)."""
    with _lock:
        if _built:
            return dict(_built)
        import mlflow.pyfunc
        import mlflow.sklearn
        import pandas as pd
        from mlflow.models import infer_signature
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        artdir = Path(artdir)
        artdir.mkdir(parents=True, exist_ok=True)
        Xf, y = iris_xy(frame=True)
        X, _ = iris_xy()

        # (a) columns: a scaler + logistic regression pipeline fitted on the iris DataFrame
        columns = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(Xf, y)
        _built["columns"] = _save(artdir / "columns", lambda p: mlflow.sklearn.save_model(
            columns, p, signature=infer_signature(Xf, columns.predict(Xf))))

        # (b) tensor: float32 features, class probabilities out
        X32 = X.astype(np.float32)
        tensor = LogisticRegression(max_iter=500).fit(X32, y)
        _built["tensor"] = _save(artdir / "tensor", lambda p: mlflow.sklearn.save_model(
            tensor, p, pyfunc_predict_fn="predict_proba",
            signature=infer_signature(X32, tensor.predict_proba(X32))))

        # (c) params: a PythonModel whose output depends on scale and mode, two output columns
        code = artdir / "params_model.py"
        code.write_text(PARAMS_MODEL_CODE)
        frame = params_frame()
        out = pd.DataFrame({"total": frame["a"] + frame["b"], "label": ["sum"] * len(frame)})
        _built["params"] = _save(artdir / "params", lambda p: mlflow.pyfunc.save_model(
            p, python_model=str(code),
            signature=infer_signature(frame, out, params={"scale": 1.0, "mode": "sum"})))

        # (d) a dict of named tensors in, a dict out
        code = artdir / "dict_model.py"
        code.write_text(DICT_MODEL_CODE)
        inputs = dict_inputs()
        outputs = {"weighted": inputs["x"].sum(axis=1), "count": np.full(2, 3, dtype=np.int64)}
        _built["dict"] = _save(artdir / "dict", lambda p: mlflow.pyfunc.save_model(
            p, python_model=str(code), signature=infer_signature(inputs, outputs)))

        # (e) every column type the V2 decoding handles, echoed back; (f) no signature at all
        code = artdir / "echo_model.py"
        code.write_text(ECHO_MODEL_CODE)
        echo = echo_frame()
        _built["echo"] = _save(artdir / "echo", lambda p: mlflow.pyfunc.save_model(
            p, python_model=str(code), signature=infer_signature(echo, echo)))
        _built["nosig"] = _save(artdir / "nosig", lambda p: mlflow.pyfunc.save_model(
            p, python_model=str(code)))
        # (g) ModelHub's pyfuncs: no signature, DataFrames in
        for key, source in (("describe", MODELHUB_MODEL_CODE), ("embedder", EMBEDDER_MODEL_CODE)):
            code = artdir / f"{key}_model.py"
            code.write_text(source)
            _built[key] = _save(artdir / key, lambda p, c=code: mlflow.pyfunc.save_model(p, python_model=str(c)))
        return dict(_built)


# model name -> (artefact, options). mlflow-columns alone claims the bare /invocations, so that the
# tests know which model answers it (MLServer loads models concurrently: the first loaded would win).
SERVED = {
    "mlflow-columns": ("columns", {}),
    "mlflow-tensor": ("tensor", {"root_invocations": False}),
    "mlflow-params": ("params", {"root_invocations": False}),
    # ModelHub's shapes (tests/server/test_modelhub_server.py)
    "modelhub-describe": ("describe", {"root_invocations": False}),
    "modelhub-embedder": ("embedder", {"root_invocations": False}),
    "mlflow-nosig-frame": ("nosig", {"root_invocations": False, "signatureless_input": "dataframe"}),
}


def mlflow_models(root: Path, artdir: Path) -> None:
    """Writes the MLflow model folders that every server fixture serves into ``root``."""
    built = build(artdir)
    for name, (key, extra) in SERVED.items():
        params = {"uri": "./model", **({"extra": extra} if extra else {})}
        write_model(root, name, {"implementation": MLFLOW, "parameters": params}, {"model": built[key]})
    write_model(root, "modelhub-batched", {"implementation": MLFLOW, "max_batch_size": 4, "max_batch_time": 0.05,
                                           "parameters": {"uri": "./model", "extra": {"root_invocations": False}}},
                {"model": built["describe"]})
