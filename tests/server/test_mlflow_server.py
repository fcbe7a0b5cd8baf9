"""MLflowRuntime behind a real mlserver process: V2 over HTTP and gRPC, metadata, /invocations, V1, errors."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import requests

from ..support.mlflow_models import params_frame
from ..support.harness import grpc
from ..support.models import iris_xy
from ..support.runtimes import output

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@lru_cache(maxsize=None)
def pyfunc(path: str):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(path)


def direct(server, model: str, data, params=None):
    """The model's own answer, from the very folder the server loaded."""
    return pyfunc(str(server.root / model / "model")).predict(data, params=params)


def iris_frame(rows=slice(40, 110, 7)):
    Xf, _ = iris_xy(frame=True)
    return Xf.iloc[rows].reset_index(drop=True)


def columns_body(frame, **extra) -> dict:
    inputs = [{"name": c, "datatype": "FP64", "shape": [len(frame)], "data": frame[c].tolist()} for c in frame]
    return {"inputs": inputs, **extra}


def post(server, path: str, body=None, **kw) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=30, **kw)


def assert_4xx(r: requests.Response, *words: str) -> str:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "Traceback" not in r.text
    err = r.json()["error"]
    assert "\n" not in err
    for w in words:
        assert w in err, err
    return err


# -- V2 over HTTP ------------------------------------------------------------------------------------
def test_column_model_over_http_equals_direct_predict(any_server):
    frame = iris_frame()
    r = any_server.infer("mlflow-columns", columns_body(frame))
    assert r.status_code == 200, r.text
    o = output(r.json(), "predict")
    assert o["datatype"] == "INT64" and o["shape"] == [len(frame)]
    assert o["data"] == direct(any_server, "mlflow-columns", frame).tolist()


def test_tensor_model_over_http_equals_direct_predict(any_server):
    X, _ = iris_xy()
    rows = X[::25]
    body = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.reshape(-1).tolist()}]}
    r = any_server.infer("mlflow-tensor", body)
    assert r.status_code == 200, r.text
    o = output(r.json(), "predict")
    assert o["datatype"] == "FP32" and o["shape"] == [len(rows), 3]
    expected = direct(any_server, "mlflow-tensor", rows.astype(np.float32))
    np.testing.assert_allclose(np.array(o["data"]).reshape(o["shape"]), expected, rtol=1e-6)


def test_params_come_from_the_request_parameters(any_server):
    frame = params_frame()
    body = columns_body(frame, parameters={"scale": 0.5, "mode": "product"})
    r = any_server.infer("mlflow-params", body)
    assert r.status_code == 200, r.text
    resp = r.json()
    assert [o["name"] for o in resp["outputs"]] == ["total", "label"]  # one output per DataFrame column
    expected = direct(any_server, "mlflow-params", frame, {"scale": 0.5, "mode": "product"})
    assert output(resp, "total")["data"] == expected["total"].tolist() == [2.0, 0.5, -1.75]
    assert output(resp, "label")["datatype"] == "BYTES" and output(resp, "label")["data"] == ["product"] * 3
    r = any_server.infer("mlflow-params", columns_body(frame))  # no parameters: the schema's defaults
    assert output(r.json(), "total")["data"] == (frame["a"] + frame["b"]).tolist()


# -- V2 over gRPC (tests.support.harness.grpc runs tritonclient in its own interpreter) ---------------------
def test_column_model_over_grpc_equals_direct_predict(any_server):
    frame = iris_frame()
    inputs = [(c, frame[c].to_numpy(np.float64), "FP64") for c in COLUMNS]
    res = grpc(any_server, "infer", "mlflow-columns", inputs)
    o = res["outputs"]["predict"]
    assert o["datatype"] == "INT64" and o["shape"] == [len(frame)]
    assert o["data"] == direct(any_server, "mlflow-columns", frame).tolist()


