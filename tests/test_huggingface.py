"""HuggingFaceRuntime on its own: outputs equal sentence-transformers / transformers, every option, load errors."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from .support.hf_models import (LABELS, build_all, build_config_only, build_custom_code, minilm_dir,
                        minilm_variant)

pytest.importorskip("transformers")
pytest.importorskip("sentence_transformers")

from mlserver.types import InferenceRequest, RequestInput, RequestOutput  # noqa: E402

from modelserve.huggingface import HuggingFaceRuntime as HF  # noqa: E402

from .support.runtimes import arrays, bad_request, infer, infer_texts, load_error, loaded, text_request  # noqa: E402

TEXTS = ["A man is eating food.", "hello", "The quick brown fox jumps over the lazy dog near the river bank.",
         "Kubernetes schedules containers.", "ünïcödé text, with punctuation!?"]


@pytest.fixture(scope="session")
def hf(tmp_path_factory) -> dict:
    return build_all(tmp_path_factory.mktemp("hf-unit"))


@pytest.fixture(scope="session")
def st_minilm():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir()), device="cpu")


def direct_classifier(folder, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return torch.softmax(model(**tok(texts, padding=True, return_tensors="pt")).logits, -1).numpy()


def direct_mean_pool(folder, texts, **tok_kw):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding in the reference
            enc = tok([t], return_tensors="pt", **tok_kw)
            out.append(model(**enc).last_hidden_state.mean(dim=1)[0].numpy())
    return np.array(out)


# -- text_embedding ------------------------------------------------------------------------------------

def test_embeddings_equal_sentence_transformers(st_minilm):
    rt = loaded(HF, minilm_dir())
    emb = infer_texts(rt, TEXTS)["embedding"]
    assert emb.shape == (5, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, st_minilm.encode(TEXTS), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # the folder has a Normalize module


def test_normalize_false_gives_the_unnormalised_pooling(st_minilm):
    from sentence_transformers import SentenceTransformer

    raw = SentenceTransformer(modules=[st_minilm[0], st_minilm[1]], device="cpu").encode(TEXTS)
    emb = infer_texts(loaded(HF, minilm_dir(), normalize=False), TEXTS)["embedding"]
    np.testing.assert_allclose(emb, raw, atol=1e-4)
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0)


@pytest.mark.parametrize("pooling", ["cls", "max", "mean_sqrt_len"])
def test_pooling_mode_comes_from_the_sentence_transformers_config(tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    folder = minilm_variant(tmp_path / pooling, pooling, normalize=False)
    rt = loaded(HF, folder)
    assert rt.backend.pooling == pooling and rt.backend.normalize is False
    np.testing.assert_allclose(infer_texts(rt, TEXTS)["embedding"],
                               SentenceTransformer(str(folder), device="cpu").encode(TEXTS), atol=1e-4)


def test_bare_encoder_is_mean_pooled_and_not_normalised_by_default(hf):
    rt = loaded(HF, hf["encoder"])
    assert rt.task.value == "text_embedding"
    emb = infer_texts(rt, TEXTS[:3])["embedding"]
    np.testing.assert_allclose(emb, direct_mean_pool(hf["encoder"], TEXTS[:3]), atol=1e-4)
    emb = infer_texts(loaded(HF, hf["encoder"], normalize=True), TEXTS[:3])["embedding"]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_max_length_truncates_like_sentence_transformers(st_minilm):
    from sentence_transformers import SentenceTransformer

    long = ["word " * 400, "short text"]
    ref = SentenceTransformer(str(minilm_dir()), device="cpu")
    ref.max_seq_length = 16
    np.testing.assert_allclose(infer_texts(loaded(HF, minilm_dir(), max_length=16), long)["embedding"],
                               ref.encode(long), atol=1e-4)


def test_text_longer_than_the_model_takes_is_a_400_naming_the_limit():
    msg = bad_request(loaded(HF, minilm_dir()).predict, text_request(["fine", "word " * 400]))
    assert "text 1 is 402 tokens long; this model takes at most 256" in msg and "max_length" in msg


def test_max_length_above_the_model_limit_is_refused():
    assert "option 'max_length': 1000 is more than this model takes (256 tokens)" in load_error(
        HF, minilm_dir(), max_length=1000)


def test_disable_lower_case_keeps_case():
    upper, lower = ["HELLO World"], ["hello world"]
    rt = loaded(HF, minilm_dir())
    np.testing.assert_allclose(infer_texts(rt, upper)["embedding"], infer_texts(rt, lower)["embedding"], atol=1e-6)
    cased = loaded(HF, minilm_dir(), disable_lower_case=True)
    assert not np.allclose(infer_texts(cased, upper)["embedding"], infer_texts(cased, lower)["embedding"], atol=1e-3)


def test_disable_special_tokens_drops_cls_and_sep(hf):
    rt = loaded(HF, hf["encoder"], disable_special_tokens=True)
    tok = rt.backend.tokenizer
    ids = rt.backend.encode(["hello world"])[0]["input_ids"]
    assert tok.cls_token_id not in ids and tok.sep_token_id not in ids
    np.testing.assert_allclose(infer_texts(rt, ["hello world"])["embedding"],
                               direct_mean_pool(hf["encoder"], ["hello world"], add_special_tokens=False), atol=1e-4)


def test_return_token_type_ids_controls_the_tokenizer_output(hf):
    assert "token_type_ids" in loaded(HF, hf["encoder"]).backend.encode(["a"])[0]  # BERT's default
    assert "token_type_ids" not in loaded(HF, hf["encoder"], return_token_type_ids=False).backend.encode(["a"])[0]
    assert infer_texts(loaded(HF, hf["encoder"], return_token_type_ids=False), ["a b"])["embedding"].shape == (1, 32)


# -- sequence_classification ---------------------------------------------------------------------------

def test_classification_labels_and_scores_equal_transformers(hf):
    rt = loaded(HF, hf["classifier"])
    assert rt.task.value == "sequence_classification"  # inferred from BertForSequenceClassification
    probs = direct_classifier(hf["classifier"], TEXTS)
    out = infer_texts(rt, TEXTS)
    assert list(out) == ["label", "score"]
    assert out["label"].tolist() == [LABELS[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(out["score"], probs.max(1), atol=1e-5)


def test_return_probabilities_gives_the_full_distribution(hf):
    out = infer_texts(loaded(HF, hf["classifier"], return_probabilities=True), TEXTS)
    assert list(out) == ["probabilities"] and out["probabilities"].shape == (5, 3)
    np.testing.assert_allclose(out["probabilities"], direct_classifier(hf["classifier"], TEXTS), atol=1e-5)


def test_requested_outputs_pick_among_label_score_probabilities(hf):
    out = infer_texts(loaded(HF, hf["classifier"]), TEXTS[:2], outputs=["probabilities", "label"])
    assert list(out) == ["probabilities", "label"]
    assert "unknown output 'embedding' (this model offers: label, score, probabilities)" in bad_request(
        loaded(HF, hf["classifier"]).predict, text_request(["x"], outputs=["embedding"]))


def test_backend_huggingface_is_transformers_and_vllm_serves_generation_and_embeddings_only(hf):
    assert infer_texts(loaded(HF, hf["classifier"], backend="huggingface"), ["x"])["label"].shape == (1,)
    msg = load_error(HF, hf["classifier"], backend="VLLM")
    assert "backend VLLM serves tasks text_generation, text_embedding and text_reranking; task sequence_classification" in msg


def test_options_without_a_vllm_equivalent_are_refused_with_backend_vllm(hf):
    msg = load_error(HF, hf["minilm"], backend="VLLM", normalize=True)
    assert "option 'normalize' does not apply to backend VLLM" in msg


def test_auto_stays_on_transformers_without_a_gpu(hf, monkeypatch):
    monkeypatch.setenv("MODELSERVE_VLLM_COMMAND", "/bin/true")
    rt = loaded(HF, hf["classifier"])
    from modelserve.backends.transformers import TransformersBackend

    assert isinstance(rt.backend, TransformersBackend) and rt.backend.model is not None


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(hf):
    rt = loaded(HF, hf["classifier"], return_probabilities=True)
    sizes = [1, 4, 2, 3, 1, 5]
    batches = [[f"text {i} {j} " * (1 + j % 4) for j in range(n)] for i, n in enumerate(sizes)]
    calls = []
    coalescer = rt.backend._coalescer  # it holds the model call it was built with
    orig = coalescer._fn
    coalescer._fn = lambda key, rows: calls.append(len(rows)) or orig(key, rows)

    async def run_all():
        return await asyncio.gather(*(rt.predict(text_request(b)) for b in batches))

    try:
        results = asyncio.run(run_all())
    finally:
        coalescer._fn = orig
    assert 0 < len(calls) < len(sizes) and sum(calls) == sum(sizes)  # merged into fewer forward passes
    for texts, res in zip(batches, results):
        got = arrays(res)[res.outputs[0].name]
        np.testing.assert_allclose(got, direct_classifier(hf["classifier"], texts), atol=1e-5)


# -- options that shape loading ------------------------------------------------------------------------

def test_half_dtypes_fall_back_to_float32_on_cpu_with_a_warning(hf, caplog):
    import torch

    with caplog.at_level(logging.WARNING, logger="mlserver.modelserve.huggingface"):
        rt = loaded(HF, hf["encoder"], dtype="float16")
    assert next(rt.backend.model.parameters()).dtype == torch.float32
    assert "dtype FLOAT16 is not used on CPU" in caplog.text
    assert "'AUTO', 'FLOAT32'" in load_error(HF, hf["encoder"], dtype="float8")


def test_trust_remote_code_is_off_by_default(tmp_path):
    folder = build_custom_code(tmp_path / "custom")
    assert "trust_remote_code" in load_error(HF, folder)
    out = infer_texts(loaded(HF, folder, trust_remote_code=True), ["hello"])
    assert out["label"][0] in LABELS.values()


def test_tokenizer_revision_is_refused_for_a_local_folder(hf):
    assert "option 'tokenizer_revision'" in load_error(HF, hf["encoder"], tokenizer_revision="v2")


def test_requests_are_logged_unless_disabled_and_cut_to_max_log_len(hf, caplog):
    with caplog.at_level(logging.INFO, logger="mlserver.modelserve.huggingface"):
        infer_texts(loaded(HF, hf["encoder"]), ["a secret sentence"])
        assert "a secret sentence" in caplog.text
        caplog.clear()
        infer_texts(loaded(HF, hf["encoder"], max_log_len=4), ["a secret sentence"])
        assert "'a se'" in caplog.text and "secret" not in caplog.text
        caplog.clear()
        infer_texts(loaded(HF, hf["encoder"], disable_log_requests=True), ["a secret sentence"])
        assert "secret" not in caplog.text


# -- load errors -----------------------------------------------------------------------------------------

def test_task_is_checked_against_the_architecture(hf, tmp_path):
    assert "needs a *ForSequenceClassification model; this folder holds BertModel" in load_error(
        HF, minilm_dir(), task="sequence_classification")
    assert "task 'fill_mask' needs a *ForMaskedLM model; this folder holds BertModel" in load_error(
        HF, hf["encoder"], task="fill_mask")
    assert "needs a *ForCausalLM or *LMHeadModel model" in load_error(HF, hf["encoder"], task="text_generation")
    assert "'sequence_classification'" in load_error(HF, hf["encoder"], task="summarize")
    t5 = build_config_only(tmp_path / "t5", "T5Model")
    config = json.loads((t5 / "config.json").read_text())
    (t5 / "config.json").write_text(json.dumps({**config, "is_encoder_decoder": True}))
    assert "T5Model is an encoder-decoder" in load_error(HF, t5, task="text_embedding")


def test_missing_or_non_transformers_folder_is_refused(tmp_path):
    assert "model path not found" in load_error(HF, tmp_path / "nothing")
    assert "no config.json in" in load_error(HF, tmp_path)


# -- bad requests ----------------------------------------------------------------------------------------

def test_bad_requests_are_400_naming_the_problem(hf):
    rt = loaded(HF, hf["classifier"])
    cases = [
        (text_request([1.0, 2.0], datatype="FP32"), "takes text (datatype BYTES), got FP32"),
        (text_request([], shape=[0]), "empty batch"),
        (text_request(["ok", ""]), "text 1 is empty"),
        (text_request(["a", "b"], shape=[1, 2]), "expected shape [n]"),
        (InferenceRequest(inputs=[]), "no inputs"),
    ]
    for req, needle in cases:
        assert needle in bad_request(rt.predict, req)
    assert infer_texts(rt, ["still serving"])["label"].shape == (1,)


def test_import_loads_no_torch():
    code = "import sys, modelserve.huggingface; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_unsupported_pooling_is_refused_at_load(tmp_path):
    import json

    folder = minilm_variant(tmp_path / "lasttoken", "mean", normalize=True)
    cfg_path = folder / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_lasttoken=True)
    cfg_path.write_text(json.dumps(cfg))
    assert "pooling lasttoken is not supported yet (one of: cls, mean, max, mean_sqrt_len)" in load_error(HF, folder)


def test_tokenizer_revision_reads_the_tokenizer_of_that_hub_revision(hf, tmp_path, monkeypatch):
    """hf://acme/enc at main with an uncased tokenizer; revision 'cased' differs only in do_lower_case."""
    import json as _json

    from .support.hf_cache import fill_hf_cache

    files = {p.relative_to(hf["encoder"]).as_posix(): p.read_bytes()
             for p in hf["encoder"].rglob("*") if p.is_file()}
    cache = tmp_path / "hf-cache"
    for key in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fill_hf_cache(cache, "acme/enc", files, "a" * 40)
    cased = dict(files)
    config = _json.loads(files["tokenizer_config.json"])
    config["do_lower_case"] = False
    cased["tokenizer_config.json"] = _json.dumps(config).encode()
    fill_hf_cache(cache, "acme/enc", cased, "b" * 40, refs=("cased",))

    main = infer_texts(loaded(HF, "hf://acme/enc"), ["HELLO", "hello"])["embedding"]
    np.testing.assert_allclose(main[0], main[1], atol=1e-6)  # uncased: the same tokens
    other = infer_texts(loaded(HF, "hf://acme/enc", tokenizer_revision="cased"), ["HELLO", "hello"])["embedding"]
    assert not np.allclose(other[0], other[1], atol=1e-3)  # the cased tokenizer of that revision was used
    assert "'nope'" in load_error(HF, "hf://acme/enc", tokenizer_revision="nope")


