"""LoRA adapters loaded and unloaded at run time on a real vLLM engine (model ``llm`` of the shared
``llm_server``: option runtime_adapters) and on transformers through PEFT (model ``hf-llama``: a static adapter
and runtime_adapters), through our API (/v2/models/{model}/adapters) and vLLM's own shapes
(/v1/load_lora_adapter, /v1/unload_lora_adapter), used with the official openai client and V2; greedy output
with an adapter equals a direct PeftModel generate."""

from __future__ import annotations

import threading

import pytest
import requests

from ..support.llama_models import peft_greedy
from ..support.runtimes import text_body
from .conftest import PROMPT

openai = pytest.importorskip("openai")


def adapters(srv, model="llm"):
    r = requests.get(f"{srv.url}/v2/models/{model}/adapters", timeout=30)
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()["adapters"]}


def greedy(srv, model, max_tokens=8):
    return srv.client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens,
                                         temperature=0).choices[0].text


def streaming(srv, model, **kw):
    """Three streamed completions of ``model`` one after another in a thread, running through the calls the test
    makes meanwhile: (the thread, the texts streamed, the errors met)."""
    streamed, failures = [], []

    def run():
        try:
            for _ in range(3):
                chunks = srv.client.completions.create(model=model, prompt=PROMPT, temperature=0, stream=True, **kw)
                streamed.append("".join(c.choices[0].text for c in chunks if c.choices))
        except Exception as exc:  # noqa: BLE001 - reported by the test's assertion
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, streamed, failures


def test_an_adapter_is_loaded_used_listed_and_unloaded_while_the_base_streams(llm_server, llama):
    srv = llm_server
    assert {"lora-a", "lora-b"} <= set(adapters(srv)) and adapters(srv)["lora-a"]["source"] == "settings"
    streamer, streamed, failures = streaming(srv, "llm", max_tokens=48, extra_body={"ignore_eos": True})
    r = requests.post(f"{srv.url}/v2/models/llm/adapters", json={"name": "lora-c", "url": str(llama["c"])},
                      timeout=120)
    assert r.status_code == 201, r.text
    assert r.json() == {"name": "lora-c", "url": str(llama["c"]), "source": "runtime"}
    assert adapters(srv)["lora-c"]["source"] == "runtime"
    models = {m.id: m for m in srv.client.models.list().data}
    assert models["lora-c"].model_extra.get("parent") == "llm"
    # usable at once by OpenAI model and the V2 adapter parameter: greedy equals a direct PeftModel generate
    text = greedy(srv, "lora-c")
    assert text == peft_greedy(llama["base"], llama["c"], PROMPT, 8)
    assert text not in (greedy(srv, "llm"), greedy(srv, "lora-a"))
    v2 = srv.infer("llm", text_body([PROMPT], name="prompt", max_tokens=8, temperature=0, adapter="lora-c"))
    assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == [text], v2.text
    r = requests.delete(f"{srv.url}/v2/models/llm/adapters/lora-c", timeout=60)
    assert r.status_code == 200 and r.json()["unloaded"] is True, r.text
    assert "lora-c" not in adapters(srv)
    with pytest.raises(openai.NotFoundError) as err:
        greedy(srv, "lora-c")
    assert "lora-a" in str(err.value)  # names what there is
    v2 = srv.infer("llm", text_body([PROMPT], name="prompt", max_tokens=2, adapter="lora-c"))
    assert v2.status_code == 404 and "lora-a, lora-b" in v2.json()["error"], v2.text
    streamer.join(180)
    assert not failures and len(streamed) == 3 and all(streamed), (failures, streamed)


