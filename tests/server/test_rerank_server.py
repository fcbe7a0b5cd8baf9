"""Reranking on transformers (HuggingFaceRuntime, task text_reranking) behind a real mlserver: V2 over HTTP and gRPC,
V1, /v1/rerank and /v2/rerank (with the official cohere client), /v1/score (vLLM's shape), against
sentence-transformers' CrossEncoder on the same tiny cross-encoders (built offline, tests/support/hf_models.py)."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import requests

from ..support.harness import Server, grpc, write_model
from ..support.hf_models import build_cross_encoder, minilm_dir
from ..support.runtimes import output

pytest.importorskip("transformers")

HF = "modelserve.huggingface.HuggingFaceRuntime"
QUERY = "what does a model server do"
DOCS = ["A model server answers inference requests.", "The fox jumps over the lazy dog.", "Bananas are yellow.",
        "Servers serve models over HTTP and gRPC.", "KServe runs model servers on Kubernetes."]


@pytest.fixture(scope="session")
def rerank_server(tmp_path_factory):
    art = tmp_path_factory.mktemp("rerank-art")
    one, two = build_cross_encoder(art / "ce1"), build_cross_encoder(art / "ce2", num_labels=2, seed=6)
    root = tmp_path_factory.mktemp("rerank-server")
    write_model(root, "rerank", {"implementation": HF, "parameters": {"uri": str(one)}})  # task inferred
    write_model(root, "rerank2", {"implementation": HF, "parameters": {"uri": str(two),
                                                                      "extra": {"task": "text_reranking"}}})
    write_model(root, "rerank-cut", {"implementation": HF, "parameters": {"uri": str(one),
                                                                         "extra": {"max_length": 16}}})
    write_model(root, "minilm", {"implementation": HF, "parameters": {"uri": str(minilm_dir())}})
    srv = Server(root, parallel_workers=0, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}).start(180)
    srv.ce1, srv.ce2 = one, two
    yield srv
    srv.stop()


def reference(folder, pairs, two_labels=False):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(folder), device="cpu")
    scores = ce.predict(pairs, apply_softmax=two_labels)
    return np.asarray(scores)[:, 1] if two_labels else np.asarray(scores)


def v2_body(query, docs, outputs=None):
    docs = np.asarray(docs, dtype=object)
    body = {"inputs": [{"name": "query", "datatype": "BYTES", "shape": [len(query) if isinstance(query, list) else 1],
                        "data": query if isinstance(query, list) else [query]},
                       {"name": "documents", "datatype": "BYTES", "shape": list(docs.shape),
                        "data": docs.reshape(-1).tolist()}]}
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


def test_v2_scores_equal_cross_encoder_predict(rerank_server):
    want = reference(rerank_server.ce1, [(QUERY, d) for d in DOCS])
    r = rerank_server.infer("rerank", v2_body(QUERY, DOCS, ["scores", "indices"]))
    assert r.status_code == 200, r.text
    scores, indices = output(r.json(), "scores"), output(r.json(), "indices")
    assert scores["datatype"] == "FP32" and scores["shape"] == [len(DOCS)]
    np.testing.assert_allclose(scores["data"], want, atol=1e-4)
    assert indices["datatype"] == "INT64" and indices["data"] == np.argsort(-want, kind="stable").tolist()
    # the default answer is the scores alone; two queries against their own documents: one row each
    r = rerank_server.infer("rerank", v2_body([QUERY, "yellow fruit"], [DOCS[:3], DOCS[2:]]))
    (only,) = r.json()["outputs"]
    assert only["name"] == "scores" and only["shape"] == [2, 3], r.text
    want2 = reference(rerank_server.ce1, [(QUERY, d) for d in DOCS[:3]] + [("yellow fruit", d) for d in DOCS[2:]])
    np.testing.assert_allclose(only["data"], want2, atol=1e-4)


def test_a_two_label_cross_encoder_scores_the_probability_of_label_1(rerank_server):
    want = reference(rerank_server.ce2, [(QUERY, d) for d in DOCS], two_labels=True)
    r = rerank_server.infer("rerank2", v2_body(QUERY, DOCS))
    np.testing.assert_allclose(output(r.json(), "scores")["data"], want, atol=1e-4)


def test_grpc_and_v1(rerank_server):
    want = reference(rerank_server.ce1, [(QUERY, d) for d in DOCS])
    res = grpc(rerank_server, "infer", "rerank", [("query", np.array([QUERY], dtype=object), "BYTES"),
                                                  ("documents", np.array(DOCS, dtype=object), "BYTES")])
    np.testing.assert_allclose(res["outputs"]["scores"]["data"], want, atol=1e-4)
    r = requests.post(f"{rerank_server.url}/v1/models/rerank:predict",
                      json={"instances": [{"query": QUERY, "documents": DOCS}]}, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["predictions"]).reshape(-1), want, atol=1e-4)


def test_rerank_route_in_cohere_and_jina_shape(rerank_server):
    want = reference(rerank_server.ce1, [(QUERY, d) for d in DOCS])
    order = np.argsort(-want, kind="stable")
    docs = [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]]  # strings or {"text"} objects
    r = requests.post(f"{rerank_server.url}/v1/rerank", timeout=30, json={
        "model": "rerank", "query": QUERY, "documents": docs, "top_n": 3, "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == order[:3].tolist()
    np.testing.assert_allclose([x["relevance_score"] for x in body["results"]], want[order[:3]], atol=1e-4)
    assert [x["document"]["text"] for x in body["results"]] == [DOCS[i] for i in order[:3]]
    assert body["usage"]["total_tokens"] > len(DOCS) and body["model"] == "rerank"
    r = requests.post(f"{rerank_server.url}/v1/rerank", json={"model": "rerank", "query": QUERY, "documents": DOCS},
                      timeout=30)
    assert len(r.json()["results"]) == len(DOCS) and "document" not in r.json()["results"][0]


def test_the_official_cohere_clients(rerank_server):
    cohere = pytest.importorskip("cohere")
    want = reference(rerank_server.ce1, [(QUERY, d) for d in DOCS])
    order = np.argsort(-want, kind="stable")
    v1 = cohere.Client(api_key="unused", base_url=rerank_server.url)
    res = v1.rerank(model="rerank", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [x.index for x in res.results] == order[:2].tolist()
    assert res.results[0].document.text == DOCS[order[0]]
    v2 = cohere.ClientV2(api_key="unused", base_url=rerank_server.url)
    res = v2.rerank(model="rerank", query=QUERY, documents=DOCS, top_n=4)
    assert [x.index for x in res.results] == order[:4].tolist()
    np.testing.assert_allclose([x.relevance_score for x in res.results], want[order[:4]], atol=1e-4)


def test_score_route_in_vllms_shape(rerank_server):
    want = reference(rerank_server.ce1, [(QUERY, d) for d in DOCS])
    r = requests.post(f"{rerank_server.url}/v1/score", json={"model": "rerank", "text_1": QUERY, "text_2": DOCS},
                      timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(DOCS)))
    np.testing.assert_allclose([d["score"] for d in body["data"]], want, atol=1e-4)
    pairs = [("yellow fruit", DOCS[2]), (QUERY, DOCS[0])]
    r = requests.post(f"{rerank_server.url}/v1/score", timeout=30, json={
        "model": "rerank", "text_1": [p[0] for p in pairs], "text_2": [p[1] for p in pairs]})
    np.testing.assert_allclose([d["score"] for d in r.json()["data"]], reference(rerank_server.ce1, pairs), atol=1e-4)


def test_concurrent_reranks_are_merged_and_each_gets_its_own_scores(rerank_server):
    cases = [(f"{QUERY} {i}", DOCS[: 2 + i % 4]) for i in range(12)]
    with cf.ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda c: rerank_server.infer("rerank", v2_body(*c)).json(), cases))
    for (query, docs), body in zip(cases, got):
        np.testing.assert_allclose(output(body, "scores")["data"],
                                   reference(rerank_server.ce1, [(query, d) for d in docs]), atol=1e-4)


LONG = " ".join(["token"] * 600)


@pytest.mark.parametrize("path,body,status,fragment", [
    ("/v1/rerank", {"model": "rerank", "query": " ", "documents": DOCS}, 400, "'query' must be a non-empty string"),
    ("/v1/rerank", {"model": "rerank", "query": QUERY, "documents": []}, 400, "'documents' must be a non-empty list"),
    ("/v1/rerank", {"model": "rerank", "query": QUERY, "documents": DOCS, "top_n": 0}, 400, "from 1 to"),
    ("/v1/rerank", {"model": "rerank", "query": QUERY, "documents": DOCS, "top_n": 9}, 400, "(5)"),
    ("/v1/rerank", {"model": "rerank", "query": QUERY, "documents": [{"title": "x"}]}, 400, "documents[0]"),
    ("/v1/rerank", {"model": "rerank", "query": QUERY, "documents": DOCS, "max_chunks_per_doc": 3}, 400,
     "'max_chunks_per_doc' is not supported"),
    ("/v1/rerank", {"model": "rerank", "query": QUERY, "documents": [LONG]}, 400, "takes at most 512"),
    ("/v1/rerank", {"model": "minilm", "query": QUERY, "documents": DOCS}, 400,
     "does not serve /v1/rerank (it serves: /v1/embeddings)"),
    ("/v1/rerank", {"model": "nope", "query": QUERY, "documents": DOCS}, 404, "not found"),
    ("/v1/score", {"model": "rerank", "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400, "send one text_1"),
    ("/v1/score", {"model": "rerank", "text_1": QUERY, "text_2": []}, 400, "'text_2' must be"),
])
def test_bad_rerank_requests_are_openai_errors_naming_the_problem(rerank_server, path, body, status, fragment):
    r = requests.post(rerank_server.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    msg = r.json()["error"]["message"]
    assert fragment in msg and "\n" not in msg, msg
    assert rerank_server.infer("rerank", v2_body(QUERY, DOCS)).status_code == 200


@pytest.mark.parametrize("body,fragment", [
    ({"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": [QUERY]}]}, "missing input 'documents'"),
    (v2_body("  ", DOCS), "query 0 is empty"),
    (v2_body([QUERY, QUERY], DOCS), "does not fit 2 queries"),
    ({"inputs": [{"name": "query", "datatype": "BYTES", "shape": [1], "data": [QUERY]},
                 {"name": "documents", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "datatype BYTES"),
    ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [QUERY]}]}, "unknown input 'text'"),
    (v2_body(QUERY, [LONG]), "pair 0 (the query and document 0) is"),
])
def test_bad_v2_rerank_requests_are_400s(rerank_server, body, fragment):
    r = rerank_server.infer("rerank", body)
    assert r.status_code == 400 and fragment in r.json()["error"], r.text


def test_max_length_truncates_long_documents(rerank_server):
    r = rerank_server.infer("rerank-cut", v2_body(QUERY, [LONG, DOCS[0]]))
    assert r.status_code == 200, r.text
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(rerank_server.ce1), device="cpu", max_length=16)
    np.testing.assert_allclose(output(r.json(), "scores")["data"], ce.predict([(QUERY, LONG), (QUERY, DOCS[0])]),
                               atol=1e-4)


def test_the_openai_routes_also_answer_under_kubeais_proxy_prefix(rerank_server):
    """DHCore's run status names /openai/v1/... (KubeAI's proxy paths): the same routes answer there."""
    models = requests.get(f"{rerank_server.url}/openai/v1/models", timeout=30).json()
    assert "rerank" in [m["id"] for m in models["data"]]
    r = requests.post(f"{rerank_server.url}/openai/v1/rerank", json={"model": "rerank", "query": QUERY,
                                                                     "documents": DOCS, "top_n": 1}, timeout=30)
    assert r.status_code == 200 and len(r.json()["results"]) == 1, r.text
