"""Tiny real models built offline for the tests (iris from scikit-learn's bundled data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# three iris rows (one of each class), as requests send them
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def iris_xy(frame: bool = False):
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    X = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    return (X if frame else X.to_numpy()), iris.target.to_numpy()


def build_all(out: Path) -> dict:
    """Every sklearn artefact the tests use, keyed by a short name."""
    import joblib
    import pickle
    import skops.io as sio
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import SVC
    from sklearn.ensemble import RandomForestClassifier

    out.mkdir(parents=True, exist_ok=True)
    X, y = iris_xy()
    Xf, _ = iris_xy(frame=True)
    arts = {}

    lr = LogisticRegression(max_iter=500).fit(X, y)
    arts["iris_joblib"] = out / "iris.joblib"
    joblib.dump(lr, arts["iris_joblib"])
    arts["iris_pickle"] = out / "iris.pkl"
    arts["iris_pickle"].write_bytes(pickle.dumps(lr))

    # string labels, a DataFrame with a categorical column, and a scaler pipeline
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    df = Xf.copy()
    df["colour"] = np.where(y == 0, "red", np.where(y == 1, "green", "blue"))
    pre = ColumnTransformer([("num", StandardScaler(), list(Xf.columns)),
                             ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"])])
    pipe = make_pipeline(pre, LogisticRegression(max_iter=500)).fit(df, names)
    arts["iris_df"] = out / "iris-df.joblib"
    joblib.dump(pipe, arts["iris_df"])

    svc = SVC().fit(X, y)  # no predict_proba (probability=False)
    arts["svc"] = out / "svc.joblib"
    joblib.dump(svc, arts["svc"])

    reg = LinearRegression().fit(X[:, :3], X[:, 3])
    arts["regressor"] = out / "reg.joblib"
    joblib.dump(reg, arts["regressor"])

    pca = PCA(n_components=2).fit(X)
    arts["pca"] = out / "pca.joblib"
    joblib.dump(pca, arts["pca"])

    scaled = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    arts["skops"] = out / "iris.skops"
    sio.dump(scaled, arts["skops"])

    forest = RandomForestClassifier(n_estimators=3, max_depth=2, random_state=0).fit(X, y)
    arts["forest_skops"] = out / "forest.skops"  # needs sklearn.tree._tree.Tree trusted
    sio.dump(forest, arts["forest_skops"])

    arts["corrupt"] = out / "corrupt.joblib"
    arts["corrupt"].write_bytes(b"this is not a pickle at all\x00\x01")
    arts["not_estimator"] = out / "dict.joblib"
    joblib.dump({"weights": [1, 2, 3]}, arts["not_estimator"])
    return arts
