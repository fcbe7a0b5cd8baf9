"""ModelHub's routes beside MLServer's, against real servers in both MLServer modes (parallel workers, the default,
and parallel_workers=0): ``GET /`` and ``GET /v2/models`` (a model that failed to load listed as not ready), the
JSON bodies of the three health routes (200 and 503), MLServer's own routes not shadowed, and tritonclient.http's
readiness calls (which read the status code only) still true."""

from __future__ import annotations

import concurrent.futures as cf
import shutil

import pytest
import requests
import tritonclient.http as httpclient

from ..conftest import SKLEARN
from ..support.harness import Server, eventually, write_model
from ..support.models import IRIS_ROWS as ROWS
from ..support.runtimes import v2

MODES = {"workers": None, "inproc": 0}


def _get(srv: Server, path: str) -> requests.Response:
    return requests.get(srv.url + path, timeout=5)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, artifacts):
    """Both modes, started side by side: iris and svc (version v1) serve, broken has no model file (fails at
    startup)."""
    made = {}
    for mode, workers in MODES.items():
        root = tmp_path_factory.mktemp(f"modelhub-{mode}")
        write_model(root, "iris", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                    {"model.joblib": artifacts["iris_joblib"]})
        write_model(root, "svc", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib", "version": "v1"}},
                    {"model.joblib": artifacts["svc"]})
        write_model(root, "broken", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}})
        srv = Server(root, parallel_workers=workers, debug=False)
        srv.artifact = artifacts["iris_joblib"]
        made[mode] = srv
    with cf.ThreadPoolExecutor(len(made)) as pool:  # ready stays 503 while broken is unavailable
        started = [pool.submit(srv.start, 180, "/v2/health/live") for srv in made.values()]
        errors = [f.exception() for f in started]
    try:
        for exc in errors:
            if exc is not None:
                raise exc
        for srv in made.values():
            assert eventually(lambda: all(_get(srv, f"/v2/models/{m}/ready").status_code == 200
                                           for m in ("iris", "svc"))), srv.log()[-3000:]
            # broken's failure recorded (while it loads, it is listed and answers 503 too, without the reason)
            assert eventually(lambda: "not available" in _get(srv, "/v2/models/broken/ready").text), srv.log()[-3000:]
        yield made
    finally:
        for srv in made.values():
            srv.stop()


@pytest.fixture(params=list(MODES))
def srv(request, servers) -> Server:
    return servers[request.param]


def test_modelhub_routes_and_health_bodies_then_the_broken_model_loads(srv):
    # ModelHub's root and model list, the failed model not ready
    root = _get(srv, "/")
    assert root.status_code == 200 and root.headers["content-type"] == "application/json", root.text
    assert root.json() == {"message": "modelserve Inference Server", "protocol": "v2",
                           "models": ["broken", "iris", "svc"]}
    listed = _get(srv, "/v2/models")
    assert listed.status_code == 200 and listed.json() == {"models": [
        {"name": "broken", "ready": False}, {"name": "iris", "ready": True}, {"name": "svc", "ready": True}]}

    # health: 200 bodies where ready, 503 {"error"} where not
    live = _get(srv, "/v2/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}
    assert live.headers["content-type"] == "application/json"
    ready = _get(srv, "/v2/health/ready")
    reason = (f"model 'broken' failed to load: model path not found: {srv.root / 'broken' / 'model.joblib'} "
              "(from uri './model.joblib')")
    assert ready.status_code == 503 and ready.json() == {"error": f"not ready; model 'broken': {reason}"}, ready.text
    assert _get(srv, "/v2/models/iris/ready").json() == {"ready": True, "name": "iris"}
    assert _get(srv, "/v2/models/svc/ready").json() == {"ready": True, "name": "svc"}
    assert _get(srv, "/v2/models/svc/versions/v1/ready").json() == {"ready": True, "name": "svc", "version": "v1"}
    broken = _get(srv, "/v2/models/broken/ready")
    assert broken.status_code == 503 and broken.json() == {"error": f"model 'broken' is not available: {reason}"}
    nope = _get(srv, "/v2/models/nope/ready")
    assert nope.status_code == 404 and nope.json() == {"error": "Model nope not found"}

    # MLServer's own routes are not shadowed
    meta = _get(srv, "/v2/models/iris")
    assert meta.status_code == 200 and meta.json()["name"] == "iris", meta.text
    assert _get(srv, "/v2").json()["name"] == "mlserver"
    assert srv.infer("iris", v2(ROWS)).status_code == 200

    # KServe/Triton clients read the status code only
    client = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("iris") and client.is_model_ready("svc")
    assert client.is_model_ready("svc", "v1")
    assert not client.is_server_ready() and not client.is_model_ready("broken")

    # the file arrives; loaded through the repository API, everything is ready
    shutil.copy(srv.artifact, srv.root / "broken" / "model.joblib")
    assert srv.load("broken").status_code == 200
    ready = _get(srv, "/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}, ready.text
    assert _get(srv, "/v2/models/broken/ready").json() == {"ready": True, "name": "broken"}
    assert _get(srv, "/v2/models").json() == {"models": [
        {"name": "broken", "ready": True}, {"name": "iris", "ready": True}, {"name": "svc", "ready": True}]}
    assert client.is_server_ready() and client.is_model_ready("broken")
    client.close()
    assert "Traceback" not in srv.log()
