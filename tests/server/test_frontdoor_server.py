"""The front door against real servers (both MLServer modes): tritonclient.http with its default arguments (the
binary tensor extension in and out), compressed bodies both ways, malformed bodies as one-line 4xx, no metric
series for models that do not exist, V1 :explain, and health with a model that fails to load at startup."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
import zlib

import joblib
import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import triton_to_np_dtype

from ..conftest import SKLEARN
from ..support.harness import Server, eventually, write_model
from ..support.models import IRIS_ROWS as ROWS
from ..support.runtimes import v2

PARAMS_FRAME = {"a": [1.0, 2.0, -3.0], "b": [3.0, 0.5, 0.5]}


def client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def _triton_input(name, arr, datatype):
    inp = httpclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)  # binary_data=True: tritonclient's default
    return inp


def test_tritonclient_defaults_binary_in_and_out_equal_the_json_answer(any_server):
    x = np.array(ROWS, dtype=np.float64)
    res = client(any_server).infer("iris", [_triton_input("input-0", x, "FP64")])
    out = res.get_response()["outputs"][0]
    assert out["name"] == "predict" and "data" not in out and out["parameters"]["binary_data_size"] == 8 * len(ROWS)
    expected = any_server.infer("iris", v2(ROWS)).json()["outputs"][0]["data"]
    assert res.as_numpy("predict").tolist() == expected
    # requested outputs, binary by default, several of them
    res = client(any_server).infer("iris", [_triton_input("input-0", x, "FP64")], outputs=[
        httpclient.InferRequestedOutput("predict_proba"), httpclient.InferRequestedOutput("predict")])
    model = joblib.load(_artifact(any_server))
    np.testing.assert_allclose(res.as_numpy("predict_proba"), model.predict_proba(x))
    assert res.as_numpy("predict").tolist() == expected


def _artifact(server):
    return server.root / "iris" / "model.joblib"


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64", "INT32", "INT64", "UINT8"])
def test_every_numeric_datatype_as_binary_gives_the_json_answer(server, datatype):
    rows = [[5, 3, 1, 0], [6, 3, 5, 2]]
    arr = np.array(rows, dtype=triton_to_np_dtype(datatype))
    res = client(server).infer("iris", [_triton_input("input-0", arr, datatype)])
    assert res.as_numpy("predict").tolist() == server.infer("iris", v2(rows, datatype=datatype)).json()[
        "outputs"][0]["data"]


def test_binary_and_json_inputs_mixed_with_a_bytes_output_in_binary(any_server):
    """MLflow's params model: one column binary, one JSON; its BYTES output 'label' comes back binary."""
    a = httpclient.InferInput("a", [3], "FP64")
    a.set_data_from_numpy(np.array(PARAMS_FRAME["a"]))
    b = httpclient.InferInput("b", [3], "FP64")
    b.set_data_from_numpy(np.array(PARAMS_FRAME["b"]), binary_data=False)
    res = client(any_server).infer("mlflow-params", [a, b], parameters={"mode": "product"},
                                   outputs=[httpclient.InferRequestedOutput("label"),
                                            httpclient.InferRequestedOutput("total", binary_data=False)])
    outs = {o["name"]: o for o in res.get_response()["outputs"]}
    assert outs["total"]["data"] == [3.0, 1.0, -1.5] and "binary_data_size" in outs["label"]["parameters"]
    assert res.as_numpy("label").tolist() == [b"product"] * 3


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_answers_through_tritonclient(any_server, algorithm):
    x = np.array(ROWS * 40, dtype=np.float64)  # answers of 500 bytes or more are compressed
    res = client(any_server).infer("iris", [_triton_input("input-0", x, "FP64")],
                                   outputs=[httpclient.InferRequestedOutput("predict_proba", binary_data=False)],
                                   request_compression_algorithm=algorithm,
                                   response_compression_algorithm=algorithm)
    assert res.as_numpy("predict_proba").shape == (len(x), 3)


