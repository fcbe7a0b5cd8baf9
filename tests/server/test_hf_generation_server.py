"""text_generation and text2text_generation behind a real mlserver process: /infer, streaming (SSE on
/generate_stream and /infer_stream, parallel_workers 0), generation parameters and their 400s."""

from __future__ import annotations

import json
import time

import pytest
import requests

from ..support.harness import Server, grpc, write_model
from ..support.hf_models import build_causal_lm, build_seq2seq
from ..support.runtimes import text_body

pytest.importorskip("transformers")

HF = "modelserve.huggingface.HuggingFaceRuntime"
PROMPT = "the quick brown fox"


@pytest.fixture(scope="session")
def gen_server(tmp_path_factory):
    """One server, parallel_workers 0 (MLServer streams only in-process) and gzip off (it buffers streams)."""
    art = tmp_path_factory.mktemp("hf-gen-art")
    gpt2, t5 = build_causal_lm(art / "gpt2"), build_seq2seq(art / "t5")
    root = tmp_path_factory.mktemp("hf-gen-server")
    write_model(root, "gpt2", {"implementation": HF,
                               "parameters": {"uri": str(gpt2), "extra": {"max_new_tokens_limit": 512}}})
    write_model(root, "t5", {"implementation": HF, "parameters": {"uri": str(t5)}})
    srv = Server(root, parallel_workers=0, extra={"gzip_enabled": False},
                 env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}).start(timeout=180)
    srv.gpt2, srv.t5 = gpt2, t5
    yield srv
    srv.stop()


def generated(server, model, prompts, **params):
    r = server.infer(model, text_body(prompts, name="prompt", **params))
    assert r.status_code == 200, r.text
    o = r.json()["outputs"][0]
    assert o["name"] == "text" and o["datatype"] == "BYTES" and o["shape"] == [len(prompts)]
    return o["data"]


def direct_generate(folder, prompt, max_new_tokens, auto):
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = getattr(transformers, auto).from_pretrained(folder).eval()
    enc = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    start = 0 if model.config.is_encoder_decoder else enc["input_ids"].shape[1]
    return tok.decode(out[0, start:], skip_special_tokens=True)


