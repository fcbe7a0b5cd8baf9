"""The custom-image way: no model-settings.json, the model named by MLSERVER_MODEL_* variables alone."""

import shutil

import joblib
import numpy as np

from ..support.harness import Server


def test_model_served_from_environment_variables_only(tmp_path, artifacts):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(artifacts["iris_joblib"], tmp_path / "model.joblib")
    env = {
        "MLSERVER_MODEL_IMPLEMENTATION": "modelserve.sklearn.SKLearnRuntime",
        "MLSERVER_MODEL_NAME": "iris-env",
        "MLSERVER_MODEL_URI": str(tmp_path / "model.joblib"),
        "MLSERVER_MODEL_EXTRA": '{"default_outputs": ["predict_proba"]}',
    }
    srv = Server(models, parallel_workers=0, env=env).start()
    try:
        rows = [[5.1, 3.5, 1.4, 0.2]]
        r = srv.infer("iris-env", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": rows[0]}]})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["name"] == "predict_proba"
        np.testing.assert_allclose(out["data"], joblib.load(artifacts["iris_joblib"]).predict_proba(np.array(rows))[0])
    finally:
        srv.stop()
