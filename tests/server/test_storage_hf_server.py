"""SKLearnRuntime loading hf://org/name[@revision] from huggingface_hub's cache inside a real, offline mlserver."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import requests

from ..support.harness import Server, write_model
from ..support.hf_cache import fill_hf_cache
from ..support.models import IRIS_ROWS as ROWS
from ..support.runtimes import SKLEARN, predict, v2

SHA_MAIN, SHA_V1 = "0" * 39 + "a", "0" * 39 + "1"


def hf_model(root, name, uri):
    return write_model(root, name, {"implementation": SKLEARN, "parameters": {"uri": uri}})


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory, artifacts):
    cache = tmp_path_factory.mktemp("hf-cache")
    # main: the logistic regression; tag v1: an SVC (no predict_proba), so the two revisions tell apart
    fill_hf_cache(cache, "acme/iris", {"model.joblib": artifacts["iris_joblib"].read_bytes(),
                                       "README.md": b"# iris"}, SHA_MAIN)
    fill_hf_cache(cache, "acme/iris", {"model.joblib": artifacts["svc"].read_bytes()}, SHA_V1, refs=("v1",))
    root = tmp_path_factory.mktemp("hf-models")
    hf_model(root, "hf-main", "hf://acme/iris")
    hf_model(root, "hf-v1", "hf://acme/iris@v1")
    hf_model(root, "hf-sha", f"hf://acme/iris@{SHA_V1}")
    srv = Server(root, env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
                            "HF_HOME": str(tmp_path_factory.mktemp("hf-home-unused"))})
    srv.cache = cache
    srv.start()
    yield srv
    srv.stop()


def test_main_serves_the_main_snapshot(hf_server, artifacts):
    expected = joblib.load(artifacts["iris_joblib"]).predict(np.array(ROWS)).tolist()
    assert predict(hf_server, "hf-main") == expected
    assert predict(hf_server, "hf-main", outputs=["predict_proba"])  # the logistic regression has it


@pytest.mark.parametrize("model", ["hf-v1", "hf-sha"])
def test_a_tag_or_a_commit_serves_that_revision(hf_server, artifacts, model):
    expected = joblib.load(artifacts["svc"]).predict(np.array(ROWS)).tolist()
    assert predict(hf_server, model) == expected
    r = hf_server.infer(model, v2(ROWS, outputs=["predict_proba"]))  # the SVC of v1 has no predict_proba
    assert r.status_code == 400 and "decision_function" in r.text, r.text


def test_the_log_names_the_cache_and_the_offline_mode(hf_server):
    log = hf_server.log()
    assert "resolving hf://acme/iris@v1 (revision v1)" in log and str(hf_server.cache) in log and "(offline)" in log


def test_missing_revision_fails_its_load_clearly_and_others_keep_serving(hf_server):
    hf_model(hf_server.root, "hf-missing", "hf://acme/iris@v2")
    r = hf_server.load("hf-missing")
    assert r.status_code >= 400
    assert "hf://acme/iris@v2" in r.text and "revision 'v2' of acme/iris" in r.text, r.text
    assert "HF_HUB_OFFLINE" in r.text and "Traceback" not in r.text
    r = requests.get(f"{hf_server.url}/v2/models/hf-missing/ready", timeout=10)
    assert r.status_code != 200
    assert predict(hf_server, "hf-main") and predict(hf_server, "hf-v1")


def test_missing_repo_fails_its_load_naming_the_repo(hf_server):
    hf_model(hf_server.root, "hf-norepo", "hf://acme/roses")
    r = hf_server.load("hf-norepo")
    assert r.status_code >= 400 and "acme/roses is not in the Hugging Face cache" in r.text, r.text
    assert "offline" in r.text


def test_a_moved_tag_is_picked_up_on_reload(hf_server, artifacts):
    """Moving refs/v1 (what a new download of the tag does) changes what a reload serves."""
    hf_model(hf_server.root, "hf-moving", "hf://acme/iris@stable")
    (hf_server.cache / "models--acme--iris" / "refs" / "stable").write_text(SHA_V1)
    r = hf_server.load("hf-moving")
    assert r.status_code == 200, r.text
    assert hf_server.infer("hf-moving", v2(ROWS, outputs=["predict_proba"])).status_code == 400  # the SVC
    (hf_server.cache / "models--acme--iris" / "refs" / "stable").write_text(SHA_MAIN)
    r = hf_server.load("hf-moving")
    assert r.status_code == 200, r.text
    assert predict(hf_server, "hf-moving", outputs=["predict_proba"])  # now the logistic regression
