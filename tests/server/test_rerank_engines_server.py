"""Reranking on the engines: KubeAIRuntime feature Reranking on a real vLLM (.venv-vllm, its /v1/score) and a real
Infinity (.venv-infinity, its /rerank), and HuggingFaceRuntime on backend VLLM, behind one real mlserver beside the
transformers backend, all on the same tiny cross-encoder: each equals sentence-transformers' CrossEncoder and
the others, on V2 and on /v1/rerank, /v1/score."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from ..support.engine_envs import engine_command
from ..support.harness import Server, write_model
from ..support.hf_models import build_cross_encoder
from ..support.runtimes import output

KUBEAI, HF = "modelserve.kubeai.KubeAIRuntime", "modelserve.huggingface.HuggingFaceRuntime"
VLLM_ARGS = ["--max-model-len", "512", "--kv-cache-memory-bytes", "64M", "--dtype", "float32"]
QUERY = "what does a model server do"
DOCS = ["A model server answers inference requests.", "The fox jumps over the lazy dog.", "Bananas are yellow.",
        "Servers serve models over HTTP and gRPC.", "KServe runs model servers on Kubernetes."]
MODELS = ("rr-vllm", "rr-infinity", "rr-hf-vllm", "rr-transformers")


@pytest.fixture(scope="module")
def engines_server(tmp_path_factory):
    vllm, infinity = engine_command("MODELSERVE_VLLM_COMMAND"), engine_command("MODELSERVE_INFINITY_COMMAND")
    art = tmp_path_factory.mktemp("rerank-engines-art")
    ce = build_cross_encoder(art / "ce1")
    root = tmp_path_factory.mktemp("rerank-engines")
    cache = str(root / "cache")
    write_model(root, "rr-vllm", {"implementation": KUBEAI, "parallel_workers": 0, "parameters": {"extra": {
        "engine": "VLLM", "features": ["Reranking"], "url": str(ce), "args": VLLM_ARGS, "start_timeout": 300,
        "cache_dir": cache}}})
    write_model(root, "rr-infinity", {"implementation": KUBEAI, "parallel_workers": 0, "parameters": {"extra": {
        "engine": "Infinity", "features": ["Reranking"], "url": str(ce), "start_timeout": 300, "cache_dir": cache}}})
    write_model(root, "rr-hf-vllm", {"implementation": HF, "parameters": {"uri": str(ce), "extra": {
        "backend": "VLLM", "dtype": "FLOAT32", "max_length": 512, "engine_args": VLLM_ARGS[2:4], "cache_dir": cache,
        "start_timeout": 300}}})
    write_model(root, "rr-transformers", {"implementation": HF, "parameters": {"uri": str(ce)}})
    srv = Server(root, parallel_workers=0, env={"MODELSERVE_VLLM_COMMAND": vllm, "MODELSERVE_INFINITY_COMMAND": infinity,
                                                "HF_HUB_OFFLINE": "1"}).start(timeout=600)
    srv.ce = ce
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(engines_server):
    from sentence_transformers import CrossEncoder

    return np.asarray(CrossEncoder(str(engines_server.ce), device="cpu").predict([(QUERY, d) for d in DOCS]))


def v2(query, docs):
    return {"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": [query]},
                       {"name": "documents", "datatype": "BYTES", "shape": [len(docs)], "data": docs}],
            "outputs": [{"name": "scores"}, {"name": "indices"}]}


@pytest.mark.parametrize("model", MODELS)
def test_v2_scores_equal_cross_encoder_on_every_backend(engines_server, reference, model):
    r = engines_server.infer(model, v2(QUERY, DOCS))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(output(r.json(), "scores")["data"], reference, atol=1e-3)
    assert output(r.json(), "indices")["data"] == np.argsort(-reference, kind="stable").tolist()


@pytest.mark.parametrize("model", MODELS)
def test_rerank_and_score_routes_give_the_same_text_on_every_backend(engines_server, reference, model):
    r = requests.post(f"{engines_server.url}/v1/rerank", timeout=60, json={
        "model": model, "query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    order = np.argsort(-reference, kind="stable")[:3]
    assert set(body) == {"id", "model", "results", "usage"} and body["model"] == model
    assert [x["index"] for x in body["results"]] == order.tolist()
    assert [x["document"]["text"] for x in body["results"]] == [DOCS[i] for i in order]
    np.testing.assert_allclose([x["relevance_score"] for x in body["results"]], reference[order], atol=1e-3)
    r = requests.post(f"{engines_server.url}/v1/score", json={"model": model, "text_1": QUERY, "text_2": DOCS},
                      timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([d["score"] for d in r.json()["data"]], reference, atol=1e-3)


def test_the_backends_agree_with_each_other(engines_server):
    got = {m: np.array(output(engines_server.infer(m, v2("yellow fruit", DOCS)).json(), "scores")["data"])
           for m in MODELS}
    for m in MODELS[:-1]:
        np.testing.assert_allclose(got[m], got["rr-transformers"], atol=1e-3, err_msg=m)


@pytest.mark.parametrize("model", ["rr-vllm", "rr-infinity"])
def test_bad_rerank_requests_are_refused_before_the_engine(engines_server, model):
    r = requests.post(f"{engines_server.url}/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCS,
                                                               "top_n": 0}, timeout=30)
    assert r.status_code == 400 and "'top_n'" in r.json()["error"]["message"], r.text
    r = requests.post(f"{engines_server.url}/v1/embeddings", json={"model": model, "input": "x"}, timeout=30)
    assert r.status_code == 400 and "it serves: /v1/rerank, /v1/score" in r.json()["error"]["message"], r.text
