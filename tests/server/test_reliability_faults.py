"""Issue 8, faults: the request_timeout option (504 over REST, DEADLINE_EXCEEDED over gRPC, in a worker and in
the main process), a model reloaded through the repository API keeps answering during the swap, and
SIGTERM during load lets in-flight requests finish, leaves no process behind and exits cleanly.

Elsewhere: a model that fails to load leaves the others serving
(tests/server/test_bad_input.py::test_bad_models_fail_to_load_with_a_reason_and_the_rest_keeps_serving); an
engine killed mid-request, 503 until it is back, then answers, and SIGTERM/SIGINT leave no engine
(tests/server/test_kubeai_server.py, tests/test_engines_process.py); interrupted or corrupt downloads are
never cached (tests/test_storage.py).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time

import psutil
import pytest
import requests

from ..support.harness import Server, write_model
from ..support.reliability_corpus import grpc_request
from ..support.reliability_server import (GOOD_V2, MLFLOW, OFFLINE, SKLEARN, build_artefacts, build_sleepy,
                                          sleepy_request)

pytest.importorskip("mlflow")
TIMEOUT = 1.5


def _models(root, arts, sleepy, timeout=TIMEOUT):
    write_model(root, "iris", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": arts["iris"]})
    write_model(root, "iris-inproc", {"implementation": SKLEARN, "parallel_workers": 0,
                                      "parameters": {"uri": "./model.joblib"}}, {"model.joblib": arts["iris"]})
    for name, workers in [("sleepy", None), ("sleepy-inproc", 0)]:
        settings = {"implementation": MLFLOW, "parameters": {"uri": "./model", "extra": {
            "request_timeout": timeout, "root_invocations": False}}}
        if workers is not None:
            settings["parallel_workers"] = workers
        write_model(root, name, settings, {"model": sleepy})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults-art")
    arts = build_artefacts(out)
    return arts, build_sleepy(out)


@pytest.fixture(scope="module")
def faults(tmp_path_factory, built):
    root = tmp_path_factory.mktemp("faults")
    _models(root, *built)
    srv = Server(root, env=OFFLINE).start(timeout=240)
    yield srv
    srv.stop()


def post(srv, path, body, timeout=30):
    t0 = time.monotonic()
    r = requests.post(srv.url + path, json=body, timeout=timeout)
    return r, time.monotonic() - t0


@pytest.mark.parametrize("model", ["sleepy", "sleepy-inproc"])
def test_a_request_past_request_timeout_is_a_504_and_the_model_keeps_serving(faults, model):
    r, took = post(faults, f"/v2/models/{model}/infer", sleepy_request(6))
    assert r.status_code == 504, r.text
    assert f"ran past request_timeout ({TIMEOUT:g} s)" in r.json()["error"]
    assert TIMEOUT <= took < TIMEOUT + 2.5
    r, took = post(faults, f"/v2/models/{model}/infer", sleepy_request(0))
    assert r.status_code == 200 and took < 2, r.text  # the abandoned call's thread does not hold it up


@pytest.mark.parametrize("model", ["sleepy", "sleepy-inproc"])
def test_v1_and_invocations_time_out_with_a_504_too(faults, model):
    r, _ = post(faults, f"/v1/models/{model}:predict", {"instances": [1.0], "parameters": {"sleep": 6}})
    assert r.status_code == 504, r.text
    r, _ = post(faults, f"/models/{model}/invocations", {"dataframe_records": [{"x": 1.0}], "params": {"sleep": 6}})
    assert r.status_code == 504 and "request_timeout" in r.text, r.text


@pytest.mark.parametrize("model", ["sleepy", "sleepy-inproc"])
def test_grpc_timeout_is_deadline_exceeded(faults, model):
    import grpc
    from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

    fields = {"model_name": model, "model_version": "", "raw": [], "outputs": [], "parameters": {"sleep": "6"},
              "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "contents": {"fp64_contents": [1.0]}}]}
    with grpc.insecure_channel(faults.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as exc:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request(fields), timeout=30)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "request_timeout" in exc.value.details()


@pytest.mark.parametrize("model", ["iris", "iris-inproc"])
def test_a_model_reloaded_through_the_repository_api_keeps_answering(faults, model):
    statuses, stop = [], threading.Event()

    def hammer():
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    statuses.append(s.post(f"{faults.url}/v2/models/{model}/infer", json=GOOD_V2["iris"],
                                           timeout=10).status_code)
                except requests.RequestException as exc:
                    statuses.append(type(exc).__name__)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for _ in range(2):
            assert faults.load(model).status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(statuses) > 50 and set(statuses) == {200}, sorted(map(str, set(statuses)))


def _sigterm_under_load(srv, models, per_model=3, client_timeout=60, exit_timeout=60):
    """Requests of 2 s in flight to each model, then SIGTERM to mlserver: (statuses, exit code, pids left)."""
    tree = psutil.Process(srv.proc.pid).children(recursive=True)

    def call(model):
        try:
            return post(srv, f"/v2/models/{model}/infer", sleepy_request(2), client_timeout)[0].status_code
        except requests.RequestException as exc:
            return type(exc).__name__

    with cf.ThreadPoolExecutor(len(models) * per_model) as pool:
        futures = [pool.submit(call, m) for m in models for _ in range(per_model)]
        time.sleep(0.8)  # all of them are inside the models by now
        os.kill(srv.proc.pid, signal.SIGTERM)
        statuses = [f.result() for f in futures]
    code = srv.proc.wait(exit_timeout)
    time.sleep(0.5)
    left = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return statuses, code, left


def test_sigterm_during_load_finishes_in_flight_requests_and_exits_cleanly(tmp_path, built):
    """In-process models (parallel_workers: 0, as settings/ and the images run them)."""
    _models(tmp_path, *built, timeout=30)
    srv = Server(tmp_path, env=OFFLINE, parallel_workers=0).start(timeout=240)
    try:
        statuses, code, left = _sigterm_under_load(srv, ["sleepy", "sleepy-inproc"])
        assert statuses == [200] * 6 and code == 0 and not left, (statuses, code, left)
    finally:
        srv.stop()


def test_sigterm_with_parallel_workers_finishes_in_flight_requests_and_exits(tmp_path, built):
    """MLServer's default mode: MLServer 1.7.1 closed the worker pool first (one request answered 500, the others
    never, and no exit until a second signal); modelserve.lifecycle stops accepting, finishes, then stops the
    workers."""
    _models(tmp_path, *built, timeout=30)
    srv = Server(tmp_path, env=OFFLINE).start(timeout=240)
    try:
        statuses, code, left = _sigterm_under_load(srv, ["sleepy"], client_timeout=10, exit_timeout=10)
        assert statuses == [200] * 3 and code == 0 and not left, (statuses, code, left)
    finally:
        if srv.proc.poll() is None:
            os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.stop()