def test_vllms_own_adapter_calls_are_aliases(llm_server, llama):
    srv = llm_server
    body = {"lora_name": "lora-v", "lora_path": str(llama["c"])}
    r = requests.post(srv.url + "/v1/load_lora_adapter", json=body, timeout=120)  # two models here take adapters
    assert r.status_code == 400 and "several models take adapters (hf-llama, llm)" in r.json()["error"], r.text
    r = requests.post(srv.url + "/v1/load_lora_adapter", json={**body, "model": "llm"}, timeout=120)
    assert r.status_code == 200 and "lora-v" in r.text, r.text
    assert greedy(srv, "lora-v") == peft_greedy(llama["base"], llama["c"], PROMPT, 8)
    # "model" names the base where it matters; a model without adapters at run time is named as such
    r = requests.post(srv.url + "/v1/unload_lora_adapter", json={"lora_name": "lora-v", "model": "llm-embed"},
                      timeout=60)
    assert r.status_code == 404 and "models that do: hf-llama, llm" in r.json()["error"], r.text
    r = requests.post(srv.url + "/v1/unload_lora_adapter", json={"lora_name": "lora-v", "model": "llm"}, timeout=60)
    assert r.status_code == 200, r.text
    assert "lora-v" not in adapters(srv)


def test_a_request_in_flight_on_an_adapter_being_unloaded_finishes(llm_server, llama):
    srv = llm_server
    r = requests.post(f"{srv.url}/v2/models/llm/adapters", json={"name": "lora-d", "url": str(llama["c"])},
                      timeout=120)
    assert r.status_code == 201, r.text
    chunks = srv.client.completions.create(model="lora-d", prompt=PROMPT, max_tokens=48, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
    first = next(iter(chunks))  # the request is inside the engine
    r = requests.delete(f"{srv.url}/v2/models/llm/adapters/lora-d", timeout=60)
    assert r.status_code == 200, r.text
    rest = [c for c in chunks if c.choices]
    text = first.choices[0].text + "".join(c.choices[0].text for c in rest)
    assert text.startswith(peft_greedy(llama["base"], llama["c"], PROMPT, 8)), text
    assert rest[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("path,body,status,fragment", [
    ("/v2/models/llm/adapters", {"name": "lora-a", "url": "/x"}, 409, "already serves 'lora-a'"),
    ("/v2/models/llm/adapters", {"name": "llm", "url": "/x"}, 409, "already serves 'llm'"),
    ("/v2/models/llm/adapters", {"name": "Bad_Name", "url": "/x"}, 400, "adapter field 'name'"),
    ("/v2/models/llm/adapters", {"name": "x"}, 400, "adapter field 'url'"),
    ("/v2/models/llm/adapters", [1], 400, "must be a JSON object"),
    ("/v2/models/llm/adapters", {"name": "gone", "url": "/no/such/folder"}, 400, "adapter 'gone'"),
    ("/v2/models/llm/adapters", {"name": "not-lora", "url": "{base}"}, 400, "no adapter_config.json"),
    ("/v2/models/llm/adapters", {"name": "wide", "url": "{wide}"}, 400, "rank 64 is above the engine's max_lora_rank 16"),
    ("/v2/models/llm/adapters", {"name": "other", "url": "{other}"}, 400, "does not fit model 'llm'"),
    ("/v2/models/llm-embed/adapters", {"name": "x", "url": "{c}"}, 403, "runtime_adapters is off"),
    ("/v1/unload_lora_adapter", {"lora_name": "nope", "model": "llm"}, 404, "no adapter 'nope'"),
    ("/v1/load_lora_adapter", {"lora_name": "x"}, 400, "adapter field 'url'"),
])
def test_bad_adapter_calls_are_4xx_naming_the_problem(llm_server, llama, path, body, status, fragment):
    if isinstance(body, dict):
        body = {k: v.format(**{k2: str(p) for k2, p in llama.items()}) for k, v in body.items()}
    r = requests.post(llm_server.url + path, json=body, timeout=120)
    assert r.status_code == status and fragment in r.json()["error"], r.text
    assert "Traceback" not in r.text
    assert "x" not in adapters(llm_server) and "other" not in adapters(llm_server)
    assert greedy(llm_server, "lora-a", 2)  # the model keeps serving


def test_unloading_an_unknown_adapter_is_a_404_naming_those_there_are(llm_server):
    r = requests.delete(llm_server.url + "/v2/models/llm/adapters/lora-zz", timeout=30)
    assert r.status_code == 404 and "(it has: lora-a, lora-b" in r.json()["error"], r.text


# -- transformers (PEFT) ---------------------------------------------------------------------------------
def test_transformers_serves_a_static_adapter_equal_to_peft_and_to_vllm(llm_server, llama):
    srv = llm_server
    assert adapters(srv, "hf-llama") == {"hf-a": {"name": "hf-a", "url": str(llama["a"]), "source": "settings"}}
    models = {m.id: m for m in srv.client.models.list().data}
    assert models["hf-a"].model_extra.get("parent") == "hf-llama"
    text = greedy(srv, "hf-a")
    assert text == peft_greedy(llama["base"], llama["a"], PROMPT, 8) == greedy(srv, "lora-a")
    assert greedy(srv, "hf-llama") == greedy(srv, "llm") != text  # no adapter: the base model
    v2 = srv.infer("hf-llama", text_body([PROMPT], max_new_tokens=8, adapter="hf-a"))
    assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == [text], v2.text
    stream = srv.client.chat.completions.create(model="hf-a", messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=8, temperature=0, stream=True)
    chunks = [c for c in stream if c.choices]
    assert chunks[0].model == "hf-a" and "".join(c.choices[0].delta.content or "" for c in chunks)


def test_transformers_loads_and_unloads_an_adapter_while_the_base_streams(llm_server, llama):
    srv = llm_server
    streamer, streamed, failures = streaming(srv, "hf-llama", max_tokens=24)
    r = requests.post(f"{srv.url}/v2/models/hf-llama/adapters", json={"name": "hf-c", "url": str(llama["c"])},
                      timeout=120)
    assert r.status_code == 201, r.text
    assert greedy(srv, "hf-c") == peft_greedy(llama["base"], llama["c"], PROMPT, 8)
    assert set(adapters(srv, "hf-llama")) == {"hf-a", "hf-c"}
    r = requests.delete(f"{srv.url}/v2/models/hf-llama/adapters/hf-c", timeout=60)
    assert r.status_code == 200, r.text
    with pytest.raises(openai.NotFoundError):
        greedy(srv, "hf-c")
    streamer.join(180)
    assert not failures and len(streamed) == 3 and len(set(streamed)) == 1 and streamed[0], (failures, streamed)
    assert greedy(srv, "hf-a") == greedy(srv, "lora-a")  # the static one untouched


@pytest.mark.parametrize("body,status,fragment", [
    ({"name": "hf-wrong", "url": "{other}"}, 400, "does not fit model 'hf-llama'"),
    ({"name": "hf-a", "url": "{c}"}, 409, "already serves 'hf-a'"),
    ({"name": "hf-none", "url": "{base}"}, 400, "no adapter_config.json"),
])
def test_bad_adapters_on_transformers_are_4xx(llm_server, llama, body, status, fragment):
    body = {k: v.format(**{k2: str(p) for k2, p in llama.items()}) for k, v in body.items()}
    r = requests.post(llm_server.url + "/v2/models/hf-llama/adapters", json=body, timeout=120)
    assert r.status_code == status and fragment in r.json()["error"], r.text
    assert set(adapters(llm_server, "hf-llama")) == {"hf-a"}
    v2 = llm_server.infer("hf-llama", text_body([PROMPT], max_new_tokens=2, adapter="hf-zz"))
    assert v2.status_code == 404 and "(this model has: hf-a)" in v2.json()["error"], v2.text


def test_transformers_finishes_a_generation_on_an_adapter_being_unloaded(llm_server, llama):
    srv = llm_server
    r = requests.post(f"{srv.url}/v2/models/hf-llama/adapters", json={"name": "hf-d", "url": str(llama["c"])},
                      timeout=120)
    assert r.status_code == 201, r.text
    # 400 tokens: still generating in the model thread when the deletion arrives
    chunks = srv.client.completions.create(model="hf-d", prompt=PROMPT, max_tokens=400, temperature=0, stream=True)
    first = next(iter(chunks))
    r = requests.delete(f"{srv.url}/v2/models/hf-llama/adapters/hf-d", timeout=60)
    assert r.status_code == 200, r.text  # returned once the generation ahead of it in the model thread ended
    text = first.choices[0].text + "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith(peft_greedy(llama["base"], llama["c"], PROMPT, 8)), text
    assert "hf-d" not in adapters(srv, "hf-llama")
