"""The images built for real (buildah, daemonless) and run the way KServe and ModelMesh run them (podman).

scripts/images.py builds each docker/<key>/Dockerfile (stand-in bases where the real one cannot be pulled:
docs/images.md) with this machine's CA and pip configuration mounted into the RUN steps only, then:

- every layer of the image is read back: none holds the machine's CA, a pip.conf or a uv.toml;
- the KServe way: `scripts.images.kserve_pod` starts the container from servingruntimes/<key>.yaml and the
  key's RawDeployment example InferenceService: the runtime's env with `{{.Name}}` filled, its securityContext
  (uid 1000, every capability dropped, no privilege escalation), its memory limit, the model read-only in
  /mnt/models; the readiness probe polled as the kubelet polls it; then V2 REST, V2 gRPC, V1 and (where
  served) OpenAI, the image's HEALTHCHECK, and SIGTERM: exit 0 within the grace period;
- the ModelMesh way: the container of servingruntimes/<key>-modelmesh.yaml (MLServer on the pod's loopback
  only) with the pod's /models folder holding what ModelMesh's puller and adapter leave there; the adapter's
  calls (ModelRepositoryService.RepositoryModelLoad, then ModelInfer) come from inside the pod's network
  namespace, as the adapter's sidecar makes them.

Which images: sklearn and mlflow always (CI builds them); MODELSERVE_ALL_IMAGES=1 adds the other CPU images
(huggingface on CPU torch, whisper, infinity, ollama with its stand-in binary), MODELSERVE_HEAVY_IMAGES=1
builds from PyPI alone (CUDA torch) and adds vllm (built, its engine env imports vLLM; serving it needs a
GPU); MODELSERVE_IMAGE_KEYS=a,b names them. Times are the report's (scripts/images.py report), not asserted.
"""

from __future__ import annotations

import base64
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List

import joblib
import numpy as np
import pytest
import requests

from ..support.deploy_files import ROOT
from ..support.harness import grpc
from ..support.image_models import kserve_model, modelmesh_model

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("modelserve_images_tool", ROOT / "scripts" / "images.py")
images = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(images)

HEAVY = os.environ.get("MODELSERVE_HEAVY_IMAGES") == "1"
ALL = os.environ.get("MODELSERVE_ALL_IMAGES") == "1" or HEAVY
CPU_KEYS = ["sklearn", "mlflow", "huggingface", "whisper", "infinity", "ollama"]
if os.environ.get("MODELSERVE_IMAGE_KEYS"):
    KEYS = os.environ["MODELSERVE_IMAGE_KEYS"].split(",")
else:
    KEYS = (CPU_KEYS + ["vllm"]) if HEAVY else CPU_KEYS if ALL else ["sklearn", "mlflow"]
SERVED = [k for k in KEYS if k != "vllm"]  # vLLM's CUDA wheel serves only on a GPU


@pytest.fixture(scope="session")
def built():
    """key -> image name, built (layers cached between sessions) on first use."""
    if os.environ.get("MODELSERVE_SKIP_IMAGES") == "1":
        pytest.skip("MODELSERVE_SKIP_IMAGES=1")
    try:
        images.require("buildah", "podman")
    except images.ImageError as exc:
        pytest.skip(str(exc))
    done: Dict[str, str] = {}

    def get(key: str) -> str:
        if key not in done:
            try:
                images.build(key, heavy=HEAVY)
            except images.ImageError as exc:
                pytest.fail(str(exc), pytrace=False)
            done[key] = images.image_name(key)
        return done[key]

    return get


# -- no build machine secrets in any layer -------------------------------------------------------------------
PEM = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
CONFIG_FILES = re.compile(r"(etc/pip\.conf|etc/xdg/pip/.*|etc/uv/uv\.toml|root/\.(config/)?pip/.*|root/\.config/uv/.*"
                          r"|usr/local/share/ca-certificates/.+)")


def machine_only_certs() -> List[bytes]:
    """The certificates this machine's CA bundle has beyond Debian's stock ones (the TLS proxy's): one base64
    line of each, long enough to be its own."""
    stock = set()
    for path in glob.glob("/usr/share/ca-certificates/**/*.crt", recursive=True):
        stock |= set(PEM.findall(Path(path).read_text(errors="replace")))
    mine = [b for b in PEM.findall(images.machine_ca().read_text()) if b not in stock]
    return [b.splitlines()[3].encode() for b in mine]


