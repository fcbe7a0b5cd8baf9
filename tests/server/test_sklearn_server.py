"""SKLearnRuntime behind a real mlserver process, over HTTP (V2, V1) and gRPC."""

from __future__ import annotations

import concurrent.futures as cf

import joblib
import numpy as np
import pytest
import requests

from ..support.harness import grpc
from ..support.models import IRIS_ROWS as ROWS, iris_xy
from ..support.runtimes import output, v2


def test_predict_gives_int64_class_ids_equal_to_the_model(any_server, artifacts):
    model = joblib.load(artifacts["iris_joblib"])
    r = any_server.infer("iris", v2(ROWS))
    assert r.status_code == 200, r.text
    o = output(r.json(), "predict")
    assert o["datatype"] == "INT64" and o["shape"] == [3]
    assert o["data"] == model.predict(np.array(ROWS)).tolist()


def test_requested_outputs_pick_the_methods(server, artifacts):
    model = joblib.load(artifacts["iris_joblib"])
    r = server.infer("iris", v2(ROWS, outputs=["predict_proba", "decision_function", "predict"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [o["name"] for o in body["outputs"]] == ["predict_proba", "decision_function", "predict"]
    proba = output(body, "predict_proba")
    assert proba["datatype"] == "FP64" and proba["shape"] == [3, 3]
    np.testing.assert_allclose(np.array(proba["data"]).reshape(3, 3), model.predict_proba(np.array(ROWS)))
    np.testing.assert_allclose(np.array(output(body, "decision_function")["data"]).reshape(3, 3),
                               model.decision_function(np.array(ROWS)))


def test_log_proba_and_transform(server, artifacts):
    pca = joblib.load(artifacts["pca"])
    r = server.infer("pca", v2(ROWS))  # a transformer's default output is transform
    assert r.status_code == 200, r.text
    o = output(r.json(), "transform")
    assert o["shape"] == [3, 2]
    np.testing.assert_allclose(np.array(o["data"]).reshape(3, 2), pca.transform(np.array(ROWS)))
    lr = joblib.load(artifacts["iris_joblib"])
    r = server.infer("iris", v2(ROWS, outputs=["predict_log_proba"]))
    np.testing.assert_allclose(np.array(output(r.json(), "predict_log_proba")["data"]).reshape(3, 3),
                               lr.predict_log_proba(np.array(ROWS)))


def test_float32_input_and_regressor_output_fp64(server, artifacts):
    reg = joblib.load(artifacts["regressor"])
    rows = [r[:3] for r in ROWS]
    r = server.infer("regressor", v2(rows, datatype="FP32"))
    assert r.status_code == 200, r.text
    o = output(r.json(), "predict")
    assert o["datatype"] == "FP64" and o["shape"] == [3]
    np.testing.assert_allclose(o["data"], reg.predict(np.array(rows, dtype=np.float32)), rtol=1e-6)


def test_output_the_estimator_lacks_is_a_400_naming_its_methods(any_server):
    r = any_server.infer("svc", v2(ROWS, outputs=["predict_proba"]))
    assert r.status_code == 400
    err = r.json()["error"]
    assert "predict_proba" in err and "predict, decision_function" in err
    assert "Traceback" not in r.text


def test_dataframe_model_takes_named_columns_and_returns_string_labels(any_server, artifacts):
    pipe = joblib.load(artifacts["iris_df"])
    X, _ = iris_xy(frame=True)
    df = X.iloc[[0, 60, 120]].copy()
    df["colour"] = ["red", "green", "blue"]
    inputs = [{"name": c, "shape": [3], "datatype": "FP64", "data": df[c].tolist()} for c in X.columns]
    inputs.append({"name": "colour", "shape": [3], "datatype": "BYTES", "data": df["colour"].tolist()})
    r = any_server.infer("iris-df", {"inputs": inputs, "outputs": [{"name": "predict"}, {"name": "predict_proba"}]})
    assert r.status_code == 200, r.text
    o = output(r.json(), "predict")
    assert o["datatype"] == "BYTES"
    assert o["data"] == pipe.predict(df).tolist() == ["setosa", "versicolor", "virginica"]
    np.testing.assert_allclose(np.array(output(r.json(), "predict_proba")["data"]).reshape(3, 3),
                               pipe.predict_proba(df))


def test_dataframe_model_with_a_missing_or_extra_column_is_a_400_naming_it(any_server):
    X, _ = iris_xy(frame=True)
    inputs = [{"name": c, "shape": [1], "datatype": "FP64", "data": [1.0]} for c in X.columns]
    r = any_server.infer("iris-df", {"inputs": inputs})
    assert r.status_code == 400 and "missing column(s): colour" in r.json()["error"]
    inputs.append({"name": "colour", "shape": [1], "datatype": "BYTES", "data": ["red"]})
    inputs.append({"name": "weight", "shape": [1], "datatype": "FP64", "data": [1.0]})
    r = any_server.infer("iris-df", {"inputs": inputs})
    assert r.status_code == 400 and "unknown column(s): weight" in r.json()["error"]


def test_pandas_codec_request_is_accepted(server, artifacts):
    # What mlserver.codecs.PandasCodec.encode_request writes (built by hand: importing mlserver here
    # would clash with tritonclient's copy of the same gRPC protos in this process).
    X, _ = iris_xy(frame=True)
    df = X.iloc[[0, 120]].copy()
    inputs = [{"name": c, "shape": [2, 1], "datatype": "FP64", "data": df[c].tolist()} for c in X.columns]
    inputs.append({"name": "colour", "shape": [2, 1], "datatype": "BYTES", "data": ["red", "blue"],
                   "parameters": {"content_type": "str"}})
    r = server.infer("iris-df", {"parameters": {"content_type": "pd"}, "inputs": inputs})
    assert r.status_code == 200, r.text
    assert output(r.json(), "predict")["data"] == ["setosa", "virginica"]


def test_pickle_and_skops_files_load(server, artifacts):
    for name in ("iris-pickle", "iris-skops", "forest-skops"):
        r = server.infer(name, v2(ROWS))
        assert r.status_code == 200, (name, r.text)
        assert output(r.json(), "predict")["data"] == [0, 2, 1], name


def test_metadata_lists_inputs_and_outputs(server):
    md = requests.get(f"{server.url}/v2/models/iris", timeout=10).json()
    assert md["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    names = {o["name"]: o for o in md["outputs"]}
    assert set(names) == {"predict", "predict_proba", "predict_log_proba", "decision_function"}
    assert names["predict"]["datatype"] == "INT64" and names["predict_proba"]["shape"] == [-1, 3]
    md = requests.get(f"{server.url}/v2/models/iris-df", timeout=10).json()
    assert [i["name"] for i in md["inputs"]][-1] == "colour"
    assert {o["name"]: o for o in md["outputs"]}["predict"]["datatype"] == "BYTES"


def test_grpc_infer_and_metadata(any_server, artifacts):
    model = joblib.load(artifacts["iris_joblib"])
    x = np.array(ROWS, dtype=np.float32)
    res = grpc(any_server, "infer", "iris", [("input-0", x, "FP32")], outputs=["predict", "predict_proba"])
    o = res["outputs"]
    assert o["predict"]["datatype"] == "INT64" and o["predict"]["data"] == model.predict(x).tolist()
    np.testing.assert_allclose(np.array(o["predict_proba"]["data"]).reshape(3, 3), model.predict_proba(x), rtol=1e-6)
    md = grpc(any_server, "metadata", "iris")
    assert md["inputs"] == [["input-0", "FP64", [-1, 4]]]
    # a bad request over gRPC is INVALID_ARGUMENT with the same one-line reason
    err = grpc(any_server, "infer", "iris", [("input-0", np.ones((1, 3), dtype=np.float32), "FP32")])["error"]
    assert err["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "expected 4 features per row, got 3" in err["message"] and "Traceback" not in err["message"]


def test_grpc_string_labels(server):
    X, _ = iris_xy(frame=True)
    inputs = [(c, X[c].to_numpy()[[0, 120]], "FP64") for c in X.columns]
    inputs.append(("colour", np.array(["red", "blue"], dtype=object), "BYTES"))
    res = grpc(server, "infer", "iris-df", inputs, outputs=["predict"])
    assert res["outputs"]["predict"] == {"datatype": "BYTES", "shape": [2], "data": ["setosa", "virginica"]}


def test_http_tritonclient(server, artifacts):
    import tritonclient.http as httpclient

    model = joblib.load(artifacts["iris_joblib"])
    client = httpclient.InferenceServerClient(server.url.replace("http://", ""))
    x = np.array(ROWS, dtype=np.float64)
    inp = httpclient.InferInput("input-0", list(x.shape), "FP64")
    inp.set_data_from_numpy(x, binary_data=False)
    res = client.infer("iris", [inp], outputs=[httpclient.InferRequestedOutput("predict", binary_data=False)])
    assert res.as_numpy("predict").tolist() == model.predict(x).tolist()


def test_v1_protocol_predict_and_status(any_server, artifacts):
    model = joblib.load(artifacts["iris_joblib"])
    r = requests.post(f"{any_server.url}/v1/models/iris:predict", json={"instances": ROWS}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": model.predict(np.array(ROWS)).tolist()}
    assert requests.get(f"{any_server.url}/v1/models/iris", timeout=10).json() == {"name": "iris", "ready": True}
    # objects become named columns for a DataFrame model
    X, _ = iris_xy(frame=True)
    inst = [{**X.iloc[0].to_dict(), "colour": "red"}, {**X.iloc[120].to_dict(), "colour": "blue"}]
    r = requests.post(f"{any_server.url}/v1/models/iris-df:predict", json={"instances": inst}, timeout=30)
    assert r.json() == {"predictions": ["setosa", "virginica"]}


def test_v1_bad_bodies_are_400(any_server):
    url = f"{any_server.url}/v1/models/iris:predict"
    cases = {
        b"not json": "not valid JSON",
        b'{"rows": [[1,2,3,4]]}': '"instances"',
        b'{"instances": []}': "non-empty list",
        b'{"instances": [[1,2,3,4],[1,2]]}': "ragged",
        b'{"instances": [[1,2,3]]}': "expected 4 features per row, got 3",
    }
    for body, needle in cases.items():
        r = requests.post(url, data=body, timeout=10)
        assert r.status_code == 400, (body, r.text)
        assert needle in r.json()["error"], (body, r.text)
    assert requests.get(f"{any_server.url}/v1/models/nope", timeout=10).status_code == 404


@pytest.mark.parametrize("model", ["iris-batched", "iris"])
def test_concurrent_requests_of_different_sizes_get_their_own_rows(any_server, artifacts, model):
    """Adaptive batching (iris-batched) and our coalescing (iris) both merge requests; each gets its rows."""
    lr = joblib.load(artifacts["iris_joblib"])
    X, _ = iris_xy()
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(48):
        n = int(rng.integers(1, 7))
        start = int(rng.integers(0, len(X) - n))
        jobs.append(X[start:start + n])

    def call(rows):
        r = any_server.infer(model, v2(rows.tolist(), outputs=["predict", "predict_proba"]))
        assert r.status_code == 200, r.text
        return r.json()

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs))
    for rows, body in zip(jobs, results):
        assert output(body, "predict")["shape"] == [len(rows)]
        assert output(body, "predict")["data"] == lr.predict(rows).tolist()
        np.testing.assert_allclose(np.array(output(body, "predict_proba")["data"]).reshape(len(rows), 3),
                                   lr.predict_proba(rows))
