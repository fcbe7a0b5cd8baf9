"""The model each built image serves (tests/server/test_images_built.py, scripts/images.py report), placed as a
storage initializer or ModelMesh's puller leaves it, readable by the images' uid 1000; all built offline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Tuple

import joblib

from .hf_models import minilm_dir
from .models import iris_xy

ENV: Dict[str, Dict[str, str]] = {  # what an InferenceService of the key adds to the runtime's env
    "huggingface": {"HF_HUB_OFFLINE": "1"},
    "infinity": {"HF_HUB_OFFLINE": "1"},
}
OLLAMA_MODEL = "qwen2:0.5b"  # one the stand-in's "library" offers


def readable(path: Path) -> Path:
    """Every folder on the way and under ``path`` traversable, every file readable, by any uid (pytest's and
    tempfile's folders are 0700 for root)."""
    path = Path(path)
    for p in [path, *path.parents]:
        if p.is_dir() and p != Path("/"):
            p.chmod(p.stat().st_mode | 0o755)
    for dirpath, dirs, files in os.walk(path, followlinks=False):
        for d in dirs:
            Path(dirpath, d).chmod(Path(dirpath, d).stat().st_mode | 0o755)
        for f in files:
            if not Path(dirpath, f).is_symlink():
                Path(dirpath, f).chmod(Path(dirpath, f).stat().st_mode | 0o644)
    return path


def iris_model(out: Path) -> Path:
    from sklearn.linear_model import LogisticRegression

    X, y = iris_xy()
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(X, y), out / "model.joblib")
    return out


def model_files(key: str, out: Path) -> Path:
    """The model folder of ``key``'s image, built under ``out`` (MiniLM: its own folder in site-packages)."""
    if key == "sklearn":
        return iris_model(out / "iris")
    if key == "mlflow":
        from .mlflow_models import build

        return build(out / "mlflow")["tensor"]
    if key in ("huggingface", "infinity"):
        return minilm_dir().resolve()
    if key == "whisper":
        from .whisper_models import build_tiny_whisper

        return build_tiny_whisper(out / "whisper" / "ct2")
    if key == "ollama":  # Ollama pulls the model itself: the folder names it
        folder = out / "ollama"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model-settings.json").write_text(json.dumps(
            {"parameters": {"extra": {"url": f"ollama://{OLLAMA_MODEL}"}}}))
        return folder
    if key == "vllm":
        from .llama_models import build_tiny_llama

        return build_tiny_llama(out / "llama")
    raise KeyError(key)


def kserve_model(key: str, out: Path) -> Tuple[Path, Dict[str, str]]:
    """(the folder to mount at /mnt/models, the InferenceService's env) for ``key``'s image."""
    return readable(model_files(key, out)), dict(ENV.get(key, {}))


def modelmesh_model(key: str, models: Path, model_id: str, out: Path) -> None:
    """What ModelMesh leaves in the pod's /models (``models``) before it asks for a load: the puller's copy of
    the model under /models/<id>/ and the adapter's model-settings.json (a name and a uri, no
    implementation) under MLSERVER_MODELS_DIR (/models/_mlserver_models/<id>/)."""
    src = model_files(key, out)
    target = models / model_id
    if src.is_dir():
        shutil.copytree(src, target, symlinks=False)
    settings_dir = models / "_mlserver_models" / model_id
    settings_dir.mkdir(parents=True, exist_ok=True)
    uri = f"/models/{model_id}"
    if key == "sklearn":
        uri += "/model.joblib"
    settings: dict = {"name": model_id, "parameters": {"uri": uri}}
    if key == "ollama":  # the folder's own settings name the Ollama model
        settings["parameters"]["extra"] = {"url": f"ollama://{OLLAMA_MODEL}"}
    (settings_dir / "model-settings.json").write_text(json.dumps(settings))
    readable(models)