def test_the_machine_has_a_ca_of_its_own_to_keep_out():
    """Else the layer test below would prove nothing here."""
    if not Path("/usr/share/ca-certificates").is_dir():
        pytest.skip("no Debian ca-certificates here to tell the machine's own CA from")
    assert machine_only_certs()


@pytest.mark.parametrize("key", KEYS)
def test_no_layer_holds_the_machines_ca_or_pip_config(built, key, tmp_path):
    image = built(key)
    archive = tmp_path / "image.tar"
    images.run([*images.PODMAN, "save", "--format", "docker-archive", "-o", str(archive), image], timeout=1800)
    certs = machine_only_certs()
    pip_values = [v.encode() for k, v in images.machine_pip_config().items() if k in ("index-url", "extra-index-url")
                  and "@" in v]  # an index URL with credentials
    found = []
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        (entry,) = manifest
        config = outer.extractfile(entry["Config"]).read()
        for secret in certs + pip_values:
            assert secret not in config, "the image config holds the machine's CA or pip index"
        for env in json.loads(config)["config"].get("Env", []):
            assert not env.startswith(("PIP_CERT=", "SSL_CERT_FILE=", "REQUESTS_CA_BUNDLE=", "PIP_INDEX_URL=",
                                       "UV_INDEX")), env
        for layer in entry["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer)) as tar:
                for member in tar:
                    name = member.name.lstrip("./")
                    if CONFIG_FILES.fullmatch(name):
                        found.append(f"{layer}: {name}")
                    if member.isfile() and member.size < 8_000_000:
                        data = tar.extractfile(member).read()
                        if any(c in data for c in certs + pip_values):
                            found.append(f"{layer}: {name} holds the machine's CA or pip index")
    assert not found, found
    assert len(entry["Layers"]) > 3  # the layers were read, not a flattened copy


# -- KServe's way --------------------------------------------------------------------------------------------
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
TEXTS = ["A model server answers requests.", "The fox jumps over the dog."]


class Requests:
    """What each image answers, and what the answers must be."""

    def __init__(self, key: str, model: Path, name: str):
        self.key, self.model, self.name = key, model, name

    def v2_inputs(self):
        """(name, array, V2 datatype) of the request sent over REST and gRPC."""
        if self.key == "sklearn":
            return [("input-0", ROWS, "FP64")]
        if self.key == "mlflow":
            return [("input-0", ROWS.astype(np.float32), "FP32")]
        if self.key in ("huggingface", "infinity"):
            return [("text", np.array(TEXTS, dtype=object), "BYTES")]
        if self.key == "ollama":
            return [("prompt", np.array(["The sea"], dtype=object), "BYTES")]
        if self.key == "whisper":
            return [("audio", np.array([base64.b64encode(self.wav()).decode()], dtype=object), "BYTES")]
        raise KeyError(self.key)

    def wav(self) -> bytes:
        from ..support import whisper_models

        return whisper_models.encode_audio(whisper_models.speech_like(1.0, seed=1), "wav")

    def expected(self):
        """The answer's first output as the model gives it outside the image (None: only its shape is known)."""
        if self.key == "sklearn":
            return joblib.load(self.model / "model.joblib").predict(ROWS).tolist()
        if self.key == "mlflow":
            import mlflow.pyfunc

            return np.asarray(mlflow.pyfunc.load_model(str(self.model)).predict(ROWS.astype(np.float32)))
        if self.key in ("huggingface", "infinity"):
            from sentence_transformers import SentenceTransformer

            return SentenceTransformer(str(self.model), device="cpu").encode(TEXTS)
        return None

    def rest_body(self) -> dict:
        body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": d, "data": a.reshape(-1).tolist()}
                           for n, a, d in self.v2_inputs()]}
        if self.key == "ollama":
            body["parameters"] = {"max_tokens": 4}
        if self.key == "whisper":
            body["parameters"] = {"temperature": 0.0}
        return body

    def check_output(self, data, shape) -> None:
        want = self.expected()
        if want is None:
            assert data, data
        elif isinstance(want, list):
            assert data == want
        else:
            np.testing.assert_allclose(np.array(data, dtype=float).reshape(shape), want, atol=1e-4)

    def check_v1(self, url: str) -> None:
        if self.key not in ("sklearn", "mlflow", "huggingface"):
            return
        instances = TEXTS if self.key == "huggingface" else ROWS.tolist()
        r = requests.post(f"{url}/v1/models/{self.name}:predict", json={"instances": instances}, timeout=60)
        assert r.status_code == 200, r.text
        self.check_output(r.json()["predictions"], np.shape(r.json()["predictions"]))

    def check_openai(self, url: str) -> None:
        if self.key in ("huggingface", "infinity"):
            r = requests.post(f"{url}/v1/embeddings", json={"model": self.name, "input": TEXTS}, timeout=120)
            assert r.status_code == 200, r.text
            np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], self.expected(), atol=1e-4)
        elif self.key == "ollama":
            r = requests.post(f"{url}/v1/chat/completions", json={
                "model": self.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}, timeout=60)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
        elif self.key == "whisper":
            r = requests.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", self.wav())},
                              data={"model": self.name, "temperature": "0"}, timeout=120)
            assert r.status_code == 200 and "text" in r.json(), r.text


