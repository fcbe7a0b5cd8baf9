"""HuggingFaceRuntime behind a real mlserver process: HTTP (V2, V1), gRPC, batching, bad input, load errors."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pytest
import requests

from ..support.harness import Server, grpc, write_model
from ..support.hf_models import LABELS, build_classifier, build_masked_lm, build_token_classifier, minilm_dir
from ..support.runtimes import output, text_body

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

HF = "modelserve.huggingface.HuggingFaceRuntime"
TEXTS = ["A man is eating food.", "hello", "The quick brown fox jumps over the lazy dog.", "Kubernetes!"]


@pytest.fixture(scope="session")
def hf_server(tmp_path_factory):
    """One server (default parallel workers) with MiniLM and a tiny classifier, plain and batched."""
    art = tmp_path_factory.mktemp("hf-art")
    classifier = build_classifier(art / "classifier")
    root = tmp_path_factory.mktemp("hf-server")
    minilm = {"uri": str(minilm_dir())}
    write_model(root, "minilm", {"implementation": HF, "parameters": minilm})
    write_model(root, "minilm-batched", {"implementation": HF, "max_batch_size": 16, "max_batch_time": 0.1,
                                         "parameters": {**minilm, "extra": {"coalesce": False}}})
    write_model(root, "classifier", {"implementation": HF, "parameters": {"uri": "./model"}},
                {"model": classifier})
    write_model(root, "classifier-probs", {"implementation": HF, "parameters": {
        "uri": "./model", "extra": {"return_probabilities": True, "task": "sequence_classification"}}},
        {"model": classifier})
    write_model(root, "classifier-batched", {"implementation": HF, "max_batch_size": 16, "max_batch_time": 0.1,
                                             "parameters": {"uri": "./model",
                                                            "extra": {"return_probabilities": True,
                                                                      "coalesce": False}}},
                {"model": classifier})
    tagger, mlm = build_token_classifier(art / "tagger"), build_masked_lm(art / "mlm")
    write_model(root, "tagger", {"implementation": HF, "parameters": {"uri": str(tagger)}})
    write_model(root, "mlm", {"implementation": HF, "parameters": {"uri": str(mlm)}})
    srv = Server(root, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}).start(timeout=180)
    srv.classifier, srv.tagger, srv.mlm = classifier, tagger, mlm
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def st_minilm():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir()), device="cpu")


def out(resp, name) -> np.ndarray:
    """The output ``name`` of a V2 response body as an array of its shape (numbers as float32)."""
    o = output(resp, name)
    return np.array(o["data"], dtype=object if o["datatype"] == "BYTES" else np.float32).reshape(o["shape"])


def probabilities(folder, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, -1).numpy()


def test_http_embeddings_equal_sentence_transformers(hf_server, st_minilm):
    r = hf_server.infer("minilm", text_body(TEXTS))
    assert r.status_code == 200, r.text
    o = r.json()["outputs"][0]
    assert o["name"] == "embedding" and o["datatype"] == "FP32" and o["shape"] == [4, 384]
    np.testing.assert_allclose(out(r.json(), "embedding"), st_minilm.encode(TEXTS), atol=1e-4)


def test_http_classification_labels_scores_and_probabilities(hf_server):
    probs = probabilities(hf_server.classifier, TEXTS)
    r = hf_server.infer("classifier", text_body(TEXTS))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("label", "BYTES", [4]), ("score", "FP32", [4])]
    assert out(body, "label").tolist() == [LABELS[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(out(body, "score"), probs.max(1), atol=1e-5)
    r = hf_server.infer("classifier-probs", text_body(TEXTS))
    np.testing.assert_allclose(out(r.json(), "probabilities"), probs, atol=1e-5)


def test_metadata_names_the_text_input_and_outputs(hf_server):
    md = requests.get(f"{hf_server.url}/v2/models/minilm", timeout=10).json()
    assert md["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert md["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    md = requests.get(f"{hf_server.url}/v2/models/classifier", timeout=10).json()
    assert [o["name"] for o in md["outputs"]] == ["label", "score", "probabilities"]


def test_grpc_embeddings_classification_and_errors(hf_server, st_minilm):
    texts = np.array(TEXTS, dtype=object)
    res = grpc(hf_server, "infer", "minilm", [("text", texts, "BYTES")])
    emb = res["outputs"]["embedding"]
    assert emb["datatype"] == "FP32" and emb["shape"] == [4, 384]
    np.testing.assert_allclose(np.array(emb["data"]).reshape(4, 384), st_minilm.encode(TEXTS), atol=1e-4)
    res = grpc(hf_server, "infer", "classifier", [("text", texts, "BYTES")], outputs=["label"])
    probs = probabilities(hf_server.classifier, TEXTS)
    assert res["outputs"]["label"]["data"] == [LABELS[i] for i in probs.argmax(1)]
    err = grpc(hf_server, "infer", "classifier", [("text", np.ones(2, dtype=np.float32), "FP32")])["error"]
    assert err["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "takes text (datatype BYTES), got FP32" in err["message"] and "Traceback" not in err["message"]


def test_v1_predict_with_string_instances(hf_server):
    r = requests.post(f"{hf_server.url}/v1/models/classifier:predict", json={"instances": TEXTS[:2]}, timeout=30)
    assert r.status_code == 200, r.text
    probs = probabilities(hf_server.classifier, TEXTS[:2])
    preds = r.json()["predictions"]  # several outputs: one object per row
    assert [p["label"] for p in preds] == [LABELS[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([p["score"] for p in preds], probs.max(1), atol=1e-5)
    r = requests.post(f"{hf_server.url}/v1/models/minilm:predict", json={"instances": ["hello"]}, timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"][0]) == 384


@pytest.mark.parametrize("model", ["minilm", "minilm-batched", "classifier-probs", "classifier-batched"])
def test_concurrent_requests_of_different_sizes_get_their_own_rows(hf_server, st_minilm, model):
    """MLServer's adaptive batching (*-batched) and our coalescing both merge requests; each gets its rows."""
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat while dogs ran fast across green fields".split()
    jobs = [[" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(int(rng.integers(1, 5)))]
            for _ in range(16)]
    name = "embedding" if model.startswith("minilm") else "probabilities"

    def call(texts):
        r = hf_server.infer(model, text_body(texts))
        assert r.status_code == 200, r.text
        return out(r.json(), name)

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))
    flat = [t for job in jobs for t in job]
    ref = (st_minilm.encode(flat) if name == "embedding" else probabilities(hf_server.classifier, flat))
    start = 0
    for texts, got in zip(jobs, results):
        assert got.shape[0] == len(texts)
        np.testing.assert_allclose(got, ref[start:start + len(texts)], atol=1e-4)
        start += len(texts)


