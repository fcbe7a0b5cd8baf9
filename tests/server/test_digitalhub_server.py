"""digitalhub specs served locally by the real command (`python -m modelserve.digitalhub settings|serve`) and
a real mlserver, one spec set per kind (tests/digitalhub/<kind>/), each answering V2 (and OpenAI for the
KubeAI/vLLM kinds) on the URLs DHCore puts in a run's status; and the huggingface image's entry point started
with DHCore's exact huggingfaceserver argument list for a MiniLM text_embedding function."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from ..support.engine_envs import engine_command
from ..support.harness import MLServerProcess, Server, free_port
from ..support.hf_models import minilm_dir
from ..support.models import build_all
from ..support.runtimes import text_body

SPECS = Path(__file__).resolve().parents[1] / "digitalhub"
CPU_ARGS = ["--max-model-len", "512", "--kv-cache-memory-bytes", "64M", "--dtype", "float32"]
IRIS = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                     "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}]}


def spec_files(kind: str, workdir: Path, override: dict) -> list:
    """The kind's function, task and run, plus a bare spec pointing at the local model (run spec overrides)."""
    (workdir / f"{kind}-local.json").write_text(json.dumps(override))
    entities = [str(SPECS / kind / f"{p}.json") for p in ("function", "task", "run")]
    return entities + [str(workdir / f"{kind}-local.json")]


def digitalhub(*argv, cwd: Path) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "modelserve.digitalhub", *argv], capture_output=True, text=True,
                         cwd=cwd, timeout=120)
    assert res.returncode == 0, res.stderr
    return res


class Serve(MLServerProcess):
    """`python -m modelserve.digitalhub serve ...`: writes its model, then becomes `mlserver start <root>`."""

    def __init__(self, root: Path, argv: list, env: dict):
        super().__init__(root / "mlserver.log", {**os.environ, **env}, cwd=root)
        self.argv = argv
        (root / "models").mkdir(exist_ok=True)
        (root / "models" / "settings.json").write_text(json.dumps({
            "debug": True, "http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port,
            "host": "127.0.0.1", "parallel_workers": 0}))

    def command(self) -> list:
        return [sys.executable, "-m", "modelserve.digitalhub", "serve", *self.argv, "--models-dir", "models"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """sklearnserve, mlflowserve, huggingfaceserve, kubeai-speech and vllmserve-speech in one mlserver: the
    first four written by `settings`, the last by `serve`, which then runs mlserver on all five."""
    from ..support.mlflow_models import build as build_mlflow
    from ..support.whisper_models import build_tiny_whisper

    root = tmp_path_factory.mktemp("dh-served")
    arts = build_all(root / "art")
    (root / "model.joblib").write_bytes(Path(arts["iris_joblib"]).read_bytes())
    mlflow_dir = build_mlflow(root / "mlflow-art")["tensor"]
    whisper = build_tiny_whisper(tmp_path_factory.mktemp("dh-whisper") / "ct2")
    local = {"sklearnserve": {"path": "./model.joblib"}, "mlflowserve": {"path": str(mlflow_dir)},
             "huggingfaceserve": {"path": str(minilm_dir())},
             "kubeai-speech": {"url": str(whisper), "args": ["--num-workers", "1"]},
             "vllmserve-speech": {"url": str(whisper)}}
    notes = {}
    for kind in list(local)[:-1]:
        notes[kind] = digitalhub("settings", *spec_files(kind, root, local[kind]), "--models-dir", "models",
                                 cwd=root).stderr
    srv = Serve(root, spec_files("vllmserve-speech", root, local["vllmserve-speech"]),
                env={"HF_HUB_OFFLINE": "1"}).start(timeout=300)
    srv.notes = notes
    srv.root = root
    yield srv
    srv.stop()


def test_every_kind_is_written_with_its_runtime(served):
    settings = {p.parent.name: json.loads(p.read_text())
                for p in (served.root / "models").glob("*/model-settings.json")}
    assert set(settings) == {"iris-dh", "iris-mlflow-dh", "minilm-dh", "whisper-dh", "speech-dh"}
    assert settings["iris-dh"]["implementation"] == "modelserve.sklearn.SKLearnRuntime"
    assert settings["iris-dh"]["parameters"]["uri"] == str(served.root / "model.joblib")  # resolved, cwd-relative
    assert settings["whisper-dh"]["parameters"]["extra"]["engine"] == "FasterWhisper"
    # what a local serve leaves aside is said, one line
    assert "not used locally (Kubernetes only): volumes, resources" in served.notes["sklearnserve"]
    assert "secrets secret-key" in served.notes["sklearnserve"]


@pytest.mark.parametrize("model", ["iris-dh", "iris-mlflow-dh"])
def test_sklearn_and_mlflow_answer_v2_on_dhcores_urls(served, model):
    base = served.url
    res = requests.post(f"{base}/v2/models/{model}/infer", json=IRIS, timeout=30)
    assert res.status_code == 200, res.text
    out = res.json()["outputs"][0]
    assert out["shape"][0] == 2
    for url in ("/v2", f"/v2/models/{model}", f"/v2/models/{model}/ready", "/v2/health/ready", "/v2/health/live"):
        assert requests.get(base + url, timeout=10).status_code == 200, url  # what DHCore lists in run.status
    assert requests.get(f"{base}/v2/models/{model}", timeout=10).json()["name"] == model


def test_huggingfaceserve_embeds(served):
    res = requests.post(f"{served.url}/v2/models/minilm-dh/infer", json=text_body(["hello", "world"]), timeout=60)
    assert res.status_code == 200, res.text
    out = res.json()["outputs"][0]
    assert out["shape"] == [2, 384]
    vec = np.array(out["data"], dtype=np.float32).reshape(2, 384)
    assert np.allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-3)  # sentence-transformers' normalised vectors