class GrpcTarget:
    def __init__(self, port: int):
        self.grpc_url = f"127.0.0.1:{port}"


def proc_status(pod) -> Dict[str, str]:
    proc = pod.exec("cat", "/proc/1/status")
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(":\t", 1) for line in proc.stdout.splitlines() if ":\t" in line)


@pytest.mark.parametrize("key", SERVED)
def test_image_serves_the_kserve_way(built, key, tmp_path):
    built(key)
    model, env = kserve_model(key, tmp_path)
    pod = images.kserve_pod(key, model, env)
    name = images.example_isvc(key)["metadata"]["name"]
    reqs = Requests(key, model, name)
    pod.start()
    try:
        pod.wait_ready(timeout=420)
        http = pod.url(8080)
        r = requests.get(f"{http}/v2/models/{name}/ready", timeout=10)  # the probe cannot see a failed load
        assert r.status_code == 200, pod.logs()[-4000:]
        # as the pod's securityContext says: uid 1000, no capabilities at all, no privilege escalation
        status = proc_status(pod)
        assert status["Uid"].split()[:2] == ["1000", "1000"], status["Uid"]
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[caps], 16) == 0, (caps, status[caps])
        assert status["NoNewPrivs"].strip() == "1"
        assert pod.exec("touch", "/mnt/models/x").returncode != 0  # the model is mounted read-only
        (container,) = images.serving_runtime(key)["spec"]["containers"]
        if container["securityContext"].get("readOnlyRootFilesystem"):  # only its emptyDirs are writable
            assert pod.exec("touch", "/opt/x").returncode != 0
            assert all(pod.exec("touch", f"{m['mountPath']}/x").returncode == 0 for m in container["volumeMounts"])
        # V2 over REST and gRPC, V1, OpenAI
        r = requests.post(f"{http}/v2/models/{name}/infer", json=reqs.rest_body(), timeout=120)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        reqs.check_output(out["data"], out["shape"])
        # integers: MLServer 1.7.1's protos have no double_param, so tritonclient's floats arrive as None
        params = {k: int(v) if isinstance(v, float) and v.is_integer() else v
                  for k, v in (reqs.rest_body().get("parameters") or {}).items()} or None
        if key == "whisper":  # raw audio bytes, which tritonclient's helper (text only) cannot send
            first = in_pod_grpc(pod, reqs, int(pod_env(pod)["MLSERVER_GRPC_PORT"]), load=False)["outputs"][0]
        else:
            res = grpc(GrpcTarget(pod.ports[8081]), "infer", name, reqs.v2_inputs(), parameters=params)
            assert "outputs" in res, res
            (first, *_) = res["outputs"].values()
        reqs.check_output(first["data"], first["shape"])
        reqs.check_v1(http)
        reqs.check_openai(http)
        # the image's own HEALTHCHECK, run by podman in the container
        hc = subprocess.run([*images.PODMAN, "healthcheck", "run", pod.name], capture_output=True, text=True,
                            timeout=60)
        assert hc.returncode == 0, hc.stdout + hc.stderr
        code, took = pod.stop()
        assert code == 0, pod.logs()[-3000:]
        assert took < pod.grace, took
        assert "Traceback" not in pod.logs()
    finally:
        pod.remove()


