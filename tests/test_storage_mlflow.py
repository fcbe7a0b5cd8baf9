"""storage.mlflow_uris: MLflow URIs (runs:/, models:/, mlflow-artifacts:/) parsed, the tracking server found from
the environment, credentials masked, the cache, and each failure as one line; against a real ``mlflow server``
(the session fixture ``mlflow_tracking``) where a server is needed, a closed port where none may answer."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from modelserve import storage
from modelserve.errors import ModelLoadError
from modelserve.storage import mlflow_uris
from modelserve.storage.mlflow_uris import MLflowDownload, parse, redact, scheme_of, tracking_uri

from .support.harness import free_port
from .support.mlflow_tracking import TRACKING_ENV
from .support.models import iris_xy
from .support.runtimes import model_settings

MLFLOW = "modelserve.mlflow.MLflowRuntime"


@pytest.fixture
def clean_env(monkeypatch):
    """No tracking variable from the machine running the tests; the environment as it was afterwards (a load
    sets MLflow's HTTP defaults and ModelHub's token in it)."""
    saved = dict(os.environ)
    for key in (*TRACKING_ENV, *mlflow_uris.HTTP_DEFAULTS, *mlflow_uris.QUIET_DEFAULTS):
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


def error(fn, *args, **kw) -> str:
    with pytest.raises(ModelLoadError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def mlflow_resolve(uri, tmp_path, tracking=None):
    return storage.resolve(model_settings(uri, implementation=MLFLOW), (), str(tmp_path / "cache"), None,
                           mlflow=True, mlflow_tracking_uri=tracking)


# -- forms -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri, kind, fields", [
    ("runs:/abc123/model", "run", {"run_id": "abc123", "path": "model"}),
    ("runs:/abc123/sub/dir/", "run", {"run_id": "abc123", "path": "sub/dir"}),
    ("models:/iris/3", "version", {"name": "iris", "ref": "3"}),
    ("models:/iris/007", "version", {"name": "iris", "ref": "7"}),
    ("models:/iris@champion", "alias", {"name": "iris", "ref": "champion"}),
    ("models:/iris/latest", "latest", {"name": "iris"}),
    ("models:/iris/LATEST", "latest", {"name": "iris"}),
    ("models:/iris/Production", "stage", {"name": "iris", "ref": "Production"}),
    ("models:/m-0123abcd", "logged", {"ref": "m-0123abcd"}),
    ("mlflow-artifacts:/0/models/m-1/artifacts", "artifacts", {"path": "0/models/m-1/artifacts", "host": ""}),
    ("mlflow-artifacts://host:5000/1/x", "artifacts", {"path": "1/x", "host": "host:5000"}),
    ("MODELS:/iris/1", "version", {"name": "iris", "ref": "1"}),
])
def test_forms_are_parsed(uri, kind, fields):
    p = parse("m", uri)
    assert p.kind == kind
    for key, value in fields.items():
        assert getattr(p, key) == value, (key, p)
    assert p.immutable == (kind in ("run", "version", "logged"))


@pytest.mark.parametrize("uri", ["runs:/", "runs:/abc", "runs:/abc/", "runs://abc/model", "models:/",
                                 "models:/a/b/c", "models:/@alias", "models:/name@", "models://iris/1",
                                 "mlflow-artifacts:/", "mlflow-artifacts:///x"])
def test_malformed_forms_name_the_expected_one(uri):
    msg = error(parse, "m", uri)
    assert "malformed MLflow URI" in msg and "expected" in msg


@pytest.mark.parametrize("uri, scheme", [("runs:/a/b", "runs"), ("models:/a/1", "models"), (" Models:/a", "models"),
                                         ("mlflow-artifacts:/a", "mlflow-artifacts"),
                                         ("mlflow-artifacts://h/a", "mlflow-artifacts"), ("./runs:/a", None),
                                         ("s3://b/k", None), ("model", None), ("runs/a", None)])
def test_scheme_of(uri, scheme):
    assert scheme_of(uri) == scheme


@pytest.mark.parametrize("uri", ["runs:/abc/model", "models:/iris/1", "models:/iris@prod", "mlflow-artifacts:/0/x"])
def test_other_runtimes_refuse_mlflow_uris_with_a_clear_message(uri, tmp_path):
    msg = error(storage.resolve, model_settings(uri), (), str(tmp_path), None)
    assert "is an MLflow URI" in msg and "MLflowRuntime" in msg and "s3://" in msg, msg
    assert not (tmp_path / "mlflow").exists()


def test_the_mlflow_runtime_lists_the_mlflow_forms_when_no_uri_is_set():
    msg = error(storage.resolve, model_settings(None, implementation=MLFLOW), mlflow=True)
    assert "runs:/" in msg and "models:/" in msg and "mlflow-artifacts:/" in msg


# -- the tracking server from the environment ----------------------------------------------------------------
def test_mlflow_tracking_uri_comes_first():
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MODELHUB_BASE_URL": "https://hub", "CLIENT_ID": "c1"}
    assert tracking_uri(env) == ("http://mlflow:5000", "MLFLOW_TRACKING_URI")


def test_modelhub_env_gives_its_proxy():
    env = {"MODELHUB_BASE_URL": "https://hub.example.com/", "CLIENT_ID": "acme"}
    uri, source = tracking_uri(env)
    assert uri == "https://hub.example.com/modelhub/api/v2/client/acme/mlflow-tracking"
    assert source == "MODELHUB_BASE_URL and CLIENT_ID"
    # ModelHub's SDK (autonomize-core) prefers MODELHUB_URI and GENESIS_CLIENT_ID
    env = {**env, "MODELHUB_URI": "https://other", "GENESIS_CLIENT_ID": "g"}
    assert tracking_uri(env)[0] == "https://other/modelhub/api/v2/client/g/mlflow-tracking"


@pytest.mark.parametrize("env, words", [
    ({}, ["MLFLOW_TRACKING_URI", "MODELHUB_BASE_URL", "CLIENT_ID"]),
    ({"MLFLOW_TRACKING_URI": "  "}, ["MLFLOW_TRACKING_URI", "MODELHUB_BASE_URL"]),
    ({"MODELHUB_BASE_URL": "https://hub"}, ["CLIENT_ID is not"]),
    ({"CLIENT_ID": "acme"}, ["MLFLOW_TRACKING_URI", "MODELHUB_BASE_URL"]),
])
def test_no_tracking_server_names_the_variables(env, words):
    with pytest.raises(mlflow_uris.NoTrackingURI) as info:
        tracking_uri(env)
    for w in words:
        assert w in str(info.value)


def test_modelhub_api_key_becomes_the_token_unless_one_is_set():
    env = {"MODELHUB_API_KEY": "key-123"}
    mlflow_uris.apply_env("MODELHUB_BASE_URL and CLIENT_ID", env)
    assert env["MLFLOW_TRACKING_TOKEN"] == "key-123"
    env = {"MODELHUB_API_KEY": "key-123", "MLFLOW_TRACKING_TOKEN": "mine"}
    mlflow_uris.apply_env("MODELHUB_BASE_URL and CLIENT_ID", env)
    assert env["MLFLOW_TRACKING_TOKEN"] == "mine"
    env = {"MODELHUB_API_KEY": "key-123"}  # a plain MLFLOW_TRACKING_URI does not get ModelHub's key
    mlflow_uris.apply_env("MLFLOW_TRACKING_URI", env)
    assert "MLFLOW_TRACKING_TOKEN" not in env


def test_http_defaults_fail_fast_but_never_override_the_user():
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "9"}
    mlflow_uris.apply_env("MLFLOW_TRACKING_URI", env)
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == mlflow_uris.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    assert int(env["MLFLOW_HTTP_REQUEST_TIMEOUT"]) <= 30


# -- credentials -------------------------------------------------------------------------------------------
def test_redaction_masks_userinfo_and_secret_values():
    env = {"MLFLOW_TRACKING_URI": "http://bob:hunter2-pw@mlflow:5000", "MLFLOW_TRACKING_TOKEN": "tok-abcdef",
           "MODELHUB_API_KEY": "mh-key-9876"}
    text = ("API request to http://bob:hunter2-pw@mlflow:5000/api/2.0/x failed; token tok-abcdef, key mh-key-9876,"
            " again hunter2-pw; https://u:p@other/y")
    out = redact(text, env)
    for secret in ("hunter2-pw", "tok-abcdef", "mh-key-9876", "bob:", "u:p@"):
        assert secret not in out, out
    assert "http://***@mlflow:5000/api/2.0/x" in out and "https://***@other/y" in out


def test_unreachable_server_fails_fast_naming_the_host_not_the_password(clean_env, tmp_path, caplog):
    port = free_port()  # nothing listens there
    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://alice:pa55-w0rd@127.0.0.1:{port}")
    started = time.monotonic()
    msg = error(mlflow_resolve, "runs:/0123456789abcdef/model", tmp_path)
    assert time.monotonic() - started < 20
    assert f"cannot reach the MLflow tracking server at http://***@127.0.0.1:{port}" in msg, msg
    assert "connection refused" in msg and "runs:/0123456789abcdef/model" in msg
    assert "pa55-w0rd" not in msg and "pa55-w0rd" not in caplog.text


def test_no_tracking_uri_fails_naming_the_variables(clean_env, tmp_path):
    msg = error(mlflow_resolve, "models:/iris/1", tmp_path)
    assert "model 'm' failed to load: models:/iris/1: no MLflow tracking server is configured" in msg
    assert "MLFLOW_TRACKING_URI" in msg and "MODELHUB_BASE_URL" in msg and "CLIENT_ID" in msg


def test_modelhub_env_is_what_a_load_asks(clean_env, tmp_path):
    port = free_port()
    clean_env.setenv("MODELHUB_BASE_URL", f"http://127.0.0.1:{port}")
    clean_env.setenv("CLIENT_ID", "acme")
    clean_env.setenv("MODELHUB_API_KEY", "secret-api-key")
    clean_env.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    msg = error(mlflow_resolve, "models:/iris@prod", tmp_path)
    assert f"http://127.0.0.1:{port}/modelhub/api/v2/client/acme/mlflow-tracking" in msg, msg
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "secret-api-key"
    assert "secret-api-key" not in msg


# -- the cache ---------------------------------------------------------------------------------------------
def fake_entry(dl: MLflowDownload, canonical: str, complete: bool = True) -> Path:
    entry = dl.entry_for(canonical)
    (entry / "model").mkdir(parents=True)
    (entry / "model" / "MLmodel").write_text("flavors: {}\n")
    if complete:
        (entry / ".modelserve-complete").write_text(json.dumps({"uri": canonical, "path": "model"}))
    return entry


def test_a_complete_cache_entry_of_an_immutable_target_needs_no_server(clean_env, tmp_path):
    tracking = f"http://127.0.0.1:{free_port()}"  # closed: any request would fail
    for uri, canonical in [("runs:/r1/model", "runs:/r1/model"), ("models:/iris/2", "models:/iris/2"),
                           ("models:/m-42", "models:/m-42")]:
        dl = MLflowDownload("m", uri, str(tmp_path / "cache"), tracking)
        dl.tracking = tracking
        entry = fake_entry(dl, canonical)
        assert mlflow_resolve(uri, tmp_path, tracking) == entry / "model"


def test_an_incomplete_entry_is_not_trusted_and_aliases_always_ask(clean_env, tmp_path):
    tracking = f"http://127.0.0.1:{free_port()}"
    dl = MLflowDownload("m", "runs:/r1/model", str(tmp_path / "cache"), tracking)
    dl.tracking = tracking
    fake_entry(dl, "runs:/r1/model", complete=False)  # a download killed before its rename
    assert "cannot reach" in error(mlflow_resolve, "runs:/r1/model", tmp_path, tracking)
    assert "cannot reach" in error(mlflow_resolve, "models:/iris@prod", tmp_path, tracking)
    assert "cannot reach" in error(mlflow_resolve, "models:/iris/latest", tmp_path, tracking)


def test_the_cache_key_holds_the_tracking_server(tmp_path):
    a = MLflowDownload("m", "runs:/r/model", str(tmp_path), "http://a")
    b = MLflowDownload("m", "runs:/r/model", str(tmp_path), "http://b")
    a.tracking, b.tracking = "http://a", "http://b"
    assert a.entry_for("runs:/r/model") != b.entry_for("runs:/r/model")
    assert a.entry_for("runs:/r/model").parent == tmp_path.absolute() / "mlflow"


def test_install_swaps_atomically_and_keeps_a_winner(tmp_path):
    dl = MLflowDownload("m", "mlflow-artifacts:/0/x", str(tmp_path), "http://a")
    dl.tracking = "http://a"
    entry = dl.entry_for("mlflow-artifacts:/0/x")
    for n in (1, 2):
        tmp = dl.root / f".{entry.name}.tmp-{n}"
        tmp.mkdir(parents=True)
        (tmp / "f").write_text(str(n))
        (tmp / ".modelserve-complete").write_text(json.dumps({"uri": "x", "path": "f"}))
        dl._install(tmp, entry)
        assert (entry / "f").read_text() == str(n) and not tmp.exists()
    assert sorted(p.name for p in dl.root.iterdir()) == [entry.name]  # no old copies left behind


# -- against a real tracking server --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registered(mlflow_tracking):
    from sklearn.linear_model import LogisticRegression

    X, y = iris_xy()
    model = LogisticRegression(max_iter=300).fit(X, y)
    run_id, model_uri, version = mlflow_tracking.log_model(model, X, "unit-iris")
    mlflow_tracking.set_alias("unit-iris", "champion", version)
    return {"run_id": run_id, "model_uri": model_uri, "version": version, "model": model, "X": X}


@pytest.fixture
def tracking_env(clean_env, mlflow_tracking):
    clean_env.setenv("MLFLOW_TRACKING_URI", mlflow_tracking.uri)
    return mlflow_tracking


def predictions(path: Path, X) -> list:
    import mlflow.pyfunc

    return np.asarray(mlflow.pyfunc.load_model(str(path)).predict(X)).tolist()


def test_every_form_downloads_the_model(tracking_env, registered, tmp_path):
    want = registered["model"].predict(registered["X"]).tolist()
    uris = [f"runs:/{registered['run_id']}/model", "models:/unit-iris/1", "models:/unit-iris@champion",
            "models:/unit-iris/latest", registered["model_uri"], tracking_env.artifact_uri(registered["run_id"])]
    paths = {}
    for uri in uris:
        path = mlflow_resolve(uri, tmp_path)
        assert (path / "MLmodel").is_file(), (uri, path)
        assert predictions(path, registered["X"]) == want
        paths[uri] = path
    # the alias and latest were resolved to version 1: the same cache entry as models:/unit-iris/1
    assert paths["models:/unit-iris@champion"] == paths["models:/unit-iris/1"] == paths["models:/unit-iris/latest"]
    assert not list((tmp_path / "cache" / "mlflow").glob(".*.tmp-*"))


def test_a_cached_version_is_not_downloaded_again(tracking_env, registered, tmp_path, caplog):
    caplog.set_level("INFO", logger="mlserver.modelserve.storage")
    first = mlflow_resolve("models:/unit-iris/1", tmp_path)
    stamp = (first / "MLmodel").stat().st_mtime_ns
    caplog.clear()
    assert mlflow_resolve("models:/unit-iris/1", tmp_path) == first
    assert "found in the cache" in caplog.text and "downloading" not in caplog.text
    assert (first / "MLmodel").stat().st_mtime_ns == stamp


def test_concurrent_loaders_share_one_download(tracking_env, registered, tmp_path):
    results, errors = [], []

    def load():
        try:
            results.append(mlflow_resolve(f"runs:/{registered['run_id']}/model", tmp_path))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(set(results)) == 1, (errors, results)
    assert len([p for p in (tmp_path / "cache" / "mlflow").iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.parametrize("uri, words", [
    ("runs:/0123456789abcdef0123456789abcdef/model", ["run '0123456789abcdef0123456789abcdef' not found"]),
    ("models:/no-such-model/1", ["registered model 'no-such-model' not found"]),
    ("models:/unit-iris/99", ["registered model 'unit-iris' has no version 99", "versions: 1"]),
    ("models:/unit-iris@nope", ["registered model 'unit-iris' has no alias 'nope'", "aliases: champion"]),
    ("models:/no-such-model@x", ["registered model 'no-such-model' not found"]),
    ("models:/no-such-model/latest", ["registered model 'no-such-model' not found"]),
    ("models:/m-00000000000000000000000000000000", ["logged model 'm-00000000000000000000000000000000' not found"]),
    ("mlflow-artifacts:/0/no/such/path", ["no artifacts at this path"]),
])
def test_failures_name_the_problem(tracking_env, registered, tmp_path, uri, words):
    msg = error(mlflow_resolve, uri, tmp_path)
    for w in words:
        assert w in msg, msg
    assert not list((tmp_path / "cache" / "mlflow").glob(".*.tmp-*"))


def test_a_missing_artifact_path_lists_what_the_run_has(tracking_env, registered, tmp_path):
    msg = error(mlflow_resolve, f"runs:/{registered['run_id']}/nope", tmp_path)
    assert f"artifact path 'nope' not found in run '{registered['run_id']}'" in msg, msg
    assert "the run has: model" in msg, msg