def stream(server, model, route, **params):
    """(seconds since the request, text) per server-sent event, and the seconds until the stream ended."""
    chunks, start = [], time.monotonic()
    with requests.post(f"{server.url}/v2/models/{model}/{route}", json=text_body([PROMPT], name="prompt", **params),
                       stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                chunks.append((time.monotonic() - start, event["outputs"][0]["data"][0]))
    return chunks, time.monotonic() - start


def test_greedy_generation_over_http_equals_model_generate(gen_server):
    got = generated(gen_server, "gpt2", [PROMPT, "once upon a time"], max_new_tokens=12)
    assert got == [direct_generate(gen_server.gpt2, p, 12, "AutoModelForCausalLM")
                   for p in (PROMPT, "once upon a time")]
    got = generated(gen_server, "t5", [PROMPT], max_new_tokens=10)
    assert got == [direct_generate(gen_server.t5, PROMPT, 10, "AutoModelForSeq2SeqLM")]


def test_stop_strings_and_seeded_sampling_over_http(gen_server):
    full = generated(gen_server, "gpt2", [PROMPT], max_new_tokens=20)[0]
    stop = full.split()[3]
    assert generated(gen_server, "gpt2", [PROMPT], max_new_tokens=20, stop=[stop])[0] == full[:full.find(stop)]
    kw = dict(max_new_tokens=8, do_sample=True, temperature=1.2, top_p=0.9, top_k=40, seed=3)
    assert generated(gen_server, "gpt2", [PROMPT], **kw) == generated(gen_server, "gpt2", [PROMPT], **kw)


@pytest.mark.parametrize("route", ["generate_stream", "infer_stream"])
def test_streaming_sends_tokens_as_they_come_and_adds_up_to_the_greedy_text(gen_server, route):
    chunks, ended = stream(gen_server, "gpt2", route, max_new_tokens=300)
    assert len(chunks) > 10
    first, last = chunks[0][0], chunks[-1][0]
    print(f"{len(chunks)} chunks: first after {first:.3f}s, last after {last:.3f}s, end {ended:.3f}s")
    assert first < 0.5 * ended  # the first token arrives long before the generation ends: not one burst
    text = "".join(c for _, c in chunks)
    assert text == generated(gen_server, "gpt2", [PROMPT], max_new_tokens=300)[0]


def test_streaming_text2text(gen_server):
    chunks, _ = stream(gen_server, "t5", "generate_stream", max_new_tokens=15)
    assert len(chunks) > 3
    assert "".join(c for _, c in chunks) == generated(gen_server, "t5", [PROMPT], max_new_tokens=15)[0]


BAD = {
    "unknown_parameter": ({"beams": 4}, "unknown generation parameter 'beams'"),
    "max_new_tokens_zero": ({"max_new_tokens": 0}, "parameter 'max_new_tokens' is 0; allowed range [1, 512]"),
    "max_new_tokens_too_many": ({"max_new_tokens": 513}, "parameter 'max_new_tokens' is 513"),
    "bad_top_p": ({"top_p": 2}, "parameter 'top_p' is 2.0"),
    "bad_stop": ({"stop": [3]}, "parameter 'stop' must be a string or a list of non-empty strings"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_generation_parameters_are_400_naming_them(gen_server, case):
    params, needle = BAD[case]
    r = gen_server.infer("gpt2", text_body([PROMPT], name="prompt", **params))
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"] and "Traceback" not in r.text
    assert generated(gen_server, "gpt2", [PROMPT], max_new_tokens=2)


def test_grpc_stream_infer_sends_chunks_and_rejects_bad_parameters(gen_server):
    """gRPC ModelStreamInfer with MLServer's own stubs (it answers ModelInferResponse per chunk, not Triton's
    ModelStreamInferResponse, so tritonclient's stream API cannot read it)."""
    import grpc
    from mlserver.grpc import dataplane_pb2 as pb, dataplane_pb2_grpc as pbg

    req = pb.ModelInferRequest(model_name="gpt2", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="prompt", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[PROMPT.encode()]))],
        parameters={"max_new_tokens": pb.InferParameter(int64_param=12)})
    with grpc.insecure_channel(gen_server.grpc_url) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        chunks = [r.outputs[0].contents.bytes_contents[0].decode() for r in stub.ModelStreamInfer(iter([req]))]
        assert len(chunks) > 3
        assert "".join(chunks) == generated(gen_server, "gpt2", [PROMPT], max_new_tokens=12)[0]
        req.parameters["beams"].CopyFrom(pb.InferParameter(int64_param=2))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ModelStreamInfer(iter([req])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown generation parameter 'beams'" in err.value.details()


def test_float_parameters_over_grpc_travel_as_text_and_are_never_silently_dropped(gen_server):
    """MLServer's gRPC parameters have no float: tritonclient's 0.7 arrives as None, "0.7" as text."""
    import numpy as np

    prompt = [("prompt", np.array(["hello there"], dtype=object), "BYTES")]
    err = grpc(gen_server, "infer", "gpt2", prompt, {"temperature": 0.7, "max_new_tokens": 4})["error"]
    assert err["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "parameter 'temperature' has no value" in err["message"]
    as_text = grpc(gen_server, "infer", "gpt2", prompt, {"temperature": "0.7", "seed": 3, "max_new_tokens": 6})
    again = grpc(gen_server, "infer", "gpt2", prompt, {"temperature": "0.7", "seed": 3, "max_new_tokens": 6})
    assert as_text["outputs"]["text"]["data"] == again["outputs"]["text"]["data"]  # seeded sampling, used
    over_http = generated(gen_server, "gpt2", ["hello there"], temperature=0.7, seed=3, max_new_tokens=6)
    assert as_text["outputs"]["text"]["data"] == over_http


def test_a_text_uploaded_as_the_body_is_the_prompt(gen_server):
    """ModelHub's uploads to a text model: the body is the text (any Content-Type but JSON); query fields are
    the request's parameters."""
    want = generated(gen_server, "gpt2", [PROMPT], max_new_tokens=6)
    for ctype in ("text/plain; charset=utf-8", "application/octet-stream"):
        r = requests.post(f"{gen_server.url}/v2/models/gpt2/infer", data=PROMPT.encode(), timeout=60,
                          headers={"Content-Type": ctype}, params={"max_new_tokens": "6"})
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == want
    r = requests.post(f"{gen_server.url}/v2/models/gpt2/infer", data=b"\xff\xfe not text", timeout=60,
                      headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and "not UTF-8 text" in r.json()["error"] and "\n" not in r.json()["error"], r.text
    assert generated(gen_server, "gpt2", [PROMPT], max_new_tokens=6) == want
