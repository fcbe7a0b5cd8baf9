"""The README's serve command: `mlserver start ./settings` with every example built by settings/build_examples.py
(the same settings.json, only on free ports) serves each example model; one real request per model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from ..support.engine_envs import ENGINE_ENVS, engine_command
from ..support.harness import Server, eventually
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


def test_the_documented_adapter_calls_on_the_llama_example(examples):
    """docs/adapters.md's curl calls: the example's adapter folder loaded again under another name (relative to
    the model's folder), answering as the static one does, then unloaded."""
    url = f"{examples.url}/v2/models/tiny-llama/adapters"
    r = requests.post(url, json={"name": "support-bot", "url": "./adapter"}, timeout=120)
    assert r.status_code == 201, r.text
    try:
        assert {a["name"]: a["source"] for a in requests.get(url, timeout=30).json()["adapters"]} == {
            "tiny-lora": "settings", "support-bot": "runtime"}
        texts = [requests.post(f"{examples.url}/v1/completions", timeout=120, json={
            "model": m, "prompt": "Once upon", "max_tokens": 6, "temperature": 0}).json()["choices"][0]["text"]
            for m in ("tiny-lora", "support-bot")]
        assert texts[0] == texts[1], texts
    finally:
        assert requests.delete(url + "/support-bot", timeout=60).status_code == 200


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


# -- metrics: a load run over every example, read back from the scrape and by a real Prometheus --------------
def _scrape(examples) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{examples.metrics_port}/metrics", timeout=30).text
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, s.labels.get("model"), s.labels.get("adapter"), s.labels.get("protocol"),
                   s.labels.get("code"))
            out[key] = out.get(key, 0.0) + s.value
    return out


def _sum(samples: dict, name: str, model: str, adapter=None, protocol=None, code=None) -> float:
    return sum(v for (n, m, a, p, c), v in samples.items() if n == name and m == model
               and adapter in (None, a) and protocol in (None, p) and code in (None, c))


def _load_round(examples, client) -> dict:
    """One request of each kind to every example: (model, protocol) -> requests, and the usage returned."""
    import tritonclient.http as httpclient

    sent: dict = {}
    usage = {"tiny-lora": [0, 0], "tiny-generation": [0, 0]}
    triton = httpclient.InferenceServerClient(examples.url.removeprefix("http://"), network_timeout=120)
    for name in examples.names:  # V2 REST (binary tensors), every model
        triton.infer(name, _triton_inputs(examples, name), parameters=PARAMETERS.get(name))
        sent[name, "v2-rest"] = sent.get((name, "v2-rest"), 0) + 1
    for name in ("iris-sklearn", "iris-mlflow"):  # V1
        meta = requests.get(f"{examples.url}/v2/models/{name}", timeout=10).json()
        row = [5.1, 3.5, 1.4, 0.2] if len(meta["inputs"]) == 1 else \
            {i["name"]: 5.1 - 0.5 * n for n, i in enumerate(meta["inputs"])}
        r = requests.post(f"{examples.url}/v1/models/{name}:predict", json={"instances": [row]}, timeout=30)
        assert r.status_code == 200, (name, r.text)
        sent[name, "v1"] = 1
    for name in ("minilm-embedding", "minilm-infinity"):
        client.embeddings.create(model=name, input=["a quiet town by the sea", "a harbour"])
        sent[name, "openai"] = 1
    r = requests.post(f"{examples.url}/v1/rerank", json={"model": "tiny-rerank", "query": "a town",
                                                          "documents": ["a town by the sea", "bananas"]}, timeout=60)
    assert r.status_code == 200, r.text
    sent["tiny-rerank", "openai"] = 1
    # generation: whole, streamed with its usage, streamed without (counted all the same)
    chat = client.chat.completions.create(model="tiny-lora", messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=4)
    usage["tiny-lora"][0] += chat.usage.prompt_tokens
    usage["tiny-lora"][1] += chat.usage.completion_tokens
    chunks = list(client.completions.create(model="tiny-lora", prompt="Once upon", max_tokens=3, stream=True,
                                            stream_options={"include_usage": True}))
    usage["tiny-lora"][0] += chunks[-1].usage.prompt_tokens
    usage["tiny-lora"][1] += chunks[-1].usage.completion_tokens
    comp = client.completions.create(model="tiny-generation", prompt="Hello", max_tokens=3)
    usage["tiny-generation"][0] += comp.usage.prompt_tokens
    usage["tiny-generation"][1] += comp.usage.completion_tokens
    list(client.completions.create(model="tiny-generation", prompt="Hello", max_tokens=3, stream=True))
    sent["tiny-llama", "openai"], sent["tiny-generation", "openai"] = 2, 2
    return {"sent": sent, "usage": usage}


