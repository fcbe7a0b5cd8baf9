"""KubeAIRuntime with engine OLlama behind a real mlserver, through the official `ollama` client.

The Ollama binary is on no registry this machine reaches, so the server is tests/fakes/ollama.py, which
speaks Ollama's documented wire protocol; with OLLAMA_HOST set these tests run against that real Ollama
instead (models OLLAMA_TEST_MODEL, default tinyllama, and OLLAMA_TEST_EMBED_MODEL, default all-minilm;
the supervised-`ollama serve` tests still use the stand-in binary). Answers are compared with the same
client calling Ollama directly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from ..support.harness import Server, free_port, write_model
from ..support.processes import descendants, wait_gone
from ..support.runtimes import text_body

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "ollama.py"
REAL = os.environ.get("OLLAMA_HOST")
GEN = os.environ.get("OLLAMA_TEST_MODEL", "tinyllama") if REAL else "tinyllama"
EMB = os.environ.get("OLLAMA_TEST_EMBED_MODEL", "all-minilm") if REAL else "all-minilm"
KUBEAI = "modelserve.kubeai.KubeAIRuntime"
OPTS = {"temperature": 0, "seed": 7}


def start_fake(env=None) -> tuple:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKE), "serve"], env={**os.environ, **(env or {}),
                            "OLLAMA_HOST": f"127.0.0.1:{port}"}, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fake Ollama did not start")


@pytest.fixture(scope="module")
def host():
    if REAL:
        yield REAL if REAL.startswith("http") else "http://" + REAL
        return
    proc, url = start_fake()
    yield url
    proc.kill()
    proc.wait()


def ollama_model(url, **extra) -> dict:
    return {"implementation": KUBEAI, "parallel_workers": 0,
            "parameters": {"extra": {"engine": "OLlama", "url": url, **extra}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, host):
    root = tmp_path_factory.mktemp("ollama-server")
    write_model(root, "llm", ollama_model(f"ollama://{GEN}", max_tokens_limit=64))
    write_model(root, "emb", ollama_model(f"ollama://{EMB}", features=["TextEmbedding"]))
    write_model(root, "slow", ollama_model(f"ollama://{GEN}", request_timeout=0.5))
    write_model(root, "missing", ollama_model("ollama://no-such-model:7b"))
    (root / "missing" / "model-settings.json").rename(root / "missing.json")  # loaded by a test, not at start
    srv = Server(root, parallel_workers=0, env={"OLLAMA_HOST": host}).start(timeout=180)
    srv.client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    srv.direct = ollama.Client(host=host)
    yield srv
    srv.stop()


def test_the_model_was_pulled_with_progress_and_kept_loaded(server):
    log = server.log()
    assert f"pulling {GEN}" in log and "% of" in log and "pulled in" in log
    assert any(m.model.startswith(GEN) for m in server.direct.list().models)
    assert any(m.model.startswith(GEN) for m in server.direct.ps().models)


@pytest.mark.lane312
def test_completions_equal_a_direct_raw_generate(server):
    res = server.client.completions.create(model="llm", prompt="Once upon a time", max_tokens=8, **OPTS)
    direct = server.direct.generate(GEN, "Once upon a time", raw=True, options={"num_predict": 8, **OPTS})
    assert res.choices[0].text == direct.response and res.choices[0].text
    assert res.usage.completion_tokens == direct.eval_count and res.model == "llm"


def test_chat_equals_a_direct_chat_and_streams_equal_whole_answers(server):
    messages = [{"role": "user", "content": "Tell me about the sea"}]
    whole = server.client.chat.completions.create(model="llm", messages=messages, max_tokens=16, **OPTS)
    direct = server.direct.chat(GEN, messages=messages, options={"num_predict": 16, **OPTS})
    assert whole.choices[0].message.content == direct.message.content
    stream = server.client.chat.completions.create(model="llm", messages=messages, max_tokens=16, stream=True, **OPTS)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content and len([p for p in pieces if p]) > 1
    chunks = list(server.client.completions.create(model="llm", prompt="A quiet", max_tokens=16, stream=True, **OPTS))
    assert "".join(c.choices[0].text for c in chunks) == server.client.completions.create(
        model="llm", prompt="A quiet", max_tokens=16, **OPTS).choices[0].text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_v2_generation_matches_the_openai_route_and_max_tokens_cuts(server):
    body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [2], "data": ["Once upon a time", "Hello"]}],
            "outputs": [{"name": "text"}, {"name": "finish_reason"}], "parameters": {"max_tokens": 2, **OPTS}}
    res = server.infer("llm", body)
    assert res.status_code == 200, res.text
    out = {o["name"]: o["data"] for o in res.json()["outputs"]}
    for prompt, text in zip(["Once upon a time", "Hello"], out["text"]):
        assert text == server.client.completions.create(model="llm", prompt=prompt, max_tokens=2, **OPTS).choices[0].text
    assert out["finish_reason"] == ["length", "length"]


def test_v2_stream_concatenates_to_the_whole_answer(server):
    body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["The market"]}],
            "parameters": {"max_tokens": 12, **OPTS}}
    whole = server.infer("llm", body).json()["outputs"][0]["data"][0]
    r = requests.post(f"{server.url}/v2/models/llm/infer_stream", json=body, stream=True, timeout=30)
    assert r.status_code == 200
    pieces = [json.loads(line[5:])["outputs"][0]["data"][0] for line in r.iter_lines(decode_unicode=True)
              if line.startswith("data:")]
    assert "".join(pieces) == whole and len(pieces) > 1


def test_embeddings_on_v2_and_openai_equal_a_direct_embed(server):
    texts = ["a small boat", "the river", "a small boat"]
    direct = np.array(server.direct.embed(EMB, input=texts).embeddings)
    res = server.client.embeddings.create(model="emb", input=texts)
    np.testing.assert_allclose(np.array([d.embedding for d in res.data]), direct, atol=1e-6)
    v2 = server.infer("emb", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]})
    assert v2.status_code == 200, v2.text
    out = v2.json()["outputs"][0]
    assert out["datatype"] == "FP32" and out["shape"] == list(direct.shape)
    np.testing.assert_allclose(np.array(out["data"]).reshape(direct.shape), direct, atol=1e-6)


@pytest.mark.parametrize("body,fragment", [
    ({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [""]}]}, "is empty"),
    ({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
      "parameters": {"min_tokens": 3}}, "'min_tokens' is not supported by engine OLlama"),
    ({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
      "parameters": {"max_tokens": 65}}, "allowed range"),
    ({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
      "parameters": {"adapter": "lora"}}, "unknown adapter"),
    ({"inputs": [{"name": "prompt", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "datatype BYTES"),
])
def test_bad_v2_requests_are_4xx_naming_the_problem(server, body, fragment):
    res = server.infer("llm", body)
    assert 400 <= res.status_code < 500, res.text
    assert fragment in res.json()["error"]


@pytest.mark.parametrize("path,body,fragment", [
    ("/v1/embeddings", {"model": "emb", "input": 5}, "'input' must be a string"),
    ("/v1/embeddings", {"model": "llm", "input": "x"}, "does not serve /v1/embeddings"),
    ("/v1/completions", {"model": "emb", "prompt": "x"}, "does not serve /v1/completions"),
    ("/v1/completions", {"model": "llm", "prompt": "x", "logit_bias": {"1": 2}}, "'logit_bias' is not supported"),
    ("/v1/chat/completions", {"model": "llm", "messages": []}, "'messages' must be a non-empty list"),
])
def test_bad_openai_requests_are_4xx(server, path, body, fragment):
    res = requests.post(server.url + path, json=body, timeout=30)
    assert 400 <= res.status_code < 500, res.text
    assert fragment in res.json()["error"]["message"]


def test_an_unknown_ollama_model_fails_its_load_clearly(server):
    (server.root / "missing").mkdir(exist_ok=True)
    (server.root / "missing.json").rename(server.root / "missing" / "model-settings.json")
    res = server.load("missing")
    assert res.status_code >= 400
    assert "Ollama could not pull 'no-such-model:7b'" in res.json()["error"]
    assert server.infer("llm", {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1],
                                            "data": ["still"]}]}).status_code == 200, server.log()[-3000:]


@pytest.mark.skipif(bool(REAL), reason="needs the stand-in's slow prompt")
def test_request_timeout_is_a_504_on_v2_and_on_the_openai_routes(server):
    started = time.monotonic()
    res = requests.post(server.url + "/v1/completions", json={"model": "slow", "prompt": "sleep:5"}, timeout=30)
    assert res.status_code == 504 and "request_timeout" in res.json()["error"]["message"], res.text
    assert time.monotonic() - started < 3
    res = server.infer("slow", {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["sleep:5"]}]})
    assert res.status_code == 504, res.text
    ok = server.client.completions.create(model="slow", prompt="The sea", max_tokens=4, **OPTS)
    assert ok.choices[0].text


@pytest.mark.skipif(bool(REAL), reason="needs the stand-in's slow prompt")
def test_a_reload_answers_the_requests_inside_the_old_copy(server):
    """MLServer unloads the old copy while requests are still inside it: unload waits for them."""
    import concurrent.futures as cf

    body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["sleep:1"]}]}
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(server.infer, "llm", body) for _ in range(4)]
        time.sleep(0.3)  # inside the model, waiting on Ollama
        assert server.load("llm").status_code == 200
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 4, statuses


@pytest.mark.skipif(bool(REAL), reason="needs the stand-in's slow stream")
@pytest.mark.parametrize("route", ["v2", "openai"])
def test_a_reload_during_a_stream_answers_the_stream_to_its_end(server, route):
    """Streams count as requests in flight: the reload's unload of the old copy waits for a running stream
    (without that it closed the engine client under it). Streams need parallel_workers 0, as here."""
    import concurrent.futures as cf

    prompt = "slow: the market"  # the stand-in sends one piece every 0.5 s
    body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [prompt]}],
            "parameters": {"max_tokens": 12, **OPTS}}
    whole = server.infer("llm", body).json()["outputs"][0]["data"][0]
    if route == "v2":
        r = requests.post(f"{server.url}/v2/models/llm/generate_stream", json=body, stream=True, timeout=60)
    else:
        r = requests.post(f"{server.url}/v1/completions", stream=True, timeout=60,
                          json={"model": "llm", "prompt": prompt, "max_tokens": 12, "stream": True, **OPTS})
    assert r.status_code == 200, r.text
    events = (json.loads(line[5:]) for line in r.iter_lines(decode_unicode=True)
              if line.startswith("data:") and line != "data: [DONE]")
    text = lambda e: e["outputs"][0]["data"][0] if route == "v2" else e["choices"][0]["text"]  # noqa: E731
    pieces = [text(next(events))]
    with cf.ThreadPoolExecutor(1) as pool:
        reload = pool.submit(server.load, "llm")  # loads a new copy, then unloads this stream's copy
        for event in events:
            assert "error" not in event, event
            pieces.append(text(event))
        assert reload.result().status_code == 200
    assert "".join(pieces) == whole and len(pieces) > 2, pieces
    assert server.infer("llm", body).status_code == 200


# -- `ollama serve` started and supervised by the runtime -----------------------------------------------------
@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """No OLLAMA_HOST: the runtime starts `ollama serve` from PATH (the stand-in binary here, as the image
    will have the real one)."""
    root = tmp_path_factory.mktemp("ollama-spawned")
    bindir = root / "bin"
    bindir.mkdir()
    (bindir / "ollama").write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    (bindir / "ollama").chmod(0o755)
    write_model(root, "own", ollama_model("ollama://tinyllama", start_timeout=60))
    env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
    env["PATH"] = f"{bindir}:{env['PATH']}"
    srv = Server(root, parallel_workers=0)
    srv.env = env
    srv.start(timeout=120)
    yield srv
    srv.stop()


def engine_of(srv) -> list:
    return [p for p in descendants(srv.proc.pid)
            if "fakes/ollama.py" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]


def prompt_body(text="The sea", n=4):
    return text_body([text], name="prompt", max_tokens=n, **OPTS)


def test_a_started_ollama_serve_answers_and_restarts_after_a_crash(spawned):
    before = spawned.infer("own", prompt_body())
    assert before.status_code == 200, before.text
    assert "starting engine" in spawned.log() and "serve" in spawned.log()
    pids = engine_of(spawned)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    deadline, saw_503 = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        r = spawned.infer("own", prompt_body())
        if r.status_code == 503:
            saw_503 = r
        elif r.status_code == 200 and saw_503 is not None:
            break
        time.sleep(0.2)
    assert saw_503 is not None and int(saw_503.headers["Retry-After"]) >= 1
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == before.json()["outputs"][0]["data"]


def test_stopping_mlserver_leaves_no_ollama_process(spawned):
    pids = engine_of(spawned)
    assert pids
    spawned.proc.send_signal(signal.SIGTERM)
    spawned.proc.wait(timeout=60)
    assert wait_gone(pids) == []


def test_tritonclient_with_its_default_arguments(server):
    """The binary tensor extension both ways (tritonclient.http's defaults) on the Ollama runtime too."""
    import tritonclient.http as httpclient

    texts = ["a quiet town by the sea", "the engine starts"]
    inp = httpclient.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(np.array(texts, dtype=object))
    res = httpclient.InferenceServerClient(server.url.removeprefix("http://")).infer("emb", [inp])
    out = res.get_response()["outputs"][0]
    assert "binary_data_size" in out["parameters"]
    v2 = server.infer("emb", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]})
    np.testing.assert_allclose(res.as_numpy(out["name"]).reshape(-1), np.array(v2.json()["outputs"][0]["data"]),
                               rtol=1e-6)
