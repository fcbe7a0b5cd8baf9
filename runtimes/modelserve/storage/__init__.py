"""Model URIs to local paths: local files and folders, pvc://, store:// (here), s3:// (s3.py: cached, atomic,
verified downloads), hf:// (hf.py: through huggingface_hub and its own cache) and, for the MLflow runtime,
runs:/, models:/ and mlflow-artifacts:/ (mlflow_uris.py: through MLflow's client and the tracking server)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Tuple

from mlserver.settings import ModelSettings
from mlserver.utils import to_absolute_path

from ..errors import ModelLoadError

logger = logging.getLogger("mlserver.modelserve.storage")

SUPPORTED = "a local path, file://, s3://bucket/key, pvc://claim/path or hf://org/name[@revision]"
DEFAULT_PVC_ROOT = "/mnt/pvc"  # where KServe's storage initializer mounts the claim of a pvc:// URI
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MODELSERVE_CACHE_DIR") or Path.home() / ".cache" / "modelserve")


def split_uri(uri: str) -> Tuple[str, str]:
    """``(scheme, rest)`` for ``scheme://rest``; ``("", uri)`` for a plain path.

    Not ``urlparse``: S3 keys and file names may hold ``#``, ``?`` or ``;``, which are not URL syntax here.
    """
    m = _SCHEME.match(uri)
    return (m.group(1).lower(), m.group(2)) if m else ("", uri)


def resolve(
    settings: ModelSettings,
    wellknown: Iterable[str] = (),
    cache_dir: Optional[str] = None,
    pvc_root: Optional[str] = None,
    *,
    mlflow: bool = False,
    mlflow_tracking_uri: Optional[str] = None,
) -> Path:
    """The local path of the model that ``parameters.uri`` names.

    A folder holding one of the ``wellknown`` file names resolves to that file, as MLServer's own
    ``get_model_uri`` does; otherwise the folder itself is returned. ``mlflow=True`` also accepts MLflow's
    URIs (``runs:/``, ``models:/``, ``mlflow-artifacts:/``), resolved against ``mlflow_tracking_uri`` or the
    tracking server the environment names (``mlflow_uris.tracking_uri``).
    """
    uri = ((settings.parameters.uri if settings.parameters else None) or "").strip()
    if not uri:
        supported = SUPPORTED + (f", {MLFLOW_SUPPORTED}" if mlflow else "")
        raise ModelLoadError(settings.name, f"parameters.uri is not set: point it at the model ({supported})")
    path = resolve_uri(settings, uri, cache_dir=cache_dir, pvc_root=pvc_root, mlflow=mlflow,
                       mlflow_tracking_uri=mlflow_tracking_uri)
    if path.is_dir():
        for fname in wellknown:
            if (path / fname).is_file():
                return path / fname
    return path


_FORMS = {"": "a local path", "file": "file://", "s3": "s3://bucket/key", "pvc": "pvc://claim/path",
          "hf": "hf://org/name[@revision]", "store": "store://path"}
MLFLOW_SUPPORTED = ("runs:/<run_id>/<path>, models:/<name>/<version|latest>, models:/<name>@<alias> "
                    "or mlflow-artifacts:/<path>")


def resolve_uri(
    settings: ModelSettings,
    uri: str,
    *,
    cache_dir: Optional[str] = None,
    pvc_root: Optional[str] = None,
    store_root: Optional[str] = None,
    schemes: Iterable[str] = ("", "file", "pvc", "s3", "hf"),
    mlflow: bool = False,
    mlflow_tracking_uri: Optional[str] = None,
) -> Path:
    """The local path of one URI; a relative path is taken from the model-settings.json folder.

    MLflow's URIs (``runs:/``, ``models:/``, ``mlflow-artifacts:/``) are resolved only with ``mlflow=True``
    (the MLflow runtime); elsewhere they are refused, not taken as relative paths.
    """
    name = settings.name
    from . import mlflow_uris

    mlflow_scheme = mlflow_uris.scheme_of(uri)
    if mlflow_scheme is not None:
        if not mlflow:
            listed = ", ".join(_FORMS.get(s, f"{s}://") for s in tuple(schemes))
            raise ModelLoadError(name, f"'{mlflow_uris.redact(uri.strip())}' is an MLflow URI: only the MLflow "
                                       f"runtime (modelserve.mlflow.MLflowRuntime) resolves {mlflow_scheme}:/ "
                                       f"URIs; this runtime takes {listed}")
        path = mlflow_uris.fetch(name, uri, cache_dir, mlflow_tracking_uri)
        if not path.exists():
            raise ModelLoadError(name, f"model path not found: {path} (from uri '{mlflow_uris.redact(uri)}')")
        return path
    scheme, rest = split_uri(uri.strip())
    allowed = tuple(schemes)
    if scheme not in allowed:
        listed = ", ".join(_FORMS.get(s, f"{s}://") for s in allowed)
        raise ModelLoadError(name, f"unsupported URI scheme '{scheme}://' in '{uri}': use {listed}")
    if scheme == "":
        path = Path(to_absolute_path(settings, rest))
    elif scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest:
            raise ModelLoadError(name, f"no path in '{uri}' (expected file:///absolute/path or file://relative/path)")
        path = Path(to_absolute_path(settings, rest))
    elif scheme == "pvc":
        path = _pvc_path(name, uri, rest, pvc_root)
    elif scheme == "store":
        path = _store_path(name, uri, rest, store_root)
    elif scheme == "s3":
        from .s3 import S3Download

        bucket, _, key = rest.partition("/")
        path = S3Download(name, bucket, key.lstrip("/"), cache_dir).fetch()
    else:  # hf
        repo_id, revision = parse_hf(name, uri)
        path = hf_snapshot(name, repo_id, revision)
    if not path.exists():
        raise ModelLoadError(name, f"model path not found: {path} (from uri '{uri}')")
    return path


def _inside(root: Path, path: Path) -> bool:
    return path == root or str(path).startswith(str(root) + os.sep)


def _store_path(model: str, uri: str, rest: str, store_root: Optional[str]) -> Path:
    """``store://project/path``: an artifact store mounted as a folder (digitalhub's store:// pattern)."""
    root_value = store_root or os.environ.get("MODELSERVE_STORE_ROOT")
    if not root_value:
        raise ModelLoadError(
            model, f"'{uri}' needs a store root: set the option store_root or MODELSERVE_STORE_ROOT "
            "to the folder where the store is mounted")
    root = Path(os.path.abspath(root_value))
    path = Path(os.path.normpath(root / rest.strip("/")))
    if path == root or not _inside(root, path):
        raise ModelLoadError(model, f"'{uri}' points outside the store root {root}")
    if not path.exists():
        raise ModelLoadError(model, f"model path not found: {path} (from uri '{uri}' under store root {root})")
    return path