def test_compression_on_the_wire(any_server):
    body = json.dumps(v2(ROWS * 40, outputs=["predict_proba"])).encode()
    plain = requests.post(f"{any_server.url}/v2/models/iris/infer", data=body,
                          headers={"Content-Type": "application/json", "Accept-Encoding": "identity"}, timeout=30)
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    for coding, pack in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        raw = requests.post(f"{any_server.url}/v2/models/iris/infer", data=pack(body), stream=True, timeout=30,
                            headers={"Content-Type": "application/json", "Content-Encoding": coding,
                                     "Accept-Encoding": coding})
        assert raw.status_code == 200 and raw.headers["content-encoding"] == coding
        assert "accept-encoding" in raw.headers["vary"].lower()
        wire = raw.raw.read(decode_content=False)
        assert len(wire) < len(plain.content) / 2
        unpacked = gzip.decompress(wire) if coding == "gzip" else zlib.decompress(wire)
        assert json.loads(unpacked)["outputs"] == plain.json()["outputs"]
    small = requests.post(f"{any_server.url}/v2/models/iris/infer", json=v2(ROWS[:1]), timeout=30,
                          headers={"Accept-Encoding": "gzip"}, stream=True)
    assert "content-encoding" not in small.headers  # under 500 bytes: as it is


def test_a_decompression_bomb_is_refused(any_server):
    packer, chunk = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS), b"0," * (1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(150)) + packer.flush()  # 300 MB inflated, 300 kB sent
    r = requests.post(f"{any_server.url}/v2/models/iris/infer", data=bomb, timeout=60,
                      headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json()["error"]
    assert any_server.infer("iris", v2(ROWS)).status_code == 200


ONE_LINE = re.compile(r"^[^\n]+$")
TRUNCATED_HEADER = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                           "parameters": {"binary_data_size": 32}}]}).encode()


@pytest.mark.parametrize("body,headers,fragment", [
    (struct.pack("<8f", *range(8)), {"Content-Type": "application/octet-stream"}, "binary data"),
    (b"\xff\xfe\x00garbage", {"Content-Type": "application/json"}, "not valid json"),
    (b"[1, 2]", {"Content-Type": "application/json"}, "json object, got list"),
    (b"hello", {"Content-Type": "text/plain"}, "not json"),
    (b'{"id": "x"}', {"Content-Type": "application/json"}, "no 'inputs'"),
    (b'{"inputs": 3}', {"Content-Type": "application/json"}, "inputs: input should be a valid list"),
    (b'{"inputs": [{"name": "x", "shape": "1x4", "datatype": "FP64", "data": [1]}]}',
     {"Content-Type": "application/json"}, "inputs.0.shape"),
    (b'{"inputs":[]}' + b"\0" * 8, {"Inference-Header-Content-Length": "900"}, "beyond the body"),
    (TRUNCATED_HEADER + b"\0" * 16, {"Inference-Header-Content-Length": str(len(TRUNCATED_HEADER))}, "body ended"),
])
def test_malformed_bodies_are_a_one_line_4xx_naming_the_problem(any_server, body, headers, fragment):
    r = requests.post(f"{any_server.url}/v2/models/iris/infer", data=body, headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()
    assert set(err) == {"error"} and ONE_LINE.match(err["error"]), err  # never FastAPI's echoing `detail` list
    assert fragment in err["error"].lower(), err
    assert "garbage" not in err["error"] and "Traceback" not in r.text
    assert any_server.infer("iris", v2(ROWS)).status_code == 200


@pytest.mark.parametrize("datatype,data,fragment", [
    ("FP32", [True, True, True, True], "a boolean"),
    ("INT64", [True, 1, 2, 3], "a boolean"),
    ("FP64", [None, 1, 2, 3], "null"),
    ("BOOL", [1, 0, 1, 0], "holds 1"),
    ("INT32", [1.5, 2, 3, 4], "integers"),
])
def test_json_values_that_do_not_fit_the_datatype_are_a_400(any_server, datatype, data, fragment):
    r = any_server.infer("iris", {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": datatype,
                                              "data": data}]})
    assert r.status_code == 400 and fragment in r.json()["error"], r.text
    assert "modelserve.errors" not in r.json()["error"]  # the worker's class path stays out of the message


