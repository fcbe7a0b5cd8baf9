"""The README's serve command: `mlserver start ./settings` with every example built by settings/build_examples.py
(the same settings.json, only on free ports) serves each example model; one real request per model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from ..support.engine_envs import ENGINE_ENVS, engine_command
from ..support.harness import Server
from ..support.whisper_models import encode_audio, speech_like

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "settings"


# the Python 3.12 lane (scripts/dev.sh test312) serves every runtime of settings/ through this module
pytestmark = pytest.mark.lane312


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    env = {variable: engine_command(variable) for variable in ENGINE_ENVS}
    subprocess.run([sys.executable, str(SETTINGS / "build_examples.py")], check=True, cwd=REPO)
    root = tmp_path_factory.mktemp("examples")
    models = sorted(p.parent for p in SETTINGS.glob("*/model-settings.json"))
    for folder in models:  # each example's own folder, so its relative paths resolve as in ./settings
        (root / folder.name).symlink_to(folder, target_is_directory=True)
    shipped = json.loads((SETTINGS / "settings.json").read_text())
    srv = Server(root, env=env, extra={k: v for k, v in shipped.items() if not k.endswith("_port")})
    srv.names = [json.loads((f / "model-settings.json").read_text())["name"] for f in models]
    srv.start(timeout=480)
    yield srv
    srv.stop()


def test_every_example_is_ready(examples):
    assert {"iris-sklearn", "iris-mlflow", "minilm-embedding", "tiny-generation", "tiny-llama", "tiny-whisper",
            "minilm-infinity", "tiny-rerank"} <= set(examples.names)
    for name in examples.names:
        assert requests.get(f"{examples.url}/v2/models/{name}/ready", timeout=10).status_code == 200, name


def test_tabular_examples_predict(examples):
    for name in ("iris-sklearn", "iris-mlflow"):
        meta = requests.get(f"{examples.url}/v2/models/{name}", timeout=10).json()
        inputs = [{"name": i["name"], "datatype": "FP64", "shape": [1], "data": [5.1 - 0.5 * n]}
                  for n, i in enumerate(meta["inputs"])] if len(meta["inputs"]) > 1 else \
            [{"name": meta["inputs"][0]["name"], "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
        res = examples.infer(name, {"inputs": inputs})
        assert res.status_code == 200, (name, res.text)
        assert res.json()["outputs"][0]["data"][0] in (0, 1, 2), res.text


def test_text_examples_answer(examples):
    emb = [requests.post(f"{examples.url}/v1/embeddings", json={"model": m, "input": ["a quiet town by the sea"]},
                         timeout=60).json()["data"][0]["embedding"] for m in ("minilm-embedding", "minilm-infinity")]
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-4)  # one MiniLM, two runtimes
    chat = requests.post(f"{examples.url}/v1/chat/completions", timeout=120, json={
        "model": "tiny-lora", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4})
    assert chat.status_code == 200 and chat.json()["model"] == "tiny-lora", chat.text
    gen = examples.infer("tiny-generation", {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1],
                                                         "data": ["Hello"]}], "parameters": {"max_new_tokens": 3}})
    assert gen.status_code == 200, gen.text


def test_rerank_example_ranks_documents(examples):
    docs = ["It answers inference requests.", "Bananas are yellow.", "A server of models."]
    r = requests.post(f"{examples.url}/v1/rerank", json={"model": "tiny-rerank", "query": "what does a model server do",
                                                          "documents": docs, "top_n": 2}, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"], results
    v2 = examples.infer("tiny-rerank", {"inputs": [
        {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["what does a model server do"]},
        {"name": "documents", "datatype": "BYTES", "shape": [3], "data": docs}]})
    scores = v2.json()["outputs"][0]["data"]
    assert [x["index"] for x in results] == sorted(range(3), key=lambda i: -scores[i])[:2], (scores, results)


def test_speech_example_transcribes_an_uploaded_file(examples):
    res = requests.post(f"{examples.url}/v2/models/tiny-whisper/infer", data=encode_audio(speech_like(1.0), "flac"),
                        headers={"Content-Type": "audio/flac"}, params={"temperature": 0, "beam_size": 1},
                        timeout=120)
    assert res.status_code == 200, res.text
    assert res.json()["outputs"][0]["name"] == "text"


def _triton_inputs(examples, name):
    """tritonclient.http inputs (binary, its default) for one example model, from its metadata."""
    import tritonclient.http as httpclient

    meta = requests.get(f"{examples.url}/v2/models/{name}", timeout=10).json()
    inputs = []
    specs = meta["inputs"][:1] if meta["inputs"][0]["datatype"] == "BYTES" else meta["inputs"]  # text: one tensor
    if name == "tiny-rerank":  # a query and its documents
        specs = meta["inputs"]
    for n, spec in enumerate(specs):
        if spec["name"] == "documents":
            arr = np.array([b"a town by the sea", b"a quiet harbour"], dtype=object)
        elif spec["datatype"] == "BYTES":
            value = encode_audio(speech_like(1.0), "flac") if name == "tiny-whisper" else b"a quiet town by the sea"
            arr = np.array([value], dtype=object)
        elif len(specs) > 1:  # one column per feature
            arr = np.array([5.1 - 0.5 * n])
        else:
            arr = np.array([[5.1, 3.5, 1.4, 0.2]])
        inp = httpclient.InferInput(spec["name"], list(arr.shape), spec["datatype"] if arr.dtype != float else "FP64")
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


PARAMETERS = {"tiny-generation": {"max_new_tokens": 3}, "tiny-llama": {"max_tokens": 3, "temperature": 0},
              "tiny-whisper": {"temperature": 0, "beam_size": 1}}


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_tritonclient_with_its_default_arguments_on_every_example(examples, compression):
    """tritonclient.http as a new user calls it: the binary tensor extension both ways, compressed or not."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(examples.url.removeprefix("http://"), network_timeout=120)
    for name in examples.names:
        res = client.infer(name, _triton_inputs(examples, name), parameters=PARAMETERS.get(name),
                           request_compression_algorithm=compression, response_compression_algorithm=compression)
        outputs = res.get_response()["outputs"]
        assert outputs and all("binary_data_size" in o["parameters"] for o in outputs), (name, outputs)
        first = res.as_numpy(outputs[0]["name"])
        assert first is not None and first.size > 0, name
        if outputs[0]["datatype"] == "BYTES":
            assert all(isinstance(v, bytes) for v in first.reshape(-1)), name
