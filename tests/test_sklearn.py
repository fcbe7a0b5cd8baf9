"""SKLearnRuntime without a server: pickle files (joblib, pickle) are logged as unsafe, naming skops; skops files
load without that warning."""

from __future__ import annotations

import logging
import pickle

import joblib
import pytest

from modelserve.sklearn import SKLearnRuntime

from .support.models import iris_xy
from .support.runtimes import load


@pytest.fixture(scope="module")
def iris_files(tmp_path_factory):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    X, y = iris_xy()
    model = LogisticRegression(max_iter=300).fit(X, y)
    out = tmp_path_factory.mktemp("pickles")
    joblib.dump(model, out / "model.joblib")
    (out / "model.pkl").write_bytes(pickle.dumps(model))
    sio.dump(model, out / "model.skops")
    return out


@pytest.mark.parametrize("fname", ["model.joblib", "model.pkl"])
def test_pickle_files_are_logged_as_unsafe_naming_skops(iris_files, fname, caplog):
    with caplog.at_level(logging.WARNING, logger="mlserver.modelserve"):
        load(SKLearnRuntime, iris_files / fname)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(fname in m and "pickle" in m and "skops" in m for m in warned), warned


def test_skops_files_load_without_the_warning(iris_files, caplog):
    with caplog.at_level(logging.WARNING, logger="mlserver.modelserve"):
        load(SKLearnRuntime, iris_files / "model.skops")
    assert not [r for r in caplog.records if "pickle" in r.getMessage()]