# -- ModelMesh's way -----------------------------------------------------------------------------------------
ADAPTER = r"""
import base64, json, sys, time
import grpc
from mlserver import types
from mlserver.grpc import dataplane_pb2 as pb, dataplane_pb2_grpc as pb_grpc
from mlserver.grpc import model_repository_pb2 as mr, model_repository_pb2_grpc as mr_grpc
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter

req = json.load(sys.stdin)
channel = grpc.insecure_channel(f"127.0.0.1:{req['port']}")
infer = pb_grpc.GRPCInferenceServiceStub(channel)
deadline = time.time() + 180
while True:  # the adapter waits for the runtime's gRPC port
    try:
        if infer.ServerLive(pb.ServerLiveRequest(), timeout=2).live:
            break
    except grpc.RpcError:
        if time.time() > deadline:
            raise
        time.sleep(0.5)
if req["load"]:
    mr_grpc.ModelRepositoryServiceStub(channel).RepositoryModelLoad(
        mr.RepositoryModelLoadRequest(model_name=req["model"]), timeout=600)
out = {"ready": infer.ModelReady(pb.ModelReadyRequest(name=req["model"]), timeout=10).ready}
inputs = [types.RequestInput(name=i["name"], shape=i["shape"], datatype=i["datatype"],
                             data=[base64.b64decode(v) for v in i["data"]] if i["datatype"] == "BYTES" else i["data"])
          for i in req["inputs"]]
request = ModelInferRequestConverter.from_types(types.InferenceRequest(inputs=inputs, parameters=req["parameters"]),
                                                model_name=req["model"])
res = ModelInferResponseConverter.to_types(infer.ModelInfer(request, timeout=300))
out["outputs"] = [json.loads(o.model_dump_json()) for o in res.outputs]
json.dump(out, sys.stdout)
"""


def pod_env(pod) -> Dict[str, str]:
    return dict(a.split("=", 1) for flag, a in zip(pod.args, pod.args[1:]) if flag == "--env")


def in_pod_grpc(pod, reqs: Requests, port: int, load: bool) -> dict:
    """ADAPTER in the pod: (load and) infer ``reqs``'s inputs over gRPC V2, BYTES sent as raw bytes."""
    inputs = [{"name": n, "shape": list(a.shape), "datatype": d,
               "data": [v if reqs.key == "whisper" else base64.b64encode(str(v).encode()).decode()
                        for v in a.reshape(-1)] if d == "BYTES" else a.reshape(-1).tolist()}
              for n, a, d in reqs.v2_inputs()]
    body = {"port": port, "model": reqs.name, "inputs": inputs, "load": load,
            "parameters": reqs.rest_body().get("parameters")}
    proc = pod.exec("python", "-c", ADAPTER, stdin=json.dumps(body), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + pod.logs()[-3000:]
    res = json.loads(proc.stdout)
    assert res["ready"] is True
    return res


@pytest.mark.parametrize("key", SERVED)
def test_image_serves_the_modelmesh_way(built, key, tmp_path):
    built(key)
    models = tmp_path / "pod-models"  # the pod's /models emptyDir
    (models / "_mlserver_models").mkdir(parents=True)
    model_id = f"{key}-mm"
    modelmesh_model(key, models, model_id, tmp_path / "art")
    reqs = Requests(key, models / model_id, model_id)
    pod = images.modelmesh_pod(key, models).start()
    try:
        res = in_pod_grpc(pod, reqs, int(pod_env(pod)["MLSERVER_GRPC_PORT"]), load=True)
        first = res["outputs"][0]
        reqs.check_output(first["data"], first["shape"])
        # MLServer listens on the pod's loopback only: nothing of it is reachable from outside the pod
        assert pod.ports == {}
        code, took = pod.stop()
        assert code == 0 and took < pod.grace, (code, took, pod.logs()[-3000:])
    finally:
        pod.remove()


# -- the vllm image (heavy tier): built, and its engine environment imports vLLM -------------------------------
@pytest.mark.skipif("vllm" not in KEYS, reason="the vllm image is in the heavy tier: MODELSERVE_HEAVY_IMAGES=1")
def test_vllm_image_engine_env_imports_vllm(built):
    image = built("vllm")
    proc = subprocess.run([*images.PODMAN_RUN, "--rm", "--network", "none", image, "/opt/vllm/bin/python", "-c",
                           "import vllm, torch; print(vllm.__version__, torch.__version__)"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[0] == "0.32.0", proc.stdout

