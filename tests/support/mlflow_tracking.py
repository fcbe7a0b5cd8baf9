"""A real MLflow tracking server for the tests: ``mlflow server`` (the venv's CLI) on a free port, SQLite
backend and served artifacts in a temporary folder.

``MLflowTracking(workdir).start()`` waits until it answers; ``log_model`` logs a tiny sklearn model in a new
run and registers it (MLflow 3's own ``mlflow.sklearn.log_model``: a LoggedModel, as ModelHub users log
them); ``set_alias`` moves an alias; ``stop`` ends the server's whole process group.

Logging uses MLflow's fluent API in this process with the tracking URI set only for the call (``mlflow``
otherwise writes ``MLFLOW_TRACKING_URI`` into ``os.environ``, which every later subprocess would inherit).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Optional, Tuple

from .harness import MLServerProcess

MLFLOW_CLI = str(Path(sys.executable).with_name("mlflow"))

# every variable that would point an MLflow client (or modelserve's resolver) somewhere else
TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "MODELHUB_BASE_URL", "MODELHUB_URI", "CLIENT_ID", "GENESIS_CLIENT_ID",
                "MODELHUB_API_KEY")

_lock = threading.Lock()  # mlflow's fluent API keeps process-global state (tracking URI, active run)


def blank_tracking_env() -> dict:
    """The tracking variables set empty: for a subprocess that must not inherit the test process's."""
    return {k: "" for k in TRACKING_ENV}


class MLflowTracking(MLServerProcess):
    """``mlflow server`` run as the harness runs mlserver (its own process group, a log, stop kills the group)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **blank_tracking_env()}
        env.pop("MLFLOW_TRACKING_URI")  # the server itself must not see an empty one either
        super().__init__(self.workdir / "mlflow-server.log", env, cwd=self.workdir)
        self.port = self.http_port

    @property
    def uri(self) -> str:
        return self.url

    def command(self) -> list:
        return [MLFLOW_CLI, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
                "--serve-artifacts", "--artifacts-destination", str(self.workdir / "artifacts")]

    def start(self, timeout: float = 90) -> "MLflowTracking":
        return super().start(timeout, until="/health")

    # -- client side -----------------------------------------------------------------------------------
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def log_model(self, estimator, X, registered_name: Optional[str] = None,
                  artifact_name: str = "model") -> Tuple[str, str, Optional[str]]:
        """Logs ``estimator`` (fitted, with a signature inferred from ``X``) in a new run, registered as
        ``registered_name`` when given: ``(run_id, model_uri, version)``; ``model_uri`` is MLflow's own
        (``models:/<model id>``), ``version`` None when not registered."""
        import mlflow
        import mlflow.sklearn
        import sklearn
        from mlflow.models import infer_signature
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        # the registry URI follows the tracking URI while none is set
        with _lock, _env_kept("MLFLOW_TRACKING_URI"), _use_tracking_uri(self.uri):
            with mlflow.start_run() as run:
                info = mlflow.sklearn.log_model(
                    estimator, name=artifact_name, signature=infer_signature(X, estimator.predict(X)),
                    registered_model_name=registered_name,
                    pip_requirements=[f"scikit-learn=={sklearn.__version__}"])  # given: no slow inference
        version = str(info.registered_model_version) if registered_name else None
        return run.info.run_id, info.model_uri, version

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(name, alias, str(version))

    def artifact_uri(self, run_id: str, artifact_name: str = "model") -> str:
        """The ``mlflow-artifacts:/`` URI of a logged model's files (MLflow 3 keeps them with the LoggedModel)."""
        client = self.client()
        run = client.get_run(run_id)
        for model in client.search_logged_models(experiment_ids=[run.info.experiment_id]):
            if model.source_run_id == run_id and model.name == artifact_name:
                return model.artifact_location
        return f"{run.info.artifact_uri}/{artifact_name}"


class _env_kept:
    """Restores one environment variable (set or unset) on exit."""

    def __init__(self, key: str):
        self.key = key

    def __enter__(self):
        self.value = os.environ.get(self.key)

    def __exit__(self, *exc):
        if self.value is None:
            os.environ.pop(self.key, None)
        else:
            os.environ[self.key] = self.value