def test_tensor_model_over_grpc_equals_direct_predict(any_server):
    X, _ = iris_xy()
    rows = X[::30].astype(np.float32)
    o = grpc(any_server, "infer", "mlflow-tensor", [("input-0", rows, "FP32")])["outputs"]["predict"]
    assert o["datatype"] == "FP32" and o["shape"] == [len(rows), 3]
    expected = direct(any_server, "mlflow-tensor", rows)
    np.testing.assert_allclose(np.array(o["data"]).reshape(o["shape"]), expected, rtol=1e-6)


def test_params_over_grpc(any_server):
    frame = params_frame()
    inputs = [(c, frame[c].to_numpy(np.float64), "FP64") for c in ("a", "b")]
    res = grpc(any_server, "infer", "mlflow-params", inputs, {"scale": 2, "mode": "product"})["outputs"]
    assert res["total"]["data"] == [8.0, 2.0, -7.0]
    assert res["label"] == {"datatype": "BYTES", "shape": [3], "data": ["product"] * 3}
    # MLServer's gRPC parameters have no float: a float param travels as text
    res = grpc(any_server, "infer", "mlflow-params", inputs, {"scale": "0.5"})["outputs"]
    assert res["total"]["data"] == (0.5 * (frame["a"] + frame["b"])).tolist()


