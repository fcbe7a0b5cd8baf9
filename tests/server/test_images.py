"""The images' Python part, proven without a Docker engine.

For each docker/<runtime>/Dockerfile, once per session: a fresh venv, the Dockerfile's own COPY steps
replayed into a scratch image root (the repository files it copies, nothing else), then its own
`pip install -r docker/<runtime>/requirements.txt` RUN step, in its WORKDIR (only `--no-cache-dir` is
dropped, so that a re-run reuses pip's cache). Then `mlserver` runs as the image's CMD with the image's
ENV (ports moved to free ones) and serves a model through MLSERVER_MODEL_IMPLEMENTATION alone:

- the KServe way: the ServingRuntime's env over the image's, the model files in "/mnt/models", no
  model-settings.json at all; V2 and V1 over HTTP, and the image's HEALTHCHECK command passes;
- the ModelMesh way: the image's env as is (models not loaded at startup), a model-settings.json without
  "implementation" written under MLSERVER_MODELS_DIR as the ModelMesh adapter does, loaded through the
  repository API, then inferred over gRPC (in a separate interpreter, see tests/harness.py).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import joblib
import numpy as np
import pytest
import requests

from modelserve.deploy import RUNTIMES

from ..harness import MLServerProcess, grpc
from ..test_deploy import ROOT, Dockerfile, dockerfile, env_of, runtimes_by_name

pytestmark = pytest.mark.slow

# what .dockerignore keeps out of the build context inside the folders the images copy
CONTEXT_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


class ImageVenv:
    def __init__(self, key: str, root: Path):
        self.key = key
        self.dockerfile: Dockerfile = dockerfile(key)
        self.fs = root / "fs"  # the image's file system: /opt/modelserve becomes fs/opt/modelserve
        self.venv = root / "venv"
        self.python = self.venv / "bin" / "python"
        self.home = self.fs / "home" / "mlserver"

    def path(self, image_path: str) -> Path:
        return self.fs / os.path.normpath(image_path).lstrip("/")

    def build(self) -> "ImageVenv":
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True, timeout=120)
        workdir = "/"
        installs = 0
        for ins, args in self.dockerfile.instructions:
            if ins == "WORKDIR":
                workdir = os.path.join(workdir, args)
                self.path(workdir).mkdir(parents=True, exist_ok=True)
            elif ins == "COPY":
                *srcs, dest = [w for w in shlex.split(args) if not w.startswith("--")]
                target = self.path(os.path.join(workdir, dest))
                for src in srcs:
                    s = ROOT / src
                    if s.is_dir():  # Docker copies a folder's contents
                        shutil.copytree(s, target, ignore=CONTEXT_IGNORE, dirs_exist_ok=True)
                    else:
                        to = target / s.name if (dest.endswith("/") or len(srcs) > 1) else target
                        to.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(s, to)
            elif ins == "RUN" and not args.startswith("pip"):  # user set-up: only its folders matter here
                for step in args.split("&&"):
                    words = shlex.split(step)
                    if words[:2] == ["mkdir", "-p"]:
                        for folder in words[2:]:
                            self.path(folder).mkdir(parents=True, exist_ok=True)
            elif ins == "RUN" and args.startswith("pip install"):
                words = [w for w in shlex.split(args) if w != "--no-cache-dir"]
                cmd = [str(self.python), "-m", *words]
                proc = subprocess.run(cmd, cwd=self.path(workdir), capture_output=True, text=True, timeout=540)
                assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                installs += 1
        assert installs, f"{self.dockerfile.path}: no pip install step"
        self.home.mkdir(parents=True, exist_ok=True)
        return self

    def has(self, module: str) -> bool:
        code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
        return subprocess.run([str(self.python), "-c", code], timeout=60).returncode == 0


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """key -> ImageVenv, built on first use (one venv per image per session)."""
    built: Dict[str, ImageVenv] = {}

    def get(key: str) -> ImageVenv:
        if key not in built:
            built[key] = ImageVenv(key, tmp_path_factory.mktemp(f"image-{key}")).build()
        return built[key]

    return get


class ImageServer(MLServerProcess):
    """The image's CMD with the image's ENV, overridden by ``env`` (ServingRuntime style), on free ports."""

    def __init__(self, image: ImageVenv, env: Optional[Dict[str, str]] = None):
        self.image = image
        super().__init__(image.home / "mlserver.log", {}, cwd=image.home)  # ports first: the env names them
        base = {k: v for k, v in os.environ.items()
                if not k.upper().startswith("MLSERVER_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env = {**base, "HOME": str(image.home), "PATH": f"{image.venv / 'bin'}:{base.get('PATH', '')}",
                    **image.dockerfile.env, **(env or {})}
        for name, value in list(self.env.items()):  # the image's absolute model folders, under its root
            if name.startswith("MLSERVER_") and value.startswith(("/mnt/models", "/models/")):
                self.env[name] = str(image.path(value)) + ("/" if value.endswith("/") else "")
        self.env.update(MLSERVER_HTTP_PORT=str(self.http_port), MLSERVER_GRPC_PORT=str(self.grpc_port),
                        MLSERVER_METRICS_PORT=str(self.metrics_port), MLSERVER_HOST="127.0.0.1")
        self.log_path = image.home / f"mlserver-{self.http_port}.log"

    def command(self) -> list:
        return json.loads(self.image.dockerfile.one("CMD"))

    def start(self, timeout: float = 180) -> "ImageServer":  # a fresh venv's first imports are slow
        return super().start(timeout)

    def model_ready(self, name: str) -> None:
        """MLServer 1.7.1 answers /v2/health/ready 200 even after a model failed to load at startup."""
        r = requests.get(f"{self.url}/v2/models/{name}/ready", timeout=10)
        assert r.status_code == 200, f"model {name} not ready ({r.status_code}):\n{self.log()[-4000:]}"

    def healthcheck(self) -> subprocess.CompletedProcess:
        """The Dockerfile's HEALTHCHECK command, run with the image's python and environment."""
        args = self.image.dockerfile.one("HEALTHCHECK")
        cmd = json.loads(args[args.index("CMD ") + 4:])
        if cmd[0] == "python":
            cmd[0] = str(self.image.python)
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)


def kserve_env(key: str, isvc_name: str) -> Dict[str, str]:
    """The KServe ServingRuntime's container env, templated for an InferenceService called isvc_name."""
    (container,) = runtimes_by_name()[RUNTIMES[key].serving_runtime]["spec"]["containers"]
    return {k: v.replace("{{.Name}}", isvc_name) for k, v in env_of(container).items()}


ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])