def _pvc_path(model: str, uri: str, rest: str, pvc_root: Optional[str]) -> Path:
    """``pvc://claim/sub/path`` as KServe lays it out: the claim is mounted at the root, so the model is
    ``<root>/sub/path``. A root holding one folder per claim (``<root>/claim/sub/path``) works too.
    """
    claim, _, sub = rest.partition("/")
    if not claim:
        raise ModelLoadError(model, f"no claim name in '{uri}' (expected pvc://claim/path)")
    root = Path(os.path.abspath(pvc_root or os.environ.get("MODELSERVE_PVC_ROOT") or DEFAULT_PVC_ROOT))
    sub = sub.strip("/")
    candidates = [Path(os.path.normpath(root / sub)), Path(os.path.normpath(root / claim / sub))]
    for path in candidates:
        if not _inside(root, path):
            raise ModelLoadError(model, f"'{uri}' points outside the claim's mount root {root}")
    for path in candidates:
        if path.exists():
            return path
    raise ModelLoadError(
        model,
        f"model path not found: {candidates[0]} (from uri '{uri}'; also tried {candidates[1]}; "
        f"the claim is expected to be mounted at {root}: set the option pvc_root or MODELSERVE_PVC_ROOT)",
    )


def _off(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("0", "false", "no", "off")


def _on(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


# hf:// helpers that runtimes call directly (HuggingFace tokenizer revisions, KubeAI engines)
from .hf import hf_cache_dir, hf_offline, hf_snapshot, parse_hf  # noqa: E402

__all__ = ["SUPPORTED", "MLFLOW_SUPPORTED", "default_cache_dir", "split_uri", "resolve", "resolve_uri", "parse_hf",
           "hf_snapshot", "hf_cache_dir", "hf_offline"]
