"""MLflowRuntime serving models by MLflow URI (runs:/, models:/ by version, alias and latest, mlflow-artifacts:/)
from a real ``mlflow server`` inside a real mlserver process; a version bump reloaded through the repository API;
the failures (missing run, missing version, unreachable tracking server, none configured) each one line in the
repository index while the others serve; the tracking server's password never in the log.

The tracking server is the option tracking_uri's, else the environment's: the unreachable one is a model's option
in the main mlserver; the unconfigured case gets an mlserver of its own (no tracking variables), started beside
the main one, where a model with the option serves."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from ..support.harness import Server, free_port, write_model
from ..support.mlflow_tracking import blank_tracking_env
from ..support.models import IRIS_ROWS, iris_xy
from ..support.runtimes import predict

MLFLOW = "modelserve.mlflow.MLflowRuntime"
PASSWORD = "Pa55-w0rd-never-logged"
NAME = "registry-iris"
GOOD = ("by-run", "by-version", "by-alias", "by-latest", "by-artifacts")


def mlflow_model(root, name, uri, **extra):
    write_model(root, name, {"implementation": MLFLOW,
                             "parameters": {"uri": uri, "extra": {"root_invocations": False, **extra}}})


def index(server) -> dict:
    r = requests.post(f"{server.url}/v2/repository/index", json={}, timeout=10)
    return {m["name"]: m for m in r.json()}


def settled(server, names, timeout=180) -> dict:
    """The index once every model in ``names`` has finished loading (READY or UNAVAILABLE)."""
    deadline = time.monotonic() + timeout
    while True:
        found = index(server)
        if all(found.get(n, {}).get("state") in ("READY", "UNAVAILABLE") for n in names):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"models still loading after {timeout}s: {found}\n{server.log()[-3000:]}")
        time.sleep(0.3)


def unavailable(found: dict, name: str, *words: str) -> str:
    assert found[name]["state"] == "UNAVAILABLE", found[name]
    reason = found[name]["reason"]
    assert "\n" not in reason and "Traceback" not in reason, reason
    for w in words:
        assert w in reason, reason
    return reason


@pytest.fixture(scope="module")
def registry(mlflow_tracking):
    from sklearn.linear_model import LogisticRegression

    X, y = iris_xy()
    v1 = LogisticRegression(max_iter=300).fit(X, y)
    run_id, _, version = mlflow_tracking.log_model(v1, X, NAME)
    mlflow_tracking.set_alias(NAME, "champion", version)
    return {"run_id": run_id, "version": version, "v1": v1, "X": X, "y": y,
            "artifacts": mlflow_tracking.artifact_uri(run_id)}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, mlflow_tracking, registry):
    run_id = registry["run_id"]
    main_root = tmp_path_factory.mktemp("mlflow-uris")
    for name, uri in {"by-run": f"runs:/{run_id}/model", "by-version": f"models:/{NAME}/1",
                      "by-alias": f"models:/{NAME}@champion", "by-latest": f"models:/{NAME}/latest",
                      "by-artifacts": registry["artifacts"],
                      "missing-run": "runs:/00000000000000000000000000000000/model",
                      "missing-version": f"models:/{NAME}/99"}.items():
        mlflow_model(main_root, name, uri)
    authed = mlflow_tracking.uri.replace("http://", f"http://modelhub:{PASSWORD}@")
    closed = free_port()
    mlflow_model(main_root, "unreachable", f"runs:/{run_id}/model", tracking_uri=f"http://127.0.0.1:{closed}")
    main = Server(main_root, parallel_workers=0, env={
        **blank_tracking_env(), "MLFLOW_TRACKING_URI": authed,
        "MODELSERVE_CACHE_DIR": str(tmp_path_factory.mktemp("mlflow-uris-cache"))})
    main.closed = closed
    none_root = tmp_path_factory.mktemp("mlflow-uris-none")
    mlflow_model(none_root, "no-tracking", f"models:/{NAME}/1")
    mlflow_model(none_root, "by-option", f"models:/{NAME}/1", tracking_uri=authed)
    nothing = Server(none_root, parallel_workers=0, env={
        **blank_tracking_env(), "MODELSERVE_CACHE_DIR": str(tmp_path_factory.mktemp("mlflow-uris-none-cache"))})
    started, errors = [], []

    def start(srv):
        try:
            srv.start(until="/v2/health/live")
            started.append(srv)
        except Exception as exc:  # pragma: no cover - raised below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in (main, nothing)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        yield {"main": main, "none": nothing}
    finally:
        stops = [threading.Thread(target=srv.stop) for srv in (main, nothing)]
        for t in stops:
            t.start()
        for t in stops:
            t.join()


@pytest.fixture(scope="module")
def main(servers):
    srv = servers["main"]
    srv.found = settled(srv, (*GOOD, "missing-run", "missing-version", "unreachable"))
    return srv


@pytest.mark.parametrize("model", GOOD)
def test_each_uri_form_serves_the_models_own_predictions(main, registry, model):
    assert main.found[model]["state"] == "READY", main.found[model]
    want = registry["v1"].predict(np.array(IRIS_ROWS)).tolist()
    assert predict(main, model) == want


def test_a_missing_run_and_a_missing_version_are_unavailable_with_their_reason(main):
    unavailable(main.found, "missing-run", "run '00000000000000000000000000000000' not found",
                "MLflow tracking server")
    unavailable(main.found, "missing-version", f"registered model '{NAME}' has no version 99", "versions: 1")
    r = main.infer("missing-run", {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4],
                                               "data": IRIS_ROWS[0]}]})
    assert r.status_code == 503 and "not found" in r.text
    assert predict(main, "by-run")  # the others keep serving


def test_unreachable_and_unconfigured_tracking_are_unavailable_with_their_reason(main, servers, registry):
    reason = unavailable(main.found, "unreachable", "cannot reach the MLflow tracking server",
                         f"127.0.0.1:{main.closed}", "connection refused")
    assert "Max retries" not in reason and "HTTPConnectionPool" not in reason
    found = settled(servers["none"], ["no-tracking", "by-option"])
    unavailable(found, "no-tracking",
                "no MLflow tracking server is configured", "MLFLOW_TRACKING_URI", "MODELHUB_BASE_URL", "CLIENT_ID")
    # the option tracking_uri names the server where the environment names none
    assert found["by-option"]["state"] == "READY", found["by-option"]
    assert predict(servers["none"], "by-option") == registry["v1"].predict(np.array(IRIS_ROWS)).tolist()


def test_a_version_bump_is_served_after_unload_and_load(main, mlflow_tracking, registry):
    from sklearn.linear_model import LogisticRegression

    X, y = registry["X"], registry["y"]
    v2 = LogisticRegression(max_iter=300).fit(X, 2 - y)  # other labels: other predictions
    rows = np.array(IRIS_ROWS)
    old, new = registry["v1"].predict(rows).tolist(), v2.predict(rows).tolist()
    assert old != new
    _, _, version = mlflow_tracking.log_model(v2, X, NAME)
    assert version == "2"
    mlflow_tracking.set_alias(NAME, "champion", version)
    for model in ("by-alias", "by-latest", "by-version"):
        assert main.unload(model).status_code == 200
        r = main.load(model)
        assert r.status_code == 200, r.text
    assert predict(main, "by-alias") == new
    assert predict(main, "by-latest") == new
    assert predict(main, "by-version") == old  # models:/name/1 stays version 1
    assert "is version 2 of registered model" in main.log()


def test_the_password_never_reaches_the_log(main, servers):
    settled(servers["none"], ["by-option"])
    log = main.log()
    assert "by-run" in log and PASSWORD not in log
    assert PASSWORD not in servers["none"].log()