def test_requests_for_models_that_do_not_exist_add_no_metric_series(any_server):
    for path in ("/v2/models/no-such-model/infer", "/v2/models/iris/versions/999/infer"):
        r = requests.post(any_server.url + path, json=v2(ROWS), timeout=30)
        assert r.status_code == 404, r.text
    assert any_server.infer("iris", v2(ROWS)).status_code == 200
    metrics = requests.get(f"http://127.0.0.1:{any_server.metrics_port}/metrics", timeout=30).text
    assert 'model_infer_request_success_total{model="iris"' in metrics
    assert "no-such-model" not in metrics and 'version="999"' not in metrics


def test_v1_explain_is_a_clear_501(any_server):
    r = requests.post(f"{any_server.url}/v1/models/iris:explain", json={"instances": [ROWS[0]]}, timeout=30)
    assert r.status_code == 501 and "does not serve explanations" in r.json()["error"], r.text


# -- health with a model that fails to load at startup --------------------------------------------------------
@pytest.fixture(scope="module", params=["workers", "inproc"])
def broken(request, tmp_path_factory, artifacts):
    root = tmp_path_factory.mktemp(f"broken-{request.param}")
    write_model(root, "good", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": artifacts["iris_joblib"]})
    write_model(root, "late", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}})
    write_model(root, "peer", {"implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": artifacts["iris_joblib"]})
    srv = Server(root, parallel_workers=0 if request.param == "inproc" else None, debug=False)
    srv.start(timeout=180, until="/v2/health/live")
    srv.artifact = artifacts["iris_joblib"]
    yield srv
    srv.stop()


def test_a_model_that_fails_at_startup_leaves_the_others_serving_and_health_says_so(broken):
    url = broken.url
    assert eventually(lambda: requests.get(f"{url}/v2/models/good/ready", timeout=5).status_code == 200)
    assert broken.infer("good", v2(ROWS)).status_code == 200
    assert requests.get(f"{url}/v2/health/live", timeout=5).status_code == 200
    ready = requests.get(f"{url}/v2/health/ready", timeout=5)
    assert ready.status_code == 503 and "model 'late'" in ready.json()["error"], ready.text
    late = requests.get(f"{url}/v2/models/late/ready", timeout=5)
    assert late.status_code == 503 and "model path not found" in late.json()["error"], late.text
    infer = broken.infer("late", v2(ROWS))
    assert infer.status_code == 503 and "model path not found" in infer.json()["error"], infer.text
    index = {m["name"]: m for m in requests.post(f"{url}/v2/repository/index", json={}, timeout=5).json()}
    assert index["good"]["state"] == "READY"
    assert index["late"]["state"] == "UNAVAILABLE" and "model path not found" in index["late"]["reason"]
    assert "modelserve.errors" not in index["late"]["reason"]
    # the file arrives; loaded through the repository API, the server is ready
    shutil.copy(broken.artifact, broken.root / "late" / "model.joblib")
    assert broken.load("late").status_code == 200
    assert requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{url}/v2/models/late/ready", timeout=5).status_code == 200
    assert broken.infer("late", v2(ROWS)).status_code == 200
    index = {m["name"]: m for m in requests.post(f"{url}/v2/repository/index", json={}, timeout=5).json()}
    assert index["late"]["state"] == "READY" and not index["late"]["reason"]
    assert "Traceback" not in broken.log()


def test_binary_tensors_reach_a_model_that_is_not_ours_as_json_values(broken):
    """MLServer's own mlserver_sklearn (JSON values: it does not read raw bytes) and a model under MLServer's
    adaptive batching answer the binary request as they answer the JSON one."""
    assert eventually(lambda: requests.get(f"{broken.url}/v2/models/peer/ready", timeout=5).status_code == 200)
    x = np.array(ROWS, dtype=np.float64)
    res = client(broken).infer("peer", [_triton_input("input-0", x, "FP64")])
    (name,) = [o["name"] for o in res.get_response()["outputs"]]
    expected = broken.infer("peer", v2(ROWS)).json()["outputs"][0]["data"]
    assert res.as_numpy(name).reshape(-1).tolist() == expected


def test_a_batched_model_takes_binary_tensors(server):
    x = np.array(ROWS, dtype=np.float64)
    res = client(server).infer("iris-batched", [_triton_input("input-0", x, "FP64")])
    assert res.as_numpy("predict").tolist() == server.infer("iris", v2(ROWS)).json()["outputs"][0]["data"]


