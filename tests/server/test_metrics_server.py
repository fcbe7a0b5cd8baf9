"""Metrics against real servers: N requests of each kind (V2 REST, V2 gRPC, V1, /invocations, OpenAI chat and
completions streamed and not, embeddings, V2 generation and its stream), then MLServer's metrics port scraped and
read with prometheus_client's parser: per-model counts equal what was sent, failures counted once as failed, token
counters equal the ``usage`` the answers carried, no series for a model that does not exist; both MLServer modes
(parallel workers: the multiprocess files merged in one scrape)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import requests

from ..conftest import SKLEARN
from ..support.harness import Server, grpc, grpc_stream, write_model
from ..support.hf_models import build_causal_lm, minilm_dir
from ..support.mlflow_models import MLFLOW
from ..support.mlflow_models import build as build_mlflow
from ..support.models import IRIS_ROWS as ROWS
from ..support.runtimes import text_body, v2

pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

HF = "modelserve.huggingface.HuggingFaceRuntime"
N = 3
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"


def scrape(server) -> dict:
    """{(metric sample name, frozenset of labels): value} of one scrape of the metrics port."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    out["_text"] = text
    return out


def total(samples: dict, name: str, **labels) -> float:
    """The sum of a sample's values over the series matching ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in ((k, v) for k, v in samples.items() if k != "_text")
               if n == name and want <= lab)


@pytest.fixture(scope="module", params=["inproc", "workers"])
def metered(request, tmp_path_factory, artifacts):
    art = tmp_path_factory.mktemp(f"metrics-art-{request.param}")
    root = tmp_path_factory.mktemp(f"metrics-{request.param}")
    write_model(root, "iris", {"implementation": SKLEARN, "parameters": {"uri": "./model.joblib"}},
                {"model.joblib": artifacts["iris_joblib"]})
    write_model(root, "mlflow", {"implementation": MLFLOW, "parameters": {"uri": "./model"}},
                {"model": build_mlflow(art / "mlflow")["tensor"]})
    write_model(root, "minilm", {"implementation": HF, "parameters": {"uri": str(minilm_dir()),
                                                                   "extra": {"task": "text_embedding"}}})
    if request.param == "inproc":  # MLServer streams only in-process
        gpt2 = build_causal_lm(art / "gpt2")
        config = gpt2 / "tokenizer_config.json"  # a chat template, so that chat is served too
        config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": CHAT_TEMPLATE}))
        write_model(root, "gpt2", {"implementation": HF, "parameters": {
            "uri": str(gpt2), "extra": {"max_new_tokens_limit": 64}}})
    srv = Server(root, parallel_workers=0 if request.param == "inproc" else None, debug=False,
                 extra={"gzip_enabled": False}, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    srv.start(timeout=240)
    srv.mode = request.param
    srv.gpt2 = art / "gpt2"
    srv.client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield srv
    srv.stop()


def _requests(samples, model, **labels):
    return total(samples, "modelserve_requests_total", model=model, **labels)


def test_every_protocol_is_counted_per_model_with_failures_once(metered):
    before = scrape(metered)
    sent = defaultdict(int)  # (model, protocol, endpoint, code) -> requests
    x = np.array(ROWS, dtype=np.float64)
    for _ in range(N):
        assert metered.infer("iris", v2(ROWS)).status_code == 200
        sent["iris", "v2-rest", "infer", "2xx"] += 1
        assert "outputs" in grpc(metered, "infer", "iris", [("input-0", x, "FP64")])
        sent["iris", "v2-grpc", "infer", "2xx"] += 1
        r = requests.post(f"{metered.url}/v1/models/iris:predict", json={"instances": ROWS}, timeout=30)
        assert r.status_code == 200, r.text
        sent["iris", "v1", "predict", "2xx"] += 1
        for path in ("/invocations", "/models/mlflow/invocations"):  # MLflow's scoring protocol
            r = requests.post(metered.url + path, json={"inputs": ROWS}, timeout=30)
            assert r.status_code == 200, r.text
            sent["mlflow", "invocations", "invocations", "2xx"] += 1
    # failures: a wrong shape on V2 REST and on gRPC, a V1 body without instances
    bad = metered.infer("iris", v2([[1.0, 2.0]]))
    assert bad.status_code == 400, bad.text
    sent["iris", "v2-rest", "infer", "4xx"] += 1
    err = grpc(metered, "infer", "iris", [("input-0", np.array([[1.0, 2.0]]), "FP64")])
    assert "error" in err, err
    sent["iris", "v2-grpc", "infer", "4xx"] += 1
    r = requests.post(f"{metered.url}/v1/models/iris:predict", json={"rows": ROWS}, timeout=30)
    assert r.status_code == 400, r.text
    sent["iris", "v1", "predict", "4xx"] += 1
    # a model that does not exist: a 404, no series
    assert metered.infer("no-such-model", v2(ROWS)).status_code == 404
    after = scrape(metered)
    for (model, protocol, endpoint, code), count in sent.items():
        got = (_requests(after, model, protocol=protocol, endpoint=endpoint, code=code)
               - _requests(before, model, protocol=protocol, endpoint=endpoint, code=code))
        assert got == count, (model, protocol, endpoint, code, got, count)
    # the histogram has buckets and counts every request, failed ones included
    hist = (total(after, "modelserve_request_duration_seconds_count", model="iris")
            - total(before, "modelserve_request_duration_seconds_count", model="iris"))
    assert hist == sum(v for k, v in sent.items() if k[0] == "iris")
    assert 'modelserve_request_duration_seconds_bucket{' in after["_text"] and 'le="0.005"' in after["_text"]
    assert "no-such-model" not in after["_text"]
    # MLServer's own counter, labelled with the answering model's version ("" here, never "None")
    assert total(after, "model_infer_request_success_total", model="iris", version="") >= 2 * N
    assert 'version="None"' not in after["_text"]


def test_embeddings_count_inputs_and_tokens_as_usage_says(metered):
    before = scrape(metered)
    texts = ["the quick brown fox", "jumps over", "the lazy dog"]
    usage_tokens = 0
    for _ in range(N):
        res = metered.client.embeddings.create(model="minilm", input=texts)
        assert len(res.data) == len(texts)
        usage_tokens += res.usage.prompt_tokens
        r = metered.infer("minilm", text_body(texts))
        assert r.status_code == 200, r.text
    after = scrape(metered)
    delta = lambda name, **kw: total(after, name, model="minilm", **kw) - total(before, name, model="minilm", **kw)  # noqa: E731
    assert delta("modelserve_requests_total", protocol="openai", endpoint="embeddings", code="2xx") == N
    assert delta("modelserve_requests_total", protocol="v2-rest", code="2xx") == N
    assert delta("modelserve_embedding_inputs_total") == 2 * N * len(texts)
    # V2 counts the same texts' tokens the way the OpenAI route's usage does
    assert delta("modelserve_embedding_tokens_total") == 2 * usage_tokens


def test_generation_tokens_equal_usage_for_every_route_and_stream(metered):
    if metered.mode != "inproc":
        pytest.skip("the generation model is served in-process (MLServer streams only there)")
    before = scrape(metered)
    prompt_tokens = completion_tokens = 0
    for _ in range(N):
        chat = metered.client.chat.completions.create(
            model="gpt2", messages=[{"role": "user", "content": "hello there"}], max_tokens=6)
        prompt_tokens += chat.usage.prompt_tokens
        completion_tokens += chat.usage.completion_tokens
        comp = metered.client.completions.create(model="gpt2", prompt="once upon a time", max_tokens=5)
        prompt_tokens += comp.usage.prompt_tokens
        completion_tokens += comp.usage.completion_tokens
        # a stream that asks for its usage gets it, last
        chunks = list(metered.client.completions.create(model="gpt2", prompt="the cat", max_tokens=7, stream=True,
                                                        stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None and chunks[-1].choices == []
        prompt_tokens += chunks[-1].usage.prompt_tokens
        completion_tokens += chunks[-1].usage.completion_tokens
        # a stream that does not ask gets none (the count is still made)
        chunks = list(metered.client.chat.completions.create(
            model="gpt2", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True))
        assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason
    after = scrape(metered)
    delta = lambda name, **kw: total(after, name, model="gpt2", **kw) - total(before, name, model="gpt2", **kw)  # noqa: E731
    assert delta("modelserve_requests_total", protocol="openai", endpoint="chat", code="2xx") == 2 * N
    assert delta("modelserve_requests_total", protocol="openai", endpoint="completions", code="2xx") == 2 * N
    # the unasked-for streams' usage is not known to the test: tokens counted are at least the known ones and
    # the unknown streams' share is within their max_tokens
    assert delta("modelserve_generation_tokens_total") >= completion_tokens
    assert delta("modelserve_generation_tokens_total") <= completion_tokens + 4 * N
    assert delta("modelserve_prompt_tokens_total") > prompt_tokens
    assert delta("modelserve_e2e_request_latency_seconds_count") == 4 * N
    assert delta("modelserve_time_to_first_token_seconds_count") == 2 * N
    assert total(after, "modelserve_num_requests_running", model="gpt2") == 0
    assert total(after, "modelserve_num_requests_waiting", model="gpt2") == 0


def test_v2_generation_and_its_streams_count_tokens(metered):
    if metered.mode != "inproc":
        pytest.skip("the generation model is served in-process")
    before = scrape(metered)
    r = metered.infer("gpt2", text_body(["hello world"], name="prompt", max_new_tokens=5))
    assert r.status_code == 200, r.text
    pieces = []
    with requests.post(f"{metered.url}/v2/models/gpt2/generate_stream",
                       json=text_body(["hello world"], name="prompt", max_new_tokens=5), stream=True, timeout=60) as s:
        assert s.status_code == 200, s.text
        pieces = [json.loads(line[5:]) for line in s.iter_lines() if line.startswith(b"data:")]
    assert pieces
    out = grpc_stream(metered, "gpt2", "prompt", ["hello world"], {"max_new_tokens": 5})
    assert out["pieces"] and not out["errors"], out
    after = scrape(metered)
    delta = lambda name, **kw: total(after, name, model="gpt2", **kw) - total(before, name, model="gpt2", **kw)  # noqa: E731
    assert delta("modelserve_requests_total", protocol="v2-rest", endpoint="infer", code="2xx") == 1
    assert delta("modelserve_requests_total", protocol="v2-rest", endpoint="stream", code="2xx") == 1
    assert delta("modelserve_requests_total", protocol="v2-grpc", endpoint="stream", code="2xx") == 1
    # greedy and the same prompt: each of the three generated what model.generate does
    prompt, new = _greedy(metered.gpt2, "hello world", 5)
    assert delta("modelserve_prompt_tokens_total") == 3 * prompt
    assert delta("modelserve_generation_tokens_total") == 3 * new
    assert delta("modelserve_time_to_first_token_seconds_count") == 2


def _greedy(folder, prompt: str, max_new_tokens: int):
    """(prompt tokens, new tokens) of greedy generation with transformers itself."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    enc = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return enc["input_ids"].shape[1], out.shape[1] - enc["input_ids"].shape[1]


def test_a_failed_openai_request_is_counted_once_as_failed(metered):
    before = scrape(metered)
    with pytest.raises(openai.BadRequestError):
        metered.client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        metered.client.embeddings.create(model="no-such-model", input=["x"])
    after = scrape(metered)
    assert (_requests(after, "minilm", protocol="openai", code="4xx")
            - _requests(before, "minilm", protocol="openai", code="4xx")) == 1
    assert (_requests(after, "minilm", protocol="openai", code="2xx")
            == _requests(before, "minilm", protocol="openai", code="2xx"))
    assert "no-such-model" not in after["_text"]