def v2_body(rows: np.ndarray, datatype: str = "FP64") -> dict:
    return {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": datatype,
                        "data": rows.reshape(-1).tolist()}]}


# -- sklearn ---------------------------------------------------------------------------------------------
def test_sklearn_image_installs_without_torch(images):
    image = images("sklearn")
    assert image.has("modelserve.sklearn") and image.has("skops") and not image.has("torch")
    assert not image.has("mlflow") and not image.has("pytest")  # only what the image's extra asks for
    proc = subprocess.run([str(image.python), "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([str(image.python), "-c", "import mlserver, sklearn; print(mlserver.__version__)"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "1.7.1", proc.stderr


def test_sklearn_image_serves_the_kserve_way(images, artifacts):
    image = images("sklearn")
    mnt = image.path("/mnt/models")
    shutil.rmtree(mnt, ignore_errors=True)
    mnt.mkdir(parents=True)
    shutil.copy(artifacts["iris_joblib"], mnt / "model.joblib")  # what the storage initializer leaves
    assert not list(mnt.rglob("model-settings.json"))
    srv = ImageServer(image, kserve_env("sklearn", "iris-kserve")).start()
    try:
        srv.model_ready("iris-kserve")
        expected = joblib.load(artifacts["iris_joblib"]).predict(ROWS).tolist()
        r = requests.post(f"{srv.url}/v2/models/iris-kserve/infer", json=v2_body(ROWS), timeout=30)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        assert (out["name"], out["data"]) == ("predict", expected)
        r = requests.post(f"{srv.url}/v1/models/iris-kserve:predict", json={"instances": ROWS.tolist()}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"] == expected, r.text
        hc = srv.healthcheck()
        assert hc.returncode == 0, hc.stderr
    finally:
        srv.stop()
    assert srv.healthcheck().returncode != 0  # and it fails once the server is gone


def test_sklearn_image_serves_the_modelmesh_way(images, artifacts, tmp_path):
    image = images("sklearn")
    srv = ImageServer(image).start()  # the image's own ENV: ModelMesh's template
    try:
        models_dir = Path(srv.env["MLSERVER_MODELS_DIR"])
        assert srv.env["MLSERVER_LOAD_MODELS_AT_STARTUP"] == "false"
        # what the ModelMesh adapter writes: a name and a uri, no implementation
        folder = models_dir / "iris-mm"
        folder.mkdir(parents=True)
        shutil.copy(artifacts["iris_joblib"], tmp_path / "model.joblib")
        (folder / "model-settings.json").write_text(json.dumps(
            {"name": "iris-mm", "parameters": {"uri": str(tmp_path / "model.joblib")}}))
        r = requests.post(f"{srv.url}/v2/repository/models/iris-mm/load", timeout=120)
        assert r.status_code == 200, r.text + srv.log()[-3000:]
        srv.model_ready("iris-mm")
        res = grpc(srv, "infer", "iris-mm", [("input-0", ROWS, "FP64")])
        expected = joblib.load(artifacts["iris_joblib"]).predict(ROWS).tolist()
        assert res["outputs"]["predict"]["data"] == expected, res
        hc = srv.healthcheck()
        assert hc.returncode == 0, hc.stderr
    finally:
        srv.stop()


# -- mlflow ----------------------------------------------------------------------------------------------
def test_mlflow_image_serves_the_kserve_way(images, tmp_path_factory):
    from ..mlflow_models import build

    image = images("mlflow")
    assert image.has("modelserve.mlflow") and not image.has("torch")
    model_dir = build(tmp_path_factory.mktemp("image-mlflow-art"))["tensor"]
    mnt = image.path("/mnt/models")
    shutil.rmtree(mnt, ignore_errors=True)
    shutil.copytree(model_dir, mnt)  # an MLmodel folder, as the storage initializer leaves it
    srv = ImageServer(image, kserve_env("mlflow", "iris-mlflow-kserve")).start()
    try:
        srv.model_ready("iris-mlflow-kserve")
        rows = ROWS.astype(np.float32)
        r = requests.post(f"{srv.url}/v2/models/iris-mlflow-kserve/infer", json=v2_body(rows, "FP32"), timeout=30)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        import mlflow.pyfunc

        expected = np.asarray(mlflow.pyfunc.load_model(str(model_dir)).predict(rows))
        np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), expected, rtol=1e-5)
        assert srv.healthcheck().returncode == 0
    finally:
        srv.stop()