@pytest.mark.parametrize("model", ["whisper-dh", "speech-dh"])
def test_speech_kinds_transcribe(served, model):
    from ..support.whisper_models import encode_audio, speech_like

    wav = encode_audio(speech_like(1.0, seed=3), "wav")
    res = requests.post(f"{served.url}/v2/models/{model}/infer?language=en&temperature=0", data=wav, timeout=120,
                        headers={"Content-Type": "audio/wav"})
    assert res.status_code == 200, res.text
    assert res.json()["outputs"][0]["name"] == "text"
    res = requests.post(f"{served.url}/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")},
                        data={"model": model, "language": "en", "temperature": "0"}, timeout=120)
    assert res.status_code == 200, res.text
    assert "text" in res.json()


# -- the vLLM kinds (a real vLLM from .venv-vllm on a tiny Llama) ------------------------------------------
@pytest.fixture(scope="module")
def vllm_served(tmp_path_factory):
    from ..support.llama_models import build_tiny_llama

    command = engine_command("MODELSERVE_VLLM_COMMAND")
    root = tmp_path_factory.mktemp("dh-vllm")
    llama = build_tiny_llama(root / "llama")
    chat = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    local = {
        # KubeAI's file at its absolute path, the args naming it: rewritten to the working folder locally
        "kubeai-text": {"url": str(llama), "files": [{"path": "/config/chat.jinja", "content": chat}],
                        "args": [*CPU_ARGS, "--chat-template", "/config/chat.jinja"]},
        "vllmserve-text": {"url": str(llama), "args": CPU_ARGS},
        "vllmserve-pooling": {"url": str(llama), "args": CPU_ARGS},
    }
    for kind in ("kubeai-text", "vllmserve-text"):
        digitalhub("settings", *spec_files(kind, root, local[kind]), "--models-dir", "models", cwd=root)
    srv = Serve(root, spec_files("vllmserve-pooling", root, local["vllmserve-pooling"]),
                env={"MODELSERVE_VLLM_COMMAND": command, "HF_HUB_OFFLINE": "1"}).start(timeout=500)
    yield srv
    srv.stop()