def test_a_float_param_over_grpc_is_a_400_saying_to_send_text(any_server):
    frame = params_frame()
    inputs = [(c, frame[c].to_numpy(np.float64), "FP64") for c in ("a", "b")]
    err = grpc(any_server, "infer", "mlflow-params", inputs, {"scale": 0.5})["error"]
    assert err["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "parameter 'scale' has no value" in err["message"] and "as a string" in err["message"]


def test_a_wrong_datatype_over_grpc_is_invalid_argument_without_traceback(any_server):
    frame = iris_frame()
    inputs = [("sepal_length", np.array(["x"] * len(frame)), "BYTES")]
    inputs += [(c, frame[c].to_numpy(np.float64), "FP64") for c in COLUMNS[1:]]
    err = grpc(any_server, "infer", "mlflow-columns", inputs)["error"]
    assert err["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "input 'sepal_length': expected double" in err["message"] and "Traceback" not in err["message"]


def test_a_wrong_input_name_over_grpc_is_invalid_argument(any_server):
    frame = iris_frame()
    inputs = [(c.upper(), frame[c].to_numpy(np.float64), "FP64") for c in COLUMNS]
    err = grpc(any_server, "infer", "mlflow-columns", inputs)["error"]
    assert err["status"] == "StatusCode.INVALID_ARGUMENT" and "unknown input 'SEPAL_LENGTH'" in err["message"]


def test_grpc_metadata_comes_from_the_signature(any_server):
    meta = grpc(any_server, "metadata", "mlflow-tensor")
    assert meta == {"inputs": [["input-0", "FP32", [-1, 4]]], "outputs": [["predict", "FP32", [-1, 3]]]}


# -- V2 metadata -------------------------------------------------------------------------------------
def test_v2_metadata_comes_from_the_signature(any_server):
    def meta(model):
        r = requests.get(f"{any_server.url}/v2/models/{model}", timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        return ([(t["name"], t["datatype"], t["shape"]) for t in body["inputs"]],
                [(t["name"], t["datatype"], t["shape"]) for t in body["outputs"]])

    assert meta("mlflow-columns") == ([(c, "FP64", [-1]) for c in COLUMNS], [("predict", "INT64", [-1])])
    assert meta("mlflow-tensor") == ([("input-0", "FP32", [-1, 4])], [("predict", "FP32", [-1, 3])])
    assert meta("mlflow-params") == ([("a", "FP64", [-1]), ("b", "FP64", [-1])],
                                     [("total", "FP64", [-1]), ("label", "BYTES", [-1])])


# -- MLflow's scoring protocol -----------------------------------------------------------------------
def test_invocations_accept_the_four_body_formats(any_server):
    frame = iris_frame()
    expected = {"predictions": direct(any_server, "mlflow-columns", frame).tolist()}
    bodies = {
        "dataframe_split": frame.to_dict(orient="split", index=False),
        "dataframe_records": frame.to_dict(orient="records"),
        "instances": frame.to_dict(orient="records"),
        "inputs": frame.to_dict(orient="list"),
    }
    for key, data in bodies.items():
        # the bare path belongs to mlflow-columns: the other MLflow models set root_invocations=false
        for path in ("/invocations", "/models/mlflow-columns/invocations"):
            r = post(any_server, path, {key: data})
            assert r.status_code == 200, (key, path, r.text)
            assert r.json() == expected, (key, path)


def test_invocations_take_params(any_server):
    frame = params_frame()
    body = {"dataframe_records": frame.to_dict(orient="records"), "params": {"scale": 2.0}}
    r = post(any_server, "/models/mlflow-params/invocations", body)
    assert r.status_code == 200, r.text
    expected = direct(any_server, "mlflow-params", frame, {"scale": 2.0})
    assert r.json() == {"predictions": expected.to_dict(orient="records")}


def test_invocations_on_a_tensor_model(any_server):
    X, _ = iris_xy()
    r = post(any_server, "/models/mlflow-tensor/invocations", {"instances": X[:3].tolist()})
    assert r.status_code == 200, r.text
    expected = direct(any_server, "mlflow-tensor", X[:3].astype(np.float32))
    np.testing.assert_allclose(r.json()["predictions"], expected, rtol=1e-6)


def test_v1_predict_with_column_objects(any_server):
    frame = iris_frame(slice(0, 3))
    r = post(any_server, "/v1/models/mlflow-columns:predict", {"instances": frame.to_dict(orient="records")})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": direct(any_server, "mlflow-columns", frame).tolist()}


# -- caller errors: 4xx, one line naming the problem, no traceback ------------------------------------
def test_a_wrong_input_name_is_a_400_naming_it(any_server):
    body = columns_body(iris_frame())
    body["inputs"][0]["name"] = "sepal_len"
    assert_4xx(any_server.infer("mlflow-columns", body), "unknown input 'sepal_len'", "sepal_length")


def test_a_missing_column_is_a_400_naming_it(any_server):
    body = columns_body(iris_frame())
    del body["inputs"][3]
    assert_4xx(any_server.infer("mlflow-columns", body), "missing input 'petal_width'")


def test_a_wrong_datatype_is_a_400_naming_input_and_type(any_server):
    body = columns_body(iris_frame(slice(0, 2)))
    body["inputs"][1] = {"name": "sepal_width", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
    assert_4xx(any_server.infer("mlflow-columns", body), "input 'sepal_width': expected double", "BYTES")


def test_a_wrong_tensor_shape_is_a_400(any_server):
    body = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    assert_4xx(any_server.infer("mlflow-tensor", body), "expected shape [-1, 4]", "[1, 3]")


def test_an_unknown_param_is_a_400_listing_the_known_ones(any_server):
    body = columns_body(params_frame(), parameters={"temperature": 0.1})
    assert_4xx(any_server.infer("mlflow-params", body), "unknown parameter 'temperature'", "scale, mode")


def test_a_param_of_the_wrong_type_is_a_400(any_server):
    body = columns_body(params_frame(), parameters={"scale": "twice"})
    assert_4xx(any_server.infer("mlflow-params", body), "parameter 'scale': expected double")


@pytest.mark.parametrize("path", ["/invocations", "/models/mlflow-params/invocations"])
@pytest.mark.parametrize("body, words", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2, 3]", "JSON object"),
    (b'{"data": [[1, 2]]}', "exactly one of"),
    (b'{"inputs": {"a": [1]}, "instances": [1]}', "exactly one of"),
    (b'{"dataframe_split": "oops"}', "dataframe_split"),
    (b'{"inputs": {"a": [1.0], "b": [2.0]}, "params": {"nope": 1}}', "unknown parameter 'nope'"),
])
def test_a_bad_invocations_body_is_a_400(any_server, path, body, words):
    r = requests.post(any_server.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert_4xx(r, words)


def test_invocations_with_the_wrong_columns_is_a_400(any_server):
    r = post(any_server, "/models/mlflow-params/invocations", {"inputs": {"a": [1.0], "c": [2.0]}})
    assert_4xx(r, "missing inputs ['b']")