def test_a_load_run_over_every_example_is_counted_per_model_with_tokens_as_usage(examples, tmp_path):
    """The issue's measure: requests of every kind to every model in settings/, then one scrape: per-model counts
    equal the requests sent, token counts equal what ``usage`` said; vLLM's own counters agree; then a real
    Prometheus scrapes the server and its query API gives the per-model request rate."""
    from ..support.prometheus import Prometheus

    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=examples.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    before = _scrape(examples)
    rounds = [_load_round(examples, client) for _ in range(2)]
    after = _scrape(examples)
    sent: dict = {}
    for r in rounds:
        for key, n in r["sent"].items():
            sent[key] = sent.get(key, 0) + n

    def delta(name, model, **kw):
        return _sum(after, name, model, **kw) - _sum(before, name, model, **kw)

    for (model, protocol), n in sorted(sent.items()):
        assert delta("modelserve_requests_total", model, protocol=protocol, code="2xx") == n, (model, protocol)
        assert delta("modelserve_requests_total", model, protocol=protocol) == n, (model, protocol)  # no failures
    prompt = sum(r["usage"]["tiny-lora"][0] for r in rounds)
    completion = sum(r["usage"]["tiny-lora"][1] for r in rounds)
    assert delta("modelserve_prompt_tokens_total", "tiny-llama", adapter="tiny-lora") == prompt
    assert delta("modelserve_generation_tokens_total", "tiny-llama", adapter="tiny-lora") == completion
    # the transformers example: its usage-carrying answers, plus per round a stream without usage and the V2
    # request (max_new_tokens 3 each)
    known = sum(r["usage"]["tiny-generation"][1] for r in rounds)
    assert known <= delta("modelserve_generation_tokens_total", "tiny-generation") <= known + 2 * (3 + 3)
    # per round: two texts on OpenAI, one row on V2
    assert delta("modelserve_embedding_inputs_total", "minilm-infinity") == 2 * (2 + 1)
    assert delta("modelserve_embedding_inputs_total", "minilm-embedding") == 2 * (2 + 1)
    assert delta("modelserve_audio_seconds_total", "tiny-whisper") == pytest.approx(2 * 1.0, abs=0.05)
    # vLLM's own metrics, re-exported with the model's label
    assert _sum(after, "vllm:num_requests_running", "tiny-llama") == 0
    def vllm_agrees():  # vLLM counts as its output processor finishes each request
        nonlocal after
        after = _scrape(examples)
        return (delta("vllm:prompt_tokens_total", "tiny-llama") == delta("modelserve_prompt_tokens_total", "tiny-llama")
                and delta("vllm:generation_tokens_total", "tiny-llama")
                == delta("modelserve_generation_tokens_total", "tiny-llama"))

    assert eventually(vllm_agrees, timeout=15), {k: v for k, v in after.items() if "tokens" in k[0]}

    if not Prometheus.available():
        pytest.skip("Debian's prometheus is not installed (scripts/dev.sh setup installs it)")
    prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{examples.metrics_port}"]).start()
    try:
        assert eventually(prom.targets_up, timeout=30)
        body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
        for _ in range(6):  # traffic while Prometheus scrapes every second
            for _ in range(5):
                assert examples.infer("iris-sklearn", body).status_code == 200
            time.sleep(1)
        rates = prom.query('sum by (model) (rate(modelserve_requests_total[10s]))')
        by_model = {r["metric"]["model"]: float(r["value"][1]) for r in rates}
        assert by_model.get("iris-sklearn", 0) > 1.0, by_model  # ~5 req/s sent
        assert set(by_model) <= set(examples.names), by_model
        counted = prom.query('sum(modelserve_requests_total{model="iris-sklearn",protocol="v2-rest"})')
        assert float(counted[0]["value"][1]) >= delta("modelserve_requests_total", "iris-sklearn", protocol="v2-rest")
        assert prom.query('vllm:num_requests_running{model="tiny-llama"}'), "vLLM's metrics through our port"
        # every query of the Grafana dashboard is valid PromQL on these metrics; the request panels have data
        dashboard = json.loads((REPO / "dashboards" / "modelserve.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                result = prom.query(target["expr"].replace("$model", ".*").replace("$__rate_interval", "10s"))
                if panel["title"].startswith(("Requests/s", "Request latency", "Tokens/s")):
                    assert result, (panel["title"], target["expr"])
    finally:
        prom.stop()
