"""The server that the reliability tests and `benchmarks/reliability.py` share: one mlserver with an sklearn,
an MLflow and a MiniLM embedding model, built offline.

Default parallel workers for sklearn and MLflow (MLServer's default mode) and MiniLM in the main process
(model-level ``parallel_workers: 0``), where the OpenAI routes reach it: one server covers both modes and
every protocol (V2 REST and gRPC, V1, OpenAI, MLflow's /invocations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .harness import Server, write_model

SKLEARN = "modelserve.sklearn.SKLearnRuntime"
MLFLOW = "modelserve.mlflow.MLflowRuntime"
HF = "modelserve.huggingface.HuggingFaceRuntime"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
GOOD_V2 = {
    "iris": {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]},
    "iris-mlflow": {"inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [v]}
                               for c, v in zip(COLUMNS, IRIS_ROW)]},
    "minilm": {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello world"]}]},
}


def build_artefacts(out: Path) -> dict:
    """iris as a joblib LogisticRegression and as an MLflow (skops) model; MiniLM from its PyPI package."""
    import joblib
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from .hf_models import minilm_dir
    from .models import iris_xy

    out.mkdir(parents=True, exist_ok=True)
    X, y = iris_xy()
    Xf, _ = iris_xy(frame=True)
    arts = {"iris": out / "iris.joblib", "iris-mlflow": out / "iris-mlflow", "minilm": minilm_dir()}
    if not arts["iris"].exists():
        joblib.dump(LogisticRegression(max_iter=500).fit(X, y), arts["iris"])
    if not (arts["iris-mlflow"] / "MLmodel").exists():
        model = LogisticRegression(max_iter=500).fit(Xf, y)
        mlflow.sklearn.save_model(model, str(arts["iris-mlflow"]), signature=infer_signature(Xf, model.predict(Xf)))
    return arts


def write_models(root: Path, arts: dict, extra: Optional[dict] = None) -> None:
    """The three models; ``extra`` adds options (``parameters.extra``) to each, e.g. request_timeout."""
    extra = extra or {}
    write_model(root, "iris", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib", "extra": extra}},
                {"model.joblib": arts["iris"]})
    write_model(root, "iris-mlflow", {"implementation": MLFLOW, "parameters": {"uri": "./model", "extra": extra}},
                {"model": arts["iris-mlflow"]})
    write_model(root, "minilm", {"implementation": HF, "parallel_workers": 0,
                                 "parameters": {"uri": str(arts["minilm"]), "extra": extra}})


def start(root: Path, arts: dict, env: Optional[dict] = None, **kw) -> Server:
    write_models(root, arts)
    return Server(root, env={**OFFLINE, **(env or {})}, **kw).start(timeout=240)


# A models-from-code MLflow model that sleeps for its ``sleep`` param (in a thread, as every pyfunc call runs):
# the slow request of the timeout and shutdown tests. mlflow stores this file; the server imports no test code.
SLEEPY_CODE = """
import time

import mlflow
import pandas as pd


class Sleepy(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        time.sleep(float((params or {}).get("sleep", 0.0)))
        return pd.DataFrame({"y": model_input["x"] * 2})


mlflow.models.set_model(Sleepy())
"""


def build_sleepy(out: Path) -> Path:
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    target = out / "sleepy"
    if not (target / "MLmodel").exists():
        out.mkdir(parents=True, exist_ok=True)
        code = out / "sleepy_model.py"
        code.write_text(SLEEPY_CODE)
        frame = pd.DataFrame({"x": [1.0, 2.0]})
        mlflow.pyfunc.save_model(str(target), python_model=str(code),
                                 signature=infer_signature(frame, frame.rename(columns={"x": "y"}),
                                                           params={"sleep": 0.0}))
    return target


def sleepy_request(sleep: float) -> dict:
    return {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}],
            "parameters": {"sleep": sleep}}