# -- tensor_input_names: token tensors instead of text --------------------------------------------------------

TENSORS = ["input_ids", "attention_mask", "token_type_ids"]


def tensor_request(tokenizer, texts, names=TENSORS, dtype="INT64", outputs=None) -> InferenceRequest:
    """The tokenizer's own output for the texts (padded to one width), as V2 integer tensors."""
    enc = tokenizer(texts, padding=True, return_tensors="np")
    return InferenceRequest(
        inputs=[RequestInput(name=n, shape=list(enc[n].shape), datatype=dtype, data=enc[n].reshape(-1).tolist())
                for n in names],
        outputs=[RequestOutput(name=o) for o in outputs] if outputs else None)


def test_tensor_inputs_give_what_the_same_texts_give(hf, tmp_path):
    from .support.hf_models import build_masked_lm

    emb_rt = loaded(HF, minilm_dir(), tensor_input_names=TENSORS)
    assert [i.name for i in emb_rt.inputs] == ["text"] + TENSORS
    want = infer_texts(emb_rt, TEXTS)["embedding"]
    for dtype in ("INT64", "INT32"):
        got = arrays(infer(emb_rt, tensor_request(emb_rt.backend.tokenizer, TEXTS, dtype=dtype)))["embedding"]
        np.testing.assert_allclose(got, want, atol=1e-5)
    # attention_mask may be left out when the rows are not padded
    got = arrays(infer(emb_rt, tensor_request(emb_rt.backend.tokenizer, TEXTS[:1], names=["input_ids"])))["embedding"]
    np.testing.assert_allclose(got, want[:1], atol=1e-5)

    cls_rt = loaded(HF, hf["classifier"], tensor_input_names=TENSORS[:2], return_probabilities=True)
    got = arrays(infer(cls_rt, tensor_request(cls_rt.backend.tokenizer, TEXTS, names=TENSORS[:2])))["probabilities"]
    np.testing.assert_allclose(got, direct_classifier(hf["classifier"], TEXTS), atol=1e-5)
    np.testing.assert_allclose(got, infer_texts(cls_rt, TEXTS)["probabilities"], atol=1e-5)

    mlm_rt = loaded(HF, build_masked_lm(tmp_path / "mlm"), tensor_input_names=TENSORS[:2])
    texts = ["Paris is the [MASK] of France.", "I like [MASK]."]
    got = arrays(infer(mlm_rt, tensor_request(mlm_rt.backend.tokenizer, texts, names=TENSORS[:2])))
    want = infer_texts(mlm_rt, texts)
    assert got["tokens"].tolist() == want["tokens"].tolist()
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)