BAD_REQUESTS = {
    "fp32_for_text": (text_body([1.0, 2.0], datatype="FP32"), "takes text (datatype BYTES), got FP32"),
    "empty_batch": (text_body([], shape=[0]), "empty batch"),
    "empty_string": (text_body(["fine", ""]), "text 1 is empty"),
    "too_long": (text_body(["word " * 400]), "text 0 is 402 tokens long; this model takes at most 256"),
    "two_inputs": ({"inputs": text_body(["a"])["inputs"] * 2}, "takes one input tensor of texts, got 2"),
    "unknown_output": (text_body(["a"], outputs=["logits"]), "unknown output 'logits'"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_400_with_a_reason_and_the_server_keeps_serving(hf_server, case):
    body, needle = BAD_REQUESTS[case]
    r = hf_server.infer("minilm", body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    assert "Traceback" not in r.text
    assert hf_server.infer("minilm", text_body(["still serving"])).status_code == 200


def test_bad_models_fail_to_load_with_a_reason_and_the_rest_keeps_serving(hf_server):
    minilm = str(minilm_dir())
    bad = {
        "hf-bad-task": ({"uri": minilm, "extra": {"task": "summarize"}}, "option 'task'"),
        "hf-bad-dtype": ({"uri": minilm, "extra": {"dtype": "float8"}}, "option 'dtype'"),
        "hf-missing-folder": ({"uri": "./nowhere"}, "model path not found"),
        "hf-vllm": ({"uri": minilm, "extra": {"backend": "VLLM", "normalize": True}},
                    "option 'normalize' does not apply to backend VLLM"),
        "hf-no-lm-head": ({"uri": minilm, "extra": {"task": "text_generation"}},
                          "task 'text_generation' needs a *ForCausalLM or *LMHeadModel model"),
        "hf-wrong-task": ({"uri": minilm, "extra": {"task": "sequence_classification"}},
                          "this folder holds BertModel"),
    }
    for name, (params, needle) in bad.items():
        write_model(hf_server.root, name, {"implementation": HF, "parameters": params})
        r = hf_server.load(name)
        assert r.status_code != 200 and 400 <= r.status_code < 600, (name, r.text)
        assert needle in r.text and "Traceback" not in r.text, (name, r.text)
        assert hf_server.infer(name, text_body(["x"])).status_code == 503  # failed to load: unavailable
        assert hf_server.infer("minilm", text_body(["still serving"])).status_code == 200


def test_http_tritonclient(hf_server, st_minilm):
    """The README's tritonclient.http example (MLServer 1.7's REST takes JSON tensors: binary_data=False)."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(hf_server.url.replace("http://", ""))
    inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=False)
    res = client.infer("minilm", [inp],
                       outputs=[httpclient.InferRequestedOutput("embedding", binary_data=False)])
    np.testing.assert_allclose(res.as_numpy("embedding"), st_minilm.encode(TEXTS), atol=1e-4)
    inp = httpclient.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(np.array(TEXTS[:2], dtype=object), binary_data=False)
    res = client.infer("classifier", [inp], outputs=[httpclient.InferRequestedOutput("label", binary_data=False)])
    assert res.as_numpy("label").shape == (2,)


# -- token_classification and fill_mask --------------------------------------------------------------------

def test_http_token_classification_equals_the_transformers_pipeline(hf_server):
    import json

    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    texts = ["John Smith lives in Berlin.", "Kubernetes schedules containers!"]
    r = hf_server.infer("tagger", text_body(texts))
    assert r.status_code == 200, r.text
    o = r.json()["outputs"][0]
    assert (o["name"], o["datatype"], o["shape"]) == ("entities", "BYTES", [2])
    pipe = pipeline("token-classification", model=AutoModelForTokenClassification.from_pretrained(hf_server.tagger),
                    tokenizer=AutoTokenizer.from_pretrained(hf_server.tagger), aggregation_strategy="none",
                    device="cpu")
    for text, got in zip(texts, o["data"]):
        got, want = json.loads(got), pipe(text)
        assert [(e["word"], e["entity"], e["start"], e["end"]) for e in got] == \
               [(w["word"], w["entity"], w["start"], w["end"]) for w in want]
        np.testing.assert_allclose([e["score"] for e in got], [float(w["score"]) for w in want], atol=1e-5)


def test_http_fill_mask_top_k_equals_a_direct_model_call(hf_server):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    texts = ["Paris is the [MASK] of France.", "I like [MASK]."]
    body = {**text_body(texts), "parameters": {"top_k": 3}}
    r = hf_server.infer("mlm", body)
    assert r.status_code == 200, r.text
    tokens, scores = out(r.json(), "tokens"), out(r.json(), "scores")
    assert tokens.shape == (2, 3) and scores.shape == (2, 3)
    tok, model = AutoTokenizer.from_pretrained(hf_server.mlm), AutoModelForMaskedLM.from_pretrained(hf_server.mlm)
    for i, t in enumerate(texts):
        enc = tok([t], return_tensors="pt")
        pos = int((enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0])
        with torch.no_grad():
            v, idx = torch.softmax(model(**enc).logits[0, pos], -1).topk(3)
        assert tokens[i].tolist() == [tok.decode([int(j)]) for j in idx]
        np.testing.assert_allclose(scores[i], v.numpy(), rtol=1e-4)
    assert out(hf_server.infer("mlm", text_body(texts)).json(), "tokens").shape == (2, 5)  # top_k default 5


def test_fill_mask_text_without_mask_is_400_naming_the_mask_token(hf_server):
    r = hf_server.infer("mlm", text_body(["a [MASK] here", "no mask here"]))
    assert r.status_code == 400, r.text
    assert "text 1 has no mask token: put [MASK]" in r.json()["error"] and "Traceback" not in r.text
    r = hf_server.infer("mlm", {**text_body(["a [MASK]"]), "parameters": {"top_k": 0}})
    assert r.status_code == 400 and "parameter 'top_k' is 0" in r.json()["error"]


# -- tensor_input_names -----------------------------------------------------------------------------------------

def test_http_token_tensors_with_tensor_input_names(hf_server, st_minilm):
    from transformers import AutoTokenizer

    names = ["input_ids", "attention_mask"]
    write_model(hf_server.root, "minilm-tensors", {"implementation": HF, "parameters": {
        "uri": str(minilm_dir()), "extra": {"tensor_input_names": names}}})
    r = hf_server.load("minilm-tensors")
    assert r.status_code == 200, r.text
    enc = AutoTokenizer.from_pretrained(minilm_dir())(TEXTS, padding=True, return_tensors="np")
    body = {"inputs": [{"name": n, "shape": list(enc[n].shape), "datatype": "INT64",
                        "data": enc[n].reshape(-1).tolist()} for n in names]}
    r = hf_server.infer("minilm-tensors", body)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(out(r.json(), "embedding"), st_minilm.encode(TEXTS), atol=1e-4)
    body["inputs"].append({"name": "token_type_ids", "shape": list(enc["token_type_ids"].shape),
                           "datatype": "INT64", "data": enc["token_type_ids"].reshape(-1).tolist()})
    r = hf_server.infer("minilm-tensors", body)
    assert r.status_code == 400, r.text
    assert "unexpected input(s) 'token_type_ids'" in r.json()["error"] and "input_ids, attention_mask" in r.text
    assert hf_server.infer("minilm-tensors", text_body(TEXTS[:1])).status_code == 200  # text still works
    md = requests.get(f"{hf_server.url}/v2/models/minilm-tensors", timeout=10).json()
    assert [i["name"] for i in md["inputs"]] == ["text", *names]
