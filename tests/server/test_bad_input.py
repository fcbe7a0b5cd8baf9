"""Every bad request is a 4xx with a one-line reason, never a traceback, and the server keeps serving."""

from __future__ import annotations

import pytest
import requests

from ..support.harness import grpc, write_model
from ..support.runtimes import v2

SKLEARN = "modelserve.sklearn.SKLearnRuntime"
GOOD = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


BAD_REQUESTS = {
    "wrong_shape_width": (v2([1, 2, 3], shape=[1, 3]), 400, "expected 4 features per row, got 3"),
    "three_d": (v2([1, 2, 3, 4], shape=[1, 2, 2]), 400, "expected shape [rows, 4], got [1, 2, 2]"),
    "length_mismatch": (v2([1, 2, 3, 4, 5], shape=[2, 4]), 400, "shape [2, 4] needs 8 values, got 5"),
    "string_in_numeric": (v2(["a", 1, 2, 3], shape=[1, 4]), 400, "datatype FP64 but the data holds 'a'"),
    "bytes_for_numeric_model": (v2(["a", "b", "c", "d"], shape=[1, 4], datatype="BYTES"), 400,
                                "takes numbers, got datatype BYTES"),
    "ragged_nested": (v2([[1, 2, 3, 4], [1, 2]], shape=[2, 4]), 400, "needs 8 values, got 6"),
    "empty_batch": (v2([], shape=[0, 4]), 400, "empty batch"),
    "negative_shape": (v2([1, 2, 3, 4], shape=[-1, 4]), 400, "negative dimension"),
    "missing_input": ({"inputs": []}, 400, "no inputs"),
    "two_inputs": ({"inputs": GOOD["inputs"] * 2}, 400, "takes one input tensor, got 2"),
    "unknown_output": ({**GOOD, "outputs": [{"name": "explain"}]}, 400, "unknown output 'explain'"),
    "unknown_datatype": (v2([1, 2, 3, 4], shape=[1, 4], datatype="FP128"), 400, "datatype"),
    "not_a_v2_body": ({"instances": [[1, 2, 3, 4]]}, 400, "inputs"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_4xx_with_a_reason(any_server, case):
    body, status, needle = BAD_REQUESTS[case]
    r = any_server.infer("iris", body)
    assert r.status_code == status, r.text
    assert needle in r.text
    assert "Traceback" not in r.text and "File \"" not in r.text
    assert any_server.infer("iris", GOOD).status_code == 200


def test_unknown_model_is_404(any_server):
    r = any_server.infer("no-such-model", GOOD)
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]


def test_grpc_unknown_model_is_not_found(server):
    import numpy as np

    err = grpc(server, "infer", "no-such-model", [("input-0", np.ones((1, 4)), "FP64")])["error"]
    assert err["status"] == "StatusCode.NOT_FOUND" and "no-such-model" in err["message"]


# -- load errors, through the repository API so the server keeps serving the others --------------

def _bad_models(artifacts):
    return {
        "bad-unknown-option": ({"parameters": {"uri": "./model.joblib", "extra": {"skops_trusted_type": []}}},
                               {"model.joblib": artifacts["iris_joblib"]},
                               "unknown option 'skops_trusted_type'"),
        "bad-option-type": ({"parameters": {"uri": "./model.joblib", "extra": {"coalesce": "sometimes"}}},
                            {"model.joblib": artifacts["iris_joblib"]}, "option 'coalesce'"),
        "bad-option-value": ({"parameters": {"uri": "./model.joblib", "extra": {"default_outputs": ["fit"]}}},
                             {"model.joblib": artifacts["iris_joblib"]}, "'predict_proba'"),
        "bad-default-output": ({"parameters": {"uri": "./model.joblib",
                                               "extra": {"default_outputs": ["predict_proba"]}}},
                               {"model.joblib": artifacts["svc"]}, "predict_proba not offered by SVC"),
        "bad-corrupt": ({"parameters": {"uri": "./model.joblib"}}, {"model.joblib": artifacts["corrupt"]},
                        "cannot read model file model.joblib"),
        "bad-missing-file": ({"parameters": {"uri": "./nothing.joblib"}}, {}, "model path not found"),
        "bad-empty-folder": ({"parameters": {"uri": "."}}, {}, "no model file in"),
        "bad-scheme": ({"parameters": {"uri": "gs://bucket/model.joblib"}}, {}, "unsupported URI scheme 'gs://'"),
        "bad-not-estimator": ({"parameters": {"uri": "./model.joblib"}}, {"model.joblib": artifacts["not_estimator"]},
                              "holds a dict, not a fitted estimator"),
        "bad-skops-untrusted": ({"parameters": {"uri": "./model.skops"}}, {"model.skops": artifacts["forest_skops"]},
                                "sklearn.tree._tree.Tree"),
    }


@pytest.mark.parametrize("mode", ["workers", "inproc"])
def test_bad_models_fail_to_load_with_a_reason_and_the_rest_keeps_serving(request, artifacts, mode):
    srv = request.getfixturevalue("server" if mode == "workers" else "inproc")
    for name, (settings, files, needle) in _bad_models(artifacts).items():
        write_model(srv.root, f"{name}-{mode}", {"implementation": SKLEARN, **settings}, files)
        r = srv.load(f"{name}-{mode}")
        assert 400 <= r.status_code < 600 and r.status_code != 200, (name, r.text)
        assert needle in r.text, (name, r.text)
        assert "Traceback" not in r.text, (name, r.text)
        assert srv.infer("iris", GOOD).status_code == 200
        failed = srv.infer(f"{name}-{mode}", GOOD)  # a model that failed to load: unavailable, with the reason
        assert failed.status_code == 503 and needle in failed.json()["error"], (name, failed.text)
    assert requests.get(f"{srv.url}/v2/health/live", timeout=5).status_code == 200
