"""Session fixtures: tiny real models and real mlserver processes serving them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .support.harness import Server, write_model
from .support.models import build_all

SKLEARN = "modelserve.sklearn.SKLearnRuntime"
EXTENDED = os.environ.get("MODELSERVE_EXTENDED") == "1"


def pytest_collection_modifyitems(config, items):
    """The opt-in tier (marker ``extended``): tests that each start an engine of their own for one check, kept
    out of CI's time budget; ``bash scripts/dev.sh extended`` runs them (MODELSERVE_EXTENDED=1)."""
    if EXTENDED:
        return
    skip = pytest.mark.skip(reason="opt-in tier: MODELSERVE_EXTENDED=1 (bash scripts/dev.sh extended)")
    for item in items:
        if item.get_closest_marker("extended"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict:
    return build_all(tmp_path_factory.mktemp("artifacts"))


def sklearn_models(root: Path, arts: dict) -> None:
    """The sklearn models every server fixture serves."""
    write_model(root, "iris", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": arts["iris_joblib"]})
    write_model(root, "iris-df", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": arts["iris_df"]})
    write_model(root, "svc", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": arts["svc"]})
    write_model(root, "regressor", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": arts["regressor"]})
    write_model(root, "pca", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": arts["pca"]})
    write_model(root, "iris-pickle", {"implementation": SKLEARN, "parameters": {"uri": "./model.pkl"}},
                {"model.pkl": arts["iris_pickle"]})
    # a folder uri: resolved through the well-known file name
    write_model(root, "iris-skops", {"implementation": SKLEARN, "parameters": {"uri": "."}},
                {"model.skops": arts["skops"]})
    write_model(root, "forest-skops", {
        "implementation": SKLEARN,
        "parameters": {"uri": "./model.skops", "extra": {"skops_trusted_types": ["sklearn.tree._tree.Tree"]}},
    }, {"model.skops": arts["forest_skops"]})
    write_model(root, "iris-batched", {
        "implementation": SKLEARN, "max_batch_size": 32, "max_batch_time": 0.2,
        "parameters": {"uri": "./model.joblib", "extra": {"coalesce": False}},
    }, {"model.joblib": arts["iris_joblib"]})


def _server(tmp_path_factory, arts, name: str, **kw) -> Server:
    root = tmp_path_factory.mktemp(name)
    sklearn_models(root, arts)
    try:
        from .support.mlflow_models import mlflow_models  # present once the mlflow runtime is tested
    except ImportError:
        pass
    else:
        mlflow_models(root, tmp_path_factory.mktemp(name + "-mlflow-art"))
    return Server(root, **kw).start()


@pytest.fixture(scope="session")
def server(tmp_path_factory, artifacts):
    """MLServer with its default parallel workers."""
    srv = _server(tmp_path_factory, artifacts, "workers")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def inproc(tmp_path_factory, artifacts):
    """MLServer with parallel_workers=0 and debug on: where an uncaught error would show a traceback."""
    srv = _server(tmp_path_factory, artifacts, "inproc", parallel_workers=0, debug=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="session", params=["workers", "inproc"])
def any_server(request):
    """Runs a test against both MLServer modes."""
    return request.getfixturevalue("server" if request.param == "workers" else "inproc")


@pytest.fixture(scope="session")
def mlflow_tracking(tmp_path_factory):
    """A real ``mlflow server`` (SQLite, served artifacts) on a free port: tests/support/mlflow_tracking.py."""
    from .support.mlflow_tracking import MLflowTracking

    srv = MLflowTracking(tmp_path_factory.mktemp("mlflow-tracking")).start()
    yield srv
    srv.stop()
