"""KubeAIRuntime with engine Infinity: a real `infinity_emb v2` (from .venv-infinity) supervised behind a real
mlserver, serving the real all-MiniLM-L6-v2; V2 and /v1/embeddings equal sentence-transformers."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import requests

from ..support.engine_envs import engine_command
from ..support.harness import Server, grpc, write_model
from ..support.hf_models import minilm_dir
from ..support.runtimes import text_body

openai = pytest.importorskip("openai")

TEXTS = ["A man is eating food.", "A man rides a horse.", "The new movie is awesome", "ça va? 東京"]


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    command = engine_command("MODELSERVE_INFINITY_COMMAND")
    root = tmp_path_factory.mktemp("infinity-server")
    write_model(root, "emb", {"implementation": "modelserve.kubeai.KubeAIRuntime", "parallel_workers": 0,
                              "parameters": {"extra": {"engine": "Infinity", "url": str(minilm_dir()),
                                                       "start_timeout": 240, "cache_dir": str(root / "cache")}}})
    srv = Server(root, parallel_workers=0, env={"MODELSERVE_INFINITY_COMMAND": command}).start(timeout=300)
    srv.client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield srv
    srv.stop()


def test_v2_embeddings_equal_sentence_transformers(server, reference):
    res = server.infer("emb", text_body(TEXTS))
    assert res.status_code == 200, res.text
    out = res.json()["outputs"][0]
    assert out["name"] == "embedding" and out["datatype"] == "FP32" and out["shape"] == [4, 384]
    np.testing.assert_allclose(np.array(out["data"]).reshape(4, 384), reference, atol=1e-4)


def test_openai_embeddings_equal_sentence_transformers_in_both_encodings(server, reference):
    res = server.client.embeddings.create(model="emb", input=TEXTS)  # the client asks for base64
    np.testing.assert_allclose(np.array([d.embedding for d in res.data]), reference, atol=1e-4)
    raw = requests.post(server.url + "/v1/embeddings", json={"model": "emb", "input": TEXTS[0],
                                                              "encoding_format": "float"}, timeout=30).json()
    np.testing.assert_allclose(raw["data"][0]["embedding"], reference[0], atol=1e-4)
    assert raw["model"] == "emb" and raw["usage"]["prompt_tokens"] > 0


def test_grpc_and_concurrent_requests_get_their_own_rows(server, reference):
    out = grpc(server, "infer", "emb", [("text", np.array(TEXTS[:2], dtype=object), "BYTES")])["outputs"]["embedding"]
    assert out["datatype"] == "FP32" and out["shape"] == [2, 384]
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 384), reference[:2], atol=1e-4)
    with cf.ThreadPoolExecutor(8) as pool:  # the engine batches these together; each gets its own answer
        results = list(pool.map(lambda i: server.infer("emb", text_body([TEXTS[i % 4]])), range(32)))
    for i, res in enumerate(results):
        assert res.status_code == 200, res.text
        np.testing.assert_allclose(res.json()["outputs"][0]["data"], reference[i % 4], atol=1e-4)


@pytest.mark.parametrize("body,fragment", [
    (text_body([1, 2], datatype="INT32"), "this model takes text (datatype BYTES), got INT32"),
    (text_body([], shape=[0]), "empty batch"),
    (text_body(["fine", "  "]), "text 1 is empty"),
    ({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, "unknown input 'prompt'"),
    ({**text_body(["x"]), "parameters": {"temperature": 0.5}}, "unknown parameter 'temperature'"),
])
def test_bad_v2_input_is_a_400_naming_the_problem(server, body, fragment):
    res = server.infer("emb", body)
    assert res.status_code == 400, res.text
    assert fragment in res.json()["error"]
    assert server.infer("emb", text_body(["still serving"])).status_code == 200


@pytest.mark.parametrize("payload,fragment", [
    ({"input": [1, 2]}, "input"),
    ({"input": []}, "input"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
])
def test_bad_openai_input_is_a_4xx_in_openai_shape(server, payload, fragment):
    res = requests.post(server.url + "/v1/embeddings", json={"model": "emb", **payload}, timeout=30)
    assert 400 <= res.status_code < 500, res.text
    assert fragment in res.json()["error"]["message"]


def test_generation_routes_are_refused_for_an_embedding_engine(server):
    res = requests.post(server.url + "/v1/completions", json={"model": "emb", "prompt": "x"}, timeout=30)
    assert res.status_code == 400 and "does not serve /v1/completions" in res.json()["error"]["message"]


def test_infinitys_own_metrics_are_on_the_metrics_port_with_the_models_label(server):
    from prometheus_client.parser import text_string_to_metric_families

    def served():
        text = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "http_requests_total" and s.labels.get("model") == "emb"
                   and s.labels.get("handler", "").endswith("/embeddings"))

    before = served()
    for _ in range(3):
        server.client.embeddings.create(model="emb", input=TEXTS[:2])
    assert served() == before + 3  # Infinity's own counter of its /embeddings route, one per request