def test_tensor_inputs_are_refused_without_the_option(hf):
    rt = loaded(HF, hf["classifier"])
    assert "takes text (datatype BYTES), got INT64" in bad_request(rt.predict, tensor_request(rt.backend.tokenizer, TEXTS[:2],
                                                                                      names=["input_ids"]))


def test_bad_tensor_requests_are_400_naming_the_problem(hf):
    rt = loaded(HF, hf["classifier"], tensor_input_names=TENSORS[:2])
    tok = rt.backend.tokenizer
    msg = bad_request(rt.predict, tensor_request(tok, TEXTS[:2]))  # token_type_ids is not in the option
    assert "unexpected input(s) 'token_type_ids'" in msg and "input_ids, attention_mask" in msg
    assert "no 'input_ids'" in bad_request(rt.predict, tensor_request(tok, TEXTS[:2], names=["attention_mask"]))
    ids = tensor_request(tok, TEXTS[:2], names=["input_ids"]).inputs[0]
    short = tensor_request(tok, TEXTS[:1], names=["attention_mask"]).inputs[0]
    msg = bad_request(rt.predict, InferenceRequest(inputs=[ids, short]))
    assert "'attention_mask' has shape" in msg and "the same shape" in msg
    flat = RequestInput(name="input_ids", shape=[3], datatype="INT64", data=[101, 7592, 102])
    assert "expected shape [n, seq]" in bad_request(rt.predict, InferenceRequest(inputs=[flat]))
    big = RequestInput(name="input_ids", shape=[1, 2], datatype="INT64", data=[101, 10 ** 6])
    assert "token ids must lie in [0, 30522)" in bad_request(rt.predict, InferenceRequest(inputs=[big]))
    fp = RequestInput(name="input_ids", shape=[1, 2], datatype="FP32", data=[101.0, 102.0])
    assert "INT64 or INT32, got FP32" in bad_request(rt.predict, InferenceRequest(inputs=[fp]))
    assert infer_texts(rt, ["text still works"])["label"].shape == (1,)


def test_token_classification_and_fill_mask_tensor_requests(tmp_path):
    from .support.hf_models import build_masked_lm, build_token_classifier

    msg = load_error(HF, build_token_classifier(tmp_path / "tagger"), tensor_input_names=["input_ids"])
    assert "task is 'token_classification' (it reports character offsets, so it needs text)" in msg
    rt = loaded(HF, build_masked_lm(tmp_path / "mlm"), tensor_input_names=["input_ids"])
    msg = bad_request(rt.predict, tensor_request(rt.backend.tokenizer, ["no mask"], names=["input_ids"]))
    assert "row 0 has no mask token: put [MASK]" in msg


def test_tensor_input_names_the_model_does_not_take_fail_the_load(hf, tmp_path):
    from .support.hf_models import build_causal_lm

    assert "forward() takes no 'pixel_values'" in load_error(HF, hf["classifier"],
                                                             tensor_input_names=["input_ids", "pixel_values"])
    assert "must include 'input_ids'" in load_error(HF, hf["classifier"], tensor_input_names=["attention_mask"])
    assert "applies to the encoder tasks" in load_error(HF, build_causal_lm(tmp_path / "gpt2"),
                                                        tensor_input_names=["input_ids"])
