"""Runtimes loading from s3:// (a real moto S3 server) inside a real mlserver process."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import requests

from ..support.harness import Server, write_model
from ..support.models import IRIS_ROWS as ROWS
from ..support.runtimes import SKLEARN, predict, v2
from ..support.s3server import moto_s3


def s3_model(root, name, uri, **extra):
    params = {"uri": uri}
    if extra:
        params["extra"] = extra
    return write_model(root, name, {"implementation": SKLEARN, "parameters": params})


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("moto-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory, artifacts, s3):
    s3.put("iris/model.joblib", artifacts["iris_joblib"])
    s3.put("iris-folder/model.joblib", artifacts["iris_joblib"])
    s3.put("iris-folder/README.md", b"the iris model")
    s3.put("iris-folder/", b"")
    root = tmp_path_factory.mktemp("s3-models")
    cache = tmp_path_factory.mktemp("s3-cache")
    s3_model(root, "s3-file", "s3://models/iris/model.joblib")
    s3_model(root, "s3-prefix", "s3://models/iris-folder/")
    srv = Server(root, env={**s3.env, "MODELSERVE_CACHE_DIR": str(cache)})
    srv.cache = cache
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("model", ["s3-file", "s3-prefix"])
def test_model_from_s3_serves_the_right_predictions(s3_server, artifacts, model):
    expected = joblib.load(artifacts["iris_joblib"]).predict(np.array(ROWS)).tolist()
    assert predict(s3_server, model) == expected


def test_downloads_went_to_the_configured_cache(s3_server):
    files = {p.name for p in s3_server.cache.rglob("*") if p.is_file()}
    assert {"model.joblib", "README.md"} <= files


def test_missing_key_fails_its_load_naming_the_uri_and_others_keep_serving(s3_server):
    uri = "s3://models/iris/does-not-exist.joblib"
    s3_model(s3_server.root, "s3-missing", uri)
    r = s3_server.load("s3-missing")
    assert r.status_code >= 400
    assert uri in r.text and "not found" in r.text
    assert "Traceback" not in r.text
    r = requests.get(f"{s3_server.url}/v2/models/s3-missing/ready", timeout=10)
    assert r.status_code != 200
    assert predict(s3_server, "s3-file") and predict(s3_server, "s3-prefix")


def test_missing_bucket_fails_its_load_naming_the_bucket(s3_server):
    uri = "s3://no-such-bucket/iris/model.joblib"
    s3_model(s3_server.root, "s3-nobucket", uri)
    r = s3_server.load("s3-nobucket")
    assert r.status_code >= 400 and uri in r.text and "does not exist" in r.text
    assert predict(s3_server, "s3-file")


def test_reload_picks_up_a_new_object(s3_server, s3, artifacts):
    s3.put("swap/model.joblib", artifacts["iris_joblib"])
    s3_model(s3_server.root, "s3-swap", "s3://models/swap/")
    r = s3_server.load("s3-swap")
    assert r.status_code == 200, r.text
    assert predict(s3_server, "s3-swap", outputs=["predict_proba"])  # a LogisticRegression has it
    s3.put("swap/model.joblib", artifacts["svc"])  # an SVC does not
    r = s3_server.load("s3-swap")
    assert r.status_code == 200, r.text
    r = s3_server.infer("s3-swap", v2(ROWS, outputs=["predict_proba"]))
    assert r.status_code == 400 and "decision_function" in r.text, r.text
    assert predict(s3_server, "s3-file")


def test_download_progress_shows_in_the_server_log(s3_server):
    log = s3_server.log()
    assert "downloading s3://models/iris/model.joblib" in log
    assert "downloaded s3://models/iris-folder/" in log


def test_mlflow_model_folder_from_an_s3_prefix(s3_server, s3, tmp_path_factory):
    """An MLmodel folder mirrored from s3://bucket/prefix/ and served by MLflowRuntime."""
    from ..support.mlflow_models import MLFLOW, build

    folder = build(tmp_path_factory.mktemp("mlflow-art"))["columns"]
    for f in folder.rglob("*"):
        if f.is_file():
            s3.put(f"mlflow-iris/{f.relative_to(folder).as_posix()}", f)
    write_model(s3_server.root, "s3-mlflow", {"implementation": MLFLOW,
                                             "parameters": {"uri": "s3://models/mlflow-iris/",
                                                            "extra": {"root_invocations": False}}})
    r = s3_server.load("s3-mlflow")
    assert r.status_code == 200, r.text
    cols = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    inputs = [{"name": c, "shape": [3], "datatype": "FP64", "data": [row[i] for row in ROWS]}
              for i, c in enumerate(cols)]
    r = s3_server.infer("s3-mlflow", {"inputs": inputs})
    assert r.status_code == 200, r.text
    import mlflow.pyfunc
    import pandas as pd

    direct = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame(ROWS, columns=cols))
    assert r.json()["outputs"][0]["data"] == np.asarray(direct).tolist()
