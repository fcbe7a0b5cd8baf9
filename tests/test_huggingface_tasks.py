"""HuggingFaceRuntime's token_classification, fill_mask, text_generation and text2text_generation on tiny
random models: outputs equal a direct transformers call; request parameters are checked."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from .support.hf_models import ENTITY_LABELS, build_causal_lm, build_masked_lm, build_seq2seq, build_token_classifier

pytest.importorskip("transformers")

from modelserve.errors import BadRequest  # noqa: E402
from modelserve.huggingface import HuggingFaceRuntime as HF  # noqa: E402

from .support.runtimes import bad_request, infer_texts, loaded, text_request  # noqa: E402

TEXTS = ["John Smith lives in Berlin.", "hello", "Kubernetes schedules containers near the river bank!"]
PROMPTS = ["the quick brown fox", "once upon a time"]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf-tasks")
    return {"token": build_token_classifier(root / "token"), "mlm": build_masked_lm(root / "mlm"),
            "gpt2": build_causal_lm(root / "gpt2"), "t5": build_seq2seq(root / "t5")}


def direct(folder, auto):
    import transformers

    return (transformers.AutoTokenizer.from_pretrained(folder),
            getattr(transformers, auto).from_pretrained(folder).eval())


def direct_generate(folder, prompt, max_new_tokens, auto="AutoModelForCausalLM"):
    import torch

    tok, model = direct(folder, auto)
    enc = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    start = 0 if model.config.is_encoder_decoder else enc["input_ids"].shape[1]
    return tok.decode(out[0, start:], skip_special_tokens=True)


# -- token_classification ------------------------------------------------------------------------------

def test_token_entities_equal_the_transformers_pipeline(tiny):
    from transformers import pipeline

    rt = loaded(HF, tiny["token"])
    assert rt.task.value == "token_classification"
    got = infer_texts(rt, TEXTS)["entities"]
    assert got.shape == (3,)
    tok, model = direct(tiny["token"], "AutoModelForTokenClassification")
    pipe = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="none", device="cpu")
    n_entities = 0
    for text, entities in zip(TEXTS, got):
        entities = json.loads(entities)
        want = pipe(text)
        assert [(e["word"], e["entity"], e["start"], e["end"], e["index"]) for e in entities] == \
               [(w["word"], w["entity"], w["start"], w["end"], w["index"]) for w in want]
        np.testing.assert_allclose([e["score"] for e in entities], [float(w["score"]) for w in want], atol=1e-5)
        for e in entities:
            assert e["entity"] in ENTITY_LABELS.values() and e["entity"] != "O"
            assert text[e["start"]:e["end"]].lower() == e["word"].replace("##", "")
        n_entities += len(entities)
    assert n_entities > 0


def test_token_classification_batched_equals_one_by_one(tiny):
    rt = loaded(HF, tiny["token"])
    together = infer_texts(rt, TEXTS)["entities"]
    alone = [infer_texts(rt, [t])["entities"][0] for t in TEXTS]
    for a, b in zip(together, alone):
        ea, eb = json.loads(a), json.loads(b)
        assert [e["word"] for e in ea] == [e["word"] for e in eb]
        np.testing.assert_allclose([e["score"] for e in ea], [e["score"] for e in eb], atol=1e-5)


# -- fill_mask -------------------------------------------------------------------------------------------

def _direct_fill(folder, texts, k):
    import torch

    tok, model = direct(folder, "AutoModelForMaskedLM")
    tokens, scores = [], []
    with torch.no_grad():
        for t in texts:
            enc = tok([t], return_tensors="pt")
            pos = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten()
            probs = torch.softmax(model(**enc).logits[0, pos], -1)
            v, i = probs.topk(k, -1)
            tokens.append([[tok.decode([int(x)]) for x in row] for row in i])
            scores.append(v.numpy())
    return tokens, np.array(scores)


def test_fill_mask_top5_equals_a_direct_model_call(tiny):
    rt = loaded(HF, tiny["mlm"])
    texts = ["Paris is the [MASK] of France.", "I like [MASK] very much", "[MASK]"]
    got = infer_texts(rt, texts)
    assert got["tokens"].shape == (3, 5) and got["scores"].shape == (3, 5)
    tokens, scores = _direct_fill(tiny["mlm"], texts, 5)
    assert got["tokens"].tolist() == [t[0] for t in tokens]
    np.testing.assert_allclose(got["scores"], scores[:, 0], rtol=1e-4)


def test_fill_mask_top_k_and_several_masks(tiny):
    rt = loaded(HF, tiny["mlm"])
    assert infer_texts(rt, ["a [MASK] b"], top_k=2)["tokens"].shape == (1, 2)
    texts = ["[MASK] and [MASK]", "the [MASK] sat on the [MASK]"]
    got = infer_texts(rt, texts, top_k=3)
    assert got["tokens"].shape == (2, 2, 3)
    tokens, scores = _direct_fill(tiny["mlm"], texts, 3)
    assert got["tokens"].tolist() == tokens
    np.testing.assert_allclose(got["scores"], scores, rtol=1e-4)


def test_fill_mask_bad_requests_are_400(tiny):
    rt = loaded(HF, tiny["mlm"])
    for texts, params, fragment in [
        (["a [MASK]", "no mask here"], {}, "text 1 has no mask token: put [MASK]"),
        (["a [MASK]", "[MASK] [MASK]"], {}, "same number of [MASK]"),
        (["a [MASK]"], {"top_k": 0}, "parameter 'top_k' is 0"),
        (["a [MASK]"], {"top_k": "many"}, "parameter 'top_k' must be an integer"),
        (["a [MASK]"], {"temperature": 1.0}, "unknown parameter 'temperature'"),
    ]:
        assert fragment in bad_request(rt.predict, text_request(texts, **params))
    short = loaded(HF, tiny["mlm"], max_length=4)
    assert "text 0: a [MASK] token was cut off by option max_length" in bad_request(
        short.predict, text_request(["a b c d e f [MASK]"]))


# -- generation ------------------------------------------------------------------------------------------

def test_greedy_text_generation_equals_model_generate(tiny):
    rt = loaded(HF, tiny["gpt2"])
    assert rt.task.value == "text_generation" and rt.inputs[0].name == "prompt"
    got = infer_texts(rt, PROMPTS, max_new_tokens=12)["text"]
    assert got.tolist() == [direct_generate(tiny["gpt2"], p, 12) for p in PROMPTS]
    assert all(len(t.split()) >= 3 for t in got)
    default = infer_texts(rt, PROMPTS[:1])["text"][0]  # option max_new_tokens: 64 by default
    assert default == direct_generate(tiny["gpt2"], PROMPTS[0], 64)


def test_greedy_text2text_generation_equals_model_generate(tiny):
    rt = loaded(HF, tiny["t5"])
    assert rt.task.value == "text2text_generation"
    got = infer_texts(rt, PROMPTS, max_new_tokens=10)["text"]
    assert got.tolist() == [direct_generate(tiny["t5"], p, 10, "AutoModelForSeq2SeqLM") for p in PROMPTS]
    assert all(got)


def test_stop_strings_cut_the_text_at_the_first_one(tiny):
    rt = loaded(HF, tiny["gpt2"])
    full = infer_texts(rt, PROMPTS[:1], max_new_tokens=20)["text"][0]
    words = full.split()
    stop = words[3]
    cut = infer_texts(rt, PROMPTS[:1], max_new_tokens=20, stop=[stop, "never-seen"])["text"][0]
    assert cut == full[:full.find(stop)]
    assert infer_texts(rt, PROMPTS[:1], max_new_tokens=20, stop="never-seen")["text"][0] == full


def test_sampling_follows_the_seed(tiny):
    rt = loaded(HF, tiny["gpt2"])
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95, top_k=50)
    a = infer_texts(rt, PROMPTS[:1], seed=7, **kw)["text"][0]
    assert a == infer_texts(rt, PROMPTS[:1], seed=7, **kw)["text"][0]
    others = {infer_texts(rt, PROMPTS[:1], seed=s, **kw)["text"][0] for s in (8, 9, 10)}
    assert others != {a}
    greedy = infer_texts(rt, PROMPTS[:1], max_new_tokens=10)["text"][0]
    assert infer_texts(rt, PROMPTS[:1], max_new_tokens=10, temperature=0)["text"][0] == greedy


def test_generation_parameters_are_checked(tiny):
    rt = loaded(HF, tiny["gpt2"], max_new_tokens_limit=100)
    msg = bad_request(rt.predict, text_request(PROMPTS[:1], beams=4))
    assert "unknown generation parameter 'beams'" in msg and "max_new_tokens" in msg
    for params, fragment in [
        ({"max_new_tokens": 0}, "parameter 'max_new_tokens' is 0; allowed range [1, 100]"),
        ({"max_new_tokens": 101}, "parameter 'max_new_tokens' is 101"),
        ({"max_new_tokens": 2.5}, "parameter 'max_new_tokens' must be an integer"),
        ({"top_p": 1.5}, "parameter 'top_p'"),
        ({"temperature": -1}, "parameter 'temperature'"),
        ({"do_sample": "yes"}, "parameter 'do_sample' must be true or false"),
        ({"stop": [1]}, "parameter 'stop' must be a string or a list"),
    ]:
        assert fragment in bad_request(rt.predict, text_request(PROMPTS[:1], **params))


def _stream(rt, prompts, **params):
    async def run():
        async def payloads():
            yield text_request(prompts, **params)
        return [r.outputs[0].data.root[0].decode() async for r in rt.predict_stream(payloads())]
    return asyncio.run(run())


@pytest.mark.parametrize("model", ["gpt2", "t5"])
def test_streamed_chunks_concatenate_to_the_greedy_text(tiny, model):
    rt = loaded(HF, tiny[model])
    chunks = _stream(rt, PROMPTS[:1], max_new_tokens=15)
    assert len(chunks) > 3
    assert "".join(chunks) == infer_texts(rt, PROMPTS[:1], max_new_tokens=15)["text"][0]


def test_streaming_honours_stop_strings_and_takes_one_prompt(tiny):
    rt = loaded(HF, tiny["gpt2"])
    full = infer_texts(rt, PROMPTS[:1], max_new_tokens=20)["text"][0]
    stop = full.split()[4]
    assert "".join(_stream(rt, PROMPTS[:1], max_new_tokens=20, stop=[stop])) == full[:full.find(stop)]
    with pytest.raises(BadRequest, match="streaming takes one prompt per request, got 2"):
        _stream(rt, PROMPTS, max_new_tokens=3)


def test_metadata_and_v1_predict_for_the_new_tasks(tiny):
    meta = {k: loaded(HF, tiny[k]) for k in ("token", "mlm", "gpt2")}
    assert [o.name for o in meta["token"].outputs] == ["entities"]
    assert [(o.name, o.datatype) for o in meta["mlm"].outputs] == [("tokens", "BYTES"), ("scores", "FP32")]
    assert [(i.name, o.name) for i, o in zip(meta["gpt2"].inputs, meta["gpt2"].outputs)] == [("prompt", "text")]
    res = asyncio.run(meta["gpt2"]._v1_predict({"instances": [PROMPTS[0]]}))
    assert res["predictions"] == [infer_texts(meta["gpt2"], PROMPTS[:1])["text"][0]]
    res = asyncio.run(meta["mlm"]._v1_predict({"instances": ["a [MASK] b"]}))
    assert len(res["predictions"]) == 1


def test_concurrent_fill_mask_and_token_requests_get_their_own_rows(tiny):
    """Concurrent requests share one forward pass (the coalescer): each still gets exactly its own answer."""
    mlm, tagger = loaded(HF, tiny["mlm"]), loaded(HF, tiny["token"])
    jobs = [(mlm, ["a [MASK]"], {"top_k": 2}), (mlm, ["[MASK] and [MASK] too", "x [MASK] [MASK]"], {"top_k": 2}),
            (mlm, ["the [MASK]"], {"top_k": 4}), (tagger, TEXTS[:2], {}), (tagger, TEXTS[2:], {})]

    async def together():
        return await asyncio.gather(*(rt.predict(text_request(t, **p)) for rt, t, p in jobs))

    for (rt, texts, params), res in zip(jobs, asyncio.run(together())):
        alone = infer_texts(rt, texts, **params)
        for o in res.outputs:
            got = [v.decode() for v in o.data.root] if o.datatype == "BYTES" else o.data.root
            want = alone[o.name].reshape(-1).tolist()
            assert o.shape == list(alone[o.name].shape)
            if o.name == "scores":
                np.testing.assert_allclose(got, want, rtol=1e-4)
            elif o.name == "entities":
                assert [[e["word"] for e in json.loads(g)] for g in got] == \
                       [[e["word"] for e in json.loads(w)] for w in want]
            else:
                assert got == want


def test_a_failing_streamed_generation_ends_with_an_error_not_a_hang(tiny, monkeypatch):
    from modelserve.errors import InternalError

    rt = loaded(HF, tiny["gpt2"])

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(rt.backend.model, "generate", broken)
    with pytest.raises(InternalError, match="RuntimeError: out of memory"):
        _stream(rt, PROMPTS[:1], max_new_tokens=3)


def test_cross_encoders_are_told_apart_from_classifiers():
    from modelserve.engines.transformers import infer_task
    from modelserve.options import Task

    seq = ["BertForSequenceClassification"]
    assert infer_task(seq, False, 3) == Task.SEQUENCE_CLASSIFICATION
    assert infer_task(seq, False, 1) == Task.TEXT_RERANKING  # one logit: a cross-encoder (softmax of one is 1)
    assert infer_task(seq, True, 2, cross_encoder=True) == Task.TEXT_RERANKING  # sentence-transformers 5+ folder
    assert infer_task(["BertModel"], True, None, cross_encoder=False) == Task.TEXT_EMBEDDING


def test_rerank_activation_follows_the_cross_encoders_config():
    from types import SimpleNamespace

    from modelserve.backends.rerank import activation_of

    assert activation_of(SimpleNamespace(), {}) == "sigmoid"
    assert activation_of(SimpleNamespace(), {"activation_fn": "torch.nn.modules.linear.Identity"}) == "identity"
    assert activation_of(SimpleNamespace(sentence_transformers={"activation_fn": "torch.nn.Tanh"}), {}) == "tanh"
    assert activation_of(SimpleNamespace(sbert_ce_default_activation_function="my.Custom"), {}) is None