def test_kubeai_text_with_prefix_hash_load_balancing_loads_and_answers(vllm_served):
    settings = json.loads((vllm_served.cwd / "models" / "llama-dh" / "model-settings.json").read_text())
    assert settings["parameters"]["extra"]["scaling"]["load_balancing"]["strategy"] == "PrefixHash"
    assert requests.get(f"{vllm_served.url}/v2/models/llama-dh/ready", timeout=10).status_code == 200
    body = {"model": "llama-dh", "prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0}
    res = requests.post(f"{vllm_served.url}/v1/completions", json=body, timeout=60)
    assert res.status_code == 200, res.text
    assert res.json()["usage"]["completion_tokens"] >= 1  # a random tiny model: its text may decode to ''
    chat = {"model": "llama-dh", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    assert requests.post(f"{vllm_served.url}/v1/chat/completions", json=chat, timeout=60).status_code == 200
    models = requests.get(f"{vllm_served.url}/v1/models", timeout=10).json()
    assert {"llama-dh", "qwen-dh", "bge-dh"} <= {m["id"] for m in models["data"]}


def test_vllmserve_text_answers_v2(vllm_served):
    res = requests.post(f"{vllm_served.url}/v2/models/qwen-dh/infer",
                        json=text_body(["Hello"], name="prompt", max_tokens=3, temperature=0), timeout=60)
    assert res.status_code == 200, res.text
    assert res.json()["outputs"][0]["datatype"] == "BYTES"


def test_vllmserve_pooling_embeds(vllm_served):
    res = requests.post(f"{vllm_served.url}/v2/models/bge-dh/infer", json=text_body(["a", "b"]), timeout=60)
    assert res.status_code == 200, res.text
    assert res.json()["outputs"][0]["shape"][0] == 2
    res = requests.post(f"{vllm_served.url}/v1/embeddings", json={"model": "bge-dh", "input": "a"}, timeout=60)
    assert res.status_code == 200 and res.json()["data"][0]["embedding"]


# -- the huggingface image's entry point with DHCore's exact argument list ---------------------------------
class HFServer(MLServerProcess):
    """`python -m huggingfaceserver <args>` through the shim `modelserve-dhcore-shims huggingfaceserver` writes."""

    def __init__(self, root: Path, args: list, env: dict):
        super().__init__(root / "hf.log", {**os.environ, **env}, cwd=root)
        self.args = args

    def command(self) -> list:
        return [sys.executable, "-m", "huggingfaceserver", *self.args]


def test_hf_image_entry_point_serves_dhcores_minilm_command_line(tmp_path):
    shim = tmp_path / "shim"
    res = subprocess.run([sys.executable, "-m", "modelserve.dhcore", "huggingfaceserver", "--target", str(shim)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    model_dir = tmp_path / "shared" / "model"  # DHCore's /shared/model layout
    model_dir.parent.mkdir()
    model_dir.symlink_to(minilm_dir(), target_is_directory=True)
    http, grpc_port = free_port(), free_port()
    # HuggingfaceServeRunner's list for a text_embedding task (booleans as `--flag true|false`, trust_remote_code
    # true by default), plus the ports, which DHCore leaves at huggingfaceserver's 8080/8081
    args = ["--model_name", "minilm", "--protocol", "v2", "--enable_docs_url", "true", "--model_dir", str(model_dir),
            "--trust_remote_code", "true", "--task", "text_embedding", "--backend", "huggingface",
            "--max_length", "256", "--disable_lower_case", "false", "--return_probabilities", "false",
            "--dtype", "float32", "--http_port", str(http), "--grpc_port", str(grpc_port)]
    srv = HFServer(tmp_path, args, {"PYTHONPATH": str(shim), "HF_HUB_OFFLINE": "1",
                                    "MODELSERVE_HF_MODELS_DIR": str(tmp_path / "models")})
    srv.http_port, srv.grpc_port = http, grpc_port
    srv.start(timeout=180)
    try:
        res = requests.post(f"{srv.url}/v2/models/minilm/infer", json=text_body(["hello"]), timeout=60)
        assert res.status_code == 200, res.text
        assert res.json()["outputs"][0]["shape"] == [1, 384]
        assert "--trust_remote_code true ignored" in srv.log()  # DHCore's default is not the operator's opt-in
        settings = json.loads((tmp_path / "models" / "minilm" / "model-settings.json").read_text())
        assert "trust_remote_code" not in settings["parameters"]["extra"]
    finally:
        srv.stop()


# -- DHCore's own /shared/ layout on the sklearn and mlflow images (stock class names, shims opted in) -------
def dhcore_shared(root: Path, name: str, implementation: str, uri: str, files: dict) -> Path:
    """/shared/ as SklearnServeRunner / MlflowServeRunner fill it: the model under <name>/ or model/ and the
    model-settings.json they generate."""
    shared = root / "shared"
    for dest, src in files.items():
        (shared / dest).parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            import shutil

            shutil.copytree(src, shared / dest)
        else:
            (shared / dest).write_bytes(Path(src).read_bytes())
    (shared / "model-settings.json").write_text(json.dumps(
        {"name": name, "implementation": implementation, "parameters": {"uri": uri}}))
    return shared


@pytest.mark.parametrize("flavour", ["sklearn", "mlflow"])
def test_dhcores_shared_layout_with_stock_class_names(tmp_path, flavour):
    from modelserve import dhcore

    shim = tmp_path / "shim"
    res = subprocess.run([sys.executable, "-m", "modelserve.dhcore", f"mlserver_{flavour}", "--target", str(shim)],
                         capture_output=True, text=True)
    if importlib.util.find_spec(f"mlserver_{flavour}") is not None:
        # the development venv has MLServer's own mlserver-sklearn (the benchmarks'): refused, not shadowed;
        # the image has none. Served here through the same files, written unchecked for this process only.
        assert res.returncode == 2 and "not shadowing it" in res.stderr
        dhcore.write(f"mlserver_{flavour}", shim)
    else:
        assert res.returncode == 0, res.stderr
    if flavour == "sklearn":
        arts = build_all(tmp_path / "art")
        shared = dhcore_shared(tmp_path, "model1", "mlserver_sklearn.SKLearnModel", "./model1/my-model.pkl",
                               {"model1/my-model.pkl": arts["iris_pickle"]})
    else:
        from ..support.mlflow_models import build as build_mlflow

        shared = dhcore_shared(tmp_path, "model1", "mlserver_mlflow.MLflowRuntime", "./model",
                               {"model": build_mlflow(tmp_path / "mlflow-art")["tensor"]})
    # MLServer's default parallel workers: the workers import the stock name too
    srv = Server(shared, debug=False, env={"PYTHONPATH": str(shim)}).start(timeout=180)
    try:
        res = requests.post(f"{srv.url}/v2/models/model1/infer", json=IRIS, timeout=30)
        assert res.status_code == 200, res.text + srv.log()[-2000:]
        assert res.json()["outputs"][0]["shape"][0] == 2
    finally:
        srv.stop()


def test_shims_never_shadow_a_real_package(tmp_path):
    real = tmp_path / "site" / "mlserver_sklearn"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("class SKLearnModel: pass\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    res = subprocess.run([sys.executable, "-m", "modelserve.dhcore", "mlserver_sklearn", "--target",
                          str(tmp_path / "shim")], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "a real mlserver_sklearn is installed" in res.stderr
    assert not (tmp_path / "shim").exists()
    argv = [sys.executable, "-m", "modelserve.dhcore", "huggingfaceserver", "mlserver_mlflow", "--target",
            str(tmp_path / "site2")]
    mine = subprocess.run(argv, capture_output=True, text=True)
    assert mine.returncode == 0, mine.stderr
    again = subprocess.run(argv, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "site2")})
    assert again.returncode == 0, again.stderr  # our own shims may be rewritten
